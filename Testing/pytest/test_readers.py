"""Readers: every format round-trips through writers.py (values, spacing, times, matrix), DICOM time tags and PD frames
on synthetic files, and the real data in ../shared/data (skipped with a reason when absent)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_path
import synthetic_dicom
from PerfusionSegLib import readers
from PerfusionSegLib.errors import (AmbiguousInputError, InvalidLabelsError, MissingGeometryError)
from PerfusionSegLib.series import SliceSeries
from PerfusionSegLib.writers import write_labels, write_series


def oblique_affine(dy=1.5, dx=1.25):
    r = np.array([0.8, 0.6, 0.0])
    c = np.array([-0.2 * 0.6 / 0.6, 0.26667, -0.94281])
    c -= r * np.dot(r, c)
    c /= np.linalg.norm(c)
    n = np.cross(r, c)
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = r * dx, c * dy, n * 8.0, [-40.0, -120.0, 60.0]
    return a


def make_series(t=12, ny=20, nx=16, **kw) -> SliceSeries:
    rng = np.random.default_rng(1)
    data = rng.normal(100, 10, size=(t, ny, nx)).astype(np.float32)
    times = synthetic_dicom.default_times(t)   # irregular: one missed trigger
    args = dict(data=data, times=times, spacing=(1.5, 1.25), affine=oblique_affine(), level="mid", condition="stress")
    args.update(kw)
    return SliceSeries(**args)


# --- round trips through writers.py -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["s.nii.gz", "s.nii", "s.nrrd", "s.seq.nrrd"])
def test_written_series_read_back_exactly(tmp_path, name):
    s = make_series()
    path = write_series(s, tmp_path / name)
    r = readers.load_series(path)
    np.testing.assert_array_equal(r.data, s.data)
    np.testing.assert_allclose(r.spacing, s.spacing, rtol=1e-6)
    np.testing.assert_allclose(r.times, s.times, atol=1e-5)      # irregular times kept (side-car or index values)
    assert not r.is_regular
    np.testing.assert_allclose(r.affine[:3, :2], s.affine[:3, :2], atol=1e-5)
    np.testing.assert_allclose(r.affine[:3, 3], s.affine[:3, 3], atol=1e-4)
    assert (r.level, r.condition, r.units) == ("mid", "stress", "signal")


def test_nifti_without_sidecar_uses_the_header_interval(tmp_path):
    s = make_series()
    path = write_series(s, tmp_path / "s.nii.gz")
    (tmp_path / "s.times.json").unlink()
    r = readers.load_series(path)
    np.testing.assert_allclose(np.diff(r.times), s.median_interval, rtol=1e-6)


def test_spacing_and_dt_overrides_win_and_are_recorded(tmp_path):
    path = write_series(make_series(), tmp_path / "s.nrrd")
    r = readers.load_series(path, spacing=2.0, dt=0.5)
    assert r.spacing == (2.0, 2.0)
    np.testing.assert_allclose(r.times, np.arange(12) * 0.5)
    np.testing.assert_allclose(np.linalg.norm(r.affine[:3, 0]), 2.0)
    assert r.metadata["spacing_source"] == "--spacing override" and r.metadata["time_source"] == "--dt override"


def test_nifti_xyt_with_time_unit(tmp_path):
    import nibabel as nib

    xyt = np.random.default_rng(0).random((16, 20, 15)).astype(np.float32)
    img = nib.Nifti1Image(xyt, np.diag([1.4, 1.6, 0.7, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((1.4, 1.6, 700.0))
    nib.save(img, str(tmp_path / "xyt.nii"))
    r = readers.load_series(tmp_path / "xyt.nii")
    assert r.data.shape == (15, 20, 16)
    np.testing.assert_array_equal(r.data[3], xyt[:, :, 3].T)
    assert r.spacing == pytest.approx((1.6, 1.4))
    np.testing.assert_allclose(np.diff(r.times), 0.7)


def test_nifti_time_first_needs_dt_and_keeps_spacing(tmp_path):
    """ml_perfusion layout: (T, X, Y) with zooms (18, 2.29, 2.29); 18 is not a frame interval."""
    import nibabel as nib

    txy = np.random.default_rng(0).integers(0, 500, size=(20, 24, 24)).astype(np.uint16)
    img = nib.Nifti1Image(txy, None)                    # no qform/sform, like the ml_perfusion images
    img.header.set_zooms((18.0, 2.2857, 2.2857))
    nib.save(img, str(tmp_path / "tf.nii.gz"))
    with pytest.raises(MissingGeometryError, match="--dt"):
        readers.load_series(tmp_path / "tf.nii.gz")
    r = readers.load_series(tmp_path / "tf.nii.gz", dt=1.0)
    assert r.data.shape == (20, 24, 24) and r.spacing == pytest.approx((2.2857, 2.2857))
    np.testing.assert_array_equal(r.data[5], txy[5].T)
    assert r.affine is None and "axis 0" in r.metadata["time_axis_note"]
    r2 = readers.load_series(tmp_path / "tf.nii.gz", dt=1.0, time_axis=0)
    np.testing.assert_array_equal(r2.data, r.data)


def test_multislice_nifti_is_a_study(tmp_path):
    import nibabel as nib

    xyzt = np.random.default_rng(0).random((16, 18, 3, 12)).astype(np.float32)
    img = nib.Nifti1Image(xyzt, np.diag([-1.5, -1.5, 10.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((1.5, 1.5, 10.0, 0.8))
    nib.save(img, str(tmp_path / "stack.nii.gz"))
    with pytest.raises(AmbiguousInputError, match="3 series"):
        readers.load_series(tmp_path / "stack.nii.gz")
    one = readers.load_series(tmp_path / "stack.nii.gz", series=1)
    np.testing.assert_array_equal(one.data, np.transpose(xyzt[:, :, 1, :], (2, 1, 0)))
    study = readers.load_study(tmp_path / "stack.nii.gz")
    assert len(study) == 3 and [s.level for s in study] == ["basal", "mid", "apical"]
    np.testing.assert_allclose(study.slices[0].times[1], 0.8)


def test_slicer_style_sequence_nrrd(tmp_path):
    """Slicer's own sequence layout: kinds 'list domain domain domain', times in 'axis 0 index values' (ms)."""
    import nrrd

    t = synthetic_dicom.default_times(12)
    txyz = np.random.default_rng(0).random((12, 16, 20, 1)).astype(np.float32)
    header = {"kinds": ["list", "domain", "domain", "domain"], "space": "right-anterior-superior",
              "space directions": np.array([[np.nan] * 3, [1.2, 0, 0], [0, 1.3, 0], [0, 0, 8.0]]),
              "space origin": np.array([10.0, 20.0, 30.0]), "axis 0 index type": "numeric",
              "axis 0 index values": " ".join(f"{v * 1000:g}" for v in t), "axis 0 unit": "ms"}
    nrrd.write(str(tmp_path / "slicer.seq.nrrd"), txyz, header, index_order="F")
    r = readers.load_series(tmp_path / "slicer.seq.nrrd")
    assert r.data.shape == (12, 20, 16) and r.spacing == pytest.approx((1.3, 1.2))
    np.testing.assert_allclose(r.times, t, atol=1e-9)
    np.testing.assert_array_equal(r.data[4], txyz[4, :, :, 0].T)
    np.testing.assert_allclose(r.affine[:3, 3], [-10.0, -20.0, 30.0])      # RAS origin turned into LPS
    np.testing.assert_allclose(r.affine[:3, 0], [-1.2, 0, 0])


def test_mat_layouts(tmp_path):
    import scipy.io

    yxt = np.random.default_rng(0).random((20, 16, 12))
    scipy.io.savemat(str(tmp_path / "one.mat"), {"img": yxt})
    with pytest.raises(MissingGeometryError, match="--spacing MM and --dt S"):
        readers.load_series(tmp_path / "one.mat")
    r = readers.load_series(tmp_path / "one.mat", spacing=1.1, dt=0.6)
    np.testing.assert_allclose(r.data, np.moveaxis(yxt, 2, 0).astype(np.float32))
    scipy.io.savemat(str(tmp_path / "two.mat"), {"a": yxt, "b": yxt * 2})
    with pytest.raises(AmbiguousInputError, match="a .*b"):
        readers.load_series(tmp_path / "two.mat", spacing=1, dt=1)
    rb = readers.load_series(tmp_path / "two.mat", spacing=1, dt=1, series="b")
    np.testing.assert_allclose(rb.data, 2 * r.data, rtol=1e-6)
    # QPerf layout: data + aif + deltaT; foot/peak are MATLAB 1-based
    scipy.io.savemat(str(tmp_path / "q.mat"), {"data": yxt, "aif": np.linspace(0, 4, 12)[:, None], "deltaT": 0.5,
                                              "foot": 3.0, "peak": 7.0, "HCT": 0.45})
    study = readers.load_study(tmp_path / "q.mat", spacing=2.0)
    assert study.slices[0].units == "mmol/L"
    np.testing.assert_allclose(study.slices[0].times, np.arange(12) * 0.5)
    assert (study.aif.foot, study.aif.peak, study.aif.hematocrit) == (2, 6, 0.45)


def test_mat_v73_read_through_h5py(tmp_path):
    import h5py

    yxt = np.random.default_rng(0).random((20, 16, 12))
    with h5py.File(tmp_path / "v73.mat", "w") as fh:   # HDF5 stores MATLAB arrays with the axes reversed
        fh["img"] = yxt.T
    r = readers.load_series(tmp_path / "v73.mat", spacing=1.0, dt=1.0)
    np.testing.assert_allclose(r.data, np.moveaxis(yxt, 2, 0).astype(np.float32))


def test_numpy_layouts(tmp_path):
    s = make_series()
    np.save(tmp_path / "tyx.npy", s.data)
    with pytest.raises(MissingGeometryError):
        readers.load_series(tmp_path / "tyx.npy", dt=1.0)
    r = readers.load_series(tmp_path / "tyx.npy", spacing=(1.5, 1.25), dt=1.0)
    np.testing.assert_array_equal(r.data, s.data)
    np.save(tmp_path / "yxt.npy", np.moveaxis(s.data, 0, 2))
    r2 = readers.load_series(tmp_path / "yxt.npy", spacing=1.5, dt=1.0, time_axis=2)
    np.testing.assert_array_equal(r2.data, s.data)
    np.savez(tmp_path / "full.npz", data=s.data, times=s.times, spacing=np.array(s.spacing))
    r3 = readers.load_series(tmp_path / "full.npz")
    np.testing.assert_array_equal(r3.times, s.times)
    assert r3.spacing == s.spacing


# --- DICOM (synthetic) ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("style,source", [("siemens", "AcquisitionTime"), ("ge", "TriggerTime"),
                                          ("content", "ContentTime"), ("nominal", "NominalInterval")])
def test_dicom_time_tags(tmp_path, style, source):
    truth = synthetic_dicom.write_series(tmp_path / style, time_style=style, slope=2.0, intercept=-5.0)
    r = readers.load_series(tmp_path / style)
    assert r.metadata["time_source"] == source
    np.testing.assert_allclose(r.times, truth["times"], atol=2e-3)     # the missed trigger stays a double interval
    np.testing.assert_array_equal(r.data, truth["values"][0])          # rescale slope/intercept applied, order right
    assert r.spacing == (1.5, 1.25)


def test_dicom_instance_number_needs_dt(tmp_path):
    truth = synthetic_dicom.write_series(tmp_path / "none", time_style="none")
    with pytest.raises(MissingGeometryError, match="--dt"):
        readers.load_series(tmp_path / "none")
    r = readers.load_series(tmp_path / "none", dt=0.8)
    np.testing.assert_allclose(r.times, np.arange(12) * 0.8)
    np.testing.assert_array_equal(r.data, truth["values"][0])
    assert r.metadata["time_source"] == "InstanceNumber" and "InstanceNumber" in r.metadata["time_note"]


def test_dicom_patient_matrix(tmp_path):
    truth = synthetic_dicom.write_series(tmp_path / "d")
    r = readers.load_series(tmp_path / "d")
    iop = truth["iop"]
    np.testing.assert_allclose(r.affine[:3, 0], iop[:3] * 1.25, atol=1e-5)   # columns step: PixelSpacing[1]
    np.testing.assert_allclose(r.affine[:3, 1], iop[3:] * 1.5, atol=1e-5)
    np.testing.assert_allclose(r.affine[:3, 3], truth["positions"][0], atol=1e-5)


@pytest.mark.parametrize("style", ["flip", "intensity"])
def test_dicom_pd_frames_kept_apart(tmp_path, style):
    truth = synthetic_dicom.write_series(tmp_path / "pd", pd_frames=2, pd_style=style)
    r = readers.load_series(tmp_path / "pd")
    assert r.n_frames == 12 and r.pd_frames.shape == (2, 24, 20)
    np.testing.assert_array_equal(r.pd_frames, truth["pd_values"][0])
    np.testing.assert_array_equal(r.data, truth["values"][0])
    assert r.times[0] == 0.0
    assert r.metadata["pd_reason"].startswith("header" if style == "flip" else "intensity")


def test_dicom_without_pd_frames_finds_none(tmp_path):
    synthetic_dicom.write_series(tmp_path / "d")
    assert readers.load_series(tmp_path / "d").pd_frames is None


def test_dicom_interleaved_slices_are_split_and_ordered(tmp_path):
    truth = synthetic_dicom.write_series(tmp_path / "ms", n_slices=3)
    with pytest.raises(AmbiguousInputError, match="3 slice positions"):
        readers.load_series(tmp_path / "ms")
    study = readers.load_study(tmp_path / "ms")
    assert len(study) == 3 and [s.level for s in study] == ["basal", "mid", "apical"]
    apex = np.array([1.0, -1.0, -1.0])
    proj = [float(np.dot(s.affine[:3, 3], apex)) for s in study]
    assert proj == sorted(proj)     # the normal points away from the apex here, so the order is reversed
    written = [np.dot(p, apex) for p in truth["positions"]]
    for s in study:
        k = int(np.argmin([abs(np.dot(s.affine[:3, 3], apex) - w) for w in written]))
        np.testing.assert_array_equal(s.data, truth["values"][k])
        np.testing.assert_allclose(s.times - s.times[0], truth["times"], atol=2e-3)
        assert s.times[0] == pytest.approx(0.1 * k, abs=2e-3)     # offset within the beat kept


def test_dicom_several_series_listed_and_selectable(tmp_path):
    synthetic_dicom.write_series(tmp_path / "f", series_number=3, description="rest perfusion", seed=1)
    synthetic_dicom.write_series(tmp_path / "f", series_number=9, description="stress perfusion", seed=2,
                                 n_frames=14)
    entries = readers.list_series(tmp_path / "f")
    assert [e["series_number"] for e in entries] == [3, 9] and [e["images"] for e in entries] == [12, 14]
    with pytest.raises(AmbiguousInputError, match="rest perfusion.*stress perfusion"):
        readers.load_series(tmp_path / "f")
    assert readers.load_series(tmp_path / "f", series="1").n_frames == 14
    assert readers.load_series(tmp_path / "f", series="STRESS").n_frames == 14
    assert readers.load_series(tmp_path / "f", series="rest").n_frames == 12


def test_single_dicom_file_stands_for_its_series(tmp_path):
    synthetic_dicom.write_series(tmp_path / "d")
    one = sorted((tmp_path / "d").iterdir())[0]
    assert readers.load_series(one).n_frames == 12


# --- labels ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["l.nii.gz", "l.nrrd"])
def test_labels_project_scheme_round_trip(tmp_path, name):
    labels = np.zeros((20, 16), np.uint8)
    labels[5:10, 4:9], labels[12:15, 3:6] = 2, 3
    labels[6:9, 5:8] = 1
    write_labels(labels, tmp_path / name, spacing=(1.5, 1.25))
    out, note = readers.load_labels(tmp_path / name)
    np.testing.assert_array_equal(out, labels)
    assert "project" in note


def test_labels_foreign_schemes_are_mapped_and_reported(tmp_path):
    import scipy.io

    daugs = np.zeros((20, 16), np.uint8)
    daugs[4:12, 4:12], daugs[6:10, 6:10] = 1, 3
    scipy.io.savemat(str(tmp_path / "mask.mat"), {"final_mask": daugs})
    out, note = readers.load_labels(tmp_path / "mask.mat")
    assert set(np.unique(out)) == {0, 1, 2} and (out == 1).sum() == (daugs == 3).sum()
    assert "daugs" in note and "1 (LV myocardium) -> 2" in note and "3 (LV blood pool) -> 1" in note
    np.save(tmp_path / "m.npy", daugs)
    with pytest.raises(InvalidLabelsError, match=r"\[3\]"):   # code 3 means nothing in the ml_perfusion scheme
        readers.load_labels(tmp_path / "m.npy", scheme="ml_perfusion")
    out2, note2 = readers.load_labels(tmp_path / "m.npy", scheme="daugs")
    np.testing.assert_array_equal(out2, out)


def test_labels_time_stack_collapsed(tmp_path):
    import nibabel as nib

    stack = np.zeros((20, 24, 24), np.uint16)            # (T, X, Y), ml_perfusion codes
    for t in (8, 9, 10):
        stack[t, 6:14, 6:14] = 1
        stack[t, 8:12, 8:12] = 2
    stack[10, 13, 13] = 0                               # one frame differs: majority keeps the pixel
    nib.save(nib.Nifti1Image(stack, np.diag([18.0, 2.3, 2.3, 1.0])), str(tmp_path / "case_gt.nii.gz"))
    out, note = readers.load_labels(tmp_path / "case_gt.nii.gz")
    assert out.shape == (24, 24) and out[13, 13] == 2 and out[10, 10] == 1
    assert "3 of 20 frames" in note and "majority" in note and "ml_perfusion" in note
    out8, note8 = readers.load_labels(tmp_path / "case_gt.nii.gz", frame=10)
    assert out8[13, 13] == 0 and "frame 10" in note8


# --- real data -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cond,frames,spacing", [("rest", 31, 1.640625), ("stress", 32, 1.796875)])
def test_real_siemens_dicom(cond, frames, spacing):
    path = shared_path("dicom_siemens_single_slice", cond)
    s = readers.load_series(path)
    assert s.pd_frames is None and s.n_frames == frames            # no PD frames in these series (same flip angle)
    assert s.shape == (256, 192) and s.spacing == (spacing, spacing)
    assert s.metadata["time_source"] == "AcquisitionTime" and s.metadata["manufacturer"] == "SIEMENS"
    assert np.all(np.diff(s.times) > 1.0) and not s.is_regular    # sparse, irregular frames kept as acquired
    n = np.cross(s.affine[:3, 0], s.affine[:3, 1])
    assert abs(np.linalg.norm(s.affine[:3, 0]) - spacing) < 1e-6 and np.linalg.norm(n) > 0


def test_real_daugs_mat_needs_spacing_and_dt():
    img = shared_path("daugs_dev", "Images", "Fig6-exD1-Mid.mat")
    with pytest.raises(MissingGeometryError, match="--spacing MM and --dt S"):
        readers.load_series(img)
    s = readers.load_series(img, spacing=0.9, dt=1.0)
    assert s.data.shape == (30, 128, 128) and s.units == "normalised" and 0.0 <= s.data.min() < s.data.max() <= 1.0
    labels, note = readers.load_labels(shared_path("daugs_dev", "Labels", "Fig6-exD1-Mid.mat"))
    assert labels.shape == (128, 128) and set(np.unique(labels)) == {0, 1, 2} and "daugs" in note


def test_real_qperf_study_with_aif():
    study = readers.load_study(shared_path("qperf", "perf_data.mat"), spacing=1.8)
    s = study.slices[0]
    assert s.data.shape == (68, 51, 47) and s.units == "mmol/L"
    np.testing.assert_allclose(np.diff(s.times), 0.5)
    assert (study.aif.foot, study.aif.peak, study.aif.hematocrit) == (22, 29, 0.42)
    assert study.aif.curve.size == 68
    with pytest.raises(MissingGeometryError, match="deltaT"):   # the stress file stores no frame interval
        readers.load_study(shared_path("qperf", "perf_data_stress.mat"), spacing=1.8)
    stress = readers.load_study(shared_path("qperf", "perf_data_stress.mat"), spacing=1.8, dt=0.5)
    assert stress.slices[0].n_frames == 59 and "haematocrit 0.42 assumed" in stress.metadata["aif_note"]


def test_real_ml_perfusion_needs_dt_not_the_fake_zoom():
    path = shared_path("ml_perfusion_subset", "mid_reor_1132584_adeno_mid.nii.gz")
    with pytest.raises(MissingGeometryError, match="pixdim 18"):
        readers.load_series(path)
    s = readers.load_series(path, dt=1.0)
    assert s.n_frames == 78 and s.shape == (160, 160) and s.spacing == pytest.approx((2.2857, 2.2857), abs=1e-4)
    labels, note = readers.load_labels(shared_path("ml_perfusion_subset", "mid_reor_1132584_adeno_mid_gt.nii.gz"))
    assert labels.shape == s.shape and set(np.unique(labels)) == {0, 1, 2} and "ml_perfusion" in note
    # labels sit on the blood pool of the image grid as stored (no flip): the blood pool enhances most
    enh = s.data.max(axis=0) - s.data[:5].mean(axis=0)
    assert enh[labels == 1].mean() > enh[labels == 2].mean()


def test_info_json_on_real_dicom(capsys):
    from PerfusionSegLib.cli import main

    path = shared_path("dicom_siemens_single_slice", "rest")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    d = info["slices"][0]
    assert d["frames"] == 31 and d["pd_frames"] == 0 and d["time_source"] == "AcquisitionTime"
    assert d["regular_timing"] is False and 2.0 < d["median_interval_s"] < 2.6


@pytest.mark.parametrize("pd", [0, 2])
def test_enhanced_multiframe_dicom(tmp_path, pd):
    truth = synthetic_dicom.write_enhanced(tmp_path / "enh.dcm", pd_frames=pd)
    r = readers.load_series(tmp_path / "enh.dcm")
    np.testing.assert_allclose(r.times, truth["times"], atol=2e-3)     # frames were stored out of time order
    np.testing.assert_array_equal(r.data, truth["values"])             # shared rescale slope/intercept applied
    np.testing.assert_allclose(r.affine[:3, 0], truth["iop"][:3] * 1.25, atol=1e-5)
    np.testing.assert_allclose(r.affine[:3, 3], truth["origin"], atol=1e-5)
    if pd:
        np.testing.assert_array_equal(r.pd_frames, truth["pd_values"])
        assert "flip angle 5" in r.metadata["pd_reason"]
    else:
        assert r.pd_frames is None


def test_study_from_a_list_keeps_the_given_order(tmp_path):
    a = write_series(make_series(level=None), tmp_path / "a.nii.gz")
    b = write_series(make_series(level=None, data=make_series().data * 2), tmp_path / "b.nrrd")
    study = readers.load_study([b, a])
    assert [s.source for s in study] == [str(b), str(a)]
    assert [s.metadata["level_source"] for s in study] == ["order", "order"]
    np.testing.assert_allclose(study.slices[0].data, 2 * study.slices[1].data, rtol=1e-6)


def test_study_from_separate_dicom_series_when_named(tmp_path):
    """Siemens often stores each slice as its own series: a study takes them when --series names them."""
    synthetic_dicom.write_series(tmp_path / "f", series_number=3, description="slice1", seed=1)
    synthetic_dicom.write_series(tmp_path / "f", series_number=4, description="slice2", seed=2,
                                 origin=(-40.0, -130.0, 50.0))
    with pytest.raises(AmbiguousInputError):
        readers.load_study(tmp_path / "f")
    study = readers.load_study(tmp_path / "f", series="0,1")
    assert len(study) == 2 and {s.metadata["series_number"] for s in study} == {3, 4}


def test_interleaved_slices_keep_their_offsets_within_the_beat(tmp_path):
    synthetic_dicom.write_series(tmp_path / "ms", n_slices=3)    # slice s acquired 0.1 s * s after slice 0
    study = readers.load_study(tmp_path / "ms")
    firsts = sorted(round(float(s.times[0]), 3) for s in study)
    assert firsts == [0.0, 0.1, 0.2]
