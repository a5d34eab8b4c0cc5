"""AHA model: insertion points, sectors, territories, levels, per-segment statistics, the report and its CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from PerfusionSegLib import aha
from PerfusionSegLib.aha import (InsertionPoints, aha_sector_map, find_insertion_points, sector_angles,
                                 segment_of_aha_angle, slice_levels, territory_map)
from PerfusionSegLib.errors import InvalidLabelsError, InvalidParameterError
from PerfusionSegLib.segment_stats import perfusion_reserve, segment_statistics


def _ad(a, b) -> float:
    d = abs((a - b) % 360.0)
    return min(d, 360.0 - d)


def synthetic_short_axis(shape=(96, 96), spacing=(2.0, 2.0), rotation_deg=0.0, mirror=False, r_endo=18.0, r_epi=27.0,
                         rv_distance=40.0, septal_half_deg=60.0, rv=True):
    """A standard short-axis view (RV on the screen left, anterior up) rotated on screen by ``rotation_deg`` (image
    angles grow by it) and optionally mirrored left-right. The RV blood pool is a disc minus the LV, so the exact
    insertion points are where its circle crosses the epicardium, ``septal_half_deg`` either side of the septum.

    Returns labels, {anterior/inferior: image angle}, a function mapping an AHA angle (deg) and radius (mm) to the
    nearest (y, x) pixel, and the voxel-to-patient matrix (columns reversed when mirrored)."""
    sy, sx = spacing
    ny, nx = shape
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    rho = math.sqrt(rv_distance ** 2 + r_epi ** 2 - 2 * rv_distance * r_epi * math.cos(math.radians(septal_half_deg)))
    yy, xx = np.indices(shape, dtype=float)
    y, x = (yy - cy) * sy, (xx - cx) * sx
    if mirror:
        x = -x
    a = math.radians(-rotation_deg)   # back to the standard frame
    u, v = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
    r = np.hypot(u, v)
    lab = np.zeros(shape, np.uint8)
    lab[r < r_endo] = 1
    lab[(r >= r_endo) & (r < r_epi)] = 2
    if rv:
        lab[(np.hypot(u + rv_distance, v) < rho) & (r >= r_epi)] = 3

    def image_angle(std_angle):
        t = std_angle + rotation_deg
        return (180.0 - t) % 360.0 if mirror else t % 360.0

    # standard frame: anterior insertion up-left (180 + half), septum at 180, AHA angles turn counter-clockwise on
    # screen = decreasing standard angle
    truth = {"anterior": image_angle(180.0 + septal_half_deg), "inferior": image_angle(180.0 - septal_half_deg)}

    def pixel_at(aha_deg, radius_mm):
        t = math.radians(image_angle(180.0 + septal_half_deg - aha_deg))
        return int(round(cy + radius_mm * math.sin(t) / sy)), int(round(cx + radius_mm * math.cos(t) / sx))

    # patient geometry consistent with the picture: the standard frame is an axial view from the feet (x patient
    # left, y posterior); the screen rotation and the mirror act on the column and row directions
    a = math.radians(-rotation_deg)
    affine = np.eye(4)
    affine[:3, 0] = np.array([math.cos(a), math.sin(a), 0.0]) * sx * (-1.0 if mirror else 1.0)
    affine[:3, 1] = np.array([-math.sin(a), math.cos(a), 0.0]) * sy
    affine[2, 2] = 8.0
    return lab, truth, pixel_at, affine


ORIENTATIONS = [(rot, mirror) for rot in (0.0, 37.0, 100.0, 200.0, 290.0) for mirror in (False, True)]


@pytest.mark.parametrize("rotation,mirror", ORIENTATIONS)
def test_insertion_points_any_rotation_and_mirror_with_geometry(rotation, mirror):
    lab, truth, _, affine = synthetic_short_axis(rotation_deg=rotation, mirror=mirror)
    ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=affine)
    assert ip.source == "auto" and not ip.flagged and ip.direction_source == "affine"
    # within about one pixel (2 mm at the 27 mm epicardial radius = 4.2 degrees) of the exact crossing
    assert _ad(ip.anterior_angle_deg, truth["anterior"]) < 5.0
    assert _ad(ip.inferior_angle_deg, truth["inferior"]) < 5.0
    assert 110.0 < ip.rv_arc_deg < 125.0
    # on screen, anterior -> septum turns counter-clockwise (image angles decrease) unless the image is mirrored
    assert ip.septum_direction == (1 if mirror else -1)
    assert _ad(ip.image_angle(60.0), (180.0 + rotation) if not mirror else (-rotation) % 360.0) < 4.0   # mid-septum


@pytest.mark.parametrize("rotation,mirror", ORIENTATIONS)
def test_sector_of_an_anatomical_location_does_not_depend_on_orientation(rotation, mirror):
    lab, _, pixel_at, affine = synthetic_short_axis(rotation_deg=rotation, mirror=mirror)
    ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=affine)
    mid_wall = 22.5
    for level, expected in (("basal", (2, 3, 4, 5, 6, 1)), ("mid", (8, 9, 10, 11, 12, 7))):
        sm = aha_sector_map(lab, level, ip)
        for k, seg in enumerate(expected):   # centres of the 60-degree sectors
            assert sm[pixel_at(30.0 + 60.0 * k, mid_wall)] == seg, (level, k)
    sm = aha_sector_map(lab, "apical", ip)
    for phi, seg in ((60.0, 14), (150.0, 15), (240.0, 16), (330.0, 13)):
        assert sm[pixel_at(phi, mid_wall)] == seg
    assert set(np.unique(sm[lab == 2])) == {13, 14, 15, 16}
    assert np.all(sm[lab != 2] == 0)


def test_patient_geometry_that_contradicts_the_anatomy_is_flagged():
    lab, truth, _, _ = synthetic_short_axis(rotation_deg=180.0)   # heart upside down in an axial-looking frame
    ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=np.diag([2.0, 2.0, 8.0, 1.0]))
    assert ip.flagged and "disagrees" in ip.note
    assert _ad(ip.anterior_angle_deg, truth["anterior"]) < 4.0   # the decision itself follows the handedness


def test_mirror_without_geometry_follows_the_documented_convention_and_hints_fix_it():
    lab, truth, _, _ = synthetic_short_axis(rotation_deg=20.0, mirror=True)
    ip = find_insertion_points(lab, spacing=(2.0, 2.0))
    # no geometry: the image is taken as an unmirrored view, so a mirrored one gets the ends swapped (documented)
    assert ip.direction_source == "convention" and "convention" in ip.note
    assert _ad(ip.anterior_angle_deg, truth["inferior"]) < 4.0
    fixed = find_insertion_points(lab, spacing=(2.0, 2.0), mirrored=True)
    assert _ad(fixed.anterior_angle_deg, truth["anterior"]) < 4.0 and fixed.direction_source == "given"
    # a user click near the anterior end decides too (and is used as the anterior point)
    cy, cx = (np.asarray(lab.shape) - 1) / 2.0
    t = math.radians(truth["anterior"] + 3.0)
    user = (cy + 13.5 * math.sin(t), cx + 13.5 * math.cos(t))
    by_user = find_insertion_points(lab, spacing=(2.0, 2.0), user_anterior_yx=user)
    assert by_user.source == "user" and by_user.direction_source == "user" and not by_user.flagged
    assert _ad(by_user.anterior_angle_deg, truth["anterior"]) < 5.0
    assert _ad(by_user.inferior_angle_deg, truth["inferior"]) < 4.0
    # a prior angle (from a neighbouring slice) picks the nearer end
    by_prior = find_insertion_points(lab, spacing=(2.0, 2.0), prior_angle_deg=truth["anterior"] + 10.0)
    assert by_prior.direction_source == "prior" and _ad(by_prior.anterior_angle_deg, truth["anterior"]) < 4.0


def test_detection_error_on_anisotropic_pixels_and_arc_widths():
    errors = []
    for half, rot in ((45.0, 10.0), (55.0, 130.0), (70.0, 250.0)):
        lab, truth, _, affine = synthetic_short_axis(shape=(80, 120), spacing=(2.4, 1.6), rotation_deg=rot,
                                                     septal_half_deg=half)
        ip = find_insertion_points(lab, spacing=(2.4, 1.6), affine=affine)
        errors += [_ad(ip.anterior_angle_deg, truth["anterior"]), _ad(ip.inferior_angle_deg, truth["inferior"])]
    assert np.mean(errors) < 3.5 and max(errors) < 6.0


def test_missing_or_tiny_rv_falls_back_and_flags():
    lab, truth, _, _ = synthetic_short_axis(rv=False)
    ip = find_insertion_points(lab)
    assert ip.source == "prior" and ip.flagged and "missing" in ip.note
    assert _ad(ip.anterior_angle_deg, 240.0) < 1e-6 and _ad(ip.inferior_angle_deg, 120.0) < 1e-6  # RV assumed screen-left
    ip = find_insertion_points(lab, prior_angle_deg=200.0)
    assert ip.source == "prior" and ip.flagged and _ad(ip.anterior_angle_deg, 200.0) < 1e-6
    ip = find_insertion_points(lab, user_anterior_yx=(10.0, 47.5))
    assert ip.source == "user" and not ip.flagged and _ad(ip.anterior_angle_deg, 270.0) < 1e-6
    assert _ad(ip.inferior_angle_deg, 150.0) < 1e-6   # 120 degrees toward the (conventional) septum
    # a sliver of RV (a few pixels) is not trusted
    tiny = lab.copy()
    tiny[46:48, 12:16] = 3
    tiny[46:48, 16:21] = 0
    ip = find_insertion_points(tiny)
    assert ip.source == "prior" and ip.flagged
    # sectors still come out complete from the fallback
    sm = aha_sector_map(lab, "mid", find_insertion_points(lab))
    assert set(np.unique(sm[lab == 2])) == set(range(7, 13))


def test_rv_contact_interrupted_by_an_outflow_tract_is_bridged():
    lab, truth, _, affine = synthetic_short_axis(rotation_deg=0.0)
    ang = aha.image_angles(lab.shape, ((lab.shape[0] - 1) / 2.0,) * 2, (2.0, 2.0))
    # knock out 25 degrees of RV contact near the anterior end (aortic root pushing the RV off the LV)
    gap = (lab == 3) & (np.abs(((ang - (truth["anterior"] - 18.0)) + 180) % 360 - 180) < 12.5)
    lab[gap] = 0
    ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=affine)
    assert _ad(ip.anterior_angle_deg, truth["anterior"]) < 4.0 and not ip.flagged


def test_sector_angles_and_offsets():
    assert sector_angles("apical") == [(14, 15.0, 105.0), (15, 105.0, 195.0), (16, 195.0, 285.0), (13, 285.0, 375.0)]
    assert sector_angles("basal")[0] == (2, 0.0, 60.0) and sector_angles("basal")[-1] == (1, 300.0, 360.0)
    assert [s for s, _, _ in sector_angles("mid")] == [8, 9, 10, 11, 12, 7]
    phi = np.array([0.0, 59.9, 60.0, 119.9, 120.0, 180.0, 240.0, 300.0, 359.9])
    assert segment_of_aha_angle(phi, "basal").tolist() == [2, 2, 3, 3, 4, 5, 6, 1, 1]
    assert segment_of_aha_angle(phi, "mid").tolist() == [8, 8, 9, 9, 10, 11, 12, 7, 7]
    assert segment_of_aha_angle([0.0, 14.9, 15.0, 104.9, 105.0, 194.9, 195.0, 284.9, 285.0, 359.0], "apical").tolist() == \
        [13, 13, 14, 14, 15, 15, 16, 16, 13, 13]
    ip = InsertionPoints((0, 0), (0, 0), 100.0, 220.0, (0, 0), +1, "auto", False)
    assert sector_angles("basal", ip)[0] == (2, 100.0, 160.0)
    ip = InsertionPoints((0, 0), (0, 0), 100.0, 340.0, (0, 0), -1, "auto", False)
    assert sector_angles("apical", ip)[0] == (14, 85.0, 355.0)
    with pytest.raises(InvalidParameterError):
        sector_angles("apex")


def test_territory_map():
    sm = np.arange(18, dtype=np.uint8).reshape(3, 6)
    t = territory_map(sm)
    expected = {0: 0, 17: 0, 1: 1, 2: 1, 7: 1, 8: 1, 13: 1, 14: 1, 3: 2, 4: 2, 9: 2, 10: 2, 15: 2,
                5: 3, 6: 3, 11: 3, 12: 3, 16: 3}
    assert all(t.flat[i] == expected[i] for i in range(18))
    assert {aha.TERRITORY_OF_SEGMENT[s] for s in range(1, 17)} == {"LAD", "RCA", "LCX"}
    with pytest.raises(InvalidLabelsError):
        territory_map(np.array([[20]]))


def test_invalid_labels_are_typed_errors():
    lab, *_ = synthetic_short_axis()
    with pytest.raises(InvalidLabelsError):
        find_insertion_points(lab.astype(float) + 0.5)
    with pytest.raises(InvalidLabelsError):
        find_insertion_points(np.where(lab == 3, 7, lab))
    with pytest.raises(InvalidLabelsError):
        find_insertion_points(np.where(lab == 2, 0, lab))   # no myocardium
    with pytest.raises(InvalidLabelsError):
        find_insertion_points(np.stack([lab, lab]))
    with pytest.raises(InvalidParameterError):
        find_insertion_points(lab, spacing=(0, 1))
    with pytest.raises(InvalidParameterError):
        aha_sector_map(lab, "mid", "not insertion points")


def test_slice_levels_from_positions_and_geometry():
    from PerfusionSegLib.series import SliceSeries

    assert slice_levels([0.0, -12.0, -24.0]) == ["basal", "mid", "apical"]
    assert slice_levels([-24.0, -12.0, 0.0]) == ["basal", "mid", "apical"]          # first given = basal end
    assert slice_levels([-24.0, -12.0, 0.0], basal_first=False) == ["apical", "mid", "basal"]
    assert slice_levels([10.0, 0.0, -10.0, -20.0, -30.0, -40.0]) == ["basal", "basal", "mid", "mid", "apical", "apical"]
    assert slice_levels([5.0]) == ["mid"]

    def series(z):
        a = np.diag([2.0, 2.0, 8.0, 1.0])
        a[2, 3] = z
        rng = np.random.default_rng(0)
        return SliceSeries(data=rng.random((10, 16, 16), dtype=np.float32), times=np.arange(10.0), spacing=(2, 2),
                           affine=a)
    # patient geometry: the apex lies inferior (-z) of the base, whatever the order given
    assert slice_levels([series(-20.0), series(0.0), series(-10.0)]) == ["apical", "basal", "mid"]
    with pytest.raises(InvalidParameterError):
        slice_levels(["a", "b"])


def test_segment_statistics_match_numpy():
    rng = np.random.default_rng(1)
    lab, _, _, affine = synthetic_short_axis()
    ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=affine)
    sms = [aha_sector_map(lab, lv, ip) for lv in aha.LEVELS]
    maps = [rng.normal(2.0 + i, 0.5, lab.shape) for i in range(3)]
    maps[1][rng.random(lab.shape) < 0.3] = np.nan          # partial coverage in the mid slice
    st = segment_statistics(maps, sms, units="ml/min/g", condition="stress")
    for s in range(1, 17):
        i = 0 if s <= 6 else 1 if s <= 12 else 2
        sel = sms[i] == s
        v = maps[i][sel]
        f = v[np.isfinite(v)]
        r = st.segments[s]
        assert r.n_pixels == sel.sum() and r.n_valid == f.size
        assert r.coverage == pytest.approx(f.size / sel.sum())
        assert r.mean == pytest.approx(f.mean()) and r.median == pytest.approx(np.median(f))
        assert r.sd == pytest.approx(f.std(ddof=1))
    allv = np.concatenate([m[s > 0] for m, s in zip(maps, sms)])
    assert st.global_.mean == pytest.approx(np.nanmean(allv))
    assert st.global_.n_pixels == allv.size
    lad = np.concatenate([m[np.isin(s, aha.SEGMENTS_OF_TERRITORY["LAD"])] for m, s in zip(maps, sms)])
    assert st.territories["LAD"].mean == pytest.approx(np.nanmean(lad))
    assert st.segments[7].coverage < 0.9 and st.segments[1].coverage == 1.0
    rows = st.to_rows()
    assert len(rows) == 20 and rows[0]["region"] == "1" and rows[-1]["region"] == "global"
    json.dumps(st.to_dict(), allow_nan=False)
    # a segment absent from every slice has NaN statistics, not an error
    st2 = segment_statistics(maps[0], sms[0])
    assert st2.segments[9].n_pixels == 0 and np.isnan(st2.segments[9].mean) and np.isnan(st2.segments[9].coverage)
    with pytest.raises(InvalidParameterError):
        segment_statistics(maps[:2], sms)


def test_perfusion_reserve():
    lab, _, _, affine = synthetic_short_axis()
    ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=affine)
    sm = aha_sector_map(lab, "mid", ip)
    stress = np.where(sm > 0, 3.0, np.nan)
    stress[territory_map(sm) == 2] = 1.5
    rest = np.where(sm > 0, 1.0, np.nan)
    mpr = perfusion_reserve(segment_statistics(stress, sm), segment_statistics(rest, sm)).by_region()
    assert mpr["7"].reserve == pytest.approx(3.0) and mpr["9"].reserve == pytest.approx(1.5)
    assert mpr["RCA"].reserve == pytest.approx(1.5) and np.isnan(mpr["1"].reserve)
    assert 1.5 < mpr["global"].reserve < 3.0


def _report_slices(scale=1.0, rotation=0.0):
    out = []
    for i, lv in enumerate(aha.LEVELS):
        lab, _, _, affine = synthetic_short_axis(shape=(64, 64), rotation_deg=rotation + 20 * i, r_endo=15 - 3 * i,
                                                 r_epi=23 - 3 * i, rv_distance=34 - 3 * i)
        ip = find_insertion_points(lab, spacing=(2.0, 2.0), affine=affine)
        sm = aha_sector_map(lab, lv, ip)
        m = np.where(sm > 0, scale * (1.0 + 0.1 * sm), np.nan)
        out.append({"level": lv, "image": (lab > 0).astype(float), "labels": lab, "sector_map": sm, "map": m,
                    "insertion": ip})
    return out


def test_bullseye_layout_matches_the_aha_convention():
    from PerfusionSegLib.report import segment_centre_angle

    assert segment_centre_angle(1) == 90.0 and segment_centre_angle(7) == 90.0 and segment_centre_angle(13) == 90.0
    # counter-clockwise: anteroseptal upper left, inferior at the bottom, septal apical on the left
    assert segment_centre_angle(2) == 150.0 and segment_centre_angle(4) == 270.0 and segment_centre_angle(6) == 30.0
    assert segment_centre_angle(14) == 180.0 and segment_centre_angle(16) == 0.0


def test_report_files_are_written_and_complete(tmp_path):
    from PIL import Image

    from PerfusionSegLib.report import write_report

    paths = write_report(tmp_path / "rep", _report_slices(3.0), rest_slices=_report_slices(1.0, rotation=15.0),
                         title="test report")
    assert set(paths) == {"bullseye", "slices_stress", "slices_rest", "html", "json", "csv"}
    for k in ("bullseye", "slices_stress", "slices_rest"):
        with Image.open(paths[k]) as im:
            assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page
    assert all(f"<td>{s}</td><td>{aha.AHA_SEGMENT_NAMES[s]}</td>" in page for s in range(1, 17))
    lines = paths["csv"].read_text().strip().splitlines()
    assert len(lines) == 1 + 16 + 3 + 1 and lines[0].startswith("region,name,territory,level,stress_mean")
    row7 = dict(zip(lines[0].split(","), lines[7].split(",")))
    assert float(row7["stress_mean"]) == pytest.approx(3.0 * 1.7) and float(row7["rest_mean"]) == pytest.approx(1.7)
    assert float(row7["reserve"]) == pytest.approx(3.0)
    doc = json.loads(paths["json"].read_text())
    assert doc["stress"]["segments"]["16"]["mean"] == pytest.approx(3.0 * 2.6)
    assert {r["region"] for r in doc["reserve"]["rows"]} >= {"1", "16", "LAD", "global"}
    assert len(doc["slices"]) == 6 and doc["slices"][0]["insertion"]["source"] == "auto"
    assert not list((tmp_path / "rep").glob(".*tmp*"))   # no temporary files left


def test_report_stress_only_and_bad_input(tmp_path):
    from PerfusionSegLib.report import write_report

    paths = write_report(tmp_path / "one", _report_slices())
    assert set(paths) == {"bullseye", "slices_stress", "html", "json", "csv"}
    assert "reserve" not in json.loads(paths["json"].read_text())
    bad = _report_slices()
    bad[0] = dict(bad[0], map=np.zeros((5, 5)))
    with pytest.raises(InvalidParameterError):
        write_report(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()


def test_cli_report(tmp_path, capsys):
    from PerfusionSegLib.cli import main
    from PerfusionSegLib.writers import write_labels, write_map

    labels, maps, rests = [], [], []
    for sl in _report_slices(2.0):
        lv = sl["level"]
        labels.append(str(write_labels(sl["labels"], tmp_path / f"lab_{lv}.nii.gz", spacing=(2, 2))))
        maps.append(str(write_map(sl["map"], tmp_path / f"mbf_{lv}.nii.gz", spacing=(2, 2))))
        rests.append(str(tmp_path / f"rest_{lv}.npy"))
        np.save(rests[-1], sl["map"] / 2.0)   # NumPy maps are (Y, X)
    out = tmp_path / "out"
    assert main(["report", "--labels", *labels, "--map", *maps, "--rest-map", *rests, "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["reserve"]["rows"][0]["reserve"] == pytest.approx(2.0)
    assert doc["stress"]["segments"]["1"]["mean"] == pytest.approx(2.0 * 1.1)
    assert (out / "sectors_mid.nii.gz").exists() and (out / "territories_apical.nii.gz").exists()
    import nibabel as nib
    on_disk = np.asarray(nib.load(str(out / "sectors_basal.nii.gz")).dataobj)[:, :, 0].T   # (X, Y, 1) -> (Y, X)
    assert set(np.unique(on_disk)) == set(range(7)) and np.array_equal(on_disk > 0, np.isfinite(_report_slices()[0]["map"]))
    capsys.readouterr()
    assert main(["report", "--labels", labels[0], "--map", *maps[:2], "--out", str(tmp_path / "x")]) == 2
    assert "one map per label map" in capsys.readouterr().err
    assert main(["report", "--labels", str(tmp_path / "missing.nii.gz"), "--map", maps[0], "--out", str(tmp_path / "x")]) == 2
    assert main(["report", "--labels", maps[0], "--map", maps[0], "--out", str(tmp_path / "x")]) == 2
    assert main(["report", "--labels", labels[0], "--map", maps[1], "--anterior", "3", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_stack_lends_a_neighbours_angle_to_a_slice_without_rv():
    from PerfusionSegLib.aha import find_insertion_points_stack

    with_rv, truth, _, affine = synthetic_short_axis(rotation_deg=75.0, mirror=True)
    no_rv, *_ = synthetic_short_axis(rotation_deg=75.0, mirror=True, rv=False)
    ips = find_insertion_points_stack([with_rv, no_rv], spacing=(2.0, 2.0), affines=[affine, None])
    assert ips[0].source == "auto" and ips[1].source == "prior" and ips[1].flagged
    assert ips[1].direction_source == "slice 1" and ips[1].septum_direction == ips[0].septum_direction
    assert _ad(ips[1].anterior_angle_deg, ips[0].anterior_angle_deg) < 1e-6
    assert _ad(ips[1].anterior_angle_deg, truth["anterior"]) < 5.0


def test_real_labels_without_rv_get_complete_flagged_sectors():
    from conftest import shared_path
    from PerfusionSegLib.readers import load_labels

    path = shared_path("daugs_dev", "Labels", "Fig6-exD1-Mid.mat")
    labels, _ = load_labels(path)               # DAUGS codes: myocardium and LV blood pool, no RV
    ip = find_insertion_points(labels, spacing=(0.9, 0.9))
    assert ip.source == "prior" and ip.flagged and "RV blood pool missing" in ip.note
    sm = aha_sector_map(labels, "mid", ip)
    assert np.array_equal(sm > 0, labels == 2)
    counts = [int((sm == s).sum()) for s in range(7, 13)]
    assert min(counts) > 0.5 * max(counts)       # the 60-degree sectors of a near-circular ring are similar in size
