"""Benchmark: Xue's ResUNet (published configuration, 3.71 M parameters) per slice on CPU.

Each variant runs in its own subprocess (so peak RSS is its own): model load (card + sha256 + weights-only load),
then slices of 48 x 176 x 176. Variants: fp32 eager (baseline), channels-last, channels-last + bf16 autocast,
TorchScript trace + freeze, torch.compile (if a compiler is available), fp16-stored weights (load time and size),
and the whole ``segment_series`` pipeline (localisation, resampling, network, inverse map, post-processing, QC) in fp32
and bf16; and the same network exported to ONNX and run by ONNX Runtime in a process that never imports torch (network
alone and whole pipeline; needs the packages onnx and onnxruntime). Dynamic int8 quantisation is not run: it covers Linear/LSTM layers and this network is all convolutions.
Agreement with the fp32 baseline: mean Dice over the 4 classes of the argmax labels.

Weights: a trained model when one is installed (``--model NAME|CARD``), else He-initialised weights whose
BatchNorm statistics are calibrated on synthetic first-pass slices and whose 1x1 head is fitted to the synthetic truth
(so outputs are decisive like a trained network's; a fully random head leaves a third of the pixels near a tie).

    python benchmarks/bench_resunet.py [--threads 2] [--slices 12] [--model NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("fp32_eager", "fp32_channels_last", "bf16_channels_last", "jit_trace_freeze", "torch_compile",
            "fp16_weights_bf16", "pipeline_fp32", "pipeline_bf16", "onnxruntime", "pipeline_onnx")
ONNX_VARIANTS = ("onnxruntime", "pipeline_onnx")   # run without importing torch (networks/onnx_model.py)
TARGET_MS, TARGET_LOAD_MS, TARGET_RSS_MB, TARGET_DICE = 150.0, 100.0, 250.0, 0.005


def synthetic_slice(index: int, seed: int = 0, size: int = 176, frames: int = 48):
    """One first-pass-like input (frames, size, size) float32 and its (size, size) uint8 truth labels: RV, LV pool and
    a myocardial ring with their own enhancement curves, noise. Slice ``index`` of stream ``seed`` is always the same,
    so a variant can make its slices one at a time (the benchmark's own data then stays out of the peak memory)."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.indices((size, size))
    t = np.arange(frames) * 0.5
    cy, cx = size / 2 + rng.uniform(-10, 10, 2)
    r_endo = rng.uniform(15, 25)
    r_epi = r_endo + rng.uniform(7, 12)
    d = np.hypot(yy - cy, xx - cx)
    rv = np.hypot(yy - cy, (xx - cx + 1.4 * r_epi) / 0.6) < 0.7 * r_epi
    bolus = lambda t0, w: np.clip(t - t0, 0, None) ** 2 * np.exp(-np.clip(t - t0, 0, None) / w)  # noqa: E731
    img = np.full((frames, size, size), 0.1, np.float32)
    img[:, rv] = bolus(3, 2)[:, None]
    myo = (d < r_epi) & (d >= r_endo)
    img[:, myo] = 0.3 * bolus(6, 3)[:, None] + 0.1
    img[:, d < r_endo] = bolus(5, 2)[:, None]
    img /= img.max()
    labels = np.zeros((size, size), np.uint8)
    labels[rv] = 3
    labels[myo] = 2
    labels[d < r_endo] = 1
    return (img + rng.normal(0, 0.03, img.shape)).astype(np.float32), labels


def synthetic_slices(n: int, seed: int = 0, with_labels: bool = False):
    """Slices 0..n-1 of stream ``seed`` stacked: (n, 48, 176, 176) float32 (and (n, 176, 176) labels)."""
    pairs = [synthetic_slice(i, seed) for i in range(n)]
    x, y = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    return (x, y) if with_labels else x


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0




def make_model(folder: Path, model_arg) -> Path:
    """A card path: the given trained model, or calibrated random weights saved in fp32 and fp16."""
    import torch
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.networks.registry import resolve_card, save_model

    if model_arg:
        return resolve_card(model_arg, None)
    torch.manual_seed(0)
    net = build_network("resunet", config="xue2020")
    net.train()
    with torch.no_grad():   # calibrate BatchNorm running statistics
        for batch in np.array_split(synthetic_slices(8, seed=99), 4):
            net(torch.from_numpy(batch))
    net.eval()
    # fit the 1x1 head to synthetic truth (logistic regression on the frozen features): a random head leaves most
    # pixels near a four-way tie, where any rounding flips the argmax; a fitted head makes decisive outputs as a
    # trained network does, so the Dice agreement of the fast variants is meaningful
    x, y = synthetic_slices(6, seed=98, with_labels=True)
    feats = []
    hook = net.final.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    with torch.no_grad():
        for xi in x:
            net(torch.from_numpy(xi[None]))
    hook.remove()
    f = torch.cat(feats).permute(0, 2, 3, 1).reshape(-1, feats[0].shape[1])
    t = torch.from_numpy(y.reshape(-1)).long()
    head = torch.nn.Linear(f.shape[1], 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        idx = torch.randint(0, f.shape[0], (20000,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(f[idx]), t[idx]).backward()
        opt.step()
    with torch.no_grad():
        net.head.weight.copy_(head.weight[:, :, None, None])
        net.head.bias.copy_(head.bias)
    card = {"input": {"n_frames": 48, "spacing_mm": 1.0, "size": 176, "temporal": "linear", "dt": 0.5,
                      "normalise": "robust_max"}, "training": {"data": "benchmark only: He-initialised body, BN calibrated, 1x1 head fitted to synthetic labels"}}
    save_model(net, card, folder, "bench16", half=True)
    return save_model(net, card, folder, "bench32")


def run_variant(variant: str, card: str, ref_path: str, n_slices: int, threads: int) -> dict:
    """Inside the subprocess: load, prepare the variant, time slices, compare with the reference labels."""
    t_import = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    from PerfusionSegLib.networks.registry import load_model
    import_ms = (time.perf_counter() - t_import) * 1000
    rss_import = peak_rss_mb()   # torch alone is ~220 MB here
    if variant == "fp16_weights_bf16":
        card = card.replace("bench32", "bench16")
    t0 = time.perf_counter()
    model = load_model(card, device="cpu")
    load_ms = (time.perf_counter() - t0) * 1000
    net = model.network
    truth = np.stack([synthetic_slice(i, seed=1)[1] for i in range(n_slices)])
    cl = variant != "fp32_eager"
    bf16 = variant.startswith("bf16") or variant in ("fp16_weights_bf16", "pipeline_bf16")
    if not cl:
        net = net.to(memory_format=torch.contiguous_format)
    note = ""
    with torch.inference_mode():
        first = torch.from_numpy(synthetic_slice(0, seed=1)[0][None])
        example = first.contiguous(memory_format=torch.channels_last) if cl else first
        if variant == "jit_trace_freeze":
            net = torch.jit.freeze(torch.jit.trace(net, example))
        elif variant == "torch_compile":
            try:
                net = torch.compile(net)
                net(example)
            except Exception as exc:   # no C++ compiler, unsupported backend...
                return {"variant": variant, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
        times, cpu, labels = [], [], []
        for i in range(n_slices + 3):
            x_np = synthetic_slice(i % n_slices, seed=1)[0]          # made one at a time, outside the timed part
            x = torch.from_numpy(x_np[None])
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            t, c = time.perf_counter(), time.process_time()
            if variant.startswith("pipeline"):
                # the whole segment_series: LV localisation, resampling and crop, network, inverse map to the
                # input grid, post-processing and QC (the series is the synthetic slice at 1 mm, 0.5 s frames)
                from PerfusionSegLib.inference import segment_series
                from PerfusionSegLib.series import SliceSeries
                series = SliceSeries(data=x_np, times=np.arange(48) * 0.5, spacing=(1.0, 1.0))
                lab = segment_series(series, model, bf16=bf16).labels
            else:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = net(x)
                lab = logits.float().argmax(1)[0].numpy().astype(np.uint8)
            if i >= 3:                     # 3 warm-up slices
                times.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
                labels.append(lab)
    labels = np.stack(labels)
    with torch.inference_mode():   # how decisive the outputs are: share of pixels whose top-2 probabilities are close
        p = net(example).float().softmax(1)
        top2 = p.topk(2, dim=1).values
        note = f"{float(((top2[:, 0] - top2[:, 1]) < 0.05).float().mean()) * 100:.1f}% of pixels within 0.05 of a tie"
    out = {"variant": variant, "load_ms": load_ms, "import_ms": import_ms, "ms_median": float(np.median(times)),
           "ms_p90": float(np.percentile(times, 90)), "note": note,
           "ms_min": float(np.min(times)), "cpu_ms": float(np.median(cpu)),
           "truth_dice": _mean_dice(labels, truth[[i % n_slices for i in range(3, n_slices + 3)]]), "peak_rss_mb": peak_rss_mb(), "rss_import_mb": rss_import}
    # the pipeline's bf16 run is compared with the pipeline's fp32 run (both post-processed), the rest with fp32 eager
    ref_path = ref_path.replace(".npy", "_pipeline.npy") if variant.startswith("pipeline") else ref_path
    if variant in ("fp32_eager", "pipeline_fp32"):
        np.save(ref_path, labels)
    else:
        ref = np.load(ref_path)
        out["mean_dice_vs_fp32"] = _mean_dice(labels, ref)
        out["min_dice_vs_fp32"] = _mean_dice(labels, ref, reduce=np.min)
    return out


def run_onnx_variant(variant: str, onnx_card: str, ref_path: str, n_slices: int, threads: int) -> dict:
    """Inside the subprocess: ONNX Runtime, torch never imported (checked and reported)."""
    t_import = time.perf_counter()
    import onnxruntime  # noqa: F401
    from PerfusionSegLib.networks.onnx_model import load_onnx_model
    import_ms = (time.perf_counter() - t_import) * 1000
    rss_import = peak_rss_mb()
    t0 = time.perf_counter()
    model = load_onnx_model(onnx_card, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1000
    truth = np.stack([synthetic_slice(i, seed=1)[1] for i in range(n_slices)])
    times, cpu, labels = [], [], []
    for i in range(n_slices + 3):
        x = synthetic_slice(i % n_slices, seed=1)[0][None]
        t, c = time.perf_counter(), time.process_time()
        if variant == "pipeline_onnx":
            from PerfusionSegLib.inference import segment_series
            from PerfusionSegLib.series import SliceSeries
            series = SliceSeries(data=x[0], times=np.arange(48) * 0.5, spacing=(1.0, 1.0))
            lab = segment_series(series, model).labels
        else:
            lab = model.predict_proba(x)[0].argmax(0).astype(np.uint8)
        if i >= 3:
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            labels.append(lab)
    labels = np.stack(labels)
    ref = np.load(ref_path.replace(".npy", "_pipeline.npy") if variant == "pipeline_onnx" else ref_path)
    return {"variant": variant, "load_ms": load_ms, "import_ms": import_ms, "ms_median": float(np.median(times)),
            "ms_p90": float(np.percentile(times, 90)), "ms_min": float(np.min(times)), "cpu_ms": float(np.median(cpu)),
            "truth_dice": _mean_dice(labels, truth[[i % n_slices for i in range(3, n_slices + 3)]]),
            "peak_rss_mb": peak_rss_mb(), "rss_import_mb": rss_import, "torch_imported": "torch" in sys.modules,
            "mean_dice_vs_fp32": _mean_dice(labels, ref), "min_dice_vs_fp32": _mean_dice(labels, ref, reduce=np.min)}


def _mean_dice(labels: np.ndarray, ref: np.ndarray, reduce=np.mean) -> float:
    """Dice per slice and class (classes present in either), reduced over all of them."""
    dices = []
    for s in range(len(ref)):
        for c in range(4):
            a, b = labels[s] == c, ref[s] == c
            if a.any() or b.any():
                dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(reduce(dices))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--model", default=None, help="a trained model name or card (default: calibrated random weights)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--_child", nargs=3, metavar=("VARIANT", "CARD", "REF"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        run = run_onnx_variant if args._child[0] in ONNX_VARIANTS else run_variant
        print(json.dumps(run(args._child[0], args._child[1], args._child[2], args.slices, args.threads)))
        return 0

    from PerfusionSegLib.machine import machine_description

    print(f"machine: {machine_description()}")
    print(f"threads: {args.threads}; slices: {args.slices} of 48 x 176 x 176 (after 3 warm-up slices)")
    with tempfile.TemporaryDirectory() as tmp:
        card = make_model(Path(tmp), args.model)
        from PerfusionSegLib.networks.blocks import count_parameters
        from PerfusionSegLib.networks.registry import load_model
        m = load_model(card, device="cpu")
        print(f"model: {card.name if hasattr(card, 'name') else card}; {count_parameters(m.network) / 1e6:.3f} M parameters; "
              f"weights {Path(card).with_suffix('.pt').stat().st_size / 1e6:.1f} MB fp32")
        ref = str(Path(tmp) / "ref.npy")
        variants = ["fp32_eager"] + [v for v in args.variants if v != "fp32_eager"]
        if "pipeline_onnx" in variants and "pipeline_fp32" not in variants:
            variants.insert(variants.index("pipeline_onnx"), "pipeline_fp32")   # its reference
        onnx_card = None
        if any(v in ONNX_VARIANTS for v in variants):
            try:
                from PerfusionSegLib.networks.onnx_model import export_onnx
                onnx_card = export_onnx(card, Path(tmp) / "onnx")
            except Exception as exc:   # onnx / onnxruntime not installed
                print(f"ONNX variants not run: {type(exc).__name__}: {exc}")
        rows = []
        for v in variants:
            if (v == "fp16_weights_bf16" and args.model) or (v in ONNX_VARIANTS and onnx_card is None):
                continue
            child_card = onnx_card if v in ONNX_VARIANTS else card
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--slices",
                                   str(args.slices), "--_child", v, str(child_card), ref], capture_output=True, text=True)
            try:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                rows.append({"variant": v, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:80]})
    base = next((r["ms_median"] for r in rows if r["variant"] == "fp32_eager" and "ms_median" in r), None)
    print()
    print(f"{'variant':<22}{'ms/slice':>10}{'min':>8}{'CPU ms':>8}{'x base':>8}{'load ms':>9}{'RSS MB':>8}{'(torch)':>8}"
          f"{'Dice vs fp32':>24}{'vs truth':>9}  targets")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<22}  not run: {r['error']}")
            continue
        dice = r.get("mean_dice_vs_fp32")
        ok = [r["ms_median"] <= TARGET_MS, r["load_ms"] <= TARGET_LOAD_MS, r["peak_rss_mb"] <= TARGET_RSS_MB,
              dice is None or 1 - dice <= TARGET_DICE]
        marks = "".join("+" if o else "-" for o in ok)
        dtxt = "reference" if dice is None else f"{dice:.4f} (min {r['min_dice_vs_fp32']:.3f})"
        print(f"{r['variant']:<22}{r['ms_median']:>10.1f}{r['ms_min']:>8.1f}{r['cpu_ms']:>8.1f}{base / r['ms_median']:>8.2f}"
              f"{r['load_ms']:>9.1f}{r['peak_rss_mb']:>8.0f}{r['rss_import_mb']:>8.0f}{dtxt:>24}{r['truth_dice']:>9.3f}  {marks}")
    fp32 = next((r for r in rows if r["variant"] == "fp32_eager" and "note" in r), None)
    if fp32:
        print(f"\nfp32 outputs: {fp32['note']}; Dice of fp32 labels vs the synthetic truth {fp32['truth_dice']:.3f}")
    for r in rows:
        if "torch_imported" in r:
            print(f"{r['variant']}: torch imported in its process: {r['torch_imported']}")
    print(f"\ntargets (+ met / - missed, in order): <= {TARGET_MS:.0f} ms/slice, load <= {TARGET_LOAD_MS:.0f} ms, "
          f"peak RSS <= {TARGET_RSS_MB:.0f} MB, Dice within {TARGET_DICE} of fp32")
    print("Dice vs fp32: mean (min) over slices and classes of the argmax labels against fp32 eager; the pipeline_bf16 "
          "and pipeline_onnx rows against pipeline_fp32. vs truth: against the synthetic truth.")
    print("ms/slice: median wall time; min: fastest slice; CPU ms: process CPU time per slice (all threads).")
    print("RSS MB: peak resident memory of the variant's process; (torch): peak after `import torch` and the registry")
    print(f"load average at end: {os.getloadavg()[0]:.2f} (other processes share these cores: timings are upper bounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
