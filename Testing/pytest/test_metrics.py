"""Metrics on shapes with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from PerfusionSegLib import metrics as M
from PerfusionSegLib.errors import InvalidLabelsError, InvalidParameterError


def square(shape, y0, x0, side):
    m = np.zeros(shape, bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def disc(shape, cy, cx, r):
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_overlap_of_shifted_squares():
    a = square((40, 40), 10, 10, 20)
    b = square((40, 40), 10, 15, 20)          # overlap 20 x 15 = 300 of 400 each
    assert M.dice(a, b) == pytest.approx(0.75)
    assert M.jaccard(a, b) == pytest.approx(300 / 500)
    assert M.false_positive_fraction(a, b) == pytest.approx(0.25)
    assert M.false_negative_fraction(a, b) == pytest.approx(0.25)
    assert M.precision(a, b) == pytest.approx(0.75)
    assert M.recall(a, b) == pytest.approx(0.75)
    small = square((40, 40), 10, 10, 10)       # inside a: precision 1, recall 1/4, FN 3/4, FP 0
    assert M.precision(small, a) == 1.0 and M.recall(small, a) == 0.25
    assert M.false_negative_fraction(small, a) == 0.75 and M.false_positive_fraction(small, a) == 0.0


def test_overlap_of_two_discs_matches_the_lens_area():
    r, d = 60.0, 50.0
    a, b = disc((200, 260), 100, 100, r), disc((200, 260), 100, 100 + d, r)
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    expected = lens / (math.pi * r * r)                  # Dice of equal discs = overlap / area
    assert M.dice(a, b) == pytest.approx(expected, abs=0.01)
    assert M.jaccard(a, b) == pytest.approx(expected / (2 - expected), abs=0.01)


def test_empty_masks_give_nan_not_a_fake_score():
    e = np.zeros((5, 5), bool)
    assert math.isnan(M.dice(e, e)) and math.isnan(M.recall(e, e))
    assert math.isnan(M.boundary_distances(e, square((5, 5), 1, 1, 2))["hd_mm"])
    with pytest.raises(InvalidLabelsError):
        M.dice(e, np.zeros((4, 4), bool))


def test_hausdorff_of_shifted_squares_in_mm():
    a = square((40, 50), 10, 10, 20)
    b = square((40, 50), 10, 13, 20)       # shifted 3 columns
    d = M.boundary_distances(a, b, spacing=(1.5, 2.0))
    assert d["hd_mm"] == pytest.approx(6.0)            # 3 columns x 2 mm
    assert 0 < d["hd95_mm"] <= d["hd_mm"] and 0 < d["mbe_mm"] < d["hd_mm"]
    d_rows = M.boundary_distances(a, square((40, 50), 14, 10, 20), spacing=(1.5, 2.0))
    assert d_rows["hd_mm"] == pytest.approx(6.0)       # 4 rows x 1.5 mm
    same = M.boundary_distances(a, a, spacing=(1.5, 2.0))
    assert same == {"mbe_mm": 0.0, "hd_mm": 0.0, "hd95_mm": 0.0}


def test_concentric_discs_boundary_error_is_the_radius_difference():
    a, b = disc((120, 120), 60, 60, 40), disc((120, 120), 60, 60, 30)
    d = M.boundary_distances(a, b, spacing=(0.5, 0.5))
    assert d["mbe_mm"] == pytest.approx(5.0, abs=0.5)   # 10 px x 0.5 mm
    assert d["hd_mm"] == pytest.approx(5.0, abs=0.6)


def ring_labels(shape=(80, 80), c=(40, 40), r_endo=10, r_epi=16, rv=True):
    yy, xx = np.indices(shape)
    d = np.hypot(yy - c[0], xx - c[1])
    lab = np.zeros(shape, np.uint8)
    if rv:
        lab[np.hypot(yy - c[0], (xx - c[1] + 22) / 0.6) < 10] = 3
    lab[d < r_epi] = 2
    lab[d < r_endo] = 1
    return lab


def test_evaluate_pair_per_structure_and_borders():
    ref = ring_labels()
    same = M.evaluate_pair(ref, ref, (1.2, 1.2))
    for name in ("blood_pool", "myocardium", "rv"):
        assert same[name]["dice"] == 1.0 and same[name]["hd_mm"] == 0.0
    pred = ring_labels(r_endo=12)                         # endocardium 2 px too far out, epicardium right
    res = M.evaluate_pair(pred, ref, (1.2, 1.2))
    assert res["epi"]["hd_mm"] == 0.0
    assert res["endo"]["mbe_mm"] == pytest.approx(2.4, abs=0.4)
    assert res["blood_pool"]["fp"] > 0 and res["blood_pool"]["fn"] == 0
    assert res["myocardium"]["fn"] > 0 and res["myocardium"]["fp"] == 0
    flat = M.flatten(res)
    assert "myocardium_dice" in flat and "endo_hd95_mm" in flat


def test_angle_errors_are_circular():
    assert M.angle_error(350, 10) == pytest.approx(20)
    assert M.angle_error(10, 350) == pytest.approx(20)
    assert M.angle_error(0, 180) == pytest.approx(180)
    np.testing.assert_allclose(M.angle_error([90, 720], [0, 0]), [90, 0])
    # a point straight right of the centre vs straight below: 90 degrees
    assert M.insertion_angle_error((10, 20), (20, 10), (10, 10)) == pytest.approx(90)
    # anisotropic pixels change the physical angle: (1 row of 2 mm, 1 column of 1 mm) -> atan(2) from the x axis
    assert M.point_angle((11, 11), (10, 10), spacing=(2.0, 1.0)) == pytest.approx(math.degrees(math.atan(2)))


def test_hd95_ignores_a_thin_spike_that_sets_the_hausdorff_distance():
    ref = np.zeros((100, 100), bool)
    ref[20:80, 20:80] = True
    pred = ref.copy()
    pred[50, 80:90] = True                        # a 10-pixel spike, 1 pixel wide, on the right edge
    d = M.boundary_distances(pred, ref, spacing=(1.0, 1.0))
    assert d["hd_mm"] == pytest.approx(10.0)      # the spike's tip, 10 px from the square's border
    assert d["hd95_mm"] <= 1.0                    # its 10 border pixels are under 5 % of the ~245
    wide = ref.copy()
    wide[45:55, 80:90] = True                     # a 10 x 10 bump: too much border to be an outlier
    assert M.hausdorff95(wide, ref) > 5.0
    # anisotropic pixels scale the distance along x: 0.5 mm columns -> 5 mm
    assert M.hausdorff(pred, ref, spacing=(1.0, 0.5)) == pytest.approx(5.0)


def test_t_tests_match_their_formulas():
    a = np.array([5.1, 4.9, 5.6, 5.8, 6.0, 5.2, 4.7])
    b = np.array([4.2, 4.8, 4.1, 5.0, 3.9, 4.4, 4.6, 3.8, 4.0])
    na, nb, va, vb = a.size, b.size, a.var(ddof=1), b.var(ddof=1)
    pooled = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    t_student = (a.mean() - b.mean()) / math.sqrt(pooled * (1 / na + 1 / nb))
    t_welch = (a.mean() - b.mean()) / math.sqrt(va / na + vb / nb)
    df_welch = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    student, welch = M.unpaired_ttest(a, b), M.unpaired_ttest(a, b, equal_var=False)
    assert student["t"] == pytest.approx(t_student) and welch["t"] == pytest.approx(t_welch)
    from scipy import stats
    assert student["p"] == pytest.approx(2 * stats.t.sf(abs(t_student), na + nb - 2))
    assert welch["p"] == pytest.approx(2 * stats.t.sf(abs(t_welch), df_welch))
    d = a[:7] - b[:7]                               # paired: t = mean(d) / (sd(d) / sqrt(n))
    assert M.paired_ttest(a[:7], b[:7])["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(7)))


def test_bland_altman_and_tests():
    ba = M.bland_altman([3.0, 4.0, 5.0], [1.0, 2.0, 2.0])       # differences 2, 2, 3
    assert ba["bias"] == pytest.approx(7 / 3)
    assert ba["sd"] == pytest.approx(np.std([2, 2, 3], ddof=1))
    assert ba["loa_high"] - ba["loa_low"] == pytest.approx(2 * 1.96 * ba["sd"])
    with pytest.raises(InvalidParameterError):
        M.bland_altman([1.0], [2.0])
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 30)
    assert M.paired_ttest(a + 1.0, a + rng.normal(0, 0.1, 30))["p"] < 1e-6   # a consistent shift is detected
    assert M.unpaired_ttest(a, a)["p"] == pytest.approx(1.0)
    # 3 of 3 failures vs 0 of 3: p = 2 * C(3,3) C(3,0) / C(6,3) = 0.1
    assert M.fisher_exact([[3, 0], [0, 3]])["p"] == pytest.approx(0.1)
    with pytest.raises(InvalidParameterError):
        M.fisher_exact([[1, 2, 3], [4, 5, 6]])


def test_rv_insertion_angle_error_of_a_rotated_rv():
    from scipy import ndimage
    ref = ring_labels(shape=(81, 81), c=(40, 40), rv=False)
    yy, xx = np.indices(ref.shape)
    crescent = (np.hypot(yy - 40, xx - 30) < 22) & (np.hypot(yy - 40, xx - 40) >= 16) & (xx < 40)
    ref[crescent] = 3                                    # an RV hugging the septum on the left
    rv = ndimage.rotate((ref == 3).astype(np.uint8), 25, reshape=False, order=0).astype(bool)
    pred = ref.copy()
    pred[pred == 3] = 0
    pred[rv & (pred == 0)] = 3
    err = M.insertion_angle_errors(pred, ref, (1.0, 1.0))
    assert err["anterior_deg"] == pytest.approx(25, abs=6) and err["inferior_deg"] == pytest.approx(25, abs=6)
    assert M.insertion_angle_errors(ref, ref)["anterior_deg"] == 0.0
    no_rv = ref.copy()
    no_rv[no_rv == 3] = 0
    assert math.isnan(M.evaluate_pair(no_rv, ref)["rv_insertion"]["anterior_deg"])
