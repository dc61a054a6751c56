"""What a distillation loss may read besides the captured features: `KDContext`.

Contract shared by every loss of the registry (distill/registry.py; each loss module registers its class):
a loss is an `nn.Module` called as

    loss(student_feats: list[Tensor], teacher_feats: list[Tensor], ctx: KDContext) -> Tensor  # fp32 scalar

where the two lists hold the tensors captured at the layer pairs mapped to that loss, in pair order.
A loss that needs channel alignment owns its adapter and takes `student_channels` / `teacher_channels`
(one entry per pair) as constructor keywords, so the optimizer sees the adapter when the engine is built
(the engine probes the channels with one dummy forward). Each loss class declares `needs`, a subset of
("targets", "student", "teacher_out", "student_out"), so the engine checks the context before use, and
cites its paper in one docstring line.

Other engineers are adding losses to this engine in parallel: keep these field names stable.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class KDContext:
    """Per-batch inputs of the distillation losses (all optional except the step counter)."""

    imgs: Tensor | None = None  # (B, 3, H, W) the batch the student saw, float in [0, 1]
    targets: Tensor | None = None  # (n, 6) rows [img_index, cls, x, y, w, h], xywh normalised to imgs
    student: nn.Module | None = None  # the unwrapped student (YOLOv5 Model: .model[-1] is Detect)
    teacher: nn.Module | None = None
    student_out: object = None  # student's raw output (YOLOv5 train mode: list of (B, na, ny, nx, 5+nc))
    teacher_out: object = None  # teacher's raw output, same layout
    iteration: int = 0  # global optimizer step (for warm-ups such as imitation's first 400 steps)
