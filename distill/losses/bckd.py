"""BCKD (`bckd`): per-class binary class KD with a quality-focal factor, plus GIoU box KD on decoded boxes.

Also the dense-prediction helpers CrossKD shares (distill/losses/crosskd.py): per-class scores in log space,
decoded boxes and the two KD terms, for both head families:
  * YOLOv5 Detect, raw level (B, na, ny, nx, 5 + nc): score_c = sigma(obj) * sigma(cls_c) (NMS's confidence,
    the analogue of GFL's joint quality-class score the paper distils; sigma(obj) alone for nc == 1, whose class
    logit ComputeLoss never trains); box xyxy in grid units about the cell: xy = 2 sigma(t_xy) - 0.5,
    wh = (2 sigma(t_wh))^2 * anchor (grid units), as Detect decodes (the cell offset cancels in an IoU).
  * DetectV8 (DFL), raw level (B, 4 * R + nc, ny, nx): score_c = sigma(cls_c); box = the DFL expectation of the
    left, top, right, bottom distances (grid units) about the anchor point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.common import fp32, no_autocast
from distill.hooks import model_head
from distill.kd_terms import ClassColumns
from distill.registry import register
from distill.v8_output import one_to_many
from distill.yolo_output import raw_outputs
from utils.general import UserError
from utils.metrics import bbox_iou

TINY = torch.finfo(torch.float32).tiny


@dataclass
class Dense:
    """One level's predictions flattened to N points: log score (N, C), log(1 - score) (N, C), boxes (N, 4) xyxy."""

    log_p: Tensor
    log_q: Tensor
    boxes: Tensor


@dataclass(frozen=True)
class HeadInfo:
    """What decoding needs from a head: family 'v5' (anchors (nl, na, 2), grid units) or 'v8' (reg_max)."""

    family: str
    anchors: Tensor | None = None
    reg_max: int = 16


def head_info(model: nn.Module | None, what: str, loss: str) -> HeadInfo:
    """HeadInfo of the last layer of ctx.<what> (a YOLOv5 Detect or a DetectV8), read live (autoanchor)."""
    head = model_head(model)
    family = getattr(head, "family", None)
    if family == "v8" and hasattr(head, "reg_max"):
        return HeadInfo("v8", reg_max=int(head.reg_max))
    if family == "v5" and torch.is_tensor(getattr(head, "anchors", None)):
        return HeadInfo("v5", anchors=head.anchors.detach())
    raise UserError(f"{loss} decodes the boxes of ctx.{what}'s head, but its last layer is "
                    f"{type(head).__name__}: it needs a YOLOv5 Detect or a DetectV8 head")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0. x is capped at -1e-7 (a score of 1 - 1e-7, float32's resolution near 1):
    the log stays finite (>= -16.1) where a product of two saturated sigmoids rounds to 1."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-7)))


def flat_level(p: Tensor, info: HeadInfo) -> tuple[Tensor, Tensor]:
    """A raw level as (N, K) box-and-objectness columns and (N, nc) class logits, one row per point.
    v5: (B, na, ny, nx, 5 + nc) -> N = B * na * ny * nx, K = 5 (xywh, obj); v8: (B, 4R + nc, ny, nx) -> N = B * ny * nx,
    K = 4R (the edge logits)."""
    if info.family == "v5":
        p = p.reshape(-1, p.shape[-1])
        return p[:, :5], p[:, 5:]
    c = p.shape[1]
    if c <= 4 * info.reg_max:
        raise UserError(f"a DFL head level has {c} channels, not 4 x reg_max {info.reg_max} + nc")
    p = p.permute(0, 2, 3, 1).reshape(-1, c)  # (B, C, ny, nx) -> (N, C)
    return p[:, :4 * info.reg_max], p[:, 4 * info.reg_max:]


def dense_level(p: Tensor, info: HeadInfo, level: int, cls: Tensor | None = None) -> Dense:
    """Dense of one raw level (float32, autocast off by the caller). cls: the (N, C) class logits to use instead
    of the level's own (the matched columns of a class map, distill.kd_terms.ClassColumns)."""
    box, own = flat_level(p, info)
    cls = own if cls is None else cls
    if info.family == "v5":
        na = p.shape[1]
        obj = box[:, 4:5]
        if own.shape[1] > 1:
            log_p = F.logsigmoid(obj) + F.logsigmoid(cls)
            log_q = log1mexp(log_p)
        else:  # nc == 1: the class logit is never trained (ComputeLoss), the score is sigma(obj)
            log_p, log_q = F.logsigmoid(obj), F.logsigmoid(-obj)
        anchors = fp32(info.anchors[level]).to(p.device).view(1, na, 1, 1, 2)  # (na, 2) grid units, per anchor slot
        a = anchors.expand(*p.shape[:4], 2).reshape(-1, 2)  # (N, 2), rows in the order of flat_level
        xy = torch.sigmoid(box[:, 0:2]) * 2 - 0.5
        wh = (torch.sigmoid(box[:, 2:4]) * 2) ** 2 * a
        return Dense(log_p, log_q, torch.cat((xy - wh / 2, xy + wh / 2), 1))
    r = info.reg_max
    if r == 1:  # YOLO26: the four values are the edge distances themselves (no DFL)
        dist = box.reshape(-1, 4)
    else:
        bins = torch.arange(r, device=p.device, dtype=box.dtype)
        dist = (box.view(-1, 4, r).softmax(-1) * bins).sum(-1)  # (N, 4) left, top, right, bottom in grid units
    return Dense(F.logsigmoid(cls), F.logsigmoid(-cls), torch.cat((-dist[:, :2], dist[:, 2:]), 1))


def dense_kd(student: Sequence[Dense], teacher: Sequence[Dense], gamma: float, power: float
             ) -> tuple[Tensor, Tensor]:
    """(class term, box term) of the paired levels, each normalised by the teacher's score mass:

        w_i   = (max_c score^T_ic)^power                                  per point i
        cls   = sum_i sum_c |p^T_ic - p^S_ic|^gamma * BCE(p^S_ic, p^T_ic) / sum_i w_i
        box   = sum_i w_i * (1 - GIoU(b^S_i, b^T_i)) / sum_i w_i

    with p = score, BCE(p, q) = -(q log p + (1 - q) log(1 - p)) from the log-space scores (no log(0)). The
    class term is the quality-focal form (Li et al. 2020, GFL's QFL with the teacher's score as the soft label):
    exactly 0 where p^S == p^T, its minimum. Dividing by the score mass (the teacher's soft count of objects,
    GFL divides by the positives) keeps both terms per object: the same at any image size and batch."""
    device = student[0].log_p.device
    cls_sum, box_sum, mass = (torch.zeros((), device=device) for _ in range(3))
    for s, t in zip(student, teacher):
        p_s, p_t = s.log_p.exp(), t.log_p.exp().detach()
        bce = -(p_t * s.log_p + (1 - p_t) * s.log_q)
        cls_sum = cls_sum + ((p_t - p_s).abs().pow(gamma) * bce).sum()
        w = p_t.amax(1).pow(power) if p_t.shape[1] else torch.ones_like(p_t[:, 0])
        box_sum = box_sum + (w * (1 - bbox_iou(s.boxes, t.boxes.detach(), xywh=False, GIoU=True))).sum()
        mass = mass + w.sum()
    mass = mass.clamp(min=TINY)
    return cls_sum / mass, box_sum / mass


def _output_levels(out, what: str) -> list[Tensor]:
    out = one_to_many(raw_outputs(out))  # a YOLO26 student in train mode: its one-to-many maps
    if not isinstance(out, (list, tuple)) or not out or not all(torch.is_tensor(p) and p.dim() in (4, 5) for p in out):
        raise UserError(f"bckd: the {what} layer must be a detection head returning raw per-level maps (YOLOv5 "
                        "Detect or DetectV8, train mode); map bckd to the heads (layers: detect)")
    return list(out)


# A third of the detection loss at the first batch (bench/kd_grad_balance.py --recipes bckd --img 192 --batches 1:
# fresh yolov5n <- weights/teacher-shapes-yolov5s.pt, 16 shapes images at 192 px): measured 11.8x at weight 1
# (class 8.2x, box 3.7x), so 0.028 -> 0.33x. v8: fresh yolov8n <- weights/teacher-shapes-yolov8s.pt, same batch,
# hyp.v8: 0.313x at weight 1, but not 1.0 (0.31x): in a 1-epoch yolov8n run at 64 px (train_kd.py, data/kd/bckd.yaml,
# batch 8) the detection class loss ended at 83 with weight 1.0, 35.7 with 0.3, 18.6 with 0.1 and 15.3 without bckd
# (data/kd/kl_only.yaml): 0.1 (0.03x at the first batch) until a longer v8 run says more.
BCKD_WEIGHT, BCKD_V8_WEIGHT = 0.028, 0.1


@register("bckd", default_weight=BCKD_WEIGHT, v8_weight=BCKD_V8_WEIGHT, default_layers="detect",
          title="BCKD (binary class KD + GIoU box KD on the heads)")
class BCKDLoss(nn.Module):
    """BCKD (Yang et al., ICCV 2023, arXiv:2308.14286): cross-task protocol-consistent dense-detector KD.

    Tensor contract: one layer pair, the detection heads (layers: detect); student_feats[0] / teacher_feats[0]
    are what they returned (train mode: the raw levels; eval mode: (decoded, raw), raw used). Both heads of
    one family (YOLOv5 Detect, or DetectV8); each decodes with its own anchors / reg_max, read from ctx.student
    and ctx.teacher at every call. Per point (anchor slot x cell) with the module docstring's scores and boxes:
        loss = kd * (cls * L_cls + box * L_box)                                     dense_kd(gamma, power)
    L_cls: the paper's binary classification KD, each class its own sigmoid problem, BCE against the teacher's
    score with the quality-focal factor |p^T - p^S|^gamma; L_box: the paper's IoU-based box KD, 1 - GIoU of the
    decoded boxes weighted by the teacher's max class score. Both normalised by the teacher's score mass. power:
    the exponent of that weight, 1 (the paper's) by default; 2 is YoloKDLoss's w^2 (distill/yolo_output.py), for
    a teacher whose background (scores ~1e-3 on every cell) holds much of sum(w). Measured on the shapes pair
    (tests/test_kd_recent_methods.py's size check): bckd / detection loss 0.069, 0.072, 0.068 at 160, 320, 640 px
    with power 1 and 0.096, 0.101, 0.096 with power 2: both size-free there. YOLOv5 scores are sigma(obj) * sigma(cls): the paper's GFL distils a joint
    quality-class score, and YOLOv5's objectness is trained on IoU targets, so the product is its counterpart.
    Float32 with autocast off; 0 exactly when the two outputs are equal (with equal anchors).

    hyp: train_kd.py's (its 'kd' gain scales the loss); class_index: a teacher of other classes (distill.recipe
    ClassMap): the matched classes compared, the rest left out. variant / T / weight_by_cls / kl_softmax are the
    YoloKDLoss flags that train_kd.py gives every output entry: refused with the way out.
    """

    kind = "output"
    needs = ("student", "teacher")
    zero_at_optimum = True

    def __init__(self, gamma: float = 2.0, cls: float = 1.0, box: float = 1.0, power: float = 1.0,
                 hyp: dict | None = None, class_index: Sequence[int] | None = None, nc: int | None = None,
                 variant: str | None = None, T: float | None = None, weight_by_cls: bool | None = None,
                 kl_softmax: bool | None = None):
        super().__init__()
        given = {k: v for k, v in (("variant / --kd_loss_selected", variant), ("T / --temperature", T),
                                   ("weight_by_cls", weight_by_cls), ("kl_softmax", kl_softmax)) if v is not None}
        if given:
            raise UserError(f"bckd has no {', '.join(given)}: those set YoloKDLoss; set them on the YoloKDLoss entry "
                            "of the kd config file (data/kd/bckd.yaml) instead of by flag, or drop them")
        if not (gamma > 1 and power > 0 and cls >= 0 and box >= 0):
            raise UserError(f"bckd: gamma must be > 1 (the factor's gradient vanishes at student == teacher only then; "
                            f"2 is QFL's), power > 0, cls and box >= 0; got gamma={gamma}, power={power}, cls={cls}, "
                            f"box={box}")
        self.gamma, self.power, self.nc = float(gamma), float(power), nc
        kd = float((hyp or {}).get("kd", 1.0))
        self.gains = {"cls": float(cls) * kd, "box": float(box) * kd}
        self.classes = ClassColumns(class_index) if class_index is not None else None

    def forward(self, student_feats: Sequence, teacher_feats: Sequence, ctx) -> Tensor:
        if len(student_feats) != 1 or len(teacher_feats) != 1:
            raise UserError(f"bckd takes one layer pair (the detection heads, layers: detect), got {len(student_feats)}")
        s, t = _output_levels(student_feats[0], "student"), _output_levels(teacher_feats[0], "teacher")
        info_s, info_t = head_info(ctx.student, "student", "bckd"), head_info(ctx.teacher, "teacher", "bckd")
        if info_s.family != info_t.family or len(s) != len(t):
            raise UserError(f"bckd compares two heads of one family level by level: the student's is {info_s.family} "
                            f"with {len(s)} levels, the teacher's {info_t.family} with {len(t)}; use a teacher of the "
                            "student's family")
        device = s[0].device
        dense_s, dense_t = [], []
        with no_autocast(device):
            for i, (ps, pt) in enumerate(zip(s, t)):
                ps, pt = fp32(ps), fp32(pt.detach())
                cells = (ps.shape[:4], pt.shape[:4]) if info_s.family == "v5" else \
                    ((ps.shape[0], *ps.shape[2:]), (pt.shape[0], *pt.shape[2:]))
                if cells[0] != cells[1]:
                    raise UserError(f"bckd: output level {i}: student {tuple(ps.shape)} and teacher {tuple(pt.shape)} "
                                    "differ in batch, anchors or grid (same strides and anchors per level needed)")
                cs = ct = None
                if self.classes is not None:
                    cs, ct = self.classes.select(flat_level(ps, info_s)[1], flat_level(pt, info_t)[1])
                elif flat_level(ps, info_s)[1].shape[1] != flat_level(pt, info_t)[1].shape[1]:
                    raise UserError(f"bckd: level {i}: the student has {flat_level(ps, info_s)[1].shape[1]} classes, "
                                    f"the teacher {flat_level(pt, info_t)[1].shape[1]}; pair them with teacher_classes")
                dense_s.append(dense_level(ps, info_s, i, cs))
                dense_t.append(dense_level(pt, info_t, i, ct))
            cls, box = dense_kd(dense_s, dense_t, self.gamma, self.power)
        return self.gains["cls"] * cls + self.gains["box"] * box

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, power={self.power:g}, gains={self.gains}"
