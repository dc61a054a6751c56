"""Channel-wise distillation (`cwd`): each channel's spatial distribution, softened, matched by KL."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.losses._detection import FeatureLoss, align_1x1
from distill.registry import Option, positive, register
from utils.general import UserError


# 0.03: raw 2.45 x 0.03 = a third of the detection loss; 10 per level is mmrazor's FPN configs' (and PaddleYOLO's)
@register("cwd", default_weight=0.03, v8_weight=10.0, default_layers="detect_inputs", title="channel-wise distillation",
          options={"tau": Option("CWD softmax temperature", positive, "> 0, e.g. 1")})
class ChannelWiseDivergence(FeatureLoss):
    """Channel-wise distillation, CWD (Shu et al., ICCV 2021, arXiv:2011.13256).

    Per pair (equal H x W; student aligned by a bias-free 1x1 conv when widths differ), each of the
    N x C maps becomes a distribution over its H*W positions, softmax(x / tau):
        loss_k = tau^2 / (N * C) * sum_{n,c} KL(softmax(T_nc / tau) || softmax(S_nc / tau))
    summed over pairs (mmrazor ChannelWiseDivergence). Softmax and KL in float32.
    """

    name = "cwd"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], tau: float = 1.0):
        super().__init__(student_channels, teacher_channels)
        if not tau > 0:
            raise UserError(f"cwd: tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.adapters = align_1x1(self.student_channels, self.teacher_channels)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, align in zip(student_feats, teacher_feats, self.adapters):
            s = align(s)
            n, c = t.shape[:2]
            with no_autocast(device):
                log_s = F.log_softmax(fp32(s).flatten(2) / self.tau, dim=-1)  # (N, C, H*W)
                log_t = F.log_softmax(fp32(t.detach()).flatten(2) / self.tau, dim=-1)
                kl = (log_t.exp() * (log_t - log_s)).sum()
                loss = loss + kl * self.tau**2 / (n * c)
        return loss
