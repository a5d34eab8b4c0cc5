"""Parametric short-axis thorax: heart (LV, RV, papillary muscles, trabeculae, fat, pericardium) and its surroundings.

Geometry lives in a *body frame* in mm with the LV centre at the origin, x to the screen right (patient left, LV lateral
wall), y down (inferior/posterior): the standard short-axis display with the RV on the screen left and the anterior
wall up. A pose (rotation, optional mirror, translation) and a smooth random warp map image pixels into that frame, so
the same description renders at any resolution or crop. Shapes are painted on a supersampled grid as integer tissue
codes and block-averaged into tissue fractions (partial volume); label maps are taken by majority on the output grid.

Sizes follow published short-axis dimensions: LV end-diastolic diameter about 40-56 mm, wall 6-11 mm normal, up to
about 20 mm in hypertrophy, RV free wall 2-4 mm (Kawel-Boehm et al., JCMR 2015, "Normal values for cardiovascular
magnetic resonance in adults and children").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InvalidParameterError

# tissue codes painted on the fine grid; order is the column order of the fraction stack
TISSUES = (
    "air", "lv_blood", "lv_myo", "rv_blood", "rv_wall", "papillary", "epi_fat", "pericardium", "lung",
    "lung_artery", "lung_vein", "liver", "muscle", "subcut_fat", "spine", "aorta", "stomach", "spleen", "aortic_root",
    "lv_blood_mix", "rv_blood_mix", "bowel", "rv_trabecula",
)
T = {name: i for i, name in enumerate(TISSUES)}
# project label of every tissue (CONVENTIONS: 1 LV blood pool incl. papillary muscles, 2 LV myocardium, 3 RV blood)
TISSUE_LABEL = np.zeros(len(TISSUES), dtype=np.uint8)
TISSUE_LABEL[[T["lv_blood"], T["papillary"], T["lv_blood_mix"]]] = 1
TISSUE_LABEL[T["lv_myo"]] = 2
TISSUE_LABEL[[T["rv_blood"], T["rv_blood_mix"], T["rv_trabecula"]]] = 3   # RV trabeculae count as RV cavity


WALL_MM = (5.0, 22.0)   # LV wall thickness limits (thinned scar to hypertrophy)


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def sample_anatomy(rng: np.random.Generator, level: str, *, rotation_sd_deg: float = 15.0, allow_mirror: bool = False) -> dict:
    """Random anatomy parameters (JSON-able) for one slice at ``level`` ('basal', 'mid', 'apical')."""
    # the apical slice of a 3-slice protocol lies about a quarter of the way from the apex: a cavity of 8-17 mm radius
    lv = {"basal": (19.0, 28.0), "mid": (15.0, 25.0), "apical": (8.0, 17.0)}[level]
    kind = rng.choice(["thin", "normal", "hypertrophic"], p=[0.15, 0.65, 0.20])
    wall = {"thin": (5.0, 7.0), "normal": (7.0, 11.0), "hypertrophic": (12.0, 20.0)}[str(kind)]
    wall_mm = _u(rng, *wall) * (0.85 if level == "apical" else 1.0)
    heart = {
        "level": level,
        "r_endo_mm": _u(rng, *lv),
        "wall_mm": wall_mm,
        "wall_kind": str(kind),
        # low-order Fourier deformation of the endocardium and of the wall thickness (relative amplitudes)
        "endo_harmonics": [[float(rng.normal(0, 0.06 if k == 2 else 0.03)), _u(rng, 0, 360)] for k in (2, 3, 4)],
        "wall_harmonics": [[float(rng.normal(0, 0.10)), _u(rng, 0, 360)] for k in (1, 2)],
        "thinning": None,
        "rv_angle_deg": _u(rng, 185.0, 210.0),
        "rv_half_span_deg": _u(rng, *{"basal": (60, 78), "mid": (52, 70), "apical": (40, 60)}[level]),
        "rv_depth_mm": _u(rng, *{"basal": (16, 30), "mid": (10, 24), "apical": (5, 14)}[level]),
        "rv_shape_power": _u(rng, 0.35, 0.8),
        "rv_skew": _u(rng, -0.25, 0.25),
        "rv_wall_mm": _u(rng, 2.0, 4.0),
        "papillary": [],
        "trabeculae": [],
        "epi_fat_mm": _u(rng, 0.0, 2.5),
        "groove_fat_mm": _u(rng, 3.0, 10.0),
        "pericardium_mm": _u(rng, 0.8, 2.0),
        "anterior_fat_mm": _u(rng, 0.0, 15.0),
        "lvot": None,
        # inflow mixing: part of each cavity gets the bolus a little later (swirls seen on the upslope)
        "mixing": [[_u(rng, 8, 30), _u(rng, 0, 360), _u(rng, 0, 360)] for _ in range(3)],
        "mixing_threshold": _u(rng, 0.3, 1.5),
    }
    if rng.random() < 0.15:  # regional thinning (old infarct): a Gaussian dip in wall thickness
        heart["thinning"] = {"angle_deg": _u(rng, 0, 360), "width_deg": _u(rng, 25, 70), "min_mm": _u(rng, 5.0, 6.0)}
    n_pap = {"basal": int(rng.integers(0, 3)), "mid": 2, "apical": int(rng.integers(0, 3))}[level]
    pap_r = {"basal": (2.0, 4.0), "mid": (3.0, 6.5), "apical": (1.5, 3.0)}[level]
    for angle in (300.0, 110.0)[:n_pap]:
        heart["papillary"].append({"angle_deg": angle + float(rng.normal(0, 15)), "radius_mm": _u(rng, *pap_r),
                                   "attach": _u(rng, 0.6, 1.0)})
    n_trab = int(rng.integers(*{"basal": (0, 6), "mid": (2, 12), "apical": (4, 16)}[level]))
    for _ in range(n_trab):
        heart["trabeculae"].append({"angle_deg": _u(rng, 0, 360), "radius_mm": _u(rng, 0.6, 1.8), "depth": _u(rng, 0.0, 0.8)})
    if level == "basal" and rng.random() < 0.35:  # LV outflow tract: anteroseptal gap opening into the aortic root
        heart["lvot"] = {"angle_deg": heart["rv_angle_deg"] + _u(rng, 20, 45), "width_deg": _u(rng, 35, 65),
                         "root_radius_mm": _u(rng, 10, 14)}
    body = {
        # the oblique short-axis plane cuts the torso long: 350-480 mm wide, more than most fields of view
        "centre_mm": [float(rng.normal(-35, 12)), 0.0],
        "semi_axes_mm": [_u(rng, 175, 240), _u(rng, 115, 160)],
        "subcut_fat_mm": _u(rng, 4, 25),
        "muscle_mm": _u(rng, 8, 18),
        "anterior_muscle_mm": _u(rng, 4, 22),
        # mediastinal soft tissue and fat on the medial/inferior side of the heart (great vessels, oesophagus, fat)
        "mediastinum": {"offset_mm": [float(rng.normal(-25, 8)), float(rng.normal(15, 8))],
                        "semi_axes_mm": [_u(rng, 45, 75), _u(rng, 35, 60)], "angle_deg": _u(rng, -40, 40),
                        "fat_fraction": _u(rng, 0.2, 0.8),
                        "modes": [[_u(rng, 8, 30), _u(rng, 0, 360), _u(rng, 0, 360)] for _ in range(8)]},
        "liver": {"centre_mm": [float(rng.normal(-60, 20)), float(rng.normal(82, 12)) - (12 if level == "apical" else 0)],
                  "semi_axes_mm": [_u(rng, 90, 135), _u(rng, 50, 78)], "angle_deg": _u(rng, -30, 10)},
        "bowel": [[float(rng.normal(60, 35)), float(rng.normal(100, 15)), _u(rng, 8, 22), _u(rng, 6, 16), _u(rng, 0, 180)]
                  for _ in range(int(rng.integers(0, 7)))],
        "stomach": {"centre_mm": [float(rng.normal(75, 15)), float(rng.normal(90, 12))],
                    "semi_axes_mm": [_u(rng, 25, 45), _u(rng, 18, 30)], "wall_mm": _u(rng, 3, 6)} if rng.random() < 0.8 else None,
        "spleen": {"centre_mm": [float(rng.normal(125, 12)), float(rng.normal(60, 12))],
                   "semi_axes_mm": [_u(rng, 18, 30), _u(rng, 25, 40)]} if rng.random() < 0.5 else None,
        "spine_mm": [float(rng.normal(45, 12)), 0.0],
        "spine_radius_mm": _u(rng, 13, 18),
        "aorta_offset_mm": [float(rng.normal(-24, 5)), float(rng.normal(-20, 5))],
        "aorta_radius_mm": _u(rng, 9, 13),
        "lung_vessels": [[_u(rng, -170, 180), _u(rng, -120, 110), float(np.exp(rng.uniform(np.log(0.6), np.log(3.5)))),
                          int(rng.integers(0, 2))] for _ in range(int(rng.integers(60, 170)))],
    }
    # place the chest wall just in front of the RV (retrosternal gap 0-25 mm) and the spine near the back
    bb = body["semi_axes_mm"][1]
    m = body["subcut_fat_mm"] + body["muscle_mm"]
    front = heart["r_endo_mm"] + heart["wall_mm"] + heart["rv_depth_mm"] + heart["rv_wall_mm"] + heart["pericardium_mm"]
    by = -(front + _u(rng, 0.0, 25.0)) + bb - m - body["anterior_muscle_mm"]
    body["centre_mm"][1] = float(by)
    body["spine_mm"][1] = float(by + bb - m - body["spine_radius_mm"] - _u(rng, 15, 35))
    warp = [[_u(rng, 0.5, 3.5), _u(rng, 70, 220), _u(rng, 0, 360), _u(rng, 0, 360), int(rng.integers(0, 2))] for _ in range(4)]
    pose = {"rotation_deg": float(rng.normal(0, rotation_sd_deg)), "mirror": bool(allow_mirror and rng.random() < 0.5)}
    return {"heart": heart, "body": body, "warp": warp, "pose": pose}


@dataclass
class AnatomyMaps:
    """An anatomy rendered on one output grid.

    fractions: (K, Y, X) float32 tissue fractions (sum 1), K = len(TISSUES).
    labels: (Y, X) uint8 (majority of the project labels). myo_depth: (Y, X) float32 endo (0) to epi (1) wherever some
    LV myocardium is present, NaN elsewhere. insertion_points_yx: anterior and inferior RV insertion points in output pixel coordinates.
    lv_centre_yx: LV centre in output pixel coordinates.
    """

    fractions: np.ndarray
    labels: np.ndarray
    myo_depth: np.ndarray
    insertion_points_yx: dict
    lv_centre_yx: tuple
    label_fractions: np.ndarray   # (4, Y, X) on the output grid
    # labels with a partial-volume margin taken off the myocardium (``render(myo_margin_mm=...)``); None without one
    margin_labels: Optional[np.ndarray] = None


def _ellipse(x, y, cx, cy, a, b, angle_deg=0.0):
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _angdiff(a, b):
    """Signed angle a - b in degrees, wrapped to [-180, 180)."""
    return (a - b + 180.0) % 360.0 - 180.0


def heart_radii(heart: dict, theta_deg: np.ndarray) -> dict:
    """Polar boundaries (mm) of the heart at angles ``theta_deg`` (body frame)."""
    th = np.radians(theta_deg)
    r_endo = np.full(theta_deg.shape, heart["r_endo_mm"], dtype=np.float32)
    fac = np.ones_like(r_endo)
    for k, (amp, ph) in zip((2, 3, 4), heart["endo_harmonics"]):
        fac += amp * np.cos(k * th - np.radians(ph))
    r_endo = r_endo * fac
    wall = np.ones_like(r_endo)
    for k, (amp, ph) in zip((1, 2), heart["wall_harmonics"]):
        wall += amp * np.cos(k * th - np.radians(ph))
    wall = heart["wall_mm"] * np.clip(wall, 0.6, 1.4)
    if heart["thinning"]:
        t = heart["thinning"]
        g = np.exp(-0.5 * (_angdiff(theta_deg, t["angle_deg"]) / (t["width_deg"] / 2.355)) ** 2)
        wall = wall - g * np.maximum(wall - t["min_mm"], 0.0)
    wall = np.clip(wall, WALL_MM[0], WALL_MM[1])
    r_epi = r_endo + wall
    u = _angdiff(theta_deg, heart["rv_angle_deg"]) / heart["rv_half_span_deg"]
    u_sk = np.clip(u + heart["rv_skew"] * (1 - u ** 2), -1, 1)
    inside = np.abs(u) < 1.0
    depth = np.where(inside, heart["rv_depth_mm"] * np.clip(1 - u_sk ** 2, 0, 1) ** heart["rv_shape_power"], 0.0)
    return {"r_endo": r_endo, "r_epi": r_epi, "rv_depth": depth.astype(np.float32), "rv_inside": inside, "u": u}


def insertion_angles(heart: dict) -> tuple:
    """Body-frame angles (deg) of the anterior and inferior insertion points: where the RV cavity meets the septum.

    y points down, so the anterior side of the RV crescent has the smaller (more negative) y: angle centre - span.
    """
    a = heart["rv_angle_deg"]
    span = heart["rv_half_span_deg"] * 0.93  # just inside the crescent tips, where the cavity still touches the septum
    anterior, inferior = a + span, a - span
    # pick by y (up = anterior): sin(angle) < 0 is up on screen
    if np.sin(np.radians(anterior)) > np.sin(np.radians(inferior)):
        anterior, inferior = inferior, anterior
    return float(anterior), float(inferior)


class Grid:
    """An image grid: output pixels (ny, nx) of ``spacing`` mm, its centre placed at ``centre_body_mm`` in the body frame."""

    def __init__(self, ny: int, nx: int, spacing: float, centre_body_mm=(0.0, 0.0)):
        self.ny, self.nx, self.spacing = int(ny), int(nx), float(spacing)
        self.centre = (float(centre_body_mm[0]), float(centre_body_mm[1]))

    def coords(self, ss: int):
        """Image-frame mm coordinates (x, y) of a grid supersampled ``ss`` times, relative to the grid centre."""
        h = self.spacing / ss
        xs = (np.arange(self.nx * ss, dtype=np.float32) - (self.nx * ss - 1) / 2.0) * h
        ys = (np.arange(self.ny * ss, dtype=np.float32) - (self.ny * ss - 1) / 2.0) * h
        return np.meshgrid(xs, ys)


def _to_body(x, y, anat: dict, grid: Grid, dtype=np.float32):
    """Image mm (relative to grid centre) -> warped body frame mm."""
    pose = anat["pose"]
    c, s = np.cos(np.radians(pose["rotation_deg"])), np.sin(np.radians(pose["rotation_deg"]))
    xb = c * x + s * y
    yb = -s * x + c * y
    if pose["mirror"]:
        xb = -xb
    xb = xb + grid.centre[0]
    yb = yb + grid.centre[1]
    for amp, wl, direction, phase, axis in anat["warp"]:
        d = np.radians(direction)
        arg = (2 * np.pi / wl) * (np.cos(d) * xb + np.sin(d) * yb) + np.radians(phase)
        if axis:
            yb = yb + amp * np.sin(arg)
        else:
            xb = xb + amp * np.sin(arg)
    return xb.astype(dtype), yb.astype(dtype)


def _from_body_point(xb, yb, anat, grid: Grid):
    """Approximate inverse (ignores the small warp): body mm -> output pixel (y, x)."""
    pose = anat["pose"]
    x, y = xb - grid.centre[0], yb - grid.centre[1]
    if pose["mirror"]:
        x = -x
    c, s = np.cos(np.radians(pose["rotation_deg"])), np.sin(np.radians(pose["rotation_deg"]))
    xi, yi = c * x - s * y, s * x + c * y
    return (yi / grid.spacing + (grid.ny - 1) / 2.0, xi / grid.spacing + (grid.nx - 1) / 2.0)


def body_point_to_pixel(xb: float, yb: float, anat: dict, grid: Grid, *, iterations: int = 30) -> tuple:
    """Exact sub-pixel output position (y, x) of the body-frame point (xb, yb) under the full forward map (pose and
    elastic warp): solves ``_to_body(pixel) = point`` by fixed-point iteration, each step corrected with the pose-only
    inverse (the warp is a small perturbation: 0.5-3.5 mm over 70-220 mm wavelengths, so the iteration contracts)."""
    ty, tx = _from_body_point(xb, yb, anat, grid)          # the target under the pose-only inverse
    py, px = ty, tx
    for _ in range(iterations):
        x = np.array([(px - (grid.nx - 1) / 2.0) * grid.spacing])
        y = np.array([(py - (grid.ny - 1) / 2.0) * grid.spacing])
        fx, fy = _to_body(x, y, anat, grid, dtype=np.float64)   # double: a point solve needs the digits
        gy, gx = _from_body_point(float(fx[0]), float(fy[0]), anat, grid)
        dy, dx = ty - gy, tx - gx        # body-frame residual mapped by the (linear) pose-only inverse, in pixels
        py, px = py + dy, px + dx
        if abs(dy) + abs(dx) < 1e-6:
            break
    return float(py), float(px)


def pose_affine(anat: dict, grid: Grid, slice_thickness: float, z_mm: float = 0.0) -> np.ndarray:
    """Voxel (column x, row y, slice 0) to patient LPS matrix implied by the pose: body x = patient left, body y =
    posterior (image up = anterior in the unrotated, unmirrored standard view), slices along z (superior). Columns
    are reversed (negative x direction) when the slice is mirrored, so the column x row normal flips with it."""
    pose = anat["pose"]
    c, s = np.cos(np.radians(pose["rotation_deg"])), np.sin(np.radians(pose["rotation_deg"]))
    mx = -1.0 if pose["mirror"] else 1.0
    col = np.array([mx * c, -s, 0.0])     # body-frame direction of one image column step (+x)
    row = np.array([mx * s, c, 0.0])      # ... of one row step (+y)
    normal = np.cross(col, row)
    m = np.eye(4)
    m[:3, 0] = col * grid.spacing
    m[:3, 1] = row * grid.spacing
    m[:3, 2] = normal * float(slice_thickness)
    centre = np.array([grid.centre[0], grid.centre[1], float(z_mm)])
    m[:3, 3] = centre - m[:3, 0] * (grid.nx - 1) / 2.0 - m[:3, 1] * (grid.ny - 1) / 2.0
    return m


def paint(anat: dict, x: np.ndarray, y: np.ndarray) -> tuple:
    """Tissue codes (int8) and myocardial depth (endo 0 .. epi 1, -1 elsewhere) at body-frame points."""
    heart, body = anat["heart"], anat["body"]
    idx = np.zeros(x.shape, dtype=np.int8)
    (bx, by), (ba, bb) = body["centre_mm"], body["semi_axes_mm"]
    idx[_ellipse(x, y, bx, by, ba, bb)] = T["subcut_fat"]
    f = body["subcut_fat_mm"]
    idx[_ellipse(x, y, bx, by, ba - f, bb - f)] = T["muscle"]
    m = f + body["muscle_mm"]
    am = body.get("anterior_muscle_mm", 0.0)   # pectoral muscles and breast tissue: a thicker anterior wall
    cavity = _ellipse(x, y, bx, by + am / 2, ba - m, bb - m - am / 2)
    idx[cavity] = T["lung"]
    liv = body["liver"]
    idx[cavity & _ellipse(x, y, *liv["centre_mm"], *liv["semi_axes_mm"], liv["angle_deg"])] = T["liver"]
    for (gx, gy, ga, gb, gang) in body.get("bowel", []):
        idx[cavity & _ellipse(x, y, gx, gy, ga, gb, gang) & (idx != T["liver"])] = T["bowel"]
    if body["spleen"]:
        sp = body["spleen"]
        idx[cavity & _ellipse(x, y, *sp["centre_mm"], *sp["semi_axes_mm"])] = T["spleen"]
    if body["stomach"]:
        st = body["stomach"]
        (sx, sy), (sa, sb) = st["centre_mm"], st["semi_axes_mm"]
        idx[cavity & _ellipse(x, y, sx, sy, sa + st["wall_mm"], sb + st["wall_mm"])] = T["muscle"]   # gastric wall
        idx[cavity & _ellipse(x, y, sx, sy, sa, sb)] = T["stomach"]
    med = body.get("mediastinum")
    if med:
        inside = cavity & _ellipse(x, y, *med["offset_mm"], *med["semi_axes_mm"], med["angle_deg"])
        # a blotchy mix of fat and soft tissue: random plane waves (defined in body mm, so the same on any grid or
        # crop), thresholded at the level that leaves about ``fat_fraction`` as fat (sum of 8 unit waves: sd 2)
        pattern = np.zeros(x.shape, dtype=np.float32)
        for wl, direction, phase in med["modes"]:
            d = np.radians(direction)
            pattern += np.sin((2 * np.pi / wl) * (np.cos(d) * x + np.sin(d) * y) + np.radians(phase))
        fat = pattern > 2.0 * (1.0 - 2.0 * med["fat_fraction"])
        idx[inside & fat] = T["epi_fat"]
        idx[inside & ~fat] = T["bowel"]
    spx, spy = body["spine_mm"]
    rs = body["spine_radius_mm"]
    idx[_ellipse(x, y, spx, spy + 8, rs * 2.6, rs * 1.7)] = T["muscle"]    # paraspinal muscles
    idx[(x - spx) ** 2 + (y - spy) ** 2 <= rs ** 2] = T["spine"]
    ax, ay = spx + body["aorta_offset_mm"][0], spy + body["aorta_offset_mm"][1]
    idx[(x - ax) ** 2 + (y - ay) ** 2 <= body["aorta_radius_mm"] ** 2] = T["aorta"]
    lung = np.nonzero((idx == T["lung"]).ravel())[0]
    if lung.size and body["lung_vessels"]:
        v = np.asarray(body["lung_vessels"], dtype=np.float32)
        lx, ly = x.ravel()[lung], y.ravel()[lung]
        hit = np.full(lung.size, -1, dtype=np.int32)
        order = np.argsort(lx, kind="stable")
        lxs = lx[order]
        lo = np.searchsorted(lxs, v[:, 0] - v[:, 2])
        hi = np.searchsorted(lxs, v[:, 0] + v[:, 2], side="right")
        for j in range(len(v)):   # per vessel only the pixels in its x-band (sorted), so cost ~ vessel area
            cand = order[lo[j]:hi[j]]
            inside = (lx[cand] - v[j, 0]) ** 2 + (ly[cand] - v[j, 1]) ** 2 <= v[j, 2] ** 2
            hit[cand[inside]] = j
        sel = hit >= 0
        flat = idx.reshape(-1)
        flat[lung[sel]] = np.where(v[hit[sel], 3] > 0, T["lung_vein"], T["lung_artery"])

    # heart, polar around the LV centre; only a disc around it needs the polar maths
    r_all = np.hypot(x, y)
    near = r_all < heart["r_endo_mm"] * 1.5 + heart["wall_mm"] * 1.5 + heart["rv_depth_mm"] + 30
    xs, ys, r = x[near], y[near], r_all[near]
    th = np.degrees(np.arctan2(ys, xs))
    hr = heart_radii(heart, th)
    r_endo, r_epi, depth_rv = hr["r_endo"], hr["r_epi"], hr["rv_depth"]
    rv_outer = r_epi + depth_rv
    wall_rv = np.where(hr["rv_inside"] | (np.abs(hr["u"]) < 1.12), heart["rv_wall_mm"], 0.0)
    r_out = rv_outer + wall_rv
    ia, ii = insertion_angles(heart)
    groove = heart["groove_fat_mm"] * (np.exp(-0.5 * (_angdiff(th, ia) / 14) ** 2) + np.exp(-0.5 * (_angdiff(th, ii) / 14) ** 2))
    anterior_fat = heart["anterior_fat_mm"] * np.clip(-np.sin(np.radians(th)), 0, 1) ** 2 * hr["rv_inside"]
    r_fat = r_out + heart["epi_fat_mm"] + groove + anterior_fat
    r_peri = r_fat + heart["pericardium_mm"]
    sub = idx[near]
    sub[r < r_peri + 2.0 * (np.abs(hr["u"]) < 1.1)] = T["epi_fat"]   # pericardial fat outside the sac in front of the RV
    sub[r < r_peri] = T["pericardium"]
    sub[r < r_fat] = T["epi_fat"]
    sub[r < r_out] = T["rv_wall"]
    sub[(r < rv_outer) & (r >= r_epi) & hr["rv_inside"]] = T["rv_blood"]
    myo = (r < r_epi) & (r >= r_endo)
    sub[myo] = T["lv_myo"]
    sub[r < r_endo] = T["lv_blood"]
    mix = np.zeros(r.shape, dtype=np.float32)
    for wl, direction, phase in heart.get("mixing", []):
        d = np.radians(direction)
        mix += np.sin((2 * np.pi / wl) * (np.cos(d) * xs + np.sin(d) * ys) + np.radians(phase))
    late = mix > heart.get("mixing_threshold", 9.0)
    sub[late & (sub == T["lv_blood"])] = T["lv_blood_mix"]
    sub[late & (sub == T["rv_blood"])] = T["rv_blood_mix"]
    dep = np.full(r.shape, -1.0, dtype=np.float32)
    dep[myo] = ((r - r_endo) / np.maximum(r_epi - r_endo, 1e-3))[myo]
    # papillary muscles and trabeculae: myocardial tissue inside the cavity, labelled blood pool
    for p in heart["papillary"]:
        a = np.radians(p["angle_deg"])
        rc = heart["r_endo_mm"] - p["radius_mm"] * p["attach"]
        d2 = (xs - rc * np.cos(a)) ** 2 + (ys - rc * np.sin(a)) ** 2
        sub[(d2 <= p["radius_mm"] ** 2) & (sub == T["lv_blood"])] = T["papillary"]
    for tb in heart["trabeculae"]:
        a = np.radians(tb["angle_deg"])
        rc = heart["r_endo_mm"] - tb["radius_mm"] * (1 - tb["depth"])
        d2 = (xs - rc * np.cos(a)) ** 2 + (ys - rc * np.sin(a)) ** 2
        sub[(d2 <= tb["radius_mm"] ** 2) & (sub == T["lv_blood"])] = T["papillary"]
    rv_cavity = (sub == T["rv_blood"]) | (sub == T["rv_blood_mix"])
    for tb in heart.get("rv_trabeculae", []):
        # muscle bundles of the RV cavity (trabeculae carneae, the moderator band): a disc, or a strand across the
        # cavity from the septum to the free wall, labelled RV cavity as contouring conventions count them
        a = float(heart["rv_angle_deg"] + tb["u"] * heart["rv_half_span_deg"])
        ra = heart_radii(heart, np.array([a], dtype=np.float32))
        r0, dep_a = float(ra["r_epi"][0]), float(ra["rv_depth"][0])
        ca, sa = np.cos(np.radians(a)), np.sin(np.radians(a))
        if tb.get("strand"):
            along = xs * ca + ys * sa                          # radial coordinate along the strand's direction
            across = -xs * sa + ys * ca
            hit = (np.abs(across) <= tb["radius_mm"]) & (along >= r0) & (along <= r0 + dep_a)
        else:
            rc = r0 + tb["f"] * dep_a
            hit = (xs - rc * ca) ** 2 + (ys - rc * sa) ** 2 <= tb["radius_mm"] ** 2
        sub[hit & rv_cavity] = T["rv_trabecula"]
    layer = heart.get("trabecular_layer")
    if layer:
        sub[_trabecular_layer(layer, th, r, r_endo) & (sub == T["lv_blood"])] = T["papillary"]
    if heart["lvot"]:
        lo = heart["lvot"]
        gap = np.abs(_angdiff(th, lo["angle_deg"])) < lo["width_deg"] / 2
        opening = gap & (r < r_epi + 1.0) & (r >= r_endo * 0.7)
        sub[opening] = T["lv_blood"]
        dep[opening] = -1.0
        a = np.radians(lo["angle_deg"])
        rr = heart["r_endo_mm"] + heart["wall_mm"] + lo["root_radius_mm"] * 0.8
        d2 = (xs - rr * np.cos(a)) ** 2 + (ys - rr * np.sin(a)) ** 2
        sub[(d2 <= lo["root_radius_mm"] ** 2) & ~(r < r_epi + 1.0)] = T["aortic_root"]
    idx[near] = sub
    depth = np.full(x.shape, -1.0, dtype=np.float32)
    depth[near] = dep
    return idx, depth


def sample_trabecular_layer(rng: np.random.Generator) -> dict:
    """A non-compacted (trabecular) layer lining the endocardium: muscle strands and blood interleaved below the
    image resolution, 1.5-5 mm deep, counted as LV cavity as contouring conventions do (trabeculae and papillary
    muscles in the blood pool). In the image it is a rough grey zone between the bright blood and the compact wall."""
    return {"depth_mm": _u(rng, 1.5, 5.0), "fill": _u(rng, 0.4, 0.85),
            "depth_harmonics": [[_u(rng, 0.0, 0.4), _u(rng, 0, 360)] for _ in (1, 2)],
            # strands run roughly radially: the texture varies mostly along the wall (direction near 0 deg)
            "modes": [[_u(rng, 1.5, 5.0), float(rng.normal(0.0, 25.0)), _u(rng, 0, 360)] for _ in range(6)]}


def sample_rv_trabeculae(rng: np.random.Generator) -> list:
    """Trabeculae of the RV cavity: 6-24 discs of 0.8-2.5 mm along the crescent, most near the free wall, and in
    half the draws one strand 1-2 mm wide across the cavity (the moderator band)."""
    out = [{"u": _u(rng, -0.9, 0.9), "f": float(np.sqrt(rng.uniform(0.1, 1.0))), "radius_mm": _u(rng, 0.8, 2.5)}
           for _ in range(int(rng.integers(6, 25)))]
    if rng.random() < 0.5:
        out.append({"u": _u(rng, -0.5, 0.5), "f": 0.5, "radius_mm": _u(rng, 0.5, 1.0), "strand": True})
    return out


def _trabecular_layer(layer: dict, theta_deg, r, r_endo) -> np.ndarray:
    """Points of the trabecular layer that are muscle: within the layer's local depth inside the endocardium, where a
    sum of plane waves in (arc length, depth) coordinates exceeds the level that leaves the local fill fraction,
    which falls from ``fill`` at the wall to 0 at the layer's inner edge. (The arc length restarts at -180 deg, so
    the strand pattern has one seam there; left as measured in docs/phantom.md.)"""
    from scipy.special import ndtri

    th = np.radians(theta_deg)
    depth = np.ones_like(r)
    for k, (amp, ph) in zip((1, 2), layer["depth_harmonics"]):
        depth += amp * np.cos(k * th - np.radians(ph))
    depth = layer["depth_mm"] * np.clip(depth, 0.0, None)
    rho = r_endo - r                                # mm inside the local endocardium
    inside = (rho >= 0) & (rho < depth)
    # the strand texture only where it can matter: the layer is a thin band of the painted region
    rho, depth, arc = rho[inside], depth[inside], (th * r_endo)[inside]
    pattern = np.zeros(rho.shape, dtype=np.float32)
    for wl, direction, phase in layer["modes"]:
        d = np.radians(direction)
        pattern += np.sin((2 * np.pi / wl) * (np.cos(d) * arc + np.sin(d) * rho) + np.radians(phase))
    frac = layer["fill"] * np.sqrt(np.clip(1 - rho / np.maximum(depth, 1e-3), 0, 1))
    level = np.sqrt(len(layer["modes"]) / 2.0) * ndtri(np.clip(1 - frac, 1e-6, 1 - 1e-6))
    muscle = np.zeros(r.shape, dtype=bool)
    muscle[inside] = pattern > level
    return muscle


# Through-plane partial volume (training slices, ``sample_slab``): how fast the heart's cross-section changes along the
# slice normal. An LV modelled as a half-ellipsoid (long semi-axis ~90 mm, radius ~25 mm) narrows by ~0.1 % of its
# radius per mm near the base, ~0.6 % per mm at mid-ventricle and 1-3 % per mm toward the apex; short-axis slices are
# also planned a few degrees off the LV axis, which shifts the cross-section along the slab.
SLAB_TAPER_PER_MM = {"basal": (0.0, 0.005), "mid": (0.004, 0.012), "apical": (0.01, 0.03)}
SLAB_TILT_MAX_DEG = 10.0
SLAB_SUBSLICES = 3
SLAB_HEART_MM = (40.0, 60.0)   # full effect within 40 mm of the LV centre, none beyond 60 mm (the surroundings)


def sample_slab(rng: np.random.Generator, level: str, slice_mm: float, n: int = SLAB_SUBSLICES) -> dict:
    """Sub-slices across a slab ``slice_mm`` thick: each the heart's central cross-section scaled about the LV centre
    (the taper toward the apex) and shifted (the slice's tilt from the LV axis). ``render(slab=...)`` averages them,
    so borders spread over a band as in real 6-10 mm slices, and takes the labels by majority over the slab."""
    if level not in SLAB_TAPER_PER_MM:
        raise InvalidParameterError(f"level must be one of {sorted(SLAB_TAPER_PER_MM)}, got {level!r}")
    if not 0.0 < float(slice_mm) <= 20.0 or int(n) < 1:
        raise InvalidParameterError(f"a slab needs 0 < slice_mm <= 20 and n >= 1, got {slice_mm!r}, {n!r}")
    taper = float(rng.uniform(*SLAB_TAPER_PER_MM[level]))
    tilt = np.tan(np.radians(float(rng.uniform(0.0, SLAB_TILT_MAX_DEG))))
    phi = float(rng.uniform(0.0, 2.0 * np.pi))
    z = (np.arange(int(n)) - (int(n) - 1) / 2.0) * float(slice_mm) / int(n)      # sub-slice centres, mm
    return {"scales": (1.0 - taper * z).tolist(),
            "shifts_mm": [[float(zk * tilt * np.cos(phi)), float(zk * tilt * np.sin(phi))] for zk in z],
            "heart_mm": list(SLAB_HEART_MM)}


def _slab_points(xb: np.ndarray, yb: np.ndarray, scale: float, shift, heart_mm) -> tuple:
    """Body-frame points of the central cross-section seen at a sub-slice: scaled and shifted about the LV centre,
    fading to no change between ``heart_mm[0]`` and ``heart_mm[1]`` from it."""
    r = np.hypot(xb, yb)
    w = np.clip((heart_mm[1] - r) / (heart_mm[1] - heart_mm[0]), 0.0, 1.0).astype(np.float32)
    s = 1.0 + w * (float(scale) - 1.0)
    return (xb - w * float(shift[0])) / s, (yb - w * float(shift[1])) / s


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a.astype(np.float32)
    ny, nx = a.shape[-2] // f, a.shape[-1] // f
    return a.reshape(a.shape[:-2] + (ny, f, nx, f)).mean(axis=(-3, -1), dtype=np.float32)


def _myocardium_margin_labels(lab_fine: np.ndarray, fine_mm: float, margin_mm: float, ss: int) -> np.ndarray:
    """Output-grid labels after taking ``margin_mm`` off every border of the LV myocardium on the fine grid: a fine
    myocardial pixel whose centre lies within the margin of a non-myocardial one takes that pixel's label (blood pool
    on the endocardial side, RV cavity across the septum, background outside), then the majority per output pixel."""
    from scipy import ndimage

    myo = lab_fine == 2
    dist, (iy, ix) = ndimage.distance_transform_edt(myo, return_indices=True)
    # distance between pixel centres; the border lies half a fine pixel before the nearest non-myocardial centre
    edge = myo & ((dist - 0.5) * fine_mm < margin_mm)
    trimmed = lab_fine.copy()
    trimmed[edge] = lab_fine[iy[edge], ix[edge]]
    frac = np.stack([_block_mean((trimmed == c).astype(np.float32), ss) for c in range(4)])
    return np.argmax(frac, axis=0).astype(np.uint8)


def render(anat: dict, grid: Grid, *, supersample: int = 2, myo_margin_mm: float = 0.0,
           slab: Optional[dict] = None) -> AnatomyMaps:
    """Render ``anat`` on ``grid``: tissue fractions, labels and myocardial depth on the output pixels.

    ``myo_margin_mm`` > 0 adds ``margin_labels``: the labels with that margin taken off the myocardium (a training
    convention, see ``generator.TRAIN_MYO_MARGIN_ACQ_PX``); the fractions, ``labels`` and the rest are unchanged.
    ``slab`` (``sample_slab``): fractions, depth and labels are taken over its sub-slices together (through-plane
    partial volume); insertion points and the LV centre stay those of the central cross-section."""
    ss = int(supersample)
    x, y = grid.coords(ss)
    xb, yb = _to_body(x, y, anat, grid)
    if slab is not None and myo_margin_mm > 0:
        raise InvalidParameterError("a myocardium margin and a slab are not combined")
    subs = [(xb, yb)] if slab is None else [
        _slab_points(xb, yb, sc, sh, slab["heart_mm"]) for sc, sh in zip(slab["scales"], slab["shifts_mm"])]
    k = len(TISSUES)
    ny, nx = grid.ny, grid.nx
    # one pass over the fine grid: tissue counts per output pixel by bincount of (pixel, tissue) pairs
    block = (np.arange(ny * ss) // ss)[:, None] * nx + (np.arange(nx * ss) // ss)[None, :]
    counts, dsum = 0, 0.0
    for px, py in subs:
        idx, depth = paint(anat, px, py)
        lab_fine = TISSUE_LABEL[idx]      # with a margin there is one cross-section, so this is its fine label map
        counts = counts + np.bincount((block * k + idx).ravel(), minlength=ny * nx * k)
        dsum = dsum + _block_mean(np.where(lab_fine == 2, depth, 0.0), ss)
    counts = counts.reshape(ny, nx, k)
    fractions = np.ascontiguousarray(np.moveaxis(counts, -1, 0), dtype=np.float32) / float(ss * ss * len(subs))
    label_fr = np.stack([fractions[TISSUE_LABEL == c].sum(axis=0) for c in range(4)])
    labels = np.argmax(label_fr, axis=0).astype(np.uint8)
    cnt = fractions[T["lv_myo"]]
    dsum = dsum / len(subs)      # one cross-section: divided by 1, bit for bit the arrays of before
    myo_depth = np.where(cnt > 0, dsum / np.maximum(cnt, 1e-6), np.nan).astype(np.float32)
    heart = anat["heart"]
    ips = {}
    ia, ii = insertion_angles(heart)
    for name, a in (("anterior", ia), ("inferior", ii)):
        r_epi = float(heart_radii(heart, np.array([a], dtype=np.float32))["r_epi"][0])
        # through the full forward map (pose + elastic warp), kept at sub-pixel precision (float y, x)
        ips[name] = body_point_to_pixel(r_epi * np.cos(np.radians(a)), r_epi * np.sin(np.radians(a)), anat, grid)
    margin_labels = None
    if myo_margin_mm > 0:
        margin_labels = _myocardium_margin_labels(lab_fine, float(grid.spacing) / ss, float(myo_margin_mm), ss)
    return AnatomyMaps(fractions=fractions, labels=labels, myo_depth=myo_depth, insertion_points_yx=ips,
                       lv_centre_yx=_from_body_point(0.0, 0.0, anat, grid), label_fractions=label_fr,
                       margin_labels=margin_labels)
