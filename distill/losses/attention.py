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
    What it computes, per pair:
        Q = mean over channels of |A_c|^p, (B, H, W); p (default 2) is this exponent of the activations,
            the paper's F^p_mean; it is not the norm of the distance below;
        the student's Q is resized (bilinear, align_corners=False) to the teacher's H' x W' when they
            differ; each Q is flattened to (B, H'*W') and L2-normalised per sample (F.normalize);
        term = ||Q_S/||Q_S|| - Q_T/||Q_T|| ||_2^2: the SQUARED L2 distance, summed over the H'*W' positions,
            then averaged over the batch.
    Loss = the sum of the terms over pairs. Exactly 0 at student == teacher.

    This is neither the paper's formula nor the authors' code. The paper writes the distance as the
    p-norm ||.||_p with p = 2 (a square root of the sum, not squared); the authors' code averages the
    squared differences over the positions (and the batch), i.e. divides this sum by H'*W'. Why it
    matters: the normalised maps are unit vectors with no negative entries (|A|^p >= 0, and a bilinear
    resize mixes them with non-negative weights), so the sum over positions of their squared difference
    is 2 - 2 cos(Q_S, Q_T) (1 against an all-zero map, which normalises to zeros): in [0, 2] for every
    pair at any image size. The positional mean would shrink as 1 / (H'*W') (4x smaller when the image
    side doubles), so a weight chosen at one --img would be wrong at another. Squared rather than the
    norm: the gradient vanishes at the optimum instead of keeping unit length, and the bound is 2, not
    sqrt(2).
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
