#!/usr/bin/env python3
"""Which windows should the fast DAUGS search rank all members on? A replay study on exhaustive agreement logs.

The fast search (selection.select_members) ranks every member on the 9 windows of the stride-32 grid, then refines
the best. On the logs of ``bench_daugs.py --pool P --skip-timing --log L`` its misses are winners ranked 14th-33rd on
those 9 windows. This script scores other ranking-stage window sets on the same series: it re-generates each logged
series (same phantom seed), runs every member on the candidate windows (fp32, a few seconds per series), computes the
ranking-stage U_pp of each set, and replays the current default's later stages from the log's own per-stride U_pp.

Ranking windows other than the stride-32 grid are not segmentation windows, so in the replay they are scored on a
separate accumulator and discarded: the members that go on run the whole stride-16 grid (counted in the forwards).
Pixels that no candidate window covers get background and U-map 0 (the centred sets do not reach the border).

    python benchmarks/rank_stage_study.py LOG --pool P --series-seed S [--sets 32,32p] [--out scored.jsonl]
    python benchmarks/rank_stage_study.py scored.jsonl --replay-only

Twenty-second session (docs/daugs.md): no set of <= 25 windows beat the stride-32 grid by more than one series in 20.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the default schedule after the ranking stage, with the log's keys: stride 16, phase-cycled 8, stride 4, stride 2
LATER_STAGES = (("16", 16, 2.5), ("8p", 6, 1.0), ("4p", 3, 0.1), ("2", 2, 0.05))
CUMULATIVE = {"16": 25, "8p": 97, "4p": 345, "2": 1089}
PATCH = 64


def _phase(i: int, j: int) -> tuple:
    """The phase-cycled shift of window (i, j), as patching.phased_offsets at step 2 and 4 phases per axis."""
    return 2 * ((i + 2 * j) % 4), 2 * ((j + 2 * i) % 4)


def grid_set(bases, phased: bool, last: int = 128 - PATCH) -> np.ndarray:
    out = []
    for i, y in enumerate(bases):
        for j, x in enumerate(bases):
            dy, dx = _phase(i, j) if phased else (0, 0)
            out.append((y + dy if y + dy <= last else y - dy, x + dx if x + dx <= last else x - dx))
    return np.unique(np.array(out, np.int64), axis=0)


SETS = {
    "32": grid_set([0, 32, 64], False),               # the current ranking stage
    "32p": grid_set([0, 32, 64], True),               # the same, phase-cycled (backwards at the far border)
    "c9": grid_set([24, 32, 40], False),              # centred on the heart
    "c9p": grid_set([24, 32, 40], True),
    "c16p": grid_set([20, 28, 36, 44], True),
    "c25p": grid_set([16, 24, 32, 40, 48], True),
}
SETS["u18"] = np.unique(np.concatenate([SETS["32"], SETS["32p"]]), axis=0)


def set_scores(probs: np.ndarray, offsets: np.ndarray, shape, margin, myo: int) -> tuple:
    """(U_pp, U_tot) of one member on one window set: whole-patch mean segmentation, U-map over patch interiors."""
    from PerfusionDAUGSLib.patching import contribution_rects
    from PerfusionDAUGSLib.umap import labels_from_probabilities, uncertainty_scores

    H, W = shape
    seg = np.zeros((probs.shape[1], H, W))
    seg_n = np.zeros((H, W))
    s, sq, n = np.zeros((H, W)), np.zeros((H, W)), np.zeros((H, W))
    for b, ((oy, ox), (y0, y1, x0, x1)) in enumerate(zip(offsets, contribution_rects(offsets, shape, PATCH, margin))):
        seg[:, oy:oy + PATCH, ox:ox + PATCH] += probs[b]
        seg_n[oy:oy + PATCH, ox:ox + PATCH] += 1
        p = probs[b, myo, y0:y1, x0:x1]
        s[oy + y0:oy + y1, ox + x0:ox + x1] += p
        sq[oy + y0:oy + y1, ox + x0:ox + x1] += p * p
        n[oy + y0:oy + y1, ox + x0:ox + x1] += 1
    mean = seg / np.maximum(seg_n, 1)
    mean[0][seg_n == 0] = 1.0                                   # uncovered: background
    labels = labels_from_probabilities(mean.astype(np.float32), myo, 0.5)
    m = s / np.maximum(n, 1)
    umap = np.sqrt(np.where(n > 0, np.maximum(sq / np.maximum(n, 1) - m * m, 0.0), 0.0))
    sc = uncertainty_scores(umap.astype(np.float32), labels == myo)
    return float(sc.upp), float(sc.utot)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def score_log(log: Path, pool_dir: str, seed: int, sets, out: Path) -> list:
    from bench_daugs import phantom_set
    from PerfusionDAUGSLib.patching import extract_patches
    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionDAUGSLib.selection import PoolEvaluator

    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    pool = load_pool(pool_dir)
    members = [(m.name, m.network.eval()) for m in pool.members]
    images, _ = phantom_set(max(r["series"] for r in records) + 1, seed=seed)
    windows = np.unique(np.concatenate([SETS[k] for k in sets]), axis=0)
    row = {tuple(o): k for k, o in enumerate(windows.tolist())}
    for rec in records:
        if rec["names"] != [n for n, _ in members]:
            _fail(f"{log}: the log's members are not those of {pool_dir}")
        t0 = time.perf_counter()
        ev = PoolEvaluator(members, [images[rec["series"]]])
        shape = tuple(ev.images[0].shape[1:])
        patches = extract_patches(ev.images[0], windows, (PATCH, PATCH), channels_last=ev.predictors[0].channels_last)
        for k in sets:
            rec["upp"][f"s1_{k}"], rec["utot"][f"s1_{k}"] = {}, {}
        for m, name in enumerate(ev.names):
            with torch.no_grad():
                probs = ev.predictors[m](patches).float().numpy().astype(np.float64)
            for k in sets:
                rows = [row[tuple(o)] for o in SETS[k].tolist()]
                rec["upp"][f"s1_{k}"][name], rec["utot"][f"s1_{k}"][name] = set_scores(
                    probs[rows], SETS[k], shape, ev.margin, ev.myo)
        if "32" in sets:     # the plain stride-32 set must give the log's own ranking-stage U_pp
            diff = max(abs(rec["upp"]["s1_32"][n] - rec["upp"]["32"][n]) / max(abs(rec["upp"]["32"][n]), 1e-12)
                       for n in ev.names if np.isfinite(rec["upp"]["32"][n]))
            if diff > 1e-6:
                _fail(f"series {rec['series']}: stride-32 U_pp differs from the log by {diff:.1e} "
                      "(another seed or another code version?)")
        print(f"  series {rec['series']}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    out.write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
    return records


def replay(rec: dict, key: str) -> tuple:
    """(choice, patch forwards) of the default schedule with ranking-stage set ``key``."""
    names = rec["names"]
    order = {n: i for i, n in enumerate(names)}
    upp, utot = dict(rec["upp"][f"s1_{key}"]), dict(rec["utot"][f"s1_{key}"])
    deepest = {n: None for n in names}
    candidates = list(names)
    for stage, k, tol in LATER_STAGES:
        ranked = sorted(candidates, key=lambda n: (upp[n], utot[n], order[n]))
        best = upp[ranked[0]]
        candidates = [n for n in ranked[:k] if n == ranked[0] or (np.isfinite(best) and upp[n] <= best * (1 + tol))]
        for n in candidates:
            deepest[n], upp[n], utot[n] = stage, rec["upp"][stage][n], rec["utot"][stage][n]
    chosen = sorted(candidates, key=lambda n: (upp[n], utot[n], order[n]))[0]
    shared = len(SETS["32"]) if key == "32" else 0      # only the stride-32 windows are stride-16 windows too
    forwards = len(SETS[key]) * len(names) + sum(CUMULATIVE[d] - shared for d in deepest.values() if d)
    if deepest.get(rec.get("established")) is None:      # the established member's segmentation is completed at 16
        forwards += CUMULATIVE["16"] - shared
    return chosen, forwards


def winner_rank(rec: dict, key: str) -> int:
    u, t = rec["upp"][f"s1_{key}"], rec["utot"][f"s1_{key}"]
    return sorted(u, key=lambda n: (u[n], t[n])).index(rec["exhaustive"]) + 1


def table(records, sets) -> None:
    print("| ranking windows | windows | same member as exhaustive | patch forwards/series | exhaustive winner's rank "
          "at the ranking stage (median, max) |")
    print("|---|---|---|---|---|")
    for k in sets:
        if not all(f"s1_{k}" in r["upp"] for r in records):
            continue
        res = [replay(r, k) for r in records]
        agree = sum(c == r["exhaustive"] for (c, _), r in zip(res, records))
        ranks = [winner_rank(r, k) for r in records]
        print(f"| {k} | {len(SETS[k])} | {agree}/{len(records)} | {np.mean([f for _, f in res]):.0f} | "
              f"{np.median(ranks):.0f}, {max(ranks)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path, help="agreement log of bench_daugs.py (or a scored log with --replay-only)")
    ap.add_argument("--pool", help="the pool the log was recorded with")
    ap.add_argument("--series-seed", type=int, help="the log's --series-seed")
    ap.add_argument("--sets", default=",".join(SETS), help=f"window sets to score, of {','.join(SETS)}")
    ap.add_argument("--out", type=Path, help="scored log (default: LOG with suffix .ranking.jsonl)")
    ap.add_argument("--replay-only", action="store_true", help="LOG is already scored: print the table only")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS]
    if unknown or not args.log.is_file():
        print(f"error: unknown window sets {unknown}" if unknown else f"error: no log {args.log}", file=sys.stderr)
        return 2
    if args.replay_only:
        records = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    else:
        if not args.pool or args.series_seed is None:
            print("error: scoring a log needs --pool and --series-seed", file=sys.stderr)
            return 2
        out = args.out or args.log.with_suffix(".ranking.jsonl")
        records = score_log(args.log, args.pool, args.series_seed, sets, out)
    from PerfusionSegLib.machine import machine_description
    print(f"machine: {machine_description()}\nlog: {args.log} ({len(records)} series)\n")
    table(records, sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
