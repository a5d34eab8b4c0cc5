"""Contrast kinetics: gamma-variate bolus, pulmonary and systemic transit with recirculation, tissue responses.

All curves are Gd concentration in mmol/L on a fine uniform time grid (``DT_FINE`` s) and are sampled at frame times
afterwards. The circulation is a loop: an injected bolus (gamma variate) reaches the RV; the LV curve is the RV curve
convolved with a pulmonary transit kernel (so the RV always enhances first and the LV bolus is broader); a fraction of
what leaves the LV comes back to the RV after a dispersed systemic transit (recirculation, second pass).

Myocardium: each study draws one of two published tracer-kinetic models (``circulation["myo_model"]``), the same
definition of MBF in both: blood flow F per ml of tissue, MBF (ml/min/g) = 60 F / rho with rho = 1.05 g/ml, and
``C_myo = AIF_blood (*) R`` with R(0) = F (for the 2CXM: plasma flow Fp = F (1 - Hct) on the plasma AIF
AIF_blood / (1 - Hct), which is the same product).
- "fermi": Fermi-constrained impulse response (Jerosch-Herold et al., Med Phys 1998),
  ``R(t) = F (1 + exp(-tau0 / w)) / (1 + exp((t - tau0) / w))``; the shoulder tau0 is the tissue mean transit time
  of the central volume principle, 60 Vd / MBF, with the first-pass distribution volume Vd = MBV + E ve_b (blood
  volume plus the extracted fraction E of the interstitial volume referenced to blood, ve_b = ve / (1 - Hct)), so low
  flow (rest, defects) enhances later and longer; w 0.3-1.2 s.
- "2cxm": two-compartment exchange model (Brix et al. 2004; Sourbron & Buckley, MRM 2011), plasma and interstitium:
  Fp = F (1 - Hct), vp = rho MBV (1 - Hct), ve = rho ve_g (interstitial volume fraction), PS from the extraction
  fraction by Renkin-Crone, E = 1 - exp(-PS / Fp).
MBV 0.10-0.15 ml/g at stress, 0.08-0.12 at rest (adenosine recruits ~20 % more); E 0.3-0.55 stress, 0.45-0.65 rest
(extraction falls with flow); interstitial volume 0.17-0.26 ml/g (ECV 0.25-0.32 with the plasma volume).
Sources for ranges: pulmonary transit time 4-9 s (Cao et al., JCMR 2014; shorter at stress), peak LV [Gd] 2-8 mmol/L for
0.05-0.1 mmol/kg (Ishida et al. JMRI 2011; Kellman et al. JCMR 2017), extraction fraction 0.3-0.6 and ve 0.2-0.3, i.e.
0.35-0.5 referenced to blood (Jerosch-Herold, JCMR 2010), liver/spleen enhancement (Materne et al. 2002).
"""
from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

DT_FINE = 0.1           # s
TISSUE_DENSITY = 1.05   # g/ml
MYO_MODELS = ("fermi", "2cxm")
DEFAULT_HEMATOCRIT = 0.42


def gamma_variate(t: np.ndarray, t0: float, tp: float, alpha: float) -> np.ndarray:
    """Unit-peak gamma variate starting at t0, peaking at t0 + tp."""
    s = np.clip((t - t0) / tp, 0.0, None)
    return np.where(s > 0, s ** alpha * np.exp(alpha * (1.0 - s)), 0.0)


def transit_kernel(t: np.ndarray, mean: float, shape: float, delay: float = 0.0) -> np.ndarray:
    """Unit-area gamma-distribution transit kernel with mean ``delay + mean`` on the grid ``t`` (starts at 0)."""
    s = np.clip(t - delay, 0.0, None)
    theta = mean / shape
    k = np.where(s > 0, s ** (shape - 1) * np.exp(-s / theta), 0.0)
    total = k.sum()
    return k / total if total > 0 else k


def _conv(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal convolution truncated to the input length (FFT based: the fine grids hold 1000-2000 samples)."""
    return fftconvolve(a, kernel)[: a.size]


def sample_circulation(rng: np.random.Generator, condition: str) -> dict:
    """Random bolus and circulation parameters (JSON-able)."""
    stress = condition == "stress"
    return {
        "rv_arrival_s": float(rng.uniform(3.0, 12.0)),
        "bolus_tp_s": float(rng.uniform(1.5, 3.5)),
        "bolus_alpha": float(rng.uniform(1.8, 4.0)),
        "pulmonary_transit_s": float(rng.uniform(3.5, 6.0) if stress else rng.uniform(5.0, 8.5)),
        "pulmonary_shape": float(rng.uniform(2.0, 4.0)),
        "systemic_transit_s": float(rng.uniform(10.0, 16.0) if stress else rng.uniform(13.0, 20.0)),
        "systemic_shape": float(rng.uniform(3.0, 6.0)),
        "recirculation_fraction": float(rng.uniform(0.35, 0.6)),
        "lv_peak_mmol": float(rng.uniform(2.0, 8.0)),
        "aorta_delay_s": float(rng.uniform(0.2, 0.6)),
        "myo_delay_s": float(rng.uniform(0.0, 1.0)),
        # myocardial tracer kinetics (module docstring): model, blood volume, extraction, interstitial volume
        "myo_model": MYO_MODELS[int(rng.integers(0, 2))],
        "mbv_ml_per_g": float(rng.uniform(0.10, 0.15) if stress else rng.uniform(0.08, 0.12)),
        "fermi_width_s": float(rng.uniform(0.3, 1.2)),
        "extraction": float(rng.uniform(0.3, 0.55) if stress else rng.uniform(0.45, 0.65)),
        "ve_ml_per_g": float(rng.uniform(0.17, 0.26)),
        "muscle_mbf": float(rng.uniform(0.05, 0.25) if stress else rng.uniform(0.02, 0.08)),
        "liver_peak_mmol": float(rng.uniform(0.3, 0.9)),
        "liver_transit_s": float(rng.uniform(12.0, 25.0)),
        "spleen_peak_mmol": float(rng.uniform(0.8, 2.0)),
        "stomach_peak_mmol": float(rng.uniform(0.05, 0.3)),
        "bowel_peak_mmol": float(rng.uniform(0.1, 0.6)),
        "mixing_delay_s": float(rng.uniform(0.0, 1.5)),
    }


def sample_mbf(rng: np.random.Generator, condition: str) -> dict:
    """Per-segment MBF (ml/min/g) and an optional perfusion defect in one coronary territory."""
    stress = condition == "stress"
    glob = float(rng.uniform(1.5, 4.5) if stress else rng.uniform(0.5, 1.5))
    seg = {str(s): float(glob * np.clip(rng.normal(1.0, 0.07), 0.8, 1.2)) for s in range(1, 17)}
    defect = None
    if rng.random() < (0.5 if stress else 0.15):
        defect = {
            "territory": str(rng.choice(["LAD", "RCA", "LCX"])),
            "transmural": bool(rng.random() < 0.4),
            "endo_fraction": float(rng.uniform(0.35, 0.6)),   # subendocardial defects reach this depth
            "factor": float(rng.uniform(0.25, 0.65) if stress else rng.uniform(0.6, 0.9)),
        }
    return {"global_mbf": glob, "segment_mbf": seg, "defect": defect}


def circulation_curves(p: dict, t_end: float) -> tuple:
    """Fine time grid and blood curves (mmol/L): RV, LV (= AIF), aorta, pulmonary veins/arteries."""
    t = np.arange(0.0, t_end + 40.0, DT_FINE)
    inj = gamma_variate(t, p["rv_arrival_s"], p["bolus_tp_s"], p["bolus_alpha"])
    # an optional pure delay before the gamma dispersion (override only; the draws have none: docs/phantom.md, 11th
    # session): the shortest path through the lungs, which holds the LV foot several beats after the RV foot
    h_pulm = transit_kernel(t, p["pulmonary_transit_s"], p["pulmonary_shape"], p.get("pulmonary_delay_s", 0.0))
    h_sys = transit_kernel(t, p["systemic_transit_s"], p["systemic_shape"])
    rv = inj.copy()
    lv = _conv(rv, h_pulm)
    for _ in range(3):  # loop: venous return = recirculated fraction of the LV output
        rv = inj + p["recirculation_fraction"] * _conv(lv, h_sys)
        lv = _conv(rv, h_pulm)
    scale = p["lv_peak_mmol"] / lv.max()
    rv, lv = rv * scale, lv * scale
    shift = lambda c, d: np.interp(t - d, t, c, left=0.0)
    aorta = _conv(shift(lv, p["aorta_delay_s"]), transit_kernel(t, 0.4, 3.0))
    pulm_art = shift(rv, 0.4)
    pulm_vein = shift(lv, -0.8)
    mix = p.get("mixing_delay_s", 0.0)
    return t, {"rv_blood": rv, "lv_blood": lv, "aorta": aorta, "aortic_root": lv, "lung_artery": pulm_art,
               "lung_vein": pulm_vein, "lv_blood_mix": shift(lv, mix), "rv_blood_mix": shift(rv, mix)}


def fermi_response(t: np.ndarray, tau0: float, width: float) -> np.ndarray:
    """Unit-amplitude Fermi impulse response, R(0) = 1."""
    return (1.0 + np.exp(-tau0 / width)) / (1.0 + np.exp(np.clip((t - tau0) / width, -50, 50)))


def exchange_response(t: np.ndarray, fp: float, ps: float, vp: float, ve: float) -> np.ndarray:
    """2CXM impulse response (1/s) on the plasma input: R(0) = Fp, bi-exponential (Sourbron & Buckley 2011, eq. 7)."""
    # eigenvalues of d/dt [Cp, Ce]: the 2x2 system matrix A = [[-(Fp+PS)/vp, PS/vp], [PS/ve, -PS/ve]]
    tr = -(fp + ps) / vp - ps / ve
    det = fp * ps / (vp * ve)
    disc = np.sqrt(max(tr * tr / 4.0 - det, 0.0))
    l1, l2 = tr / 2.0 + disc, tr / 2.0 - disc
    # R = Fp (1, 0) exp(A t) (1, 0)^T summed over tissue compartments: R(0) = Fp, R'(0) = -Fp^2 / vp
    w1 = (-fp * fp / vp - fp * l2) / (l1 - l2)
    return w1 * np.exp(l1 * t) + (fp - w1) * np.exp(l2 * t)


def myocardial_params(mbf: float, p: dict) -> dict:
    """Impulse-response parameters for a flow ``mbf`` (ml/min/g) under the study's model (JSON-able)."""
    f = mbf * TISSUE_DENSITY / 60.0          # blood flow, 1/s per ml tissue
    hct = float(p.get("hematocrit", DEFAULT_HEMATOCRIT))
    e = float(p["extraction"])
    if p.get("myo_model", "fermi") == "2cxm":
        fp = f * (1.0 - hct)
        return {"model": "2cxm", "fp_per_s": fp, "ps_per_s": -fp * np.log(1.0 - e),
                "vp": TISSUE_DENSITY * p["mbv_ml_per_g"] * (1.0 - hct), "ve": TISSUE_DENSITY * p["ve_ml_per_g"]}
    vd = p["mbv_ml_per_g"] + e * p["ve_ml_per_g"] / (1.0 - hct)     # ml/g, referenced to blood
    return {"model": "fermi", "flow_per_s": f, "tau0_s": float(np.clip(60.0 * vd / max(mbf, 1e-3), 1.0, 30.0)),
            "width_s": float(p["fermi_width_s"])}


def myocardial_curve(t: np.ndarray, aif: np.ndarray, mbf: float, p: dict) -> np.ndarray:
    """Tissue Gd (mmol/L) for a flow ``mbf`` ml/min/g from the *blood* AIF ``aif`` (trapezoid convolution)."""
    q = myocardial_params(mbf, p)
    if q["model"] == "2cxm":
        hct = float(p.get("hematocrit", DEFAULT_HEMATOCRIT))
        r = exchange_response(t, q["fp_per_s"], q["ps_per_s"], q["vp"], q["ve"]) / (1.0 - hct)   # plasma input
    else:
        r = q["flow_per_s"] * fermi_response(t, q["tau0_s"], q["width_s"])
    a = np.interp(t - p["myo_delay_s"], t, aif, left=0.0)
    return (_conv(a, r) - 0.5 * r[0] * a) * DT_FINE


def tissue_curves(t: np.ndarray, blood: dict, p: dict, mbf_values: dict) -> dict:
    """Every non-myocardial tissue curve plus one myocardial curve per distinct MBF value (keys 'myo:<mbf>')."""
    lv = blood["lv_blood"]
    zero = np.zeros_like(t)
    out = dict(blood)
    for name in ("air", "epi_fat", "pericardium", "lung", "subcut_fat", "spine"):
        out[name] = zero
    out["muscle"] = myocardial_curve(t, blood["aorta"], p["muscle_mbf"], {**p, "myo_model": "2cxm", "ve_ml_per_g": 0.1,
                                                                        "extraction": 0.6, "myo_delay_s": 0.5,
                                                                        "mbv_ml_per_g": 0.03})
    portal = _conv(blood["aorta"], transit_kernel(t, p["liver_transit_s"], 2.5))
    liver = 0.25 * blood["aorta"] * 0.08 + portal
    out["liver"] = liver / max(liver.max(), 1e-9) * p["liver_peak_mmol"]
    spleen = _conv(blood["aorta"], transit_kernel(t, 6.0, 2.0))
    out["spleen"] = spleen / max(spleen.max(), 1e-9) * p["spleen_peak_mmol"]
    stomach = _conv(blood["aorta"], transit_kernel(t, 25.0, 2.0))
    out["stomach"] = stomach / max(stomach.max(), 1e-9) * p["stomach_peak_mmol"]
    bowel = _conv(blood["aorta"], transit_kernel(t, 10.0, 2.0))
    out["bowel"] = bowel / max(bowel.max(), 1e-9) * p.get("bowel_peak_mmol", 0.3)
    # body_gain (training slices only, default 1): enhancing tissues around the heart as bright as real ones can be
    body = float(p.get("body_gain", 1.0))
    for name in ("muscle", "liver", "spleen", "stomach", "bowel"):
        out[name] = body * out[name]
    # myo_gain (training slices only, default 1): domain randomisation of the myocardium/blood enhancement ratio
    gain = float(p.get("myo_gain", 1.0))
    for key, mbf in mbf_values.items():
        out[key] = gain * myocardial_curve(t, lv, mbf, p)
    return out
