"""YOLOv5 output distillation: `YoloKDLoss`, the objectness-weighted KD of train_kd.py (spec §3.11).

The math lives in `_OutputKD` and its three variants (l2, kl, bce), called on the raw per-level outputs:
a list of nl tensors (bs, na, ny, nx, 5+nc) of logits, as Detect returns them in train mode (index 0:2
xy, 2:4 wh, 4 objectness, 5: classes). `YoloKDLoss` is the registry's form of it (the seed's type name):
    loss(student_feats, teacher_feats, ctx) with student_feats = [what the student's Detect returned].
Everything is computed in float32 with autocast disabled (fp16 sigmoid/log terms lose precision).

Notation: S = student, T = teacher, sigma = sigmoid, tau = temperature.

A teacher of other classes than the data (class_index, from distill.recipe.ClassMap): `ClassColumns` puts the
teacher's class logits in the student's class order (distill/kd_terms.py); see _OutputKD for what happens to the classes on one side only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.common import fp32, no_autocast
from distill.hooks import unwrap_parallel
from distill.kd_terms import (
    ClassColumns,
    binary_kl,
    centred_bce,
    matched_objectness,
    soft_bce,
)
from distill.registry import register

_V60_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}  # hyp.scratch.yaml, used when no hyp is given

# Hyp keys of output distillation (rule format: utils/losses/yolov5.py HYP_KEYS; gathered by
# engine/options.py). kd is also the gain of the YOLOv8 output KD (distill/v8_output.py).
HYP_KEYS: dict[str, tuple] = {
    "kd": (0, None, False, False, False, "gain of all distillation terms, e.g. 1.0; 0 = off"),
    "giou": (0, None, False, False, False, "box gain of output distillation in place of box, e.g. 0.05"),
}


def level_balance(nl: int) -> list[float]:
    """Per-level weights of YOLOv5's objectness loss: [4.0, 1.0, 0.4] for 3 levels (P3-P5)."""
    if nl == 3:
        return [4.0, 1.0, 0.4]
    base = [4.0, 1.0, 0.25, 0.06, 0.02]  # ComputeLoss's list for other level counts
    return (base + [base[-1]] * nl)[:nl]


class _OutputKD(nn.Module):
    """Teacher-objectness-weighted output distillation (Mehta & Ozturk 2018, arXiv:1805.06361).

    Per level i with w = sigma(t_obj) (x max_c sigma(t_cls) if `weight_by_cls` and nc > 1) per (image,
    anchor, cell), and the element errors
        e_box = mean over the 4 coords of [(xy_S - xy_T)^2, ((wh_S - wh_T) / a_T)^2]   decoded, grid units:
                xy = 2 sigma(t_xy) - 0.5 (the +grid offset cancels), wh = (2 sigma(t_wh))^2 * anchor;
                the wh error is divided by the teacher anchor so P5's large anchors do not dominate
                (with equal anchors it is the error of (2 sigma)^2). Anchors may differ S vs T.
        e_obj = obj_term(s_obj, t_obj)                                     NOT weighted
        e_cls = mean over classes of cls_term(s_cls, t_cls)                 only when nc > 1
    the terms are reduced the way ComputeLoss reduces their detection counterparts, so each keeps its ratio
    to them at any image size and batch (normalize='weight', the default):
        box = g_box * sum_i sum(w^2 * e_box) / sum(w^2)   a w^2-weighted mean per level, summed over the levels
        cls = g_cls * sum_i sum(w^2 * e_cls) / sum(w^2)   (ComputeLoss: a mean over the positives per level)
        obj = g_obj * sum_i b_i mean(e_obj)             over every cell, balance b_i = level_balance(nl)[i]
                                                        (ComputeLoss's objectness: the same reduction)
    The sums run over the batch, so the terms are per image. The teacher decides where the box and class
    terms look (w is ~1 on its detections) and how much (their weight mass normalises them, as LD and
    ultralytics' distillation do with w): the same objects give the same terms at 192 and 640 px. w^2, not w:
    the teacher's background cells (w ~ 3e-3 each) hold a third of sum(w) at 640 px with the objects of a
    160 px image, and almost none of sum(w^2) (bench/kd_scale.py). A level where the teacher sees nothing has
    near-equal weights: its box and class terms are then the plain means over its cells.
    normalize='cells' is the card's fork (train_kd.py before issue 27, data/kd/card_exact.yaml): every term
    a mean over all (image, anchor, cell[, coord/class]) elements, times b_i. Its box and class terms shrink
    as 1/(H*W) at a fixed number of objects (11x from 192 to 640 px).
    Gains: g_box = hyp['giou'] if present else hyp['box'], g_obj = hyp['obj'], g_cls = hyp['cls'], each
    x hyp.get('kd', 1.0); returned loss = box + obj + cls, per image like ComputeLoss's items (ComputeLoss's
    loss is that x bs). hyp['obj'] is the run's scaled gain (x (imgsz/640)^2, as train.py gives ComputeLoss).

    A teacher of other classes (class_index, ClassColumns): the class term compares the matched classes, the
    teacher's logits gathered into the student's order. A student class without a teacher class gets no class
    KD: its column is left out of the sum, which is still divided by the student's nc (e_cls = sum over the
    matched classes / nc), so each matched class gets the gradient it would get from a teacher of the data's
    classes and the term shrinks by the unmatched share (the v8 loss, a sum over classes, does the same). With
    kl_softmax the softmax runs over the matched classes. Teacher-only classes (option B): the teacher's
    objectness counts only its objects of the matched classes, t_obj -> logit(sigma(t_obj) x max over the
    matched classes of sigma(t_cls)) (matched_objectness), both as the objectness target and in w. Why not the
    teacher's objectness as it is (option A): on data with a subset of the teacher's classes, the images hold
    the other classes' objects unlabelled, the detection loss teaches objectness 0 on them, and a teacher box of
    a class the data lacks ('person' on a dataset without persons) would pull the student's objectness up there
    and weight the box and class terms on it: the two losses would fight and the student learn to fire on
    objects it must ignore. Folded, such a box is background for both. The cost: on a matched object the target
    drops from sigma(obj) to sigma(obj) x its class score (~0.9 on confident detections). Applied only when the
    teacher has teacher-only classes; with none (a reordering, or student-only classes) t_obj is used as is.
    A student-only class is background to the teacher: its objectness KD there pulls down (nothing to fold).
    """

    zero_at_optimum = True  # loss is exactly 0 when student outputs == teacher outputs

    def __init__(self, hyp: dict | None = None, temperature: float = 1.0, weight_by_cls: bool = False,
                 obj_term: str | None = None, normalize: str = "weight", class_index: Sequence[int] | None = None):
        super().__init__()
        self.classes = ClassColumns(class_index) if class_index is not None else None
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize {normalize!r} is unknown; choose one of: {', '.join(NORMALIZE)}")
        self.normalize = normalize
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if obj_term not in (None, "bce"):
            raise ValueError(f"obj_term {obj_term!r} is unknown; choose 'bce' or leave it unset (the variant's own)")
        if obj_term == "bce":  # spec kd_methods.md 3.11: BCE(sigma_s, sigma_t) for objectness, in its KL form
            self.obj_term = binary_kl  # gradient sigma_s - sigma_t: alive where the student is confidently wrong
        hyp = dict(_V60_GAINS) if hyp is None else hyp
        missing = [k for k in ("obj", "cls") if k not in hyp] + ([] if "giou" in hyp or "box" in hyp else ["box"])
        if missing:
            raise ValueError(f"hyp is missing the loss gain(s) {missing} needed by output distillation")
        kd = float(hyp.get("kd", 1.0))
        self.gains = {"box": float(hyp["giou"] if "giou" in hyp else hyp["box"]) * kd,
                      "obj": float(hyp["obj"]) * kd, "cls": float(hyp["cls"]) * kd}
        self.temperature = float(temperature)
        self.weight_by_cls = weight_by_cls

    def obj_term(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cls_term(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                student_anchors: torch.Tensor, teacher_anchors: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (scalar loss, {'kd_box', 'kd_obj', 'kd_cls'} detached, after gains), per image.

        student/teacher: nl raw tensors (bs, na, ny, nx, 5+nc) each; anchors: (nl, na, 2) grid units.
        """
        _check_outputs(student, teacher, student_anchors, teacher_anchors, same_classes=self.classes is None)
        device = student[0].device
        balance = level_balance(len(student))
        per_cell = self.normalize == "cells"
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        with no_autocast(device):
            for i, (ps, pt) in enumerate(zip(student, teacher)):
                ps, pt = fp32(ps), fp32(pt.detach())
                nc = ps.shape[-1] - 5
                s_cls, t_cls, t_obj, full = self._classes(ps, pt)
                w = torch.sigmoid(t_obj)  # (bs, na, ny, nx) teacher objectness
                if self.weight_by_cls and nc > 1:
                    w = w * torch.sigmoid(t_cls).amax(-1)
                e_box = self._box_error(ps, pt, student_anchors[i], teacher_anchors[i]).mean(-1)
                e_cls = None  # ComputeLoss: no class loss for nc 1
                if nc > 1:  # unmatched classes: out of the sum, still in the nc it is divided by (class docstring)
                    e_cls = self.cls_term(s_cls, t_cls)
                    e_cls = e_cls.mean(-1) if full else e_cls.sum(-1) / nc
                lobj = lobj + balance[i] * self.obj_term(ps[..., 4], t_obj).mean()
                if per_cell:  # the card's: means over every element, the level balance on every term
                    lbox = lbox + balance[i] * (e_box * w).mean()
                    lcls = lcls + (balance[i] * (e_cls * w).mean() if e_cls is not None else 0.0)
                else:
                    w = w * w
                    mass = w.sum().clamp(min=torch.finfo(torch.float32).tiny)
                    lbox = lbox + (e_box * w).sum() / mass
                    lcls = lcls + ((e_cls * w).sum() / mass if e_cls is not None else 0.0)
        lbox, lobj, lcls = lbox * self.gains["box"], lobj * self.gains["obj"], lcls * self.gains["cls"]
        parts = {"kd_box": lbox.detach(), "kd_obj": lobj.detach(), "kd_cls": lcls.detach()}
        return lbox + lobj + lcls, parts

    def _classes(self, ps: torch.Tensor, pt: torch.Tensor):
        """(student class logits, teacher class logits in the student's order, teacher objectness logit, whether
        every student class is compared) of a level; the outputs as they are without a class map."""
        if self.classes is None:
            return ps[..., 5:], pt[..., 5:], pt[..., 4], True
        s_cls, t_cls = self.classes.select(ps[..., 5:], pt[..., 5:])
        t_obj = matched_objectness(pt[..., 4], t_cls) if self.classes.teacher_only(pt[..., 5:]) else pt[..., 4]
        return s_cls, t_cls, t_obj, self.classes.full

    @staticmethod
    def _box_error(ps: torch.Tensor, pt: torch.Tensor, anchors_s: torch.Tensor, anchors_t: torch.Tensor):
        """Squared decoded-box error (bs, na, ny, nx, 4), grid units; wh error relative to a_T."""
        na = ps.shape[1]
        a_s = fp32(anchors_s).to(ps.device).view(1, na, 1, 1, 2)  # (na, 2) -> broadcast over cells
        a_t = fp32(anchors_t).to(ps.device).view(1, na, 1, 1, 2)
        xy_s, xy_t = torch.sigmoid(ps[..., :2]) * 2 - 0.5, torch.sigmoid(pt[..., :2]) * 2 - 0.5
        wh_s = (torch.sigmoid(ps[..., 2:4]) * 2) ** 2 * a_s
        wh_t = (torch.sigmoid(pt[..., 2:4]) * 2) ** 2 * a_t
        return torch.cat(((xy_s - xy_t) ** 2, ((wh_s - wh_t) / a_t) ** 2), dim=-1)


def _check_outputs(student, teacher, anchors_s, anchors_t, same_classes: bool = True) -> None:
    """ValueError unless the levels pair up: equal shapes (but for the classes with a class map)."""
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} output levels, teacher {len(teacher)}")
    for i, (ps, pt) in enumerate(zip(student, teacher)):
        if (ps.shape if same_classes else ps.shape[:-1]) != (pt.shape if same_classes else pt.shape[:-1]):
            raise ValueError(f"output level {i}: student shape {tuple(ps.shape)} != teacher {tuple(pt.shape)} "
                             "(same nc, anchors per level and strides are required)")
    na = student[0].shape[1]
    for what, a in (("student", anchors_s), ("teacher", anchors_t)):
        if tuple(a.shape) != (len(student), na, 2):
            raise ValueError(f"{what} anchors must be (nl, na, 2) = ({len(student)}, {na}, 2) in grid units, "
                             f"got {tuple(a.shape)}")


class OutputL2KD(_OutputKD):
    """L2 output distillation (Mehta & Ozturk 2018): obj = (sigma(s)-sigma(t))^2, cls the same per class."""

    def obj_term(self, s, t):
        return (torch.sigmoid(s) - torch.sigmoid(t)) ** 2

    def cls_term(self, s, t):
        return (torch.sigmoid(s) - torch.sigmoid(t)) ** 2


class OutputBCEKD(_OutputKD):
    """BCE output distillation (Hinton et al. 2015, arXiv:1503.02531, binary form for sigmoid heads).

    obj = BCE(sigma(s), sigma(t)); cls = BCE(sigma(s/tau), sigma(t/tau)) * tau^2. Raw BCE: at
    student == teacher the loss sits at its minimum, the teacher's (weighted) binary entropy, with zero
    gradient; it equals 'kl' plus that constant, so the two have identical gradients.
    `subtract_entropy=True` removes that constant (centred_bce): same gradient, value 0 at the optimum.
    """

    zero_at_optimum = False

    def __init__(self, hyp: dict | None = None, temperature: float = 1.0, weight_by_cls: bool = False,
                 obj_term: str | None = None, subtract_entropy: bool = False, normalize: str = "weight",
                 class_index: Sequence[int] | None = None):
        self.bce = centred_bce if subtract_entropy else soft_bce
        super().__init__(hyp, temperature, weight_by_cls, obj_term, normalize, class_index)
        self.zero_at_optimum = bool(subtract_entropy)

    def obj_term(self, s, t):
        return self.bce(s, t)

    def cls_term(self, s, t):
        tau = self.temperature
        return self.bce(s / tau, t / tau) * tau * tau


class OutputKLKD(_OutputKD):
    """KL output distillation (Hinton et al. 2015, arXiv:1503.02531).

    Default (binary, for YOLO's independent sigmoid classes): obj = KL(Bern(sigma(t)) || Bern(sigma(s)));
    cls = KL(Bern(sigma(t/tau)) || Bern(sigma(s/tau))) * tau^2 per class. `kl_softmax=True` gives the
    fork's softmax-over-classes KL: KL(softmax(t/tau) || softmax(s/tau)) * tau^2, its per-class
    terms averaged like every other element-wise term. Both are exactly 0 at student == teacher.
    """

    def __init__(self, hyp: dict | None = None, temperature: float = 1.0, weight_by_cls: bool = False,
                 kl_softmax: bool = False, obj_term: str | None = None, normalize: str = "weight",
                 class_index: Sequence[int] | None = None):
        super().__init__(hyp, temperature, weight_by_cls, obj_term, normalize, class_index)
        self.kl_softmax = kl_softmax

    def obj_term(self, s, t):
        return binary_kl(s, t)

    def cls_term(self, s, t):
        tau = self.temperature
        if self.kl_softmax:
            kl = F.kl_div(F.log_softmax(s / tau, dim=-1), F.log_softmax(t / tau, dim=-1),
                          reduction="none", log_target=True)
        else:
            kl = binary_kl(s / tau, t / tau)
        return kl * tau * tau


NORMALIZE = ("weight", "cells")  # YoloKDLoss normalize: per level by the teacher's weight mass / per-cell means

VARIANTS = {"l2": OutputL2KD, "kl": OutputKLKD, "bce": OutputBCEKD}


def raw_outputs(out):
    """Raw per-level list from a train-mode list or an eval-mode (decoded, raw) tuple of a Detect head."""
    return out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (list, tuple)) else out


def detect_anchors(model: nn.Module | None, what: str) -> torch.Tensor:
    """(nl, na, 2) anchors in grid units of the model's last layer (a YOLOv5 Detect), read live."""
    model = unwrap_parallel(model) if model is not None else None
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) else None
    if head is None or not hasattr(head, "anchors"):
        raise ValueError(f"YoloKDLoss reads the anchors of ctx.{what}'s Detect head, but ctx.{what} is "
                         f"{type(model).__name__}: it needs YOLOv5 models (an anchor-based Detect last layer)")
    return head.anchors.detach()


# Default weights by variant: 1, i.e. each KD term at its detection counterpart's own gain (the teacher's soft
# targets weighted like the labels). At the start of training (yolov5n from scratch <- the shapes yolov5s teacher,
# 16 images at 192 px, hyp.short gains) kl at T 20 is then box 0.65x, objectness 1.9x and classes 1.1x their
# detection terms, at any image size (tests/test_kd_scale.py). The per-cell form of the card (normalize: cells)
# weighed 2 for kl and bce, 10 for l2: its box and class terms were ~0.04x their counterparts at 192 px.
OUTPUT_DEFAULT_ALPHA = {"l2": 1.0, "kl": 1.0, "bce": 1.0}


def _default_alpha(params) -> float:
    return OUTPUT_DEFAULT_ALPHA.get(params.get("variant", "l2"), 1.0)


@register("YoloKDLoss", default_weight=_default_alpha, default_layers="detect", title="YOLOv5 output KD")
class YoloKDLoss(nn.Module):
    """YOLOv5 output distillation (Mehta & Ozturk 2018, arXiv:1805.06361): the seed's 'YoloKDLoss'.

    Tensor contract: one layer pair, the Detect heads; student_feats[0] / teacher_feats[0] are what they
    returned (train mode: nl raw (B, na, ny, nx, 5+nc) logits; eval mode: (decoded, raw), raw used).
    Anchors are read from ctx.student / ctx.teacher's Detect at every call (autoanchor changes seen).
    Returns a float32 scalar per image (a mean, like ComputeLoss's items): ComputeLoss returns its loss
    x batch size, so multiply kd_loss by the batch size when adding them (DistillObjective does).
    After each call `parts` holds the detached box/obj/cls terms (kd_box, kd_obj, kd_cls).

    Args (seed names): nc (checked against the outputs if given), giou (box gain), obj, cls (gains),
    dist (gain of all three, the forks' distill ratio / hyp 'kd'); or hyp=dict with box/'giou', obj, cls,
    kd (train_kd.py passes its scaled hyp). variant: 'l2' | 'kl' | 'bce' (see OutputL2KD/KL/BCE);
    T: temperature of the kl/bce class terms (x T^2); weight_by_cls; kl_softmax (kl only);
    obj_term='bce': objectness by BCE(sigma_s, sigma_t) in its KL form (for l2, whose (sigma_s - sigma_t)^2
    has a vanishing gradient where the student is confidently wrong); subtract_entropy (bce only): log the
    value without the teacher's entropy (gradient unchanged, 0 at student == teacher). normalize: 'weight'
    (box and class terms per level by the teacher's weight mass: the same strength at every image size) or
    'cells' (the card's per-cell means; see _OutputKD). class_index: the teacher class of each student class
    (-1: none) when the teacher's classes are not the student's (distill.recipe.ClassMap; see _OutputKD).
    """

    kind = "output"
    needs = ("student",)
    part_names = ("kd_box", "kd_obj", "kd_cls")  # the keys of `parts`

    def __init__(self, nc: int | None = None, giou: float = 0.05, obj: float = 1.0, cls: float = 0.5,
                 dist: float = 1.0, variant: str = "l2", T: float = 1.0, weight_by_cls: bool = False,
                 kl_softmax: bool = False, hyp: dict | None = None, obj_term: str | None = None,
                 subtract_entropy: bool = False, normalize: str = "weight", class_index: Sequence[int] | None = None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"YoloKDLoss variant {variant!r} is unknown; choose one of: {', '.join(VARIANTS)}")
        if kl_softmax and variant != "kl":
            raise ValueError("YoloKDLoss kl_softmax=True needs variant='kl'")
        if subtract_entropy and variant != "bce":
            raise ValueError("YoloKDLoss subtract_entropy=True needs variant='bce' (l2 and kl are 0 at the optimum)")
        if hyp is None:
            hyp = {"giou": giou, "obj": obj, "cls": cls, "kd": dist}
        kw = {"kl_softmax": kl_softmax} if variant == "kl" else {}
        kw.update({"obj_term": obj_term, "normalize": normalize}, **({"subtract_entropy": True} if subtract_entropy else {}))
        if class_index is not None:
            kw["class_index"] = class_index
        self.core = VARIANTS[variant](hyp=hyp, temperature=T, weight_by_cls=weight_by_cls, **kw)
        self.nc, self.variant = nc, variant
        self.zero_at_optimum = self.core.zero_at_optimum
        self.parts: dict[str, torch.Tensor] = {}

    def forward(self, student_feats, teacher_feats, ctx) -> torch.Tensor:
        if len(student_feats) != 1 or len(teacher_feats) != 1:
            raise ValueError(f"YoloKDLoss takes one layer pair (the Detect heads), got {len(student_feats)}")
        s, t = raw_outputs(student_feats[0]), raw_outputs(teacher_feats[0])
        if not isinstance(s, (list, tuple)) or not all(torch.is_tensor(p) and p.dim() == 5 for p in s):
            raise ValueError("YoloKDLoss: the student layer must be a YOLOv5 Detect head returning raw "
                             "(B, na, ny, nx, 5+nc) tensors; map it to the Detect layer (e.g. 'model.24')")
        if self.nc is not None and s[0].shape[-1] - 5 != self.nc:
            raise ValueError(f"YoloKDLoss nc={self.nc} but the outputs have {s[0].shape[-1] - 5} classes")
        loss, self.parts = self.core(s, t, detect_anchors(ctx.student, "student"),
                                     detect_anchors(ctx.teacher, "teacher"))
        return loss

    def extra_repr(self) -> str:
        return (f"variant={self.variant}, T={self.core.temperature:g}, normalize={self.core.normalize}, "
                f"gains={self.core.gains}")
