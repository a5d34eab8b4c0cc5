"""DAUGS on a slice series: prepare the 128x128 x 30-frame input, choose a pool member per series, map back.

``run_daugs(series, pool)``: series -> ``prepare_daugs_input`` (2x upsampling, 128x128 crop on the automatic LV
centre, pchip to 30 frames, robust-max scaling to [0, 1]) -> :func:`selection.select_members` (U-map at stride 2,
segmentation at stride 16, DAUGS choice = lowest U_pp; the established member = best validation Dice) -> labels and
U-map of the chosen member mapped back to the INPUT grid (labels nearest neighbour, U-map linear, 0 outside the crop)
-> QC flags (``PerfusionSegLib.qc.slice_qc`` on the input grid, plus the DAUGS flags).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np

from PerfusionSegLib.errors import InvalidParameterError

from .umap import MYOCARDIUM_LABEL, PATCH_SIZE, SEG_STRIDE, UMAP_MARGIN, UMAP_STRIDE

DEFAULT_POOL = "daugs_pool"
RESULT_FORMAT = "perfusion-daugs-result/1"
# published DAUGS input: 2x upsampled (~0.9 mm pixels), 128 crop, 30 frames pchip, scaled to [0, 1]
DAUGS_INPUT = {"spacing_mm": None, "scale": 2.0, "size": 128, "n_frames": 30, "temporal": "pchip",
               "normalise": "robust_max"}
# U_pp above which a slice is flagged "high_uncertainty": by default the pool's own calibrated threshold
# (uncertainty_threshold.py); a pool without one raises no such flag
POOL_THRESHOLD = "pool"


def prepare_daugs_input(series, *, center_yx=None, **overrides):
    """(array (30, 128, 128) float32 in [0, 1], NetworkGeometry) for a SliceSeries, DAUGS defaults + overrides."""
    from PerfusionSegLib.preprocess import prepare_for_network

    kwargs = dict(DAUGS_INPUT)
    kwargs.update({k: v for k, v in overrides.items() if k in DAUGS_INPUT or k == "dt"})
    x, geometry = prepare_for_network(series, center_yx=center_yx, **kwargs)
    x = np.asarray(x, dtype=np.float32)
    if kwargs.get("normalise") == "robust_max":
        x = np.clip(x, 0.0, 1.0)      # robust-max scaling leaves a few bright outliers above 1: DAUGS inputs are [0, 1]
    return x, geometry


def _input_overrides(pool) -> dict:
    """The pool members' card input spec (when they state one) in prepare_for_network's keywords."""
    spec = pool.input_spec() if hasattr(pool, "input_spec") else {}
    return {k: spec[k] for k in (*DAUGS_INPUT, "dt", "patch") if k in spec}


@dataclass
class DAUGSResult:
    """DAUGS outcome for one series. Arrays on the input grid unless named ``network_*``."""

    labels: np.ndarray                       # (Y, X) uint8: 1 LV blood pool, 2 LV myocardium, 3 RV blood pool
    umap: np.ndarray                         # (Y, X) float32, 0 outside the network crop
    upp: Dict[str, float]                    # every member (inf: no myocardium)
    utot: Dict[str, float]
    upp_stride: Dict[str, int]               # the U-map stride each member's U_pp was measured at
    chosen: str
    established: Optional[str]
    established_labels: Optional[np.ndarray]
    qc: dict
    flags: List[str]
    search: str                              # "fast" | "exhaustive"
    umap_stride: int
    seg_stride: int
    seconds: float
    n_patch_forwards: int
    geometry: object = None
    network_labels: Optional[np.ndarray] = None
    network_umap: Optional[np.ndarray] = None
    member_labels: Optional[Dict[str, np.ndarray]] = None
    pool_name: str = ""
    source: str = ""
    bn_adapted: bool = False                 # members' BatchNorm statistics re-estimated on this series
    ensemble: List[str] = field(default_factory=list)   # members whose mean probabilities made ``labels``

    @property
    def upp_chosen(self) -> float:
        return self.upp[self.chosen]

    def raw_labels(self) -> Optional[np.ndarray]:
        """The network labels (the chosen member's, or the ensemble's) on the input grid before
        ``postprocess.clean_labels`` (None without geometry)."""
        if self.geometry is None or self.network_labels is None:
            return None
        return _to_input_grid(self.geometry, self.network_labels, order=0).astype(np.uint8)

    def to_dict(self) -> dict:
        """The ``S_daugs.json`` content (JSON-safe: an infinite U_pp, i.e. no myocardium, is written as null)."""
        def num(v):
            return None if v is None or not math.isfinite(float(v)) else float(v)

        return _json_safe({
            "format": RESULT_FORMAT,
            "source": self.source,
            "pool": self.pool_name,
            "chosen": self.chosen,
            "established": self.established,
            "u_pp_chosen": num(self.upp_chosen),
            "u_pp": {k: num(v) for k, v in self.upp.items()},
            "u_tot": {k: num(v) for k, v in self.utot.items()},
            "u_pp_stride": dict(self.upp_stride),
            "umap_stride": self.umap_stride,
            "seg_stride": self.seg_stride,
            "search": self.search,
            "bn_adapted": self.bn_adapted,
            "labels_from": list(self.ensemble) or [self.chosen],
            "u_pp_null_means": "no myocardium segmented by that member",
            "qc_flags": list(self.flags),
            "qc": {k: v for k, v in self.qc.items() if k != "flags"},
            "seconds": round(self.seconds, 3),
            "patch_forwards": self.n_patch_forwards,
        })

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _json_safe(obj):
    """Plain JSON types; NaN and infinities become null (strict JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj if obj is None or isinstance(obj, str) else str(obj)


def _resolve_pool(pool, device: str):
    if pool is None:
        pool = DEFAULT_POOL
    if isinstance(pool, (str, bytes)) or hasattr(pool, "__fspath__"):
        from .pool import load_pool

        return load_pool(pool, device=device)
    return pool


def run_daugs(series, pool=None, *, umap_stride: int = UMAP_STRIDE, seg_stride: int = SEG_STRIDE, fast: bool = True,
              device: str = "auto", bf16: bool = False, keep_member_labels: bool = False, center_yx=None,
              schedule=None, batch_size: int = 64, margin=UMAP_MARGIN,
              uncertainty_threshold: Union[float, str, None] = POOL_THRESHOLD, input_overrides: Optional[dict] = None,
              postprocess: bool = True, adapt_bn: bool = False, ensemble: int = 1):
    """DAUGS segmentation of a SliceSeries (-> DAUGSResult) or of a Study / list of series (-> list, slices batched).

    ``pool``: a ModelPool, a pool folder or name (default: the shipped ``daugs_pool``), or a list of (name, model).
    ``fast``: staged search (:mod:`selection`); ``fast=False`` runs every member at ``umap_stride``.
    ``keep_member_labels``: also return every member's labels on the input grid (every member is then segmented
    at ``seg_stride``, not only the candidates of the fast search).
    ``center_yx``: the LV centre (input pixels; a list, one per slice, for several slices); by default each slice is
    located automatically, the slices of a :class:`Study` together (``localise.locate_lv_study``).
    ``uncertainty_threshold``: U_pp above which the ``high_uncertainty`` flag is raised; "pool" (default): the pool's
    calibrated value (none: no flag); None: never.
    ``input_overrides``: preparation keywords over the pool's (e.g. ``{"scale": 1.0}`` for series that are already
    2x interpolated, as the DAUGS authors' own crops are).
    ``postprocess``: clean the labels on the series grid (``postprocess.clean_labels``: stray blood-pool and RV
    islands, small myocardial islands, small enclosed gaps); the U-map and the member choice are not affected, and
    ``network_labels`` stay raw.
    ``adapt_bn``: each member's BatchNorm statistics are re-estimated on each slice's own segmentation windows before
    it segments that slice (test-time adaptation, ``networks.bn_adaptation``; no labels, nothing learnt).
    ``ensemble``: labels from the mean probabilities of this many of the best-ranked members
    (``SelectionResult.ensemble``; not in the paper, off at 1). The chosen member, its U-map and U_pp, and the QC
    inputs other than the labels do not change; no extra patch forwards.
    """
    from PerfusionSegLib.series import SliceSeries, Study

    from .selection import DEFAULT_SCHEDULE, RANK_STRIDE, select_members

    single = isinstance(series, SliceSeries)
    seq = [series] if single else list(getattr(series, "slices", series))
    if not seq or not all(isinstance(s, SliceSeries) for s in seq):
        raise InvalidParameterError("run_daugs needs a SliceSeries, a Study or a list of SliceSeries")
    if int(umap_stride) < 1 or int(seg_stride) < 1:
        raise InvalidParameterError(f"strides must be >= 1, got U-map {umap_stride}, segmentation {seg_stride}")
    if isinstance(ensemble, bool) or int(ensemble) != ensemble or ensemble < 1:
        raise InvalidParameterError(f"ensemble must be a whole number of members >= 1, got {ensemble!r}")
    pool_obj = _resolve_pool(pool, device)
    if isinstance(uncertainty_threshold, str):
        if uncertainty_threshold != POOL_THRESHOLD:
            raise InvalidParameterError(f"uncertainty_threshold must be a number, None or 'pool', "
                                        f"got {uncertainty_threshold!r}")
        from .uncertainty_threshold import pool_threshold
        uncertainty_threshold = pool_threshold(pool_obj)
    overrides = _input_overrides(pool_obj)
    unknown = sorted(set(input_overrides or {}) - set(DAUGS_INPUT) - {"dt"})
    if unknown:
        raise InvalidParameterError(f"unknown DAUGS input override(s) {unknown}; known: {sorted(DAUGS_INPUT)}, dt")
    overrides.update(input_overrides or {})
    patch = int(overrides.pop("patch", PATCH_SIZE))
    if center_yx is not None:
        centres = center_yx if not single else [center_yx]
    elif isinstance(series, Study) and len(seq) > 1:
        # the slices of one study cut the same LV: a slice whose LV disagrees with the others is located again,
        # then, if they still disagree, the pool's established member gives a second opinion
        from PerfusionSegLib.localise import locate_lv_study

        from .lv_detector import PoolLVDetector
        detector = PoolLVDetector(pool_obj, bf16=bf16)
        centres = [None if loc is None else loc.center_yx for loc in locate_lv_study(seq, detector=detector)]
    else:
        centres = [None] * len(seq)
    prepared = [prepare_daugs_input(s, center_yx=c, **overrides) for s, c in zip(seq, centres)]
    selections = select_members(pool_obj, [x for x, _ in prepared], umap_stride=int(umap_stride),
                                seg_stride=int(seg_stride), fast=fast,
                                schedule=DEFAULT_SCHEDULE if schedule is None else schedule,
                                rank_stride=int(seg_stride) if keep_member_labels else RANK_STRIDE,
                                batch_size=batch_size, bf16=bf16, margin=margin, patch=patch, adapt_bn=adapt_bn)
    results = [_to_result(s, geo, sel, pool_obj, keep_member_labels, uncertainty_threshold, postprocess, adapt_bn,
                          int(ensemble))
               for s, (_, geo), sel in zip(seq, prepared, selections)]
    return results[0] if single else results


def _to_input_grid(geometry, array: np.ndarray, order: int) -> np.ndarray:
    out = np.asarray(geometry.to_input_grid(array, order=order))
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _to_result(series, geometry, sel, pool, keep_member_labels: bool, uncertainty_threshold,
               postprocess: bool = True, bn_adapted: bool = False, ensemble: int = 1) -> DAUGSResult:
    from PerfusionSegLib.postprocess import clean_labels
    from PerfusionSegLib.qc import slice_qc

    def input_labels(network_grid_labels):
        out = _to_input_grid(geometry, network_grid_labels, order=0).astype(np.uint8)
        return clean_labels(out) if postprocess else out

    chosen = sel.chosen_evaluation
    ensemble_names, network_labels = sel.ensemble(ensemble)
    labels = input_labels(network_labels)
    umap = _to_input_grid(geometry, chosen.umap, order=1).astype(np.float32)
    umap = np.clip(umap, 0.0, 0.5)
    est_labels = None
    if sel.established is not None:
        est_labels = input_labels(sel.evaluations[sel.established].labels)
    member_labels = None
    if keep_member_labels:
        member_labels = {k: input_labels(v.labels) for k, v in sel.evaluations.items()}
    qc = slice_qc(labels, series.spacing, level=series.level, affine=series.affine)
    flags = list(qc.get("flags", []))
    flags += [f for f in sel.flags if f not in flags]
    if uncertainty_threshold is not None and math.isfinite(chosen.upp) and chosen.upp > float(uncertainty_threshold):
        flags.append("high_uncertainty")
    qc = dict(qc, u_pp=chosen.upp, u_tot=chosen.utot, flags=flags, ok=not flags)
    return DAUGSResult(labels=labels, umap=umap, upp=sel.upp, utot=sel.utot, upp_stride=sel.upp_stride,
                       chosen=sel.chosen, established=sel.established, established_labels=est_labels, qc=qc,
                       flags=flags, search=sel.mode, umap_stride=chosen.umap_stride, seg_stride=chosen.seg_stride,
                       seconds=sel.seconds, n_patch_forwards=sel.n_patch_forwards, geometry=geometry,
                       network_labels=network_labels, network_umap=chosen.umap, member_labels=member_labels,
                       pool_name=str(getattr(pool, "name", "")), source=str(getattr(series, "source", "")),
                       bn_adapted=bool(bn_adapted), ensemble=ensemble_names)


__all__ = ["DAUGSResult", "run_daugs", "prepare_daugs_input", "DEFAULT_POOL", "DAUGS_INPUT", "MYOCARDIUM_LABEL"]
