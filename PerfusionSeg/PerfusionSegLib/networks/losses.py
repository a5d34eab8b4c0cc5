"""Training loss of both papers' networks: cross-entropy plus a soft Jaccard (IoU) term, equal weights."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def soft_jaccard_loss(logits: torch.Tensor, target: torch.Tensor, *, classes: Optional[Sequence[int]] = None,
                      eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of soft IoU = sum(p*t) / (sum(p) + sum(t) - sum(p*t)), over the batch and pixels.

    logits (N, C, H, W), target (N, H, W) integer codes. ``classes`` restricts the mean (e.g. foreground only);
    ``eps`` smooths classes absent from both prediction and target (their IoU counts as 1).
    """
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    union = probs.sum(dims) + onehot.sum(dims) - inter
    iou = (inter + eps) / (union + eps)
    if classes is not None:
        iou = iou[list(classes)]
    return 1.0 - iou.mean()


class CEJaccardLoss(nn.Module):
    """ce_weight * cross-entropy + jaccard_weight * soft-Jaccard loss (1:1 as published)."""

    def __init__(self, ce_weight: float = 1.0, jaccard_weight: float = 1.0, class_weights: Optional[Sequence[float]] = None,
                 jaccard_classes: Optional[Sequence[int]] = None):
        super().__init__()
        self.ce_weight, self.jaccard_weight = float(ce_weight), float(jaccard_weight)
        self.jaccard_classes = None if jaccard_classes is None else list(jaccard_classes)
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target.long(), weight=self.class_weights)
        return self.ce_weight * ce + self.jaccard_weight * soft_jaccard_loss(logits, target, classes=self.jaccard_classes)


__all__ = ["CEJaccardLoss", "soft_jaccard_loss"]
