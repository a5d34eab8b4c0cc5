"""The ``high_uncertainty`` QC flag's threshold on U_pp, calibrated per pool.

U_pp's scale depends on the members (their calibration, how sharp their softmax is), so one constant cannot serve
every pool. A pool stores its own threshold in its index (``pool.json`` ``qc.high_uncertainty_upp``) with the record
of how it was chosen: on labelled calibration slices (phantom studies from a seed range used for nothing else), the
threshold is the ``1 - false_alarm`` quantile of the chosen member's U_pp over the slices it segmented well
(myocardium Dice >= ``good_dice``), so about ``false_alarm`` of good segmentations are flagged. How many poor ones it
catches is then measured on other data (test studies, real series), not assumed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from PerfusionSegLib.errors import InvalidParameterError

from .umap import MYOCARDIUM_LABEL

QC_KEY = "qc"
THRESHOLD_KEY = "high_uncertainty_upp"


def calibrate_threshold(upp: Sequence[float], dice: Sequence[float], *, good_dice: float = 0.8,
                        false_alarm: float = 0.05, min_good: int = 10) -> dict:
    """{"high_uncertainty_upp": T, ...record} from the chosen members' U_pp and myocardium Dice of labelled slices."""
    u = np.asarray(upp, dtype=float)
    d = np.asarray(dice, dtype=float)
    if u.shape != d.shape or u.ndim != 1:
        raise InvalidParameterError("U_pp and Dice must be two lists of the same length")
    _check_rates(good_dice, false_alarm)
    ok = np.isfinite(u) & np.isfinite(d)
    good = ok & (d >= good_dice)
    if good.sum() < min_good:
        raise InvalidParameterError(f"only {int(good.sum())} calibration slices with myocardium Dice >= {good_dice}; "
                                    f"at least {min_good} are needed")
    threshold = float(np.quantile(u[good], 1.0 - false_alarm))
    poor = ok & (d < good_dice)
    return {THRESHOLD_KEY: threshold, "good_dice": float(good_dice), "false_alarm_target": float(false_alarm),
            "slices": int(ok.sum()), "good_slices": int(good.sum()), "poor_slices": int(poor.sum()),
            "good_flagged": int((u[good] > threshold).sum()), "poor_flagged": int((u[poor] > threshold).sum())}


def _check_rates(good_dice: float, false_alarm: float) -> None:
    if not (0.0 < false_alarm < 0.5) or not (0.0 <= good_dice <= 1.0):
        raise InvalidParameterError(f"false_alarm must be in (0, 0.5) and good_dice in [0, 1], got "
                                    f"{false_alarm}, {good_dice}")


def pool_threshold(pool) -> Optional[float]:
    """The pool's calibrated threshold (None when it has none: no high_uncertainty flag)."""
    meta = getattr(pool, "meta", None) or {}
    value = (meta.get(QC_KEY) or {}).get(THRESHOLD_KEY)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def store_threshold(path_or_name: Union[str, os.PathLike], calibration: dict) -> None:
    """Write a calibration (``calibrate_threshold``'s dict plus how the slices were made) into the pool's index."""
    from .pool import update_index

    value = calibration.get(THRESHOLD_KEY)
    if not isinstance(value, (int, float)) or not math.isfinite(float(value)) or value <= 0:
        raise InvalidParameterError(f"a calibration needs a positive finite {THRESHOLD_KEY}, got {value!r}")

    def put(index: dict) -> None:
        index[QC_KEY] = dict(calibration)
    update_index(path_or_name, put)


# ---- calibrating a pool on labelled studies ---------------------------------------------------------------------

# phantom studies for calibration come from their own seed range: training draws generate_training_slice from
# run-seeded streams, validation uses seed + 1e6, the phantom test set of the model cards 3,000,000 onwards
CALIBRATION_SEED_BASE = 4_000_000
CALIBRATION_STUDIES_PER_PRESET = 4


@dataclass
class CalibrationStudy:
    """Slices segmented together (a phantom study, or one labelled case) and their reference labels (input grid)."""
    name: str
    slices: list
    references: list


def phantom_calibration_studies(presets: Optional[Sequence[str]] = None,
                                studies_per_preset: int = CALIBRATION_STUDIES_PER_PRESET,
                                seed_base: int = CALIBRATION_SEED_BASE) -> Iterator[CalibrationStudy]:
    """``studies_per_preset`` whole phantom studies (3 slices, stress and rest alternating) of each preset (default:
    every preset), generated one at a time as they are consumed. Bad arguments raise here, not when consumed."""
    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.phantom.presets import PRESET_NAMES

    presets = list(presets or PRESET_NAMES)
    unknown = sorted(set(presets) - set(PRESET_NAMES))
    if unknown:
        raise InvalidParameterError(f"unknown phantom preset(s) {unknown}; known: {', '.join(PRESET_NAMES)}")
    if studies_per_preset < 1:
        raise InvalidParameterError(f"studies per preset must be at least 1, got {studies_per_preset}")

    def studies() -> Iterator[CalibrationStudy]:
        for preset in presets:
            for k in range(studies_per_preset):
                seed, condition = seed_base + k, ("stress", "rest")[k % 2]
                ps = generate_study(preset=preset, seed=seed, condition=condition)
                yield CalibrationStudy(f"{preset}/{seed}", list(ps.study.slices), [t.labels for t in ps.truth])
    return studies()


def phantom_description(presets: Optional[Sequence[str]], studies_per_preset: int,
                        seed_base: int = CALIBRATION_SEED_BASE) -> str:
    """How ``phantom_calibration_studies(presets, studies_per_preset, seed_base)`` makes its studies, for the record."""
    which = f"presets {list(presets)}" if presets else "every preset"
    return (f"phantom generate_study seeds {seed_base}-{seed_base + studies_per_preset - 1} x {which}, stress/rest "
            f"alternating")


def labelled_calibration_studies(cases: Sequence) -> Tuple[List[CalibrationStudy], int]:
    """(one study per exact labelled case, number of coarse cases left out). Rough outlines cannot tell a good
    segmentation (Dice >= 0.8) from a poor one, so coarse cases (``LabelledCase.coarse``) do not calibrate."""
    exact = [c for c in cases if not c.coarse]
    return [CalibrationStudy(c.case_id, [c.series], [c.labels]) for c in exact], len(cases) - len(exact)


def _segment_with_daugs(slices: list, pool, *, fast: bool, bf16: bool, device: str) -> list:
    from .daugs import run_daugs

    return run_daugs(slices, pool, fast=fast, bf16=bf16, device=device)


def calibrate_pool(pool, studies: Iterable[CalibrationStudy], *, good_dice: float = 0.8, false_alarm: float = 0.05,
                   fast: bool = True, bf16: bool = False, device: str = "cpu", segment: Optional[Callable] = None,
                   log: Optional[Callable[[str], None]] = None) -> dict:
    """Segment every calibration slice with the pool's DAUGS search and calibrate its ``high_uncertainty`` threshold.

    Returns ``calibrate_threshold``'s record plus ``search``, ``bf16`` and ``per_slice`` ([name, U_pp, myocardium
    Dice] of each slice); nothing is stored (``store_threshold`` does that). ``segment(slices, pool, fast=, bf16=,
    device=)`` -> results with ``labels`` and ``upp_chosen`` is ``run_daugs`` unless given (tests inject it).
    Raises InvalidParameterError when too few slices are segmented well to place the threshold.
    """
    from PerfusionSegLib.metrics import dice

    _check_rates(good_dice, false_alarm)         # before minutes of segmentation, not after
    segment = segment or _segment_with_daugs
    names, upp, myo_dice = [], [], []
    for study in studies:
        results = segment(study.slices, pool, fast=fast, bf16=bf16, device=device)
        for i, (result, reference) in enumerate(zip(results, study.references)):
            names.append(f"{study.name}#{i}" if len(study.slices) > 1 else study.name)
            upp.append(float(result.upp_chosen))
            myo_dice.append(float(dice(result.labels == MYOCARDIUM_LABEL, np.asarray(reference) == MYOCARDIUM_LABEL)))
            if log:
                log(f"calibration slice {names[-1]}: U_pp {upp[-1]:.4g}, myocardium Dice {myo_dice[-1]:.3f}")
    if not names:
        raise InvalidParameterError("no calibration slices")
    record = calibrate_threshold(upp, myo_dice, good_dice=good_dice, false_alarm=false_alarm)
    record.update(search="fast" if fast else "exhaustive", bf16=bool(bf16),
                  per_slice=[[n, (u if math.isfinite(u) else None), round(d, 4)]
                             for n, u, d in zip(names, upp, myo_dice)])
    return record


def calibration_studies(data: Sequence[str], *, studies_per_preset: int = CALIBRATION_STUDIES_PER_PRESET,
                        seed_base: int = CALIBRATION_SEED_BASE) -> Tuple[Iterable[CalibrationStudy], str]:
    """(the studies, a description for the record) of a data spec: ``phantom`` (every preset), ``phantom:a,b``
    (those presets) and/or folders of labelled cases (the Slicer export format; their exact cases)."""
    import itertools

    from PerfusionSegLib.labelling import read_labelled_dataset
    from PerfusionSegLib.phantom.presets import PRESET_NAMES

    presets: List[str] = []
    folders: List[str] = []
    for item in data:
        if item == "phantom":
            presets.extend(PRESET_NAMES)
        elif item.startswith("phantom:"):
            presets.extend(p for p in item.split(":", 1)[1].split(",") if p)
        elif os.path.isdir(item):
            folders.append(item)
        else:
            raise InvalidParameterError(f"calibration data {item!r}: not 'phantom[:presets]' and not a folder")
    if not presets and not folders:
        raise InvalidParameterError("no calibration data named")
    presets = list(dict.fromkeys(presets))
    parts, sources = [], []
    if presets:
        phantom = phantom_calibration_studies(presets, studies_per_preset, seed_base)
        sources.append(phantom)
        parts.append(phantom_description(presets, studies_per_preset, seed_base))
    for folder in folders:
        labelled, coarse = labelled_calibration_studies(read_labelled_dataset(folder))
        sources.append(labelled)
        parts.append(f"{len(labelled)} exact labelled cases of {folder}"
                     + (f" ({coarse} coarse cases left out)" if coarse else ""))
    return itertools.chain(*sources), "; ".join(parts)


def calibration_summary(record: dict) -> str:
    """Two lines: the threshold and how it separates the calibration slices (``calibrate_pool``'s record with its
    ``calibration_set``)."""
    return (f"high_uncertainty threshold U_pp > {record['high_uncertainty_upp']:.4g} ({record['search']} search"
            f"{', bf16' if record['bf16'] else ''}; {record['calibration_set']})\n"
            f"{record['slices']} slices: {record['good_slices']} with myocardium Dice >= {record['good_dice']} "
            f"({record['good_flagged']} flagged), {record['poor_slices']} below ({record['poor_flagged']} flagged)")
