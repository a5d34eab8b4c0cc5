"""From a data spec to a shipped model: sources, validation set, one or several runs, export with a model card.

ResUNet: one run, the best validation epoch is exported (``<out>/resunet.pt`` + ``resunet.json``).
DAUGS: ``runs`` runs from different initialisations; every checkpoint whose validation myocardium Dice reaches the
threshold becomes a pool member (``PerfusionDAUGSLib.pool_training``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import InvalidParameterError
from ..machine import machine_description
from .recipes import Recipe




def build_sources(recipe: Recipe, data: Sequence[str], seed: int):
    from .data import FolderSource, MixedSource, PhantomSource, parse_data_spec, validation_set

    spec = parse_data_spec(data)
    sources = []
    folder = None
    if spec["presets"]:
        sources.append(PhantomSource(spec["presets"], recipe))
    if spec["folders"]:
        folder = FolderSource(spec["folders"], recipe, seed=seed)
        sources.append(folder)
    source = sources[0] if len(sources) == 1 else MixedSource(sources)
    # validation: phantom of the presets asked for (or the default mix when only folders were given, to have a
    # stable yardstick), plus held-out patients of the folders
    val_presets = spec["presets"] or (["siemens-flash-3t"] if not folder or not folder.val else [])
    val = validation_set(recipe, sorted(set(val_presets)), recipe.val_slices, seed, folder_source=folder)
    return source, val, spec


def train_family(recipe: Recipe, data: Sequence[str], out_dir, *, runs: Optional[int] = None, seed: int = 0,
                 device: str = "auto", resume: bool = True, max_minutes: Optional[float] = None,
                 dice_threshold: float = 0.87, max_members: int = 50, half: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    from .trainer import train

    out_dir = Path(out_dir)
    if recipe.family == "resunet" and runs not in (None, 1):
        raise InvalidParameterError("--runs applies to DAUGS pools; a ResUNet is one run")
    n_runs = 1 if recipe.family == "resunet" else (5 if runs is None else int(runs))
    if n_runs < 1:
        raise InvalidParameterError(f"--runs must be at least 1, got {runs}")
    source, val, spec = build_sources(recipe, data, seed)
    results = []
    for r in range(n_runs):
        run_dir = out_dir / "runs" / f"run{r:02d}"
        log(f"run {r + 1}/{n_runs} -> {run_dir}")
        results.append(train(recipe, source, val, run_dir, seed=seed + 1000 * r, device=device, resume=resume,
                             max_minutes=max_minutes, progress=progress, log=log))
    training = {
        "recipe": recipe.to_dict(), "data": {"phantom_presets": spec["presets"],
                                             "folders": [str(f) for f in spec["folders"]]},
        "seeds": [seed + 1000 * r for r in range(n_runs)], "machine": machine_description(),
        "seconds_per_run": [res.seconds for res in results], "epochs_per_run": [res.epochs_done for res in results],
        "validation": f"{len(val)} slices: phantom presets {sorted(set(spec['presets'])) or ['siemens-flash-3t']} "
                      f"from a separate seed stream, plus held-out labelled patients",
    }
    if recipe.family == "resunet":
        card_path = export_best(results[0], recipe, out_dir, "resunet", training, half=half)
        summary = f"ResUNet: best epoch {results[0].best_epoch}, validation myocardium Dice " \
                  f"{results[0].best_val_dice:.3f}; model card {card_path}"
        return {"summary": summary, "card": str(card_path), "runs": [str(r.run_dir) for r in results]}
    from PerfusionDAUGSLib.pool import build_pool_from_runs, read_index

    pool_dir = build_pool_from_runs([res.run_dir / "checkpoints" for res in results], out_dir / "pool",
                                    dice_threshold=dice_threshold, max_members=max_members, half=half,
                                    extra={"training": training})
    n_members = len(read_index(pool_dir)["members"])
    summary = f"DAUGS pool: {n_members} members (validation myocardium Dice >= {dice_threshold}) from {n_runs} runs -> {pool_dir}"
    return {"summary": summary, "pool": str(pool_dir), "n_members": n_members, "runs": [str(r.run_dir) for r in results]}


def export_best(result, recipe: Recipe, out_dir: Path, name: str, training: dict, *, half: bool = False) -> Path:
    """Save the best validation epoch of a run as a registered model (weights + card)."""
    from ..networks.registry import load_model, save_model

    if result.best_epoch is None:
        raise InvalidParameterError(f"run {result.run_dir} has no validated epoch to export")
    best = load_model(result.run_dir / "checkpoints" / f"e{result.best_epoch:03d}.json", device="cpu")
    card = dict(best.card, training=dict(best.card.get("training", {}), **training))
    return save_model(best.network, card, out_dir, name, half=half)
