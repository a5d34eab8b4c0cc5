"""Bad input corpus, made by the test itself: each file gets a typed exception from the Lib, and from the CLI exit
status 2 with exactly one line on stderr and no traceback; inputs stay byte-identical and nothing is written."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import synthetic_dicom
from PerfusionSegLib import readers
from PerfusionSegLib.cli import main
from PerfusionSegLib.errors import (AmbiguousInputError, InvalidSeriesError, MissingGeometryError,
                                    UnreadableFileError)
from PerfusionSegLib.series import SliceSeries
from PerfusionSegLib.writers import write_series

GEOMETRY = {"spacing": 1.5, "dt": 0.8}   # for files without geometry, so that the error is about the defect itself


def _good_series(t=12, ny=16, nx=16) -> SliceSeries:
    data = np.random.default_rng(0).normal(100, 10, size=(t, ny, nx)).astype(np.float32)
    return SliceSeries(data=data, times=np.arange(t) * 0.8, spacing=(1.5, 1.5))


def _nifti(path: Path, xyzt: np.ndarray, dt=0.8) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(xyzt, np.diag([1.5, 1.5, 8.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    if xyzt.ndim == 4:
        img.header.set_zooms((1.5, 1.5, 8.0, dt))
    nib.save(img, str(path))
    return path


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def build_corpus(root: Path) -> list:
    """[(case id, path, reader kwargs, expected exception)]."""
    import nibabel as nib
    import nrrd

    cases = []

    def add(name, path, exc, **kw):
        cases.append((name, Path(path), kw, exc))

    good = _good_series()
    # unreadable or truncated files
    p = write_series(good, root / "trunc.nii.gz")
    (root / "trunc.times.json").unlink()
    add("truncated .nii.gz", _truncate(p, 0.5), UnreadableFileError)
    p = write_series(good, root / "trunc_raw.nii")
    (root / "trunc_raw.times.json").unlink()
    add("truncated .nii", _truncate(p, 0.6), UnreadableFileError)
    add("truncated .nrrd", _truncate(write_series(good, root / "trunc.nrrd"), 0.7), UnreadableFileError)
    (root / "random.nii.gz").write_bytes(np.random.default_rng(1).bytes(4000))
    add("random bytes named .nii.gz", root / "random.nii.gz", UnreadableFileError)
    (root / "gzrandom.nii.gz").write_bytes(gzip.compress(np.random.default_rng(2).bytes(4000)))
    add("gzip of random bytes named .nii.gz", root / "gzrandom.nii.gz", UnreadableFileError)
    (root / "random.nrrd").write_bytes(b"not an nrrd\n" + np.random.default_rng(3).bytes(500))
    add("random bytes named .nrrd", root / "random.nrrd", UnreadableFileError)
    (root / "random.npy").write_bytes(np.random.default_rng(4).bytes(500))
    add("random bytes named .npy", root / "random.npy", UnreadableFileError)
    (root / "unknown.xyz").write_bytes(b"hello")
    add("unknown format", root / "unknown.xyz", UnreadableFileError)
    (root / "empty.nii").write_bytes(b"")
    add("empty file", root / "empty.nii", UnreadableFileError)
    np.save(root / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    add("pickled object array", root / "pickled.npy", UnreadableFileError, **GEOMETRY)
    # DICOM: a file cut inside its pixel data, a file cut inside its header
    synthetic_dicom.write_series(root / "dcm_trunc_pixels", n_frames=12)
    _truncate(sorted((root / "dcm_trunc_pixels").iterdir())[3], 0.8)
    add("truncated DICOM pixel data", root / "dcm_trunc_pixels", UnreadableFileError)
    synthetic_dicom.write_series(root / "dcm_trunc_header", n_frames=12)
    victim = sorted((root / "dcm_trunc_header").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:300])
    add("truncated DICOM header", root / "dcm_trunc_header", UnreadableFileError)
    # wrong dimensionality, too few frames, NaN, Inf, constant
    add("2-D image", _nifti(root / "flat.nii.gz", np.ones((16, 16), np.float32)), InvalidSeriesError)
    add("5-D image", _nifti(root / "five.nii.gz", np.random.default_rng(5).random((16, 16, 1, 12, 2)).astype(np.float32)),
        InvalidSeriesError)
    add("fewer than 10 frames", _nifti(root / "short.nii.gz", np.random.default_rng(6).random((16, 16, 1, 5)).astype(np.float32)),
        InvalidSeriesError)
    nan = good.data.copy()
    nan[4, 3, 3] = np.nan
    np.save(root / "nan.npy", nan)
    add("NaN", root / "nan.npy", InvalidSeriesError, **GEOMETRY)
    inf = np.transpose(good.data, (2, 1, 0)).copy()
    inf[2, 2, 7] = np.inf
    nrrd.write(str(root / "inf.nrrd"), inf, {"space directions": np.diag([1.5, 1.5, np.nan]), "space": "left-posterior-superior",
                                             "kinds": ["domain", "domain", "list"]}, index_order="F")
    add("Inf", root / "inf.nrrd", InvalidSeriesError, dt=0.8)
    add("constant series", _nifti(root / "const.nii.gz", np.full((16, 16, 1, 12), 7.0, np.float32)), InvalidSeriesError)
    # several series in one folder, no selector
    synthetic_dicom.write_series(root / "two_series", series_number=3, description="rest", seed=1)
    synthetic_dicom.write_series(root / "two_series", series_number=4, description="stress", seed=2)
    add("two DICOM series, no selector", root / "two_series", AmbiguousInputError)
    # missing geometry without an override
    np.save(root / "nospacing.npy", good.data)
    add("missing spacing", root / "nospacing.npy", MissingGeometryError, dt=0.8)
    import scipy.io
    scipy.io.savemat(str(root / "nogeometry.mat"), {"img": np.moveaxis(good.data, 0, 2)})
    add("missing spacing and interval (.mat)", root / "nogeometry.mat", MissingGeometryError)
    synthetic_dicom.write_series(root / "dcm_notime", time_style="none")
    add("DICOM without time tags", root / "dcm_notime", MissingGeometryError)
    # absurd matrix sizes: a 1x5000 array, and a NIfTI header claiming 5000x5000 with no pixels behind it
    np.save(root / "absurd.npy", np.random.default_rng(7).random((12, 1, 5000)).astype(np.float32))
    add("absurd matrix 1x5000", root / "absurd.npy", InvalidSeriesError, **GEOMETRY)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((5000, 5000, 1, 20))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    (root / "huge.nii").write_bytes(hdr.binaryblock + b"\x00" * 4)
    add("absurd matrix 5000x5000 (header only)", root / "huge.nii", InvalidSeriesError)
    # folders and paths
    (root / "empty_folder").mkdir()
    add("empty folder", root / "empty_folder", UnreadableFileError)
    (root / "text_folder").mkdir()
    (root / "text_folder" / "notes.txt").write_text("no images here")
    add("folder without DICOM", root / "text_folder", UnreadableFileError)
    add("nonexistent path", root / "does_not_exist.nii.gz", UnreadableFileError)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    return root, build_corpus(root)



CASE_NAMES = [
    "truncated .nii.gz", "truncated .nii", "truncated .nrrd", "random bytes named .nii.gz",
    "gzip of random bytes named .nii.gz", "random bytes named .nrrd", "random bytes named .npy", "unknown format",
    "empty file", "pickled object array", "truncated DICOM pixel data", "truncated DICOM header", "2-D image",
    "5-D image", "fewer than 10 frames", "NaN", "Inf", "constant series", "two DICOM series, no selector",
    "missing spacing", "missing spacing and interval (.mat)", "DICOM without time tags", "absurd matrix 1x5000",
    "absurd matrix 5000x5000 (header only)", "empty folder", "folder without DICOM", "nonexistent path",
]


def _snapshot(root: Path) -> dict:
    """Every file under root with its SHA-256: inputs unchanged and no new files."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cli_args(path: Path, kw: dict) -> list:
    args = [str(path)]
    if "spacing" in kw:
        args += ["--spacing", str(kw["spacing"])]
    if "dt" in kw:
        args += ["--dt", str(kw["dt"])]
    return args


def test_corpus_covers_every_case(corpus):
    _, cases = corpus
    assert [c[0] for c in cases] == CASE_NAMES


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_refused_cleanly(corpus, name, capsys, tmp_path):
    root, cases = corpus
    _, path, kw, exc = next(c for c in cases if c[0] == name)
    before = _snapshot(root)
    with pytest.raises(exc) as info:
        readers.load_series(path, **kw)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    capsys.readouterr()

    assert main(["info", *_cli_args(path, kw)]) == 2
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("perfusion info: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""

    if importlib.util.find_spec("PerfusionSegLib.cli.preprocess") is not None:
        out_dir = tmp_path / "out"
        code = main(["preprocess", *_cli_args(path, kw), "--out", str(out_dir)])
        captured = capsys.readouterr()
        assert code == 2 and len(captured.err.splitlines()) == 1 and "usage" not in captured.err, captured.err
        assert not out_dir.exists() or not any(out_dir.rglob("*")), "preprocess left output behind"
    assert _snapshot(root) == before     # inputs byte-identical, nothing written beside them


@pytest.mark.parametrize("name", ["truncated .nii.gz", "two DICOM series, no selector", "nonexistent path"])
def test_installed_command_exit_status(corpus, name):
    """The console script itself (a fresh process): status 2, one line, no traceback."""
    root, cases = corpus
    _, path, kw, _ = next(c for c in cases if c[0] == name)
    exe = Path(sys.executable).with_name("perfusion")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from PerfusionSegLib.cli import main; sys.exit(main())"]
    proc = subprocess.run(cmd + ["info", *_cli_args(path, kw)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_selector_resolves_the_ambiguity(corpus, capsys):
    """The same two-series folder is fine once --series picks one."""
    root, _ = corpus
    assert main(["info", str(root / "two_series"), "--series", "stress"]) == 0
    assert "series 4 'stress'" in capsys.readouterr().out
