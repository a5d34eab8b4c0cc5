"""A resumable trainer for both families: epochs of on-the-fly batches, validation Dice, checkpoints, early stopping.

Layout of a run folder::

    run/state.pt            everything needed to resume (weights, optimiser, scheduler, RNG states, history)
    run/checkpoints/e003.pt weights after epoch 3 (a registered model: state dict + e003.json model card with the
                            input spec, the recipe and the validation Dice; loadable with networks.registry)
    run/history.json        per epoch: loss, validation Dice per class, learning rate, seconds
    run/best.json           the best epoch by validation myocardium Dice

Every file is written atomically, so a run killed at any moment resumes from its last complete epoch. Nothing is
pickled but tensors and plain containers (``torch.load(..., weights_only=True)`` reads them all).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..atomic import atomic_output, write_text_atomic
from ..errors import InvalidParameterError
from .recipes import Recipe

MYOCARDIUM = 2


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: Optional[int]
    best_val_dice: Optional[float]
    history: list
    stopped_early: bool
    seconds: float      # epochs of earlier invocations plus the whole of this one (data generation included)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int] = (1, 2, 3)) -> dict:
    """Dice of each class over a whole set (pixels pooled), NaN where the class is absent from both. Pixels whose
    reference is a partial label (``weak_labels.NOT_LV``, ``weak_labels.UNKNOWN``: coarsely labelled cases) are left out."""
    from ..weak_labels import NOT_LV, UNKNOWN

    known = (ref != NOT_LV) & (ref != UNKNOWN)
    out = {}
    for c in classes:
        p, r = (pred == c) & known, ref == c
        denom = p.sum() + r.sum()
        out[int(c)] = float(2 * np.logical_and(p, r).sum() / denom) if denom else float("nan")
    return out


def predict_probabilities(network, image: np.ndarray, recipe: Recipe, device) -> np.ndarray:
    """Class probabilities (C, S, S) of one (T, S, S) image: the softmax of the whole field for ResUNet, the mean
    softmax over the covering stride-16 patches for DAUGS."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    with torch.inference_mode():
        if recipe.patch is None:
            return torch.softmax(network(x[None].to(device)), 1)[0].cpu().numpy()
        from PerfusionDAUGSLib.patching import accumulate, extract_patches, make_grid

        grid = make_grid(x.shape, patch=recipe.patch, stride=16)
        patches = extract_patches(x, grid.offsets, grid.patch_shape).to(device)
        probs = torch.softmax(network(patches), 1).cpu()                     # (N, C, p, p)
        return np.asarray(accumulate(probs.permute(1, 0, 2, 3), grid.offsets, x.shape[-2:]).mean(), np.float32)


def labels_from_prediction(prob: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Labels from ``predict_probabilities`` as the product labels them: the arg-max for ResUNet; for DAUGS the
    published rule that ``run_daugs`` applies (myocardium where its mean probability >= 0.5, elsewhere the arg-max of
    the other classes), so that validation and the transfer check measure what a user gets."""
    if recipe.patch is None:
        return np.argmax(prob, axis=0).astype(np.uint8)
    from PerfusionDAUGSLib.umap import labels_from_probabilities

    return labels_from_probabilities(prob)


def predict_labels(network, image: np.ndarray, recipe: Recipe, device) -> np.ndarray:
    """Labels of one (T, S, S) image (``predict_probabilities`` then ``labels_from_prediction``)."""
    return labels_from_prediction(predict_probabilities(network, image, recipe, device), recipe)


def validate(network, val_set, recipe: Recipe, device) -> dict:
    network.eval()
    preds = [predict_labels(network, img, recipe, device) for img, _ in val_set]
    refs = [lab for _, lab in val_set]
    return dice_per_class(np.stack(preds), np.stack(refs))


def _batch(bank, recipe: Recipe, gen, device):
    """One augmented training batch (images (N, T, H, W), labels (N, H, W)) from the bank."""
    import torch

    from .augment import augment_daugs, shift_crop

    if recipe.patch is None:
        imgs, labs = bank.sample(recipe.batch_size)
        x, y = torch.from_numpy(imgs), torch.from_numpy(labs)
        if recipe.augment == "xue":
            x, y = shift_crop(x, y, recipe.size, recipe.n_frames, gen)
        elif recipe.augment == "daugs":
            x, y = augment_daugs(x, y, gen)
        return x.to(device), y.to(device)
    # patches: whole slices are augmented first (rotations need context), then cut at the recipe's stride
    from PerfusionDAUGSLib.patching import extract_patches, make_grid

    grid = make_grid((recipe.size, recipe.size), patch=recipe.patch, stride=recipe.patch_stride)
    per_slice = grid.n_patches
    n_slices = max(1, -(-recipe.batch_size // per_slice))
    imgs, labs = bank.sample(n_slices)
    x, y = torch.from_numpy(imgs), torch.from_numpy(labs)
    if recipe.augment == "daugs":
        x, y = augment_daugs(x, y, gen)
    xs = torch.cat([extract_patches(x[i], grid.offsets, grid.patch_shape) for i in range(n_slices)])
    ys = torch.cat([extract_patches(y[i][None], grid.offsets, grid.patch_shape)[:, 0] for i in range(n_slices)])
    keep = torch.randperm(xs.shape[0], generator=gen)[: recipe.batch_size]
    return xs[keep].to(device), ys[keep].long().to(device)


def _save_tensor_dict(obj: dict, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _finite_or_none(value):
    return float(value) if value is not None and np.isfinite(value) else None


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def _initialise_from(network, card_path, recipe: Recipe, log) -> None:
    """Copy a trained model's weights into ``network`` (fine-tuning); refuses a model of another shape or input."""
    from ..networks.registry import load_model

    loaded = load_model(card_path, device="cpu")
    card = loaded.card
    if card.get("architecture") != recipe.architecture:
        raise InvalidParameterError(f"--init model {loaded.card_path.name} is a {card.get('architecture')!r}, the "
                                    f"recipe trains a {recipe.architecture!r}")
    theirs = dict(card.get("input") or {})
    ours = recipe.input_spec()
    differ = sorted(k for k in ours if k in theirs and theirs[k] != ours[k])
    if differ:
        raise InvalidParameterError(f"--init model {loaded.card_path.name} was trained on other inputs "
                                    f"({', '.join(f'{k}: {theirs[k]!r} vs {ours[k]!r}' for k in differ)})")
    mine = network.state_dict()
    state = loaded.network.state_dict()
    if set(state) != set(mine) or any(state[k].shape != mine[k].shape for k in mine):
        raise InvalidParameterError(f"--init model {loaded.card_path.name} does not fit the {recipe.config!r} "
                                    f"configuration of {recipe.architecture}")
    network.load_state_dict({k: v.to(mine[k].device, mine[k].dtype).contiguous() for k, v in state.items()})
    log(f"initialised from {loaded.card_path}")


def train(recipe: Recipe, source, val_set: List, run_dir, *, seed: int = 0, device: str = "auto",
          resume: bool = True, max_minutes: Optional[float] = None, progress: bool = True,
          log: Callable[[str], None] = print, init_from=None) -> TrainResult:
    """Train one network with ``recipe`` on examples drawn from ``source`` (``.draw(rng) -> (image, labels)``).

    ``init_from``: a model card (path or shipped name) whose weights start the run instead of He initialisation, to
    fine-tune a trained model (e.g. a shipped pool member on a site's own labelled cases); its architecture,
    configuration and input must match the recipe's. A resumed run continues from its own state instead."""
    import torch
    from tqdm import tqdm

    from ..networks import build_network
    from ..networks.losses import CEJaccardLoss
    from ..networks.registry import resolve_device, save_model
    from .data import SliceBank

    if recipe.epochs < 1 or recipe.steps_per_epoch < 1 or recipe.batch_size < 1:
        raise InvalidParameterError("epochs, steps per epoch and batch size must be positive")
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    network = build_network(recipe.architecture, config=recipe.config, in_channels=recipe.n_frames).to(dev)
    state_path = run_dir / "state.pt"
    if init_from is not None and not (resume and state_path.exists()):
        _initialise_from(network, init_from, recipe, log)
    optimiser = torch.optim.Adam(network.parameters(), lr=recipe.lr, betas=tuple(recipe.betas), eps=recipe.eps)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=recipe.lr_halve_every, gamma=0.5)
    loss_fn = CEJaccardLoss(jaccard_weight=1.0 if recipe.loss == "ce+jaccard" else 0.0)
    history: list = []
    start_epoch = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        history = json.loads(state["history"])
        start_epoch = len(history)
        log(f"resuming {run_dir} after epoch {start_epoch}")
    write_text_atomic(run_dir / "recipe.json", json.dumps({**recipe.to_dict(), "seed": seed}, indent=2))

    t_start = time.time()
    # the budget is per run, not per invocation: epochs of earlier (interrupted) invocations count against it
    spent_before = sum(h.get("seconds", 0.0) for h in history)
    best = max(history, key=lambda h: h["val_dice"].get("2") or -1) if history else None
    stale = 0 if best is None else len(history) - 1 - history.index(best)
    stopped_early = False
    out_of_time = lambda: (max_minutes is not None and bool(history)  # noqa: E731 - always >= 1 epoch
                           and (spent_before + time.time() - t_start) / 60 > max_minutes)
    bank = None
    for epoch in range(start_epoch, recipe.epochs):
        if out_of_time():
            log(f"time budget of {max_minutes} min reached after epoch {epoch}")
            break
        if recipe.early_stop_patience and stale >= recipe.early_stop_patience:   # a run that stopped early, resumed
            log(f"early stop: no validation Dice gain for {stale} epochs (before this invocation)")
            stopped_early = True
            break
        if bank is None:  # generated only when an epoch will run (a finished run, started again, returns at once)
            bar = tqdm(total=recipe.bank_size, desc="generating examples", disable=not progress, leave=False)
            bank = SliceBank(source, recipe.bank_size, rng, progress=bar)
            bar.close()
        t0 = time.time()
        if epoch > start_epoch:
            bank.refresh(recipe.bank_refresh)
        network.train()
        losses = []
        for _ in tqdm(range(recipe.steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
                      leave=False):
            x, y = _batch(bank, recipe, gen, dev)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(x), y)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        val = validate(network, val_set, recipe, dev) if val_set else {}
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": optimiser.param_groups[0]["lr"],
                 "val_dice": {str(k): _finite_or_none(v) for k, v in val.items()}, "seconds": round(time.time() - t0, 2)}
        history.append(entry)
        save_model(network, {"architecture": recipe.architecture, "input": recipe.input_spec(),
                             "training": {"recipe": recipe.to_dict(), "seed": seed, "epoch": epoch + 1},
                             "metrics": {"val_dice": _finite_or_none(val.get(MYOCARDIUM)), "epoch": epoch + 1,
                                         "val_dice_per_class": entry["val_dice"]}},
                   run_dir / "checkpoints", f"e{epoch + 1:03d}")
        _save_tensor_dict({"model": network.state_dict(), "optimiser": optimiser.state_dict(),
                           "scheduler": scheduler.state_dict(), "numpy_rng": _rng_state(rng),
                           "torch_gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                           "history": json.dumps(history)}, state_path)
        write_text_atomic(run_dir / "history.json", json.dumps(history, indent=1))
        myo = val.get(MYOCARDIUM, float("nan"))
        log(f"epoch {epoch + 1}: loss {entry['loss']:.4f}, val Dice myo {myo:.3f} "
            f"(blood {val.get(1, float('nan')):.3f}, RV {val.get(3, float('nan')):.3f}), {entry['seconds']:.0f} s")
        if best is None or (np.isfinite(myo) and myo > (best["val_dice"].get("2") or -1)):
            best, stale = entry, 0
            write_text_atomic(run_dir / "best.json", json.dumps(best, indent=1))
        else:
            stale += 1
        if recipe.early_stop_patience and stale >= recipe.early_stop_patience:
            log(f"early stop: no validation Dice gain for {stale} epochs")
            stopped_early = True
            break
    return TrainResult(run_dir, len(history), best["epoch"] if best else None,
                       (best["val_dice"].get("2") if best else None), history, stopped_early,
                       round(spent_before + time.time() - t_start, 1))
