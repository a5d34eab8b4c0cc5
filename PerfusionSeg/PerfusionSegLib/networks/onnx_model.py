"""A registered full-image model (the ResUNet) run by ONNX Runtime instead of torch.

Why: on this torch build ``import torch`` alone keeps about 220 MB resident, so a batch worker segmenting with the
ResUNet in torch peaks above 400 MB. ONNX Runtime runs the same network without importing torch
(``benchmarks/bench_resunet.py``, variant ``onnxruntime``, states the figures).

- :func:`export_onnx` (needs torch, once): loads the model through the registry (sha256 checked), writes
  ``<name>.onnx`` (float32 graph, dynamic batch and image size) and ``<name>.onnx.json``, a card with the sha256 of
  the graph and of the source weights, the architecture, configuration and input specification. Both atomically.
- :func:`load_onnx_model` -> :class:`OnnxModel`: checks the graph's sha256 against its card before reading it (an ONNX
  file is a protobuf graph: loading it runs no pickled code), then serves ``predict_proba`` like
  ``registry.LoadedModel``, so ``inference.segment_series`` takes either.

ONNX Runtime is an optional dependency (``pip install onnxruntime``, or the project's ``onnx`` extra).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..atomic import atomic_output, write_text_atomic
from ..errors import InvalidParameterError, UnreadableFileError
from .registry import CardProperties

ONNX_CARD_FORMAT = "perfusion-onnx-card/1"
OPSET = 17


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UnreadableFileError("ONNX Runtime is not installed: pip install onnxruntime "
                                  "(or the project's 'onnx' extra)") from None
    return onnxruntime


def onnx_card_path(card_path: Union[str, os.PathLike]) -> Path:
    """Where the ONNX card of a model card ``X.json`` lives: ``X.onnx.json`` beside it."""
    card_path = Path(card_path)
    return card_path.with_name(card_path.name[: -len(".json")] + ".onnx.json"
                               if card_path.name.endswith(".json") else card_path.name + ".onnx.json")


def export_onnx(card_path: Union[str, os.PathLike], out_dir: Optional[Union[str, os.PathLike]] = None, *,
                opset: int = OPSET) -> Path:
    """Export a registered model to ONNX; returns the ONNX card's path (``<out_dir>/<name>.onnx.json``)."""
    import torch

    from .registry import load_model, sha256_of

    model = load_model(card_path, device="cpu")          # sha256 of the source weights checked here
    if model.card_path is None:
        raise InvalidParameterError("export_onnx needs a model card on disk")
    card_path = Path(model.card_path)
    out_dir = Path(out_dir) if out_dir is not None else card_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / onnx_card_path(card_path).name          # <name>.onnx.json beside <name>.onnx
    onnx_path = path.with_name(path.name[: -len(".json")])
    spec = model.input_spec
    size = int(spec.get("size") or 64)
    network = model.network.float().eval()
    dummy = torch.zeros(1, model.in_channels, size, size)
    axes = {0: "batch", 2: "height", 3: "width"}
    # the TorchScript-based exporter (dynamo=False) needs no onnxscript; torch deprecates it, and its trace warns that
    # the network's input-size check becomes a constant (the graph takes any size the check accepts)
    with atomic_output(onnx_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(network, (dummy,), str(tmp), input_names=["frames"], output_names=["logits"],
                          dynamic_axes={"frames": axes, "logits": axes}, opset_version=int(opset), dynamo=False)
    card = {"format": ONNX_CARD_FORMAT, "name": model.name or onnx_path.stem, "onnx": onnx_path.name,
            "onnx_sha256": sha256_of(onnx_path), "opset": int(opset),
            "source_card": os.path.relpath(card_path, out_dir), "source_weights_sha256": model.card["weights_sha256"],
            "architecture": model.architecture, "config": dict(model.card["config"]), "input": spec,
            "classes": model.card.get("classes"), "torch_version": torch.__version__}
    write_text_atomic(path, json.dumps(card, indent=2) + "\n")
    return path


class OnnxModel(CardProperties):
    """A verified ONNX graph in an ONNX Runtime CPU session, with the interface of ``registry.LoadedModel``."""

    def __init__(self, card: dict, session, card_path: Optional[Path] = None):
        self.card = card
        self.session = session
        self.card_path = card_path

    def predict_proba(self, batch: np.ndarray, *, batch_size: int = 32, bf16: bool = False) -> np.ndarray:
        """Softmax probabilities (N, classes, H, W) float32 for (N, channels, H, W); ``bf16`` is not used (fp32)."""
        x_all = np.asarray(batch, dtype=np.float32)
        if x_all.ndim != 4:
            raise InvalidParameterError(f"network input must be (N, channels, H, W), got shape {x_all.shape}")
        if x_all.shape[1] != self.in_channels:
            raise InvalidParameterError(f"model {self.name!r} takes {self.in_channels} frames as channels, "
                                        f"got {x_all.shape[1]}")
        out = []
        for start in range(0, x_all.shape[0], max(1, int(batch_size))):
            logits = self.session.run(None, {"frames": np.ascontiguousarray(x_all[start:start + batch_size])})[0]
            logits = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            out.append((e / e.sum(axis=1, keepdims=True)).astype(np.float32))
        return np.concatenate(out, axis=0)


def load_onnx_model(card_path: Union[str, os.PathLike], *, threads: Optional[int] = None) -> OnnxModel:
    """Read an ONNX card (``X.onnx.json``, or the model card ``X.json`` beside it), check the graph's sha256, open an
    ONNX Runtime CPU session (``threads``: intra-op threads, default all cores)."""
    from .registry import ModelIntegrityError, sha256_of

    ort = _require_onnxruntime()
    path = Path(card_path)
    if not path.name.endswith(".onnx.json"):
        path = onnx_card_path(path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"cannot read ONNX card {path}: {exc} (make it with `perfusion export-onnx`)") from None
    if not isinstance(card, dict) or card.get("format") != ONNX_CARD_FORMAT:
        raise UnreadableFileError(f"{path} is not an ONNX model card ({ONNX_CARD_FORMAT})")
    graph = path.parent / card["onnx"]
    if not graph.is_file():
        raise UnreadableFileError(f"ONNX graph {graph} named by {path} is missing")
    if sha256_of(graph) != card.get("onnx_sha256"):
        raise ModelIntegrityError(f"ONNX graph {graph} does not match the sha256 in {path}: corrupt or replaced")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
    return OnnxModel(card, session, path)


__all__ = ["OnnxModel", "export_onnx", "load_onnx_model", "onnx_card_path", "ONNX_CARD_FORMAT"]
