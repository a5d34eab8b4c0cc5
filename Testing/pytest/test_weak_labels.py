"""Partial (weak) training labels: the loss they feed, labels made from coarse outlines, fine-tuning from a card."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from PerfusionSegLib.errors import InvalidLabelsError, InvalidParameterError
from PerfusionSegLib.networks.losses import (NOT_LV, UNKNOWN, CEJaccardLoss, partial_cross_entropy,
                                             soft_jaccard_loss)
from PerfusionSegLib.training.trainer import dice_per_class
from PerfusionSegLib.weak_labels import weak_labels_from_coarse


def _logits_and_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    return logits, target


def test_full_labels_give_exactly_the_published_loss():
    logits, target = _logits_and_target()
    assert partial_cross_entropy(logits, target).item() == F.cross_entropy(logits, target).item()
    w = torch.tensor([0.5, 1.0, 2.0, 1.0])
    assert partial_cross_entropy(logits, target, w).item() == F.cross_entropy(logits, target, weight=w).item()


def test_unknown_pixels_carry_no_loss_and_no_gradient():
    logits, target = _logits_and_target(1)
    partial = target.clone()
    partial[:, :4] = UNKNOWN
    loss = partial_cross_entropy(logits, partial)
    # the mean over the known pixels only
    expected = F.cross_entropy(logits[:, :, 4:], target[:, 4:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[:, :, :4] == 0) and torch.any(logits.grad[:, :, 4:] != 0)


def test_not_lv_is_background_or_rv():
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 0, 0, 0] = 10.0      # pixel 0: sure background -> no NOT_LV loss
    logits[0, 3, 0, 1] = 10.0      # pixel 1: sure RV -> no NOT_LV loss either
    target = torch.full((1, 1, 2), NOT_LV)
    assert partial_cross_entropy(logits, target).item() < 1e-3
    logits2 = torch.zeros(1, 4, 1, 2)
    logits2[0, 2] = 10.0           # sure myocardium where the label says "not LV": a large loss
    assert partial_cross_entropy(logits2, target).item() > 5
    # -log(p0 + p3) by hand for uniform logits: -log(1/2)
    assert partial_cross_entropy(torch.zeros(1, 4, 1, 1), torch.full((1, 1, 1), NOT_LV)).item() == pytest.approx(
        np.log(2.0), rel=1e-6)


def test_partial_loss_refuses_unknown_codes_and_handles_an_all_unknown_batch():
    logits, _ = _logits_and_target(2)
    with pytest.raises(ValueError):
        partial_cross_entropy(logits, torch.full((2, 8, 8), 7))
    loss = partial_cross_entropy(logits, torch.full((2, 8, 8), UNKNOWN))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_jaccard_counts_definite_labels_only():
    logits, target = _logits_and_target(3)
    partial = target.clone()
    partial[:, :3] = NOT_LV
    partial[:, 3:5] = UNKNOWN
    a = soft_jaccard_loss(logits, partial)
    b = soft_jaccard_loss(logits[:, :, 5:], target[:, 5:])
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # CE + Jaccard with partial labels still gives a finite loss and a gradient
    total = CEJaccardLoss()(logits, partial)
    total.backward()
    assert torch.isfinite(total) and torch.any(logits.grad != 0)


def test_validation_dice_leaves_partial_reference_pixels_out():
    ref = np.zeros((1, 6, 6), np.uint8)
    ref[0, 2:4, 2:4] = 2
    ref[0, :, 0] = NOT_LV
    ref[0, :, 5] = UNKNOWN
    pred = ref.copy()
    pred[0, :, 0] = 2              # predictions where the reference says nothing definite are not errors
    pred[0, :, 5] = 1
    d = dice_per_class(pred, ref)
    assert d[2] == 1.0 and np.isnan(d[1])


def _coarse():
    lab = np.zeros((40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    lab[r < 10] = 2
    lab[r < 6] = 1
    return lab


def test_weak_labels_keep_cores_and_far_outside_only():
    coarse = _coarse()
    weak = weak_labels_from_coarse(coarse, erode_px=1, not_lv_margin_px=2)
    assert set(np.unique(weak)) == {1, 2, NOT_LV, UNKNOWN}
    # cores lie inside the coarse classes and are smaller
    assert np.all(coarse[weak == 1] == 1) and np.all(coarse[weak == 2] == 2)
    assert (weak == 1).sum() < (coarse == 1).sum() and (weak == 2).sum() < (coarse == 2).sum()
    # NOT_LV never touches the coarse LV nor its 2-pixel rim; the border bands between classes are unknown
    from scipy import ndimage
    near = ndimage.binary_dilation(coarse > 0, iterations=2)
    assert not np.any((weak == NOT_LV) & near)
    assert weak[20, 20 + 6] == UNKNOWN or weak[20, 20 + 5] == UNKNOWN   # the blood pool / wall border
    assert weak[0, 0] == NOT_LV and weak[20, 20] == 1


def test_an_rv_outline_keeps_its_core_as_rv():
    coarse = _coarse()
    yy, xx = np.mgrid[:40, :40]
    coarse[(np.hypot(yy - 20, xx - 4) < 4) & (coarse == 0)] = 3     # a rough RV left of the LV, touching its rim
    weak = weak_labels_from_coarse(coarse)
    rv = weak == 3
    assert rv.any() and np.all(coarse[rv] == 3) and rv.sum() < (coarse == 3).sum()
    from scipy import ndimage
    assert not np.any(rv & ndimage.binary_dilation(np.isin(coarse, (1, 2)), iterations=2))   # never on the LV rim
    # without an RV outline nothing is RV
    assert not np.any(weak_labels_from_coarse(_coarse()) == 3)


def test_weak_labels_refuse_what_they_cannot_use():
    with pytest.raises(InvalidLabelsError):
        weak_labels_from_coarse(np.zeros((10, 10), np.uint8))
    thin = np.zeros((20, 20), np.uint8)
    thin[5:15, 5] = 2
    thin[8:12, 8:12] = 1
    with pytest.raises(InvalidLabelsError):
        weak_labels_from_coarse(thin, erode_px=1)      # a one-pixel wall erodes away
    with pytest.raises(InvalidParameterError):
        weak_labels_from_coarse(_coarse(), erode_px=-1)
    with pytest.raises(InvalidLabelsError):
        weak_labels_from_coarse(np.zeros((2, 10, 10), np.uint8))


def test_a_run_can_start_from_a_trained_card_and_refuses_one_that_does_not_fit(tmp_path):
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.networks.registry import load_model, save_model
    from PerfusionSegLib.training.data import PhantomSource
    from PerfusionSegLib.training.recipes import DAUGS2024
    from PerfusionSegLib.training.trainer import train

    recipe = DAUGS2024.replace(config="tiny", epochs=1, steps_per_epoch=1, batch_size=2, bank_size=2, val_slices=1,
                               lr=0.0, size=64, early_stop_patience=None)
    torch.manual_seed(123)
    start = build_network("unet2d", config="tiny", in_channels=recipe.n_frames)
    card = save_model(start, {"architecture": "unet2d", "input": recipe.input_spec()}, tmp_path / "start", "start")
    source = PhantomSource(["siemens-flash-3t"], recipe)
    logs = []
    res = train(recipe, source, [], tmp_path / "run", seed=0, device="cpu", progress=False, init_from=card,
                log=logs.append)
    assert any("initialised from" in m for m in logs)
    trained = load_model(sorted((res.run_dir / "checkpoints").glob("*.json"))[-1], device="cpu").network
    # lr 0: the run's weights are the start's (BatchNorm running statistics move in training mode; weights do not)
    for (k, a), b in zip(start.state_dict().items(), trained.state_dict().values()):
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(a.float(), b.float(), msg=k)
    # a card of another configuration or another input is refused
    other = save_model(build_network("unet2d", config="lite", in_channels=recipe.n_frames),
                       {"architecture": "unet2d", "input": recipe.input_spec()}, tmp_path / "other", "other")
    with pytest.raises(InvalidParameterError):
        train(recipe, source, [], tmp_path / "run2", seed=0, device="cpu", progress=False, init_from=other)
    wrong_input = save_model(start, {"architecture": "unet2d", "input": dict(recipe.input_spec(), n_frames=48)},
                             tmp_path / "wrong", "wrong")
    with pytest.raises(InvalidParameterError):
        train(recipe, source, [], tmp_path / "run3", seed=0, device="cpu", progress=False, init_from=wrong_input)


def test_a_coarse_labelled_case_trains_on_its_cores_only(tmp_path):
    """Exported with coarse=True, a case is read back as coarse and reaches training as partial labels; exact cases
    and older exports (no label_quality) stay exact."""
    from test_labelling import synthetic_slice

    from PerfusionSegLib.labelling import read_labelled_dataset, export_labelled_case
    from PerfusionSegLib.training.data import FolderSource
    from PerfusionSegLib.training.recipes import DAUGS2024

    series, labels = synthetic_slice(seed=0)
    export_labelled_case(series, labels, tmp_path / "c", "pA_mid", coarse=True)
    export_labelled_case(series, labels, tmp_path / "c", "pB_mid")
    meta = json.loads((tmp_path / "c" / "pA_mid" / "case.json").read_text())
    assert meta["label_quality"] == "coarse"
    cases = {c.case_id: c for c in read_labelled_dataset(tmp_path / "c")}
    assert cases["pA_mid"].coarse and not cases["pB_mid"].coarse
    recipe = DAUGS2024.replace(config="tiny")
    src = FolderSource([tmp_path / "c"], recipe, val_fraction=0.0)
    prepared = {c.patient: c.labels for c in src.train + src.val}
    assert set(np.unique(prepared["pA"])) >= {1, 2, NOT_LV, UNKNOWN}
    assert set(np.unique(prepared["pB"])) <= {0, 1, 2, 3}
    # a run on the mixed folder (partial labels through augmentation, patches and the loss) trains: finite loss
    from PerfusionSegLib.training.pipeline import train_family
    out = train_family(recipe.replace(epochs=1, steps_per_epoch=2, batch_size=4, bank_size=2, val_slices=1),
                       [str(tmp_path / "c")], tmp_path / "out", runs=1, dice_threshold=0.0, min_epoch_gap=1,
                       progress=False, log=lambda m: None)
    history = json.loads((tmp_path / "out" / "runs" / "run00" / "history.json").read_text())
    assert out["n_members"] == 1 and np.isfinite(history[0]["loss"])
    # an older export without label_quality reads as exact; a wrong value is refused
    meta.pop("label_quality")
    (tmp_path / "c" / "pA_mid" / "case.json").write_text(json.dumps(meta))
    assert not {c.case_id: c for c in read_labelled_dataset(tmp_path / "c")}["pA_mid"].coarse
    meta["label_quality"] = "rough"
    (tmp_path / "c" / "pA_mid" / "case.json").write_text(json.dumps(meta))
    from PerfusionSegLib.errors import UnreadableFileError
    with pytest.raises(UnreadableFileError):
        read_labelled_dataset(tmp_path / "c")
    # coarse labels too thin to keep a core are refused at export, and nothing is written
    thin = np.zeros_like(labels)
    ys, xs = np.nonzero(labels == 2)
    thin[ys[:3], xs[:3]] = 2
    thin[labels == 1] = 1
    with pytest.raises(InvalidLabelsError):
        export_labelled_case(series, thin, tmp_path / "d", "pC_mid", coarse=True)
    assert not (tmp_path / "d" / "pC_mid").exists()


def test_initial_models_of_a_pool_take_each_runs_best_member(tmp_path):
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.training.pipeline import initial_models

    net = build_network("unet2d", config="tiny", in_channels=30)
    members = [{"name": n, "network": net, "run": r, "epoch": e, "val_dice": d}
               for n, r, e, d in (("r0_e1", "run00", 1, 0.80), ("r0_e2", "run00", 2, 0.90),
                                  ("r1_e1", "run01", 1, 0.95), ("r1_e2", "run01", 2, 0.85))]
    pool = save_pool(members, tmp_path / "pool")
    cards = initial_models(pool, 2)
    assert [c.name for c in cards] == ["r0_e2.json", "r1_e1.json"]
    assert initial_models(None, 3) == [None, None, None]
    assert initial_models(cards[0], 2) == [cards[0], cards[0]]
    with pytest.raises(InvalidParameterError):
        initial_models(pool, 3)                       # 3 runs, 2 in the pool
    with pytest.raises(InvalidParameterError):
        initial_models(tmp_path / "nothing.json", 1)


def test_train_cli_passes_init(monkeypatch, tmp_path):
    from PerfusionSegLib.cli import main
    from PerfusionSegLib.training import pipeline

    seen = {}

    def fake(recipe, data, out, **kw):
        seen.update(kw)
        return {"summary": "ok"}

    monkeypatch.setattr(pipeline, "train_family", fake)
    assert main(["train", "--family", "daugs", "--out", str(tmp_path / "o"), "--init", "some/pool"]) == 0
    assert seen["init"] == "some/pool"


def test_a_fine_tuned_pool_records_what_it_started_from(tmp_path):
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.networks.registry import read_card, save_model
    from PerfusionSegLib.training.pipeline import train_family
    from PerfusionSegLib.training.recipes import DAUGS2024

    recipe = DAUGS2024.replace(config="tiny", epochs=1, steps_per_epoch=1, batch_size=2, bank_size=2, val_slices=1,
                               size=64)
    card = save_model(build_network("unet2d", config="tiny", in_channels=30),
                      {"architecture": "unet2d", "input": recipe.input_spec()}, tmp_path / "start", "start")
    train_family(recipe, ["phantom:siemens-flash-3t"], tmp_path / "out", runs=2, dice_threshold=0.0,
                 min_epoch_gap=1, init=card, progress=False, log=lambda m: None)
    training = json.loads((tmp_path / "out" / "pool" / "pool.json").read_text())["training"]
    assert training["initialised_from"] == [{"card": str(card), "weights_sha256": read_card(card)["weights_sha256"]}] * 2
