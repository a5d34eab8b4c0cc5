"""ONNX Runtime path of the ResUNet: the exported graph predicts what torch predicts, is verified by sha256 before it
is read, and `perfusion segment --runtime onnx` runs in a process that never imports torch."""
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (the project's 'onnx' extra)")
pytest.importorskip("onnx", reason="onnx (the exporter's dependency) not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from PerfusionSegLib.networks.onnx_model import export_onnx
    from PerfusionSegLib.networks.registry import save_model
    from PerfusionSegLib.networks.resunet import build_resunet

    folder = tmp_path_factory.mktemp("onnx")
    net = build_resunet("small")
    card = save_model(net, {"input": {"size": 64, "n_frames": net.config["in_channels"], "spacing_mm": 2.0}},
                      folder, "tiny_resunet")
    return card, export_onnx(card, folder / "exported")


def test_onnx_graph_predicts_what_torch_predicts_at_any_size(exported):
    from PerfusionSegLib.networks.onnx_model import load_onnx_model
    from PerfusionSegLib.networks.registry import load_model

    card, onnx_card = exported
    torch_model, onnx_model = load_model(card, device="cpu"), load_onnx_model(onnx_card, threads=1)
    assert onnx_model.in_channels == torch_model.in_channels and onnx_model.architecture == "resunet"
    rng = np.random.default_rng(0)
    for shape in ((3, 64, 64), (1, 48, 80)):          # batch and image size are dynamic axes
        x = rng.random((shape[0], torch_model.in_channels, *shape[1:]), dtype=np.float32)
        a, b = torch_model.predict_proba(x), onnx_model.predict_proba(x, batch_size=2)
        assert b.shape == a.shape and np.abs(a - b).max() < 1e-4
        np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-5)
    doc = json.loads(onnx_card.read_text())
    assert doc["source_weights_sha256"] == json.loads(card.read_text())["weights_sha256"]


def test_a_modified_graph_is_refused_before_it_is_read(exported, tmp_path):
    import shutil

    from PerfusionSegLib.networks.onnx_model import load_onnx_model
    from PerfusionSegLib.networks.registry import ModelIntegrityError

    _, onnx_card = exported
    for f in onnx_card.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    graph = tmp_path / json.loads(onnx_card.read_text())["onnx"]
    blob = bytearray(graph.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    graph.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_onnx_model(tmp_path / onnx_card.name)


def test_segment_cli_on_onnx_runtime_never_imports_torch_and_matches_torch(exported, tmp_path):
    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.readers import load_labels
    from PerfusionSegLib.writers import write_series

    card, onnx_card = exported
    series = generate_study(preset="siemens-flash-3t", seed=5, condition="stress", n_slices=1).study.slices[0]
    image = write_series(series, tmp_path / "slice.nii.gz")
    code = ("import sys; from PerfusionSegLib.cli import main; "
            f"rc = main(['segment', {str(image)!r}, '--out', {str(tmp_path / 'onnx')!r}, '--runtime', 'onnx', "
            f"'--model', {str(onnx_card)!r}]); print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH False" in proc.stdout
    from PerfusionSegLib.cli import main
    assert main(["segment", str(image), "--out", str(tmp_path / "torch"), "--model", str(card)]) == 0
    onnx_labels, _ = load_labels(tmp_path / "onnx" / "slice_labels.nii.gz")
    torch_labels, _ = load_labels(tmp_path / "torch" / "slice_labels.nii.gz")
    assert (onnx_labels == torch_labels).mean() > 0.999


def test_onnx_runtime_refuses_the_daugs_method(exported, tmp_path):
    from PerfusionSegLib.cli import main

    assert main(["segment", "missing.nii.gz", "--out", str(tmp_path / "o"), "--method", "daugs",
                 "--runtime", "onnx"]) == 2
    assert not (tmp_path / "o").exists()
