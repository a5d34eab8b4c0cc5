"""Saturation-recovery perfusion signal and the acquisition around it (timing, coils, noise, motion, resolution).

Signal: after a (nearly ideal, efficiency eta) saturation pulse the longitudinal magnetisation recovers for the delay
TD to the first readout pulse, then a readout train of N lines (TR) samples it; the image contrast is set by the line
at the k-space centre (centric: line 0, linear: line N/2), and TS (saturation to k-space centre) = TD + n_c TR.
- SR-FLASH: Mz_n = Mss + (Mz_0 - Mss)(cos(a) E1)^n, signal PD sin(a) Mz_nc exp(-TE R2*) (Kellman et al. 2017).
- SR-bSSFP with alpha/2 catalysation: S_n = Sss + (Mz_0 sin(a/2) - Sss) lambda^n, lambda = E1 cos^2(a/2) + E2 sin^2(a/2)
  (Scheffler, MRM 2003).
T1(Gd) = 1 / (1/T10 + r1 [Gd]); T2* shortening of blood at high [Gd] (r2*) gives the slight peak flattening seen in
FLASH at 3T.

Noise: with coil sensitivities c_k and independent complex Gaussian noise per coil, the B1-weighted (adaptive)
combination sum(c_k* s_k)/|c| equals |c| S + n with n complex Gaussian of the per-coil sd: the bias field is
|c| and the magnitude image is Rician. This is exact, so the generator draws one complex noise image per frame
instead of one per coil (``coil_combine='sos'`` draws per coil and combines by root-sum-of-squares, slower).
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

# relaxation at 1.5 T / 3 T: T10 (ms), T2 (ms), relative proton density.
# Sources: Stanisz et al. MRM 2005 (liver, muscle, fat, blood...), Kellman & Hansen JCMR 2014 (myocardium, blood T1
# by MOLLI), de Bazelaire et al. Radiology 2004 (spleen, marrow at 1.5/3 T).
RELAXATION = {
    1.5: {"blood": (1550, 250, 0.95), "myo": (1000, 50, 0.80), "fat": (290, 80, 0.95), "liver": (580, 46, 0.70),
          "spleen": (1060, 79, 0.80), "muscle": (1010, 44, 0.75), "lung": (1200, 30, 0.15), "marrow": (550, 50, 0.85),
          "pericardium": (900, 15, 0.35), "fluid": (3000, 1500, 1.0), "air": (1000, 10, 0.0), "bowel": (900, 60, 0.75),
          "lung_vessel": (1550, 250, 0.35)},
    3.0: {"blood": (1930, 200, 0.95), "myo": (1250, 45, 0.80), "fat": (380, 70, 0.95), "liver": (810, 42, 0.70),
          "spleen": (1330, 61, 0.80), "muscle": (1410, 50, 0.75), "lung": (1300, 25, 0.15), "marrow": (600, 50, 0.85),
          "pericardium": (1100, 13, 0.35), "fluid": (3500, 1200, 1.0), "air": (1000, 10, 0.0), "bowel": (1200, 55, 0.75),
          "lung_vessel": (1930, 200, 0.35)},
}
# which relaxation class each anatomy tissue uses
TISSUE_CLASS = {
    "air": "air", "lv_blood": "blood", "lv_myo": "myo", "rv_blood": "blood", "rv_wall": "myo", "papillary": "myo",
    "epi_fat": "fat", "pericardium": "pericardium", "lung": "lung", "lung_artery": "lung_vessel", "lung_vein": "lung_vessel",
    "liver": "liver", "muscle": "muscle", "subcut_fat": "fat", "spine": "marrow", "aorta": "blood", "stomach": "fluid",
    "spleen": "spleen", "aortic_root": "blood", "lv_blood_mix": "blood", "rv_blood_mix": "blood", "bowel": "bowel",
    "rv_trabecula": "myo",
}
# lung vessels: small and oblique, so they fill only part of the 8-10 mm slice (through-plane partial volume: PD 0.35)
# texture amplitude per relaxation class (tissue inhomogeneity; none for blood, strong speckle for lung)
TEXTURE = {"blood": 0.0, "air": 0.0, "lung": 1.0, "lung_vessel": 0.0}


def sr_signal(gd: np.ndarray, t10_ms, t2_ms, pd, seq: dict) -> np.ndarray:
    """Saturation-recovery readout signal for concentrations ``gd`` (any shape; T10/T2/PD broadcast against it)."""
    r1 = 1.0 / (np.asarray(t10_ms) * 1e-3) + seq["r1"] * gd            # 1/s
    tr = seq["tr_ms"] * 1e-3
    n_c = 0 if seq["ordering"] == "centric" else seq["n_lines"] // 2
    td = seq["ts_ms"] * 1e-3 - n_c * tr
    a = np.radians(seq["flip_deg"])
    mz0 = 1.0 - seq["sat_efficiency"] * np.exp(-td * r1) if seq.get("saturation", True) else np.ones_like(r1)
    e1 = np.exp(-tr * r1)
    if seq["type"] == "flash":
        q = np.cos(a) * e1
        mss = (1.0 - e1) / (1.0 - q)
        mz = mss + (mz0 - mss) * q ** n_c
        s = np.sin(a) * mz
    else:
        r2 = 1.0 / (np.asarray(t2_ms) * 1e-3) + seq.get("r2", 5.0) * gd
        e2 = np.exp(-tr * r2)
        lam = e1 * np.cos(a / 2) ** 2 + e2 * np.sin(a / 2) ** 2
        sss = np.sin(a) * (1.0 - e1) / (1.0 - (e1 - e2) * np.cos(a) - e1 * e2) * np.sqrt(e2)
        s = sss + (mz0 * np.sin(a / 2) - sss) * lam ** n_c
    te = seq.get("te_ms", 1.0) * 1e-3
    return np.asarray(pd) * s * np.exp(-te * seq.get("r2star", 0.0) * gd)


def texture_fields(rng: np.random.Generator, shape: tuple, spacing: float, strength: float) -> tuple:
    """Smooth tissue inhomogeneity (sd ``strength``, ~5 mm grain) and fine lung speckle (sd 0.5, ~1 pixel grain)."""
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 5.0 / spacing, mode="wrap")
    coarse *= strength / max(float(coarse.std()), 1e-6)
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.7, mode="wrap")
    fine *= 0.5 / max(float(fine.std()), 1e-6)
    return coarse, fine


# --- timing --------------------------------------------------------------------------------------------------------
def frame_times(rng: np.random.Generator, n_frames: int, hr_bpm: float, jitter: float, missed_prob: float) -> tuple:
    """Frame (heartbeat) times in s from ECG triggering: RR jitter and occasional missed triggers (2 RR gaps)."""
    rr = 60.0 / hr_bpm * np.clip(1.0 + jitter * rng.standard_normal(n_frames), 0.7, 1.3)
    missed = rng.random(n_frames) < missed_prob
    missed[0] = False
    rr = rr * np.where(missed, 2.0, 1.0)
    t = np.concatenate([[0.0], np.cumsum(rr[1:])])
    return t, int(missed.sum())


# --- coils and noise ----------------------------------------------------------------------------------------------
def coil_bias(shape: tuple, spacing: float, rng_params: dict) -> tuple:
    """Combined coil sensitivity |c| (normalised to 1 at the image centre) and g-factor map, both smooth (Y, X)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    yy = (yy - (ny - 1) / 2) * spacing
    xx = (xx - (nx - 1) / 2) * spacing
    s2 = np.zeros(shape, dtype=np.float32)
    for (cx, cy, w, amp) in rng_params["coils"]:
        s2 += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w * w))
    s2 += rng_params["floor"]
    bias = np.sqrt(s2)
    bias /= bias[ny // 2, nx // 2]
    g = 1.0 + rng_params["g_excess"] * np.exp(-(xx ** 2 + yy ** 2) / (2 * 90.0 ** 2))
    return bias.astype(np.float32), g.astype(np.float32)


def sample_coils(rng: np.random.Generator, fov_mm: tuple, strength: float = 1.0) -> dict:
    """Anterior and posterior coil elements around the chest (positions in mm from the image centre)."""
    fy, fx = fov_mm
    coils = []
    for side in (-1, 1):   # anterior array (top, closer: stronger) and posterior array (bottom)
        for j in range(int(rng.integers(2, 5))):
            cx = float(rng.uniform(-0.45, 0.45) * fx)
            cy = float(side * rng.uniform(0.45, 0.75) * max(fy, 200))
            coils.append([cx, cy, float(rng.uniform(70, 150)), float(strength * rng.uniform(0.5, 1.5) * (1.4 if side < 0 else 1.0))])
    return {"coils": coils, "floor": float(rng.uniform(0.05, 0.3)), "g_excess": float(rng.uniform(0.0, 0.6))}


# --- motion ---------------------------------------------------------------------------------------------------------
def sample_motion(rng: np.random.Generator, n_frames: int, times: np.ndarray, amplitude_mm: float) -> dict:
    """Residual in-plane shifts (mm): breath-hold drift that grows late in the series plus jitter; a few frames
    with a through-plane change (cross-section scaled by a few %)."""
    hold = float(rng.uniform(15.0, 35.0))
    period = float(rng.uniform(3.5, 6.0))
    ramp = np.clip((times - hold) / 8.0, 0.0, 1.0)
    ph = rng.uniform(0, 2 * np.pi, 2)
    direc = rng.normal(0, 1, 2)
    direc /= np.linalg.norm(direc) + 1e-9
    breathing = amplitude_mm * ramp * np.sin(2 * np.pi * times / period + ph[0])
    dy = breathing * direc[0] + 0.25 * amplitude_mm * rng.standard_normal(n_frames) * 0.3
    dx = breathing * direc[1] + 0.25 * amplitude_mm * rng.standard_normal(n_frames) * 0.3
    n_tp = int(rng.integers(0, 4)) if amplitude_mm > 0 else 0
    tp_frames = sorted(int(i) for i in rng.choice(n_frames, size=n_tp, replace=False)) if n_tp else []
    # small elastic changes (cardiac phase / residual after registration) on some frames: a smooth displacement of
    # 0.3-1.2 mm made of two plane waves per axis, with a small rotation (sd 1.5 deg): rigid + elastic residuals
    n_el = int(rng.integers(0, max(2, n_frames // 6))) if amplitude_mm > 0 else 0
    el_frames = sorted(int(i) for i in rng.choice(n_frames, size=n_el, replace=False)) if n_el else []
    el_modes = [[[float(rng.uniform(0.3, 1.2)), float(rng.uniform(40, 120)), float(rng.uniform(0, 360)),
                  float(rng.uniform(0, 360)), int(ax)] for ax in (0, 0, 1, 1)] for _ in el_frames]
    return {"dy_mm": dy.tolist(), "dx_mm": dx.tolist(), "through_plane_frames": tp_frames,
            "through_plane_scale": [float(rng.uniform(0.93, 1.07)) for _ in tp_frames],
            "elastic_frames": el_frames, "elastic_modes": el_modes,
            "elastic_rotation_deg": [float(rng.normal(0.0, 1.5)) for _ in el_frames]}


def apply_motion_and_resolution(img: np.ndarray, motion: dict, spacing: float, blur: dict) -> np.ndarray:
    """Shift every frame (Fourier phase ramp), low-pass for the acquired k-space extent, scale through-plane frames."""
    t, ny, nx = img.shape
    k = sfft.rfft2(img, axes=(1, 2), workers=1)
    ky = sfft.fftfreq(ny)[:, None].astype(np.float32)
    kx = sfft.rfftfreq(nx)[None, :].astype(np.float32)
    # k-space window: phase resolution < 100% and a Hamming/Tukey-like apodisation set by blur["sigma_px"]
    h = np.exp(-2 * (np.pi * blur["sigma_px"]) ** 2 * (ky ** 2 + kx ** 2))
    h = h * (np.abs(ky) <= 0.5 * blur["phase_resolution"])
    dy = np.asarray(motion["dy_mm"], dtype=np.float32)[:, None, None] / spacing
    dx = np.asarray(motion["dx_mm"], dtype=np.float32)[:, None, None] / spacing
    k *= h[None].astype(np.float32)
    if np.any(dy) or np.any(dx):   # a shift is a separable phase ramp: two small complex factors per frame
        k *= np.exp((-2j * np.pi) * (ky[None] * dy)).astype(np.complex64)
        k *= np.exp((-2j * np.pi) * (kx[None] * dx)).astype(np.complex64)
    out = sfft.irfft2(k, s=(ny, nx), axes=(1, 2), workers=1).astype(np.float32)
    for fr, sc in zip(motion["through_plane_frames"], motion["through_plane_scale"]):
        c = np.array([(ny - 1) / 2, (nx - 1) / 2])
        out[fr] = ndimage.affine_transform(out[fr], np.eye(2) / sc, offset=c - c / sc, order=1, mode="nearest")
    el = motion.get("elastic_frames", [])
    if el:
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
        rots = motion.get("elastic_rotation_deg", [0.0] * len(el))
        cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
        for fr, modes, rot in zip(el, motion["elastic_modes"], rots):
            # small in-plane rotation about the image centre plus the smooth elastic field
            c, s_ = np.cos(np.radians(rot)), np.sin(np.radians(rot))
            disp = [(s_ * (xx - cx) + c * (yy - cy) + cy) - yy, (c * (xx - cx) - s_ * (yy - cy) + cx) - xx]
            for amp, wl, direction, phase, axis in modes:
                d = np.radians(direction)
                arg = (2 * np.pi * spacing / wl) * (np.cos(d) * xx + np.sin(d) * yy) + np.radians(phase)
                disp[axis] += (amp / spacing) * np.sin(arg)
            out[fr] = ndimage.map_coordinates(out[fr], [yy + disp[0], xx + disp[1]], order=1, mode="nearest")
    return out


def add_noise(img: np.ndarray, sigma_map: np.ndarray, rng: np.random.Generator, coil_combine: str = "adaptive",
              n_coils: int = 1) -> np.ndarray:
    """Complex Gaussian noise on a real (phase 0) combined image: returns complex64 (magnitude taken later, after any
    k-space interpolation, so the noise stays Rician and spatially correlated as on the scanner). ``sos`` draws per
    coil and returns the root-sum-of-squares magnitude (float32) instead."""
    shape = img.shape
    if coil_combine == "sos" and n_coils > 1:
        acc = np.zeros(shape, dtype=np.float32)
        for _ in range(n_coils):
            re = img / np.sqrt(n_coils) + sigma_map * rng.standard_normal(shape, dtype=np.float32)
            im = sigma_map * rng.standard_normal(shape, dtype=np.float32)
            acc += re * re + im * im
        return np.sqrt(acc)
    # one draw of 2N float32 normals viewed as N complex64 values: fewer passes over memory than real + imaginary
    out = rng.standard_normal(shape + (2,), dtype=np.float32).view(np.complex64)[..., 0]
    out *= sigma_map
    out.real += img
    return out


def upsample_fourier(img: np.ndarray, factor: int) -> np.ndarray:
    """Zero-filled k-space interpolation (what scanners call 'interpolation') of (T, Y, X) complex or real frames."""
    if factor == 1:
        return img
    t, ny, nx = img.shape
    k = sfft.fftshift(sfft.fft2(img, axes=(1, 2), workers=1), axes=(1, 2))
    pad = np.zeros((t, ny * factor, nx * factor), dtype=np.complex64)
    oy, ox = (ny * factor - ny) // 2, (nx * factor - nx) // 2
    pad[:, oy:oy + ny, ox:ox + nx] = k
    return (sfft.ifft2(sfft.ifftshift(pad, axes=(1, 2)), axes=(1, 2), workers=1) * factor * factor)
