"""Benchmark: the shipped models on a CUDA GPU against the same machine's CPU, in one process.

For each phantom study (3 slices, one per preset): the ResUNet (``segment_study``) and the DAUGS pool (``run_daugs``,
fast search, U-map stride 2) on the CPU (``--threads`` threads, fp32: the baseline), on the GPU in fp32 and on the GPU
in bf16 autocast. Reported per variant: the median seconds per 3-slice study, the ratio to the CPU baseline, and the
agreement with it (the same DAUGS member chosen; the fraction of pixels with the same label; myocardium Dice against
the phantom truth; all over every study, the warm-up included). The first study of each variant is a warm-up and is not
timed (CUDA kernels are chosen there).

    python benchmarks/bench_gpu.py [--studies 4] [--threads 2] [--pool daugs_pool] [--model resunet] [--json F]

Needs a CUDA GPU (exits 2 without one). Nothing here runs in the default test run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

PRESETS = ("siemens-flash-3t", "siemens-bssfp-3t", "ge-gre-3t", "siemens-flash-1p5t", "randomised")
VARIANTS = (("cpu_fp32", "cpu", False), ("cuda_fp32", "cuda", False), ("cuda_bf16", "cuda", True))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / s) if s else float("nan")


def _study(i: int):
    from PerfusionSegLib.phantom.generator import generate_study

    return generate_study(PRESETS[i % len(PRESETS)], seed=5_000_000 + i, condition=("stress", "rest")[i % 2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=4, help="timed studies per variant (one more is the warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of the baseline")
    ap.add_argument("--pool", default="daugs_pool")
    ap.add_argument("--model", default="resunet")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args(argv)

    import torch

    from PerfusionDAUGSLib.daugs import run_daugs
    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionSegLib.inference import segment_study
    from PerfusionSegLib.machine import machine_description
    from PerfusionSegLib.networks.registry import load_model

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    studies = [_study(i) for i in range(args.studies + 1)]
    machine = f"{machine_description()}; GPU {torch.cuda.get_device_name(0)}"
    results = {}
    for name, device, bf16 in VARIANTS:
        model = load_model(args.model, device=device)
        pool = load_pool(args.pool, device=device)
        times = {"resunet": [], "daugs": []}
        outputs = []
        for k, study in enumerate(studies):
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            res = segment_study(study.study, model, bf16=bf16)
            sync()
            t1 = time.perf_counter()
            dg = run_daugs(study.study, pool, device=device, bf16=bf16)
            sync()
            t2 = time.perf_counter()
            if k:  # the first study warms up
                times["resunet"].append(t1 - t0)
                times["daugs"].append(t2 - t1)
            outputs.append(([r.labels for r in res], [d.labels for d in dg], [d.chosen for d in dg]))
        results[name] = {"times": times, "outputs": outputs}
        del model, pool
        if device == "cuda":
            torch.cuda.empty_cache()

    base = results["cpu_fp32"]
    rows = []
    for name, _, _ in VARIANTS:
        r = results[name]
        row = {"variant": name}
        for family, idx in (("resunet", 0), ("daugs", 1)):
            med = statistics.median(r["times"][family])
            same = [float((a == b).mean()) for o, ob in zip(r["outputs"], base["outputs"])
                    for a, b in zip(o[idx], ob[idx])]
            myo = [_dice(lab == 2, truth.labels == 2) for o, st in zip(r["outputs"], studies)
                   for lab, truth in zip(o[idx], st.truth)]
            row[family] = {"s_per_study": round(med, 3),
                           "ratio_to_cpu": round(med / statistics.median(base["times"][family]), 3),
                           "same_label_fraction_min": round(min(same), 5),
                           "myo_dice_mean": round(float(np.nanmean(myo)), 4)}
        row["daugs"]["same_member"] = f"{sum(a == b for o, ob in zip(r['outputs'], base['outputs']) for a, b in zip(o[2], ob[2]))}" \
                                      f"/{sum(len(o[2]) for o in r['outputs'])}"
        rows.append(row)

    print(f"machine: {machine}")
    print(f"{len(studies) - 1} timed 3-slice phantom studies per variant (+1 warm-up); CPU baseline {args.threads} "
          f"threads; pool {args.pool}, model {args.model}")
    print(f"{'variant':<10} {'ResUNet s':>10} {'ratio':>7} {'same px':>8} {'myo':>6} | "
          f"{'DAUGS s':>8} {'ratio':>7} {'same px':>8} {'member':>7} {'myo':>6}")
    for row in rows:
        ru, dg = row["resunet"], row["daugs"]
        print(f"{row['variant']:<10} {ru['s_per_study']:>10.3f} {ru['ratio_to_cpu']:>7.3f} "
              f"{ru['same_label_fraction_min']:>8.4f} {ru['myo_dice_mean']:>6.3f} | {dg['s_per_study']:>8.3f} "
              f"{dg['ratio_to_cpu']:>7.3f} {dg['same_label_fraction_min']:>8.4f} {dg['same_member']:>7} "
              f"{dg['myo_dice_mean']:>6.3f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
