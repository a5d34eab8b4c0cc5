"""DAUGS benchmark: pool selection time for a 3-slice study and agreement of the fast path with exhaustive search.

    /work/venv/bin/python benchmarks/bench_daugs.py                 # full run (tens of minutes on 2 busy cores)
    /work/venv/bin/python benchmarks/bench_daugs.py --quick         # smoke run (few series, small pool)
    /work/venv/bin/python benchmarks/bench_daugs.py --pool Resources/Models/daugs_pool   # the shipped pool

Members are UNet2D (PerfusionSegLib.networks) trained here for a few hundred steps on phantom slices
(``phantom.generate_training_slice``, DAUGS-like 128x128 x 30 frames in [0, 1]), then checkpoints x weight perturbations
of increasing size, so the pool holds members of differing quality and near-ties (small perturbations):

* agreement: ``--agree-config`` (default "tiny") pool of ``--members`` on ``--n-series`` phantom series never used for
  training; exhaustive (every member at stride 2) vs fast (staged) search, fp32 and bf16;
* timing: ``--timing-config`` (default "default", 0.49 M parameters) pool of ``--members`` on a 3-slice study, fast
  path fp32 and bf16; per-patch forward cost of each configuration (incl. "daugs2024", 1.94 M) to state what the
  exhaustive search and other widths would cost (patch forwards x measured cost, labelled "estimate").

Trained weights are cached in ``--cache`` (default /tmp/daugs_bench_cache) so a rerun skips training.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from PerfusionDAUGSLib.selection import select_members
from PerfusionSegLib.machine import machine_description
from PerfusionSegLib.networks.unet import build_unet
from PerfusionSegLib.phantom.generator import generate_training_slice

PERTURBATION_LEVELS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.13, 0.16, 0.20, 0.25)




def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def phantom_set(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = [generate_training_slice(rng, "randomised", n_frames=30) for _ in range(n)]
    return np.stack([x for x, _ in out]).astype(np.float32), np.stack([y for _, y in out]).astype(np.int64)


def train_checkpoints(config: str, steps: int, checkpoints, bank, seed: int, cache: Path, batch: int = 24):
    """State dicts of one UNet2D at the given step counts (cached)."""
    path = cache / f"{config}_s{steps}_seed{seed}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    net = build_unet(config)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    images, labels = torch.from_numpy(bank[0]), torch.from_numpy(bank[1])
    saved = {}
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = gen.integers(0, images.shape[0], batch)
        oy, ox = gen.integers(0, 65, batch), gen.integers(0, 65, batch)
        x = torch.stack([images[i, :, y:y + 64, xx:xx + 64] for i, y, xx in zip(idx, oy, ox)])
        y = torch.stack([labels[i, y:y + 64, xx:xx + 64] for i, y, xx in zip(idx, oy, ox)])
        if gen.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in checkpoints:
            saved[step] = copy.deepcopy(net.state_dict())
            print(f"  trained {config} to step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return saved


def make_pool(config: str, saved: dict, n_members: int, seed: int):
    """Checkpoints x perturbation levels -> (name, network) members, network eval + channels-last."""
    members = []
    rng = torch.Generator().manual_seed(seed)
    for level in PERTURBATION_LEVELS:
        for step, state in sorted(saved.items()):
            net = build_unet(config)
            net.load_state_dict(state)
            with torch.no_grad():
                for name, p in net.named_parameters():
                    if p.ndim == 4 and level > 0:
                        p.add_(torch.randn(p.shape, generator=rng) * p.std() * level)
            net.eval().to(memory_format=torch.channels_last)
            members.append((f"s{step}_p{int(level * 100):02d}", net))
            if len(members) == n_members:
                return members
    return members


def myo_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred == 2, ref == 2
    s = p.sum() + r.sum()
    return float(2 * (p & r).sum() / s) if s else 1.0


def validation_dice(members, images, labels):
    """Myocardium Dice of each member on validation slices (segmentation stride 16) -> established = best."""
    from PerfusionDAUGSLib.selection import PoolEvaluator

    ev = PoolEvaluator(members, list(images))
    ev.advance(range(len(members)), 16)
    return {ev.names[m]: float(np.mean([myo_dice(ev.evaluation(m, i).labels, labels[i])
                                         for i in range(len(images))])) for m in range(len(members))}


def per_patch_ms(config: str, bf16: bool, batch: int = 64, repeats: int = 3) -> float:
    """Wall and CPU ms per patch of one member as the selection runs it (``selection._Predictor``: fp32 with
    BatchNorm folded, bf16 as a bf16-weight copy or autocast), softmax included."""
    from PerfusionDAUGSLib.selection import _Predictor

    net = build_unet(config).eval().to(memory_format=torch.channels_last)
    predict = _Predictor(net, bf16=bf16)
    x = torch.rand(batch, 30, 64, 64).contiguous(memory_format=torch.channels_last)
    best = best_cpu = float("inf")
    predict(x[:8])
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        predict(x)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return 1000 * best / batch, 1000 * best_cpu / batch


STRIDES = (32, 16, 8, 4, 2)
# label -> (stride every member starts at, stages); a start at 32 runs only its 9 windows (no full segmentation)
SCHEDULES = {
    "current default (selection.RANK_STRIDE, DEFAULT_SCHEDULE)": None,      # filled in from selection at run time
    "default until session 6: 32, ((16,12,150%),(8,6,100%),(4,4,25%),(2,2,10%))":
        (32, ((16, 12, 1.5), (8, 6, 1.0), (4, 4, 0.25), (2, 2, 0.10))),
    "32, ((16,12,150%),(8,10,100%),(4,3,25%),(2,2,10%)) (chosen on series 0-19, failed on 20-39)":
        (32, ((16, 12, 1.5), (8, 10, 1.0), (4, 3, 0.25), (2, 2, 0.10))),
    "previous default: 16, ((4,4,50%),(2,2,10%))": (16, ((4, 4, 0.50), (2, 2, 0.10))),
    "16, ((4,4,25%),(2,2,5%))": (16, ((4, 4, 0.25), (2, 2, 0.05))),
    "16, ((8,8,50%),(4,4,20%),(2,2,5%))": (16, ((8, 8, 0.50), (4, 4, 0.20), (2, 2, 0.05))),
    "16, ((8,8,100%),(4,4,25%),(2,2,10%))": (16, ((8, 8, 1.0), (4, 4, 0.25), (2, 2, 0.10))),
    "16, ((4,6,100%),(2,3,20%))": (16, ((4, 6, 1.0), (2, 3, 0.20))),
    "16 then top-1 at 2": (16, ((2, 1, 0.0),)),
    "16 then top-3 at 2": (16, ((2, 3, 1e9),)),
    "32, ((16,12,100%),(8,6,100%),(4,4,25%),(2,2,10%))": (32, ((16, 12, 1.0), (8, 6, 1.0), (4, 4, 0.25), (2, 2, 0.10))),
    "32, ((16,16,200%),(8,8,100%),(4,4,25%),(2,2,10%))": (32, ((16, 16, 2.0), (8, 8, 1.0), (4, 4, 0.25), (2, 2, 0.10))),
    "32, ((4,4,50%),(2,2,10%))": (32, ((4, 4, 0.50), (2, 2, 0.10))),
}
# windows every member has run once it reached a key: plain grids (32, 16, 8, 4), the phase-cycled stride-8 grid
# added to the stride-16 windows ("8p", patching.phased_offsets) and the stride-4 grid added to those ("4p")
CUMULATIVE = {"32": 9, "16": 25, "8": 81, "4": 289, "8p": 97, "4p": 345, "2": 1089}


def rank(upp: dict, utot: dict, names, order):
    return sorted(names, key=lambda n: (upp[n], utot[n], order[n]))


def stage_key(stride: int, phased: bool, after_phased: bool) -> str:
    if stride == 2:
        return "2"                     # the whole stride-2 grid holds every other window
    return f"{stride}p" if (phased or after_phased) else str(stride)


def simulate_fast(rec: dict, schedule) -> tuple:
    """The fast path's choice and patch forwards from U_pp/U_tot of every member at each stage (same rules as
    selection.select_members: the best <= k within (1 + tol) of the best go on; ties by U_tot, then pool order).
    ``schedule``: (start stride, stages), a stage (stride, k, tol[, "phased"]). (None, None) when the record lacks a
    stage of this schedule (records made before phased stages were measured)."""
    names = rec["names"]
    order = {n: i for i, n in enumerate(names)}
    start, stages = schedule
    keys, after = [str(start)], False
    for st in stages:
        phased = len(st) == 4 and st[3] in ("phased", True)
        keys.append(stage_key(int(st[0]), phased, after))
        after = after or phased
    if any(k not in rec["upp"] for k in keys):
        return None, None
    cur_upp, cur_utot = dict(rec["upp"][keys[0]]), dict(rec["utot"][keys[0]])
    deepest = {n: keys[0] for n in names}
    candidates = list(names)
    for key, (stride, k, tol, *_) in zip(keys[1:], stages):
        ranked = rank(cur_upp, cur_utot, candidates, order)
        best = cur_upp[ranked[0]]
        candidates = [n for n in ranked[:max(1, k)]
                      if n == ranked[0] or (np.isfinite(best) and cur_upp[n] <= best * (1 + tol))]
        for n in candidates:
            deepest[n] = key
            cur_upp[n], cur_utot[n] = rec["upp"][key][n], rec["utot"][key][n]
    chosen = rank(cur_upp, cur_utot, candidates, order)[0]
    forwards = sum(CUMULATIVE[deepest[n]] for n in names)
    est = rec.get("established")
    if est in deepest and CUMULATIVE[deepest[est]] < CUMULATIVE["16"]:   # its segmentation is completed at 16
        forwards += CUMULATIVE["16"] - CUMULATIVE[deepest[est]]
    return chosen, forwards


def record_series(pool, image, truth, established) -> dict:
    """Every member at strides 32 -> 16 -> 8 -> 4 -> 2 (incremental: 1089 patch forwards per member in all; at 32
    only its own 9 windows, as the fast path's ranking stage runs it), and on a second evaluator along the phased
    path 32 -> 16 -> 8p (phase-cycled stride-8 windows) -> 4p (plus the stride-4 grid): 345 more per member."""
    from PerfusionDAUGSLib.selection import PoolEvaluator

    ev = PoolEvaluator(pool, [image])
    rec = {"names": list(ev.names), "upp": {}, "utot": {}, "established": established}
    t0 = time.perf_counter()
    for stride in STRIDES:
        ev.advance(range(len(ev.names)), stride, segmentation=stride <= 16)
        evs = [ev.evaluation(m, 0) for m in range(len(ev.names))]
        rec["upp"][str(stride)] = {e.member: e.upp for e in evs}
        rec["utot"][str(stride)] = {e.member: e.utot for e in evs}
    rec["dice"] = {e.member: myo_dice(e.labels, truth) for e in evs}
    rec["seconds_exhaustive"] = time.perf_counter() - t0
    rec["forwards_exhaustive"] = ev.n_forwards
    phased = PoolEvaluator(pool, [image])
    every = range(len(ev.names))
    phased.advance(every, 32, segmentation=False)
    phased.advance(every, 16)
    for key, stride, step in (("8p", 8, 2), ("4p", 4, None)):
        phased.advance_pairs({m: [0] for m in every}, stride, phase_step=step)
        evs = [phased.evaluation(m, 0) for m in every]
        rec["upp"][key] = {e.member: e.upp for e in evs}
        rec["utot"][key] = {e.member: e.utot for e in evs}
    order = {n: i for i, n in enumerate(ev.names)}
    rec["exhaustive"] = rank(rec["upp"]["2"], rec["utot"]["2"], ev.names, order)[0]
    return rec


def score_schedule(records, schedule) -> tuple:
    """(same member as exhaustive, series scored, mean stride-2 U_pp regret, (record, choice) pairs, mean patch
    forwards) of ``schedule`` replayed on ``records`` (records without its stages are left out)."""
    agree, regrets, picks, fw = 0, [], [], []
    for r in records:
        chosen, forwards = simulate_fast(r, schedule)
        if chosen is None:          # a record without this schedule's stages
            continue
        agree += chosen == r["exhaustive"]
        u2 = r["upp"]["2"]
        regrets.append((u2[chosen] - u2[r["exhaustive"]]) / u2[r["exhaustive"]] if u2[r["exhaustive"]] > 0 else 0)
        picks.append((r, chosen))
        fw.append(forwards)
    return agree, len(picks), float(np.mean(regrets)) if regrets else float("nan"), picks, \
        float(np.mean(fw)) if fw else float("nan")


def sub_record(rec: dict, names) -> dict:
    """``rec`` as if the pool held only ``names``: every member's U_pp is its own, so the exhaustive choice of the
    sub-pool is the best of these members at stride 2, and the fast search is replayed among them."""
    keep = [n for n in rec["names"] if n in set(names)]
    out = dict(rec, names=keep,
               upp={k: {n: v[n] for n in keep} for k, v in rec["upp"].items()},
               utot={k: {n: v[n] for n in keep} for k, v in rec["utot"].items()})
    if "dice" in rec:
        out["dice"] = {n: rec["dice"][n] for n in keep}
    order = {n: i for i, n in enumerate(keep)}
    out["exhaustive"] = rank(out["upp"]["2"], out["utot"]["2"], keep, order)[0]
    return out


def summarise_epoch_gaps(records, trained, gaps) -> None:
    """Agreement of the current default schedule in sub-pools that keep only members at least G epochs apart within
    a run (the rule `pool.build_pool_from_runs(min_epoch_gap=G)` applies to a run's checkpoints)."""
    from PerfusionDAUGSLib.pool import spaced_by_epoch
    from PerfusionDAUGSLib.selection import DEFAULT_SCHEDULE, RANK_STRIDE

    entries = [{"name": m.name, "run": m.run, "epoch": m.epoch, "val_dice": m.val_dice} for m in trained.members]
    print(f"\n## Sub-pools of {trained.name} by epoch gap (current default schedule, replayed; exhaustive = best "
          f"member of the sub-pool at stride 2)")
    print("| epoch gap G | members | same member as exhaustive | mean U_pp regret | mean myocardium Dice of the "
          "choice | patch forwards/series |")
    print("|---|---|---|---|---|---|")
    for gap in gaps:
        names = [e["name"] for e in spaced_by_epoch(entries, gap)]
        subs = [sub_record(r, names) for r in records]
        agree, m, regret, picks, fw = score_schedule(subs, (RANK_STRIDE, DEFAULT_SCHEDULE))
        dice = [r["dice"][c] for r, c in picks if "dice" in r]
        dice_text = f"{np.mean(dice):.3f}" if dice else "n/a"
        print(f"| {gap} | {len(names)} | {agree}/{m} ({100 * agree / max(m, 1):.0f}%) | {100 * regret:.2f}% | "
              f"{dice_text} | {fw:.0f} |")


def summarise(records, established, vd, args) -> None:
    n = len(records)
    print()
    kind = "trained members" if args.pool else f"checkpoints x weight perturbations {PERTURBATION_LEVELS}"
    print(f"## Agreement: UNet2D '{args.agree_config}' pool of {len(records[0]['names'])} members "
          f"({kind}), {n} phantom series never trained on; "
          f"established = {established}" + (f" (validation myocardium Dice {vd[established]:.3f})" if vd else ""))
    print("Exhaustive: every member at stride 2. Fast: the staged search, replayed from the same per-stride U_pp "
          "(checked against real select_members runs below).")
    print("| search | same member as exhaustive | mean U_pp regret | mean myocardium Dice of the choice | "
          "patch forwards/series |")
    print("|---|---|---|---|---|")
    def mean_dice(pairs):       # (record, member); records without Dice (U_pp only) are left out
        vals = [r["dice"][mem] for r, mem in pairs if "dice" in r]
        return f"{np.mean(vals):.3f} ({len(vals)} series)" if vals else "n/a"
    ex_d = mean_dice((r, r["exhaustive"]) for r in records)
    print(f"| exhaustive (stride 2, all members) | {n}/{n} | 0 | {ex_d} | {records[0]['forwards_exhaustive']} |")
    from PerfusionDAUGSLib.selection import DEFAULT_SCHEDULE, RANK_STRIDE
    for label, sched in SCHEDULES.items():
        agree, m, regret, picks, fw = score_schedule(records, sched or (RANK_STRIDE, DEFAULT_SCHEDULE))
        if m:
            print(f"| fast {label} | {agree}/{m} ({100 * agree / m:.0f}%) | {100 * regret:.2f}% | "
                  f"{mean_dice(picks)} | {fw:.0f} |")
    print(f"| established | | | {mean_dice((r, established) for r in records)} | |")
    best = [(r, max(r["dice"], key=r["dice"].get)) for r in records if "dice" in r]
    print(f"| best member per series (oracle, by Dice) | | | {mean_dice(best)} | |")
    if any("real_fast" in r for r in records):
        chk = [r for r in records if "real_fast" in r]
        same = sum(r["real_fast"] == simulate_fast(r, tuple(r["real_schedule"]))[0]
                   for r in chk)
        same_b = sum(r["real_fast_bf16"] == r["real_fast"] for r in chk)
        print(f"\nreal select_members(fast=True) on {len(chk)} series (schedule then in force: "
              f"{chk[0]['real_schedule']}): same member as the replay in "
              f"{same}/{len(chk)}; fast bf16 picks the same member as fast fp32 in {same_b}/{len(chk)}; "
              f"real fast fp32 {np.mean([r['real_fast_seconds'] for r in chk]):.1f} s/series, "
              f"exhaustive {np.mean([r['seconds_exhaustive'] for r in chk]):.1f} s/series (same loaded machine)")


def recheck_real(pool, images, records, established) -> None:
    """The real fast path (current schedule), fp32 and bf16, on every logged series: its choice against the logged
    exhaustive (fp32) choice and against the replay of the same schedule from the logged U_pp."""
    from PerfusionDAUGSLib.selection import DEFAULT_SCHEDULE, RANK_STRIDE

    sched = (RANK_STRIDE, DEFAULT_SCHEDULE)
    print(f"\n## Real fast search on every logged series (schedule {sched}), against the logged exhaustive choice")
    print("| series | exhaustive | fast fp32 | fast bf16 | replay | fp32 s | bf16 s | patch forwards |")
    print("|---|---|---|---|---|---|---|---|")
    n = same32 = same16 = replay_same = 0
    regrets = []
    for r in records:
        i = r["series"]
        t = time.perf_counter()
        c32 = select_members(pool, [images[i]], fast=True, established=established)[0]
        s32 = time.perf_counter() - t
        t = time.perf_counter()
        c16 = select_members(pool, [images[i]], fast=True, bf16=True, established=established)[0]
        s16 = time.perf_counter() - t
        rep = simulate_fast(r, sched)[0]
        n += 1
        same32 += c32.chosen == r["exhaustive"]
        same16 += c16.chosen == r["exhaustive"]
        replay_same += c32.chosen == rep
        u2 = r["upp"]["2"]
        regrets.append(u2[c16.chosen] / u2[r["exhaustive"]] - 1 if u2[r["exhaustive"]] > 0 else 0.0)
        print(f"| {i} | {r['exhaustive']} | {c32.chosen} | {c16.chosen} | {rep} | {s32:.1f} | {s16:.1f} | "
              f"{c16.n_patch_forwards} |", flush=True)
    print(f"\nsame member as exhaustive: fast fp32 {same32}/{n}, fast bf16 {same16}/{n}; real fp32 = replay in "
          f"{replay_same}/{n}; mean stride-2 U_pp regret of the bf16 choice {100 * np.mean(regrets):.2f} %")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--n-series", type=int, default=20)
    ap.add_argument("--series-seed", type=int, default=3,
                    help="seed of the phantom agreement series (3: the series of the earlier logs; another seed gives "
                         "series no schedule was designed on)")
    ap.add_argument("--n-real-checks", type=int, default=3)
    ap.add_argument("--agree-config", default="tiny")
    ap.add_argument("--timing-config", default="default")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cache", default="/tmp/daugs_bench_cache")
    ap.add_argument("--log", default=None, help="JSON lines of per-series records (appended; reused on rerun)")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--summary-only", action="store_true", help="summarise the agreement log, compute nothing")
    ap.add_argument("--recheck-real", action="store_true",
                    help="run the real select_members(fast=True), fp32 and bf16, with the current schedule on every "
                         "logged series and compare its choice with the logged exhaustive one (the log is kept)")
    ap.add_argument("--recheck-from", type=int, default=0, help="with --recheck-real: only series from this index")
    ap.add_argument("--baseline-pool", help="with --pool: a second trained pool timed in the same process (bf16, "
                                            "default schedule) as the baseline of the timing ratio")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="with --pool: where the pool runs (cuda: record the exhaustive agreement logs on a GPU; the "
                         "timing rows are meant for the CPU)")
    ap.add_argument("--member-gaps", default="",
                    help="with --pool: comma-separated epoch gaps G; also replay the sub-pools that keep only members "
                         "at least G epochs apart within a run (e.g. 1,2,3)")
    ap.add_argument("--pool", help="a trained pool folder (e.g. Resources/Models/daugs_pool) instead of the "
                                   "checkpoint x perturbation pools: its members, its established member")
    args = ap.parse_args(argv)
    if args.quick:
        args.members, args.n_series, args.steps, args.n_real_checks = 10, 3, 60, 1
    gaps = [int(g) for g in args.member_gaps.split(",") if g.strip()]
    if gaps and not args.pool:
        ap.error("--member-gaps needs --pool (members with their runs and epochs)")
    import json

    cache = Path(args.cache)
    trained = None
    if args.pool:
        from PerfusionDAUGSLib.pool import load_pool
        trained = load_pool(args.pool, device=args.device)
        args.agree_config = args.timing_config = f"pool {trained.name}"
        args.members = len(trained)
    tag = f"pool_{trained.name}" if trained is not None else args.agree_config
    log = Path(args.log) if args.log else cache / f"agreement_{tag}_{args.members}.jsonl"
    if args.summary_only:
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        records = [r for r in records if "32" in r["upp"]]      # records made before the stride-32 stage
        print(f"machine: {machine_description()}")
        summarise(records, records[0]["established"], None, args)
        if gaps:
            summarise_epoch_gaps(records, trained, gaps)
        return 0
    checkpoints = sorted({max(1, args.steps * k // 5) for k in (1, 2, 3, 4, 5)})
    print(f"machine: {machine_description()}", flush=True)
    print(f"load average at start: {load()} (the 2 cores are shared with other jobs: wall times include waiting)")

    if trained is None:           # training slices for the checkpoint x perturbation pools
        t0 = time.perf_counter()
        train = phantom_set(24 if args.quick else 64, seed=1)
        val_x, val_y = phantom_set(4 if args.quick else 8, seed=2)
        print(f"phantom slices generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    if not args.skip_agreement:
        if trained is not None:
            pool = [(m.name, m.network.eval()) for m in trained.members]
            vd, established = None, trained.established
        else:
            saved = train_checkpoints(args.agree_config, args.steps, checkpoints, train, seed=11, cache=cache)
            pool = make_pool(args.agree_config, saved, args.members, seed=5)
            vd = validation_dice(pool, val_x, val_y)
            established = max(vd, key=vd.get)
        test_x, test_y = phantom_set(args.n_series, seed=args.series_seed)
        records = []
        if log.is_file():
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            records = [r for r in records if r["names"] == [n for n, _ in pool] and "32" in r["upp"]
                       and r.get("series_seed", 3) == args.series_seed][: args.n_series]   # else: redo
        for i in range(len(records), args.n_series):
            rec = record_series(pool, test_x[i], test_y[i], established)
            rec["series"], rec["series_seed"] = i, args.series_seed
            if i < args.n_real_checks:
                t = time.perf_counter()
                rec["real_fast"] = select_members(pool, [test_x[i]], fast=True, established=established)[0].chosen
                rec["real_fast_seconds"] = time.perf_counter() - t
                from PerfusionDAUGSLib.selection import DEFAULT_SCHEDULE, RANK_STRIDE
                rec["real_schedule"] = (RANK_STRIDE, DEFAULT_SCHEDULE)
                rec["real_fast_bf16"] = select_members(pool, [test_x[i]], fast=True, bf16=True,
                                                       established=established)[0].chosen
            records.append(rec)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
            print(f"  series {i}: exhaustive {rec['exhaustive']} ({rec['seconds_exhaustive']:.0f} s) "
                  f"load {load()}", file=sys.stderr, flush=True)
        summarise(records, established, vd, args)
        if gaps:
            summarise_epoch_gaps(records, trained, gaps)
        if args.recheck_real:
            recheck_real(pool, test_x, [r for r in records if r["series"] >= args.recheck_from], established)

    if not args.skip_timing:
        if trained is not None:
            pool_t = [(m.name, m.network.eval()) for m in trained.members]
        else:
            saved_t = train_checkpoints(args.timing_config, args.steps, checkpoints, train, seed=21, cache=cache)
            pool_t = make_pool(args.timing_config, saved_t, args.members, seed=7)
        study_x, _ = phantom_set(3, seed=4)
        print()
        print(f"## Timing: 3-slice study, UNet2D '{args.timing_config}' pool of {len(pool_t)} members, U-map stride 2, "
              f"segmentation stride 16 (load average now {load()})")
        print("CPU s = process CPU time of both threads; under contention it also counts threads spinning while they "
              "wait, so CPU s / 2 over-states what an idle 2-core machine would take.")
        print("| search | precision | wall s/study | CPU s/study | CPU s / 2 | patch forwards/study | "
              "chosen (basal, mid, apical) |")
        print("|---|---|---|---|---|---|---|")
        previous = SCHEDULES["default until session 6: 32, ((16,12,150%),(8,6,100%),(4,4,25%),(2,2,10%))"][1]
        # the previous default schedule, bf16, is the baseline in the same process (the 2 cores' speed drifts)
        # a racing last stage in place of the default's last two (selection.RACE_MARGIN; docs/daugs.md, ninth session)
        racing = ((16, 16, 2.5), (8, 6, 1.0, "phased"), (2, 3, 0.1, "race"))
        adapt_label = "fast, BatchNorm adapted to each slice (adapt_bn)"
        runs = [("fast", False, None), ("fast", True, None), (adapt_label, True, None),
                ("fast, default until session 6 (baseline)", True, previous),
                ("fast, racing last stage (2, 3, +10 %, race)", True, racing)]
        pools = {label: pool_t for label, _, _ in runs}
        if args.baseline_pool:
            from PerfusionDAUGSLib.pool import load_pool
            base = load_pool(args.baseline_pool, device=args.device)   # both pools timed on one device
            widths = base.members[0].network.config["features"]
            label = f"fast, baseline pool {base.name} (UNet2D {widths})"
            pools[label] = [(m.name, m.network.eval()) for m in base.members]
            runs.insert(2, (label, True, None))
        walls = {}
        for label, bf16, schedule in runs:
            kw = {} if schedule is None else {"schedule": schedule}
            t, c = time.perf_counter(), time.process_time()
            r = select_members(pools[label], list(study_x), fast=True, bf16=bf16, adapt_bn=label == adapt_label, **kw)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            walls[(label, bf16)] = wall
            nf = sum(x.n_patch_forwards for x in r)
            print(f"| {label} | {'bf16' if bf16 else 'fp32'} | {wall:.1f} | {cpu:.1f} | {cpu / 2:.1f} | {nf} | "
                  f"{', '.join(x.chosen for x in r)} |", flush=True)
        prev_label, race_label = runs[-2][0], runs[-1][0]
        print(f"\nbf16 fast, current default / previous default (same process): "
              f"{walls[('fast', True)] / walls[(prev_label, True)]:.2f}; racing last stage / current default: "
              f"{walls[(race_label, True)] / walls[('fast', True)]:.2f}")
        print(f"bf16 fast, BatchNorm adapted / not adapted (same process): "
              f"{walls[(adapt_label, True)] / walls[('fast', True)]:.2f}")
        if args.baseline_pool:
            print(f"bf16 fast, this pool / baseline pool {args.baseline_pool} (same process, same study): "
                  f"{walls[('fast', True)] / walls[(runs[2][0], True)]:.2f}")
        n_exhaustive = 3 * len(pool_t) * 1089
        print()
        print(f"## Per-patch forward cost (64x64, 30 frames, batch 64, best of 3; load average {load()})")
        print("| config | parameters | fp32 wall ms/patch | fp32 CPU ms/patch | bf16 wall ms/patch | bf16 CPU ms/patch | "
              f"exhaustive study ({n_exhaustive} patch forwards), fp32 CPU s / 2 | fast study (7,000-12,000), bf16 CPU s / 2 |")
        print("|---|---|---|---|---|---|---|---|")
        for cfg in ("tiny", "lite", "default", "daugs2024"):
            n_par = sum(p.numel() for p in build_unet(cfg).parameters())
            (a, ac), (b, bc) = per_patch_ms(cfg, False), per_patch_ms(cfg, True)
            print(f"| {cfg} | {n_par / 1e6:.2f} M | {a:.2f} | {ac:.2f} | {b:.2f} | {bc:.2f} | "
                  f"{n_exhaustive * ac / 2000:.0f} | {7000 * bc / 2000:.0f}-{12000 * bc / 2000:.0f} |", flush=True)
    print(f"\nload average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
