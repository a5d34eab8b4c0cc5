"""A DAUGS model pool: a folder of member models (registry weights + model cards) with a ``pool.json`` index.

Layout::

    <pool>/pool.json                 index (below)
    <pool>/<member>.json, <member>.pt  one registry model per member (PerfusionSegLib.networks.registry)

``pool.json``::

    {"format": "perfusion-daugs-pool/1", "name": "...", "established": "<member with the best validation Dice>",
     "dice_threshold": 0.87, "created_utc": "...",
     "members": [{"name": ..., "card": "<member>.json", "weights_sha256": ..., "run": ..., "epoch": ...,
                  "val_dice": ...}, ...]}

Loading checks every member's weights against both the sha256 in ``pool.json`` and the one in its card (the registry
check), so a member replaced after the pool was built is refused even if its card was rewritten to match.
A pool is found by path (folder or its ``pool.json``) or by name: ``$PERFUSION_POOLS_DIR/<name>`` then
``<registry models dir>/<name>`` (``Resources/Models`` unless ``PERFUSION_MODELS_DIR`` says otherwise).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

from PerfusionSegLib.atomic import write_text_atomic
from PerfusionSegLib.errors import InvalidParameterError, UnreadableFileError

POOL_FORMAT = "perfusion-daugs-pool/1"
INDEX_NAME = "pool.json"
ENV_POOLS_DIR = "PERFUSION_POOLS_DIR"
DICE_KEYS = ("val_dice", "validation_dice", "val_myocardium_dice", "myocardium_dice", "dice_myocardium", "dice")


@dataclass
class PoolMember:
    """One member: its loaded model (``registry.LoadedModel``, or None when loaded lazily) and its provenance."""

    name: str
    card_path: Path
    weights_sha256: str
    run: Optional[str] = None
    epoch: Optional[int] = None
    val_dice: Optional[float] = None
    model: object = None

    @property
    def network(self):
        if self.model is None:
            raise InvalidParameterError(f"pool member {self.name} is not loaded")
        return self.model.network

    def index_entry(self) -> dict:
        return {"name": self.name, "card": self.card_path.name, "weights_sha256": self.weights_sha256,
                "run": self.run, "epoch": self.epoch, "val_dice": self.val_dice}


@dataclass
class ModelPool:
    """Members in pool order and the established member (best validation Dice)."""

    members: List[PoolMember]
    established: Optional[str]
    path: Optional[Path] = None
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def names(self) -> List[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> PoolMember:
        for m in self.members:
            if m.name == name:
                return m
        raise InvalidParameterError(f"no member {name!r} in pool {self.name!r}")

    def input_spec(self) -> dict:
        """The members' common ``card['input']`` (how to prepare data); they must agree."""
        specs = [dict(m.model.card.get("input", {})) for m in self.members if m.model is not None]
        if specs and any(s != specs[0] for s in specs[1:]):
            raise InvalidParameterError(f"pool {self.name!r} mixes members with different input specifications")
        return specs[0] if specs else {}


def _registry():
    from PerfusionSegLib.networks import registry  # imported at call time: the networks package may be absent
    return registry


def established_member(entries: Sequence[dict]) -> Optional[str]:
    """Name of the entry with the highest validation Dice (first such in pool order); None when none has a Dice."""
    best, best_dice = None, -math.inf
    for e in entries:
        d = e.get("val_dice")
        if d is not None and math.isfinite(float(d)) and float(d) > best_dice:
            best, best_dice = e["name"], float(d)
    return best


def resolve_pool_path(path_or_name: Union[str, os.PathLike]) -> Path:
    """The folder of a pool given as a folder, its pool.json, or a name in the pools/models directories."""
    p = Path(path_or_name).expanduser()
    if p.is_file() and p.name == INDEX_NAME:
        return p.parent
    if (p / INDEX_NAME).is_file():
        return p
    roots = []
    if os.environ.get(ENV_POOLS_DIR):
        roots.append(Path(os.environ[ENV_POOLS_DIR]).expanduser())
    roots.append(_registry().default_models_dir())
    for root in roots:
        if (root / str(path_or_name) / INDEX_NAME).is_file():
            return root / str(path_or_name)
    raise UnreadableFileError(f"no model pool at {path_or_name!r}: expected a folder with {INDEX_NAME} "
                              f"(searched {', '.join(str(r) for r in roots)})")


def read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"cannot read pool index {folder / INDEX_NAME}: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != POOL_FORMAT or not isinstance(index.get("members"), list):
        raise UnreadableFileError(f"{folder / INDEX_NAME} is not a {POOL_FORMAT} index")
    if not index["members"]:
        raise UnreadableFileError(f"pool {folder} has no members")
    return index


def load_pool(path_or_name: Union[str, os.PathLike], device: str = "auto", *, members: Optional[Iterable[str]] = None
              ) -> ModelPool:
    """Load a pool: index -> per member sha256 against the index and the card -> registry model on ``device``.

    ``members``: load only these names (the established member is kept in the index whatever is loaded).
    """
    reg = _registry()
    folder = resolve_pool_path(path_or_name)
    index = read_index(folder)
    wanted = None if members is None else set(members)
    loaded: List[PoolMember] = []
    for e in index["members"]:
        if wanted is not None and e.get("name") not in wanted:
            continue
        try:
            name, card_file, digest = str(e["name"]), str(e["card"]), str(e["weights_sha256"]).lower()
        except KeyError as exc:
            raise UnreadableFileError(f"pool index {folder / INDEX_NAME}: a member entry lacks {exc}") from None
        card_path = folder / card_file
        card = reg.read_card(card_path) if card_path.is_file() else None
        if card is None:
            raise UnreadableFileError(f"pool member {name}: model card {card_path} is missing")
        if str(card["weights_sha256"]).lower() != digest:
            raise reg.ModelIntegrityError(f"pool member {name}: its card records weights {card['weights_sha256'][:16]}..., "
                                          f"the pool index {digest[:16]}...: the member was replaced after the pool was built")
        model = reg.load_model(card_path, device=device)     # checks the weights' bytes against the card
        loaded.append(PoolMember(name=name, card_path=card_path, weights_sha256=digest, run=e.get("run"),
                                 epoch=e.get("epoch"), val_dice=e.get("val_dice"), model=model))
    if wanted is not None and len(loaded) != len(wanted):
        missing = sorted(wanted - {m.name for m in loaded})
        raise InvalidParameterError(f"pool {folder.name} has no member(s) {missing}")
    established = index.get("established") or established_member(index["members"])
    return ModelPool(members=loaded, established=established, path=folder, name=str(index.get("name") or folder.name),
                     meta={k: v for k, v in index.items() if k not in ("members",)})


def save_pool(members: Sequence, out_dir: Union[str, os.PathLike], *, name: Optional[str] = None,
              established: Optional[str] = None, dice_threshold: Optional[float] = None, half: bool = False,
              card: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    """Write a pool folder. ``members``: PoolMember objects with models, or dicts
    ``{"name", "network", "card" (optional), "run", "epoch", "val_dice"}``. Each member goes through
    ``registry.save_model`` (atomic, sha256 in its card); ``pool.json`` is written last, atomically. Returns the folder.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / INDEX_NAME).is_file())):
        raise InvalidParameterError(f"{out} exists and is not a pool folder: give a new or empty folder")
    # written into a staging folder that then replaces the old pool: no member of an earlier build is left behind,
    # and a failure half-way leaves the old pool as it was
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)              # mkdtemp makes it private; a pool folder is an ordinary one
    try:
        _write_pool(members, staging, name=name or out.name, established=established, dice_threshold=dice_threshold,
                    half=half, card=card, extra=extra)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "pool")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    return out


def _write_pool(members: Sequence, out: Path, *, name: str, established: Optional[str], dice_threshold, half: bool,
                card: Optional[dict], extra: Optional[dict]) -> None:
    reg = _registry()
    entries = []
    for m in members:
        if isinstance(m, PoolMember):
            d = {"name": m.name, "network": m.network, "card": dict(m.model.card), "run": m.run, "epoch": m.epoch,
                 "val_dice": m.val_dice}
        else:
            d = dict(m)
        if "name" not in d or "network" not in d:
            raise InvalidParameterError("every pool member needs a name and a network")
        base = {k: v for k, v in dict(card or {}).items()}
        base.update({k: v for k, v in dict(d.get("card") or {}).items()
                     if k not in ("format", "name", "weights", "weights_sha256", "weights_bytes", "weights_dtype")})
        base.setdefault("metrics", {})
        if d.get("val_dice") is not None:
            base["metrics"] = dict(base["metrics"], val_dice=float(d["val_dice"]))
        card_path = reg.save_model(d["network"], base, out, str(d["name"]), half=half)
        saved = reg.read_card(card_path)
        entries.append({"name": str(d["name"]), "card": card_path.name, "weights_sha256": saved["weights_sha256"],
                        "run": d.get("run"), "epoch": None if d.get("epoch") is None else int(d["epoch"]),
                        "val_dice": None if d.get("val_dice") is None else float(d["val_dice"])})
    names = [e["name"] for e in entries]
    if not entries:
        raise InvalidParameterError("a pool needs at least one member")
    if len(set(names)) != len(names):
        raise InvalidParameterError("pool member names must be unique")
    est = established or established_member(entries) or entries[0]["name"]
    if est not in names:
        raise InvalidParameterError(f"established member {est!r} is not in the pool")
    index = {"format": POOL_FORMAT, "name": name, "established": est,
             "dice_threshold": dice_threshold,
             "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "members": entries}
    if extra:
        index.update({k: v for k, v in extra.items() if k not in index})
    write_text_atomic(out / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def record_evaluation(path_or_name: Union[str, os.PathLike], key: str, results: dict) -> Path:
    """Store measured results in the pool's model card (``pool.json`` ``evaluation[key]``), atomically; the members
    and their checksums are left as they are. Returns the index path."""
    if not key or not isinstance(results, dict):
        raise InvalidParameterError("an evaluation needs a name and a dict of results")

    def add(index: dict) -> None:
        index["evaluation"] = dict(index.get("evaluation") or {}, **{str(key): results})
    return update_index(path_or_name, add)


def update_index(path_or_name: Union[str, os.PathLike], change: Callable[[dict], None]) -> Path:
    """Apply ``change`` to the pool's index (its model card) and write it back atomically; members untouched."""
    folder = resolve_pool_path(path_or_name)
    index = read_index(folder)
    change(index)
    write_text_atomic(folder / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return folder / INDEX_NAME


def _card_dice(card: dict) -> Optional[float]:
    """Validation myocardium Dice recorded in a model card (top level, ``metrics`` or ``validation``)."""
    for holder in (card, card.get("metrics") or {}, card.get("validation") or {},
                   (card.get("training") or {}).get("validation") or {}):
        if not isinstance(holder, dict):
            continue
        for k in DICE_KEYS:
            v = holder.get(k)
            if isinstance(v, dict):                         # e.g. {"dice": {"myocardium": 0.9}}
                v = v.get("myocardium", v.get("LV myocardium"))
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                return float(v)
    return None


def _card_epoch(card: dict, fallback: Optional[int]) -> Optional[int]:
    for holder in (card, card.get("training") or {}, card.get("metrics") or {}):
        if isinstance(holder, dict) and isinstance(holder.get("epoch"), (int, float)):
            return int(holder["epoch"])
    return fallback


GENERIC_FOLDER_NAMES = ("checkpoints", "checkpoint", "ckpt", "ckpts", "weights", "models")


def run_names(run_dirs: Sequence[Union[str, os.PathLike]]) -> List[str]:
    """A short distinct name per run folder: its name, or its parent's when the folder is e.g. ``run3/checkpoints``."""
    paths = [Path(r).resolve() for r in run_dirs]
    names = [p.parent.name if p.name.lower() in GENERIC_FOLDER_NAMES else p.name for p in paths]
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if names.count(n) == 1 else f"{n}-{seen[n]}")
    return out


def find_checkpoints(run_dirs: Sequence[Union[str, os.PathLike]]) -> List[dict]:
    """Every model card under the run folders with its run, epoch and validation Dice (None when not recorded)."""
    reg = _registry()
    found = []
    for run_dir, run_name in zip(run_dirs, run_names(run_dirs)):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UnreadableFileError(f"training run folder {run_dir} does not exist")
        for card_path in sorted(run_dir.rglob("*.json")):
            if card_path.name == INDEX_NAME:
                continue
            try:
                card = reg.read_card(card_path)
            except UnreadableFileError:
                continue                                    # not a model card (run config, logs)
            found.append({"card_path": card_path, "card": card, "run": run_name,
                          "epoch": _card_epoch(card, None), "val_dice": _card_dice(card)})
    return found


# Members of one run at least 2 epochs apart by default. Consecutive late checkpoints are near copies; they crowd the
# fast search's coarse bands and push the exhaustive choice out. On 20 fresh phantom series the shipped pool (built at
# gap 1) agreed on 15, its members thinned to gap 2 on 19, and a pool trained and built at gap 2 on 20, with fewer
# patch forwards (docs/daugs.md, nineteenth session).
DEFAULT_MIN_EPOCH_GAP = 2


def spaced_by_epoch(candidates: Sequence[dict], min_epoch_gap: int) -> List[dict]:
    """The candidates (dicts with "run", "epoch", "val_dice") that pool building keeps at ``min_epoch_gap``, best
    validation Dice first: within a run, one joins only if it lies at least ``min_epoch_gap`` epochs from every one
    of that run already kept (greedy). Candidates without an epoch are kept. Used by `build_pool_from_runs` and by
    the benchmark's replay of sub-pools of a built pool."""
    gap = int(min_epoch_gap)
    if gap < 1:
        raise InvalidParameterError(f"min_epoch_gap must be >= 1, got {min_epoch_gap}")
    ranked = sorted(candidates, key=lambda c: -(c["val_dice"] if c["val_dice"] is not None else -1.0))
    if gap == 1:
        return ranked       # every checkpoint, even two cards of one epoch
    kept: List[dict] = []
    for c in ranked:
        if c["epoch"] is None or all(k["run"] != c["run"] or k["epoch"] is None or abs(c["epoch"] - k["epoch"]) >= gap
                                     for k in kept):
            kept.append(c)
    return kept


def build_pool_from_runs(run_dirs: Sequence[Union[str, os.PathLike]], out_dir: Union[str, os.PathLike], *,
                         dice_threshold: float = 0.87, max_members: int = 50,
                         min_epoch_gap: int = DEFAULT_MIN_EPOCH_GAP, name: Optional[str] = None, half: bool = False,
                         device: str = "cpu", extra: Optional[dict] = None) -> Path:
    """Pool of the checkpoints (runs x epochs) whose validation myocardium Dice >= ``dice_threshold``.

    Above ``max_members``, the best by Dice are kept, spread over the runs (round robin over runs, each run's
    checkpoints in descending Dice), so one run cannot fill the pool. ``min_epoch_gap``: within a run, a checkpoint
    joins only if it lies at least this many epochs from every checkpoint of that run already chosen (greedy, best
    Dice first; `spaced_by_epoch`). Why: late checkpoints one epoch apart are near copies of each other; they add
    little to the pool's diversity, and they crowd the fast search's coarse bands so that it misses the exhaustive
    choice (`DEFAULT_MIN_EPOCH_GAP`). The established member is
    the best Dice. Checkpoints are loaded through the registry (sha256 checked) and copied into ``out_dir``.
    ``extra``: more index entries (the pool's model card: training data, recipe, time and machine).
    """
    if not 0.0 <= float(dice_threshold) <= 1.0:
        raise InvalidParameterError(f"Dice threshold must be in [0, 1], got {dice_threshold}")
    if int(max_members) < 1:
        raise InvalidParameterError(f"max_members must be >= 1, got {max_members}")
    if int(min_epoch_gap) < 1:
        raise InvalidParameterError(f"min_epoch_gap must be >= 1, got {min_epoch_gap}")
    ckpts = find_checkpoints(run_dirs)
    if not ckpts:
        raise UnreadableFileError(f"no model cards found under {', '.join(map(str, run_dirs))}")
    passing = [c for c in ckpts if c["val_dice"] is not None and c["val_dice"] >= float(dice_threshold)]
    if not passing:
        best = max((c["val_dice"] for c in ckpts if c["val_dice"] is not None), default=None)
        raise InvalidParameterError(f"no checkpoint reaches validation Dice {dice_threshold} "
                                    f"(best: {best if best is not None else 'none recorded'})")
    gap = int(min_epoch_gap)
    by_run: dict = {}
    for c in spaced_by_epoch(passing, gap):
        by_run.setdefault(c["run"], []).append(c)
    chosen = []
    while len(chosen) < int(max_members) and any(by_run.values()):
        for run in sorted(by_run):
            if by_run[run] and len(chosen) < int(max_members):
                chosen.append(by_run[run].pop(0))
    chosen.sort(key=lambda c: (c["run"], c["epoch"] if c["epoch"] is not None else -1, str(c["card_path"])))
    reg = _registry()
    members = []
    used = set()
    for c in chosen:
        base = f"{c['run']}_ep{c['epoch']:03d}" if c["epoch"] is not None else f"{c['run']}_{c['card_path'].stem}"
        mname, k = base, 1
        while mname in used:
            k += 1
            mname = f"{base}_{k}"
        used.add(mname)
        model = reg.load_model(c["card_path"], device=device)
        members.append({"name": mname, "network": model.network, "card": c["card"], "run": c["run"],
                        "epoch": c["epoch"], "val_dice": c["val_dice"]})
    return save_pool(members, out_dir, name=name, dice_threshold=float(dice_threshold), half=half,
                     extra={**(extra or {}), "source_runs": [str(Path(r)) for r in run_dirs],
                            "candidates": len(ckpts), "passing": len(passing), "min_epoch_gap": gap})
