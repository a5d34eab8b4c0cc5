"""Calibrating a DAUGS pool's high_uncertainty threshold: the library (`uncertainty_threshold.calibrate_pool` and its
calibration data), `perfusion calibrate-qc`, and the calibration `perfusion train` runs on the pool it builds."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from PerfusionDAUGSLib.uncertainty_threshold import (CalibrationStudy, calibrate_pool, calibration_studies,
                                                     labelled_calibration_studies, phantom_calibration_studies)
from PerfusionSegLib.errors import InvalidParameterError


def _ring(shape=(48, 48), radius=12.0, width=4.0, shift=0) -> np.ndarray:
    """Labels with a myocardial ring (2) around a blood pool (1), optionally shifted sideways."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2 - shift)
    return np.where(r < radius - width, 1, np.where(r < radius, 2, 0)).astype(np.uint8)


def _fake_segmenter(outcomes: dict):
    """A stand-in for run_daugs: per slice name, (U_pp, labels) planted by the test."""
    calls = []

    def segment(slices, pool, *, fast, bf16, device):
        calls.append(dict(n=len(slices), fast=fast, bf16=bf16, device=device))
        return [SimpleNamespace(upp_chosen=outcomes[s][0], labels=outcomes[s][1]) for s in slices]
    return segment, calls


def test_calibrate_pool_places_the_threshold_on_the_well_segmented_slices():
    rng = np.random.default_rng(1)
    truth = _ring()
    good_u, poor_u = rng.uniform(0.01, 0.02, 40), rng.uniform(0.02, 0.06, 8)
    outcomes, studies = {}, []
    for k, u in enumerate(good_u):          # the truth itself: myocardium Dice 1
        outcomes[f"g{k}"] = (u, truth)
    for k, u in enumerate(poor_u):          # the ring shifted by its own width: myocardium Dice well below 0.8
        outcomes[f"p{k}"] = (u, _ring(shift=6))
    names = sorted(outcomes)
    for i in range(0, len(names), 3):       # studies of up to 3 slices, as phantom studies are segmented
        studies.append(CalibrationStudy(f"s{i}", names[i:i + 3], [truth] * len(names[i:i + 3])))
    segment, calls = _fake_segmenter(outcomes)
    record = calibrate_pool("a pool", iter(studies), segment=segment, bf16=True)
    assert record["high_uncertainty_upp"] == pytest.approx(np.quantile(good_u, 0.95))
    assert record["good_slices"] == 40 and record["poor_slices"] == 8 and record["slices"] == 48
    assert record["poor_flagged"] == int((poor_u > record["high_uncertainty_upp"]).sum()) > 0
    assert record["search"] == "fast" and record["bf16"] is True
    assert len(record["per_slice"]) == 48 and record["per_slice"][0][0] == "s0#0"
    assert {row[2] for row in record["per_slice"]} == {1.0, float(np.round(_dice_shifted(), 4))}
    assert all(c["fast"] and c["bf16"] and c["device"] == "cpu" for c in calls) and sum(c["n"] for c in calls) == 48


def _dice_shifted() -> float:
    from PerfusionSegLib.metrics import dice
    return dice(_ring(shift=6) == 2, _ring() == 2)


def test_calibrate_pool_refuses_when_too_few_slices_are_segmented_well():
    truth, poor = _ring(), _ring(shift=6)
    outcomes = {f"s{k}": (0.01, truth if k < 5 else poor) for k in range(20)}
    segment, _ = _fake_segmenter(outcomes)
    studies = [CalibrationStudy(n, [n], [truth]) for n in sorted(outcomes)]
    with pytest.raises(InvalidParameterError, match="only 5 calibration slices"):
        calibrate_pool(None, studies, segment=segment)
    with pytest.raises(InvalidParameterError, match="no calibration slices"):
        calibrate_pool(None, [], segment=segment)


def test_calibration_data_specs_fail_early_and_leave_coarse_cases_out(tmp_path):
    from test_labelling import synthetic_slice

    from PerfusionSegLib.labelling import export_labelled_case, read_labelled_dataset

    with pytest.raises(InvalidParameterError, match="unknown phantom preset"):
        phantom_calibration_studies(["no-such-vendor"])              # raised on the call, not when consumed
    with pytest.raises(InvalidParameterError, match="at least 1"):
        phantom_calibration_studies(None, 0)
    with pytest.raises(InvalidParameterError, match="not 'phantom"):
        calibration_studies([str(tmp_path / "missing")])
    series, labels = synthetic_slice(seed=0)
    export_labelled_case(series, labels, tmp_path / "cases", "pA_mid")
    export_labelled_case(series, labels, tmp_path / "cases", "pB_mid", coarse=True)
    studies, coarse = labelled_calibration_studies(read_labelled_dataset(tmp_path / "cases"))
    assert coarse == 1 and [s.name for s in studies] == ["pA_mid"]
    assert studies[0].slices[0].shape == series.shape and np.array_equal(studies[0].references[0], labels)
    studies, described = calibration_studies(["phantom:siemens-flash-3t", str(tmp_path / "cases")],
                                             studies_per_preset=2, seed_base=123)
    assert "seeds 123-124" in described and "1 exact labelled cases" in described and "1 coarse" in described
    first = next(iter(studies))
    assert first.name == "siemens-flash-3t/123" and len(first.slices) == len(first.references) == 3
    assert first.references[0].shape == first.slices[0].shape == first.slices[0].data.shape[1:]


def _tiny_pool(tmp_path, n_members=2):
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.networks import build_network

    members = []
    for k in range(n_members):
        torch.manual_seed(k)
        net = build_network("unet2d", config="tiny")
        with torch.no_grad():                    # some myocardium everywhere, so that U_pp is finite
            [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].bias[2] += 2.0
        members.append({"name": f"m{k}", "network": net, "val_dice": 0.9 - 0.01 * k})
    return save_pool(members, tmp_path / "pool", card={"input": {"n_frames": 30, "size": 128, "scale": 2.0}})


def test_calibrate_qc_command_stores_the_threshold_and_refuses_bad_input(tmp_path, capsys, monkeypatch):
    import PerfusionDAUGSLib.uncertainty_threshold as ut
    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionSegLib.cli import main

    folder = _tiny_pool(tmp_path)
    index = folder / "pool.json"
    before = index.read_bytes()
    common = ["calibrate-qc", "--pool", str(folder), "--data", "phantom:siemens-flash-3t", "--studies", "4",
              "--quiet", "--good-dice", "0.0"]           # an untrained pool segments nothing well: count every slice
    assert main(["calibrate-qc", "--pool", str(folder), "--data", str(tmp_path / "nope")]) == 2
    assert main(common + ["--false-alarm", "0.7"]) == 2                  # a false-alarm rate of 70 %: refused
    assert main(["calibrate-qc", "--pool", str(tmp_path / "no-pool")]) == 2
    assert capsys.readouterr().err.count("error") == 3 and index.read_bytes() == before
    # the real thing: phantom studies through the pool's DAUGS search, stored in pool.json
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "12 slices" in out and "stored in" in out
    stored = json.loads(index.read_text())["qc"]
    assert stored["slices"] == 12 and stored["search"] == "fast" and len(stored["per_slice"]) == 12
    assert "presets ['siemens-flash-3t']" in stored["calibration_set"]
    upps = [row[1] for row in stored["per_slice"]]
    assert stored["high_uncertainty_upp"] == pytest.approx(np.quantile(upps, 0.95))
    assert ut.pool_threshold(load_pool(folder, device="cpu")) == pytest.approx(stored["high_uncertainty_upp"])
    # a dry run prints and stores nothing; a failed calibration leaves the stored one as it was
    stored_bytes = index.read_bytes()
    monkeypatch.setattr(ut, "calibrate_pool", lambda pool, studies, **kw: dict(
        ut.calibrate_threshold(np.linspace(1, 2, 10), np.ones(10)), search="fast", bf16=False, per_slice=[]))
    assert main(common + ["--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and index.read_bytes() == stored_bytes

    def too_few(pool, studies, **kw):
        raise InvalidParameterError("only 2 calibration slices with myocardium Dice >= 0.8; at least 10 are needed")
    monkeypatch.setattr(ut, "calibrate_pool", too_few)
    assert main(common) == 2 and "at least 10" in capsys.readouterr().err and index.read_bytes() == stored_bytes


def test_train_calibrates_the_pool_it_builds(tmp_path, monkeypatch):
    import PerfusionDAUGSLib.uncertainty_threshold as ut
    from PerfusionSegLib.training.pipeline import train_family
    from PerfusionSegLib.training.recipes import DAUGS2024

    recipe = DAUGS2024.replace(config="tiny", epochs=1, steps_per_epoch=1, batch_size=4, bank_size=2, val_slices=1)
    seen = {}

    def fake_calibrate(pool, studies, **kw):   # the real segmentation is tested above; here: what train hands over
        seen["names"] = [s.name for s in studies]
        seen["members"] = len(pool)
        return dict(ut.calibrate_threshold(np.linspace(0.01, 0.02, 10), np.full(10, 0.9)), search="fast", bf16=False,
                    per_slice=[])
    monkeypatch.setattr(ut, "calibrate_pool", fake_calibrate)
    monkeypatch.setattr(ut, "phantom_calibration_studies",
                        lambda presets, n: iter([CalibrationStudy(f"phantom{k}", [], []) for k in range(n)]))
    out = train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path / "a", runs=1, dice_threshold=0.0,
                       min_epoch_gap=1, progress=False, log=lambda m: None, qc_calibration_studies=2)
    assert seen == {"names": ["phantom0", "phantom1"], "members": 1}
    qc = json.loads((tmp_path / "a" / "pool" / "pool.json").read_text())["qc"]
    assert qc["high_uncertainty_upp"] == pytest.approx(np.quantile(np.linspace(0.01, 0.02, 10), 0.95))
    assert "every preset" in qc["calibration_set"] and "high_uncertainty threshold U_pp > 0.0195" in out["summary"]
    assert "10 slices: 10 with myocardium Dice >= 0.8 (1 flagged)" in out["summary"]

    def failing(pool, studies, **kw):
        raise InvalidParameterError("only 0 calibration slices with myocardium Dice >= 0.8")
    monkeypatch.setattr(ut, "calibrate_pool", failing)
    lines = []
    out = train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path / "b", runs=1, dice_threshold=0.0,
                       min_epoch_gap=1, progress=False, log=lines.append, qc_calibration_studies=1)
    assert "qc" not in json.loads((tmp_path / "b" / "pool" / "pool.json").read_text())
    assert "no high_uncertainty threshold" in out["summary"] and any(m.startswith("warning") for m in lines)


def test_train_hands_the_held_out_patients_exact_cases_to_the_calibration(tmp_path, monkeypatch):
    from test_labelling import synthetic_slice

    import PerfusionDAUGSLib.uncertainty_threshold as ut
    from PerfusionSegLib.labelling import export_labelled_case
    from PerfusionSegLib.training.data import FolderSource
    from PerfusionSegLib.training.pipeline import calibrate_built_pool
    from PerfusionSegLib.training.recipes import DAUGS2024

    cases = tmp_path / "cases"
    for i, case_id in enumerate(("pA_base", "pA_mid", "pB_mid", "pC_mid", "pD_apex")):
        series, labels = synthetic_slice(seed=i)
        export_labelled_case(series, labels, cases, case_id, coarse=case_id == "pC_mid")
    recipe = DAUGS2024.replace(config="tiny")
    # a split seed whose held-out patient has an exact case (pC's only case is coarse)
    seed = next(s for s in range(50) if {c.patient for c in FolderSource([cases], recipe, seed=s).val} - {"pC"})
    held_out = {c.patient for c in FolderSource([cases], recipe, seed=seed).val}
    seen = []
    monkeypatch.setattr(ut, "calibrate_pool", lambda pool, studies, **kw: seen.extend(s.name for s in studies) or
                        (_ for _ in ()).throw(InvalidParameterError("stop here")))
    monkeypatch.setattr(ut, "phantom_calibration_studies", lambda presets, n: iter([]))
    monkeypatch.setattr("PerfusionDAUGSLib.pool.load_pool", lambda path, device: [])
    note = calibrate_built_pool(tmp_path, [cases], seed, 1, "cpu", lambda m: None)
    assert "stop here" in note
    expected = sorted(n for n in ("pA_base", "pA_mid", "pB_mid", "pD_apex") if n.split("_")[0] in held_out)
    assert sorted(seen) == expected and expected
