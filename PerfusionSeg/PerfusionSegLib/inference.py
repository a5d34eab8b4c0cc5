"""Full-image segmentation of a slice series with a registered model (Xue's ResUNet or any full-image network).

series -> ``preprocess.prepare_for_network`` (frames, spacing, crop and normalisation from the model card's input spec)
-> network (batched, no grad, channels-last) -> softmax probabilities on the network grid -> back to the INPUT grid
with ``NetworkGeometry.to_input_grid`` (linear for probabilities) -> post-processing and QC on the input grid.
Outside the network's crop the probabilities are background = 1, other classes = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .errors import InvalidParameterError

# card input keys -> prepare_for_network keywords, with the ResUNet's published defaults
_INPUT_DEFAULTS = {"spacing_mm": 1.0, "scale": None, "size": 176, "n_frames": 48, "temporal": "linear", "dt": 0.5,
                   "normalise": "robust_max"}


@dataclass
class SegmentationResult:
    labels: np.ndarray            # (Y, X) uint8, project codes, input grid
    probabilities: np.ndarray     # (C, Y, X) float32, input grid
    qc: dict
    geometry: object              # preprocess.NetworkGeometry (network grid <-> input grid)
    network_probabilities: Optional[np.ndarray] = None   # (C, S, S) on the network grid
    info: dict = field(default_factory=dict)


def prepare_kwargs(model, **overrides) -> dict:
    """Keyword arguments for ``prepare_for_network`` from the model card's input spec (plus overrides)."""
    spec = dict(_INPUT_DEFAULTS)
    spec.update({k: v for k, v in model.input_spec.items() if k in _INPUT_DEFAULTS})
    spec["n_frames"] = int(model.in_channels)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    return spec


def probabilities_to_input_grid(probs: np.ndarray, geometry) -> np.ndarray:
    """(C, S, S) network-grid probabilities -> (C, Y, X) on the input grid (linear; outside the crop: background)."""
    out = np.asarray(geometry.to_input_grid(np.asarray(probs, np.float32), order=1), np.float32)   # (C, Y, X)
    outside = ~np.isfinite(out).all(axis=0)
    out = np.nan_to_num(out, nan=0.0)
    out[0][outside] = 1.0
    out[1:, outside] = 0.0
    total = out.sum(axis=0, keepdims=True)     # linear interpolation keeps the sum at 1 up to rounding
    return out / np.where(total > 0, total, 1.0)


def segment_batch(prepared: Sequence[np.ndarray], model, *, batch_size: int = 8, bf16: bool = False) -> np.ndarray:
    """Network-grid probabilities (N, C, S, S) for prepared inputs [(T, S, S), ...] (same size)."""
    x = np.stack([np.asarray(p, np.float32) for p in prepared])
    return model.predict_proba(x, batch_size=batch_size, bf16=bf16)


def segment_series(series, model, *, postprocess: bool = True, center_yx=None, bf16: bool = False,
                   uncertainty_map: Optional[np.ndarray] = None, uncertainty_threshold: Optional[float] = None,
                   adapt_bn: bool = False, **prepare_overrides) -> SegmentationResult:
    """Segment one slice series with a loaded model; every output is on the series' own grid.

    ``model``: a LoadedModel (or ``onnx_model.OnnxModel``), or a model name / card path for ``registry.load_model``.
    ``center_yx``: LV centre on the input grid (else ``prepare_for_network`` locates it). ``bf16``: bfloat16 autocast.
    ``adapt_bn``: the network's BatchNorm statistics are re-estimated on this series' prepared input before it is
    segmented (``networks.bn_adaptation``; a torch model only).
    """
    from .preprocess import prepare_for_network
    from .postprocess import assemble_labels
    from .qc import slice_qc

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .networks.registry import load_model
        model = load_model(model)
    if model.architecture not in ("resunet", "unet2d"):
        raise InvalidParameterError(f"full-image segmentation needs a full-image network, not {model.architecture!r}")
    kwargs = prepare_kwargs(model, **prepare_overrides)
    x, geometry = prepare_for_network(series, center_yx=center_yx, **kwargs)
    if adapt_bn:
        model = _bn_adapted(model, x)
    net_probs = segment_batch([x], model, bf16=bf16)[0]
    probs = probabilities_to_input_grid(net_probs, geometry)
    labels = assemble_labels(probs) if postprocess else probs.argmax(axis=0).astype(np.uint8)
    qc = slice_qc(labels, series.spacing, level=series.level, affine=series.affine, umap=uncertainty_map,
                  uncertainty_threshold=uncertainty_threshold)
    return SegmentationResult(labels=labels, probabilities=probs, qc=qc, geometry=geometry,
                              network_probabilities=net_probs,
                              info={"model": model.name, "prepare": {k: v for k, v in kwargs.items()},
                                    "bn_adapted": bool(adapt_bn)})


def _bn_adapted(model, x: np.ndarray):
    """The model with its network's BatchNorm statistics taken from the prepared input ``x`` (T, S, S)."""
    import dataclasses

    import torch

    from .networks.bn_adaptation import adapt_batchnorm

    if not dataclasses.is_dataclass(model) or not isinstance(getattr(model, "network", None), torch.nn.Module):
        raise InvalidParameterError("BatchNorm adaptation needs a PyTorch model (not an ONNX one)")
    batch = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None].contiguous(memory_format=torch.channels_last)
    return dataclasses.replace(model, network=adapt_batchnorm(model.network, batch))


def segment_study(study, model, **kwargs) -> list:
    """segment_series for every slice of a study (basal to apical)."""
    return [segment_series(s, model, **kwargs) for s in study.slices]


__all__ = ["SegmentationResult", "segment_series", "segment_study", "segment_batch", "prepare_kwargs",
           "probabilities_to_input_grid"]
