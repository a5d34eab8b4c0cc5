"""Synthetic perfusion phantom: truth consistent with images, determinism, presets, parameter errors, units, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from PerfusionSegLib.errors import InvalidParameterError
from PerfusionSegLib.phantom import PRESET_NAMES, generate_study, generate_training_slice, write_phantom

# a small, quick study: 3 slices of 24 frames on a 2.1 mm grid around the heart
SMALL = dict(n_frames=24, fov_x_mm=200.0, matrix_xy=[96, 80], aif_images=False)


@pytest.fixture(scope="module")
def study():
    return generate_study("siemens-flash-3t", seed=3, condition="stress", **SMALL)


def test_study_structure(study):
    s = study.study
    assert [x.level for x in s.slices] == ["basal", "mid", "apical"]
    assert s.aif is not None and s.aif.curve.max() > 1.5 and s.aif.units == "mmol/L"
    for series, tr in zip(s.slices, study.truth):
        assert series.data.shape == (24, 80, 96) and series.data.dtype == np.float32
        assert series.pd_frames is not None and series.pd_frames.shape[1:] == (80, 96)
        assert tr.labels.dtype == np.uint8 and set(np.unique(tr.labels)) <= {0, 1, 2, 3}
        assert {1, 2} <= set(np.unique(tr.labels))
        assert tr.gd.shape == series.data.shape
    json.dumps(study.params)  # JSON-able


def test_labels_aha_mbf_consistent(study):
    expected = {"basal": set(range(1, 7)), "mid": set(range(7, 13)), "apical": set(range(13, 17))}
    for tr in study.truth:
        myo = tr.labels == 2
        assert np.array_equal(tr.aha_segments > 0, myo)
        assert set(np.unique(tr.aha_segments[myo])) == expected[tr.level]
        assert np.all(np.isnan(tr.mbf[~myo])) and np.all(np.isfinite(tr.mbf[myo]))
        assert 0.2 < np.nanmin(tr.mbf) and np.nanmax(tr.mbf) < 6.0  # stress range with defects


def test_aha_numbering_goes_toward_septum(study):
    """Segment 2/8 (anteroseptal) must touch the RV side, 5/11 (inferolateral) must not."""
    for tr in study.truth:
        if tr.level == "apical":
            continue
        base = 0 if tr.level == "basal" else 6
        rv_near = ndimage.binary_dilation(tr.labels == 3, iterations=2)
        assert (rv_near & (tr.aha_segments == 2 + base)).any()
        assert not (rv_near & (tr.aha_segments == 5 + base)).any()


def test_insertion_points_on_rv_myocardium_junction(study):
    for tr in study.truth:
        for name in ("anterior", "inferior"):
            y, x = (int(round(v)) for v in tr.insertion_points_yx[name])
            win = tr.labels[y - 1:y + 2, x - 1:x + 2]
            assert (win == 2).any() and (win == 3).any(), (tr.level, name)
        ya, yi = tr.insertion_points_yx["anterior"][0], tr.insertion_points_yx["inferior"][0]
        assert ya < yi  # default pose: anterior is up


def test_blood_brighter_than_myocardium_at_lv_peak_and_rv_first(study):
    for series, tr in zip(study.study.slices, study.truth):
        lv = ndimage.binary_erosion(tr.labels == 1)
        rv = ndimage.binary_erosion(tr.labels == 3)
        myo = tr.labels == 2
        lv_curve = series.data[:, lv].mean(axis=1)
        t_lv = int(np.argmax(lv_curve))
        assert lv_curve[t_lv] > 1.5 * series.data[t_lv, myo].mean()
        if rv.sum() >= 3:
            assert int(np.argmax(series.data[:, rv].mean(axis=1))) < t_lv


def test_truth_curves_match_truth_gd(study):
    """A pure-myocardium pixel holds exactly its segment's curve (MBF truth is recoverable from the curves)."""
    tr = study.truth[1]
    frac_inner = ndimage.binary_erosion(tr.labels == 2)
    for seg in np.unique(tr.aha_segments[frac_inner]):
        if f"aha_{seg}_defect" in tr.tissue_curves:
            continue
        yy, xx = np.nonzero(frac_inner & (tr.aha_segments == seg))
        np.testing.assert_allclose(tr.gd[:, yy[0], xx[0]], tr.tissue_curves[f"aha_{seg}"], rtol=2e-3, atol=1e-4)
        return
    pytest.fail("no defect-free segment with an interior pixel")


def test_same_seed_bit_identical_and_other_seed_differs():
    a = generate_study("siemens-bssfp-3t", seed=11, n_slices=1, **SMALL)
    b = generate_study("siemens-bssfp-3t", seed=11, n_slices=1, **SMALL)
    c = generate_study("siemens-bssfp-3t", seed=12, n_slices=1, **SMALL)
    assert np.array_equal(a.study.slices[0].data, b.study.slices[0].data)
    assert np.array_equal(a.study.slices[0].pd_frames, b.study.slices[0].pd_frames)
    assert np.array_equal(a.truth[0].labels, b.truth[0].labels)
    assert json.dumps(a.params) == json.dumps(b.params)
    assert not np.array_equal(a.study.slices[0].data, c.study.slices[0].data)
    r1 = generate_training_slice(np.random.default_rng(5), "randomised")
    r2 = generate_training_slice(np.random.default_rng(5), "randomised")
    assert np.array_equal(r1[0], r2[0]) and np.array_equal(r1[1], r2[1])


def test_stress_and_rest_share_anatomy():
    s = generate_study(seed=4, condition="stress", n_slices=1, **SMALL)
    r = generate_study(seed=4, condition="rest", n_slices=1, **SMALL)
    assert np.array_equal(s.truth[0].labels, r.truth[0].labels)
    assert np.nanmean(s.truth[0].mbf) > np.nanmean(r.truth[0].mbf)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_runs(preset):
    ps = generate_study(preset, seed=2, n_slices=1, n_frames=12, aif_images=False)
    s = ps.study.slices[0]
    assert s.data.shape[0] == 12 and np.isfinite(s.data).all() and s.data.max() > 0
    assert ps.params["preset"] == preset and (ps.truth[0].labels == 2).any()


def test_aif_image_series_and_mask():
    ps = generate_study(seed=6, n_slices=1, n_frames=40, fov_x_mm=200.0, matrix_xy=[64, 48])
    img = ps.study.aif.image_series
    assert img is not None and img.data.shape[0] == 40 and img.data.shape[2] == 64
    assert ps.aif_mask.shape == img.shape and (ps.aif_mask == 1).any()
    lv = img.data[:, ps.aif_mask == 1].mean(axis=1)
    assert int(np.argmax(lv)) == pytest.approx(ps.study.aif.peak, abs=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="philips-magic"), "unknown phantom preset"),
    (dict(condition="exercise"), "condition"),
    (dict(n_slices=0), "n_slices"),
    (dict(units="kelvin"), "units"),
    (dict(seed=-1), "seed"),
    (dict(heart_rate_bpm=400), "heart_rate_bpm"),
    (dict(colour="red"), "unknown phantom parameter"),
    (dict(defect={"territory": "LM"}), "territory"),
    (dict(ts_ms=10.0, ordering="linear", n_lines=48), "saturation time"),
])
def test_parameter_errors_are_typed_and_clear(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        generate_study(**kwargs)


def test_training_slice_errors():
    with pytest.raises(InvalidParameterError, match="Generator"):
        generate_training_slice(0, "randomised")
    with pytest.raises(InvalidParameterError, match="size"):
        generate_training_slice(np.random.default_rng(0), "randomised", size=127)


def test_units_gd_matches_truth_without_noise_or_motion():
    kw = dict(seed=7, n_slices=1, noise=False, motion_mm=0.0, blur_px=0.0, **SMALL)
    g = generate_study(units="gd", **kw)
    s = generate_study(units="signal", **kw)
    tr = g.truth[0]
    assert g.study.slices[0].units == "mmol/L" and s.study.slices[0].units == "signal"
    inner = ndimage.binary_erosion(tr.labels == 1, iterations=2)
    # phase resolution < 100% blurs a little: compare region means
    np.testing.assert_allclose(g.study.slices[0].data[:, inner].mean(1), tr.gd[:, inner].mean(1), rtol=0.05, atol=0.05)
    assert not np.allclose(s.study.slices[0].data[:, inner].mean(1), tr.gd[:, inner].mean(1), rtol=0.2)


def test_defect_lowers_mbf_in_its_territory():
    ps = generate_study(seed=8, n_slices=1, global_mbf=3.0, defect={"territory": "LAD", "factor": 0.4, "transmural": True}, **SMALL)
    tr = ps.truth[0]
    assert tr.level == "basal"
    lad = np.isin(tr.aha_segments, (1, 2))
    other = np.isin(tr.aha_segments, (3, 4, 5, 6))
    assert np.nanmean(tr.mbf[lad]) < 0.6 * np.nanmean(tr.mbf[other])


def test_training_slice_window_and_scale():
    rng = np.random.default_rng(1)
    for peak in (3, 24):
        x, lab = generate_training_slice(rng, "siemens-flash-3t", n_frames=30, peak_frame=peak, level="mid")
        assert x.shape == (30, 128, 128) and lab.shape == (128, 128) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        c = x[:, ndimage.binary_erosion(lab == 1)].mean(1)
        half = int(np.argmax(c >= c.min() + 0.5 * (c.max() - c.min())))   # first frame at half enhancement
        assert (half <= 4) if peak == 3 else (14 <= half <= 24)
    x, lab = generate_training_slice(rng, "randomised", n_frames=48, size=176, pixel_mm=1.0, frame_interval_s=0.5)
    assert x.shape == (48, 176, 176)


def test_training_gains_scale_myocardium_and_body_curves_only():
    """The training path's domain randomisation: myo_gain scales every myocardial curve, body_gain the enhancing
    tissues around the heart; blood curves (the AIF) are untouched and the defaults change nothing."""
    from PerfusionSegLib.phantom import kinetics as K
    circ = K.sample_circulation(np.random.default_rng(0), "stress")
    t, blood = K.circulation_curves(circ, 60.0)
    mbf = {"myo:2.0000": 2.0}
    base = K.tissue_curves(t, blood, circ, mbf)
    same = K.tissue_curves(t, blood, {**circ, "myo_gain": 1.0, "body_gain": 1.0}, mbf)
    gained = K.tissue_curves(t, blood, {**circ, "myo_gain": 2.0, "body_gain": 3.0}, mbf)
    for key in base:
        np.testing.assert_array_equal(same[key], base[key])
    np.testing.assert_allclose(gained["myo:2.0000"], 2.0 * base["myo:2.0000"])
    np.testing.assert_allclose(gained["liver"], 3.0 * base["liver"])
    np.testing.assert_allclose(gained["muscle"], 3.0 * base["muscle"])
    np.testing.assert_array_equal(gained["lv_blood"], base["lv_blood"])


def test_write_phantom_and_cli(tmp_path):
    from PerfusionSegLib.cli import main

    ps = generate_study(seed=9, n_slices=1, n_frames=40, fov_x_mm=200.0, matrix_xy=[64, 48])
    files = write_phantom(ps, tmp_path / "w")
    names = {p.name for p in files}
    for n in ("stress_basal.nii.gz", "stress_basal_labels.nii.gz", "stress_basal_aha.nii.gz", "stress_basal_mbf.nii.gz",
              "stress_basal_gd.nii.gz", "stress_aif.json", "stress_aif.npy", "stress_params.json", "stress_aif_mask.nii.gz",
              "stress_basal_truth.json"):
        assert n in names
    truth = json.loads((tmp_path / "w" / "stress_basal_truth.json").read_text())
    assert set(truth["insertion_points_yx"]) == {"anterior", "inferior"}
    assert main(["phantom", "--n", "1", "--preset", "nonsense", "--out", str(tmp_path / "c")]) == 2


def test_randomised_draws_are_all_valid():
    """Random sequences, contrasts, coil combinations and poses never produce an invalid study or training window."""
    for seed in range(8):
        ps = generate_study("randomised", seed=seed, n_slices=1, n_frames=12, aif_images=False, fov_x_mm=200.0,
                            matrix_xy=[64, 48])
        assert np.isfinite(ps.study.slices[0].data).all()
    rng = np.random.default_rng(3)
    for _ in range(6):
        x, lab = generate_training_slice(rng, "randomised", size=64)
        assert np.isfinite(x).all() and x.max() <= 1.0 and lab.shape == (64, 64)


def test_wall_thickness_and_cavity_sizes_in_range():
    from PerfusionSegLib.phantom import anatomy as A
    rng = np.random.default_rng(0)
    theta = np.linspace(0, 360, 720, endpoint=False, dtype=np.float32)
    for level in ("basal", "mid", "apical"):
        for _ in range(40):
            heart = A.sample_anatomy(rng, level)["heart"]
            r = A.heart_radii(heart, theta)
            wall = r["r_epi"] - r["r_endo"]
            assert 5.0 - 1e-4 <= wall.min() and wall.max() <= 22.0 + 1e-4
            assert r["r_endo"].min() > 4.0
            assert r["rv_depth"].max() > 0   # every slice has an RV cavity (insertion points exist)


def _paint_without_and_with(anat: dict, key: str, value, half_mm: float, step_mm: float):
    """(x, y, tissue codes without, with ``anat["heart"][key] = value``) on a fine body-frame grid."""
    from PerfusionSegLib.phantom import anatomy as A

    y, x = np.mgrid[-half_mm:half_mm:step_mm, -half_mm:half_mm:step_mm].astype(np.float32)
    plain, _ = A.paint(anat, x, y)
    anat["heart"][key] = value
    painted, _ = A.paint(anat, x, y)
    return x, y, plain, painted


def test_trabecular_layer_is_muscle_labelled_cavity_lining_the_endocardium():
    """The training path's non-compacted layer: muscle (labelled blood pool) replaces blood only, only inside the local
    endocardium within the layer's depth, denser next to the wall than at the layer's inner edge."""
    from PerfusionSegLib.phantom import anatomy as A
    rng = np.random.default_rng(1)
    anat = A.sample_anatomy(rng, "mid")
    layer = A.sample_trabecular_layer(rng)
    x, y, plain, lined = _paint_without_and_with(anat, "trabecular_layer", layer, 45.0, 0.2)
    changed = lined != plain
    assert changed.sum() > 500
    assert np.all(plain[changed] == A.T["lv_blood"]) and np.all(lined[changed] == A.T["papillary"])
    assert A.TISSUE_LABEL[A.T["papillary"]] == 1                       # counted as LV cavity
    r_endo = A.heart_radii(anat["heart"], np.degrees(np.arctan2(y, x)))["r_endo"]
    rho = r_endo - np.hypot(x, y)                                      # mm inside the local endocardium
    deepest = layer["depth_mm"] * (1 + sum(a for a, _ in layer["depth_harmonics"]))
    assert rho[changed].min() >= 0 and rho[changed].max() <= deepest + 1e-3
    blood_or_muscle = (plain == A.T["lv_blood"])
    outer = blood_or_muscle & (rho >= 0) & (rho < 0.2 * layer["depth_mm"])
    inner = blood_or_muscle & (rho >= 0.8 * layer["depth_mm"]) & (rho < layer["depth_mm"])
    assert changed[outer].mean() > changed[inner].mean()
    # only the training path draws it: the presets' studies are as before
    assert "trabecular_layer" not in A.sample_anatomy(np.random.default_rng(1), "mid")["heart"]


def test_rv_trabeculae_are_muscle_labelled_rv_cavity_inside_the_crescent(monkeypatch):
    """RV trabeculae replace RV blood only, inside the crescent between the septum and the free wall, are counted as
    RV cavity (label 3), and enhance like myocardium (the myo relaxation class and a myocardial curve)."""
    from PerfusionSegLib.phantom import anatomy as A
    from PerfusionSegLib.phantom import signal as S

    rng = np.random.default_rng(4)
    anat = A.sample_anatomy(rng, "mid")
    bundles = A.sample_rv_trabeculae(rng) + [{"u": 0.0, "f": 0.5, "radius_mm": 0.8, "strand": True}]
    x, y, plain, with_rv = _paint_without_and_with(anat, "rv_trabeculae", bundles, 60.0, 0.25)
    changed = with_rv != plain
    assert changed.sum() > 100
    assert np.isin(plain[changed], [A.T["rv_blood"], A.T["rv_blood_mix"]]).all()
    assert (with_rv[changed] == A.T["rv_trabecula"]).all()
    assert A.TISSUE_LABEL[A.T["rv_trabecula"]] == 3 and S.TISSUE_CLASS["rv_trabecula"] == "myo"
    # the strand crosses the cavity along the crescent's centre angle: it meets the septum's side of the cavity
    a = np.radians(anat["heart"]["rv_angle_deg"])
    along, across = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    on_strand = changed & (np.abs(across) <= 0.8)
    r_epi = float(A.heart_radii(anat["heart"], np.array([np.degrees(a)], dtype=np.float32))["r_epi"][0])
    assert on_strand.any() and along[on_strand].min() < r_epi + 1.0
    # the presets' anatomy has none; the training path draws them when switched on
    assert "rv_trabeculae" not in A.sample_anatomy(np.random.default_rng(4), "mid")["heart"]
    from PerfusionSegLib.phantom import generator as G

    monkeypatch.setattr(G, "RV_TRABECULAE_FRACTION", 1.0)
    series, labels = generate_training_slice(np.random.default_rng(8), "siemens-flash-3t", level="mid")
    assert series.shape == (30, 128, 128) and (labels == 3).any()


def test_myocardium_margin_trims_each_border_to_its_neighbour_label():
    """The training label's partial-volume margin on a known fine grid: a 20-fine-pixel wall between blood pool and
    RV cavity (septum) and one between pool and background lose 2 fine pixels (1 mm at 0.5 mm) on each side, and the
    trimmed pixels take the label beside them."""
    from PerfusionSegLib.phantom.anatomy import _myocardium_margin_labels

    fine = np.zeros((8, 64), dtype=np.uint8)
    fine[:, :20] = 1          # LV blood pool
    fine[:, 20:40] = 2        # myocardium
    fine[:, 40:] = 3          # RV cavity
    out = _myocardium_margin_labels(fine, 0.5, 1.0, 2)
    assert out.shape == (4, 32)
    np.testing.assert_array_equal(out[0], [1] * 11 + [2] * 8 + [3] * 13)
    fine[:, 40:] = 0
    np.testing.assert_array_equal(_myocardium_margin_labels(fine, 0.5, 1.0, 2)[0], [1] * 11 + [2] * 8 + [0] * 13)
    np.testing.assert_array_equal(_myocardium_margin_labels(fine, 0.5, 0.2, 2)[0], [1] * 10 + [2] * 10 + [0] * 12)


def test_training_label_margin_changes_labels_only(monkeypatch):
    """TRAIN_MYO_MARGIN_ACQ_PX changes the training labels only: same images, a myocardium label inside the anatomical
    one and about one output pixel thinner on each side (half an acquired pixel); 0 gives the anatomical label."""
    from PerfusionSegLib.phantom import generator as G

    monkeypatch.setattr(G, "TRAIN_THROUGH_PLANE", False)     # the margin is defined on one cross-section
    monkeypatch.setattr(G, "TRAIN_MYO_MARGIN_ACQ_PX", 0.0)
    x0, lab0 = generate_training_slice(np.random.default_rng(21), "siemens-flash-3t", level="mid")
    monkeypatch.setattr(G, "TRAIN_MYO_MARGIN_ACQ_PX", 0.5)
    x1, lab1 = generate_training_slice(np.random.default_rng(21), "siemens-flash-3t", level="mid")
    np.testing.assert_array_equal(x0, x1)
    myo0, myo1 = lab0 == 2, lab1 == 2
    assert myo1.any() and not (myo1 & ~myo0).any()
    lost = myo0 & ~myo1
    # the lost pixels are the border of the anatomical wall: every one lies within 2 pixels of non-myocardium
    assert (ndimage.distance_transform_edt(myo0)[lost] <= 2.0).all()
    # about one pixel per side: close to what one binary erosion (a pixel off each side) takes
    band = myo0.sum() - ndimage.binary_erosion(myo0).sum()
    assert 0.6 * band < lost.sum() < 1.5 * band
    assert all((lab1[lost] == c).any() for c in (0, 1, 3))   # outside, cavity side, and RV across the septum


def test_study_truth_with_the_training_margin_changes_nothing_else(study):
    """generate_study(truth_myo_margin_acq_px=...) adds margin labels (to score margin-trained pools against what they
    were taught) and leaves images, labels and every random draw as they were."""
    from PerfusionSegLib.phantom.generator import TRAIN_MYO_MARGIN_ACQ_PX
    assert all(t.margin_labels is None for t in study.truth)
    ps = generate_study("siemens-flash-3t", seed=3, condition="stress", truth_myo_margin_acq_px=TRAIN_MYO_MARGIN_ACQ_PX,
                        **SMALL)
    for s0, s1, t0, t1 in zip(study.study.slices, ps.study.slices, study.truth, ps.truth):
        np.testing.assert_array_equal(s0.data, s1.data)
        np.testing.assert_array_equal(t0.labels, t1.labels)
        myo0, myo1 = t0.labels == 2, t1.margin_labels == 2
        assert myo1.any() and not (myo1 & ~myo0).any() and (myo0 & ~myo1).any()
        np.testing.assert_array_equal(t1.margin_labels[~myo0], t0.labels[~myo0])     # only myocardium pixels change
    with pytest.raises(InvalidParameterError, match="margin"):
        generate_study("siemens-flash-3t", seed=3, truth_myo_margin_acq_px=-1.0, **SMALL)


def test_training_frame_jitter_moves_frames_and_not_labels(monkeypatch):
    """TRAIN_FRAME_JITTER_MM adds per-frame shifts to the training slice's motion (at most a few sd of the drawn
    amplitude), leaves the labels of the slice where they were, and with 0 draws nothing (the slices of before)."""
    from PerfusionSegLib.phantom import generator as G

    seen = []
    real = G._slice_images

    def spy(anat, grid, acq, circ, mbf, t_fine, blood, times, rng, motion, *args, **kwargs):
        seen.append(motion)
        return real(anat, grid, acq, circ, mbf, t_fine, blood, times, rng, motion, *args, **kwargs)

    monkeypatch.setattr(G, "_slice_images", spy)
    monkeypatch.setattr(G, "TRAIN_FRAME_JITTER_MM", 0.0)
    x0, lab0 = generate_training_slice(np.random.default_rng(8), "siemens-flash-3t", level="mid")
    x0b, _ = generate_training_slice(np.random.default_rng(8), "siemens-flash-3t", level="mid")
    np.testing.assert_array_equal(x0, x0b)
    monkeypatch.setattr(G, "TRAIN_FRAME_JITTER_MM", 3.0)
    steps = []
    for seed in range(6):
        generate_training_slice(np.random.default_rng(seed), "siemens-flash-3t", level="mid")
        m = seen[-1]
        steps.append(np.hypot(np.diff(m["dy_mm"]), np.diff(m["dx_mm"])))
    steps0 = np.hypot(np.diff(seen[0]["dy_mm"]), np.diff(seen[0]["dx_mm"]))
    per_slice = [np.median(s) for s in steps]
    # sd drawn uniformly in [0, 3] mm per axis: most slices move far more from frame to frame than without jitter
    assert np.median(per_slice) > 3 * max(np.median(steps0), 0.1)
    assert max(per_slice) < 3 * 3.0 * 1.5
    # the labels stay static truth: the same seed with and without jitter draws the same anatomy
    monkeypatch.setattr(G, "TRAIN_FRAME_JITTER_MM", 1.6)
    x1, lab1 = generate_training_slice(np.random.default_rng(8), "siemens-flash-3t", level="mid")
    np.testing.assert_array_equal(lab0, lab1)
    assert not np.array_equal(x0, x1)


def test_slab_sub_slices_are_symmetric_about_the_central_cross_section():
    from PerfusionSegLib.phantom.anatomy import sample_slab

    rng = np.random.default_rng(4)
    for level, (lo, hi) in (("basal", (0.0, 0.005)), ("mid", (0.004, 0.012)), ("apical", (0.01, 0.03))):
        slab = sample_slab(rng, level, 9.0)
        sc, sh = np.array(slab["scales"]), np.array(slab["shifts_mm"])
        assert sc.shape == (3,) and sh.shape == (3, 2)
        assert sc[1] == 1.0 and (sh[1] == 0).all()                  # the middle sub-slice is the cross-section itself
        np.testing.assert_allclose(sc[0] - 1, 1 - sc[2])            # the taper is linear across the slab
        np.testing.assert_allclose(sh[0], -sh[2])
        taper = (sc[0] - sc[2]) / 6.0                               # sub-slice centres at -3, 0, +3 mm
        assert lo <= taper <= hi
        assert np.hypot(*sh[0]) <= 3.0 * np.tan(np.radians(10.0)) + 1e-9
    for bad in (("septal", 8.0), ("mid", 0.0), ("mid", 25.0)):
        with pytest.raises(InvalidParameterError):
            sample_slab(rng, *bad)


def test_slab_render_spreads_borders_and_keeps_the_labels():
    """A slab of one unchanged sub-slice renders exactly the cross-section; a tapered, tilted slab spreads the
    blood-myocardium border over more pixels (partial volume) while its majority labels stay close to the
    cross-section's, and fractions still sum to 1."""
    from PerfusionSegLib.phantom import anatomy as A

    rng = np.random.default_rng(8)
    anat = A.sample_anatomy(rng, "apical")
    grid = A.Grid(96, 96, 1.0, (-8.0, 0.0))
    flat = A.render(anat, grid)
    same = A.render(anat, grid, slab={"scales": [1.0], "shifts_mm": [[0.0, 0.0]], "heart_mm": [40.0, 60.0]})
    np.testing.assert_array_equal(flat.fractions, same.fractions)
    np.testing.assert_array_equal(flat.labels, same.labels)
    slab = {"scales": [1.06, 1.0, 0.94], "shifts_mm": [[-1.0, 0.5], [0.0, 0.0], [1.0, -0.5]], "heart_mm": [40.0, 60.0]}
    thick = A.render(anat, grid, slab=slab)
    np.testing.assert_allclose(thick.fractions.sum(0), 1.0, atol=1e-5)
    myo_flat, myo_thick = flat.fractions[A.T["lv_myo"]], thick.fractions[A.T["lv_myo"]]
    mixed = lambda f: int(((f > 0.05) & (f < 0.95)).sum())
    assert mixed(myo_thick) > 1.3 * mixed(myo_flat)
    a, b = flat.labels == 2, thick.labels == 2
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85
    # far from the heart nothing changes
    cy, cx = flat.lv_centre_yx
    yy, xx = np.mgrid[0:96, 0:96]
    far = np.hypot(yy - cy, xx - cx) > 65.0        # beyond 60 mm of the LV centre, with room for the elastic warp
    assert far.sum() > 100
    np.testing.assert_array_equal(flat.labels[far], thick.labels[far])
    with pytest.raises(InvalidParameterError):
        A.render(anat, grid, slab=slab, myo_margin_mm=1.0)


def test_training_slabs_are_off_by_default_and_change_images_when_on(monkeypatch):
    from PerfusionSegLib.phantom import generator as G

    assert G.TRAIN_THROUGH_PLANE is False         # tried and not kept in the thirteenth session (docs/phantom.md)
    monkeypatch.setattr(G, "TRAIN_MYO_MARGIN_ACQ_PX", 0.0)    # slabs were tried on the anatomical label (no margin)
    x0, lab0 = generate_training_slice(np.random.default_rng(5), "siemens-flash-3t", level="mid")
    monkeypatch.setattr(G, "TRAIN_THROUGH_PLANE", True)
    x1, lab1 = generate_training_slice(np.random.default_rng(5), "siemens-flash-3t", level="mid")
    assert x1.shape == x0.shape and set(np.unique(lab1)) <= {0, 1, 2, 3}
    assert not np.array_equal(x0, x1)
    assert 0.8 < (lab1 == 2).sum() / (lab0 == 2).sum() < 1.25


def test_cli_writes_stress_and_rest(tmp_path):
    from PerfusionSegLib.cli import main

    assert main(["phantom", "--n", "1", "--seed", "3", "--slices", "1", "--condition", "both", "--units", "gd",
                 "--out", str(tmp_path)]) == 0
    folder = tmp_path / "phantom_0003"
    for cond in ("stress", "rest"):
        assert (folder / f"{cond}_basal.nii.gz").exists() and (folder / f"{cond}_params.json").exists()
        assert json.loads((folder / f"{cond}_params.json").read_text())["units"] == "mmol/L"
    assert main(["phantom", "--n", "1", "--slices", "0", "--out", str(tmp_path / "bad")]) == 2


# --- kinetic model, pose geometry, random draws (kinetics helper) -------------------------------------------------
def test_exchange_response_matches_matrix_exponential_and_fitter():
    from scipy.linalg import expm
    from PerfusionSegLib.phantom import kinetics as K
    from PerfusionSegLib.quantification.two_compartment import two_compartment_response
    fp, ps, vp, ve = 0.03, 0.02, 0.07, 0.2
    t = np.array([0.0, 0.5, 2.0, 7.0, 20.0])
    a = np.array([[-(fp + ps) / vp, ps / vp], [ps / ve, -ps / ve]])
    ref = np.array([np.array([vp, ve]) @ expm(a * ti) @ np.array([fp / vp, 0.0]) for ti in t])
    np.testing.assert_allclose(K.exchange_response(t, fp, ps, vp, ve), ref, rtol=1e-9)
    np.testing.assert_allclose(two_compartment_response(t, [fp], [ps], [vp], [ve])[0], ref, rtol=1e-9)


@pytest.mark.parametrize("model", ["fermi", "2cxm"])
def test_myocardial_model_recorded_and_flow_convention(model):
    from PerfusionSegLib.phantom import kinetics as K
    ps = generate_study(seed=4, n_slices=1, aif_images=False, noise=False, myo_model=model, units="mmol/L")
    circ = ps.params["circulation"]
    assert circ["myo_model"] == model and circ["hematocrit"] == ps.study.aif.hematocrit
    q = K.myocardial_params(2.0, circ)
    # R(0) is blood flow in both models: Fermi F, 2CXM Fp / (1 - Hct) on the plasma input
    f0 = q["flow_per_s"] if model == "fermi" else q["fp_per_s"] / (1 - circ["hematocrit"])
    assert f0 == pytest.approx(2.0 * 1.05 / 60.0)


def test_random_acquisition_draws_never_rejected():
    from PerfusionSegLib.phantom import generator as G, presets as P
    for preset in P.PRESET_NAMES:
        for seed in range(300):
            acq = P.sample_acquisition(G._rng(seed, 3, "stress"), preset)
            G._check_sequence(acq)   # raises on a draw the generator would refuse
    generate_study("randomised", seed=1017, n_slices=1, aif_images=False)


def test_pose_affine_mirrors_columns_and_aha_gets_anterior():
    from PerfusionSegLib.aha import find_insertion_points
    seen = set()
    for seed in range(40):
        ps = generate_study("randomised", seed=seed, n_slices=1, aif_images=False, noise=False)
        s, tr = ps.study.slices[0], ps.truth[0]
        mirrored = ps.params["slices"][0]["anatomy"]["pose"]["mirror"]
        if mirrored in seen:
            continue
        seen.add(mirrored)
        a = np.asarray(s.affine)
        np.testing.assert_allclose(np.linalg.norm(a[:3, :2], axis=0), [s.spacing[1], s.spacing[0]], rtol=1e-6)
        normal_z = np.cross(a[:3, 0], a[:3, 1])[2]
        assert (normal_z < 0) == mirrored
        ip = find_insertion_points(tr.labels, spacing=s.spacing, affine=a)
        c = ip.centroid_yx
        ang = lambda p: np.degrees(np.arctan2(p[0] - c[0], p[1] - c[1])) % 360
        err = (ip.anterior_angle_deg - ang(tr.insertion_points_yx["anterior"]) + 180) % 360 - 180
        assert abs(err) < 15, (seed, mirrored, err)
        if len(seen) == 2:
            break
    assert seen == {True, False}


def test_insertion_point_solve_inverts_the_forward_warp():
    from PerfusionSegLib.phantom import anatomy as A
    anat = A.sample_anatomy(np.random.default_rng(5), "mid", rotation_sd_deg=40.0, allow_mirror=True)
    anat["pose"] = {"rotation_deg": 37.0, "mirror": True}
    grid = A.Grid(96, 112, 1.9, (-15.0, 6.0))
    py, px = A.body_point_to_pixel(21.0, -13.0, anat, grid)
    x = np.array([(px - (grid.nx - 1) / 2.0) * grid.spacing])
    y = np.array([(py - (grid.ny - 1) / 2.0) * grid.spacing])
    xb, yb = A._to_body(x, y, anat, grid, dtype=np.float64)
    assert abs(xb[0] - 21.0) < 1e-4 and abs(yb[0] + 13.0) < 1e-4
    # the pose-only inverse (warp ignored) misses it by the warp displacement
    ay, ax = A._from_body_point(21.0, -13.0, anat, grid)
    assert np.hypot(ay - py, ax - px) > 1e-3


def test_pulmonary_delay_override_holds_the_lv_foot_back():
    """``pulmonary_delay_s`` (an override; the draws have none) keeps the LV curve at zero until the bolus has crossed
    the lungs' shortest path, and generate_study passes it through."""
    from PerfusionSegLib.phantom import kinetics as K

    circ = K.sample_circulation(np.random.default_rng(3), "stress")
    assert "pulmonary_delay_s" not in circ
    circ.update(recirculation_fraction=0.0)
    t, blood0 = K.circulation_curves(circ, 60.0)
    t, blood = K.circulation_curves(dict(circ, pulmonary_delay_s=4.0), 60.0)
    foot = lambda c: t[np.argmax(c > 1e-9 * c.max())]
    assert foot(blood["rv_blood"]) == pytest.approx(circ["rv_arrival_s"], abs=0.11)
    assert foot(blood["lv_blood"]) - foot(blood["rv_blood"]) == pytest.approx(4.0, abs=0.25)
    assert foot(blood0["lv_blood"]) - foot(blood0["rv_blood"]) < 0.5      # without it the lungs pass it on at once
    np.testing.assert_allclose(blood["rv_blood"], blood0["rv_blood"])
    a = generate_study("siemens-flash-3t", seed=2, n_slices=1, noise=False, aif_images=False)
    b = generate_study("siemens-flash-3t", seed=2, n_slices=1, noise=False, aif_images=False, pulmonary_delay_s=4.0)
    assert b.params["circulation"]["pulmonary_delay_s"] == 4.0
    assert np.argmax(b.study.aif.curve) > np.argmax(a.study.aif.curve)
