"""Acquisition presets: parameter *ranges* per kind of data, and a sampler that draws one concrete acquisition.

Every range is a (low, high) drawn uniformly; fixed values are plain numbers or strings.
Sources (values as reported, widened a little to cover sites):
- siemens-flash-3t: SR-FLASH of the NHLBI dual-sequence protocol (Kellman et al., JCMR 2017;19:43): flip 14 deg,
  TR ~2.1 ms, TS ~100 ms to k-space centre, matrix 192x111 (we use 192x144 reconstructed), FOV ~360x270 mm, 8 mm slices,
  R=3, 2 PD frames at 5 deg. 3 slices per RR.
- siemens-bssfp-3t: SR-bSSFP as in the DAUGS external data (Siemens 3T, TIM-Lab): flip 30-60 deg, TR 2.4-2.8 ms,
  TS 90-160 ms, ~1.8 mm acquired, reconstructed with 2x interpolation, 8 mm slices. The Siemens tfiperf2d1 header in
  ../shared/data/dicom_siemens_single_slice (1.5 T) reads TI 150 ms, flip 32 deg, TE 1.3 ms, 128x72 acquired lines.
- ge-gre-3t: GE saturation-recovery fast GRE (FGRE-ET): flip 20-25 deg, TR 2.8-3.6 ms, TS 120-200 ms, 128x128 over a
  360-400 mm FOV (2.8-3.1 mm), ZIP 2x to 256, 10 mm slices, linear ordering.
- siemens-flash-1p5t: the same SR-FLASH at 1.5 T (Kellman 2017; flip 12-14 deg, TR 2.2-2.5 ms), lower SNR.
- randomised: SynthSeg-style domain randomisation (Billot et al., Med Image Anal 2023): any of the sequences, random
  per-tissue T1/PD within the physiological ordering (fat brightest pre-contrast, blood and myocardium dark before the
  bolus, lung darkest), random bias, blur, resolution, noise (a third with 8-coil root-sum-of-squares), orientation
  (any rotation, mirrored half the time), LV peak up to 15 mmol/L (clinical single-bolus doses).
Field-dependent relaxation is in ``signal.RELAXATION``; relaxivities r1 (L/mmol/s) 4.0-5.2 at 1.5 T and 3.4-4.8 at 3 T
span gadobutrol and gadoterate in blood (Rohrer et al., Invest Radiol 2005; Shen et al., Invest Radiol 2015).
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidParameterError

_COMMON = {
    "sat_efficiency": (0.85, 0.99),      # B1 inhomogeneity at 3 T leaves a few % of Mz (raises pre-contrast signal)
    "lv_peak_mmol": (2.0, 8.0),          # AIF peak range of the issue (dual-bolus / 0.05 mmol/kg)
    "te_ms": (0.9, 1.3),
    "pd_frames": 2,
    "pd_flip_deg": 5.0,
    "slices_per_rr": 3,
    "motion_mm": (0.3, 2.5),
    "rotation_sd_deg": 15.0,
    "mirror": False,
    "contrast_jitter": 0.0,
    "coil_combine": "adaptive",
    "texture": (0.03, 0.12),
}

PRESETS = {
    "siemens-flash-3t": {
        **_COMMON, "field_T": 3.0, "sequence": "flash", "flip_deg": (12.0, 15.0), "tr_ms": (2.0, 2.3), "ts_ms": (90.0, 110.0),
        "n_lines": (37, 48), "ordering": "linear", "r1": (3.8, 4.8), "r2star": (15.0, 30.0),
        "fov_x_mm": (340.0, 380.0), "matrix_xy": (192, 144), "slice_mm": 8.0, "interp": 1,
        "snr_blood_peak": (35.0, 80.0), "blur_px": (0.4, 0.9), "phase_resolution": (0.75, 1.0),
    },
    "siemens-bssfp-3t": {
        **_COMMON, "field_T": 3.0, "sequence": "bssfp", "flip_deg": (30.0, 60.0), "tr_ms": (2.4, 2.8), "ts_ms": (90.0, 160.0),
        "n_lines": (40, 60), "ordering": "linear", "r1": (3.8, 4.8), "r2star": (0.0, 5.0),
        "fov_x_mm": (300.0, 360.0), "matrix_xy": (176, 132), "slice_mm": 8.0, "interp": 2,
        "snr_blood_peak": (30.0, 70.0), "blur_px": (0.4, 0.9), "phase_resolution": (0.7, 0.9),
    },
    "ge-gre-3t": {
        **_COMMON, "field_T": 3.0, "sequence": "flash", "flip_deg": (20.0, 25.0), "tr_ms": (2.8, 3.6), "ts_ms": (120.0, 200.0),
        "n_lines": (48, 64), "ordering": "linear", "r1": (3.4, 4.5), "r2star": (15.0, 30.0),
        "fov_x_mm": (360.0, 400.0), "matrix_xy": (128, 128), "slice_mm": 10.0, "interp": 2,
        "snr_blood_peak": (30.0, 70.0), "blur_px": (0.4, 0.8), "phase_resolution": (0.75, 1.0), "pd_frames": 1,
    },
    "siemens-flash-1p5t": {
        **_COMMON, "field_T": 1.5, "sequence": "flash", "flip_deg": (12.0, 14.0), "tr_ms": (2.2, 2.5), "ts_ms": (90.0, 110.0),
        "n_lines": (37, 48), "ordering": "linear", "r1": (4.0, 5.2), "r2star": (10.0, 20.0),
        "fov_x_mm": (340.0, 380.0), "matrix_xy": (192, 144), "slice_mm": 8.0, "interp": 1,
        "snr_blood_peak": (20.0, 50.0), "blur_px": (0.4, 0.9), "phase_resolution": (0.75, 1.0),
    },
    "randomised": {
        **_COMMON, "field_T": (1.5, 3.0), "sequence": ("flash", "bssfp"), "flip_deg": None, "tr_ms": (2.0, 3.4),
        "ts_ms": (50.0, 200.0), "n_lines": (30, 64), "ordering": ("linear", "centric"), "r1": (3.4, 5.2),
        "r2star": (0.0, 30.0), "fov_x_mm": (300.0, 400.0), "matrix_xy": ((128, 96), (256, 192)), "slice_mm": (6.0, 10.0),
        "interp": (1, 2), "snr_blood_peak": (12.0, 90.0), "blur_px": (0.0, 1.5), "phase_resolution": (0.6, 1.0),
        "rotation_sd_deg": 180.0, "mirror": True, "contrast_jitter": 0.35, "sat_efficiency": (0.75, 1.0),
        "lv_peak_mmol": (2.0, 15.0), "motion_mm": (0.0, 3.5), "texture": (0.0, 0.2),
        "coil_combine": ("adaptive", "adaptive", "sos"),
    },
}
PRESET_NAMES = tuple(PRESETS)
DEFAULT_PRESET = "siemens-flash-3t"


def check_preset(name: str) -> dict:
    if not isinstance(name, str) or name not in PRESETS:
        raise InvalidParameterError(f"unknown phantom preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def _draw(rng, v):
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        if all(isinstance(x, int) for x in v):
            return int(rng.integers(v[0], v[1] + 1))
        return float(rng.uniform(*v))
    if isinstance(v, tuple):
        return v[int(rng.integers(0, len(v)))]
    return v


def sample_acquisition(rng: np.random.Generator, preset: str) -> dict:
    """One concrete acquisition (JSON-able) drawn from a preset's ranges."""
    spec = check_preset(preset)
    acq = {"preset": preset}
    for key, v in spec.items():
        if key == "field_T" and isinstance(v, tuple):
            acq[key] = float(v[int(rng.integers(0, 2))])
        elif key == "matrix_xy" and isinstance(v[0], tuple):
            nx = int(rng.integers(v[0][0] // 16, v[1][0] // 16 + 1) * 16)
            acq[key] = [nx, int(round(nx * rng.uniform(0.7, 1.0) / 8) * 8)]
        elif key == "matrix_xy":
            acq[key] = list(v)
        else:
            acq[key] = _draw(rng, v)
    if acq["flip_deg"] is None:   # randomised: a flip angle that suits the drawn sequence
        acq["flip_deg"] = float(rng.uniform(8, 25) if acq["sequence"] == "flash" else rng.uniform(30, 70))
    n_c = 0 if acq["ordering"] == "centric" else acq["n_lines"] // 2
    if acq["ts_ms"] < n_c * acq["tr_ms"] + 10.0:   # random draws must leave a recovery delay before the first line
        acq["ts_ms"] = float(n_c * acq["tr_ms"] + rng.uniform(10.0, 40.0))
    nx, ny = acq["matrix_xy"]
    acq["pixel_mm"] = float(acq["fov_x_mm"] / nx)   # acquired pixel; output pixel = pixel_mm / interp
    return acq


def sequence_dict(acq: dict) -> dict:
    """The keyword set that signal.sr_signal takes."""
    return {"type": acq["sequence"], "flip_deg": acq["flip_deg"], "tr_ms": acq["tr_ms"], "ts_ms": acq["ts_ms"],
            "n_lines": acq["n_lines"], "ordering": acq["ordering"], "sat_efficiency": acq["sat_efficiency"],
            "r1": acq["r1"], "r2star": acq["r2star"], "te_ms": acq["te_ms"], "saturation": True}
