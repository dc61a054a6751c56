"""Attention transfer (`at`): the normalised spatial attention maps of two models compared."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.common import check_feature_pairs, fp32, match_size, no_autocast
from distill.registry import register


# The raw loss starts at ~6.6 over the 9 C3/SPPF pairs (yolov5n student from scratch, yolov5s teacher, shapes
# data at 160 px) where the detection items sum to ~0.20: 0.01 puts it at about a third of them, the rule
# every default weight of train_kd.py follows.
@register("at", default_weight=0.01, title="attention transfer")
class AttentionTransfer(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv:1612.03928).

    Tensor contract: per pair (B, C_S, H, W) and (B, C_T, H', W'); channel counts may differ.
    Q = mean_c |A_c|^p (p = 2) per sample, (B, H, W); the student map is resized (bilinear) to the
    teacher's H x W if they differ; flattened and L2-normalised per sample. Loss = sum over pairs of
    the squared L2 distance ||Q_S - Q_T||^2 (summed over positions, as in the paper), averaged over the
    batch. Summing rather than averaging over positions (the authors' code) keeps the loss independent
    of the image size: each pair lies in [0, 4]. Exactly 0 at student == teacher.
    """

    kind = "feature"
    needs = ()
    zero_at_optimum = True

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = float(p)

    def attention(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W) L2-normalised attention map (resized to `size` first if given)."""
        q = fp32(x).abs().pow(self.p).mean(1, keepdim=True)  # (B, 1, H, W)
        if size is not None:
            q = match_size(q, size)
        return F.normalize(q.flatten(1), dim=1)

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        check_feature_pairs("at", student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        with no_autocast(device):
            for s, t in zip(student_feats, teacher_feats):
                qt = self.attention(t.detach())
                qs = self.attention(s, size=tuple(t.shape[-2:]))
                loss = loss + (qs - qt).pow(2).sum(1).mean()
        return loss
