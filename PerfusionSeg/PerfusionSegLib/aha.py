"""AHA 16-segment model on short-axis label maps: RV insertion points, sector maps, coronary territories, slice levels.

Conventions (``shared/CONVENTIONS.md``):

* An *image angle* is ``atan2(dy, dx)`` in degrees in ``[0, 360)`` around the LV blood-pool centroid, with ``dy`` the
  physical offset along rows (rows grow downward on screen) and ``dx`` along columns, both in mm (anisotropic pixels
  are honoured). On screen, increasing image angle turns clockwise.
* An *AHA angle* is measured from the anterior RV insertion point turning toward the septum: ``phi = ((theta -
  theta_anterior) * septum_direction) mod 360``. ``septum_direction`` (+1/-1) says which way image angles grow toward
  the septum. It comes from the anatomy: the septum is the myocardium arc that faces the RV blood pool, so once the
  anterior end of that arc is known the direction is the one that enters the arc.
* Telling the anterior end from the inferior end is the one thing a label map alone cannot do: the LV ring and RV
  crescent look the same in a mirrored image. The decision uses, in order: a user-given anterior point; the patient
  geometry (voxel-to-patient LPS matrix) when known - the standard short-axis view is seen from the apex, so a plane
  whose normal ``column x row`` points from apex to base is unmirrored; an anterior-angle prior (e.g. from a
  neighbouring slice); else the documented convention that the image is an unmirrored (possibly rotated) standard view,
  in which anterior -> septum turns counter-clockwise on screen (``septum_direction = -1``).
* Basal/mid: six 60-degree sectors from the anterior insertion point; apical: four 90-degree sectors offset so that
  the septal one is centred on mid-septum (60 degrees). Territories after Cerqueira 2002.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .errors import InvalidLabelsError, InvalidParameterError

BACKGROUND, LV_BLOOD, LV_MYO, RV_BLOOD = 0, 1, 2, 3
LEVELS = ("basal", "mid", "apical")

AHA_SEGMENT_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral",
    7: "mid anterior", 8: "mid anteroseptal", 9: "mid inferoseptal", 10: "mid inferior",
    11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral",
}
SEGMENTS_OF_LEVEL = {"basal": tuple(range(1, 7)), "mid": tuple(range(7, 13)), "apical": tuple(range(13, 17))}
LEVEL_OF_SEGMENT = {s: lv for lv, segs in SEGMENTS_OF_LEVEL.items() for s in segs}

TERRITORIES = ("LAD", "RCA", "LCX")
TERRITORY_CODES = {"LAD": 1, "RCA": 2, "LCX": 3}
TERRITORY_OF_SEGMENT = {s: "LAD" for s in (1, 2, 7, 8, 13, 14)}
TERRITORY_OF_SEGMENT.update({s: "RCA" for s in (3, 4, 9, 10, 15)})
TERRITORY_OF_SEGMENT.update({s: "LCX" for s in (5, 6, 11, 12, 16)})
SEGMENTS_OF_TERRITORY = {t: tuple(s for s in range(1, 17) if TERRITORY_OF_SEGMENT[s] == t) for t in TERRITORIES}
TERRITORY_COLORS = {"LAD": (1.0, 0.85, 0.0), "RCA": (0.1, 0.8, 0.2), "LCX": (0.9, 0.1, 0.1)}  # yellow, green, red

# AHA-angle sectors [start, end) from the anterior insertion point toward the septum
# (apical: septal 14 centred on mid-septum at 60 degrees; the anterior one wraps through 0)
_APICAL = ((15, 105, 14), (105, 195, 15), (195, 285, 16), (285, 375, 13))

# the septal arc of the model: the inferior insertion point sits 120 degrees from the anterior one
SEPTAL_ARC_DEG = 120.0
# nominal apex-to-base direction of the LV long axis in patient LPS coordinates (apex points left, anterior, inferior)
APEX_TO_BASE_LPS = np.array([-1.0, 1.0, 1.0]) / math.sqrt(3.0)
# the RV lies to the patient's right and anterior of the LV
RV_DIRECTION_LPS = np.array([-1.0, -1.0, 0.0]) / math.sqrt(2.0)
# patient "anterior and superior" (LPS): the anterior insertion point lies this way of the inferior one
ANTERIOR_SUPERIOR_LPS = np.array([0.0, -1.0, 1.0]) / math.sqrt(2.0)

MIN_RV_PIXELS = 12          # fewer RV pixels than this: treat the RV as missing
MIN_ARC_DEG = 20.0          # a contact arc shorter than this cannot place the insertion points
MAX_PLAUSIBLE_ARC_DEG = 210.0
GAP_TOLERANCE_DEG = 15.0    # contact interrupted by less than this is one arc (partial volume, ragged masks)
BRIDGE_GAP_DEG = 50.0       # a separate stretch of contact this close to the main arc still belongs to it


@dataclass(frozen=True)
class InsertionPoints:
    """Anterior and inferior RV insertion points of one slice, with how they were found.

    Angles are image angles (module docstring). ``septum_direction`` is +1 when image angles increase from the anterior
    insertion point toward the septum, -1 otherwise. ``source``: "auto" (from the RV/myocardium contact), "user" (the
    user's anterior point) or "prior" (anatomical or given prior; the RV could not be used). ``direction_source`` says
    how anterior was told from inferior: "user", "affine", "prior" or "convention" (image assumed unmirrored).
    ``flagged`` asks a human to check.
    """

    anterior_yx: tuple
    inferior_yx: tuple
    anterior_angle_deg: float
    inferior_angle_deg: float
    centroid_yx: tuple
    septum_direction: int
    source: str
    flagged: bool
    note: str = ""
    direction_source: str = "convention"
    rv_arc_deg: float = float("nan")
    spacing: tuple = (1.0, 1.0)

    def aha_angle(self, image_angle_deg):
        """AHA angle(s) (degrees from the anterior insertion point toward the septum) of image angle(s)."""
        return np.mod((np.asarray(image_angle_deg, dtype=np.float64) - self.anterior_angle_deg) * self.septum_direction, 360.0)

    def image_angle(self, aha_angle_deg):
        """Image angle(s) of AHA angle(s): the inverse of :meth:`aha_angle`."""
        return np.mod(self.anterior_angle_deg + self.septum_direction * np.asarray(aha_angle_deg, dtype=np.float64), 360.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("anterior_yx", "inferior_yx", "centroid_yx", "spacing"):
            d[k] = [round(float(v), 3) for v in d[k]]
        for k in ("anterior_angle_deg", "inferior_angle_deg", "rv_arc_deg"):
            d[k] = None if not np.isfinite(d[k]) else round(float(d[k]), 3)
        return d


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim > 2 and np.squeeze(arr).ndim == 2:   # (Y, X, 1) and the like
        arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InvalidLabelsError(f"a label map must be 2-D (Y, X), got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidLabelsError("the label map is empty")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise InvalidLabelsError("label values must be integers")
    if arr.min() < 0 or arr.max() > 3:
        raise InvalidLabelsError(f"labels must use the project codes 0-3, found values {np.unique(arr)[:8].tolist()}")
    return arr.astype(np.uint8, copy=False)


def _check_spacing(spacing) -> tuple:
    sp = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(sp) == 1:
        sp = (sp[0], sp[0])
    if len(sp) != 2 or not all(np.isfinite(sp)) or not all(s > 0 for s in sp):
        raise InvalidParameterError(f"pixel spacing must be two positive values (dy, dx) in mm, got {spacing}")
    return sp


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise InvalidParameterError(f"slice level must be one of {LEVELS}, got {level!r}")
    return level


def lv_centroid(labels, *, note: Optional[list] = None) -> tuple:
    """(y, x) centroid of the LV blood pool; without one, of the cavity enclosed by the myocardium, else the myocardium."""
    labels = _check_labels(labels)
    myo = labels == LV_MYO
    if not myo.any():
        raise InvalidLabelsError("the label map has no LV myocardium (label 2)")
    pool = labels == LV_BLOOD
    if pool.sum() >= 3:
        # the largest blood-pool component: stray pixels elsewhere should not pull the centre
        comp, n = ndimage.label(pool)
        if n > 1:
            sizes = ndimage.sum(pool, comp, index=np.arange(1, n + 1))
            pool = comp == (1 + int(np.argmax(sizes)))
        return tuple(float(v) for v in ndimage.center_of_mass(pool))
    cavity = ndimage.binary_fill_holes(myo) & ~myo
    if cavity.sum() >= 3:
        if note is not None:
            note.append("no LV blood pool label: centre of the cavity enclosed by the myocardium used")
        return tuple(float(v) for v in ndimage.center_of_mass(cavity))
    if note is not None:
        note.append("no LV blood pool or closed cavity: myocardium centroid used")
    return tuple(float(v) for v in ndimage.center_of_mass(myo))


def image_angles(shape, centroid_yx, spacing=(1.0, 1.0)) -> np.ndarray:
    """Image angle (degrees, [0, 360)) of every pixel centre of a (Y, X) grid around ``centroid_yx``."""
    sy, sx = _check_spacing(spacing)
    yy, xx = np.indices(tuple(shape), dtype=np.float64)
    return np.mod(np.degrees(np.arctan2((yy - centroid_yx[0]) * sy, (xx - centroid_yx[1]) * sx)), 360.0)


def _direction_yx(angle_deg: float, spacing) -> np.ndarray:
    """Pixel step (dy, dx) per mm along an image angle."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a) / spacing[0], math.cos(a) / spacing[1]])


def _epicardial_point(labels: np.ndarray, centroid, angle_deg: float, spacing) -> Optional[tuple]:
    """Outermost myocardium sample along the ray from the centroid at ``angle_deg`` (None if the ray misses it)."""
    step = _direction_yx(angle_deg, spacing)
    r_max = math.hypot(labels.shape[0] * spacing[0], labels.shape[1] * spacing[1])
    radii = np.arange(0.0, r_max, 0.2 * min(spacing))
    pts = np.asarray(centroid)[:, None] + step[:, None] * radii[None, :]
    inside = (pts[0] > -0.5) & (pts[0] < labels.shape[0] - 0.5) & (pts[1] > -0.5) & (pts[1] < labels.shape[1] - 0.5)
    pts, radii = pts[:, inside], radii[inside]
    vals = labels[np.rint(pts[0]).astype(int), np.rint(pts[1]).astype(int)]
    hit = np.nonzero(vals == LV_MYO)[0]
    if hit.size == 0:
        return None
    return (float(pts[0, hit[-1]]), float(pts[1, hit[-1]]))


def _point_at(labels, centroid, angle_deg, spacing, radius_mm: float) -> tuple:
    p = _epicardial_point(labels, centroid, angle_deg, spacing)
    if p is None:
        step = _direction_yx(angle_deg, spacing)
        p = (centroid[0] + step[0] * radius_mm, centroid[1] + step[1] * radius_mm)
    return p


def _mean_epicardial_radius(labels, centroid, spacing) -> float:
    myo = labels == LV_MYO
    yy, xx = np.nonzero(myo)
    r = np.hypot((yy - centroid[0]) * spacing[0], (xx - centroid[1]) * spacing[1])
    return float(np.percentile(r, 90)) if r.size else 10.0


def _angle_of_point(point_yx, centroid, spacing) -> float:
    return float(np.mod(math.degrees(math.atan2((point_yx[0] - centroid[0]) * spacing[0],
                                                (point_yx[1] - centroid[1]) * spacing[1])), 360.0))


def _angular_distance(a, b) -> float:
    d = abs((float(a) - float(b)) % 360.0)
    return min(d, 360.0 - d)


def _contact_arc(labels: np.ndarray, centroid, spacing, contact_px: int):
    """Largest arc (start, end, n_pixels) in image angles, going through increasing angle from start to end, where RV
    blood pixels touch the LV dilated by ``contact_px`` pixels; None when there is no usable contact.

    The LV is myocardium plus blood pool: where the myocardium ring is open (the LV outflow tract in basal slices, a
    segmentation gap) the RV still lies over the septal side and the arc must not stop there."""
    lv = (labels == LV_MYO) | (labels == LV_BLOOD)
    rv = labels == RV_BLOOD
    near_lv = ndimage.binary_dilation(lv, structure=ndimage.generate_binary_structure(2, 2), iterations=contact_px)
    yy, xx = np.nonzero(rv & near_lv)
    if yy.size == 0:
        return None
    ang = np.sort(np.mod(np.degrees(np.arctan2((yy - centroid[0]) * spacing[0], (xx - centroid[1]) * spacing[1])), 360.0))
    gaps = np.diff(np.concatenate([ang, [ang[0] + 360.0]]))  # gap after each sorted angle (circular)
    breaks = np.nonzero(gaps > GAP_TOLERANCE_DEG)[0]
    if breaks.size == 0:  # contact all around: the RV "encircles" the LV, no ends to find
        return (float(ang[0]), float(ang[0]) + 360.0, int(ang.size))
    # runs, in angular order: a run starts after break i and ends at break i+1 -> [start, length, count]
    runs = []
    for i, b in enumerate(breaks):
        start_idx, end_idx = (b + 1) % ang.size, breaks[(i + 1) % breaks.size]
        runs.append([float(ang[start_idx]), (float(ang[end_idx]) - float(ang[start_idx])) % 360.0,
                     int((end_idx - start_idx) % ang.size + 1)])
    k = max(range(len(runs)), key=lambda i: (runs[i][1], runs[i][2]))
    start, length, count = runs[k]
    # bridge short interruptions next to the main arc (the aortic root pushing the RV off the LV outflow tract in basal
    # slices, a ragged mask), as long as the arc stays anatomically plausible
    merged = {k}
    for _ in range(len(runs) - 1):
        after, before = runs[(max(merged) + 1) % len(runs)], runs[(min(merged) - 1) % len(runs)]
        grew = False
        gap_after = (after[0] - (start + length)) % 360.0
        if (max(merged) + 1) % len(runs) not in merged and gap_after <= BRIDGE_GAP_DEG \
                and length + gap_after + after[1] <= MAX_PLAUSIBLE_ARC_DEG:
            length, count, grew = length + gap_after + after[1], count + after[2], True
            merged.add(max(merged) + 1)
        gap_before = (start - (before[0] + before[1])) % 360.0
        if (min(merged) - 1) % len(runs) not in {m % len(runs) for m in merged} and gap_before <= BRIDGE_GAP_DEG \
                and length + gap_before + before[1] <= MAX_PLAUSIBLE_ARC_DEG:
            start, length, count, grew = before[0], length + gap_before + before[1], count + before[2], True
            merged.add(min(merged) - 1)
        if not grew:
            break
    return (start, start + length, count)


def plane_handedness(affine) -> Optional[float]:
    """Cosine between the image normal (column x row) and the nominal apex-to-base axis: > 0 for a standard short-axis
    view seen from the apex (unmirrored), < 0 for a mirrored one; None without a usable matrix."""
    if affine is None:
        return None
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InvalidParameterError("voxel-to-patient matrix must be a finite 4x4 array")
    n = np.cross(a[:3, 0], a[:3, 1])
    norm = np.linalg.norm(n)
    if norm == 0:
        return None
    return float(n @ APEX_TO_BASE_LPS / norm)


def _patient_direction_angle(affine, spacing, direction_lps) -> Optional[float]:
    """Image angle of a patient-space direction projected into the image plane (None if nearly normal to it)."""
    a = np.asarray(affine, dtype=np.float64)
    col, row = a[:3, 0], a[:3, 1]
    # unit vectors of one mm along x and y in patient space
    ux, uy = col / max(np.linalg.norm(col), 1e-12), row / max(np.linalg.norm(row), 1e-12)
    dx, dy = float(direction_lps @ ux), float(direction_lps @ uy)
    if math.hypot(dx, dy) < 0.2:
        return None
    return float(np.mod(math.degrees(math.atan2(dy, dx)), 360.0))


# --------------------------------------------------------------------------------------------------------------------
# insertion points


def find_insertion_points(
    labels,
    *,
    spacing=(1.0, 1.0),
    user_anterior_yx=None,
    prior_angle_deg: Optional[float] = None,
    affine=None,
    mirrored: Optional[bool] = None,
    contact_px: int = 1,
) -> InsertionPoints:
    """Anterior and inferior RV insertion points of a short-axis label map (project codes 0-3, (Y, X)).

    The RV-septum contact is where RV blood-pool pixels touch the LV (myocardium or blood pool) dilated by
    ``contact_px`` pixels; its two ends, as image angles around the LV blood-pool centroid, are the insertion points. ``user_anterior_yx`` (a clicked
    (y, x) anterior insertion point) is authoritative; ``prior_angle_deg`` is an expected anterior image angle (e.g.
    from a neighbouring slice) used to pick the anterior end, and as the fallback when the RV is missing or too small.
    ``affine`` (4x4 voxel-to-patient LPS) or ``mirrored`` (True/False, overriding the affine) tell anterior from inferior;
    without either the image is assumed to be an unmirrored standard view (see the module docstring).
    """
    labels = _check_labels(labels)
    spacing = _check_spacing(spacing)
    if int(contact_px) < 1:
        raise InvalidParameterError(f"contact_px must be at least 1, got {contact_px}")
    notes: list = []
    centroid = lv_centroid(labels, note=notes)
    r_epi = _mean_epicardial_radius(labels, centroid, spacing)

    # which way is "toward the septum" if we can only rely on geometry or convention (before looking at the user point)
    if mirrored is not None:
        geo_direction, direction_source = (1 if mirrored else -1), "given"
    else:
        cos = plane_handedness(affine)
        if cos is not None and abs(cos) >= 0.3:
            geo_direction, direction_source = (-1 if cos > 0 else 1), "affine"
        else:
            geo_direction, direction_source = -1, "convention"
            if cos is not None:
                notes.append(f"image plane too oblique to the nominal long axis (cos {cos:.2f}) to tell mirroring")

    user_angle = None
    if user_anterior_yx is not None:
        u = np.asarray(user_anterior_yx, dtype=np.float64).reshape(-1)
        if u.size != 2 or not np.all(np.isfinite(u)):
            raise InvalidParameterError(f"user anterior point must be (y, x), got {user_anterior_yx}")
        user_angle = _angle_of_point(u, centroid, spacing)
    if prior_angle_deg is not None:
        if not np.isfinite(prior_angle_deg):
            raise InvalidParameterError(f"prior angle must be finite, got {prior_angle_deg}")
        prior_angle_deg = float(prior_angle_deg) % 360.0

    rv_pixels = int(np.count_nonzero(labels == RV_BLOOD))
    arc = _contact_arc(labels, centroid, spacing, int(contact_px)) if rv_pixels >= MIN_RV_PIXELS else None
    arc_len = float("nan") if arc is None else (arc[1] - arc[0])
    usable = arc is not None and MIN_ARC_DEG <= arc_len < 359.0
    flagged = False

    if usable:
        start, end = arc[0] % 360.0, arc[1] % 360.0  # start -> end runs through increasing image angle
        # the anterior end is the one from which turning toward the septum enters the arc:
        # direction +1 -> anterior = start; direction -1 -> anterior = end
        if user_angle is not None:
            ant_is_start = _angular_distance(user_angle, start) <= _angular_distance(user_angle, end)
            direction_source = "user"
        elif direction_source in ("affine", "given"):
            ant_is_start = geo_direction > 0
        elif prior_angle_deg is not None:
            ant_is_start = _angular_distance(prior_angle_deg, start) <= _angular_distance(prior_angle_deg, end)
            direction_source = "prior"
        else:
            ant_is_start = geo_direction > 0
        direction = 1 if ant_is_start else -1
        ant_angle, inf_angle = (start, end) if ant_is_start else (end, start)
        source = "auto"
        if user_angle is not None:
            d = _angular_distance(user_angle, ant_angle)
            if d > 1e-9:
                notes.append(f"user anterior point used ({d:.1f} deg from the detected end)")
            ant_angle, source = user_angle, "user"
        if not arc_len <= MAX_PLAUSIBLE_ARC_DEG:
            flagged = True
            notes.append(f"RV contact arc of {arc_len:.0f} deg is implausibly long")
        if prior_angle_deg is not None and source == "auto" and _angular_distance(prior_angle_deg, ant_angle) > 45.0:
            flagged = True
            notes.append(f"anterior insertion {_angular_distance(prior_angle_deg, ant_angle):.0f} deg from the prior")
        if direction_source == "affine" and affine is not None:
            # cross-check: the anterior point should lie anterior/superior of the inferior one in the patient
            ant_pt = _point_at(labels, centroid, ant_angle, spacing, r_epi)
            inf_pt = _point_at(labels, centroid, inf_angle, spacing, r_epi)
            a = np.asarray(affine, dtype=np.float64)
            diff = a[:3, :3] @ np.array([ant_pt[1] - inf_pt[1], ant_pt[0] - inf_pt[0], 0.0])
            if np.linalg.norm(diff) > 0 and float(diff @ ANTERIOR_SUPERIOR_LPS) / np.linalg.norm(diff) < -0.5:
                flagged = True
                notes.append("patient geometry disagrees: the 'anterior' point lies posterior-inferior of the other")
    else:
        if rv_pixels < MIN_RV_PIXELS:
            notes.append(f"RV blood pool missing or too small ({rv_pixels} pixels)")
        elif arc is None:
            notes.append("RV blood pool does not touch the myocardium")
        elif arc_len >= 359.0:
            notes.append("RV contact surrounds the LV: no insertion points to find")
        else:
            notes.append(f"RV contact arc too short ({arc_len:.0f} deg)")
        direction = geo_direction
        if user_angle is not None:
            ant_angle, source = user_angle, "user"
            notes.append("anterior insertion from the user point; inferior placed 120 deg toward the septum")
        elif prior_angle_deg is not None:
            ant_angle, source, flagged = prior_angle_deg, "prior", True
            notes.append("anterior insertion from the given prior angle")
        else:
            source, flagged = "prior", True
            mid_septum = None
            if affine is not None:
                mid_septum = _patient_direction_angle(affine, spacing, RV_DIRECTION_LPS)
            if mid_septum is None:
                mid_septum = 180.0  # standard view: RV (and septum) on the screen's left
            ant_angle = (mid_septum - direction * SEPTAL_ARC_DEG / 2.0) % 360.0
            notes.append("anatomical prior: septum centred on the RV side" + (" of the patient" if affine is not None else " (screen left)"))
        inf_angle = (ant_angle + direction * SEPTAL_ARC_DEG) % 360.0

    if direction_source == "convention":
        notes.append("anterior/inferior told apart by convention: image assumed an unmirrored standard view")
    ant_pt = _point_at(labels, centroid, ant_angle, spacing, r_epi)
    inf_pt = _point_at(labels, centroid, inf_angle, spacing, r_epi)
    if source == "user":
        ant_pt = tuple(float(v) for v in np.asarray(user_anterior_yx, dtype=np.float64).reshape(-1))
    return InsertionPoints(
        anterior_yx=tuple(float(v) for v in ant_pt), inferior_yx=tuple(float(v) for v in inf_pt),
        anterior_angle_deg=float(ant_angle), inferior_angle_deg=float(inf_angle),
        centroid_yx=tuple(float(v) for v in centroid), septum_direction=int(direction), source=source,
        flagged=bool(flagged), note="; ".join(notes), direction_source=direction_source,
        rv_arc_deg=float(arc_len) if usable else float("nan"), spacing=spacing,
    )


def find_insertion_points_stack(labels_list: Sequence, *, spacing=(1.0, 1.0), affines: Optional[Sequence] = None,
                                user_anterior: Optional[Sequence] = None, mirrored: Optional[bool] = None) -> list:
    """Insertion points of several slices of one acquisition (same in-plane orientation), basal to apical.

    Each slice is analysed on its own; a slice whose RV cannot be used (typically apical) then takes the anterior
    angle of the nearest slice where detection worked as its prior (still flagged, with a note), instead of the
    generic anatomical prior. ``spacing`` is one (dy, dx) for all slices or one per slice.
    """
    n = len(labels_list)
    affines = list(affines) if affines is not None else [None] * n
    user_anterior = list(user_anterior) if user_anterior is not None else [None] * n
    spacings = list(spacing) if (len(spacing) == n and np.ndim(spacing[0]) == 1) else [spacing] * n
    if not (len(affines) == len(user_anterior) == len(spacings) == n):
        raise InvalidParameterError("need one affine, user point and spacing per slice")
    first = [find_insertion_points(lab, spacing=sp, affine=af, user_anterior_yx=u, mirrored=mirrored)
             for lab, sp, af, u in zip(labels_list, spacings, affines, user_anterior)]
    good = [i for i, ip in enumerate(first) if ip.source != "prior"]
    out = []
    for i, ip in enumerate(first):
        if ip.source == "prior" and good:
            j = min(good, key=lambda g: abs(g - i))
            # the neighbour's turning direction came from its RV, so it is the better guess here as well
            ip = find_insertion_points(labels_list[i], spacing=spacings[i], affine=affines[i],
                                       mirrored=first[j].septum_direction > 0,
                                       prior_angle_deg=first[j].anterior_angle_deg)
            ip = replace(ip, note=ip.note + f"; prior and direction from slice {j + 1}",
                         direction_source=f"slice {j + 1}")
        out.append(ip)
    return out


# --------------------------------------------------------------------------------------------------------------------
# sectors and territories


def sector_angles(level: str, insertion: Optional[InsertionPoints] = None) -> list:
    """Sectors of a slice level as ``(segment, start_deg, end_deg)``.

    Without ``insertion`` the angles are AHA angles (from the anterior insertion point toward the septum; the apical
    anterior sector wraps, [285, 375)). With it they are image angles of the sector starts and ends, each sector
    running from start to end in the septum direction.
    """
    level = _check_level(level)
    if level == "apical":
        table = [(seg, float(a), float(b)) for a, b, seg in _APICAL]
    else:
        offset = 0 if level == "basal" else 6
        seg_of_k = (2, 3, 4, 5, 6, 1)
        table = [(seg_of_k[k] + offset, float(60 * k), float(60 * (k + 1))) for k in range(6)]
    if insertion is None:
        return table
    return [(seg, float(insertion.image_angle(a)), float(insertion.image_angle(b))) for seg, a, b in table]


def segment_of_aha_angle(aha_angle_deg, level: str) -> np.ndarray:
    """Segment number (1-16) for AHA angle(s) at a slice level."""
    level = _check_level(level)
    phi = np.mod(np.asarray(aha_angle_deg, dtype=np.float64), 360.0)
    if level == "apical":
        k = np.floor(np.mod(phi - 15.0, 360.0) / 90.0).astype(int)  # 0 septal, 1 inferior, 2 lateral, 3 anterior
        return np.array([14, 15, 16, 13], dtype=np.uint8)[np.clip(k, 0, 3)]
    k = np.clip(np.floor(phi / 60.0).astype(int), 0, 5)
    base = np.array([2, 3, 4, 5, 6, 1], dtype=np.uint8)
    return base[k] + (0 if level == "basal" else 6)


def aha_sector_map(labels, level: str, insertion: InsertionPoints) -> np.ndarray:
    """(Y, X) uint8 map: AHA segment number (1-16) on every myocardium pixel, 0 elsewhere."""
    labels = _check_labels(labels)
    level = _check_level(level)
    if not isinstance(insertion, InsertionPoints):
        raise InvalidParameterError("insertion must be an InsertionPoints (see find_insertion_points)")
    myo = labels == LV_MYO
    out = np.zeros(labels.shape, dtype=np.uint8)
    if not myo.any():
        return out
    theta = image_angles(labels.shape, insertion.centroid_yx, insertion.spacing)
    out[myo] = segment_of_aha_angle(insertion.aha_angle(theta[myo]), level)
    return out


_TERRITORY_LUT = np.zeros(256, dtype=np.uint8)
for _s, _t in TERRITORY_OF_SEGMENT.items():
    _TERRITORY_LUT[_s] = TERRITORY_CODES[_t]


def territory_map(sector_map) -> np.ndarray:
    """(Y, X) uint8 coronary territory of every sector pixel: 1 LAD, 2 RCA, 3 LCX, 0 elsewhere."""
    sm = np.asarray(sector_map)
    if sm.size and (not np.issubdtype(sm.dtype, np.integer) and not np.all(sm == np.round(sm))):
        raise InvalidLabelsError("a sector map must hold integer segment numbers")
    if sm.size and (sm.min() < 0 or sm.max() > 17):
        raise InvalidLabelsError(f"sector map values must be 0-16 (17 tolerated as apex), got max {sm.max()}")
    return _TERRITORY_LUT[sm.astype(np.int64)]


# --------------------------------------------------------------------------------------------------------------------
# slice levels


def _levels_from_positions(pos: np.ndarray) -> list:
    """Levels for slice positions measured along apex->base (larger = more basal), by thirds of the covered range."""
    n = pos.size
    if n == 3:
        order = np.argsort(-pos, kind="stable")
        out = [None] * 3
        for lv, i in zip(LEVELS, order):
            out[i] = lv
        return out
    span = float(pos.max() - pos.min())
    if span <= 0:
        from .series import assign_levels
        return assign_levels(n)
    frac = (pos.max() - pos) / span  # 0 basal .. 1 apical
    return [LEVELS[min(2, int(f * 3.0))] for f in frac]


def slice_levels(slices_or_positions, *, basal_first: bool = True) -> list:
    """Level ('basal', 'mid', 'apical') of each slice, in the given order.

    * a :class:`~PerfusionSegLib.series.Study` or a list of SliceSeries: when every slice has a voxel-to-patient matrix,
      the slice centres are projected on the slice normal, oriented from apex to base with the nominal LV long axis
      (so the order of the list does not matter); else, when every slice has ``slice_position``, those positions;
      else the list order (assumed basal to apical).
    * a sequence of numbers (slice positions in mm along the slice normal): positions order the slices; which end is
      basal cannot be told from numbers alone, so the first given slice is taken to lie at the basal end
      (``basal_first=False``: at the apical end).
    Three slices get one level each; other counts are split by thirds of the covered distance.
    """
    from .series import SliceSeries, assign_levels

    items = list(getattr(slices_or_positions, "slices", slices_or_positions))
    if not items:
        raise InvalidParameterError("no slices given")
    if all(isinstance(s, SliceSeries) for s in items):
        if all(s.affine is not None for s in items):
            normals = []
            centres = []
            for s in items:
                a = s.affine
                n = np.cross(a[:3, 0], a[:3, 1])
                n = n / max(np.linalg.norm(n), 1e-12)
                if n @ APEX_TO_BASE_LPS < 0:
                    n = -n
                normals.append(n)
                cy, cx = (np.asarray(s.shape) - 1) / 2.0
                centres.append((a @ np.array([cx, cy, 0.0, 1.0]))[:3])
            normal = np.mean(normals, axis=0)
            pos = np.array([c @ normal for c in centres])
            if np.ptp(pos) > 0:
                return _levels_from_positions(pos)
        if all(s.slice_position is not None for s in items):
            positions = [float(s.slice_position) for s in items]
        else:
            return assign_levels(len(items))
    else:
        try:
            positions = [float(p) for p in items]
        except (TypeError, ValueError):
            raise InvalidParameterError("slice_levels needs a Study, a list of SliceSeries, or slice positions") from None
    pos = np.asarray(positions, dtype=np.float64)
    if not np.all(np.isfinite(pos)):
        raise InvalidParameterError("slice positions must be finite")
    if pos.size == 1:
        return ["mid"]
    # orient so the first given slice is at the basal (larger) end
    sign = 1.0 if (pos[0] >= pos[-1]) == basal_first else -1.0
    if pos[0] == pos[-1]:
        sign = 1.0
    return _levels_from_positions(sign * pos)


def segment_statistics(*args, **kwargs):
    """Per-segment statistics of a map; see :func:`PerfusionSegLib.segment_stats.segment_statistics`."""
    from .segment_stats import segment_statistics as impl

    return impl(*args, **kwargs)
