"""DAUGS segmentation by patch averaging, the uncertainty map (U-map) and its scores U_pp and U_tot.

For one pool member and one image (frames as channels, 128x128 in DAUGS):

* segmentation: the member runs on 64x64 patches at stride 16 (25 patches); each pixel's class probabilities are the
  mean softmax over every patch covering it (whole patches); myocardium where the mean myocardium probability is
  >= 0.5, elsewhere the most probable of the other classes (labels use the project codes, which are also the class
  indices of the networks: 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool);
* U-map: the member runs on patches at stride 2 (1089 patches); each pixel's value is the population standard
  deviation (ddof 0, so the range is 0-0.5) of the myocardium probability over the patches that cover it, each patch
  less an edge rim of 5 leading and 1 trailing rows/columns (the public release's choice), except where the patch edge
  is on the image border (the rim is then kept). Every pixel is therefore defined: no NaN (the public release left
  the image's outer rows without any patch value, giving NaN U-maps and NaN U_pp for every model). A pixel seen by a
  single patch (the image corners) has standard deviation 0;
* U_tot = sum(U-map^2) over the image; U_pp = U_tot / number of myocardium pixels of the segmentation. A member that
  segments no myocardium gets U_pp = inf and the flag ``empty_myocardium`` (it can never be chosen over one that does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from PerfusionSegLib.errors import InvalidParameterError

MYOCARDIUM_LABEL = 2
MYOCARDIUM_THRESHOLD = 0.5
PATCH_SIZE = 64
SEG_STRIDE = 16
UMAP_STRIDE = 2
UMAP_MARGIN = (5, 1)   # rows/columns dropped on the leading / trailing side of each patch (public DAUGS release)


@dataclass
class UncertaintyScores:
    """U_pp, U_tot and the myocardium pixel count of one segmentation and its U-map."""

    upp: float
    utot: float
    n_myocardium: int
    flags: tuple = ()

    @property
    def valid(self) -> bool:
        return math.isfinite(self.upp)


def uncertainty_scores(umap: np.ndarray, labels_or_mask: np.ndarray,
                       myocardium_label: int = MYOCARDIUM_LABEL) -> UncertaintyScores:
    """U_tot = sum(umap^2); U_pp = U_tot / myocardium pixels (inf, flagged ``empty_myocardium``, when there are none).

    ``labels_or_mask``: a boolean myocardium mask, or a label map (myocardium = ``myocardium_label``).
    """
    u = np.asarray(umap, dtype=np.float64)
    m = np.asarray(labels_or_mask)
    if u.shape != m.shape:
        raise InvalidParameterError(f"U-map {u.shape} and segmentation {m.shape} differ in shape")
    if not np.all(np.isfinite(u)):
        raise InvalidParameterError("the U-map holds NaN or Inf values")
    myo = m if m.dtype == bool else (m == myocardium_label)
    utot = float(np.sum(u * u))
    n = int(np.count_nonzero(myo))
    if n == 0:
        return UncertaintyScores(upp=math.inf, utot=utot, n_myocardium=0, flags=("empty_myocardium",))
    return UncertaintyScores(upp=utot / n, utot=utot, n_myocardium=n)


def labels_from_probabilities(mean_probabilities: np.ndarray, myocardium_channel: int = MYOCARDIUM_LABEL,
                              threshold: float = MYOCARDIUM_THRESHOLD,
                              class_labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """Labels (H, W) uint8 from mean class probabilities (K, H, W): myocardium where its mean probability >= threshold
    (the DAUGS rule), elsewhere the arg-max of the remaining classes. ``class_labels[k]`` is the project label of class
    k (default: k itself, the networks' convention)."""
    p = np.asarray(mean_probabilities, dtype=np.float32)
    if p.ndim != 3 or not 0 <= myocardium_channel < p.shape[0]:
        raise InvalidParameterError(f"mean probabilities must be (K, H, W) with the myocardium channel "
                                    f"{myocardium_channel} among K; got shape {p.shape}")
    codes = np.arange(p.shape[0]) if class_labels is None else np.asarray(class_labels)
    others = p.copy()
    others[myocardium_channel] = -1.0
    labels = codes[np.argmax(others, axis=0)].astype(np.uint8)
    labels[p[myocardium_channel] >= threshold] = codes[myocardium_channel]
    return labels


@dataclass
class MemberEvaluation:
    """One member on one image: mean probabilities (stride ``seg_stride``), labels, U-map (stride ``umap_stride``)."""

    member: str
    mean_probabilities: np.ndarray       # (K, H, W) float32
    labels: np.ndarray                   # (H, W) uint8 project codes
    umap: np.ndarray                     # (H, W) float32, 0..0.5, never NaN
    scores: UncertaintyScores
    umap_stride: int
    seg_stride: int
    n_umap_patches: int
    flags: tuple = field(default_factory=tuple)

    @property
    def upp(self) -> float:
        return self.scores.upp

    @property
    def utot(self) -> float:
        return self.scores.utot
