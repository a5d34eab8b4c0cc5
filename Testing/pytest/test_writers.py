"""Writers put arrays on disk in the CONVENTIONS layout, atomically, without leaving temporary files."""
import json

import nibabel as nib
import nrrd
import numpy as np
import pytest

from PerfusionSegLib.atomic import atomic_output
from PerfusionSegLib.errors import InvalidParameterError
from PerfusionSegLib.series import SliceSeries
from PerfusionSegLib.writers import write_labels, write_map, write_series


@pytest.fixture
def series():
    rng = np.random.default_rng(3)
    times = np.r_[np.arange(12) * 0.6, 7.9, 8.5, 9.1]  # one long interval (missed trigger)
    return SliceSeries(rng.random((15, 20, 17)), times, (1.8, 1.7), condition="rest")


def test_nifti_series_layout_and_times(tmp_path, series):
    p = write_series(series, tmp_path / "s.nii.gz")
    img = nib.load(str(p))
    assert img.shape == (17, 20, 1, 15)                       # (X, Y, 1, T)
    np.testing.assert_allclose(img.header.get_zooms(), (1.7, 1.8, 8.0, 0.6), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0, :].transpose(2, 1, 0), series.data)
    times = json.loads((tmp_path / "s.times.json").read_text())["times_s"]
    np.testing.assert_allclose(times, series.times)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["s.nii.gz", "s.times.json"]


def test_nrrd_sequence_keeps_real_times(tmp_path, series):
    p = write_series(series, tmp_path / "s.seq.nrrd")
    data, header = nrrd.read(str(p), index_order="F")
    assert data.shape == (17, 20, 15)
    assert header["kinds"] == ["domain", "domain", "list"]
    np.testing.assert_allclose([float(v) for v in header["axis 2 index values"].split()], series.times, rtol=1e-5)


def test_labels_and_maps(tmp_path):
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 3:9] = 2
    write_labels(labels, tmp_path / "l.nii.gz", spacing=(2.0, 1.0))
    img = nib.load(str(tmp_path / "l.nii.gz"))
    assert img.shape == (12, 10, 1) and img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0].T, labels)
    values = np.linspace(0, 4, 120, dtype=np.float32).reshape(10, 12)
    write_map(values, tmp_path / "m.nrrd")
    data, _ = nrrd.read(str(tmp_path / "m.nrrd"), index_order="F")
    np.testing.assert_allclose(data[:, :, 0].T, values)
    with pytest.raises(InvalidParameterError):
        write_labels(labels - 1.5, tmp_path / "bad.nii.gz")
    with pytest.raises(InvalidParameterError):
        write_map(values, tmp_path / "m.png")
    assert not (tmp_path / "bad.nii.gz").exists()


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["out.txt"]
