"""The PerfusionSeg panel's analysis sequence (PerfusionSegLib.analysis) on the phantom, without Slicer.

The truth contours stand in for the network (labels_override), so this checks the order of Lib calls and what the
panel receives: sectors, MBF maps, the 16-segment table with reserve, the bullseye, progress and cancellation.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "PerfusionSeg"))
from PerfusionSegLib.errors import InvalidParameterError, UnreadableFileError  # noqa: E402
from PerfusionSegLib.analysis import AnalysisOptions, analyse_studies  # noqa: E402
from PerfusionSegLib.background import Cancelled, SyncContext  # noqa: E402


@pytest.fixture(scope="module")
def phantom_pair():
    from PerfusionSegLib.phantom import generate_study

    studies, override, truth = {}, {}, {}
    for condition in ("stress", "rest"):
        ph = generate_study(seed=0, condition=condition, n_slices=3, units="mmol/L", n_frames=40)
        studies[condition] = ph.study
        for series, t in zip(ph.study.slices, ph.truth):
            override[(condition, series.level)] = t.labels
            truth[(condition, series.level)] = t
    return studies, override, truth


def test_analysis_with_truth_contours(phantom_pair, tmp_path):
    studies, override, truth = phantom_pair
    progress = []
    result = analyse_studies(SyncContext(lambda f, text: progress.append((f, text))), studies,
                             AnalysisOptions(output_dir=str(tmp_path)), labels_override=override)
    assert result.messages == []
    assert [(s.condition, s.level) for s in result.slices] == [(c, lv) for c in ("stress", "rest")
                                                               for lv in ("basal", "mid", "apical")]
    ring = {"basal": set(range(1, 7)), "mid": set(range(7, 13)), "apical": set(range(13, 17))}
    for item in result.slices:
        t = truth[(item.condition, item.level)]
        myo = t.labels == 2
        assert set(np.unique(item.sectors[myo])) <= ring[item.level]
        assert np.mean(item.sectors[myo] == t.aha_segments[myo]) > 0.85
        assert np.all(item.sectors[~myo] == 0)
        assert np.all(np.isnan(item.mbf[~myo])) and np.isfinite(item.mbf[myo]).mean() > 0.9
    table = result.table
    assert len(table["Segment"]) == 17 and table["Segment"][-1] == "global"
    assert table["Territory"][:16].count("LAD") == 6 and table["Territory"][:16].count("LCX") == 5
    for condition in ("stress", "rest"):
        items = [s for s in result.slices if s.condition == condition]
        ours = np.concatenate([s.mbf[s.sectors > 0] for s in items])
        # the table is the statistics of the maps the panel shows ...
        assert table[f"{condition.capitalize()} MBF"][-1] == pytest.approx(np.nanmean(ours), rel=1e-6)
        # ... and the maps come from the right AIF and [Gd] (a wrong AIF is off by a factor of several)
        true = np.concatenate([t.mbf[t.labels == 2] for k, t in truth.items() if k[0] == condition])
        assert np.nanmedian(ours) == pytest.approx(np.nanmedian(true), rel=0.3)
    np.testing.assert_allclose(table["Reserve"], np.array(table["Stress MBF"]) / np.array(table["Rest MBF"]))
    assert Path(result.bullseye_png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 8


def test_cancel_stops_the_analysis(phantom_pair):
    studies, override, _ = phantom_pair
    context = SyncContext(lambda f, text: context.cancel() if f > 0 else None)
    with pytest.raises(Cancelled):
        analyse_studies(context, studies, AnalysisOptions(), labels_override=override)


def test_segmentation_only_and_clear_errors(phantom_pair, tmp_path, monkeypatch):
    studies, override, _ = phantom_pair
    monkeypatch.setenv("PERFUSION_MODELS_DIR", str(tmp_path))     # not the shipped models: "no model anywhere"
    monkeypatch.delenv("PERFUSION_POOLS_DIR", raising=False)
    result = analyse_studies(None, {"stress": studies["stress"]}, AnalysisOptions(compute_mbf=False),
                             labels_override=override)
    assert len(result.slices) == 3 and all(s.mbf is None for s in result.slices) and result.table == {}
    with pytest.raises(InvalidParameterError):
        AnalysisOptions(method="magic")
    assert AnalysisOptions(device="GPU").device == "cuda"
    # no override and no model anywhere: one clear message, not a traceback from deep inside
    with pytest.raises(UnreadableFileError, match="no trained segmentation model"):
        analyse_studies(None, {"stress": studies["stress"]}, AnalysisOptions(models_dirs=(str(tmp_path),)))


def test_daugs_panel_helpers_on_a_tiny_untrained_pool(tmp_path):
    """The PerfusionDAUGS panel's job and what it shows (ranking, QC, any member's labels), on a 2-member pool of
    tiny untrained networks: checks the plumbing, not the segmentation quality."""
    pytest.importorskip("PerfusionSegLib.preprocess", reason="PerfusionSegLib.preprocess (DAUGS input) not in the tree")
    torch = pytest.importorskip("torch")
    from PerfusionDAUGSLib.pool import save_pool
    from PerfusionSegLib.networks.unet import build_unet
    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.analysis import (daugs_member_labels, daugs_member_ranking, daugs_qc_flags,
                                            default_pool_available, run_daugs_series)

    torch.manual_seed(0)
    members = [{"name": f"m{i}", "network": build_unet(features=(4, 8, 16, 32)), "val_dice": 0.5 + 0.1 * i}
               for i in range(2)]
    folder = save_pool(members, tmp_path / "pool", name="tiny")
    options = AnalysisOptions(method="daugs", pool=str(folder), umap_stride=16, seg_stride=16, compute_mbf=False,
                              device="cpu")
    assert default_pool_available(options)
    assert not default_pool_available(AnalysisOptions(method="daugs", pool=str(tmp_path / "nothing")))
    series = generate_study(seed=0, condition="stress", n_slices=1, n_frames=30).study.slices[0]
    progress = []
    result = run_daugs_series(SyncContext(lambda f, text: progress.append(f)), series, options)
    assert result.labels.shape == series.shape and result.umap.shape == series.shape
    ranking = daugs_member_ranking(result)
    assert [r["member"] for r in ranking][0] == result.chosen and {r["member"] for r in ranking} == {"m0", "m1"}
    assert ranking[0]["chosen"] and not ranking[1]["chosen"]
    assert isinstance(daugs_qc_flags(result), list)
    other = ranking[1]["member"]
    assert daugs_member_labels(result, other).shape == series.shape
    with pytest.raises(InvalidParameterError):
        daugs_member_labels(result, "not-a-member")
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert result.search == "fast"
    # the panel's "Exhaustive search": every member on every U-map window (2 members x 25 stride-16 windows)
    options.exhaustive = True
    texts = []
    exhaustive = run_daugs_series(SyncContext(lambda f, text: texts.append(text)), series, options)
    assert exhaustive.search == "exhaustive" and exhaustive.n_patch_forwards == 2 * 25
    assert set(exhaustive.upp_stride.values()) == {16}
    assert any("exhaustive" in t for t in texts)
    # an ensemble of the two members: the same choice and U-map, the labels from both members' probabilities
    options.ensemble = 2
    both = run_daugs_series(SyncContext(lambda f, text: None), series, options)
    joins = [other] if math.isfinite(exhaustive.upp[other]) else []      # a member without myocardium cannot join
    assert both.chosen == exhaustive.chosen and both.ensemble == [exhaustive.chosen] + joins
    assert np.array_equal(both.umap, exhaustive.umap)


def test_analysis_options_refuse_an_exhaustive_search_without_a_pool(tmp_path, monkeypatch):
    with pytest.raises(InvalidParameterError, match="DAUGS"):
        AnalysisOptions(method="resunet", exhaustive=True)
    with pytest.raises(InvalidParameterError, match="DAUGS"):
        AnalysisOptions(method="resunet", ensemble=3)
    for bad in (0, 1.5, True):
        with pytest.raises(InvalidParameterError, match="ensemble"):
            AnalysisOptions(method="daugs", ensemble=bad)
    # "auto" that finds only a ResUNet (an install without the pool) must not drop the option silently
    torch = pytest.importorskip("torch")
    import PerfusionSegLib.analysis as analysis
    from PerfusionSegLib.networks.registry import save_model
    from PerfusionSegLib.networks.resunet import build_resunet

    monkeypatch.setattr(analysis, "default_pool_available", lambda options: False)
    torch.manual_seed(0)
    save_model(build_resunet("small"), {"input": {"size": 96}}, tmp_path / "models", "tiny_resunet")
    with pytest.raises(InvalidParameterError, match="needs a DAUGS pool"):
        analysis.make_segmenter(AnalysisOptions(models_dirs=(str(tmp_path / "models"),), exhaustive=True,
                                                device="cpu"))
    with pytest.raises(InvalidParameterError, match="ensemble of pool members needs a DAUGS pool"):
        analysis.make_segmenter(AnalysisOptions(models_dirs=(str(tmp_path / "models"),), ensemble=2, device="cpu"))


def test_resunet_path_finds_and_runs_a_model_in_the_models_folder(phantom_pair, tmp_path, monkeypatch):
    """The ResUNet branch: the first full-image model card in the models folders is loaded (sha256 checked by the
    registry) and run; a tiny untrained 'small' ResUNet checks the plumbing, not the segmentation quality."""
    pytest.importorskip("PerfusionSegLib.preprocess", reason="PerfusionSegLib.preprocess (network input) not in the tree")
    torch = pytest.importorskip("torch")
    from PerfusionSegLib.networks.registry import save_model
    from PerfusionSegLib.networks.resunet import build_resunet

    torch.manual_seed(0)
    (tmp_path / "empty").mkdir()
    save_model(build_resunet("small"), {"input": {"size": 96}}, tmp_path / "models", "tiny_resunet")
    studies, _, _ = phantom_pair
    # method "resunet": with "auto" the extension's own DAUGS pool (found beside the Lib) would be chosen instead
    options = AnalysisOptions(method="resunet", models_dirs=(str(tmp_path / "empty"), str(tmp_path / "models")),
                              compute_mbf=False, device="cpu")
    mid = studies["stress"].slices[1]
    from PerfusionSegLib.series import Study
    result = analyse_studies(None, {"stress": Study(slices=[mid])}, options)
    (item,) = result.slices
    assert item.labels.shape == mid.shape and item.labels.dtype == np.uint8
    assert set(np.unique(item.labels)) <= {0, 1, 2, 3}
    assert "flags" in item.qc
    assert item.umap is None and item.daugs is None       # the full-image model ran, not the DAUGS pool
    # bf16 reaches the network call (the panel's option; the registry runs bfloat16 autocast)
    import PerfusionSegLib.inference as inference
    seen = []
    original = inference.segment_series
    monkeypatch.setattr(inference, "segment_series", lambda *a, **k: seen.append(k.get("bf16")) or original(*a, **k))
    options.bf16 = True
    analyse_studies(None, {"stress": Study(slices=[mid])}, options)
    assert seen == [True]
