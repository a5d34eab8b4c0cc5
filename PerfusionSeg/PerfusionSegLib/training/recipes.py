"""The published training recipes, as defaults that every option of `perfusion train` can override.

Xue et al. 2020: Adam lr 1e-3 (0.9/0.999, eps 1e-8), lr halved every 10 epochs, 60 epochs, best validation model;
cross-entropy + Jaccard; crop shifts of +-24 px and +-6 frames as augmentation; 48 frames at 0.5 s, 176 px at 1 mm.
DAUGS (Yalcinkaya et al. 2024): cross-entropy, Adam lr 5e-4 halved every 2 epochs, batch 128, at most 15 epochs, early
stopping after 5 epochs without validation Dice gain, He initialisation, ~40-fold augmentation (rotation +-60 deg, shear
+-10 deg, translation +-2 px, scale 0.8-1.2, bias induction/correction, gamma 0.5-1.5, noise, contrast, coil
modulation), 64x64 training patches at stride 32 from 128x128 crops of 30 frames.
With an on-the-fly generator there is no fixed data set: an "epoch" is ``steps_per_epoch`` batches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..errors import InvalidParameterError


@dataclass
class Recipe:
    family: str                      # "resunet" | "daugs"
    architecture: str                # registry architecture name
    config: str                      # named network configuration
    n_frames: int
    size: int                        # network input field, pixels
    pixel_mm: Optional[float]        # None: the generator's DAUGS-like ~0.9 mm (2x interpolated)
    frame_interval_s: Optional[float]  # None: real heartbeat timing, then pchip to n_frames
    temporal: str                    # "linear" (fixed interval) | "pchip" (N frames)
    patch: Optional[int]             # training patch size (None: whole field)
    patch_stride: Optional[int]
    lr: float
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    lr_halve_every: int = 10         # epochs
    epochs: int = 60
    batch_size: int = 8
    steps_per_epoch: int = 100
    early_stop_patience: Optional[int] = None
    loss: str = "ce+jaccard"         # "ce" | "ce+jaccard"
    augment: str = "xue"             # "xue" (crop and frame shifts) | "daugs" (the 40-fold list) | "none"
    shift_px: int = 24
    shift_frames: int = 6
    bank_size: int = 256             # slices kept in memory and refreshed each epoch (generation is the bottleneck)
    bank_refresh: float = 0.25       # fraction of the bank replaced by new slices each epoch
    val_slices: int = 48
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> "Recipe":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InvalidParameterError(f"unknown recipe fields: {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def input_spec(self) -> dict:
        """What a model card tells inference about preparing a series (keys of ``prepare_for_network``)."""
        spec = {"n_frames": self.n_frames, "size": self.size, "temporal": self.temporal, "normalise": "robust_max"}
        if self.pixel_mm is not None:
            spec.update(spacing_mm=self.pixel_mm, scale=None)
        else:
            spec.update(spacing_mm=None, scale=2.0)   # DAUGS: 2x interpolation of the acquired pixels
        if self.frame_interval_s is not None:
            spec["dt"] = self.frame_interval_s
        if self.patch is not None:
            spec["patch"] = self.patch
        return spec


XUE2020 = Recipe(
    family="resunet", architecture="resunet", config="xue2020", n_frames=48, size=176, pixel_mm=1.0,
    frame_interval_s=0.5, temporal="linear", patch=None, patch_stride=None, lr=1e-3, lr_halve_every=10, epochs=60,
    batch_size=8, steps_per_epoch=100, early_stop_patience=None, loss="ce+jaccard", augment="xue",
)

DAUGS2024 = Recipe(
    family="daugs", architecture="unet2d", config="default", n_frames=30, size=128, pixel_mm=None,
    frame_interval_s=None, temporal="pchip", patch=64, patch_stride=32, lr=5e-4, lr_halve_every=2, epochs=15,
    batch_size=128, steps_per_epoch=60, early_stop_patience=5, loss="ce", augment="daugs",
)

RECIPES = {"resunet": XUE2020, "daugs": DAUGS2024}


def recipe_for(family: str) -> Recipe:
    if family not in RECIPES:
        raise InvalidParameterError(f"unknown model family {family!r}; choose {' or '.join(RECIPES)}")
    return RECIPES[family]
