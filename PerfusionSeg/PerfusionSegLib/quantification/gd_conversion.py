"""Signal to gadolinium concentration: proton-density normalisation and a Bloch-simulated look-up table.

Saturation-recovery (SR) perfusion signal is not proportional to [Gd]: it saturates at high concentration. We simulate
the readout for a range of [Gd] (T1 = 1/(1/T1_0 + r1 C), T2 = 1/(1/T2_0 + r2 C)), divide by the simulated PD image
(low flip angle, no saturation, fully relaxed), and invert the measured SR/PD ratio through this monotone table by
interpolation. The PD image cancels receive-coil sensitivity and M0, which is why it is smoothed, not used raw.

Readout model
- SR-FLASH: saturation (Mz = 1 - efficiency; ideal = 1.0, the default), free recovery for the delay before the first readout pulse, then a train of
  spoiled pulses (ideal spoiling: only Mz survives each TR); the signal is Mz sin(alpha) at the k-space centre line.
- SR-bSSFP: full Bloch rotation/relaxation of (Mx, My, Mz) with alternating-phase pulses, a linear flip-angle ramp of
  ``n_runup`` pulses (the usual catalysation), on resonance; the signal is |Mxy| at TE = TR/2 of the centre line.
- Ordering "linear": the centre line is line n_lines/2; "centric": it is the first line.
The saturation time TS (saturation pulse to k-space centre, Siemens stores it as InversionTime) fixes the delay
before the first readout pulse: TS - (centre line index) * TR.

Defaults (documented, used when DICOM metadata lack them): relaxation times of Xue/Kellman's Gadgetron perfusion
pipeline: 3 T blood T1/T2 2000/250 ms, myocardium 1300/45 ms; 1.5 T blood 1700/220 ms, myocardium 1100/45 ms.
Relaxivities of gadobutrol-like agents in plasma: r1 = 4.5 (1.5 T) / 4.0 (3 T) L/mmol/s, r2 = 5.5 / 5.0 L/mmol/s.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from ..errors import InvalidParameterError, InvalidSeriesError
from ..series import SliceSeries

# (T1 s, T2 s) before contrast, per field strength and tissue
RELAXATION_DEFAULTS = {
    1.5: {"blood": (1.700, 0.220), "myocardium": (1.100, 0.045)},
    3.0: {"blood": (2.000, 0.250), "myocardium": (1.300, 0.045)},
}
# (r1, r2) L/mmol/s
RELAXIVITY_DEFAULTS = {1.5: (4.5, 5.5), 3.0: (4.0, 5.0)}
SEQUENCES = ("flash", "bssfp")
ORDERINGS = ("linear", "centric")
GD_MAX_TABLE = 15.0          # mmol/L: table range; stress blood peaks rarely exceed 10


@dataclass(frozen=True)
class SequenceParameters:
    """Readout of one saturation-recovery image (times in seconds, angles in degrees)."""

    sequence: str = "flash"             # "flash" | "bssfp"
    flip_angle_deg: float = 14.0
    echo_spacing_s: float = 0.0021      # TR of one readout line
    saturation_time_s: float = 0.100    # saturation pulse to k-space centre (TS)
    n_lines: int = 48                   # phase-encoding lines read per image
    ordering: str = "linear"            # "linear" | "centric"
    n_runup: int = 3                    # bSSFP ramp-up pulses (flip rising linearly) before the first line
    pd_flip_angle_deg: float = 5.0      # PD image: same train, no saturation, fully relaxed, low flip
    field_strength_t: float = 3.0
    catalysation: str = "ramp"          # bSSFP start-up: "ramp" (n_runup pulses rising linearly) or "half" (alpha/2, TR/2)
    pd_sequence: str = "flash"          # PD readout: "flash" (Gadgetron/Kellman protocol) or "same" as the SR images
    saturation_efficiency: float = 1.0  # fraction of Mz the saturation pulse destroys (real pulses: 0.93-1.0)
    echo_time_s: float = 0.001          # TE: with r2star > 0 the signal loses exp(-TE r2* [Gd]) (blood at the bolus peak)
    r2star: float = 0.0                 # L/mmol/s T2* relaxivity; 0 = T2* loss ignored (default: not known per scan)

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCES:
            raise InvalidParameterError(f"sequence must be one of {SEQUENCES}, got {self.sequence!r}")
        if not 0.5 <= self.saturation_efficiency <= 1.0:
            raise InvalidParameterError(f"saturation efficiency must be in [0.5, 1], got {self.saturation_efficiency}")
        if self.catalysation not in ("ramp", "half") or self.pd_sequence not in ("flash", "same"):
            raise InvalidParameterError("catalysation must be 'ramp' or 'half'; pd_sequence 'flash' or 'same'")
        if self.ordering not in ORDERINGS:
            raise InvalidParameterError(f"k-space ordering must be one of {ORDERINGS}, got {self.ordering!r}")
        if not (0 < self.flip_angle_deg < 180 and 0 < self.pd_flip_angle_deg < 90):
            raise InvalidParameterError("flip angles must be in (0, 180) degrees (PD: (0, 90))")
        if not (0.0005 < self.echo_spacing_s < 0.02):
            raise InvalidParameterError(f"echo spacing {self.echo_spacing_s * 1e3:.2f} ms is not a perfusion readout TR")
        if not (1 <= self.n_lines <= 512):
            raise InvalidParameterError(f"number of phase-encoding lines must be 1..512, got {self.n_lines}")
        if self.first_readout_delay_s < 0:
            raise InvalidParameterError(
                f"saturation time {self.saturation_time_s * 1e3:.0f} ms is shorter than the readout before the k-space centre")

    @property
    def centre_line(self) -> int:
        return 0 if self.ordering == "centric" else self.n_lines // 2

    @property
    def first_readout_delay_s(self) -> float:
        runup = self.n_runup if (self.sequence == "bssfp" and self.catalysation == "ramp") else 0
        return self.saturation_time_s - (self.centre_line + runup) * self.echo_spacing_s


def default_sequence(sequence: str = "flash", field_strength: float = 3.0) -> SequenceParameters:
    """Typical clinical perfusion readouts: SR-FLASH 14 deg / 2.1 ms; SR-bSSFP 50 deg / 2.6 ms; TS 100 / 110 ms."""
    if sequence == "bssfp":
        return SequenceParameters("bssfp", 50.0, 0.0026, 0.110, 48, "linear", 3, 5.0, float(field_strength))
    return SequenceParameters("flash", 14.0, 0.0021, 0.100, 48, "linear", 0, 5.0, float(field_strength))


def _meta(metadata: dict, *names):
    for source in (metadata, metadata.get("dicom", {}) if isinstance(metadata.get("dicom"), dict) else {}):
        for n in names:
            if n in source and source[n] not in (None, ""):
                return source[n]
    return None


def sequence_from_metadata(metadata: dict, sequence: Optional[str] = None,
                           field_strength: Optional[float] = None) -> SequenceParameters:
    """Sequence parameters from DICOM keywords held in ``series.metadata`` (or ``metadata['dicom']``); defaults otherwise.

    Used: SequenceName (``*tfi*`` = bSSFP, ``*tfl*`` = FLASH), MagneticFieldStrength, FlipAngle, InversionTime (Siemens
    SR perfusion: saturation time to the k-space centre, ms), EchoTime (bSSFP echo spacing = 2 TE), RepetitionTime only
    when < 10 ms (otherwise it is the duration of the whole shot), NumberOfPhaseEncodingSteps.
    """
    metadata = metadata or {}
    name = str(_meta(metadata, "SequenceName", "sequence_name") or "").lower()
    if sequence is None:
        sequence = "bssfp" if ("tfi" in name or "ssfp" in name or "fisp" in name) else "flash"
    if field_strength is None:
        fs = _meta(metadata, "MagneticFieldStrength", "field_strength")
        field_strength = float(fs) if fs is not None else 3.0
    field_strength = 1.5 if float(field_strength) < 2.25 else 3.0
    base = default_sequence(sequence, field_strength)
    changes = {}
    fa = _meta(metadata, "FlipAngle", "flip_angle")
    if fa is not None and 0 < float(fa) < 180:
        changes["flip_angle_deg"] = float(fa)
    te = _meta(metadata, "EchoTime")
    tr = _meta(metadata, "RepetitionTime")
    if tr is not None and 0.5 < float(tr) < 10:
        changes["echo_spacing_s"] = float(tr) / 1e3
    elif te is not None and sequence == "bssfp" and 0.25 < float(te) < 5:
        changes["echo_spacing_s"] = 2 * float(te) / 1e3
    ti = _meta(metadata, "InversionTime", "saturation_time")
    if ti is not None and 10 < float(ti) < 1000:
        changes["saturation_time_s"] = float(ti) / 1e3
    npe = _meta(metadata, "NumberOfPhaseEncodingSteps")
    if npe is not None and 1 <= int(float(npe)) <= 512:
        changes["n_lines"] = int(float(npe))
    params = dataclasses.replace(base, **changes)
    return params


# --- Bloch simulation --------------------------------------------------------------------------------------------
def _relax(t1, t2, gd, field_strength, r1=None, r2=None):
    d1, d2 = RELAXIVITY_DEFAULTS[1.5 if field_strength < 2.25 else 3.0]
    r1 = d1 if r1 is None else r1
    r2 = d2 if r2 is None else r2
    return 1.0 / (1.0 / t1 + r1 * gd), 1.0 / (1.0 / t2 + r2 * gd)


def simulate_signal(gd: np.ndarray, params: SequenceParameters, t1_0: float, t2_0: float, *, r1=None, r2=None,
                    saturated: bool = True) -> np.ndarray:
    """Simulated signal (M0 = 1) at the k-space centre for each concentration in ``gd`` (mmol/L), vectorised over gd.

    ``saturated=False`` simulates the PD image: same readout, fully relaxed start, ``pd_flip_angle_deg``.
    """
    gd = np.asarray(gd, dtype=np.float64)
    t1, t2 = _relax(t1_0, t2_0, gd, params.field_strength_t, r1, r2)
    tr = params.echo_spacing_s
    alpha = np.deg2rad(params.flip_angle_deg if saturated else params.pd_flip_angle_deg)
    mz = np.zeros_like(gd) if saturated else np.ones_like(gd)
    if saturated:   # free recovery from (1 - efficiency) until the first readout pulse
        mz = 1.0 - params.saturation_efficiency * np.exp(-params.first_readout_delay_s / t1)
    e1 = np.exp(-tr / t1)
    t2star_loss = np.exp(-params.echo_time_s * params.r2star * gd)
    if params.sequence == "flash" or (not saturated and params.pd_sequence == "flash"):
        # spoiled gradient echo: only Mz carries from one TR to the next
        for _ in range(params.centre_line):
            mz = mz * np.cos(alpha)
            mz = 1.0 - (1.0 - mz) * e1
        return mz * np.sin(alpha) * t2star_loss
    # balanced SSFP: rotate about x with alternating sign, relax over TR/2 halves
    e1h, e2h = np.exp(-tr / 2 / t1), np.exp(-tr / 2 / t2)
    mx = np.zeros_like(gd)
    my = np.zeros_like(gd)
    if params.catalysation == "half":
        # alpha/2 about +x, TR/2 of relaxation, then the train starts with -alpha
        c, s = np.cos(alpha / 2), np.sin(alpha / 2)
        my, mz = s * mz, c * mz
        mx, my, mz = mx * e2h, my * e2h, 1.0 - (1.0 - mz) * e1h
        angles = [alpha] * (params.centre_line + 1)
        first_sign = 1
    else:
        angles = [alpha * (k + 1) / (params.n_runup + 1) for k in range(params.n_runup)] + [alpha] * (params.centre_line + 1)
        first_sign = 0
    for j, a in enumerate(angles):
        a = a if (j + first_sign) % 2 == 0 else -a
        c, s = np.cos(a), np.sin(a)
        my, mz = c * my + s * mz, -s * my + c * mz          # rotation about x
        # to the echo (TR/2)
        mx, my, mz = mx * e2h, my * e2h, 1.0 - (1.0 - mz) * e1h
        if j == len(angles) - 1:
            return np.sqrt(mx * mx + my * my) * t2star_loss
        mx, my, mz = mx * e2h, my * e2h, 1.0 - (1.0 - mz) * e1h
    raise AssertionError("unreachable")


@dataclass
class GdLookupTable:
    """Monotone table: SR/PD signal ratio -> [Gd] mmol/L."""

    gd: np.ndarray
    ratio: np.ndarray
    params: SequenceParameters
    tissue: str

    def to_gd(self, ratio: np.ndarray) -> np.ndarray:
        """Invert by linear interpolation; ratios beyond the table clip to its ends (and are flagged by the caller)."""
        return np.interp(ratio, self.ratio, self.gd).astype(np.float32)

    def to_ratio(self, gd: np.ndarray) -> np.ndarray:
        return np.interp(gd, self.gd, self.ratio)


def build_lut(params: SequenceParameters, tissue: str = "myocardium", *, t1_0=None, t2_0=None, r1=None, r2=None,
              gd_max: float = GD_MAX_TABLE, n: int = 3001) -> GdLookupTable:
    """Simulate SR/PD for [Gd] in 0..gd_max; cut the table where the ratio stops increasing (monotone inversion)."""
    fs = 1.5 if params.field_strength_t < 2.25 else 3.0
    if tissue not in RELAXATION_DEFAULTS[fs]:
        raise InvalidParameterError(f"tissue must be 'blood' or 'myocardium', got {tissue!r}")
    d1, d2 = RELAXATION_DEFAULTS[fs][tissue]
    t1_0 = d1 if t1_0 is None else float(t1_0)
    t2_0 = d2 if t2_0 is None else float(t2_0)
    gd = np.linspace(0.0, gd_max, n)
    sr = simulate_signal(gd, params, t1_0, t2_0, r1=r1, r2=r2, saturated=True)
    pd = simulate_signal(np.zeros(1), params, t1_0, t2_0, r1=r1, r2=r2, saturated=False)[0]
    ratio = sr / pd
    rising = np.diff(ratio) > 0
    stop = int(np.argmin(rising)) + 1 if not rising.all() else n
    if stop < 10:
        raise InvalidParameterError("the simulated signal does not rise with [Gd] for these sequence parameters")
    return GdLookupTable(gd[:stop], ratio[:stop], params, tissue)


def smoothed_pd(pd_frames: np.ndarray, sigma_px: float = 2.0) -> np.ndarray:
    """Mean of the PD frames, Gaussian-smoothed: coil sensitivity varies slowly, noise does not."""
    pd = np.asarray(pd_frames, dtype=np.float64)
    pd = pd.mean(axis=0) if pd.ndim == 3 else pd
    return ndimage.gaussian_filter(pd, sigma_px)


def signal_to_gd(series: SliceSeries, pd: Optional[np.ndarray] = None, sequence: Optional[str] = None,
                 field_strength: Optional[float] = None, *, tissue: str = "myocardium", baseline_frames: int = 0,
                 params: Optional[SequenceParameters] = None, pd_sigma_px: float = 2.0, **lut_kwargs) -> SliceSeries:
    """Convert a signal series to [Gd] (mmol/L) through PD normalisation and the Bloch look-up table.

    pd: PD image(s) (Y, X) or (P, Y, X); default ``series.pd_frames``. Without PD frames the pre-contrast baseline
    (first ``baseline_frames`` frames, or frames before the bolus) stands in: its signal is taken to be the table value
    at [Gd] = 0, which fixes M0 per pixel (less accurate: it assumes the default native T1). Sequence parameters come
    from ``params``, else from ``series.metadata`` (DICOM), else the documented defaults.
    """
    if series.units == "mmol/L":
        return series
    if series.units != "signal":
        raise InvalidParameterError(f"cannot convert a series in units {series.units!r} to [Gd]; it needs raw signal")
    if params is None:
        params = sequence_from_metadata(series.metadata, sequence, field_strength)
    lut = build_lut(params, tissue, **lut_kwargs)
    data = series.data.astype(np.float64)
    if pd is None:
        pd = series.pd_frames
    if pd is not None:
        pd_img = smoothed_pd(pd, pd_sigma_px)
        if pd_img.shape != data.shape[1:]:
            raise InvalidSeriesError(f"PD image {pd_img.shape} does not match the series frames {data.shape[1:]}")
        ratio = data / np.maximum(pd_img, 1e-6 * max(float(pd_img.max()), 1e-12))[None]
    else:
        if baseline_frames <= 0:
            from .aif import detect_foot_peak
            foot, _ = detect_foot_peak(data.reshape(data.shape[0], -1).mean(axis=1), series.times)
            baseline_frames = max(2, foot)
        base = ndimage.gaussian_filter(data[:baseline_frames].mean(axis=0), pd_sigma_px)
        ratio = data / np.maximum(base, 1e-12)[None] * lut.ratio[0]
    above = float(np.mean(ratio > lut.ratio[-1]))
    if above > 0.01:
        warnings.warn(f"{100 * above:.1f}% of samples are beyond the look-up table (> {lut.gd[-1]:.1f} mmol/L); clipped",
                      stacklevel=2)
    gd = lut.to_gd(ratio)
    meta = dict(series.metadata)
    meta["gd_conversion"] = {"sequence": dataclasses.asdict(params), "tissue": tissue,
                             "normalisation": "pd" if pd is not None else "baseline"}
    return series.replace(data=gd, units="mmol/L", metadata=meta)
