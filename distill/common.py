"""Small tensor helpers shared by the distillation losses (float32 islands under autocast, resizing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fp32(x: torch.Tensor) -> torch.Tensor:
    """x as float32 (no copy when it already is)."""
    return x.float() if x.dtype != torch.float32 else x


def no_autocast(device: torch.device):
    """Context disabling autocast on `device`: softmax, logs, squares and sums run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def match_size(student: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (B, C, H, W) student map to the teacher's (H, W) (bilinear) when strides differ."""
    if tuple(student.shape[-2:]) == tuple(size):
        return student
    return F.interpolate(student, size=tuple(size), mode="bilinear", align_corners=False)


def as_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C) vectors as (B, C, 1, 1) maps; (B, C, H, W) maps unchanged; anything else is an error."""
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() != 4:
        raise ValueError(f"expected (B, C) vectors or (B, C, H, W) maps, got shape {tuple(x.shape)}")
    return x


def check_feature_pairs(name: str, student_feats, teacher_feats) -> None:
    """ValueError unless the lists pair up one to one as (B, C, H, W) maps of equal B."""
    if len(student_feats) != len(teacher_feats) or not len(student_feats):
        raise ValueError(f"{name}: {len(student_feats)} student tensors but {len(teacher_feats)} teacher tensors")
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
            raise ValueError(f"{name}: pair {i} needs (B, C, H, W) maps with equal B, got "
                             f"{tuple(s.shape)} and {tuple(t.shape)}")


def check_channels(name: str, s_shapes, t_shapes, pairs=None, hint: str = "") -> None:
    """ValueError naming the first pair whose channel counts (dim 1) differ."""
    for i, (s, t) in enumerate(zip(s_shapes, t_shapes)):
        if (pairs is None or i in pairs) and (len(s) < 2 or len(t) < 2 or s[1] != t[1]):
            raise ValueError(f"{name}: pair {i} has student shape {tuple(s)} but teacher {tuple(t)}; {name} "
                             f"needs equal channel counts{hint}")
