"""Segmentation networks: Xue's full-image ResUNet and the DAUGS patch U-Net, a builder by name and a model registry.

``build_network("resunet", config="xue2020")`` or ``build_network("unet2d", config="daugs2024", n_classes=4)``;
a model card stores ``{"architecture": ..., "config": {...}}`` and the registry rebuilds the network with this function.
"""
from __future__ import annotations

from ..errors import InvalidParameterError

ARCHITECTURES = ("resunet", "unet2d")


def build_network(architecture: str, **config):
    """Build a network by architecture name.

    ``config`` is either a named configuration (``config="xue2020"``) plus overrides, or the full constructor keywords
    (what ``network.config`` holds and model cards store).
    """
    name = str(architecture).lower().replace("-", "").replace("_", "")
    preset = config.pop("config", None)
    if name == "resunet":
        from .resunet import ResUNet, build_resunet
        return build_resunet(preset, **config) if preset or not config else ResUNet(**config)
    if name in ("unet2d", "unet"):
        from .unet import UNet2D, build_unet
        return build_unet(preset, **config) if preset or not config else UNet2D(**config)
    raise InvalidParameterError(f"unknown network architecture {architecture!r}; known: {ARCHITECTURES}")


def architecture_name(network) -> str:
    """The registry name of a network instance."""
    from .resunet import ResUNet
    from .unet import UNet2D
    if isinstance(network, ResUNet):
        return "resunet"
    if isinstance(network, UNet2D):
        return "unet2d"
    raise InvalidParameterError(f"not a known network: {type(network).__name__}")


__all__ = ["ARCHITECTURES", "build_network", "architecture_name"]
