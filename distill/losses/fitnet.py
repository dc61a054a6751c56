"""FitNet hints (`fitnet`): student maps through learnable 1x1 adapters regress the teacher's."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.adapters import apply_adapters, build_adapters
from distill.common import (
    check_channels,
    check_feature_pairs,
    fp32,
    match_size,
    no_autocast,
)
from distill.registry import register


# The raw loss starts at ~1 per layer pair (yolov5n student from scratch, yolov5s teacher, shapes data at 160 px).
@register("fitnet", default_weight=0.1, title="FitNet hint")
class FitNetHint(nn.Module):
    """FitNet hints (Romero et al., ICLR 2015, arXiv:1412.6550): sum over pairs of mean((r(S) - T)^2).

    Tensor contract: per pair (B, C_S, H, W) and (B, C_T, H', W'). r is a learnable 1x1 conv per pair
    (distill.adapters), built from student_channels/teacher_channels (the engine probes them); without
    them r is the identity and the channel counts must match. The student map is resized (bilinear) to
    the teacher's H x W if needed. Exactly 0 at student == teacher with r at the identity.
    """

    kind = "feature"
    needs = ()
    zero_at_optimum = True

    def __init__(self, student_channels: Sequence[int] | None = None, teacher_channels: Sequence[int] | None = None):
        super().__init__()
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError("fitnet: give both student_channels and teacher_channels, or neither")
        self.adapters = build_adapters(student_channels, teacher_channels) if student_channels is not None else None

    def check_shapes(self, s_shapes, t_shapes) -> None:
        if self.adapters is None:
            check_channels("fitnet", s_shapes, t_shapes, hint=" without adapters: give student_channels/"
                            "teacher_channels (or an example_input in the Distiller config) to build 1x1 adapters")
        else:
            for i, (s, t, a) in enumerate(zip(s_shapes, t_shapes, self.adapters)):
                if (s[1], t[1]) != (a.conv.in_channels, a.conv.out_channels):
                    raise ValueError(f"fitnet: pair {i} adapter was built for {a.conv.in_channels} -> "
                                     f"{a.conv.out_channels} channels but the maps are {tuple(s)} and {tuple(t)}")

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        check_feature_pairs("fitnet", student_feats, teacher_feats)
        self.check_shapes([s.shape for s in student_feats], [t.shape for t in teacher_feats])
        if self.adapters is not None:
            student_feats = apply_adapters(self.adapters, student_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        with no_autocast(device):
            for s, t in zip(student_feats, teacher_feats):
                s = match_size(fp32(s), tuple(t.shape[-2:]))
                loss = loss + (s - fp32(t.detach())).pow(2).mean()
        return loss
