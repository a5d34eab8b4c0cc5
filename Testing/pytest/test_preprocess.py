"""Preprocessing for the networks: temporal resampling, first-pass window, spatial resampling, crop/pad,
normalisation, and the exact inverse back to the input grid (label round trips)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from PerfusionSegLib.errors import InvalidParameterError, InvalidSeriesError
from PerfusionSegLib.preprocess import (GridMap, NetworkGeometry, crop_or_pad, normalise, prepare_for_network,
                                        resample_space, resample_time_linear, resample_time_pchip,
                                        select_first_pass_window)
from PerfusionSegLib.series import SliceSeries


def smooth_curve(t):
    """A smooth bolus-like curve (gamma variate + plateau) with known values everywhere."""
    x = np.clip(t - 5.0, 0, None)
    return 10.0 + 80.0 * (x / 6.0) ** 2 * np.exp(2.0 - x / 3.0) + 5.0 * (1 - np.exp(-x / 8.0))


def irregular_times(n=40, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.7, 1.1, n - 1)
    d[[7, 19]] *= 2.0                          # two missed triggers
    return np.concatenate([[0.3], 0.3 + np.cumsum(d)])


def curve_series(times, shape=(12, 10), spacing=(1.5, 1.5)):
    c = smooth_curve(times).astype(np.float32)
    gain = np.linspace(0.5, 1.5, shape[0] * shape[1]).reshape(shape).astype(np.float32)
    return SliceSeries(data=c[:, None, None] * gain[None], times=times, spacing=spacing)


def labels_image(shape, seed=0):
    """Random blobs of labels 0-3 (nearest-neighbour content with edges everywhere)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, size=(max(2, shape[0] // 4), max(2, shape[1] // 4)))
    from scipy import ndimage
    lab = ndimage.zoom(coarse, (shape[0] / coarse.shape[0], shape[1] / coarse.shape[1]), order=0)[: shape[0], : shape[1]]
    lab = np.pad(lab, ((0, shape[0] - lab.shape[0]), (0, shape[1] - lab.shape[1])), mode="edge")
    noise = rng.random(shape) < 0.05          # isolated single pixels: the hardest case for a round trip
    lab[noise] = rng.integers(0, 4, noise.sum())
    return lab.astype(np.uint8)


def bolus_series(shape=(60, 70), spacing=(1.8, 1.8), T=40, dt=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T) * dt
    yy, xx = np.indices(shape)
    pool = np.hypot(yy - shape[0] * 0.55, xx - shape[1] * 0.45) < 8
    curve = smooth_curve(t)
    data = 20 + pool[None] * curve[:, None, None] + rng.normal(0, 1, (T,) + shape)
    return SliceSeries(data=data.astype(np.float32), times=t, spacing=spacing)


# ---------------------------------------------------------------------------------------------------------------------
# temporal
# ---------------------------------------------------------------------------------------------------------------------
def test_linear_resampling_uses_real_irregular_times():
    t = irregular_times()
    s = curve_series(t)
    r = resample_time_linear(s, dt=0.5)
    assert isinstance(r, SliceSeries) and r.data.dtype == np.float32
    assert np.allclose(np.diff(r.times), 0.5) and r.times[0] == t[0] and r.times[-1] <= t[-1]
    gain = s.data[0] / smooth_curve(t[:1])[0]
    truth = smooth_curve(r.times)[:, None, None] * gain[None]
    err = np.abs(r.data - truth).max() / truth.max()
    assert err < 0.03, err                    # linear error ~ h^2 f''/8 for ~1 s samples of a 6 s-wide bolus
    # ignoring the missed triggers (assuming regular frames) would be far worse: the test can fail
    wrong = np.interp(r.times, t[0] + np.arange(len(t)) * np.median(np.diff(t)), s.data[:, -1, -1])
    assert np.abs(wrong - truth[:, -1, -1]).max() / truth.max() > 3 * err
    assert r.metadata["preprocessing"][-1]["step"] == "resample_time_linear"
    assert s.data.shape[0] == len(t)           # input untouched


def test_linear_resampling_is_exact_at_the_samples_and_for_arrays():
    t = np.arange(20) * 1.0
    arr = np.random.default_rng(1).random((20, 3, 4)).astype(np.float32)
    out, grid = resample_time_linear(arr, dt=0.5, times=t)
    assert np.allclose(out[::2], arr, atol=1e-6) and np.allclose(out[1::2], 0.5 * (arr[:-1] + arr[1:]), atol=1e-6)
    assert grid[-1] == 19.0


def test_pchip_onto_n_frames_reproduces_a_smooth_curve_without_overshoot():
    t = irregular_times(seed=3)
    s = curve_series(t)
    r = resample_time_pchip(s, n_frames=30)
    assert r.n_frames == 30 and np.allclose(np.diff(r.times), (t[-1] - t[0]) / 29)
    truth = smooth_curve(r.times)
    got = r.data[:, 0, 0] / s.data[0, 0, 0] * smooth_curve(t[:1])[0]
    assert np.abs(got - truth).max() / truth.max() < 0.03
    assert r.data.max() <= s.data.max() + 1e-3 and r.data.min() >= s.data.min() - 1e-3   # monotone: no overshoot


def test_temporal_parameters_are_checked():
    s = curve_series(np.arange(20) * 1.0)
    with pytest.raises(InvalidParameterError):
        resample_time_linear(s, dt=0.0)
    with pytest.raises(InvalidParameterError):
        resample_time_pchip(s, n_frames=1)
    with pytest.raises(InvalidParameterError):
        resample_time_pchip(s, n_frames=10, start=5.0, stop=50.0)


def test_first_pass_window_starts_before_arrival():
    s = bolus_series(T=60, dt=1.0)            # bolus arrives at 5 s, peaks at 11 s
    w = select_first_pass_window(s, 30)
    assert 4 <= w.arrival <= 6 and 10 <= w.peak <= 12
    assert w.start == max(0, w.arrival - 3) and w.stop - w.start == 30
    # a late bolus: the window follows it; a window longer than the series is the whole series
    late = s.replace(data=np.concatenate([np.repeat(s.data[:1], 20, 0), s.data[:40]]), times=np.arange(60) * 1.0)
    wl = select_first_pass_window(late, 20)
    assert 22 <= wl.arrival <= 26 and wl.start == wl.arrival - 3
    assert select_first_pass_window(s, 100)[:2] == (0, 60)
    # near the end the window is moved back to fit
    w_end = select_first_pass_window(late.data, 50, times=late.times)
    assert w_end.stop == 60 and w_end.start == 10


# ---------------------------------------------------------------------------------------------------------------------
# spatial: resampling, crop/pad, exact inverses
# ---------------------------------------------------------------------------------------------------------------------
def test_crop_or_pad_copies_and_pads_at_borders():
    img = np.arange(7 * 9, dtype=np.float32).reshape(7, 9) + 1
    out, g = crop_or_pad(img, (0, 8), 6, fill=0)   # centre at the top-right corner
    assert out.shape == (6, 6)
    # the centre pixel lands on index size // 2 = 3: rows -3..2 and columns 5..10 of the input
    assert np.array_equal(out[3:, :4], img[:3, 5:9]) and np.all(out[:3] == 0) and np.all(out[:, 4:] == 0)
    assert out[3, 3] == img[0, 8]
    back = g.inverse(out, order=0, fill=-1)
    covered = back != -1
    assert np.array_equal(back[covered], img[covered]) and covered.sum() == 12
    big, g2 = crop_or_pad(img, (3, 4), 11)          # larger than the image: padded all round, exact back
    assert np.array_equal(g2.inverse(big, order=0), img)


@pytest.mark.parametrize("spacing,target", [((2.0, 2.0), 1.0), ((1.7, 2.3), 1.0), ((1.0, 1.0), 0.5)])
def test_resample_space_label_round_trip(spacing, target):
    lab = labels_image((23, 31), seed=2)
    out, g = resample_space(lab, spacing, target_spacing=target, order=0)
    assert out.shape == (round(23 * spacing[0] / target), round(31 * spacing[1] / target)) and out.dtype == np.uint8
    assert np.array_equal(g.inverse(out, order=0), lab)


def test_resample_space_by_factor_matches_scipy_zoom():
    from scipy import ndimage

    img = np.random.default_rng(4).random((16, 20))
    out, g = resample_space(img, (1.0, 1.0), factor=2.0, order=1)
    ref = ndimage.zoom(img, 2.0, order=1, mode="nearest", grid_mode=True)
    assert out.shape == (32, 40) and np.allclose(out, ref, atol=1e-5)
    with pytest.raises(InvalidParameterError):
        resample_space(img, (1.0, 1.0), target_spacing=1.0, factor=2.0)


ROUND_TRIP_CASES = [
    # (input shape, spacing, prepare keywords, centre)
    ((101, 87), (1.7, 1.9), dict(spacing_mm=1.0, size=176), (50.0, 43.0)),
    ((77, 133), (2.2857, 2.2857), dict(spacing_mm=1.0, size=176), (40.3, 70.8)),
    ((96, 120), (1.0, 1.0), dict(spacing_mm=1.0, size=64), (3.0, 118.0)),      # crop at the border, zoom 1
    ((64, 64), (1.5, 1.5), dict(spacing_mm=1.0, size=48), (60.0, 2.0)),        # corner: crop leaves the image
    ((75, 61), (0.9, 0.9), dict(spacing_mm=None, scale=2.0, size=128), (37.4, 30.6)),
    ((128, 128), (1.1, 1.1), dict(spacing_mm=None, scale=2.0, size=128), (120.0, 10.0)),
    ((55, 47), (3.0, 3.0), dict(spacing_mm=1.0, size=96), (27.0, 23.0)),       # crop smaller than the input
]


@pytest.mark.parametrize("shape,spacing,kw,centre", ROUND_TRIP_CASES)
def test_label_round_trip_is_identical_where_the_crop_covers_the_input(shape, spacing, kw, centre):
    series = bolus_series(shape=shape, spacing=spacing, T=24)
    x, geo = prepare_for_network(series, center_yx=centre, n_frames=12, **kw)
    assert x.shape == (12, kw["size"], kw["size"]) and x.dtype == np.float32
    lab = labels_image(shape, seed=shape[0])
    net = geo.to_network_grid(lab, order=0)
    assert net.shape == (kw["size"], kw["size"]) and net.dtype == np.uint8
    back = geo.to_input_grid(net, order=0, fill=255)
    covered = back != 255
    assert covered.any()
    assert np.array_equal(back[covered], lab[covered])
    # the covered region is exactly the input pixels whose centres lie in the network field
    y0, x0, y1, x1 = geo.crop_box_yx
    yy, xx = np.indices(shape)
    assert np.array_equal(covered, (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1))
    # the geometry survives JSON and still inverts identically
    geo2 = NetworkGeometry.from_json(geo.to_json())
    assert np.array_equal(geo2.to_input_grid(net, order=0, fill=255), back)


def test_map_back_is_linear_and_nan_outside():
    series = bolus_series(shape=(50, 40), spacing=(2.0, 2.0), T=20)
    x, geo = prepare_for_network(series, center_yx=(10.0, 35.0), size=64, n_frames=8)
    ii, jj = np.indices((64, 64)).astype(np.float32)
    ramp = 3.0 * ii - 2.0 * jj                    # a linear map on the network grid
    back = geo.to_input_grid(ramp, order=1)
    assert back.shape == (50, 40) and back.dtype == np.float32
    inside = np.isfinite(back)
    assert inside.any() and (~inside).any()
    yy, xx = np.indices((50, 40))
    i, j = geo.input_to_network_yx((yy, xx))
    expect = 3.0 * i - 2.0 * j
    strictly = inside & (i >= 0) & (i <= 63) & (j >= 0) & (j <= 63)
    assert np.allclose(back[strictly], expect[strictly], atol=1e-3)


def test_one_step_equals_resample_then_crop():
    """prepare_for_network's single map is the composition of resample_space and crop_or_pad (no drift)."""
    lab = labels_image((70, 90), seed=9)
    spacing = (1.6, 1.6)
    series = bolus_series(shape=(70, 90), spacing=spacing, T=20)
    _, geo = prepare_for_network(series, center_yx=(33.3, 51.7), size=80, n_frames=8)
    res, g1 = resample_space(lab, spacing, target_spacing=1.0, order=0)
    centre_res = ((33.3 - g1.offset[0]) * g1.zoom[0], (51.7 - g1.offset[1]) * g1.zoom[1])
    crop, _ = crop_or_pad(res, centre_res, 80)
    assert np.array_equal(crop, geo.to_network_grid(lab, order=0))


def test_network_affine_places_the_crop_where_it_came_from():
    aff = np.array([[0.0, -1.8, 0, 100.0], [1.8, 0.0, 0, -50.0], [0, 0, 8.0, 20.0], [0, 0, 0, 1]])
    series = bolus_series(shape=(50, 60), spacing=(1.8, 1.8), T=20).replace(affine=aff)
    _, geo = prepare_for_network(series, center_yx=(25.0, 30.0), size=96, n_frames=8)
    net_aff = geo.network_affine(series.affine)
    for i, j in [(0, 0), (10, 70), (95, 95)]:
        y, x = geo.network_to_input_yx((i, j))
        assert np.allclose(net_aff @ [j, i, 0, 1], aff @ [x, y, 0, 1])


# ---------------------------------------------------------------------------------------------------------------------
# intensity and the whole preparation
# ---------------------------------------------------------------------------------------------------------------------
def test_normalise_robust_max_and_passthrough():
    rng = np.random.default_rng(0)
    a = rng.random((5, 20, 20)).astype(np.float32) * 100
    a[0, 0, 0] = 1e5                                # one bright outlier must not set the scale
    n, scale = normalise(a)
    assert n.min() >= 0 and n.max() == 1.0 and 95 < scale < 101
    assert np.allclose(n[1:], np.clip(a[1:] / scale, 0, 1))
    gd = a / 10
    same, s1 = normalise(gd, "none")
    assert s1 == 1.0 and np.array_equal(same, gd)
    with pytest.raises(InvalidParameterError):
        normalise(a, "zscore")
    with pytest.raises(InvalidSeriesError):
        normalise(-a)


def test_prepare_for_network_xue_and_daugs_defaults():
    t = irregular_times(50, seed=5)
    s = bolus_series(shape=(80, 90), spacing=(2.0, 2.0), T=50).replace(times=t)
    x, geo = prepare_for_network(s, center_yx=(44, 40))
    assert x.shape == (48, 176, 176) and 0 <= x.min() and x.max() <= 1
    assert np.allclose(np.diff(geo.frame_times), 0.5) and geo.n_padded_frames == 0
    assert geo.network_spacing == (1.0, 1.0) and geo.center_source == "given"
    json.loads(geo.to_json())
    xd, gd = prepare_for_network(s, spacing_mm=None, scale=2.0, size=128, n_frames=30, temporal="pchip",
                                 center_yx=(44, 40))
    assert xd.shape == (30, 128, 128) and gd.zoom == (2.0, 2.0) and gd.network_spacing == (1.0, 1.0)
    assert gd.frame_window[1] - gd.frame_window[0] == 30 and len(gd.frame_times) == 30


def test_prepare_pads_short_series_and_passes_gd_through():
    s = bolus_series(shape=(40, 40), spacing=(2.0, 2.0), T=12).replace(units="mmol/L")
    x, geo = prepare_for_network(s, center_yx=(20, 20), size=64, n_frames=48, normalise="none")
    assert geo.n_padded_frames == 48 - 23 and np.array_equal(x[-1], x[23 - 1])
    assert x.max() > 50                                # [Gd] values untouched (not scaled to 1)


def test_prepare_finds_the_lv_itself():
    from test_localise import synthetic_heart

    data, times, lv, _ = synthetic_heart(seed=11)
    s = SliceSeries(data=data, times=times, spacing=(1.8, 1.8))
    _, geo = prepare_for_network(s, size=64, n_frames=16)
    assert geo.center_source.startswith("auto")
    assert lv[int(round(geo.center_yx[0])), int(round(geo.center_yx[1]))]


def test_prepare_rejects_bad_parameters():
    s = bolus_series(shape=(30, 30), T=12)
    for kw in (dict(temporal="cubic"), dict(normalise="z"), dict(size=8), dict(spacing_mm=1.0, scale=2.0),
               dict(n_frames=0), dict(center_yx=(np.nan, 3.0))):
        with pytest.raises(InvalidParameterError):
            prepare_for_network(s, **kw)
    with pytest.raises(InvalidSeriesError):
        prepare_for_network(s.data)


def test_gridmap_rejects_wrong_shapes():
    g = GridMap((10, 10), (20, 20), (2.0, 2.0), (-0.25, -0.25))
    with pytest.raises(InvalidParameterError):
        g.inverse(np.zeros((10, 10)))
    with pytest.raises(InvalidParameterError):
        g.forward(np.zeros((10, 10)), order=2)


# ---------------------------------------------------------------------------------------------------------------------
# perfusion preprocess (CLI)
# ---------------------------------------------------------------------------------------------------------------------
def _write_input(path, shape=(48, 56), T=30, seed=0):
    from test_localise import synthetic_heart
    from PerfusionSegLib.writers import write_series

    data, times, lv, _ = synthetic_heart(shape=shape, lv_yx=(26, 32), rv_yx=(22, 14), seed=seed, times=np.arange(T) * 0.9)
    write_series(SliceSeries(data=data, times=times, spacing=(1.8, 1.8)), path)
    return lv


def test_cli_preprocess_writes_series_and_invertible_geometry(tmp_path):
    import nibabel as nib
    from PerfusionSegLib.cli import main

    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    lv = _write_input(a)
    _write_input(b, seed=1)
    before = a.read_bytes()
    out = tmp_path / "out"
    assert main(["preprocess", str(a), str(b), "--out", str(out), "--size", "64", "--frames", "16"]) == 0
    assert a.read_bytes() == before
    for stem in ("a", "b"):
        img = nib.load(str(out / f"{stem}_network.nii.gz"))
        assert img.shape == (64, 64, 1, 16)
        assert np.allclose(img.header.get_zooms()[:2], 1.0)
        geo = NetworkGeometry.from_json((out / f"{stem}_geometry.json").read_text())
        assert geo.input_shape == (48, 56) and geo.output_size == 64 and geo.center_source.startswith("auto")
    geo = NetworkGeometry.from_json((out / "a_geometry.json").read_text())
    assert lv[int(round(geo.center_yx[0])), int(round(geo.center_yx[1]))]
    assert not list(out.glob(".*.tmp*"))


def test_cli_preprocess_daugs_and_bad_input(tmp_path, capsys):
    from PerfusionSegLib.cli import main

    good = tmp_path / "good.nii.gz"
    _write_input(good)
    out = tmp_path / "out"
    assert main(["preprocess", str(good), "--out", str(out), "--method", "daugs", "--center", "26", "32"]) == 0
    geo = json.loads((out / "good_geometry.json").read_text())
    assert geo["zoom"] == [2.0, 2.0] and geo["output_size"] == 128 and geo["temporal"] == "pchip"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 4)))
    out2 = tmp_path / "out2"
    assert main(["preprocess", str(good), str(bad), "--out", str(out2)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]   # tqdm shares stderr
    assert len(err) == 1 and "bad.npy" in err[0]
    assert not out2.exists()
    assert main(["preprocess", str(good), "--out", str(out2), "--target-spacing", "1", "--scale", "2"]) == 2
