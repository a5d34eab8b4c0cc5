"""Whole-study analysis on plain arrays: the sequence behind the PerfusionSeg panel and `perfusion demo`.

segment (ResUNet model or DAUGS pool) -> RV insertion points -> AHA sectors -> [Gd] -> AIF -> pixel-wise MBF ->
16-segment table (stress, rest, reserve) -> bullseye PNG. Each step is one Lib call; this module only orders them,
reports progress, checks for cancellation between steps, and keeps going (with a message) when an optional step
cannot be done, so a panel always gets the segmentation even when, say, no AIF can be found.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .aha import TERRITORY_OF_SEGMENT as TERRITORY
from .background import SyncContext
from .errors import InvalidParameterError

AHA_SEGMENTS = tuple(range(1, 17))
METHODS = ("auto", "resunet", "daugs")
LV_BLOOD, LV_MYO = 1, 2


@dataclass
class AnalysisOptions:
    method: str = "auto"                 # "auto" (what is installed: the DAUGS pool first) | "resunet" | "daugs"
    device: str = "auto"                 # "auto" | "cpu" | "cuda"
    model: Optional[str] = None          # model card path or name; None: the first full-image model found
    pool: Optional[str] = None           # DAUGS pool (folder or card); None: the default pool
    models_dirs: tuple = ()              # folders with model cards, searched in order (the user's folder first)
    umap_stride: int = 2
    seg_stride: int = 16
    compute_mbf: bool = True
    output_dir: Optional[str] = None     # where the bullseye PNG goes (a new temporary folder when None)
    exhaustive: bool = False             # DAUGS: every member at the U-map stride (minutes) instead of the staged search
    bf16: bool = False                   # bfloat16 inference (about 2x faster on CPUs with AVX512-BF16, and on GPUs)
    ensemble: int = 1                    # DAUGS: labels from the mean probabilities of this many best-ranked members

    def __post_init__(self):
        self.method = str(self.method).lower()
        if self.method not in METHODS:
            raise InvalidParameterError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        device = str(self.device).lower()
        self.device = {"gpu": "cuda"}.get(device, device)
        if self.exhaustive and self.method == "resunet":
            raise InvalidParameterError("the exhaustive search is the DAUGS pool's: choose the DAUGS method")
        if isinstance(self.ensemble, bool) or int(self.ensemble) != self.ensemble or self.ensemble < 1:
            raise InvalidParameterError(f"ensemble must be a whole number of members >= 1, got {self.ensemble!r}")
        if self.ensemble > 1 and self.method == "resunet":
            raise InvalidParameterError("an ensemble averages DAUGS pool members: choose the DAUGS method")


@dataclass
class SliceAnalysis:
    condition: str
    level: str
    source: str
    labels: np.ndarray                     # (Y, X) uint8 project codes on the input grid
    sectors: Optional[np.ndarray] = None   # (Y, X) uint8 AHA segment 1-16 on myocardium
    insertion: object = None               # aha.InsertionPoints
    mbf: Optional[np.ndarray] = None       # (Y, X) ml/min/g, NaN outside myocardium
    umap: Optional[np.ndarray] = None      # (Y, X) DAUGS uncertainty map
    daugs: object = None                   # DAUGSResult (pool members, U_pp, chosen)
    qc: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)


@dataclass
class AnalysisResult:
    slices: list
    table: dict = field(default_factory=dict)      # column name -> list (16 segments + "global")
    bullseye_png: Optional[str] = None
    messages: list = field(default_factory=list)

    def slice(self, condition: str, level: str) -> Optional[SliceAnalysis]:
        for s in self.slices:
            if s.condition == condition and s.level == level:
                return s
        return None


# ------------------------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------------------------
def _model_folders(options: AnalysisOptions) -> tuple:
    """The folders searched for model cards: the ones given, else the default models folder."""
    from PerfusionSegLib.networks.registry import default_models_dir

    return tuple(options.models_dirs) or (default_models_dir(),)


def _find_card(options: AnalysisOptions, architectures=("resunet", "unet2d")):
    from PerfusionSegLib.errors import UnreadableFileError
    from PerfusionSegLib.networks.registry import list_models

    if options.model and os.path.isfile(str(options.model)):
        return str(options.model), None
    # architectures in order of preference: a DAUGS pool's member cards (unet2d) are found by the recursive listing
    # too, and must not stand in for an installed ResUNet
    entries = [(folder, entry) for folder in _model_folders(options) for entry in list_models(folder)
               if entry["weights_present"] and (not options.model or entry["name"] == options.model)]
    for architecture in architectures:
        for folder, entry in entries:
            if entry["architecture"] == architecture:
                return entry["card"], folder
    if options.model:
        return options.model, (options.models_dirs[0] if options.models_dirs else None)
    raise UnreadableFileError("no trained segmentation model found in " + (", ".join(map(str, options.models_dirs))
                              or "the models folder") + ": set the models folder or train one (perfusion train)")


def resolve_method(options: AnalysisOptions) -> str:
    """The segmentation method to run. "auto": the DAUGS pool when one is installed or named (the robust choice
    across scanners), else a full-image model (ResUNet); neither installed is an error that says where it looked."""
    from PerfusionSegLib.errors import UnreadableFileError

    if options.method != "auto":
        return options.method
    if options.pool or default_pool_available(options):
        return "daugs"
    try:
        _find_card(options)
        return "resunet"
    except UnreadableFileError:
        where = ", ".join(map(str, _model_folders(options)))
        raise UnreadableFileError(f"no trained segmentation model (DAUGS pool or ResUNet) in {where}: set the models "
                                  f"folder (PERFUSION_MODELS_DIR) or train one with `perfusion train`") from None


def make_segmenter(options: AnalysisOptions):
    """A function (series, center_yx=None) -> (labels, extras dict); the model or pool is loaded once here.
    ``center_yx``: the LV centre (input pixels), else the series is located on its own."""
    if resolve_method(options) == "resunet":
        if options.exhaustive or options.ensemble > 1:   # "auto" found no pool: say so rather than ignore it
            what = "the exhaustive search" if options.exhaustive else "an ensemble of pool members"
            raise InvalidParameterError(f"{what} needs a DAUGS pool; none was found in the models folders")
        from PerfusionSegLib.inference import segment_series
        from PerfusionSegLib.networks.registry import load_model

        card, folder = _find_card(options)
        model = load_model(card, device=options.device, models_dir=folder)

        def segment(series, center_yx=None):
            res = segment_series(series, model, center_yx=center_yx, bf16=options.bf16)
            return res.labels, {"qc": dict(res.qc or {}), "model": model.name}
        return segment

    pool = load_daugs_pool(options)

    def segment(series, center_yx=None):
        res = run_daugs_on(series, pool, options, center_yx=center_yx)
        return res.labels, {"umap": res.umap, "daugs": res, "qc": dict(res.qc or {})}
    return segment


# ------------------------------------------------------------------------------------------------------------------
# DAUGS (PerfusionDAUGSLib)
# ------------------------------------------------------------------------------------------------------------------
def resolve_daugs_pool(options: AnalysisOptions) -> str:
    """The pool to load: the one the user chose, else the default pool in the first models folder that has it,
    else the default name (the Lib then searches its own default folders and says where it looked)."""
    from PerfusionDAUGSLib.daugs import DEFAULT_POOL
    from PerfusionDAUGSLib.pool import INDEX_NAME

    if options.pool:
        return str(options.pool)
    for folder in options.models_dirs:
        candidate = os.path.join(str(folder), DEFAULT_POOL)
        if os.path.isfile(os.path.join(candidate, INDEX_NAME)):
            return candidate
    return DEFAULT_POOL


def default_pool_available(options: AnalysisOptions) -> bool:
    from PerfusionDAUGSLib.pool import resolve_pool_path
    from PerfusionSegLib.errors import UnreadableFileError

    try:
        resolve_pool_path(resolve_daugs_pool(options))
        return True
    except UnreadableFileError:
        return False


def load_daugs_pool(options: AnalysisOptions):
    from PerfusionDAUGSLib.pool import load_pool
    return load_pool(resolve_daugs_pool(options), device=options.device)


def run_daugs_on(series, pool, options: AnalysisOptions, keep_member_labels: bool = False, center_yx=None):
    """``keep_member_labels``: segment every member too (the DAUGS panel shows any member's result without running
    the pool again); the whole-study analysis needs only the chosen member's, which the staged search gives."""
    from PerfusionDAUGSLib.daugs import run_daugs
    from PerfusionDAUGSLib.selection import DEFAULT_SCHEDULE

    # the staged search never goes finer than the U-map stride the user chose (the Lib appends that stride as the
    # last stage, but would still run its finer default stages first)
    schedule = tuple(stage for stage in DEFAULT_SCHEDULE if int(stage[0]) >= int(options.umap_stride))
    return run_daugs(series, pool, umap_stride=options.umap_stride, seg_stride=options.seg_stride,
                     device=options.device, keep_member_labels=keep_member_labels, schedule=schedule,
                     center_yx=center_yx, fast=not options.exhaustive, bf16=options.bf16,
                     ensemble=int(options.ensemble))


def run_daugs_series(context, series, options: AnalysisOptions):
    """The PerfusionDAUGS panel's job (worker-safe): load the pool, run DAUGS on one series -> DAUGSResult."""
    context = context or SyncContext()
    context.progress(0.0, "loading the model pool")
    pool = load_daugs_pool(options)
    context.check()
    search = "exhaustive search: every member on every window" if options.exhaustive else "staged search"
    context.progress(0.1, f"running {len(pool)} pool members (U-map stride {options.umap_stride}, "
                          f"segmentation stride {options.seg_stride}, {search})")
    result = run_daugs_on(series, pool, options, keep_member_labels=True)
    context.check()
    context.progress(1.0, "done")
    return result


def daugs_member_ranking(result) -> list:
    """Pool members, most certain first: [{"member", "U_pp", "U_tot", "stride", "chosen"}]."""
    rows = [{"member": name, "U_pp": float(upp), "U_tot": float(result.utot.get(name, float("nan"))),
             "stride": int(result.upp_stride.get(name, 0)), "chosen": name == result.chosen}
            for name, upp in result.upp.items()]
    return sorted(rows, key=lambda r: (not r["chosen"], r["U_pp"]))


def daugs_qc_flags(result) -> list:
    return [str(f) for f in (result.flags or [])]


def daugs_member_labels(result, member: str, series=None):
    if member == result.chosen:
        return result.labels
    if result.member_labels and member in result.member_labels:
        return result.member_labels[member]
    raise InvalidParameterError(f"no labels kept for pool member {member!r}")


# ------------------------------------------------------------------------------------------------------------------
# quantification and report
# ------------------------------------------------------------------------------------------------------------------
def _aif_for_study(study, basal_series, basal_labels):
    """The study's AIF as a baseline-free blood [Gd] curve, in this order: a given [Gd] curve (validated, foot and
    peak found), else extracted from the AIF image series, else (fallback, the Lib warns why) from the LV blood pool
    of the most basal slice."""
    from PerfusionSegLib.quantification.aif import extract_aif, make_aif

    aif = study.aif
    if aif is not None and aif.units == "mmol/L":
        return make_aif(aif.curve, aif.times, hematocrit=aif.hematocrit, units=aif.units)
    if aif is not None and aif.image_series is not None:
        return extract_aif(aif.image_series, hematocrit=aif.hematocrit)
    return extract_aif(basal_series, lv_mask=basal_labels == LV_BLOOD)


def _mbf_map(series, labels, aif):
    """Pixel-wise Fermi MBF (ml/min/g, NaN off the myocardium) of one slice: [Gd] conversion, then the fit."""
    from PerfusionSegLib.quantification import compute_mbf_map, signal_to_gd

    gd = signal_to_gd(series) if series.units == "signal" else series
    return np.asarray(compute_mbf_map(gd, aif, labels == LV_MYO, model="fermi")["mbf"], dtype=np.float32)


def condition_statistics(slices: list) -> dict:
    """{condition: SegmentStatistics} of the MBF maps over the AHA sectors (PerfusionSegLib.segment_stats)."""
    from PerfusionSegLib.segment_stats import segment_statistics

    stats = {}
    for condition in ("stress", "rest"):
        maps = [(s.mbf, s.sectors) for s in slices if s.condition == condition and s.mbf is not None
                and s.sectors is not None]
        if maps:
            stats[condition] = segment_statistics([m for m, _ in maps], [sec for _, sec in maps], condition=condition)
    return stats


def segment_table(stats: dict) -> dict:
    """Columns (lists of 17 rows: segments 1-16, then global): stress and rest mean MBF and the reserve."""
    from PerfusionSegLib.segment_stats import perfusion_reserve

    rows = [str(s) for s in AHA_SEGMENTS] + ["global"]
    table = {"Segment": rows, "Territory": [TERRITORY[s] for s in AHA_SEGMENTS] + ["all"]}
    for condition in ("stress", "rest"):
        st = stats.get(condition)
        table[f"{condition.capitalize()} MBF"] = (
            [None] * 17 if st is None else [float(st.mean(s)) for s in AHA_SEGMENTS] + [float(st.global_.mean)])
    if "stress" in stats and "rest" in stats:
        reserve = perfusion_reserve(stats["stress"], stats["rest"]).by_region()
        table["Reserve"] = [float(reserve[r].reserve) for r in rows]
    else:
        table["Reserve"] = [None] * 17
    return table


def write_bullseye(stats: dict, output_dir: str) -> str:
    """The bullseye PNG (stress; with rest also rest and reserve) drawn by PerfusionSegLib.report."""
    from PerfusionSegLib.atomic import write_bytes_atomic
    from PerfusionSegLib.report import bullseye_png

    first = stats.get("stress") or stats.get("rest")
    png = bullseye_png(first, stats.get("rest") if "stress" in stats else None)
    return str(write_bytes_atomic(os.path.join(output_dir, "bullseye.png"), png))


# ------------------------------------------------------------------------------------------------------------------
def study_lv_detector(options: AnalysisOptions):
    """The DAUGS pool's LV detector (``PerfusionDAUGSLib.lv_detector``), the second opinion of
    ``localise.locate_lv_study``, or None when no pool is installed (the timing rule then decides alone)."""
    try:
        if not default_pool_available(options):
            return None
        from PerfusionDAUGSLib.lv_detector import PoolLVDetector
    except ImportError:                     # PerfusionDAUGSLib not installed
        return None
    return _LazyDetector(lambda: PoolLVDetector(resolve_daugs_pool(options), device=options.device))


class _LazyDetector:
    """Loads the detector's member on first use: most studies never need it."""

    def __init__(self, make):
        self._make, self._detector = make, None

    def __call__(self, series):
        if self._detector is None:
            self._detector = self._make()
        return self._detector(series)


def _study_centres(studies: dict, labels_override: dict, detector=None) -> dict:
    """{(condition, level): LV centre} from each study's slices together (``localise.locate_lv_study``: a slice
    whose LV disagrees with the other slices' is located again, then ``detector`` is asked); slices with given
    labels are not needed."""
    from PerfusionSegLib.localise import locate_lv_study

    out = {}
    for condition, study in studies.items():
        if study is None or all((condition, s.level) in labels_override for s in study.slices):
            continue
        for s, loc in zip(study.slices, locate_lv_study(study.slices, detector=detector)):
            if loc is not None:
                out[(condition, s.level)] = loc.center_yx
    return out


def analyse_studies(context, studies: dict, options: AnalysisOptions, labels_override: Optional[dict] = None
                    ) -> AnalysisResult:
    """Run the panel's analysis. studies: {"stress"|"rest": Study}; labels_override: {(condition, level): labels}
    to use given (e.g. corrected) contours instead of the network. context: TaskContext or SyncContext."""
    from PerfusionSegLib import aha

    context = context or SyncContext()
    labels_override = labels_override or {}
    todo = [(c, s) for c, study in studies.items() if study is not None for s in study.slices]
    if not todo:
        from PerfusionSegLib.errors import InvalidSeriesError
        raise InvalidSeriesError("no input series selected")
    steps = len(todo) * (2 if options.compute_mbf else 1) + 1
    step = 0
    segmenter = None
    centres = _study_centres(studies, labels_override, detector=study_lv_detector(options))
    result = AnalysisResult(slices=[])
    for condition, series in todo:
        context.check()
        context.progress(step / steps, f"{condition} {series.level}: segmentation")
        extras = {}
        key = (condition, series.level)
        if key in labels_override:
            labels = np.asarray(labels_override[key], dtype=np.uint8)
        else:
            if segmenter is None:
                segmenter = make_segmenter(options)
            labels, extras = segmenter(series, centres.get(key))
        item = SliceAnalysis(condition=condition, level=series.level, source=series.source, labels=labels,
                             umap=extras.get("umap"), daugs=extras.get("daugs"), qc=extras.get("qc", {}))
        try:
            item.insertion = aha.find_insertion_points(labels, spacing=series.spacing, affine=series.affine)
            item.sectors = aha.aha_sector_map(labels, series.level, item.insertion)
            if item.insertion.flagged:
                item.messages.append(f"{condition} {series.level}: RV insertion point uncertain "
                                     f"({item.insertion.note or item.insertion.source}); check the AHA sectors")
        except Exception as exc:  # noqa: BLE001 - the segmentation is still worth returning
            item.messages.append(f"{condition} {series.level}: no AHA sectors ({exc})")
        result.slices.append(item)
        step += 1

    if options.compute_mbf:
        for condition, study in studies.items():
            if study is None:
                continue
            items = [s for s in result.slices if s.condition == condition]
            basal = study.slices[0]
            aif = None
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    aif = _aif_for_study(study, basal, items[0].labels)
                result.messages += [f"{condition} AIF: {w.message}" for w in caught]
            except Exception as exc:  # noqa: BLE001
                result.messages.append(f"{condition}: no AIF, MBF not computed ({exc})")
            for series, item in zip(study.slices, items):
                context.check()
                context.progress(step / steps, f"{condition} {series.level}: MBF")
                step += 1
                if aif is None:
                    continue
                try:
                    item.mbf = _mbf_map(series, item.labels, aif)
                except Exception as exc:  # noqa: BLE001
                    item.messages.append(f"{condition} {series.level}: MBF not computed ({exc})")
        context.check()
        context.progress(step / steps, "AHA report")
        if any(s.mbf is not None for s in result.slices):
            try:
                stats = condition_statistics(result.slices)
                result.table = segment_table(stats)
                out = options.output_dir or tempfile.mkdtemp(prefix="CardiacPerfusion-")
                result.bullseye_png = write_bullseye(stats, out)
            except Exception as exc:  # noqa: BLE001
                result.messages.append(f"AHA report not made ({exc})")
    for item in result.slices:
        result.messages += item.messages
    context.progress(1.0, "done")
    return result
