"""Batched data augmentation on torch tensors: images (N, T, H, W) in [0, 1], labels (N, H, W) int64.

One affine warp per sample (rotation, shear, scale, translation) through ``affine_grid``/``grid_sample`` (bilinear for
images, nearest for labels, so label codes stay codes), then intensity changes that real scanners produce: a smooth
multiplicative bias (induced, or a crude correction that divides by a blurred copy), coil-sensitivity modulation
(a Gaussian hot spot), gamma, contrast and Gaussian/Rician noise. Vectorised over the batch: no Python loop per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """DAUGS ranges by default (Yalcinkaya et al. 2024); probabilities say how often each change is applied."""

    rotation_deg: float = 60.0
    shear_deg: float = 10.0
    translation_px: float = 2.0
    scale: tuple = (0.8, 1.2)
    flip_prob: float = 0.0           # mirror images change which way the septum turns; the phantom already mirrors
    bias_prob: float = 0.5
    bias_strength: float = 0.4
    bias_correction_prob: float = 0.15
    coil_prob: float = 0.3
    gamma: tuple = (0.5, 1.5)
    gamma_prob: float = 0.5
    contrast: tuple = (0.75, 1.25)
    contrast_prob: float = 0.5
    noise_sd: tuple = (0.0, 0.04)
    noise_prob: float = 0.5


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def affine_matrices(n: int, size: tuple, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices for ``affine_grid`` in normalised coordinates (translation given in pixels)."""
    h, w = size
    rot = torch.deg2rad(_uniform(n, -cfg.rotation_deg, cfg.rotation_deg, g))
    shear = torch.deg2rad(_uniform(n, -cfg.shear_deg, cfg.shear_deg, g))
    scale = _uniform(n, cfg.scale[0], cfg.scale[1], g)
    tx = _uniform(n, -cfg.translation_px, cfg.translation_px, g) * 2.0 / w
    ty = _uniform(n, -cfg.translation_px, cfg.translation_px, g) * 2.0 / h
    cos, sin = torch.cos(rot), torch.sin(rot)
    # output -> input sampling map: R(rot) @ Shear @ (1/scale)
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    sh = torch.zeros(n, 2, 2)
    sh[:, 0, 0] = 1
    sh[:, 1, 1] = 1
    sh[:, 0, 1] = torch.tan(shear)
    m = (a @ sh) / scale[:, None, None]
    if cfg.flip_prob > 0:
        flip = torch.where(torch.rand(n, generator=g) < cfg.flip_prob, -1.0, 1.0)
        m[:, :, 0] = m[:, :, 0] * flip[:, None]
    return torch.cat([m, torch.stack([tx, ty], -1)[:, :, None]], dim=2)


def warp(images: torch.Tensor, labels: Optional[torch.Tensor], theta: torch.Tensor):
    """Apply per-sample affine matrices; outside the field images are 0 and labels background."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_labels = None
    if labels is not None:
        lab = F.grid_sample(labels[:, None].to(images.dtype), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)
        out_labels = lab[:, 0].round().long()
    return out, out_labels


def smooth_field(n: int, size: tuple, strength: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A smooth positive multiplicative field per sample (N, 1, H, W): exp of a random low-order polynomial."""
    h, w = size
    y = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    x = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    basis = torch.stack([x, y, x * y, x * x - 1 / 3, y * y - 1 / 3])            # (5, H, W)
    coef = (torch.rand(n, 5, generator=g) * 2 - 1) * strength[:, None]
    return torch.exp(torch.einsum("nk,khw->nhw", coef, basis))[:, None]


def coil_field(n: int, size: tuple, g: torch.Generator) -> torch.Tensor:
    """Surface-coil-like modulation: 1 + a broad Gaussian bump at a random place near the edge of the field."""
    h, w = size
    y = torch.linspace(-1, 1, h)[:, None]
    x = torch.linspace(-1, 1, w)[None, :]
    ang = _uniform(n, 0, 2 * math.pi, g)
    cx, cy = 1.1 * torch.cos(ang), 1.1 * torch.sin(ang)
    width = _uniform(n, 0.5, 1.2, g)
    amp = _uniform(n, 0.3, 1.5, g)
    d2 = (x[None] - cx[:, None, None]) ** 2 + (y[None] - cy[:, None, None]) ** 2
    field = 1 + amp[:, None, None] * torch.exp(-d2 / (2 * width[:, None, None] ** 2))
    return (field / field.mean(dim=(1, 2), keepdim=True))[:, None]


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def intensity(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Bias, coil modulation, gamma, contrast and noise, each applied to a random subset of the batch."""
    n, _, h, w = images.shape
    x = images
    pick = lambda p: torch.rand(n, generator=g) < p  # noqa: E731 - a one-line sampler reads best here
    if cfg.bias_prob > 0:
        strength = _uniform(n, 0.0, cfg.bias_strength, g)
        x = _where(pick(cfg.bias_prob), x * smooth_field(n, (h, w), strength, g), x)
    if cfg.bias_correction_prob > 0:
        # a crude flat-field "correction": divide by a heavily blurred mean image, as scanners' normalisation does
        mean = x.mean(dim=1, keepdim=True)
        k = max(3, (min(h, w) // 4) | 1)
        blurred = F.avg_pool2d(F.pad(mean, (k // 2,) * 4, mode="replicate"), k, stride=1)
        corrected = x / (blurred / blurred.mean(dim=(2, 3), keepdim=True)).clamp_min(0.2)
        x = _where(pick(cfg.bias_correction_prob), corrected, x)
    if cfg.coil_prob > 0:
        x = _where(pick(cfg.coil_prob), x * coil_field(n, (h, w), g), x)
    # back to [0, 1] on a robust per-sample maximum before the nonlinear changes
    top = torch.quantile(x.reshape(n, -1)[:, :: max(1, x[0].numel() // 20000)], 0.995, dim=1).clamp_min(1e-6)
    x = (x / top.view(n, 1, 1, 1)).clamp(0, 1)
    if cfg.gamma_prob > 0:
        gam = _uniform(n, cfg.gamma[0], cfg.gamma[1], g).view(n, 1, 1, 1)
        x = _where(pick(cfg.gamma_prob), x.clamp_min(0) ** gam, x)
    if cfg.contrast_prob > 0:
        c = _uniform(n, cfg.contrast[0], cfg.contrast[1], g).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = _where(pick(cfg.contrast_prob), ((x - mean) * c + mean).clamp(0, 1), x)
    if cfg.noise_prob > 0:
        sd = _uniform(n, cfg.noise_sd[0], cfg.noise_sd[1], g).view(n, 1, 1, 1)
        re = x + sd * torch.randn(x.shape, generator=g)
        im = sd * torch.randn(x.shape, generator=g)
        x = _where(pick(cfg.noise_prob), torch.sqrt(re * re + im * im), x)  # magnitude of complex noise: Rician
    return x.clamp(0, 1.5)


def augment_daugs(images: torch.Tensor, labels: torch.Tensor, g: torch.Generator,
                  cfg: Optional[AugmentConfig] = None):
    """The DAUGS augmentation of a batch: one random affine warp per sample, then intensity changes."""
    cfg = cfg or AugmentConfig()
    theta = affine_matrices(images.shape[0], tuple(images.shape[-2:]), cfg, g)
    x, y = warp(images, labels, theta)
    return intensity(x, cfg, g), y


def shift_crop(images: torch.Tensor, labels: torch.Tensor, size: int, n_frames: int, g: torch.Generator):
    """Xue's augmentation: a random crop of ``size`` pixels and ``n_frames`` frames from a larger field and window.

    images (N, T0, H0, W0) with T0 >= n_frames and H0, W0 >= size; the crop offset is uniform over what is available
    (the caller generates the field 2 x 24 px and the window 2 x 6 frames larger for Xue's +-24 px, +-6 frames).
    """
    n, t0, h0, w0 = images.shape
    out_x = torch.empty(n, n_frames, size, size, dtype=images.dtype)
    out_y = torch.empty(n, size, size, dtype=labels.dtype)
    ot = torch.randint(0, t0 - n_frames + 1, (n,), generator=g)
    oy = torch.randint(0, h0 - size + 1, (n,), generator=g)
    ox = torch.randint(0, w0 - size + 1, (n,), generator=g)
    for i in range(n):  # a loop over samples (not pixels): slicing views are cheap
        out_x[i] = images[i, ot[i]:ot[i] + n_frames, oy[i]:oy[i] + size, ox[i]:ox[i] + size]
        out_y[i] = labels[i, oy[i]:oy[i] + size, ox[i]:ox[i] + size]
    return out_x, out_y
