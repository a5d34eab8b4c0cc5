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
from typing import Optional, Sequence, Union

import numpy as np

from PerfusionSegLib.errors import InvalidParameterError

QC_KEY = "qc"
THRESHOLD_KEY = "high_uncertainty_upp"


def calibrate_threshold(upp: Sequence[float], dice: Sequence[float], *, good_dice: float = 0.8,
                        false_alarm: float = 0.05, min_good: int = 10) -> dict:
    """{"high_uncertainty_upp": T, ...record} from the chosen members' U_pp and myocardium Dice of labelled slices."""
    u = np.asarray(upp, dtype=float)
    d = np.asarray(dice, dtype=float)
    if u.shape != d.shape or u.ndim != 1:
        raise InvalidParameterError("U_pp and Dice must be two lists of the same length")
    if not (0.0 < false_alarm < 0.5) or not (0.0 < good_dice <= 1.0):
        raise InvalidParameterError(f"false_alarm must be in (0, 0.5) and good_dice in (0, 1], got "
                                    f"{false_alarm}, {good_dice}")
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
