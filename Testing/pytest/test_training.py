"""Training: published recipe defaults, augmentation invariants, patient split, a tiny resumable run, pool export."""
import json

import numpy as np
import pytest
import torch

from PerfusionSegLib.errors import InvalidParameterError
from PerfusionSegLib.training.augment import AugmentConfig, augment_daugs, shift_crop, warp
from PerfusionSegLib.training.data import parse_data_spec, split_by_patient
from PerfusionSegLib.training.recipes import DAUGS2024, XUE2020, recipe_for


def test_recipes_are_the_published_ones():
    assert (XUE2020.lr, XUE2020.lr_halve_every, XUE2020.epochs, XUE2020.loss) == (1e-3, 10, 60, "ce+jaccard")
    assert (XUE2020.shift_px, XUE2020.shift_frames, XUE2020.n_frames, XUE2020.size) == (24, 6, 48, 176)
    assert (DAUGS2024.lr, DAUGS2024.lr_halve_every, DAUGS2024.batch_size, DAUGS2024.epochs) == (5e-4, 2, 128, 15)
    assert (DAUGS2024.early_stop_patience, DAUGS2024.patch, DAUGS2024.patch_stride, DAUGS2024.loss) == (5, 64, 32, "ce")
    assert DAUGS2024.input_spec()["scale"] == 2.0 and XUE2020.input_spec()["dt"] == 0.5
    with pytest.raises(InvalidParameterError):
        recipe_for("vnet")
    with pytest.raises(InvalidParameterError):
        DAUGS2024.replace(learning_rate=1.0)


def test_identity_warp_keeps_images_and_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    y = torch.randint(0, 4, (2, 16, 16))
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).repeat(2, 1, 1)
    xw, yw = warp(x, y, theta)
    torch.testing.assert_close(xw, x, atol=1e-5, rtol=0)
    assert torch.equal(yw, y)
    del g


def test_daugs_augmentation_keeps_label_codes_and_range():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 5, 32, 32)
    y = torch.zeros(6, 32, 32, dtype=torch.long)
    y[:, 10:20, 10:20] = 2
    y[:, 13:17, 13:17] = 1
    xa, ya = augment_daugs(x, y, g, AugmentConfig())
    assert xa.shape == x.shape and ya.shape == y.shape
    assert set(torch.unique(ya).tolist()) <= {0, 1, 2}
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1.5 and torch.isfinite(xa).all()
    assert not torch.allclose(xa, x)  # something changed


def test_shift_crop_takes_windows_inside_the_field():
    g = torch.Generator().manual_seed(2)
    x = torch.arange(2 * 10 * 12 * 12, dtype=torch.float32).reshape(2, 10, 12, 12)
    y = torch.arange(2 * 12 * 12).reshape(2, 12, 12)
    xc, yc = shift_crop(x, y, size=8, n_frames=6, g=g)
    assert xc.shape == (2, 6, 8, 8) and yc.shape == (2, 8, 8)
    for i in range(2):  # the label crop is the same window as the image crop
        oy, ox = divmod(int(yc[i, 0, 0]) - i * 144, 12)
        assert torch.equal(yc[i], y[i, oy:oy + 8, ox:ox + 8])
        t0 = int((xc[i, 0, 0, 0] - x[i, 0, oy, ox]) // 144)
        assert torch.equal(xc[i], x[i, t0:t0 + 6, oy:oy + 8, ox:ox + 8])


def test_patient_split_is_stable_and_disjoint():
    patients = [f"p{i}" for i in range(10) for _ in range(3)]
    val = split_by_patient(patients, 0.2, seed=0)
    assert len(val) == 2 and val == split_by_patient(patients, 0.2, seed=0)
    assert split_by_patient(["only"], 0.5, 0) == set()


def test_data_spec(tmp_path):
    spec = parse_data_spec(["phantom:randomised,ge-gre-3t", str(tmp_path)])
    assert spec["presets"] == ["randomised", "ge-gre-3t"] and spec["folders"] == [tmp_path]
    with pytest.raises(InvalidParameterError, match="unknown phantom preset"):
        parse_data_spec(["phantom:philips"])
    with pytest.raises(InvalidParameterError):
        parse_data_spec([str(tmp_path / "missing")])


def test_tiny_daugs_run_resumes_and_exports_a_pool(tmp_path):
    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionSegLib.training.pipeline import train_family

    recipe = DAUGS2024.replace(config="tiny", epochs=1, steps_per_epoch=1, batch_size=8, bank_size=2, val_slices=1)
    out = train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path, runs=2, dice_threshold=0.0, progress=False,
                       log=lambda m: None)
    assert out["n_members"] == 2
    history = json.loads((tmp_path / "runs" / "run00" / "history.json").read_text())
    assert len(history) == 1 and "2" in history[0]["val_dice"]
    # resuming with more epochs continues from epoch 1 instead of starting again
    out = train_family(recipe.replace(epochs=2), ["phantom:siemens-flash-3t"], tmp_path, runs=1, dice_threshold=0.0,
                       min_epoch_gap=1, progress=False, log=lambda m: None)
    history = json.loads((tmp_path / "runs" / "run00" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    pool = load_pool(tmp_path / "pool", device="cpu")
    assert len(pool) == 2 and pool.established in pool.names
    training = json.loads((tmp_path / "pool" / "pool.json").read_text())["training"]   # the pool's model card
    assert training["seeds"] == [0] and training["data"]["phantom_presets"] == ["siemens-flash-3t"]
    assert training["validation"] == "1 slices: phantom presets ['siemens-flash-3t'] from a separate seed stream"
    assert "no third-party images" in training["data"]["licence"]
    assert pool.input_spec()["n_frames"] == 30
    # by default members of one run lie at least 2 epochs apart: of epochs 1 and 2 only the better one stays
    out = train_family(recipe.replace(epochs=2), ["phantom:siemens-flash-3t"], tmp_path, runs=1, dice_threshold=0.0,
                       progress=False, log=lambda m: None)
    assert out["n_members"] == 1
    assert json.loads((tmp_path / "pool" / "pool.json").read_text())["min_epoch_gap"] == 2


def test_the_card_says_what_the_validation_slices_are():
    from PerfusionSegLib.training.pipeline import _licence_text, _validation_text

    phantom = {"presets": ["randomised", "ge-gre-3t"], "folders": [], "val_presets": ["ge-gre-3t", "randomised"],
               "held_out_patients": 0}
    assert _validation_text(phantom) == "phantom presets ['ge-gre-3t', 'randomised'] from a separate seed stream"
    both = dict(phantom, folders=["/data/cases"], held_out_patients=2)
    assert _validation_text(both).endswith(", plus 2 held-out patients of the labelled folders")
    alone = {"presets": [], "folders": ["/data/cases"], "val_presets": ["siemens-flash-3t"], "held_out_patients": 0}
    assert "siemens-flash-3t" in _validation_text(alone) and "no labelled patient held out" in _validation_text(alone)
    assert "phantom" not in _licence_text(dict(alone, val_presets=[], held_out_patients=1))
    assert "no third-party" in _licence_text(phantom)


def test_parallel_runs_train_the_same_runs_as_the_sequential_loop(tmp_path):
    """--parallel-runs: each run in its own process sees the seed and data stream it sees in the sequential loop."""
    from PerfusionSegLib.training.pipeline import train_family

    recipe = DAUGS2024.replace(config="tiny", epochs=2, steps_per_epoch=2, batch_size=8, bank_size=2, val_slices=1)
    logs = []
    kw = dict(runs=2, dice_threshold=0.0, min_epoch_gap=1, progress=False)
    sequential = train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path / "seq", log=lambda m: None, **kw)
    parallel = train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path / "par", parallel_runs=2,
                            log=logs.append, **kw)
    assert parallel["n_members"] == sequential["n_members"] == 4
    assert any("2 at a time" in m for m in logs)
    cards = {d: json.loads((tmp_path / d / "pool" / "pool.json").read_text())["training"] for d in ("seq", "par")}
    assert "2 runs at a time" in cards["par"]["machine"] and "at a time" not in cards["seq"]["machine"]
    assert cards["par"]["validation"] == cards["seq"]["validation"]
    for run in ("run00", "run01"):
        seq, par = (json.loads((tmp_path / d / "runs" / run / "history.json").read_text()) for d in ("seq", "par"))
        assert [h["epoch"] for h in par] == [1, 2]
        assert [h["loss"] for h in par] == pytest.approx([h["loss"] for h in seq], rel=1e-4)
    runs_differ = json.loads((tmp_path / "par" / "runs" / "run00" / "history.json").read_text())[0]["loss"] != \
        json.loads((tmp_path / "par" / "runs" / "run01" / "history.json").read_text())[0]["loss"]
    assert runs_differ  # two initialisations, not one run twice
    with pytest.raises(InvalidParameterError, match="parallel-runs"):
        train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path / "bad", parallel_runs=0, log=lambda m: None,
                     **kw)


def _edit_history(run_dir, edit) -> None:
    """Rewrite the history saved in a run's state.pt (``edit`` changes the list of epoch entries in place)."""
    from PerfusionSegLib.training.trainer import _save_tensor_dict

    state = torch.load(run_dir / "state.pt", weights_only=True)
    history = json.loads(state["history"])
    edit(history)
    _save_tensor_dict(dict(state, history=json.dumps(history)), run_dir / "state.pt")


class _CountingSource:
    """A training source that records every draw (to show that no bank is generated)."""

    def __init__(self, source):
        self.source, self.draws = source, []

    def draw(self, rng):
        self.draws.append(1)
        return self.source.draw(rng)


def test_time_budget_counts_earlier_invocations_of_a_run(tmp_path):
    """--max-minutes is per run: an interrupted pool run, started again, does not train run00 for a second budget."""
    from PerfusionSegLib.training.data import PhantomSource
    from PerfusionSegLib.training.trainer import train

    recipe = DAUGS2024.replace(config="tiny", epochs=4, steps_per_epoch=1, batch_size=4, bank_size=1, val_slices=0)
    source = PhantomSource(["siemens-flash-3t"], recipe)
    first = train(recipe.replace(epochs=1), source, [], tmp_path, progress=False, log=lambda m: None)
    assert first.epochs_done == 1
    # as if that epoch had taken an hour: a 30-minute budget is spent, so starting again trains nothing more
    _edit_history(tmp_path, lambda history: history[0].update(seconds=3600.0))
    counting = _CountingSource(source)
    again = train(recipe, counting, [], tmp_path, max_minutes=30, progress=False, log=lambda m: None)
    assert again.epochs_done == 1 and not counting.draws          # nor does it generate a bank it will not use
    assert again.seconds >= 3600
    more = train(recipe, source, [], tmp_path, max_minutes=None, progress=False, log=lambda m: None)
    assert more.epochs_done == 4


def test_a_run_that_stopped_early_trains_nothing_more_when_started_again(tmp_path):
    """Early stopping is part of the run's state: started again (resume), it returns at once, stopped early."""
    from PerfusionSegLib.training.data import PhantomSource
    from PerfusionSegLib.training.trainer import train

    recipe = DAUGS2024.replace(config="tiny", epochs=6, steps_per_epoch=1, batch_size=4, bank_size=1, val_slices=0,
                               early_stop_patience=2)
    source = PhantomSource(["siemens-flash-3t"], recipe)
    first = train(recipe.replace(epochs=3), source, [], tmp_path, progress=False, log=lambda m: None)
    assert first.epochs_done == 3

    def epoch_1_best(history):        # epochs 2-3 no better: the patience of 2 is spent
        for h, dice in zip(history, (0.9, 0.5, 0.5)):
            h["val_dice"] = {"2": dice}

    _edit_history(tmp_path, epoch_1_best)
    counting = _CountingSource(source)
    again = train(recipe, counting, [], tmp_path, progress=False, log=lambda m: None)
    assert again.epochs_done == 3 and again.stopped_early and not counting.draws
    assert again.best_epoch == 1
    # with more patience the same run goes on
    more = train(recipe.replace(early_stop_patience=10), source, [], tmp_path, progress=False, log=lambda m: None)
    assert more.epochs_done == 6 and not more.stopped_early


class _ConstantLogits(torch.nn.Module):
    """Every pixel of every patch gets the same logits, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[None, :, None, None].expand(x.shape[0], -1, *x.shape[-2:]).clone()


def test_patch_predictions_are_labelled_with_the_daugs_rule_like_the_product():
    from PerfusionDAUGSLib.umap import labels_from_probabilities
    from PerfusionSegLib.training.trainer import labels_from_prediction, predict_labels, predict_probabilities

    image = np.random.default_rng(0).random((30, 128, 128), dtype=np.float32)
    recipe = DAUGS2024.replace(n_frames=30, size=128)
    # myocardium is the most likely class (0.45) but below the DAUGS threshold 0.5: arg-max says myocardium,
    # the published rule (and run_daugs) says blood pool, the most likely of the others
    p = np.array([0.05, 0.40, 0.45, 0.10])
    net = _ConstantLogits(np.log(p))
    prob = predict_probabilities(net, image, recipe, "cpu")
    assert prob.shape == (4, 128, 128)
    np.testing.assert_allclose(prob[:, 64, 64], p, atol=1e-5)
    labels = predict_labels(net, image, recipe, "cpu")
    assert (labels == 1).all()
    np.testing.assert_array_equal(labels, labels_from_probabilities(prob))
    # at 0.5 or more it is myocardium
    p2 = np.array([0.05, 0.30, 0.55, 0.10])
    assert (predict_labels(_ConstantLogits(np.log(p2)), image, recipe, "cpu") == 2).all()
    # the full-image (ResUNet) recipe keeps the arg-max
    assert (labels_from_prediction(prob, XUE2020) == 2).all()


def test_train_cli_passes_the_member_epoch_gap(monkeypatch, tmp_path):
    import PerfusionSegLib.training.pipeline as pipeline
    from PerfusionSegLib.cli import main

    seen = {}

    def fake_train_family(recipe, data, out, **kw):
        seen.update(kw, config=recipe.config)
        return {"summary": "ok"}

    real_train_family = pipeline.train_family
    monkeypatch.setattr(pipeline, "train_family", fake_train_family)
    assert main(["train", "--family", "daugs", "--config", "lite", "--out", str(tmp_path),
                 "--member-epoch-gap", "4"]) == 0
    assert seen["min_epoch_gap"] == 4 and seen["config"] == "lite" and seen["parallel_runs"] == 1
    assert main(["train", "--family", "daugs", "--out", str(tmp_path), "--parallel-runs", "3"]) == 0
    assert seen["parallel_runs"] == 3
    # the default, members of a run at least 2 epochs apart, is the pool builder's in every entry point
    import inspect

    from PerfusionDAUGSLib.pool import DEFAULT_MIN_EPOCH_GAP, build_pool_from_runs
    assert seen["min_epoch_gap"] == DEFAULT_MIN_EPOCH_GAP == 2
    assert inspect.signature(real_train_family).parameters["min_epoch_gap"].default == DEFAULT_MIN_EPOCH_GAP
    assert inspect.signature(build_pool_from_runs).parameters["min_epoch_gap"].default == DEFAULT_MIN_EPOCH_GAP


def test_training_from_a_labelled_folder_splits_by_patient_and_exports_a_pool(tmp_path):
    """The folder the Slicer labelling workflow writes trains a pool; no patient has slices on both sides."""
    from test_labelling import synthetic_slice

    from PerfusionDAUGSLib.pool import load_pool
    from PerfusionSegLib.labelling import export_labelled_case
    from PerfusionSegLib.training.data import FolderSource
    from PerfusionSegLib.training.pipeline import train_family

    cases = tmp_path / "cases"
    for i, case_id in enumerate(("pA_base", "pA_mid", "pB_mid", "pC_mid", "pD_apex")):
        series, labels = synthetic_slice(seed=i)
        export_labelled_case(series, labels, cases, case_id)
    recipe = DAUGS2024.replace(config="tiny", epochs=1, steps_per_epoch=1, batch_size=4, bank_size=2, val_slices=1)
    split = FolderSource([cases], recipe)
    train_patients, val_patients = {c.patient for c in split.train}, {c.patient for c in split.val}
    assert train_patients and val_patients and not train_patients & val_patients
    assert train_patients | val_patients == {"pA", "pB", "pC", "pD"}
    assert sum(c.patient == "pA" for c in split.train + split.val) == 2      # both of pA's slices, on one side
    out = train_family(recipe, [str(cases)], tmp_path / "out", runs=1, dice_threshold=0.0, min_epoch_gap=1,
                       progress=False, log=lambda m: None)
    assert out["n_members"] == 1 and len(load_pool(tmp_path / "out" / "pool", device="cpu")) == 1
    training = json.loads((tmp_path / "out" / "pool" / "pool.json").read_text())["training"]
    assert training["data"]["folders"] == [str(cases)] and training["data"]["phantom_presets"] == []
    assert training["validation"] == "1 slices: 1 held-out patient of the labelled folders", training["validation"]
    assert "user" in training["data"]["licence"] and "phantom" not in training["data"]["licence"]
    # one patient only: nothing can be held out, and the run says so (log and card)
    one = tmp_path / "one"
    for i, case_id in enumerate(("pA_base", "pA_mid")):
        series, labels = synthetic_slice(seed=i)
        export_labelled_case(series, labels, one, case_id)
    logs = []
    train_family(recipe, [str(one)], tmp_path / "out1", runs=1, dice_threshold=0.0, min_epoch_gap=1,
                 progress=False, log=logs.append)
    assert any("none is held out" in m for m in logs)
    card = json.loads((tmp_path / "out1" / "pool" / "pool.json").read_text())["training"]
    assert "no labelled patient held out" in card["validation"] and "siemens-flash-3t" in card["validation"]


def test_resunet_training_exports_its_best_epoch_as_a_registered_model(tmp_path):
    from PerfusionSegLib.networks.registry import load_model
    from PerfusionSegLib.training.pipeline import train_family

    recipe = XUE2020.replace(config="small", epochs=2, steps_per_epoch=1, batch_size=2, bank_size=2, val_slices=1)
    train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path, progress=False, log=lambda m: None)
    best = json.loads((tmp_path / "runs" / "run00" / "best.json").read_text())
    model = load_model(tmp_path / "resunet.json", device="cpu")                 # sha256 checked, weights only
    assert model.architecture == "resunet" and model.in_channels == 48
    assert model.card["training"]["epoch"] == best["epoch"]
    assert model.card["training"]["data"]["phantom_presets"] == ["siemens-flash-3t"]
