"""Variational information distillation (`vid`), RepDistiller's form."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.common import as_map, fp32, no_autocast
from distill.registry import register


@register("vid", title="variational information distillation")
class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al., CVPR 2019, arXiv:1904.05835), RepDistiller's form.

    Tensor contract: per pair S (B, inC[, H, W]) and T (B, outC[, H', W']); (B, C) vectors are 1x1 maps.
    mu = conv1x1(inC->midC) ReLU conv1x1(midC->midC) ReLU conv1x1(midC->outC) applied to S; per channel
    variance sigma_c^2 = softplus(alpha_c) + eps, alpha initialised so sigma^2 = init_pred_var; the larger
    map is average-pooled to the smaller's H x W; loss = mean over (B, C, H, W) of
    0.5 * ((mu - T)^2 / sigma^2 + log sigma^2), summed over pairs. Its minimum over S is not 0: with
    mu(S) = T it is 0.5 * mean_c log sigma_c^2 (the variances are learnt with the student).
    Give inC, midC, outC for one pair (the seed's form), or student_channels/teacher_channels (one
    regressor per pair, midC = the teacher's channels), which the engine fills by probing.
    """

    kind = "feature"
    needs = ()
    zero_at_optimum = False

    def __init__(self, inC: int | None = None, midC: int | None = None, outC: int | None = None,
                 init_pred_var: float = 5.0, eps: float = 1e-5, student_channels: Sequence[int] | None = None,
                 teacher_channels: Sequence[int] | None = None):
        super().__init__()
        if inC is not None or outC is not None:
            if inC is None or outC is None:
                raise ValueError("vid: give both inC and outC (and optionally midC)")
            pairs = [(int(inC), int(midC or outC), int(outC))]
        elif student_channels is not None and teacher_channels is not None:
            pairs = [(int(cs), int(ct), int(ct)) for cs, ct in zip(student_channels, teacher_channels)]
        else:
            raise ValueError("vid needs inC/midC/outC, or student_channels/teacher_channels (an example_input "
                             "in the Distiller config lets the engine probe them)")
        if not init_pred_var > eps:
            raise ValueError(f"vid: init_pred_var must be > eps, got {init_pred_var}")
        self.eps = float(eps)
        self.channels = [(ci, co) for ci, _, co in pairs]
        self.regressors = nn.ModuleList(nn.Sequential(
            nn.Conv2d(ci, cm, 1, bias=False), nn.ReLU(), nn.Conv2d(cm, cm, 1, bias=False), nn.ReLU(),
            nn.Conv2d(cm, co, 1, bias=False)) for ci, cm, co in pairs)
        alpha0 = math.log(math.expm1(init_pred_var - eps))  # softplus^-1(init_pred_var - eps)
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((co,), alpha0)) for _, _, co in pairs)

    def check_shapes(self, s_shapes, t_shapes) -> None:
        if len(s_shapes) != len(self.channels):
            raise ValueError(f"vid: built for {len(self.channels)} layer pair(s) (inC/outC lists), mapped to "
                             f"{len(s_shapes)}; give one vid loss per pair or student_channels/teacher_channels")
        for i, (s, t, (ci, co)) in enumerate(zip(s_shapes, t_shapes, self.channels)):
            if len(s) < 2 or len(t) < 2 or (s[1], t[1]) != (ci, co):
                raise ValueError(f"vid: pair {i} has student {tuple(s)} and teacher {tuple(t)} but the loss was "
                                 f"built with inC={ci}, outC={co}: set inC/outC to the layers' channel counts")

    def variances(self) -> list[torch.Tensor]:
        """sigma_c^2 per pair, (outC,) each."""
        return [F.softplus(fp32(a)) + self.eps for a in self.log_scales]

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        self.check_shapes([s.shape for s in student_feats], [t.shape for t in teacher_feats])
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, regressor, var in zip(student_feats, teacher_feats, self.regressors, self.variances()):
            s, t = as_map(s), as_map(t.detach())
            if s.shape[-2:] != t.shape[-2:]:  # the larger map is pooled to the smaller (RepDistiller)
                size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
                s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
            mu = regressor(s)
            with no_autocast(device):
                var = var.view(1, -1, 1, 1)
                loss = loss + (0.5 * ((fp32(mu) - fp32(t)) ** 2 / var + torch.log(var))).mean()
        return loss
