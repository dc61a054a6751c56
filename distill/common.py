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
