#!/usr/bin/env python
"""Realism measured by use: train a small patch U-Net on phantom slices only, test it on the real daugs_dev slices.

Trains ``PerfusionSegLib.networks.unet.UNet2D`` (default config, ~0.49 M parameters, 30 frames as channels; a minimal
local U-Net if that module is absent) on 64x64 patches cut from on-the-fly ``generate_training_slice`` windows (3 in 7
from the ``randomised`` preset, the rest from the four named presets), for a wall-clock budget, checkpointing as it goes
(``--resume`` continues from the last checkpoint, counting the time already spent). Then it segments the three real
``../shared/data/daugs_dev`` slices with a sliding window (64x64, stride 16, softmax averaged) and reports the
myocardium Dice against the expert labels (daugs code 1 = myocardium), writing a PNG of the predictions and a JSON.

The generator is never tuned on these three slices; they are only the test.

Usage: python scripts/phantom_transfer_check.py --minutes 30 [--threads 2] [--work /tmp/phantom_transfer] [--resume]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PerfusionSeg"))
DATA = REPO.parent / "shared" / "data" / "daugs_dev"
PATCH, STRIDE, FRAMES = 64, 16, 30
PRESETS_MIX = ("randomised", "randomised", "randomised", "siemens-flash-3t", "siemens-bssfp-3t", "siemens-flash-1p5t", "ge-gre-3t")


def build_model(torch):
    try:
        from PerfusionSegLib.networks.unet import build_unet
        return build_unet("default"), "PerfusionSegLib.networks.unet.UNet2D(default)"
    except ImportError:
        nn = torch.nn

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        class Tiny(nn.Module):
            def __init__(self, c=FRAMES, k=4, f=(16, 32, 64, 128)):
                super().__init__()
                self.down = nn.ModuleList([block(c if i == 0 else f[i - 1], f[i]) for i in range(len(f))])
                self.up = nn.ModuleList([nn.ConvTranspose2d(f[i], f[i - 1], 2, stride=2) for i in range(len(f) - 1, 0, -1)])
                self.dec = nn.ModuleList([block(2 * f[i - 1], f[i - 1]) for i in range(len(f) - 1, 0, -1)])
                self.head = nn.Conv2d(f[0], k, 1)

            def forward(self, x):
                skips = []
                for i, d in enumerate(self.down):
                    x = d(x)
                    if i < len(self.down) - 1:
                        skips.append(x)
                        x = nn.functional.max_pool2d(x, 2)
                for u, d in zip(self.up, self.dec):
                    x = d(torch.cat([u(x), skips.pop()], 1))
                return self.head(x)

        return Tiny(), "local minimal U-Net (16-128)"


def sample_patches(x, lab, rng, n):
    """n random 64x64 patches, most of them touching the heart (as the sliding window will)."""
    _, h, w = x.shape
    heart = np.argwhere(lab > 0)
    xs, ys = [], []
    for _ in range(n):
        if heart.size and rng.random() < 0.75:
            cy, cx = heart[rng.integers(len(heart))]
            y0 = int(np.clip(cy - rng.integers(8, PATCH - 8), 0, h - PATCH))
            x0 = int(np.clip(cx - rng.integers(8, PATCH - 8), 0, w - PATCH))
        else:
            y0, x0 = int(rng.integers(0, h - PATCH + 1)), int(rng.integers(0, w - PATCH + 1))
        px, pl = x[:, y0:y0 + PATCH, x0:x0 + PATCH], lab[y0:y0 + PATCH, x0:x0 + PATCH]
        k = int(rng.integers(4))
        px, pl = np.rot90(px, k, axes=(1, 2)), np.rot90(pl, k)
        if rng.random() < 0.5:
            px, pl = px[:, :, ::-1], pl[:, ::-1]
        xs.append(np.ascontiguousarray(px)), ys.append(np.ascontiguousarray(pl))
    return xs, ys


def _make_slice(key):
    """Worker: one training window from its own seed (deterministic per (seed, index))."""
    from PerfusionSegLib.phantom import generate_training_slice
    rng = np.random.default_rng(key)
    preset = PRESETS_MIX[int(rng.integers(len(PRESETS_MIX)))]
    return generate_training_slice(rng, preset, n_frames=FRAMES)


def slice_stream(seed, start, workers):
    """Training windows, generated in ``workers`` background processes (0: in this process) while the model trains."""
    i = start
    if workers <= 0:
        while True:
            yield _make_slice([seed, i])
            i += 1
    import multiprocessing as mp
    with mp.get_context("fork").Pool(workers) as pool:
        while True:
            yield from pool.imap(_make_slice, ([seed, j] for j in range(i, i + 64)))
            i += 64


def load_daugs():
    import scipy.io as sio
    out = []
    for lvl in ("Basal", "Mid", "Apical"):
        f = DATA / "Images" / f"Fig6-exD1-{lvl}.mat"
        if not f.exists():
            return []
        img = np.transpose(sio.loadmat(f)["final_img"], (2, 0, 1)).astype(np.float32)
        m = sio.loadmat(DATA / "Labels" / f.name)["final_mask"]
        out.append((lvl, img, m))
    return out


def sliding_window(model, torch, img, flips=False):
    """Softmax averaged over 64x64 windows at stride 16; ``flips`` also averages the 4 flipped versions (TTA)."""
    _, h, w = img.shape
    prob = np.zeros((4, h, w), dtype=np.float32)
    cnt = np.zeros((h, w), dtype=np.float32)
    coords = [(y, x) for y in range(0, h - PATCH + 1, STRIDE) for x in range(0, w - PATCH + 1, STRIDE)]
    batch = torch.from_numpy(np.stack([img[:, y:y + PATCH, x:x + PATCH] for y, x in coords]))
    with torch.no_grad():
        p = torch.softmax(model(batch), 1)
        if flips:
            for dims in ((2,), (3,), (2, 3)):
                p += torch.softmax(model(batch.flip(dims)), 1).flip(dims)
            p /= 4
        p = p.numpy()
    for (y, x), pp in zip(coords, p):
        prob[:, y:y + PATCH, x:x + PATCH] += pp
        cnt[y:y + PATCH, x:x + PATCH] += 1
    return np.argmax(prob / np.maximum(cnt, 1), axis=0)


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def evaluate(model, torch, cases, flips=False):
    model.eval()
    res = {}
    preds = {}
    for lvl, img, m in cases:
        pred = sliding_window(model, torch, img, flips)
        res[lvl] = dice(pred == 2, m == 1)
        preds[lvl] = pred
    model.train()
    return res, preds


def picture(cases, preds, scores, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(6, 4.2))
    for j, (lvl, img, m) in enumerate(cases):
        lv = m == 3
        t = int(np.argmax(img[:, lv].mean(1))) if lv.any() else 15
        for i, (lab, title) in enumerate(((m == 1, "expert myocardium"), (preds[lvl] == 2, f"phantom-trained: Dice {scores[lvl]:.2f}"))):
            ax = axes[i, j]
            ax.imshow(img[min(t + 4, img.shape[0] - 1)], cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
            ax.contour(lab.astype(float), [0.5], colors=["c" if i == 0 else "m"], linewidths=0.8)
            if i == 1:
                ax.contour((preds[lvl] == 1).astype(float), [0.5], colors=["r"], linewidths=0.5)
                ax.contour((preds[lvl] == 3).astype(float), [0.5], colors=["y"], linewidths=0.5)
            ax.set_title(f"{lvl}: {title}", fontsize=6)
            ax.set_xticks([]), ax.set_yticks([])
    plt.tight_layout(pad=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (includes data generation)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the generator worker needs ~10%% of a core)")
    ap.add_argument("--workers", type=int, default=1, help="background processes generating phantom slices (0: inline)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/phantom_transfer", help="checkpoint folder (outside the repository)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between Dice checks (logged only)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    model, model_name = build_model(torch)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    state = {"elapsed_s": 0.0, "step": 0, "slices": 0, "log": []}
    if args.resume and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        print(f"resumed at step {state['step']} after {state['elapsed_s'] / 60:.1f} min")
    try:
        from PerfusionSegLib.networks.losses import CEJaccardLoss
        loss_fn = CEJaccardLoss()
    except ImportError:
        loss_fn = torch.nn.CrossEntropyLoss()
    cases = load_daugs()
    rng = np.random.default_rng([args.seed, state["step"]])
    budget = args.minutes * 60.0
    buf_x, buf_y = [], []
    t_start = time.time() - state["elapsed_s"]
    last_ckpt = last_eval = time.time()
    sched_total = max(budget, 60.0)

    def save():
        state["elapsed_s"] = time.time() - t_start
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        tmp.replace(ckpt)

    model.train()
    stream = slice_stream(args.seed, state["slices"], args.workers)
    while time.time() - t_start < budget:
        # one fresh slice (8 patches) per two optimisation steps; a rolling buffer of 512 patches
        x, lab = next(stream)
        px, py = sample_patches(x, lab, rng, 8)
        buf_x += px
        buf_y += py
        buf_x, buf_y = buf_x[-512:], buf_y[-512:]
        state["slices"] += 1
        for _ in range(2):
            idx = rng.integers(0, len(buf_x), size=min(args.batch, len(buf_x)))
            xb = torch.from_numpy(np.stack([buf_x[i] for i in idx]))
            yb = torch.from_numpy(np.stack([buf_y[i] for i in idx]).astype(np.int64))
            frac = min((time.time() - t_start) / sched_total, 1.0)
            for g in opt.param_groups:   # cosine decay over the budget
                g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            state["step"] += 1
        if time.time() - last_ckpt > 120:
            save()
            last_ckpt = time.time()
        if cases and time.time() - last_eval > args.eval_every * 60:
            res, _ = evaluate(model, torch, cases)
            entry = {"minutes": round((time.time() - t_start) / 60, 2), "step": state["step"], "slices": state["slices"],
                     "loss": float(loss.detach()), "dice": res, "mean_dice": float(np.mean(list(res.values())))}
            state["log"].append(entry)
            print(json.dumps(entry), flush=True)
            last_eval = time.time()
    save()
    result = {"model": model_name, "parameters": int(n_params), "minutes": round(state["elapsed_s"] / 60, 2),
              "steps": state["step"], "phantom_slices": state["slices"], "threads": args.threads, "log": state["log"]}
    if cases:
        res, preds = evaluate(model, torch, cases)
        result["dice_myocardium"] = res
        result["mean_dice_myocardium"] = float(np.mean(list(res.values())))
        res_tta, _ = evaluate(model, torch, cases, flips=True)
        result["dice_myocardium_flip_tta"] = res_tta      # extra, not the protocol
        result["mean_dice_myocardium_flip_tta"] = float(np.mean(list(res_tta.values())))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tag = f"{int(round(args.minutes))}min"
        picture(cases, preds, res, out / f"phantom_transfer_{tag}.png")
        (out / f"phantom_transfer_{tag}.json").write_text(json.dumps(result, indent=1))
    else:
        print("daugs_dev data absent: trained, not evaluated", file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
