"""The models shipped in Resources/Models: within the size budget, every weight file verified by sha256 and loaded
without pickle, every model card complete (architecture, input, training record, measured results)."""
import json
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "Resources" / "Models"
BUDGET_BYTES = 60_000_000          # 60 MB for every shipped weight file and card together
POOL = MODELS / "daugs_pool"


def test_shipped_weights_stay_within_the_size_budget():
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total < BUDGET_BYTES, f"Resources/Models holds {total / 1e6:.1f} MB (budget 60 MB)"


@pytest.mark.skipif(not (POOL / "pool.json").is_file(), reason="no DAUGS pool shipped")
def test_shipped_pool_loads_verified_and_carries_its_card():
    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionDAUGSLib.uncertainty_threshold import pool_threshold

    pool = load_pool(POOL, device="cpu")                  # sha256 of every member against index and card
    index = json.loads((POOL / "pool.json").read_text())
    assert len(pool) >= 20 and pool.established in pool.names
    assert all(m.val_dice is not None and m.val_dice >= index["dice_threshold"] for m in pool.members)
    spec = pool.input_spec()
    assert (spec["n_frames"], spec["size"], spec["scale"]) == (30, 128, 2.0)
    training = index["training"]
    assert training["data"]["phantom_presets"] and "real_data" in training["data"] and training["data"]["licence"]
    assert index["min_epoch_gap"] >= 1                    # how the members were spaced (the fast search cares)
    assert len(training["seconds_per_run"]) == len(training["seeds"]) and training["machine"]
    evaluation = index["evaluation"]
    assert {"phantom_test", "real_data"} <= set(evaluation)
    assert "all" in evaluation["phantom_test"]["summary"] and "daugs_dev" in evaluation["real_data"]["summary"]
    assert pool_threshold(pool) is not None and index["qc"]["calibration_set"]


@pytest.mark.skipif(not list(MODELS.glob("*.json")), reason="no single-model card shipped (no ResUNet yet)")
def test_every_shipped_model_card_loads():
    from PerfusionSegLib.networks.registry import load_model

    for card in sorted(MODELS.glob("*.json")):
        model = load_model(card, device="cpu")                  # sha256 checked, weights-only load
        assert model.card["input"] and model.card["training"] and model.card["metrics"], card.name
        training = model.card["training"]
        assert training["data"]["phantom_presets"] and "real_data" in training["data"] and training["machine"]
        assert training["data"]["licence"], card.name
        assert {"phantom_test", "real_data"} <= set(model.card.get("evaluation", {})), card.name


@pytest.mark.skipif(not (MODELS / "resunet.json").is_file(), reason="no ResUNet shipped")
def test_shipped_resunet_is_xue_configuration_and_what_the_resunet_method_takes():
    from PerfusionSegLib.analysis import AnalysisOptions, _find_card
    from PerfusionSegLib.networks.registry import load_model

    model = load_model(MODELS / "resunet.json", device="cpu")
    assert model.architecture == "resunet" and model.in_channels == 48
    assert (model.input_spec["size"], model.input_spec["spacing_mm"]) == (176, 1.0)
    card, _ = _find_card(AnalysisOptions(method="resunet", models_dirs=(str(MODELS),)))
    assert card.endswith("resunet.json")


@pytest.mark.skipif(not (POOL / "pool.json").is_file(), reason="no DAUGS pool shipped")
def test_pool_lv_detector_settles_a_study_the_timing_rule_splits():
    """Phantom study 100009 (`randomised`, rest): on its own the timing rule puts the apical slice's LV on another
    structure, 93 mm from where the other two slices agree, and more confident than one of them, so the study's
    re-location leaves it. The pool's detector agrees with the two and moves the apical slice into its LV."""
    import numpy as np
    from PerfusionDAUGSLib.lv_detector import PoolLVDetector
    from PerfusionSegLib.localise import locate_lv_study
    from PerfusionSegLib.phantom import generate_study

    ps = generate_study(preset="randomised", seed=100009, condition="rest", n_slices=3)

    def inside(labels, yx):
        return labels[int(round(yx[0])), int(round(yx[1]))] == 1

    alone = locate_lv_study(ps.study)
    assert [inside(t.labels, loc.center_yx) for t, loc in zip(ps.truth, alone)] == [True, True, False]
    detector = PoolLVDetector(POOL)
    assert detector.member == json.loads((POOL / "pool.json").read_text())["established"]
    together = locate_lv_study(ps.study, detector=detector)
    assert all(inside(t.labels, loc.center_yx) for t, loc in zip(ps.truth, together))
    assert "LV detector" in together[2].method
    assert [loc.center_yx for loc in together[:2]] == [loc.center_yx for loc in alone[:2]]
    (y, x), score = detector(ps.study.slices[2])
    assert inside(ps.truth[2].labels, (y, x)) and 0.0 < score <= 1.0 and np.isfinite(score)
