"""Post-processing, QC, and a tiny network trained for a few seconds run end to end (outputs on the input grid)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from PerfusionSegLib.cli import main
from PerfusionSegLib.errors import InvalidParameterError
from PerfusionSegLib.metrics import dice
from PerfusionSegLib.postprocess import (adaptive_threshold, assemble_labels, clean_labels, count_components,
                                         largest_component)
from PerfusionSegLib.qc import slice_qc, u_pp
from PerfusionSegLib.series import SliceSeries

HAVE_PREPROCESS = importlib.util.find_spec("PerfusionSegLib.preprocess") is not None
needs_preprocess = pytest.mark.skipif(not HAVE_PREPROCESS,
                                      reason="PerfusionSegLib.preprocess (prepare_for_network) is not in this tree yet")


# --- synthetic anatomy and series ---------------------------------------------------------------------------------
def ring_labels(shape, c, r_endo, r_epi, rv=True, spacing=(1.0, 1.0)):
    """LV ring (pool 1, myocardium 2) with an RV crescent (3) on the left; radii in mm."""
    yy, xx = np.indices(shape)
    dy, dx = (yy - c[0]) * spacing[0], (xx - c[1]) * spacing[1]
    d = np.hypot(dy, dx)
    lab = np.zeros(shape, np.uint8)
    if rv:
        lab[np.hypot(dy, (dx + 1.4 * r_epi) / 0.6) < 0.7 * r_epi] = 3
    lab[d < r_epi] = 2
    lab[d < r_endo] = 1
    return lab


def synthetic_series(rng, shape=(40, 40), spacing=(1.0, 1.0), n_frames=24, dt=1.0):
    """A first-pass-like series: RV then LV blood enhance early, the myocardium later and weaker."""
    c = (shape[0] / 2 + rng.uniform(-2, 2), shape[1] / 2 + rng.uniform(-2, 2))
    r_endo = rng.uniform(6.0, 9.0)
    labels = ring_labels(shape, c, r_endo, r_endo + rng.uniform(4.0, 6.0), spacing=spacing)
    t = np.arange(n_frames) * dt

    def bolus(t0):
        s = np.clip(t - t0, 0, None)
        return (s / 3.0) ** 2 * np.exp(-(s - 3.0) / 1.5) / 1.5

    curves = {0: 0.1 + 0.05 * t / t[-1], 1: 1.0 * bolus(6), 2: 0.35 * bolus(10) + 0.1, 3: 1.0 * bolus(3)}
    data = np.zeros((n_frames,) + shape, np.float32)
    for code, curve in curves.items():
        data[:, labels == code] = curve[:, None]
    data += rng.normal(0, 0.03, data.shape).astype(np.float32)
    series = SliceSeries(data=data, times=t, spacing=spacing, level="mid")
    return series, labels, c


def normalise(x):
    return x / max(float(np.percentile(x, 99.5)), 1e-6)


# --- post-processing ------------------------------------------------------------------------------------------------
def test_largest_component_and_adaptive_threshold():
    m = np.zeros((20, 20), bool)
    m[2:5, 2:5] = True
    m[10:18, 10:18] = True
    assert largest_component(m).sum() == 64
    prob = np.zeros((20, 20))
    prob[10:18, 10:18] = 0.95
    prob[2:5, 2:5] = 0.6        # a weaker blob disappears when the threshold rises above 0.6/0.95 of the max
    out = adaptive_threshold(prob)
    assert count_components(out) == 1 and out[12, 12] and not out[3, 3]
    prob[2:5, 2:5] = 0.99       # a small confident island must not win over the main structure
    out = adaptive_threshold(prob)
    assert out[12, 12] and not out[3, 3]
    assert not adaptive_threshold(np.zeros((5, 5))).any()


def test_assemble_labels_cleans_islands_fills_the_pool_and_keeps_the_ring():
    truth = ring_labels((64, 64), (32, 34), 8, 13)
    p = np.full((4, 64, 64), 0.05, np.float32)
    for c in range(4):
        p[c][truth == c] = 0.85
    p[:, 5, 5] = [0.05, 0.05, 0.95, 0.05]        # myocardium island far away
    p[:, 32, 34] = [0.05, 0.05, 0.9, 0.05]       # "papillary muscle" inside the cavity
    p[:, 50, 10] = [0.05, 0.9, 0.05, 0.05]       # blood-pool island outside the ring
    labels = assemble_labels(p)
    np.testing.assert_array_equal(labels, truth)
    raw = p.argmax(0)
    assert (raw != truth).sum() == 3


def test_clean_labels_removes_islands_keeps_ring_pieces_and_closes_small_gaps():
    truth = ring_labels((64, 64), (32, 34), 8, 13)
    labels = truth.copy()
    labels[5, 5] = 2                  # myocardium island far away
    labels[50, 8:10] = 1              # blood-pool island
    labels[2:4, 60:62] = 3            # RV island
    ring = np.argwhere(truth == 2)
    labels[tuple(ring[len(ring) // 3])] = 0     # a one-pixel hole in the wall
    np.testing.assert_array_equal(clean_labels(labels), truth)
    assert (labels != truth).sum() == 8
    # a ring cut in two large pieces keeps both (the break is for QC to flag, not to hide)
    cut = truth.copy()
    cut[:, 30:38][cut[:, 30:38] == 2] = 0
    cleaned = clean_labels(cut)
    assert count_components(cleaned == 2) == 2 and (cleaned == 2).sum() == (cut == 2).sum()
    # a cavity the pool label missed is not filled with myocardium
    no_pool = truth.copy()
    no_pool[no_pool == 1] = 0
    assert ((clean_labels(no_pool) == 2) == (no_pool == 2)).all()
    with pytest.raises(InvalidParameterError):
        clean_labels(truth[None])


def test_assemble_labels_gives_the_ring_interior_to_the_pool():
    truth = ring_labels((64, 64), (32, 32), 8, 13, rv=False)
    p = np.full((3, 64, 64), 0.05, np.float32)
    p[2][truth == 2] = 0.9
    p[0][truth != 2] = 0.9
    p[1][(truth == 1) & (np.indices(truth.shape)[1] < 32)] = 0.95   # the network found only half the cavity
    labels = assemble_labels(p)
    np.testing.assert_array_equal(labels == 1, truth == 1)


# --- QC -----------------------------------------------------------------------------------------------------------
def test_qc_flags():
    good = ring_labels((80, 80), (40, 40), 12, 18, spacing=(1.2, 1.2))
    for use_aha in (True, False):
        q = slice_qc(good, (1.2, 1.2), level="mid", use_aha=use_aha)
        assert q["ok"] and q["flags"] == [], q
    disc = good.copy()
    disc[disc == 1] = 2
    assert "blood_pool_in_myocardium" in slice_qc(disc, (1.2, 1.2))["flags"]
    broken = good.copy()
    broken[:, 47:][broken[:, 47:] == 2] = 0           # the lateral wall missing
    q = slice_qc(broken, (1.2, 1.2), use_aha=False)
    assert "noncontiguous_myocardium" in q["flags"] and q["noncontiguous_segments"]
    split = good.copy()
    split[39:42, :][split[39:42, :] == 2] = 0         # two thin cuts through the ring
    assert slice_qc(split, (1.2, 1.2), use_aha=False)["noncontiguous_segments"]
    empty = np.zeros_like(good)
    assert {"missing_blood_pool", "missing_myocardium"} <= set(slice_qc(empty)["flags"])
    tiny = ring_labels((80, 80), (40, 40), 2, 4)
    assert "small_myocardium" in slice_qc(tiny, (1.0, 1.0))["flags"]
    umap = np.zeros(good.shape)
    assert u_pp(umap, good) == 0.0
    umap[good == 2] = 0.3
    q = slice_qc(good, (1.2, 1.2), umap=umap, uncertainty_threshold=0.05)
    assert q["u_pp"] == pytest.approx(0.09) and "high_uncertainty" in q["flags"]
    assert "high_uncertainty" not in slice_qc(good, (1.2, 1.2), umap=umap, uncertainty_threshold=0.1)["flags"]


# --- a tiny network trained for a few seconds -----------------------------------------------------------------------
N_FRAMES = 24


def _train_tiny(steps=80):
    """A 2-level ResUNet (about 30 k parameters) trained with the published loss for a few seconds on one thread."""
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.networks.losses import CEJaccardLoss
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(24):
        s, lab, _ = synthetic_series(rng, shape=(32, 32), n_frames=N_FRAMES)
        xs.append(normalise(s.data))
        ys.append(lab)
    x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()
    net = build_network("resunet", in_channels=N_FRAMES, n_classes=4, filters=(16, 16), blocks=(1, 1),
                        bridge_blocks=1, decoder_blocks=(1, 1), final_channels=8, activation="relu")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = CEJaccardLoss()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # a shared 2-core machine: one thread trains faster than two fighting
    try:
        net.train()
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(len(xs), 8, replace=False))
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from PerfusionSegLib.networks.registry import load_model, save_model
    net = _train_tiny()
    folder = tmp_path_factory.mktemp("models")
    card = {"input": {"n_frames": N_FRAMES, "spacing_mm": 1.0, "size": 32, "temporal": "linear", "dt": 1.0,
                      "normalise": "robust_max"},
            "training": {"data": "synthetic rings", "recipe": "Adam 1e-2, a few seconds"}}
    card_path = save_model(net, card, folder, "tiny_resunet")
    return load_model(card_path, device="cpu"), card_path


def test_tiny_model_segments_on_the_network_grid(tiny_model):
    from PerfusionSegLib.inference import segment_batch
    model, _ = tiny_model
    rng = np.random.default_rng(123)
    series, truth, _ = synthetic_series(rng, shape=(32, 32), n_frames=N_FRAMES)
    probs = segment_batch([normalise(series.data)], model)[0]
    assert probs.shape == (4, 32, 32)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    labels = assemble_labels(probs)
    assert dice(labels == 1, truth == 1) > 0.8
    assert dice(labels == 2, truth == 2) > 0.6


@needs_preprocess
def test_segment_series_returns_labels_on_the_input_grid(tiny_model):
    from PerfusionSegLib.inference import segment_series
    model, _ = tiny_model
    rng = np.random.default_rng(7)
    series, truth, centre = synthetic_series(rng, shape=(44, 38), spacing=(0.8, 0.8), n_frames=N_FRAMES)
    result = segment_series(series, model, center_yx=centre)
    assert result.labels.shape == series.shape and result.labels.dtype == np.uint8
    assert result.probabilities.shape == (4,) + series.shape
    assert dice(result.labels == 1, truth == 1) > 0.7
    assert dice(result.labels == 2, truth == 2) > 0.5
    assert "flags" in result.qc

    # test-time BatchNorm adaptation: recorded, the model's own network untouched, and the series is still segmented
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    adapted = segment_series(series, model, center_yx=centre, adapt_bn=True)
    assert adapted.info["bn_adapted"] and not result.info["bn_adapted"]
    assert not np.allclose(adapted.network_probabilities, result.network_probabilities, atol=1e-4)
    assert all(np.array_equal(before[k].numpy(), v.numpy()) for k, v in model.network.state_dict().items())
    assert dice(adapted.labels == 1, truth == 1) > 0.5


# --- command line -----------------------------------------------------------------------------------------------------
def test_segment_cli_without_a_model_exits_2_naming_the_file(tmp_path, capsys, monkeypatch):
    from PerfusionSegLib.writers import write_series
    monkeypatch.setenv("PERFUSION_MODELS_DIR", str(tmp_path / "models"))
    series, _, _ = synthetic_series(np.random.default_rng(1), shape=(32, 32), n_frames=N_FRAMES)
    write_series(series, tmp_path / "s.nii.gz")
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err                     # auto: neither a pool nor a ResUNet is installed
    assert rc == 2 and "no trained segmentation model" in err and str(tmp_path / "models") in err
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out"), "--method", "resunet"])
    err = capsys.readouterr().err
    assert rc == 2 and "resunet.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    rc = main(["segment", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "out"),
               "--model", str(tmp_path / "nope.json")])
    assert rc == 2


@needs_preprocess
def test_segment_cli_writes_labels_on_the_input_grid(tiny_model, tmp_path, capsys):
    import nibabel as nib
    from PerfusionSegLib.writers import write_series
    _, card_path = tiny_model
    series, _, _ = synthetic_series(np.random.default_rng(2), shape=(36, 34), n_frames=N_FRAMES)
    write_series(series, tmp_path / "slice1.nii.gz")
    rc = main(["segment", str(tmp_path / "slice1.nii.gz"), "--out", str(tmp_path / "out"), "--model", str(card_path),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    img = nib.load(str(tmp_path / "out" / "slice1_labels.nii.gz"))
    assert img.shape[:2] == (34, 36)              # (X, Y) on disk
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 3}


def test_evaluate_cli_table_csv_and_errors(tmp_path, capsys):
    from PerfusionSegLib.writers import write_labels
    ref = ring_labels((60, 60), (30, 30), 8, 13)
    pred = ring_labels((60, 60), (30, 31), 8, 13)
    write_labels(ref, tmp_path / "ref.nii.gz", spacing=(1.5, 1.5))
    write_labels(pred, tmp_path / "pred.nii.gz", spacing=(1.5, 1.5))
    rc = main(["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz"),
               "--ref", str(tmp_path / "ref.nii.gz"), str(tmp_path / "ref.nii.gz"), "--out", str(tmp_path / "m.csv")])
    out = capsys.readouterr().out
    assert rc == 0 and "Dice myo" in out and "mean" in out
    import csv
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert float(rows[1]["myocardium_dice"]) == 1.0 and 0.5 < float(rows[0]["myocardium_dice"]) < 1.0
    assert float(rows[0]["epi_hd_mm"]) == pytest.approx(1.5)
    rc = main(["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz"),
               str(tmp_path / "ref.nii.gz")])
    assert rc == 2 and "pairs" in capsys.readouterr().err
    np.save(tmp_path / "ref.npy", ref)                 # NumPy stores no spacing: refuse rather than guess
    rc = main(["evaluate", "--pred", str(tmp_path / "ref.npy"), "--ref", str(tmp_path / "ref.npy")])
    assert rc == 2 and "--spacing" in capsys.readouterr().err
    rc = main(["evaluate", "--pred", str(tmp_path / "ref.npy"), "--ref", str(tmp_path / "ref.npy"), "--spacing", "1.2"])
    assert rc == 0


@needs_preprocess
def test_segment_cli_daugs_writes_labels_umap_and_json(tmp_path, capsys):
    import nibabel as nib
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.networks import build_network
    from PerfusionSegLib.writers import write_series
    torch.manual_seed(0)
    members = [{"name": f"m{i}", "network": build_network("unet2d", config="tiny", features=(4, 8)),
                "val_dice": 0.5 + 0.1 * i,
                "card": {"input": {"n_frames": 30, "size": 128, "scale": 2.0, "temporal": "pchip"}}} for i in range(2)]
    pool = save_pool(members, tmp_path / "pool")
    series, _, _ = synthetic_series(np.random.default_rng(3), shape=(48, 44), n_frames=N_FRAMES)
    write_series(series, tmp_path / "s.nii.gz")
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out"), "--method", "daugs",
               "--pool", str(pool), "--umap-stride", "16", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    labels = nib.load(str(tmp_path / "out" / "s_labels.nii.gz"))
    umap = nib.load(str(tmp_path / "out" / "s_umap.nii.gz"))
    assert labels.shape[:2] == umap.shape[:2] == (44, 48)
    assert np.isfinite(np.asarray(umap.dataobj)).all()
    info = json.loads((tmp_path / "out" / "s_daugs.json").read_text())
    assert set(info["u_pp"]) == {"m0", "m1"} and info["bn_adapted"] is False and info["search"] == "fast"
    source = nib.load(str(tmp_path / "s.nii.gz"))              # the maps keep the input's geometry
    np.testing.assert_allclose(labels.affine, source.affine, atol=1e-5)
    np.testing.assert_allclose(umap.affine, source.affine, atol=1e-5)
    # --exhaustive: every member at the U-map stride, and the choice is the lowest U_pp among them. These three
    # untrained members (torch seeds 3, 1, 6) all segment some myocardium here, and the established one (best
    # validation Dice) has the highest U_pp, so the choice shows the ranking
    ranked = []
    for name, seed, val_dice in (("m0", 3, 0.9), ("m1", 1, 0.5), ("m2", 6, 0.6)):
        torch.manual_seed(seed)
        ranked.append(dict(members[0], name=name, val_dice=val_dice,
                           network=build_network("unet2d", config="tiny", features=(4, 8))))
    pool3 = save_pool(ranked, tmp_path / "pool3")
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out_ex"), "--method", "daugs",
               "--pool", str(pool3), "--umap-stride", "16", "--device", "cpu", "--exhaustive"])
    assert rc == 0, capsys.readouterr().err
    ex = json.loads((tmp_path / "out_ex" / "s_daugs.json").read_text())
    assert ex["search"] == "exhaustive" and ex["u_pp_stride"] == {"m0": 16, "m1": 16, "m2": 16}
    finite = {k: v for k, v in ex["u_pp"].items() if v is not None}
    assert len(finite) == 3 and ex["established"] == "m0", ex["u_pp"]
    assert ex["chosen"] == min(finite, key=finite.get) != ex["established"], ex["u_pp"]
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out_ex2"), "--method", "resunet",
               "--exhaustive"])
    assert rc == 2 and "--exhaustive" in capsys.readouterr().err and not (tmp_path / "out_ex2").exists()
    # --ensemble K: labels from the K best-ranked members, recorded in S_daugs.json; the choice is unchanged
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out_en"), "--method", "daugs",
               "--pool", str(pool3), "--umap-stride", "16", "--device", "cpu", "--exhaustive", "--ensemble", "2"])
    assert rc == 0, capsys.readouterr().err
    en = json.loads((tmp_path / "out_en" / "s_daugs.json").read_text())
    assert en["chosen"] == ex["chosen"] and en["labels_from"] == sorted(finite, key=finite.get)[:2]
    assert ex["labels_from"] == [ex["chosen"]]
    for bad in (["--ensemble", "0", "--method", "daugs", "--pool", str(pool3)], ["--ensemble", "2", "--method", "resunet"]):
        rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out_en2"), *bad])
        assert rc == 2 and "--ensemble" in capsys.readouterr().err and not (tmp_path / "out_en2").exists()
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out2"), "--method", "daugs",
               "--pool", str(pool), "--umap-stride", "16", "--device", "cpu", "--adapt-bn"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out2" / "s_daugs.json").read_text())["bn_adapted"] is True
    rc = main(["segment", str(tmp_path / "s.nii.gz"), "--out", str(tmp_path / "out3"), "--method", "resunet",
               "--runtime", "onnx", "--adapt-bn"])
    assert rc == 2 and "--adapt-bn" in capsys.readouterr().err and not (tmp_path / "out3").exists()


def test_expert_labels_pass_qc_and_survive_postprocessing():
    """Real expert labels (DAUGS external-site patient, 3 slices): no QC flag, and post-processing of their one-hot
    probabilities gives them back unchanged (the ring and hole rules do not damage real anatomy)."""
    from conftest import shared_path
    from PerfusionSegLib.readers import load_labels
    folder = shared_path("daugs_dev", "Labels")
    files = sorted(folder.glob("*.mat"))
    assert files, f"no label files in {folder}"
    for f in files:
        labels = np.squeeze(load_labels(f)[0])
        q = slice_qc(labels, (0.9, 0.9))
        assert q["ok"], (f.name, q["flags"])
        probs = np.eye(4, dtype=np.float32)[labels].transpose(2, 0, 1) * 0.9 + 0.025
        np.testing.assert_array_equal(assemble_labels(probs), labels)
        broken = labels.copy()
        rows = np.nonzero((labels == 2).any(axis=1))[0]
        mid = rows[len(rows) // 2]
        broken[mid - 1:mid + 2][broken[mid - 1:mid + 2] == 2] = 0          # cut the ring across
        assert "noncontiguous_myocardium" in slice_qc(broken, (0.9, 0.9))["flags"], f.name


@needs_preprocess
def test_demo_segments_with_an_installed_pool(tmp_path, capsys):
    """`perfusion demo` takes the DAUGS pool it finds in the models folder (issue 7 point 5), runs the whole analysis
    with it and says so; with random tiny members the contours are poor, but every slice is reported."""
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.networks import build_network
    torch.manual_seed(1)
    members = [{"name": f"m{i}", "network": build_network("unet2d", config="tiny", features=(4, 8)),
                "val_dice": 0.9 + 0.01 * i,
                "card": {"input": {"n_frames": 30, "size": 128, "scale": 2.0, "temporal": "pchip"}}} for i in range(2)]
    save_pool(members, tmp_path / "models" / "daugs_pool")
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--models-dir", str(tmp_path / "models"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "segmentation: DAUGS pool in" in out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["segmentation"] == "daugs"
    assert sorted(r["slice"].split("_")[0] for r in summary["slices"]) == ["rest"] * 3 + ["stress"] * 3
    assert all(0.0 <= r["dice_myocardium"] <= 1.0 for r in summary["slices"])


def test_automatic_method_takes_the_pool_first_then_the_resunet(tiny_model, tmp_path, monkeypatch):
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.analysis import AnalysisOptions, resolve_method
    from PerfusionSegLib.errors import UnreadableFileError
    from PerfusionSegLib.networks import build_network

    monkeypatch.setenv("PERFUSION_MODELS_DIR", str(tmp_path / "empty"))      # the default folder holds nothing
    monkeypatch.delenv("PERFUSION_POOLS_DIR", raising=False)
    resunet_dir = tiny_model[1].parent                                       # a ResUNet card, no pool
    both = tmp_path / "both"
    save_pool([{"name": "m0", "network": build_network("unet2d", config="tiny", features=(4, 8)), "val_dice": 0.9}],
              both / "daugs_pool")
    with pytest.raises(UnreadableFileError, match="no trained segmentation model"):
        resolve_method(AnalysisOptions(models_dirs=(str(tmp_path / "empty"),)))
    assert resolve_method(AnalysisOptions(models_dirs=(str(resunet_dir),))) == "resunet"
    assert resolve_method(AnalysisOptions(models_dirs=(str(both), str(resunet_dir)))) == "daugs"
    assert resolve_method(AnalysisOptions(method="resunet", models_dirs=(str(both),))) == "resunet"   # as asked
    # a ResUNet beside a pool: the ResUNet method takes the ResUNet card, never a pool member's (listed first)
    import shutil
    from PerfusionSegLib.analysis import _find_card
    for f in resunet_dir.glob(tiny_model[1].stem + ".*"):
        shutil.copy(f, both / f.name)
    card, _ = _find_card(AnalysisOptions(method="resunet", models_dirs=(str(both),)))
    assert Path(card).name == tiny_model[1].name


def test_gpu_benchmark_says_so_and_exits_2_without_a_gpu(monkeypatch, capsys):
    """benchmarks/bench_gpu.py compares CPU and CUDA; on a machine without a GPU it exits 2 with one line."""
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--studies", "1"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
