"""CrossKD (`crosskd`): the student's head inputs run through the teacher's frozen head, mimicking its outputs."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.hooks import model_head
from distill.losses._detection import PairedMaps, ShapeError
from distill.losses.bckd import HeadInfo, dense_kd, dense_level
from distill.registry import Option, register
from utils.general import UserError


def frozen_copy(head: nn.Module) -> nn.Module:
    """A private float32 copy of a head: eval, no parameter gradients, and none of the original's hooks.

    The hook tables are mapped to empty ones in deepcopy's memo, never iterated: the training loop may be
    registering and removing hooks on the teacher's layers from another thread (engine/prefetch.py), and a
    copied FeatureHooks hook would write this copy's outputs into the teacher's captured features."""
    memo = {}
    for m in head.modules():
        for key, value in vars(m).items():
            if "hooks" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
    clone = copy.deepcopy(head, memo)
    return clone.float().eval().requires_grad_(False)


def head_levels(head: nn.Module, xs: Sequence[Tensor]) -> list[Tensor]:
    """The raw levels a head returns in train mode, computed from its layers (the copy stays in eval mode):
    YOLOv5 Detect (B, na, ny, nx, 5 + nc) per level, DetectV8 (B, 4 * reg_max + nc, ny, nx)."""
    if getattr(head, "family", "v5") == "v8":
        return [torch.cat((head.cv2[i](x), head.cv3[i](x)), 1) for i, x in enumerate(xs)]
    out = []
    for i, x in enumerate(xs):
        y = head.m[i](x)
        b, _, ny, nx = y.shape
        out.append(y.view(b, head.na, head.no, ny, nx).permute(0, 1, 3, 4, 2))  # (B, na*no, ny, nx) -> (B, na, ny, nx, no)
    return out


def head_input_channels(head: nn.Module) -> list[int]:
    """Input width of each level of a YOLOv5 Detect or DetectV8 head."""
    if getattr(head, "family", "v5") == "v8":
        return [int(seq[0].conv.in_channels) for seq in head.cv2]
    return [int(conv.in_channels) for conv in head.m]


# A third of the detection loss at the first batch (bench/kd_grad_balance.py --recipes crosskd --img 192 --batches 1:
# fresh yolov5n <- weights/teacher-shapes-yolov5s.pt, 16 shapes images at 192 px): measured 10.4x at weight 1
# (class 7.4x, box 3.0x), so 0.032 -> 0.33x. v8: fresh yolov8n <- weights/teacher-shapes-yolov8s.pt, same batch,
# hyp.v8: 0.427x at weight 1, so 0.8 -> 0.34x.
CROSSKD_WEIGHT, CROSSKD_V8_WEIGHT = 0.032, 0.8


@register("crosskd", default_weight=CROSSKD_WEIGHT, v8_weight=CROSSKD_V8_WEIGHT, default_layers="detect_inputs",
          title="CrossKD (cross-head distillation)",
          options={"gamma": Option("CrossKD class term: exponent of the quality-focal factor",
                                   lambda v: v > 1, "> 1, e.g. 2"),
                   "box": Option("CrossKD: gain of the GIoU box term against the class term")})
class CrossHeadKD(PairedMaps):
    """CrossKD, cross-head knowledge distillation (Wang et al., CVPR 2024, arXiv:2306.11369).

    Per pair k (the maps entering the heads, level k; layers: detect_inputs): the student map, aligned by a
    1x1 conv (with bias) when the widths differ (the paper's student and teacher heads have equal widths; here
    yolov5n's 64/128/256 meet yolov5s's 128/256/512), runs through a frozen private copy of the teacher's head:
    the cross-head predictions. The teacher's predictions come from the same copy on the teacher's maps. The
    two are compared as the paper does for GFL, with distill.losses.bckd.dense_kd:
        loss = cls * QFL-style binary class KD (|p^T - p^S|^gamma * BCE per class)
             + box * (1 - GIoU) of the decoded boxes, weighted by the teacher's max class score (^power, 1)
    both normalised by the teacher's score mass (YOLOv5: score = sigma(obj) sigma(cls), boxes decoded with the
    teacher's anchors; DetectV8: sigma(cls), boxes from the DFL expectation). The gradient reaches the student's
    maps (and the align convs) through the frozen head; the student's own head learns from the labels only.

    The copy (frozen_copy) is made from ctx.teacher's head at the first call and kept out of the module tree:
    not in parameters(), the optimizer or state_dict, and never the teacher's own modules, which a training loop
    may be running on another thread. It runs in float32 with autocast off; the align convs under the caller's.
    Exactly 0 at student == teacher (identity align).
    """

    kind = "head_input"  # the real maps entering the teacher's head: its own layers consume them
    needs = ("teacher",)
    name = "crosskd"
    zero_at_optimum = True

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], gamma: float = 2.0,
                 cls: float = 1.0, box: float = 1.0, power: float = 1.0):
        super().__init__(student_channels, teacher_channels)
        if not (gamma > 1 and power > 0 and cls >= 0 and box >= 0):
            raise UserError(f"crosskd: gamma (--crosskd_gamma) must be > 1, power > 0, cls and box (--crosskd_box) "
                            f">= 0; got gamma={gamma}, power={power}, cls={cls}, box={box}")
        self.gamma, self.power = float(gamma), float(power)
        self.gains = {"cls": float(cls), "box": float(box)}
        self.adapters = nn.ModuleList(nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity()
                                      for cs, ct in zip(self.student_channels, self.teacher_channels))
        self.__dict__["_cross_head"] = (None, None)  # (key, copy): a plain attribute, not a submodule

    def cross_head(self, ctx: KDContext, device: torch.device) -> nn.Module:
        """The private frozen copy of ctx.teacher's head on `device` (made once per teacher head and device)."""
        head = model_head(ctx.teacher)
        if head is None or not hasattr(head, "nl"):
            raise UserError(f"crosskd runs the student's maps through the teacher's detection head, but ctx.teacher "
                            f"({type(ctx.teacher).__name__}) has none as its last layer")
        key = (id(head), device)
        if self.__dict__["_cross_head"][0] != key:
            widths = head_input_channels(head)
            if widths != self.teacher_channels:
                raise ShapeError(f"crosskd: the teacher maps have {self.teacher_channels} channels but its head "
                                 f"takes {widths}: map crosskd to the maps entering the teacher's head (layers: "
                                 "detect_inputs), one per level in the head's order")
            self.__dict__["_cross_head"] = (key, frozen_copy(head).to(device))
        return self.__dict__["_cross_head"][1]

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        head = self.cross_head(ctx, device)
        aligned = [align(s) for s, align in zip(student_feats, self.adapters)]
        info = (HeadInfo("v8", reg_max=int(head.reg_max)) if getattr(head, "family", "v5") == "v8"
                else HeadInfo("v5", anchors=head.anchors.detach()))
        with no_autocast(device):
            cross = head_levels(head, [fp32(a) for a in aligned])
            with torch.no_grad():
                own = head_levels(head, [fp32(t.detach()) for t in teacher_feats])
            dense_s = [dense_level(fp32(p), info, i) for i, p in enumerate(cross)]
            dense_t = [dense_level(p, info, i) for i, p in enumerate(own)]
            cls, box = dense_kd(dense_s, dense_t, self.gamma, self.power)
        return self.gains["cls"] * cls + self.gains["box"] * box

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, power={self.power:g}, gains={self.gains} (teacher head: private frozen copy)"
