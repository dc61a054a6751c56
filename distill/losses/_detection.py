"""What the detection feature losses share (imitation, cwd, mse, pkd, scorel2: one module each in this package).

Contract (distill/context.py): `loss(student_feats, teacher_feats, ctx) -> fp32 scalar`, where the lists
hold the (B, C, H, W) maps of the layer pairs mapped to the loss, in pair order. Adapters are built in
__init__ from `student_channels` / `teacher_channels` (one entry per pair), so the optimizer sees them.

Precision: adapters run under the caller's autocast (cheap convs in bf16/fp16 on a GPU); every loss
term (squares, softmax, standardisation, sums) is computed in float32 with autocast disabled. Teacher
maps and outputs are detached: no gradient reaches the teacher.

Reduction across pairs: CWD, MSE and PKD add one term per pair, as mmrazor configures one loss per FPN
level, so the published per-level weights apply. Imitation and score-weighted L2 are normalised over
all pairs together (positive locations, total weight), which keeps the single-map scale of the papers.

Default weights (each registration): for YOLOv5 students about a third of the detection loss at the start,
which trained better students than the papers' weights at the recorded schedule (bench/RESULTS.md,
"Distillation methods compared"); for YOLOv8 students, whose detection loss is ~75x a YOLOv5 one's, the
papers' weights. The raw values behind them (bench/bench_feature_losses.py, "values at the start of
training": yolov5n from scratch <- weights/teacher-shapes-yolov5s.pt, 16 shapes images at 320 px, the maps
entering Detect): detection items 0.20; imitation 331, cwd 2.45, mse 34.1, pkd 3.01, scorel2 1.25.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.common import fp32
from distill.hooks import unwrap_parallel
from utils.general import UserError


class ShapeError(UserError, ValueError):
    """Layer shapes a loss cannot take: a UserError for the scripts, a ValueError for the engine's
    build-time check_shapes (which adds the loss's config entry and layer names)."""


class PairedMaps(nn.Module):
    """Shared contract of the losses on paired maps: channel lists fixed at build, shapes checked by check_shapes
    (also at each call). FeatureLoss adds the promise of 0 at identity adapters; MGD (never 0 under its mask) and
    CrossKD (which also needs the teacher's head) keep only this contract."""

    kind = "feature"
    needs: tuple[str, ...] = ()
    name = ""
    size_hint = "pick layers at the same stride"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not len(student_channels):
            raise ShapeError(f"{self.name}: need one student and one teacher channel count per layer pair, "
                             f"got {list(student_channels)} and {list(teacher_channels)}")
        self.student_channels = [int(c) for c in student_channels]
        self.teacher_channels = [int(c) for c in teacher_channels]

    def check_shapes(self, student_shapes: Sequence[Sequence[int]], teacher_shapes: Sequence[Sequence[int]]) -> None:
        """ShapeError unless there is one (B, C, H, W) map per built pair with the built widths, equal B,
        and H x W the loss can relate (check_size)."""
        if not (len(student_shapes) == len(teacher_shapes) == len(self.student_channels)):
            raise ShapeError(f"{self.name}: built for {len(self.student_channels)} layer pairs but got "
                             f"{len(student_shapes)} student and {len(teacher_shapes)} teacher maps")
        for k, (s, t) in enumerate(zip(student_shapes, teacher_shapes)):
            s, t = tuple(s), tuple(t)
            if len(s) != 4 or len(t) != 4 or s[0] != t[0]:
                raise ShapeError(f"{self.name}: pair {k} needs (B, C, H, W) maps of equal B, got student {s}, "
                                 f"teacher {t}")
            if s[1] != self.student_channels[k] or t[1] != self.teacher_channels[k]:
                raise ShapeError(f"{self.name}: pair {k} was built for {self.student_channels[k]} -> "
                                 f"{self.teacher_channels[k]} channels but got student {s}, teacher {t}; "
                                 "rebuild the loss from the probed layer widths")
            self.check_size(k, s, t)

    def check_size(self, k: int, s: tuple, t: tuple) -> None:
        """Default: equal H x W."""
        if s[2:] != t[2:]:
            raise ShapeError(f"{self.name}: pair {k} has student map {s} and teacher map {t}; {self.name} "
                             f"needs equal H x W ({self.size_hint})")

    def _check(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> None:
        self.check_shapes([tuple(s.shape) for s in student_feats], [tuple(t.shape) for t in teacher_feats])


class FeatureLoss(PairedMaps):
    """A loss on paired maps that is 0 at student == teacher with the adapters at the identity (tested on every
    subclass by tests/test_detection_losses.py); behind the ReLU adapters of imitation, mse and scorel2 only where
    the teacher maps are >= 0 (SiLU features dip to -0.28)."""

    zero_at_optimum = True


def zero_with_graph(module: nn.Module, device: torch.device) -> Tensor:
    """0.0 connected to every parameter, so DDP sees them used when a loss is switched off (warm-up)."""
    zero = torch.zeros((), device=device)
    for p in module.parameters():
        zero = zero + p.sum() * 0.0
    return zero


def align_1x1(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """A 1x1 conv per pair whose widths differ, nn.Identity where they match. No bias: both CWD's
    spatial softmax and PKD's standardisation remove a per-channel constant, it would get no gradient."""
    return nn.ModuleList(nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity()
                         for cs, ct in zip(student_channels, teacher_channels))


def level_of(name: str, k: int, t: Tensor, out: object, what: str) -> int:
    """Index of the Detect level whose grid (ny, nx) equals the teacher map's H x W."""
    if not isinstance(out, (list, tuple)) or not all(isinstance(p, Tensor) and p.dim() == 5 for p in out):
        raise ShapeError(f"{name}: ctx.{what} must be the raw per-level list (B, na, ny, nx, 5+nc) of a "
                         "YOLOv5 Detect head in train mode")
    sizes = [tuple(p.shape[2:4]) for p in out]
    if tuple(t.shape[-2:]) not in sizes:
        raise ShapeError(f"{name}: pair {k} teacher map {tuple(t.shape)} matches no Detect level grid {sizes}; "
                         "map this loss to layers at the detection strides (the maps entering Detect)")
    return sizes.index(tuple(t.shape[-2:]))


def detect_input_layers(model: nn.Module) -> list[str]:
    """'model.i' names of the layers whose outputs enter the YOLOv5 Detect head (P3, P4, P5 order):
    the default layers of these losses, the levels the anchors and teacher scores belong to."""
    model = unwrap_parallel(model)
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or not isinstance(getattr(head, "f", None), (list, tuple)):
        raise UserError(f"{type(model).__name__} has no YOLOv5 head with input layers (.model[-1].f); "
                        "pass the distillation layers explicitly")
    head_index = len(layers) - 1
    return [f"model.{i if i >= 0 else head_index + i}" for i in head.f]  # -1: the layer before the head


def teacher_score(p: Tensor) -> Tensor:
    """Teacher confidence per cell (B, ny, nx) from a raw level (B, na, ny, nx, 5+nc), float32.

    max over anchors of sigma(obj) * max_c sigma(cls): the score YOLOv5 ranks detections by (NMS
    conf = obj x cls). With nc == 1 the class logit is never trained (ComputeLoss skips it), so the
    score is sigma(obj) alone.
    """
    p = fp32(p.detach())
    score = torch.sigmoid(p[..., 4])  # (B, na, ny, nx)
    if p.shape[-1] > 6:
        score = score * torch.sigmoid(p[..., 5:]).amax(-1)
    return score.amax(1)
