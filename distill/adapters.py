"""1x1 conv adapters mapping student feature channels to the teacher's (FitNet regressors).

They belong to the distillation objective, not to the student: they are trained with it (the
objective's parameters go to the optimizer), saved with the run under 'kd_state', and never exported.
Channel counts come from a dummy forward of both models (distill.pairing.probe_features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.common import Conv1_1


def build_adapters(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """One Conv1_1(c_S, c_T) per feature pair, always present (FitNet's regressor r is learnable even
    when widths match)."""
    if len(student_channels) != len(teacher_channels):
        raise ValueError(f"{len(student_channels)} student channel counts but {len(teacher_channels)} teacher ones")
    return nn.ModuleList(Conv1_1(int(cs), int(ct)) for cs, ct in zip(student_channels, teacher_channels))


def apply_adapters(adapters: nn.ModuleList, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Map each student feature map (B, c_S, H, W) to (B, c_T, H, W) with its adapter."""
    if len(adapters) != len(feats):
        raise ValueError(f"{len(adapters)} adapters for {len(feats)} feature maps")
    return [a(f) for a, f in zip(adapters, feats)]
