"""Teacher-score-weighted feature L2 (`scorel2`): the student's maps matched where the teacher detects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.losses._detection import FeatureLoss, ShapeError, level_of, teacher_score
from distill.registry import register


def score_weighted_l2(projected: Sequence[Tensor], teacher: Sequence[Tensor], scores: Sequence[Tensor]) -> Tensor:
    """Per-level loss of ultralytics 8.4's built-in distillation (nn/distill_model.py, loss_sl2), shape (nl,).

    projected / teacher: (B, C, H, W) per level (the student's maps after the projector); scores: the teacher's
    confidence per cell, (B, H, W) or any shape with B * H * W elements in (b, h, w) order (ultralytics keeps
    (B, 1, H * W)). Level k: sum_{b,h,w} s * sum_c (P - T)^2 / (C_k * sum_{b,h,w} s), 0 where every s is 0.
    float32, autocast off."""
    out = []
    for p, t, s in zip(projected, teacher, scores):
        with no_autocast(p.device):
            b, c, h, w = t.shape
            s = fp32(s).reshape(b, h, w)
            err = (fp32(p) - fp32(t.detach())).pow(2).sum(1)  # (B, H, W)
            out.append((s * err).sum() / (s.sum() * c).clamp(min=torch.finfo(torch.float32).tiny))
    return torch.stack(out)


# The loss as ultralytics computes it (each level normalised by its own score mass, the levels summed), so weight
# 6 is its `dis` default. For YOLOv5 students 0.3: the start value (~3.9x the detection loss) of the former form
# (one normalisation over all levels) at weight 1, which measured best (bench/RESULTS.md); the per-level sum is
# 3.5-3.8x the former value at 160-640 px (yolov5n from scratch <- the shapes yolov5s teacher, 16 images).
DEFAULT_WEIGHT = 0.3


@register("scorel2", default_weight=DEFAULT_WEIGHT, default_layers="detect_inputs", title="score-weighted L2")
class ScoreWeightedL2(FeatureLoss):
    """Teacher-score-weighted feature L2 (ultralytics 8.4 built-in distillation, PR #24894, 2026).

    Per pair k (equal H x W, at a Detect level of the teacher): P = conv1x1(ReLU(conv1x1(S))) (c_S -> c_T
    -> c_T), w = teacher_score of the teacher's output level whose grid is H x W (B, H, W), and
        loss = sum_k [ sum_{b,h,w} w * sum_c (P - T)^2 / (C_T,k * sum_{b,h,w} w) ]
    ultralytics' loss_sl2 per level, the levels summed as its trainer does (score_weighted_l2; 0 where every w
    is 0). Weight 6 = ultralytics' `dis`; ours is DEFAULT_WEIGHT (a YOLOv5 detection loss is far smaller).
    reduce='all' is the form before issue 27 (one normalisation over all pairs: sum_k sum w * err /
    sum_k C_T,k * sum w), kept so that runs saved then resume with the loss they started with.
    """

    needs = ("teacher_out",)
    name = "scorel2"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], reduce: str = "level"):
        super().__init__(student_channels, teacher_channels)
        if reduce not in ("level", "all"):
            raise ShapeError(f"scorel2: reduce {reduce!r} is unknown; choose 'level' (ultralytics' loss, the default) "
                             "or 'all' (the form before 2026-12-06)")
        self.reduce = reduce
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cs, ct, 1), nn.ReLU(), nn.Conv2d(ct, ct, 1))
            for cs, ct in zip(self.student_channels, self.teacher_channels))

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        scores = [teacher_score(ctx.teacher_out[level_of("scorel2", k, t, ctx.teacher_out, "teacher_out")])
                  for k, t in enumerate(teacher_feats)]
        projected = [proj(s) for s, proj in zip(student_feats, self.projectors)]
        per_level = score_weighted_l2(projected, teacher_feats, scores)
        if self.reduce == "level":
            return per_level.sum()
        mass = torch.stack([fp32(w).sum() * t.shape[1] for w, t in zip(scores, teacher_feats)])
        return (per_level * mass).sum() / mass.sum().clamp(min=torch.finfo(torch.float32).tiny)
