"""Training loss of both papers' networks: cross-entropy plus a soft Jaccard (IoU) term, equal weights.

Partial (weak) labels: besides the class codes, a training label may be ``UNKNOWN`` (no loss at that pixel) or
``NOT_LV`` (background or RV, not known which: the loss is -log(p_background + p_RV)). They let real images whose
labels are only approximate (e.g. coarse circles drawn around the LV) teach what they do say, the core of the blood
pool, the core of the wall, and "not the LV" well outside it, without teaching their uncertain borders. The Jaccard
term counts definite labels only. With no partial codes in a batch the loss is exactly the published one. The codes
and how coarse labels become partial ones: ``weak_labels``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..weak_labels import NOT_LV, NOT_LV_CLASSES, UNKNOWN


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, *, classes: Optional[Sequence[int]] = None,
                      eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of soft IoU = sum(p*t) / (sum(p) + sum(t) - sum(p*t)), over the batch and pixels.

    logits (N, C, H, W), target (N, H, W) integer codes. ``classes`` restricts the mean (e.g. foreground only);
    ``eps`` smooths classes absent from both prediction and target (their IoU counts as 1). Pixels whose target is not
    a class code (partial labels) are left out of both sums.
    """
    probs = logits.float().softmax(dim=1)
    n_classes = probs.shape[1]
    target = target.long()
    definite = target < n_classes
    partial = not bool(definite.all())
    if partial:
        target = torch.where(definite, target, torch.zeros_like(target))
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if partial:
        mask = definite[:, None].to(probs.dtype)
        probs, onehot = probs * mask, onehot * mask
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    union = probs.sum(dims) + onehot.sum(dims) - inter
    iou = (inter + eps) / (union + eps)
    if classes is not None:
        iou = iou[list(classes)]
    return 1.0 - iou.mean()


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                          weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy that also takes ``NOT_LV`` (-log of the summed background and RV probabilities) and ``UNKNOWN``
    (left out); the mean is over the pixels that carry a loss. Equals ``F.cross_entropy`` on full labels."""
    logits = logits.float()
    target = target.long()
    n_classes = logits.shape[1]
    if bool((target < n_classes).all()):
        return F.cross_entropy(logits, target, weight=weight)
    bad = (target >= n_classes) & (target != NOT_LV) & (target != UNKNOWN)
    if bool(bad.any()):
        raise ValueError(f"training labels hold codes outside 0-{n_classes - 1}, NOT_LV ({NOT_LV}) and UNKNOWN ({UNKNOWN})")
    log_p = logits.log_softmax(dim=1)
    definite = target < n_classes
    safe = torch.where(definite, target, torch.zeros_like(target))
    nll = -log_p.gather(1, safe[:, None])[:, 0]
    w = weight[safe] if weight is not None else torch.ones_like(nll)
    w = w * definite.to(w.dtype)
    not_lv = target == NOT_LV
    if bool(not_lv.any()):
        if n_classes <= max(NOT_LV_CLASSES):
            raise ValueError(f"NOT_LV labels need the background and RV classes; the network has {n_classes} classes")
        nll_not_lv = -torch.logsumexp(log_p[:, list(NOT_LV_CLASSES)], dim=1)
        nll = torch.where(not_lv, nll_not_lv, nll)
        w = w + not_lv.to(w.dtype)
    total = w.sum()
    if float(total) == 0.0:          # a batch of unknown pixels only teaches nothing
        return logits.sum() * 0.0
    return (nll * w).sum() / total


class CEJaccardLoss(nn.Module):
    """ce_weight * cross-entropy + jaccard_weight * soft-Jaccard loss (1:1 as published); takes partial labels."""

    def __init__(self, ce_weight: float = 1.0, jaccard_weight: float = 1.0, class_weights: Optional[Sequence[float]] = None,
                 jaccard_classes: Optional[Sequence[int]] = None):
        super().__init__()
        self.ce_weight, self.jaccard_weight = float(ce_weight), float(jaccard_weight)
        self.jaccard_classes = None if jaccard_classes is None else list(jaccard_classes)
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = partial_cross_entropy(logits, target, weight=self.class_weights)
        if not self.jaccard_weight:
            return self.ce_weight * ce
        return self.ce_weight * ce + self.jaccard_weight * soft_jaccard_loss(logits, target, classes=self.jaccard_classes)


__all__ = ["CEJaccardLoss", "soft_jaccard_loss", "partial_cross_entropy", "UNKNOWN", "NOT_LV", "NOT_LV_CLASSES"]
