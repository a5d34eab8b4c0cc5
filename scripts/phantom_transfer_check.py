#!/usr/bin/env python
"""Realism measured by use: a patch U-Net trained on the phantom alone, tested on the real daugs_dev slices.

Trains ``UNet2D`` (``default_in``: 0.49 M parameters, InstanceNorm, 30 frames as channels, 64x64 patches; ``--config
default`` is the BatchNorm network of the shipped pool and of the checks before the fourteenth session) with the training package
(`PerfusionSegLib.training`, the same code as `perfusion train --family daugs`) on on-the-fly phantom slices (3 in 7
from the ``randomised`` preset, the rest from the four named presets) for a wall-clock budget that includes data
generation, then segments the three expert-labelled ``../shared/data/daugs_dev`` slices (128x128, 30 frames, [0, 1])
with a 64x64 sliding window at stride 16 (softmax averaged; myocardium where its mean probability >= 0.5, the
published DAUGS rule that ``run_daugs`` applies, elsewhere the arg-max) and reports the myocardium Dice (DAUGS code
1), writing a PNG of the predictions and a JSON. The JSON also gives every figure with the plain arg-max of the mean
softmax (how this script labelled until the thirteenth session). The model tested is the last epoch of the budget:
the daugs_dev slices are a test only, never used to choose an epoch or tune the generator. It also reports the myocardium Dice on the 47 labelled
ml_perfusion_subset series (coarse, near-circular labels; crops centred on the labelled blood pool): the real data
that generator changes may be judged on. Both figures are the raw sliding-window labels; the JSON adds them after
the product's `postprocess.clean_labels` (what `perfusion segment --method daugs` writes) as a second view.
Resumable: run it again with the same --work folder.

Usage: python scripts/phantom_transfer_check.py --minutes 30 [--work /tmp/phantom_transfer] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "daugs_dev"
PRESETS = ["randomised"] * 3 + ["siemens-flash-3t", "siemens-bssfp-3t", "siemens-flash-1p5t", "ge-gre-3t"]


def load_daugs_dev():
    """The three slices as the network sees them: the stored 128x128 x 30-frame crops, scaled with the robust max
    (99.5th percentile -> 1, clipped) that training (``training.data``) and inference (``prepare_for_network``) use.
    The files are min-max scaled by their authors, a few bright pixels at 1 and the blood pool at 0.3-0.5: fed as
    stored they put the blood pool where the network learnt myocardium (mean Dice 0.44 instead of 0.58, same model)."""
    from PerfusionSegLib.preprocess import normalise
    from PerfusionSegLib.readers import load_labels, load_series

    cases = []
    for level in ("Basal", "Mid", "Apical"):
        image = DATA / "Images" / f"Fig6-exD1-{level}.mat"
        series = load_series(image, spacing=0.9, dt=1.0)
        labels, _ = load_labels(DATA / "Labels" / image.name)        # mapped to project codes (2 = myocardium)
        cases.append((level, normalise(series.data, "robust_max")[0], labels))
    return cases


def load_ml_perfusion():
    """The ml_perfusion_subset series (coarse labels: 1 myocardium, 2 blood pool, mapped to project codes) as the
    network sees them: 2x interpolated, 128x128 centred on the labelled blood pool, 30 frames (pchip), robust max.
    Centred on the label so that the figure measures segmentation, not localisation. The labels are near-circular
    approximations, so even a perfect network scores well below 1; the figure is for comparing generators and runs,
    and it is the real data that appearance may be judged on (the daugs_dev slices are the test)."""
    from PerfusionSegLib.readers import load_labels, load_series
    from PerfusionSegLib.training.data import labelled_series_on_network_grid
    from PerfusionSegLib.training.recipes import DAUGS2024

    cases = []
    for gt in sorted((DATA.parent / "ml_perfusion_subset").glob("*_gt.nii.gz")):
        img = gt.with_name(gt.name.replace("_gt.nii.gz", ".nii.gz"))
        if not img.exists():
            continue
        image, labels = labelled_series_on_network_grid(load_series(img, dt=1.0, time_axis=0), load_labels(gt)[0],
                                                        DAUGS2024)
        cases.append((img.name[: -len(".nii.gz")], image, labels))
    return cases


def myocardium_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred == 2, ref == 2
    return float(2 * (p & r).sum() / max(1, p.sum() + r.sum()))


def false_positive_split(preds, refs, near_px: float = 6.0) -> dict:
    """Where the wrongly predicted myocardium lies in the reference, as fractions of the true-positive myocardium
    summed over the cases: inside the labelled blood pool ("pool"), in background within ``near_px`` of the labelled
    heart ("near"), or further away ("far")."""
    from scipy import ndimage

    tp, out = 0, {"pool": 0, "near": 0, "far": 0}
    for pred, ref in zip(preds, refs):
        fp = (pred == 2) & (ref != 2)
        tp += int(((pred == 2) & (ref == 2)).sum())
        dist = ndimage.distance_transform_edt(ref == 0)
        out["pool"] += int((fp & (ref == 1)).sum())
        out["near"] += int((fp & (ref == 0) & (dist <= near_px)).sum())
        out["far"] += int((fp & (ref == 0) & (dist > near_px)).sum())
    return {k: round(v / max(tp, 1), 3) for k, v in out.items()}


def wall_ratio(pred: np.ndarray, ref: np.ndarray, n_rays: int = 90) -> float:
    """Median myocardial wall thickness of the prediction over that of the reference, counted in pixels along rays
    from the reference blood pool's centre (NaN when either has no wall on most rays)."""
    from scipy import ndimage

    if not (ref == 1).any():
        return float("nan")
    cy, cx = ndimage.center_of_mass(ref == 1)
    r = np.arange(0.0, 64.0, 0.5)
    thick = []
    for mask in (pred == 2, ref == 2):
        per_ray = []
        for a in np.linspace(0, 2 * np.pi, n_rays, endpoint=False):
            y = np.clip(np.round(cy + r * np.sin(a)).astype(int), 0, mask.shape[0] - 1)
            x = np.clip(np.round(cx + r * np.cos(a)).astype(int), 0, mask.shape[1] - 1)
            per_ray.append(0.5 * mask[y, x].sum())
        per_ray = np.array(per_ray)
        thick.append(np.median(per_ray[per_ray > 0]) if (per_ray > 0).mean() > 0.5 else np.nan)
    return float(thick[0] / thick[1])


def picture(cases, preds, scores, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for ax, (level, img, ref) in zip(axes, cases):
        bp = ref == 1
        t = int(np.argmax(img[:, bp].mean(1))) if bp.any() else img.shape[0] // 2
        frame = img[min(t + 4, img.shape[0] - 1)]                       # myocardial enhancement, after the LV peak
        ax.imshow(frame, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
        ax.contour((ref == 2).astype(float), [0.5], colors=["c"], linewidths=0.9)
        ax.contour((preds[level] == 2).astype(float), [0.5], colors=["m"], linewidths=0.9)
        ax.contour((preds[level] == 1).astype(float), [0.5], colors=["r"], linewidths=0.5)
        ax.contour((preds[level] == 3).astype(float), [0.5], colors=["y"], linewidths=0.5)
        ax.set_title(f"{level}: myocardium Dice {scores[level]:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("expert myocardium (cyan) vs phantom-trained prediction (magenta; blood pool red, RV yellow)",
                 fontsize=7)
    fig.tight_layout(pad=0.4, rect=(0, 0, 1, 0.94))      # room for the suptitle above the panel titles
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (includes generation)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/phantom_transfer"), help="run folder (outside the repo)")
    ap.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNG and JSON go")
    ap.add_argument("--tag", default="30min")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps-per-epoch", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-halve-every", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="default_in",
                    help="UNet2D configuration (networks.unet.CONFIGS): default_in (InstanceNorm; the default since the "
                         "fourteenth session, docs/phantom.md) or default (BatchNorm, the shipped pool's)")
    ap.add_argument("--loss", choices=("ce", "ce+jaccard"), default="ce",
                    help="training loss (DAUGS: cross-entropy; Xue: cross-entropy plus soft Jaccard)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="no training: test the last checkpoint already in --work/run")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"real data absent: {DATA}", file=sys.stderr)
        return 2

    import torch

    from PerfusionSegLib.training.pipeline import build_sources
    from PerfusionSegLib.training.recipes import DAUGS2024
    from PerfusionSegLib.training.trainer import labels_from_prediction, predict_probabilities, train

    torch.set_num_threads(args.threads)
    recipe = DAUGS2024.replace(batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, lr=args.lr,
                               lr_halve_every=args.lr_halve_every, epochs=1000, early_stop_patience=None,
                               bank_size=192, val_slices=24, loss=args.loss, config=args.config)
    t0 = time.time()
    if args.evaluate_only:
        history = json.loads((args.work / "run" / "history.json").read_text())
        t0 -= sum(h["seconds"] for h in history)     # the training's own epoch times
    else:
        source, val, _ = build_sources(recipe, ["phantom:" + ",".join(PRESETS)], args.seed)
        history = train(recipe, source, val, args.work / "run", seed=args.seed, max_minutes=args.minutes,
                        progress=False, log=lambda m: print(m, flush=True)).history
    from PerfusionSegLib.networks.registry import load_model

    last = history[-1]["epoch"]
    model = load_model(args.work / "run" / "checkpoints" / f"e{last:03d}.json", device="cpu")
    cases = load_daugs_dev()
    probs = {level: predict_probabilities(model.network, img, recipe, "cpu") for level, img, _ in cases}
    preds = {level: labels_from_prediction(p, recipe) for level, p in probs.items()}
    scores = {level: myocardium_dice(preds[level], ref) for level, _, ref in cases}
    mean = float(np.mean(list(scores.values())))
    ml_cases = load_ml_perfusion()
    ml_probs = [predict_probabilities(model.network, img, recipe, "cpu") for _, img, _ in ml_cases]
    ml_preds = [labels_from_prediction(p, recipe) for p in ml_probs]
    ml_refs = [ref for _, _, ref in ml_cases]
    ml = [myocardium_dice(p, ref) for p, ref in zip(ml_preds, ml_refs)]
    # the labelling this script used until the thirteenth session: plain arg-max of the mean softmax
    am = {level: myocardium_dice(np.argmax(probs[level], 0), ref) for level, _, ref in cases}
    ml_am_preds = [np.argmax(p, 0) for p in ml_probs]
    ml_am = [myocardium_dice(p, ref) for p, ref in zip(ml_am_preds, ml_refs)]
    # what a user of `perfusion segment --method daugs` gets: the same labels after the product's clean-up
    from PerfusionSegLib.postprocess import clean_labels
    cleaned = {level: myocardium_dice(clean_labels(preds[level]), ref) for level, _, ref in cases}
    ml_cleaned = [myocardium_dice(clean_labels(p), ref) for p, ref in zip(ml_preds, ml_refs)]
    summary = {"minutes_budget": args.minutes, "config": args.config, "epochs": last,
               "steps": last * recipe.steps_per_epoch,
               "seconds_total": round(time.time() - t0, 1), "phantom_val_dice": history[-1]["val_dice"],
               "daugs_dev_myocardium_dice": scores, "mean": mean,
               "ml_perfusion_coarse_myocardium_dice": {"n": len(ml), "mean": float(np.mean(ml)) if ml else None,
                                                       "median": float(np.median(ml)) if ml else None,
                                                       "false_positive_of_tp": false_positive_split(ml_preds, ml_refs),
                                                       "wall_ratio_median": float(np.nanmedian(
                                                           [wall_ratio(p, r) for p, r in zip(ml_preds, ml_refs)]))
                                                       if ml else None},
               "daugs_dev_false_positive_of_tp": false_positive_split([preds[c[0]] for c in cases],
                                                                      [c[2] for c in cases]),
               "daugs_dev_wall_ratio": {level: wall_ratio(preds[level], ref) for level, _, ref in cases},
               "after_clean_labels": {"daugs_dev_myocardium_dice": cleaned,
                                      "daugs_dev_mean": float(np.mean(list(cleaned.values()))),
                                      "ml_perfusion_mean": float(np.mean(ml_cleaned)) if ml_cleaned else None},
               "argmax_labels": {"daugs_dev_myocardium_dice": am, "daugs_dev_mean": float(np.mean(list(am.values()))),
                                 "ml_perfusion_mean": float(np.mean(ml_am)) if ml_am else None,
                                 "ml_false_positive_of_tp": false_positive_split(ml_am_preds, ml_refs)},
               "labelling": "myocardium where mean softmax >= 0.5, else arg-max (DAUGS rule)",
               "recipe": recipe.to_dict(),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"phantom_transfer_{args.tag}.json").write_text(json.dumps(summary, indent=1))
    picture(cases, preds, scores, args.out / f"phantom_transfer_{args.tag}.png")
    print(json.dumps({k: summary[k] for k in ("epochs", "daugs_dev_myocardium_dice", "mean",
                                              "ml_perfusion_coarse_myocardium_dice", "daugs_dev_false_positive_of_tp",
                                              "daugs_dev_wall_ratio", "after_clean_labels", "argmax_labels",
                                              "seconds_total")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
