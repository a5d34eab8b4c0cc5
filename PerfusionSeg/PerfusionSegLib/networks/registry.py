"""Model registry: a model is a weights file (a plain state dict) plus a JSON model card.

The card says how to rebuild and feed the network and where it came from::

    {"format": "perfusion-model-card/1", "name": "resunet_xue2020",
     "architecture": "resunet", "config": {...constructor keywords...},
     "weights": "resunet_xue2020.pt", "weights_sha256": "...", "weights_dtype": "float32" | "float16",
     "input": {"n_frames": 48, "spacing_mm": 1.0, "scale": null, "size": 176, "temporal": "linear", "dt": 0.5,
               "normalise": "robust_max"},
     "classes": ["background", "LV blood pool", "LV myocardium", "RV blood pool"],
     "training": {...data and recipe...}, "metrics": {...}}

Loading is safe: the weights' sha256 is checked against the card before anything is read, and the file is read with
``torch.load(weights_only=True)`` (tensors only: no pickled code runs). Models live in ``<repo>/Resources/Models``
unless ``PERFUSION_MODELS_DIR`` or ``models_dir`` says otherwise; a name ``X`` means ``<models_dir>/X.json``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..atomic import atomic_output, write_text_atomic
from ..errors import InvalidParameterError, UnreadableFileError

CARD_FORMAT = "perfusion-model-card/1"
CLASS_NAMES = ["background", "LV blood pool", "LV myocardium", "RV blood pool"]
ENV_MODELS_DIR = "PERFUSION_MODELS_DIR"
DEVICES = ("auto", "cpu", "cuda")


class ModelIntegrityError(UnreadableFileError):
    """A weights file does not match the sha256 its model card records (corrupt, truncated or replaced)."""


def default_models_dir() -> Path:
    """``$PERFUSION_MODELS_DIR`` when set, else ``<repo>/Resources/Models`` found from this file."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / "Resources" / "Models"


def sha256_of(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(device: str = "auto"):
    """'auto' -> CUDA when available else CPU; 'cuda' without a GPU is a usage error."""
    import torch

    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise InvalidParameterError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(device)


class CardProperties:
    """What a loaded model tells from its card (``self.card``): name, architecture, input spec, channels, classes.
    Shared by the torch model here and the ONNX Runtime model (``onnx_model.OnnxModel``)."""

    card: dict

    @property
    def name(self) -> str:
        return str(self.card.get("name", ""))

    @property
    def architecture(self) -> str:
        return str(self.card["architecture"])

    @property
    def input_spec(self) -> dict:
        return dict(self.card.get("input") or {})

    @property
    def n_classes(self) -> int:
        return int(self.card["config"]["n_classes"])

    @property
    def in_channels(self) -> int:
        return int(self.card["config"]["in_channels"])


@dataclass
class LoadedModel(CardProperties):
    """A network in eval mode on its device, with its card (where ``card['input']`` says how to prepare data)."""

    network: object
    card: dict
    device: object
    card_path: Optional[Path] = None

    def predict_proba(self, batch: np.ndarray, *, batch_size: int = 32, bf16: bool = False) -> np.ndarray:
        """Softmax probabilities (N, classes, H, W) float32 for a float array (N, channels, H, W), in batches.

        ``bf16``: bfloat16 autocast (CPU with AVX512-BF16 or a GPU); about 2x faster on such CPUs.
        """
        import torch

        x_all = np.asarray(batch, dtype=np.float32)
        if x_all.ndim != 4:
            raise InvalidParameterError(f"network input must be (N, channels, H, W), got shape {x_all.shape}")
        expected = self.in_channels
        if x_all.shape[1] != expected:
            raise InvalidParameterError(f"model {self.name!r} takes {expected} frames as channels, got {x_all.shape[1]}")
        out = []
        with torch.inference_mode():
            for start in range(0, x_all.shape[0], max(1, int(batch_size))):
                x = torch.from_numpy(x_all[start:start + batch_size]).to(self.device)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
                    logits = self.network(x)
                out.append(logits.float().softmax(dim=1).cpu().numpy())
        return np.concatenate(out, axis=0)


def resolve_card(card_path_or_name: Union[str, os.PathLike], models_dir=None) -> Path:
    """The card file of a model: a path to a card as it is, else ``<models_dir>/<name>.json`` (default folder)."""
    p = Path(card_path_or_name).expanduser()
    if p.suffix.lower() == ".json" or p.is_file():
        if not p.is_file():
            raise UnreadableFileError(f"model card {p} does not exist")
        return p
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    candidate = root / f"{card_path_or_name}.json"
    if not candidate.is_file():
        known = ", ".join(m["name"] for m in list_models(root)) or "none installed"
        raise UnreadableFileError(f"no model named {str(card_path_or_name)!r}: {candidate} is missing (models in {root}: {known})")
    return candidate


def read_card(card_path: Union[str, os.PathLike]) -> dict:
    card_path = Path(card_path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"cannot read model card {card_path}: {exc}") from None
    if not isinstance(card, dict):
        raise UnreadableFileError(f"model card {card_path} is not a JSON object")
    for key in ("architecture", "config", "weights", "weights_sha256"):
        if key not in card:
            raise UnreadableFileError(f"model card {card_path} lacks {key!r}")
    return card


def load_model(card_path_or_name: Union[str, os.PathLike], device: str = "auto",
               models_dir: Optional[Union[str, os.PathLike]] = None) -> LoadedModel:
    """Load a model: card -> sha256 check -> weights-only state dict -> network in eval mode on the device."""
    import torch

    from . import build_network

    card_path = resolve_card(card_path_or_name, models_dir)
    card = read_card(card_path)
    weights = (card_path.parent / card["weights"]).resolve()
    if not weights.is_file():
        raise UnreadableFileError(f"weights file {weights} named by model card {card_path.name} is missing")
    # read once, hash the bytes, and load those same bytes (no window for the file to change in between)
    blob = weights.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != str(card["weights_sha256"]).lower():
        raise ModelIntegrityError(f"weights {weights.name} have sha256 {digest[:16]}..., the card {card_path.name} "
                                  f"expects {str(card['weights_sha256'])[:16]}...: the file is corrupt or was replaced")
    dev = resolve_device(device)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for anything but tensors and plain containers
        raise UnreadableFileError(f"weights {weights.name} are not a plain state dict ({type(exc).__name__}): {exc}") from None
    if not isinstance(state, dict):
        raise UnreadableFileError(f"weights {weights.name} hold a {type(state).__name__}, expected a state dict")
    # build on the meta device (no memory, no random init: the weights replace everything), then adopt the loaded
    # tensors; fp16-stored weights are widened to float32 first
    with torch.device("meta"):
        network = build_network(card["architecture"], **dict(card["config"]), init_weights=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # ~150 small tensor ops: a thread pool only adds wake-up latency (x20 on a busy CPU)
    try:
        state = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}
        network.load_state_dict(state, strict=True, assign=True)
        network.to(dev).eval()
        network.to(memory_format=torch.channels_last)   # no-op for weights saved channels-last by save_model
    except RuntimeError as exc:
        raise UnreadableFileError(f"weights {weights.name} do not fit the architecture in {card_path.name}: "
                                  f"{str(exc).splitlines()[0]}") from None
    finally:
        torch.set_num_threads(threads)
    return LoadedModel(network=network, card=card, device=dev, card_path=card_path)


def save_model(network, card: dict, out_dir: Union[str, os.PathLike], name: str, *, half: bool = False) -> Path:
    """Write ``<out_dir>/<name>.pt`` (state dict; fp16 when ``half``) and ``<out_dir>/<name>.json``, both atomically.

    The card is completed with format, name, architecture, config (from the network), weights file name, dtype and
    sha256; whatever else the caller put in (input spec, training, metrics) is kept. Returns the card path.
    """
    import torch

    from . import architecture_name

    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InvalidParameterError(f"model name must be a plain file stem, got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in network.state_dict().items():
        v = v.detach().to("cpu")
        v = v.half() if half and v.is_floating_point() else v
        # conv kernels stored channels-last: loading then needs no layout conversion (tens of ms saved per load)
        state[k] = v.contiguous(memory_format=torch.channels_last).clone() if v.dim() == 4 else v.clone()
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    weights_path = out_dir / f"{name}.pt"
    with atomic_output(weights_path) as tmp:
        tmp.write_bytes(blob)
    full = dict(card)
    full.update({
        "format": CARD_FORMAT,
        "name": name,
        "architecture": full.get("architecture") or architecture_name(network),
        "config": dict(getattr(network, "config", full.get("config", {}))),
        "weights": weights_path.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_dtype": "float16" if half else "float32",
        "weights_bytes": len(blob),
    })
    full.setdefault("classes", CLASS_NAMES[: int(full["config"].get("n_classes", 4))])
    card_path = out_dir / f"{name}.json"
    write_text_atomic(card_path, json.dumps(full, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return card_path


def record_evaluation(card_path: Union[str, os.PathLike], key: str, results: dict) -> Path:
    """Store measured results in a model card (``evaluation[key]``), atomically; weights and checksum untouched."""
    if not key or not isinstance(results, dict):
        raise InvalidParameterError("an evaluation needs a name and a dict of results")
    card_path = Path(card_path)
    card = read_card(card_path)
    card["evaluation"] = dict(card.get("evaluation") or {}, **{str(key): results})
    write_text_atomic(card_path, json.dumps(card, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return card_path


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def list_models(models_dir: Optional[Union[str, os.PathLike]] = None) -> list:
    """Cards under ``models_dir`` (recursively): name (path relative to the folder, without .json), architecture,
    card path, whether the weights file is present. Files that are not model cards are skipped."""
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    if not root.is_dir():
        return []
    found = []
    for card_path in sorted(root.rglob("*.json")):
        try:
            card = read_card(card_path)
        except UnreadableFileError:
            continue
        found.append({
            "name": card_path.relative_to(root).with_suffix("").as_posix(),
            "architecture": card["architecture"],
            "card": str(card_path),
            "weights_present": (card_path.parent / card["weights"]).is_file(),
            "input": card.get("input", {}),
        })
    return found


__all__ = ["LoadedModel", "ModelIntegrityError", "load_model", "save_model", "list_models", "read_card", "record_evaluation",
           "resolve_card",
           "default_models_dir", "resolve_device", "sha256_of", "CLASS_NAMES", "CARD_FORMAT"]
