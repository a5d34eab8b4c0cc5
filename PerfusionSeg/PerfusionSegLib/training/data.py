"""Where training examples come from: the phantom on the fly, or labelled folders (the Slicer export format).

Generation is the slow part on a laptop CPU, so examples live in a :class:`SliceBank` that keeps ``bank_size`` slices in
memory (float16) and replaces a fraction of them with new ones every epoch; augmentation makes every draw different.
Validation sets are built once, from separate "patients": phantom draws from another seed stream, or whole labelled
patients held out (the split is by patient, never by slice).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidParameterError
from .recipes import Recipe

Example = Tuple[np.ndarray, np.ndarray]  # (T, H, W) float32 in [0, 1], (H, W) uint8 labels


def parse_data_spec(spec: Sequence[str]) -> dict:
    """``["phantom:randomised,siemens-flash-3t", "/data/cases"]`` -> {"presets": [...], "folders": [...]}."""
    from ..phantom.presets import PRESET_NAMES

    presets: List[str] = []
    folders: List[Path] = []
    for item in spec:
        if item == "phantom" or item.startswith("phantom:"):
            names = item.split(":", 1)[1].split(",") if ":" in item else ["randomised"]
            for name in names:
                if name not in PRESET_NAMES:
                    raise InvalidParameterError(f"unknown phantom preset {name!r} in --data; known: {', '.join(PRESET_NAMES)}")
                presets.append(name)
        else:
            p = Path(item)
            if not p.is_dir():
                raise InvalidParameterError(f"--data {item}: not 'phantom[:presets]' and not a folder")
            folders.append(p)
    if not presets and not folders:
        raise InvalidParameterError("--data names no source")
    return {"presets": presets, "folders": folders}


def _field(recipe: Recipe) -> Tuple[int, int]:
    """Generated field and window: larger than the network input when the recipe crops at random (Xue shifts)."""
    if recipe.augment == "xue":
        return recipe.size + 2 * recipe.shift_px, recipe.n_frames + 2 * recipe.shift_frames
    return recipe.size, recipe.n_frames


class PhantomSource:
    """Draws training slices from the phantom presets, uniformly over presets."""

    def __init__(self, presets: Sequence[str], recipe: Recipe):
        if not presets:
            raise InvalidParameterError("PhantomSource needs at least one preset")
        self.presets = list(presets)
        self.recipe = recipe
        self.size, self.n_frames = _field(recipe)

    def draw(self, rng: np.random.Generator) -> Example:
        from ..phantom import generate_training_slice

        preset = self.presets[int(rng.integers(len(self.presets)))]
        img, labels = generate_training_slice(rng, preset, n_frames=self.n_frames, size=self.size,
                                              pixel_mm=self.recipe.pixel_mm,
                                              frame_interval_s=self.recipe.frame_interval_s)
        return img.astype(np.float32), labels.astype(np.uint8)


@dataclass
class PreparedCase:
    patient: str
    image: np.ndarray   # (T, S, S) float32, network grid
    labels: np.ndarray  # (S, S) uint8


def _patient_of(case) -> str:
    meta = getattr(case, "meta", {}) or {}
    return str(meta.get("patient_id") or meta.get("patient") or case.case_id.split("_")[0])


def prepare_labelled_case(case, recipe: Recipe) -> PreparedCase:
    """A labelled case on the network grid, centred on its labelled LV blood pool (the label is the truth here).
    A coarse case (rough outlines) becomes partial labels first (``weak_labels``), on its own grid."""
    labels = case.labels
    if case.coarse:
        from ..weak_labels import weak_labels_from_coarse

        labels = weak_labels_from_coarse(labels)
    image, labels = labelled_series_on_network_grid(case.series, labels, recipe)
    return PreparedCase(_patient_of(case), image, labels)


def labelled_series_on_network_grid(series, labels: np.ndarray, recipe: Recipe) -> Example:
    """(image (T, S, S) float32, labels (S, S) uint8) as ``recipe`` prepares its inputs (field, frames, spacing or
    interpolation factor, robust max), centred on the labelled LV blood pool."""
    from scipy import ndimage

    from ..preprocess import prepare_for_network

    size, n_frames = _field(recipe)
    bp = labels == 1
    centre = ndimage.center_of_mass(bp) if bp.any() else None
    kwargs = dict(size=size, n_frames=n_frames, temporal=recipe.temporal, center_yx=centre, normalise="robust_max")
    if recipe.pixel_mm is not None:
        kwargs.update(spacing_mm=recipe.pixel_mm)
    else:
        kwargs.update(spacing_mm=None, scale=2.0)
    if recipe.frame_interval_s is not None:
        kwargs.update(dt=recipe.frame_interval_s)
    image, geometry = prepare_for_network(series, **kwargs)
    return image.astype(np.float32), geometry.to_network_grid(labels, order=0).astype(np.uint8)


def split_by_patient(patients: Sequence[str], val_fraction: float, seed: int) -> set:
    """Validation patients: a stable, seeded choice of about ``val_fraction`` of the distinct patients (at least one
    when there are two or more)."""
    unique = sorted(set(patients))
    if len(unique) < 2 or val_fraction <= 0:
        return set()
    key = lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()  # noqa: E731 - stable per patient
    n_val = max(1, int(round(val_fraction * len(unique))))
    return set(sorted(unique, key=key)[:n_val])


VAL_FRACTION = 0.2      # of the labelled folders' patients, held out for validation


def split_cases_by_patient(cases: Sequence, val_fraction: float, seed: int) -> Tuple[list, list]:
    """(training cases, validation cases) of labelled cases, split by patient (``split_by_patient``)."""
    val_patients = split_by_patient([_patient_of(c) for c in cases], val_fraction, seed)
    return ([c for c in cases if _patient_of(c) not in val_patients],
            [c for c in cases if _patient_of(c) in val_patients])


class FolderSource:
    """Labelled cases from folders written by `labelling.export_labelled_case`; draws uniformly from the training
    patients' cases."""

    def __init__(self, folders: Sequence[Path], recipe: Recipe, *, val_fraction: float = VAL_FRACTION, seed: int = 0):
        from ..labelling import read_labelled_dataset

        cases = [c for folder in folders for c in read_labelled_dataset(folder)]
        train, val = split_cases_by_patient(cases, val_fraction, seed)
        self.train = [prepare_labelled_case(c, recipe) for c in train]
        self.val = [prepare_labelled_case(c, recipe) for c in val]
        if not self.train:
            raise InvalidParameterError("no training cases left after the patient split")

    def draw(self, rng: np.random.Generator) -> Example:
        case = self.train[int(rng.integers(len(self.train)))]
        return case.image, case.labels


class MixedSource:
    """Draws from several sources in turn (phantom and real labelled cases together)."""

    def __init__(self, sources: Sequence, weights: Optional[Sequence[float]] = None):
        self.sources = list(sources)
        w = np.ones(len(self.sources)) if weights is None else np.asarray(weights, float)
        self.p = w / w.sum()

    def draw(self, rng: np.random.Generator) -> Example:
        return self.sources[int(rng.choice(len(self.sources), p=self.p))].draw(rng)


class SliceBank:
    """``size`` examples in memory (float16 images), refreshed by a fraction each epoch."""

    def __init__(self, source, size: int, rng: np.random.Generator, progress=None):
        self.source, self.rng = source, rng
        self.images: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []
        for _ in range(int(size)):
            self._append(*source.draw(rng))
            if progress is not None:
                progress.update(1)

    def _append(self, img: np.ndarray, lab: np.ndarray) -> None:
        self.images.append(img.astype(np.float16))
        self.labels.append(lab.astype(np.uint8))

    def refresh(self, fraction: float) -> int:
        n = int(round(fraction * len(self.images)))
        for i in self.rng.choice(len(self.images), size=n, replace=False) if n else []:
            img, lab = self.source.draw(self.rng)
            self.images[i], self.labels[i] = img.astype(np.float16), lab.astype(np.uint8)
        return n

    def sample(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(len(self.images), size=int(n))
        return (np.stack([self.images[i] for i in idx]).astype(np.float32),
                np.stack([self.labels[i] for i in idx]).astype(np.int64))


def validation_set(recipe: Recipe, presets: Sequence[str], n: int, seed: int,
                   folder_source: Optional[FolderSource] = None) -> List[Example]:
    """Fixed validation examples at the network input size: phantom "patients" from a seed stream disjoint from
    training (``seed`` + 1e6), plus the held-out patients of labelled folders."""
    from ..phantom import generate_training_slice

    out: List[Example] = []
    rng = np.random.default_rng(int(seed) + 1_000_000)
    for i in range(int(n) if presets else 0):
        img, lab = generate_training_slice(rng, presets[i % len(presets)], n_frames=recipe.n_frames,
                                           size=recipe.size, pixel_mm=recipe.pixel_mm,
                                           frame_interval_s=recipe.frame_interval_s)
        out.append((img.astype(np.float32), lab.astype(np.uint8)))
    if folder_source is not None:
        for case in folder_source.val:
            out.append(_centre_crop(case.image, case.labels, recipe))
    return out


def _centre_crop(image: np.ndarray, labels: np.ndarray, recipe: Recipe) -> Example:
    """Cut the network-size field and window out of a case prepared with the larger augmentation field."""
    t0, h0, w0 = image.shape
    oy, ox, ot = (h0 - recipe.size) // 2, (w0 - recipe.size) // 2, (t0 - recipe.n_frames) // 2
    return (image[ot:ot + recipe.n_frames, oy:oy + recipe.size, ox:ox + recipe.size],
            labels[oy:oy + recipe.size, ox:ox + recipe.size])
