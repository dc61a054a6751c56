"""Pearson correlation distillation (`pkd`): standardised maps compared, so only their shape matters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.losses._detection import FeatureLoss, align_1x1
from distill.registry import register


# 0.02: raw 3.01 x 0.02 = a third of the detection loss; 10 is the paper's for RetinaNet (6 for Faster R-CNN),
# a one-stage dense detector like YOLO
@register("pkd", default_weight=0.02, v8_weight=10.0, default_layers="detect_inputs", title="PKD")
class PearsonDistillation(FeatureLoss):
    """PKD, Pearson correlation distillation (Cao et al., NeurIPS 2022, arXiv:2207.02039).

    Per pair: the student map is resized (bilinear) to the teacher's H x W when strides differ and
    aligned by a bias-free 1x1 conv when widths differ; both are standardised per channel over
    (N, H, W), x_hat = (x - mean) / (std + eps) (population std), and loss_k = mean((S_hat - T_hat)^2) / 2,
    which is 1 - (mean over channels of the Pearson r) as eps -> 0. Summed over pairs.
    """

    name = "pkd"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], eps: float = 1e-6):
        super().__init__(student_channels, teacher_channels)
        self.eps = float(eps)
        self.adapters = align_1x1(self.student_channels, self.teacher_channels)

    def check_size(self, k: int, s: tuple, t: tuple) -> None:
        """Any sizes: the student map is resized to the teacher's."""

    def standardise(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> same shape, each channel at mean 0 and std 1 over (N, H, W), float32."""
        x = fp32(x)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, correction=0)
        return (x - mean) / (std + self.eps)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, align in zip(student_feats, teacher_feats, self.adapters):
            if s.shape[-2:] != t.shape[-2:]:  # resize first: the map is smaller for the 1x1 conv
                s = F.interpolate(s, size=tuple(t.shape[-2:]), mode="bilinear", align_corners=False)
            s = align(s)
            with no_autocast(device):
                loss = loss + F.mse_loss(self.standardise(s), self.standardise(t.detach())) / 2
        return loss
