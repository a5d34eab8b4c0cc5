"""AHA 16-segment truth for phantom slices, following CONVENTIONS exactly.

Angles are measured around the LV blood-pool centroid from the anterior RV insertion point, turning toward the
septum; the turning direction comes from the anatomy (the RV centroid lies on the septal side), never from a fixed
clockwise assumption, so mirrored or rotated phantoms get the right numbering.
"""
from __future__ import annotations

import numpy as np

# coronary territories (Cerqueira 2002)
TERRITORIES = {"LAD": (1, 2, 7, 8, 13, 14), "RCA": (3, 4, 9, 10, 15), "LCX": (5, 6, 11, 12, 16)}
LEVEL_SEGMENTS = {"basal": tuple(range(1, 7)), "mid": tuple(range(7, 13)), "apical": tuple(range(13, 17))}


def septal_angle_map(labels: np.ndarray, anterior_yx, inferior_yx) -> np.ndarray:
    """Angle (deg, [0, 360)) of every pixel from the anterior insertion point, increasing toward the septum."""
    ys, xs = np.nonzero(labels == 1)
    if ys.size == 0:
        ys, xs = np.nonzero(labels == 2)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]]
    ang = np.degrees(np.arctan2(yy - cy, xx - cx))
    a_ant = np.degrees(np.arctan2(anterior_yx[0] - cy, anterior_yx[1] - cx))
    a_inf = np.degrees(np.arctan2(inferior_yx[0] - cy, inferior_yx[1] - cx))
    ry, rx = np.nonzero(labels == 3)
    if ry.size:
        a_sep = np.degrees(np.arctan2(ry.mean() - cy, rx.mean() - cx))
    else:  # no RV cavity: the septum is midway along the shorter arc between the insertion points
        a_sep = a_ant + ((a_inf - a_ant + 180) % 360 - 180) / 2
    sign = 1.0 if ((a_sep - a_ant) % 360.0) < ((a_inf - a_ant) % 360.0) else -1.0
    return (sign * (ang - a_ant)) % 360.0


def sector_numbers(angle: np.ndarray, level: str) -> np.ndarray:
    """AHA segment number (1-16) for every angle (deg from the anterior insertion point, toward the septum)."""
    if level == "apical":
        # [15,105) septal 14, [105,195) inferior 15, [195,285) lateral 16, [285,15) anterior 13
        k = (((angle - 15.0) % 360.0) // 90.0).astype(int) % 4
        return np.array([14, 15, 16, 13], dtype=np.uint8)[k]
    # [0,60) anteroseptal, [60,120) inferoseptal, [120,180) inferior, [180,240) inferolateral, [240,300) anterolateral,
    # [300,360) anterior
    base = 0 if level == "basal" else 6
    k = (angle // 60.0).astype(int) % 6
    return (np.array([2, 3, 4, 5, 6, 1], dtype=np.uint8) + base)[k]


def aha_sector_truth(labels: np.ndarray, level: str, anterior_yx, inferior_yx) -> np.ndarray:
    """uint8 (Y, X): AHA segment 1-16 in the myocardium (label 2), 0 elsewhere."""
    seg = sector_numbers(septal_angle_map(labels, anterior_yx, inferior_yx), level)
    return np.where(labels == 2, seg, 0).astype(np.uint8)
