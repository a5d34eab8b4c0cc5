"""benchmarks/rank_stage_study.py: its replay of the current ranking stage is the benchmark's own replay of the default
schedule (same choice, same patch forwards), and its window sets are windows of the stride-2 U-map grid."""
import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _record(rng, n=50):
    names = [f"run{i % 5:02d}_ep{i:03d}" for i in range(n)]
    rec = {"names": names, "upp": {}, "utot": {}, "established": names[7]}
    base = rng.uniform(0.01, 0.05, n)
    for key, noise in (("32", 0.6), ("16", 0.3), ("8p", 0.1), ("4p", 0.03), ("2", 0.0)):
        u = base * np.exp(rng.normal(0, noise, n))
        rec["upp"][key] = dict(zip(names, u.tolist()))
        rec["utot"][key] = dict(zip(names, (u * 300).tolist()))
    rec["upp"]["s1_32"], rec["utot"]["s1_32"] = dict(rec["upp"]["32"]), dict(rec["utot"]["32"])
    u2 = rec["upp"]["2"]
    rec["exhaustive"] = min(names, key=lambda m: u2[m])
    return rec


def test_replay_of_the_current_ranking_stage_matches_the_benchmark():
    study, bench = _load("rank_stage_study"), _load("bench_daugs")
    from PerfusionDAUGSLib.selection import DEFAULT_SCHEDULE, RANK_STRIDE

    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(40):
        rec = _record(rng)
        assert study.replay(rec, "32") == bench.simulate_fast(rec, (RANK_STRIDE, DEFAULT_SCHEDULE))
        misses += study.replay(rec, "32")[0] != rec["exhaustive"]
    assert misses > 0          # the noisy ranking stage loses some winners: the comparison is not vacuous


def test_window_sets_lie_on_the_stride2_grid_inside_the_image():
    study = _load("rank_stage_study")
    assert len(study.SETS["32"]) == 9 and len(study.SETS["32p"]) == 9
    for key, offsets in study.SETS.items():
        assert offsets.min() >= 0 and offsets.max() <= 128 - 64, key
        assert (offsets % 2 == 0).all(), key
    # the phase-cycled set starts its windows at several phases (mod 8) on both axes
    assert len({tuple(o) for o in (study.SETS["32p"] % 8).tolist()}) >= 6


def test_bad_arguments_exit_2(tmp_path, capsys):
    study = _load("rank_stage_study")
    log = tmp_path / "log.jsonl"
    log.write_text("")
    assert study.main([str(log), "--sets", "32,nope", "--replay-only"]) == 2
    assert study.main([str(tmp_path / "missing.jsonl"), "--replay-only"]) == 2
    assert study.main([str(log)]) == 2                     # scoring needs --pool and --series-seed
    assert capsys.readouterr().err.count("error:") == 3
