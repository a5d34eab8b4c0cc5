"""Accuracy of the quantification pieces, measured: simulated truth, the phantom, real QPerf data, AIF detection.

Run: /work/venv/bin/python scripts/evaluate_quantification.py [--out results.json] [--quick]
Prints a table per section; the figures in docs/quantification.md come from this script.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PerfusionSeg"))
DATA = REPO.parent / "shared" / "data"

from PerfusionSegLib.series import AIF, SliceSeries  # noqa: E402
from PerfusionSegLib.quantification import (compute_mbf_map, fermi_mbf, fit_regions, locate_lv_in_aif_images,  # noqa: E402
                                            two_compartment_mbf)
from PerfusionSegLib.quantification.myocardial_ring import ring_from_gd, ring_from_reference_map  # noqa: E402
from PerfusionSegLib.quantification.simulation import fermi_ir, simulate_curves  # noqa: E402
from PerfusionSegLib.quantification.two_compartment import two_compartment_response  # noqa: E402

HCT = 0.42
RHO = 1.05


def med_abs_rel(est, truth):
    est, truth = np.asarray(est, float), np.asarray(truth, float)
    return float(np.median(np.abs(est - truth) / truth))


# --- 1. simulated truth ------------------------------------------------------------------------------------------
def simulated(n_pixels: int, seed: int = 0, snr: float = 20.0, region_size: int = 40) -> dict:
    """Fermi and 2CXM truth at MBF 0.5-4.5, 0.5 s frames, 60 frames; AIF gamma variate + recirculation.
    Pixel: every curve with its own noise. Region: mean of `region_size` noisy curves of one region (MBF within
    +-10% of the region's value), fitted once, compared with the mean truth."""
    rng = np.random.default_rng(seed)
    times = np.arange(60) * 0.5
    fine = np.arange(0, times[-1] + 0.02, 0.02)
    out = {}
    n_regions = n_pixels // region_size
    region_mbf = rng.uniform(0.5, 4.5, n_regions)
    mbf = np.repeat(region_mbf, region_size) * rng.uniform(0.9, 1.1, n_regions * region_size)
    n = mbf.size
    delay = np.repeat(rng.uniform(0.0, 2.0, n_regions), region_size)
    for truth_model in ("fermi", "2cxm"):
        if truth_model == "fermi":
            flow = mbf * RHO / 60.0
            tau = np.repeat(rng.uniform(2.0, 8.0, n_regions), region_size)
            k = np.repeat(rng.uniform(0.3, 1.5, n_regions), region_size)
            irs = fermi_ir(fine[None], flow[:, None], tau[:, None], k[:, None])
            curves, aif, _ = simulate_curves(times, irs, delay)
        else:
            fp = mbf * RHO / 60.0 * (1 - HCT)
            ps = np.repeat(rng.uniform(0.5, 2.0, n_regions), region_size) * RHO / 60.0
            vp = np.repeat(rng.uniform(0.04, 0.10, n_regions), region_size)
            ve = np.repeat(rng.uniform(0.15, 0.30, n_regions), region_size)
            irs = two_compartment_response(fine, fp, ps, vp, ve)
            curves, aif, _ = simulate_curves(times, irs, delay)
            curves = curves / (1 - HCT)     # the tissue sees the plasma AIF
        noisy = curves + rng.standard_normal(curves.shape) * (curves.max(axis=1, keepdims=True) / snr)
        region_curves = noisy.reshape(n_regions, region_size, -1).mean(axis=1)
        region_truth = mbf.reshape(n_regions, region_size).mean(axis=1)
        for fit_model in ("fermi", "2cxm"):
            fit = fermi_mbf if fit_model == "fermi" else (lambda y, a, t: two_compartment_mbf(y, a, t, hematocrit=HCT))
            t0 = time.perf_counter()
            r_clean = fit(curves, aif, times)
            r_pix = fit(noisy, aif, times)
            el = time.perf_counter() - t0
            r_reg = fit(region_curves, aif, times)
            key = f"truth_{truth_model}/fit_{fit_model}"
            out[key] = {
                "noiseless_pixel_mare": med_abs_rel(r_clean.mbf, mbf),
                "noiseless_median_bias": float(np.median((r_clean.mbf - mbf) / mbf)),
                "pixel_mare_snr": med_abs_rel(r_pix.mbf, mbf),
                "pixel_p90_abs_rel": float(np.percentile(np.abs(r_pix.mbf - mbf) / mbf, 90)),
                "region_mare_snr": med_abs_rel(r_reg.mbf, region_truth),
                "delay_median_abs_err_s_noiseless": float(np.median(np.abs(r_clean.params["delay_s"] - delay))),
                "n_pixels": int(n), "n_regions": int(n_regions), "fit_seconds_both": el,
            }
            if fit_model == "2cxm" and truth_model == "2cxm":
                out[key].update({
                    "noiseless_ps_mare": med_abs_rel(r_clean.params["ps_per_s"], ps),
                    "noiseless_vp_mare": med_abs_rel(r_clean.params["vp_fraction"], vp),
                    "noiseless_ve_mare": med_abs_rel(r_clean.params["ve_fraction"], ve),
                    "region_ps_mare": med_abs_rel(r_reg.params["ps_per_s"], ps.reshape(n_regions, -1).mean(1)),
                    "region_vp_mare": med_abs_rel(r_reg.params["vp_fraction"], vp.reshape(n_regions, -1).mean(1)),
                    "region_ve_mare": med_abs_rel(r_reg.params["ve_fraction"], ve.reshape(n_regions, -1).mean(1)),
                })
    out["snr_definition"] = f"per curve: peak tissue [Gd] / Gaussian noise sd = {snr}"
    return out


# --- 2. phantom ----------------------------------------------------------------------------------------------------
def phantom(seeds=(0, 1), mbfs=(0.5, 1.5, 2.5, 3.5, 4.5), snr: float = 20.0, blur_px: float = 0.0,
            erode_px: int = 1, models=("fermi", "2cxm"), with_round_trip: bool = True,
            truth_models=("fermi", "2cxm"), defect=None, source="gd") -> dict:
    """Per truth model of the phantom (``myo_model``) and fitted model: segment and pixel errors. ``defect=None``
    (no perfusion defect: every segment holds one flow, so the figures measure the kinetic models, not the
    heterogeneity inside a segment with a subendocardial defect)."""
    out = {}
    for tm in truth_models:
        out[f"truth_{tm}"] = _phantom_one(seeds, mbfs, snr, blur_px, erode_px, models, tm, defect, source)
    if with_round_trip:
        out["gd_round_trip"] = gd_round_trip()
    return out


def _phantom_sequence(ps):
    """Our conversion's SequenceParameters and myocardial T1/T2, r1 from the phantom's recorded acquisition."""
    from PerfusionSegLib.phantom.signal import RELAXATION
    from PerfusionSegLib.quantification.gd_conversion import SequenceParameters
    acq = ps.params["acquisition"]
    fs = float(acq["field_T"])
    params = SequenceParameters(acq["sequence"], float(acq["flip_deg"]), float(acq["tr_ms"]) / 1e3,
                                float(acq["ts_ms"]) / 1e3, int(acq["n_lines"]), acq["ordering"],
                                0, float(acq["pd_flip_deg"]), fs, catalysation="half", pd_sequence="same",
                                saturation_efficiency=float(acq["sat_efficiency"]),
                                echo_time_s=float(acq["te_ms"]) / 1e3, r2star=float(acq["r2star"]))
    t10, t2, _ = RELAXATION[fs]["myo"]
    return params, {"tissue": "myocardium", "t1_0": t10 / 1e3, "t2_0": t2 / 1e3, "r1": float(acq["r1"]),
                    "pd_sigma_px": 0.0}


def _phantom_one(seeds, mbfs, snr, blur_px, erode_px, models, truth_model, defect, source="gd") -> dict:
    """source "gd": the phantom's truth [Gd]; "signal": its noise-free signal converted to [Gd] with our
    conversion and the phantom's own sequence parameters. Gaussian noise (sd = median myocardial peak / snr) is
    added to the [Gd] either way."""
    try:
        from PerfusionSegLib.phantom import generate_study
    except ImportError as exc:
        return {"skipped": f"phantom not available: {exc}"}
    from PerfusionSegLib.quantification.gd_conversion import signal_to_gd
    rng = np.random.default_rng(123)
    seg_err = {m: [] for m in models}
    pix_err = {m: [] for m in models}
    seg_rows = {m: [] for m in models}
    for seed in seeds:
        for g in mbfs:
            ps = generate_study("siemens-flash-3t", seed=seed, condition="stress",
                                units="mmol/L" if source == "gd" else "signal", noise=False, motion_mm=0.0,
                                global_mbf=g, n_slices=3, blur_px=blur_px, myo_model=truth_model, defect=defect,
                                aif_images=False)
            aif = ps.study.aif
            for series, truth in zip(ps.study.slices, ps.truth):
                myo = truth.labels == 2
                if erode_px:   # leave out the border pixels that mix with blood / fat (partial volume)
                    myo = ndimage.binary_erosion(myo, iterations=erode_px)
                if source == "signal":
                    params, kw = _phantom_sequence(ps)
                    series = signal_to_gd(series, params=params, **kw)
                clean = series.data
                peak = np.median(clean[:, myo].max(axis=0))
                noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * np.float32(peak / snr)
                s = series.replace(data=noisy)
                ok = myo & np.isfinite(truth.mbf)
                regions = np.where(ok, truth.aha_segments, 0)
                for model in models:
                    maps = compute_mbf_map(s, aif, myo, model=model, regions=truth.aha_segments)
                    pix_err[model].append(np.abs(maps["mbf"][ok] - truth.mbf[ok]) / truth.mbf[ok])
                    fits = fit_regions(s, aif, regions, model=model)
                    for seg, r in fits.items():
                        t = float(np.mean(truth.mbf[regions == seg]))
                        seg_err[model].append(abs(r["mbf"] - t) / t)
                        seg_rows[model].append((seed, g, (r["mbf"] - t) / t))
    res = {}
    for model in models:
        pix = np.concatenate(pix_err[model])
        se = seg_err[model]
        res[model] = {"segment_mare": float(np.median(se)), "segment_p90": float(np.percentile(se, 90)),
                      "pixel_mare": float(np.median(pix)), "pixel_p90": float(np.percentile(pix, 90)),
                      "n_segments": len(se), "n_pixels": int(pix.size),
                      "segment_median_signed_error_per_case": {
                          f"seed{sd}_mbf{gg}": float(np.median([e for a, b, e in seg_rows[model] if a == sd and b == gg]))
                          for sd in seeds for gg in mbfs}}
    res["setup"] = (f"siemens-flash-3t, truth model {truth_model}, source {source}, seeds {list(seeds)}, global MBF "
                    f"{list(mbfs)} ml/min/g, defect {defect}, 3 slices, motion 0, blur_px {blur_px}, myocardium "
                    f"eroded by {erode_px} px, noise-free phantom [Gd] + Gaussian noise sd = median myocardial peak / {snr}")
    return res


def gd_round_trip() -> dict:
    """Phantom signal (noise-free, no motion) -> [Gd] with the phantom's own sequence parameters, vs truth Gd."""
    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.phantom.signal import RELAXATION
    from PerfusionSegLib.quantification.gd_conversion import signal_to_gd
    out = {}
    for preset in ("siemens-flash-3t", "siemens-bssfp-3t", "siemens-flash-1p5t"):
        ps = generate_study(preset, seed=0, condition="stress", units="signal", noise=False, motion_mm=0.0, n_slices=1,
                            lv_peak_mmol=9.0)
        acq = ps.params["acquisition"]
        series, truth = ps.study.slices[0], ps.truth[0]
        fs = float(acq["field_T"])
        params, _ = _phantom_sequence(ps)
        rows = {}
        for tissue, label, cls in (("myocardium", 2, "myo"), ("blood", 1, "blood")):
            t10, t2, _ = RELAXATION[fs][cls]
            gd = signal_to_gd(series, params=params, tissue=tissue, t1_0=t10 / 1e3, t2_0=t2 / 1e3, r1=float(acq["r1"]),
                              pd_sigma_px=0.0)
            core = ndimage.binary_erosion(truth.labels == label, iterations=2)
            est, tru = gd.data[:, core].ravel(), truth.gd[:, core].ravel()
            sel = (tru > 0.2) & (tru <= 6.0)
            rel = np.abs(est[sel] - tru[sel]) / tru[sel]
            rows[tissue] = {"median_abs_rel": float(np.median(rel)) if sel.any() else None,
                            "p95_abs_rel": float(np.percentile(rel, 95)) if sel.any() else None,
                            "max_truth_gd": float(tru.max()), "n_samples": int(sel.sum())}
        # the same conversion with our documented defaults instead of the phantom's parameters (what a user gets
        # without sequence metadata): shows the sensitivity to unknown T1, r1, saturation efficiency, T2*
        from PerfusionSegLib.quantification.gd_conversion import default_sequence
        dflt = default_sequence(acq["sequence"], fs)
        core = ndimage.binary_erosion(truth.labels == 2, iterations=2)
        gd = signal_to_gd(series, params=dflt, tissue="myocardium")
        est, tru = gd.data[:, core].ravel(), truth.gd[:, core].ravel()
        sel = (tru > 0.2) & (tru <= 6.0)
        rows["myocardium_with_our_defaults"] = {"median_signed_rel": float(np.median((est[sel] - tru[sel]) / tru[sel]))}
        out[preset] = rows
    out["note"] = ("sequence parameters, native T1/T2 and r1 taken from the phantom's parameters; PD unsmoothed; "
                   "samples with truth 0.2-6 mmol/L in eroded tissue cores; the phantom's saturation efficiency "
                   "and T2* term (TE, r2*) are passed in (bSSFP: phantom uses the Scheffler closed form)")
    return out


# --- 3. QPerf --------------------------------------------------------------------------------------------------------
def qperf_series(name: str):
    import scipy.io as sio
    d = sio.loadmat(str(DATA / "qperf" / name))
    data = np.transpose(np.asarray(d["data"], np.float32), (2, 0, 1))
    dt = float(np.asarray(d["deltaT"]).ravel()[0]) if "deltaT" in d else 0.5
    t = np.arange(data.shape[0]) * dt
    s = SliceSeries(data, t, (1.0, 1.0), units="mmol/L", source=name)
    aif = AIF(np.asarray(d["aif"], float).ravel(), t, hematocrit=float(np.asarray(d["HCT"]).ravel()[0]) if "HCT" in d else HCT,
              foot=int(np.asarray(d["foot"]).ravel()[0]) - 1, peak=int(np.asarray(d["peak"]).ravel()[0]) - 1)
    return s, aif


def qperf() -> dict:
    if not (DATA / "qperf" / "perf_data_stress.mat").exists():
        return {"skipped": "QPerf data absent"}
    out = {}
    ref = np.load(DATA / "qperf" / "fmap_stress_gadgetron_mbf.npy")
    ring = ring_from_reference_map(ref)
    s, aif = qperf_series("perf_data_stress.mat")
    ring_gd = ring_from_gd(s, aif)
    dice = 2 * (ring & ring_gd).sum() / (ring.sum() + ring_gd.sum())
    out["stress"] = {"ring_pixels": int(ring.sum()), "reference_median": float(np.median(ref[ring])),
                     "ring_from_gd_vs_reference_ring_dice": float(dice)}
    for model in ("fermi", "2cxm"):
        t0 = time.perf_counter()
        maps = compute_mbf_map(s, aif, ring, model=model)
        el = time.perf_counter() - t0
        ours, gt = maps["mbf"][ring].astype(float), ref[ring].astype(float)
        diff = ours - gt
        reg = fit_regions(s, aif, ring.astype(int), model=model)[1]
        out["stress"][model] = {
            "median_ours": float(np.median(ours)), "median_ratio_ours_over_gadgetron": float(np.median(ours / gt)),
            "bias": float(diff.mean()), "loa_low": float(diff.mean() - 1.96 * diff.std(ddof=1)),
            "loa_high": float(diff.mean() + 1.96 * diff.std(ddof=1)), "pearson_r": float(np.corrcoef(ours, gt)[0, 1]),
            "ring_mean_curve_mbf": reg["mbf"], "seconds": el,
        }
    rs, raif = qperf_series("perf_data.mat")
    rring = ring_from_gd(rs, raif)
    out["rest"] = {"ring_pixels": int(rring.sum()), "ring": "ring_from_gd (no reference map for rest)"}
    for model in ("fermi", "2cxm"):   # the same data-derived ring on stress, for comparison with the reference ring
        maps = compute_mbf_map(s, aif, ring_gd, model=model)
        out["stress"][model]["median_in_ring_from_gd"] = float(np.nanmedian(maps["mbf"][ring_gd]))
    for model in ("fermi", "2cxm"):
        maps = compute_mbf_map(rs, raif, rring, model=model)
        reg = fit_regions(rs, raif, rring.astype(int), model=model)[1]
        out["rest"][model] = {"median_mbf": float(np.nanmedian(maps["mbf"][rring])),
                              "iqr": [float(v) for v in np.nanpercentile(maps["mbf"][rring], [25, 75])],
                              "ring_mean_curve_mbf": reg["mbf"]}
    return out


# --- 4. AIF LV detection -----------------------------------------------------------------------------------------------
def aif_detection() -> dict:
    out = {}
    for e in (1, 2, 3):
        folder = DATA / "qperf" / "aif_detection" / f"example{e}"
        if not folder.exists():
            return {"skipped": "AIF examples absent"}
        img = np.transpose(np.load(folder / "aif_scc.npy"), (2, 0, 1))
        ref = np.load(folder / "aif_masks_final.npy") == 1
        mask = locate_lv_in_aif_images(img)
        out[f"example{e}"] = {"dice_lv": float(2 * (mask & ref).sum() / (mask.sum() + ref.sum())),
                              "pixels_ours": int(mask.sum()), "pixels_reference": int(ref.sum())}
    return out


def aif_phantom(seeds=range(8)) -> dict:
    """Phantom dual-sequence AIF images (signal): LV located, AIF converted with the AIF sequence's parameters
    (FLASH 5 deg, TS 4.4 ms, centric, as the phantom states) and compared with the true blood AIF."""
    try:
        from PerfusionSegLib.phantom import generate_study
        from PerfusionSegLib.phantom.signal import RELAXATION
    except ImportError as exc:
        return {"skipped": f"phantom not available: {exc}"}
    from PerfusionSegLib.quantification import extract_aif
    from PerfusionSegLib.quantification.gd_conversion import SequenceParameters
    out = {}
    for seed in seeds:
        ps = generate_study("siemens-flash-3t", seed=seed, condition="stress", units="mmol/L", n_slices=1)
        truth, img, ref = ps.study.aif, ps.study.aif.image_series, ps.aif_mask == 1
        acq = ps.params["acquisition"]
        fs = float(acq["field_T"])
        mask = locate_lv_in_aif_images(img.data)
        params = SequenceParameters("flash", 5.0, 0.0017, 0.0044, max(img.shape[0] // 2, 8), "centric", 0,
                                    float(acq["pd_flip_deg"]), fs, saturation_efficiency=float(acq["sat_efficiency"]),
                                    echo_time_s=float(acq["te_ms"]) / 1e3, r2star=float(acq["r2star"]))
        t10, t2, _ = RELAXATION[fs]["blood"]
        aif = extract_aif(img.replace(metadata={"role": "aif"}), params=params, t1_0=t10 / 1e3, t2_0=t2 / 1e3,
                          r1=float(acq["r1"]))
        sel = truth.curve > 0.1 * truth.curve.max()
        out[f"seed{seed}"] = {"dice_vs_phantom_lv_core": float(2 * (mask & ref).sum() / (mask.sum() + ref.sum())),
                              "pixels_ours": int(mask.sum()), "pixels_phantom": int(ref.sum()),
                              "aif_peak_ratio": float(aif.curve.max() / truth.curve.max()),
                              "aif_median_abs_rel_err_above_10pct": float(np.median(
                                  np.abs(aif.curve[sel] - truth.curve[sel]) / truth.curve[sel]))}
    out["note"] = ("phantom mask = LV blood pool eroded by 1 px (its choice); ours keeps the whole well-mixed core, so "
                   "Dice < 1 is expected even when the LV is found")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="fewer simulated pixels and phantom cases")
    ap.add_argument("--sections", default="sim,phantom,qperf,aif,aifphantom")
    ap.add_argument("--phantom-seeds", type=int, default=16,
                    help="phantom studies per (truth model, fitted model, route): seeds 0..N-1 (default 16)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    results = {"machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}",
               "python": platform.python_version(), "numpy": np.__version__}
    sec = args.sections.split(",")
    if "aif" in sec:
        results["aif_detection"] = aif_detection()
    if "qperf" in sec:
        results["qperf"] = qperf()
    if "aifphantom" in sec:
        results["aif_phantom"] = aif_phantom()
    if "sim" in sec:
        results["simulation"] = simulated(800 if args.quick else 4000)
    if "phantom" in sec:
        seeds = (0,) if args.quick else tuple(range(args.phantom_seeds))
        # the faithful route: the phantom's signal images (acquisition resolution and motion act on the signal, as
        # on a scanner) converted to [Gd] by our conversion, then fitted
        results["phantom_from_signal"] = phantom(seeds=seeds, source="signal", with_round_trip=False)
        # the shortcut: the phantom's [Gd] output, whose acquisition resolution (ringing of the truncated k-space)
        # acts on the concentrations: blood/myocardium peak enhancement is 1.2-1.9x higher in [Gd] than in the
        # signal, and so is the blood pool's ringing into the myocardium
        results["phantom"] = phantom(seeds=seeds)
        # the phantom's own image blur on the whole myocardium (partial volume with blood included), Fermi only
        results["phantom_default_blur_full_myocardium"] = phantom(seeds=(0,), blur_px=0.44, erode_px=0, models=("fermi",),
                                                                  with_round_trip=False)
    text = json.dumps(results, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
