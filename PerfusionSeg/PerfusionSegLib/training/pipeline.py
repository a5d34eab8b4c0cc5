"""From a data spec to a shipped model: sources, validation set, one or several runs, export with a model card.

ResUNet: one run, the best validation epoch is exported (``<out>/resunet.pt`` + ``resunet.json``).
DAUGS: ``runs`` runs from different initialisations; every checkpoint whose validation myocardium Dice reaches the
threshold becomes a pool member (``PerfusionDAUGSLib.pool_training``).
"""
from __future__ import annotations

import os
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


def _validation_text(spec: dict) -> str:
    """What the validation slices are (build_sources' rule), for the model card."""
    phantom = f"phantom presets {sorted(set(spec['presets']))} from a separate seed stream"
    if not spec["folders"]:
        return phantom if spec["presets"] else "phantom presets ['siemens-flash-3t'] from a separate seed stream"
    held_out = "the held-out patients of the labelled folders"
    return f"{phantom}, plus {held_out}" if spec["presets"] else \
        f"{held_out} (phantom preset siemens-flash-3t when no patient is held out)"


def train_family(recipe: Recipe, data: Sequence[str], out_dir, *, runs: Optional[int] = None, seed: int = 0,
                 device: str = "auto", resume: bool = True, max_minutes: Optional[float] = None,
                 dice_threshold: float = 0.87, max_members: int = 50, min_epoch_gap: int = 2, half: bool = False,
                 parallel_runs: int = 1, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Train ``runs`` runs (run ``r`` seeded ``seed + 1000 r``) and export the model or pool.

    ``parallel_runs`` > 1 trains that many runs at once, one process each. On a GPU the phantom generation and the
    augmentation (CPU work) are the bottleneck of one run, so parallel runs keep the GPU busy; each run is the same as
    when trained alone (same seed, same data stream), so the result does not depend on it.
    """
    from .trainer import train

    out_dir = Path(out_dir)
    if recipe.family == "resunet" and runs not in (None, 1):
        raise InvalidParameterError("--runs applies to DAUGS pools; a ResUNet is one run")
    n_runs = 1 if recipe.family == "resunet" else (5 if runs is None else int(runs))
    if n_runs < 1:
        raise InvalidParameterError(f"--runs must be at least 1, got {runs}")
    if int(parallel_runs) < 1:
        raise InvalidParameterError(f"--parallel-runs must be at least 1, got {parallel_runs}")
    run_dirs = [out_dir / "runs" / f"run{r:02d}" for r in range(n_runs)]
    run_seeds = [seed + 1000 * r for r in range(n_runs)]
    run_kwargs = dict(device=device, resume=resume, max_minutes=max_minutes)
    workers = min(int(parallel_runs), n_runs)
    machine = machine_description()
    if workers > 1:   # each worker builds its own sources (the same ones, from the same seed)
        from .data import parse_data_spec

        spec = parse_data_spec(data)      # a bad spec fails here, before any process starts
        threads = max(1, (os.cpu_count() or 1) // workers)
        results, n_val = _train_runs_in_parallel(recipe, data, run_dirs, run_seeds, seed, workers, threads,
                                                  run_kwargs, log)
        machine += f"; {workers} runs at a time, {threads} CPU threads each"
    else:
        source, val, spec = build_sources(recipe, data, seed)
        n_val = len(val)
        results = []
        for r, (run_dir, run_seed) in enumerate(zip(run_dirs, run_seeds)):
            log(f"run {r + 1}/{n_runs} -> {run_dir}")
            results.append(train(recipe, source, val, run_dir, seed=run_seed, progress=progress, log=log,
                                 **run_kwargs))
    training = {
        "recipe": recipe.to_dict(), "data": {"phantom_presets": spec["presets"],
                                             "folders": [str(f) for f in spec["folders"]],
                                             "real_data": ("labelled folders above: their licence is the user's to "
                                                           "record" if spec["folders"] else
                                                           "none: synthetic phantom only (generated by this project)"),
                                             "licence": ("phantom images generated by this project; the labelled "
                                                         "folders' licence is the user's to record" if spec["folders"]
                                                         else "trained by this project on phantom images it "
                                                              "generated; no third-party images were used")},
        "seeds": run_seeds, "machine": machine,
        "seconds_per_run": [res.seconds for res in results], "epochs_per_run": [res.epochs_done for res in results],
        "validation": f"{n_val} slices: {_validation_text(spec)}",
    }
    if recipe.family == "resunet":
        card_path = export_best(results[0], recipe, out_dir, "resunet", training, half=half)
        summary = f"ResUNet: best epoch {results[0].best_epoch}, validation myocardium Dice " \
                  f"{results[0].best_val_dice:.3f}; model card {card_path}"
        return {"summary": summary, "card": str(card_path), "runs": [str(r.run_dir) for r in results]}
    from PerfusionDAUGSLib.pool import build_pool_from_runs, read_index

    pool_dir = build_pool_from_runs([res.run_dir / "checkpoints" for res in results], out_dir / "pool",
                                    dice_threshold=dice_threshold, max_members=max_members,
                                    min_epoch_gap=min_epoch_gap, half=half,
                                    extra={"training": training})
    n_members = len(read_index(pool_dir)["members"])
    summary = f"DAUGS pool: {n_members} members (validation myocardium Dice >= {dice_threshold}) from {n_runs} runs -> {pool_dir}"
    return {"summary": summary, "pool": str(pool_dir), "n_members": n_members, "runs": [str(r.run_dir) for r in results]}


def _train_runs_in_parallel(recipe: Recipe, data, run_dirs, run_seeds, data_seed: int, workers: int, threads: int,
                            run_kwargs: dict, log):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: torch (and CUDA) are not fork-safe once initialised in the parent
    results, n_val = [None] * len(run_dirs), None
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one_run, recipe, list(data), run_dir, data_seed, run_seed, threads,
                               run_kwargs): r for r, (run_dir, run_seed) in enumerate(zip(run_dirs, run_seeds))}
        log(f"{len(run_dirs)} runs, {workers} at a time ({threads} CPU threads each) -> {run_dirs[0].parent}")
        for future in as_completed(futures):
            r = futures[future]
            results[r], n_val = future.result()
            log(f"run {r + 1}/{len(run_dirs)} done: {results[r].epochs_done} epochs, {results[r].seconds:.0f} s")
    return results, n_val


def _train_one_run(recipe: Recipe, data, run_dir: Path, data_seed: int, run_seed: int, threads: int, run_kwargs: dict):
    """One run in a worker process: the sources are built from the same seed, so the run sees what it would see
    in the sequential loop; its log lines go to stderr, prefixed with the run's folder name. Returns the run's
    result and the size of its validation set."""
    import sys

    import torch

    from .trainer import train

    torch.set_num_threads(threads)
    source, val, _ = build_sources(recipe, data, data_seed)
    log = (lambda msg: print(f"[{run_dir.name}] {msg}", file=sys.stderr, flush=True))
    return train(recipe, source, val, run_dir, seed=run_seed, progress=False, log=log, **run_kwargs), len(val)


def export_best(result, recipe: Recipe, out_dir: Path, name: str, training: dict, *, half: bool = False) -> Path:
    """Save the best validation epoch of a run as a registered model (weights + card)."""
    from ..networks.registry import load_model, save_model

    if result.best_epoch is None:
        raise InvalidParameterError(f"run {result.run_dir} has no validated epoch to export")
    best = load_model(result.run_dir / "checkpoints" / f"e{result.best_epoch:03d}.json", device="cpu")
    card = dict(best.card, training=dict(best.card.get("training", {}), **training))
    return save_model(best.network, card, out_dir, name, half=half)
