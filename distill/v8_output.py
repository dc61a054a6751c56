"""Output distillation for the YOLOv8-style DFL head (the seed's 'ver2').

`V8OutputKD` (registry type `v8_output_kd`) reads what DetectV8 returns: nl raw maps (B, 4*R + nc, ny, nx),
channels 0..4R-1 the box-edge logits (left, top, right, bottom; R = reg_max bins each), then nc class
logits. Per anchor point p (every cell of every level and image), with T the temperature:

    box_p = T^2 / 4 * sum_edges KL(softmax(t_edge / T) || softmax(s_edge / T))    (LD, Zheng et al. 2022)
    w_p   = max_c sigmoid(t_cls)                                                   the teacher's confidence
    cls_p = tau^2 * sum_c KL(Bern(sigmoid(t_c / tau)) || Bern(sigmoid(s_c / tau)))
    loss  = gain * sum_p w_p^2 (box * box_p + cls * cls_p) / sum_p w_p^2

sums over every point of every level and image (normalize='weight'): both terms are means weighted by the
teacher's confidence, like the detection box/DFL losses over the positives, so they keep their ratio to the
detection loss at any image size and batch (tests/test_kd_scale.py). w^2, not w: the teacher's background
(w ~ 1e-3 per point) would hold a share of sum(w) that grows with the cell count, as measured for YoloKDLoss
(distill/yolo_output.py).

normalize='points' (the default again since 2026-12-07; the form before 2026-12-06): box by sum(w), class a
mean over every point, background included:

    loss  = gain * (box * sum_p w_p box_p / sum_p w_p + cls * sum_p cls_p / P)

Why it is the default although its class term moves with the share of background (kd_cls / cls 0.39 at 160 px
and 1.12 at 640 px when the same objects sit in a 4x larger grey canvas, tests/test_kd_scale.py): trained, it
is the form that distils. yolov8n from scratch <- the shapes yolov8s, 30 epochs at 192 px (bench/RESULTS.md,
"YOLOv8 output KD: the two forms trained"): 300 training images, plain 0.109 / 0.180 mAP@0.5:0.95 (seeds 0 /
1), 'weight' form at weight 3 0.035 / 0.027 (weight 1: 0.092, 0.3: 0.083, seed 0), 'points' form at weight 4
0.341 / 0.263; on all 1000 images (seed 0) 0.004 against 0.404. Not a question of strength: at the first batch
both start near 100 (weight 3 'weight': kd_box 51 + kd_cls 65; weight 4 'points': 63 + 32) and the 'weight'
form at weights 1 and 0.3 stays below the plain student too. It is where the class KL lands: the 'weight' form
puts it, at tau^2 = 100, on the few points the teacher is sure of, where a student from scratch is far from
every one of the teacher's class logits (the object's and the other classes'), and the detection class loss
stays above the plain run's all along; the 'points' form spreads the same KL over every point, the background's
softened scores included, which is what the teacher knows beyond the labels. The 'weight' form stays available
(normalize: weight) and is what tests/test_kd_scale.py holds to a fixed ratio.

A teacher of other classes (class_index, distill.recipe.ClassMap): the teacher's class logits are gathered into
the student's order (distill.kd_terms.ClassColumns). A student class without a teacher class is left out of
the class sum (no class KD for it; the sum over classes is not renormalised, so each matched class is taught as
by a teacher of the data's classes). Teacher-only classes are left out of both the class sum and w: w is the max
over the matched classes, so a teacher detection of a class the data lacks weighs like background (option B of
distill/yolo_output.py's _OutputKD, which says why; the v8 head has no objectness to fold).

Both KLs are taken between log-probabilities in float32 with autocast off, the teacher detached.
The seed's version took both distributions from the student (always ~0) and fed probabilities where
KLDivLoss expects log-probabilities; here the loss is exactly 0 only when the two outputs are equal.

Heads of different reg_max (a YOLO26 head, reg_max 1: the four edge distances predicted directly, against a
DFL head, reg_max 16), or two reg_max-1 heads (one bin per edge: the LD above is identically 0): the bins cannot
be compared, so box_p compares the *decoded* edge distances instead, d = softmax(bins) . (0, 1, ..., R-1) for a
DFL head and the four raw values for reg_max 1, both in grid units of the point's level (what
utils/losses/yolov8.py's _decode and DetectV8.decode feed to dist2bbox):

    box_p = mean_edges |d_s - clamp(d_t, 0, R_s - 1)|     (R_s - 1: the farthest a DFL student reaches; no
                                                            clamp for a reg_max-1 student)

weighted by the same w_p^2 and divided by the same per-level weight mass as the LD term; T is not applied (the
distances are the decoded box, not a softened distribution) and the term has its own gain DECODED_BOX_GAIN in
place of T^2. Why L1 on the distances rather than 1 - GIoU of the boxes they imply: the raw distances of a
reg_max-1 head may be negative (its boxes then invalid, where IoU is undefined or needs a clamp with no
gradient), L1 has the same gradient magnitude for any error and is the box term YOLO26 itself regresses with
(utils/losses/e2e.py's L1), and in grid units of the level, like the bins of the LD it stands for, it does not
grow with the image size (a distance in pixels would). The clamp of the teacher's distances is the detection
loss's own (bbox2dist clamps the DFL targets to the bins), so the minimum is reachable: box_p is 0 exactly when
the student's decoded distances equal the (clamped) teacher's. A YOLO26 model's train-mode output
{"one2many", "one2one"} is read at its one-to-many maps (the dense branch, what NMS scores and what a
feature of the shared neck feeds with gradient); in eval mode the head returns its raw maps as a v8 head does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.common import fp32, no_autocast
from distill.hooks import model_head
from distill.kd_terms import ClassColumns, binary_kl
from distill.registry import register
from distill.yolo_output import raw_outputs

LD_TEMPERATURE = 10.0  # LD's T for the edge distributions (mmdet configs/ld)
V8_NORMALIZE = ("points", "weight")  # V8OutputKD normalize: the default (class over every point) / by the w^2 mass
# Gain of the decoded (L1) box term, in place of LD's T^2: 4 puts it at the LD term's scale at the first batch.
# Measured on a real pair (the trained shapes yolov8s teacher, weights/teacher-shapes-yolov8s.pt, against a yolov8n
# from scratch, 8 shapes training images, seeds 0-2; the w^2-weighted means of both box forms on the same maps):
# L1 / (T^2 LD) = 0.26-0.27 at 192 px (L1 4.08-4.45 grid units, T^2 LD 15.5-16.7) and 0.27-0.32 at 320 px (L1
# 4.16-4.33: the L1 does not move with the image size), so x4 gives 1.0-1.2x today's box term. A yolo26n student
# from scratch (its box prior 2 cells) starts closer to that teacher: L1 1.42-1.79, x4 = 0.4x the LD term.
DECODED_BOX_GAIN = 4.0


def split_level(p: torch.Tensor, reg_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 4*R + nc, ny, nx) -> box logits (B, 4, R, ny*nx) and class logits (B, nc, ny*nx)."""
    b, _, ny, nx = p.shape
    box, cls = p.flatten(2).split((4 * reg_max, p.shape[1] - 4 * reg_max), 1)  # (B, no, ny*nx) split on channels
    return box.view(b, 4, reg_max, ny * nx), cls


# Weight 4 in the default 'points' form: the measured 'ver2' (+11 points mAP@0.5:0.95 at 30 epochs / 192 px on
# the 1000 shapes images, bench/RESULTS.md; +15.7 points on 300 of them, 2 seeds). It starts at ~7x the detection
# loss with the shapes teacher (13.0-13.9 raw) and falls below it within the first epochs. In the 'weight'
# form weight 3 was chosen (the same start) and trained students below the plain one (module docstring).
@register("v8_output_kd", default_weight=4.0, default_layers="detect", title="YOLOv8 output KD (DFL head)")
class V8OutputKD(nn.Module):
    """Output KD of the DFL head: LD on the box-edge distributions (Zheng et al., CVPR 2022, arXiv:2102.12252)
    weighted by teacher confidence, plus per-class binary KL (Hinton et al. 2015, arXiv:1503.02531).

    Tensor contract: one layer pair, the DetectV8 heads; student_feats[0] / teacher_feats[0] are what they
    returned (train mode: nl raw (B, 4*reg_max + nc, ny, nx) logits, of a YOLO26 head its "one2many" maps; eval
    mode: (decoded, raw), raw used). reg_max is read from ctx.student's head (16 when there is none), the
    teacher's from ctx.teacher's head (the student's when there is none); when they differ, or are both 1, the
    box term is L1 on the decoded edge distances (module docstring). Returns a float32 scalar, a per-image
    mean like the detection loss items; `parts` holds the detached weighted kd_box / kd_cls after a call.

    Args: T (edge distributions, x T^2), tau (class sigmoids, x tau^2; default T), box / cls (gains of the
    two terms), hyp (train_kd.py's: its 'kd' scales the whole loss), normalize ('weight' or 'points', above). variant / weight_by_cls / kl_softmax
    are train_kd.py's YOLOv5 output flags: only what this loss does is accepted (kl; class weighting on).
    class_index: the teacher class of each student class (-1: none) for a teacher of other classes (above).
    """

    kind = "dfl_output"  # raw DetectV8 maps (the registry tests' input recipe)
    needs = ()
    zero_at_optimum = True
    part_names = ("kd_box", "kd_cls")  # the keys of `parts`

    def __init__(self, T: float = LD_TEMPERATURE, tau: float | None = None, box: float = 1.0, cls: float = 1.0,
                 hyp: dict | None = None, nc: int | None = None, variant: str = "kl", weight_by_cls: bool = True,
                 kl_softmax: bool = False, normalize: str = "points", class_index: Sequence[int] | None = None):
        super().__init__()
        self.classes = ClassColumns(class_index) if class_index is not None else None
        tau = T if tau is None else tau
        if normalize not in V8_NORMALIZE:
            raise ValueError(f"v8_output_kd: normalize {normalize!r} is unknown; choose one of: "
                             f"{', '.join(V8_NORMALIZE)}")
        self.normalize = normalize
        if not (T > 0 and tau > 0):
            raise ValueError(f"v8_output_kd: temperatures must be > 0, got T={T}, tau={tau}")
        if variant != "kl" or kl_softmax or not weight_by_cls:
            raise ValueError(f"v8_output_kd is KL on the DFL edge distributions and class sigmoids, weighted by "
                             f"the teacher's class confidence; variant={variant!r}, kl_softmax={kl_softmax}, "
                             f"weight_by_cls={weight_by_cls} (--kd_loss_selected l2/bce, --kl_softmax) are for "
                             "YOLOv5 students: drop them")
        self.T, self.tau, self.nc = float(T), float(tau), nc
        gain = float((hyp or {}).get("kd", 1.0))
        self.gains = {"box": float(box) * gain, "cls": float(cls) * gain}
        self.parts: dict[str, torch.Tensor] = {}

    def forward(self, student_feats: Sequence, teacher_feats: Sequence, ctx=None) -> torch.Tensor:
        if len(student_feats) != 1 or len(teacher_feats) != 1:
            raise ValueError(f"v8_output_kd takes one layer pair (the DetectV8 heads), got {len(student_feats)}")
        s, t = one_to_many(raw_outputs(student_feats[0])), one_to_many(raw_outputs(teacher_feats[0]))
        head = model_head(getattr(ctx, "student", None))
        reg_max = int(getattr(head, "reg_max", 16))
        t_head = model_head(getattr(ctx, "teacher", None))  # no teacher model in ctx: the student's reg_max
        t_reg_max = int(getattr(t_head, "reg_max", reg_max))
        _check_levels(s, t, reg_max, self.nc, same_classes=self.classes is None, teacher_reg_max=t_reg_max)
        loss, self.parts = self.terms(s, t, reg_max, t_reg_max)
        return loss

    def terms(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], reg_max: int,
              teacher_reg_max: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {'kd_box', 'kd_cls'} detached after gains) of nl level pairs (B, 4*R + nc, ny, nx), R =
        reg_max for the student's maps and teacher_reg_max (default: reg_max) for the teacher's; LD on the
        bins when both are equal and above 1, else L1 on the decoded distances (module docstring)."""
        t_reg_max = reg_max if teacher_reg_max is None else int(teacher_reg_max)
        decoded = t_reg_max != reg_max or reg_max == 1  # the bins cannot be compared (one bin: LD is always 0)
        device = student[0].device
        box_sum, w_sum, cls_sum, points = (torch.zeros((), device=device) for _ in range(4))
        power = 2 if self.normalize == "weight" else 1
        with no_autocast(device):
            for ps, pt in zip(student, teacher):
                (box_s, cls_s), (box_t, cls_t) = split_level(fp32(ps), reg_max), split_level(fp32(pt.detach()), t_reg_max)
                if self.classes is not None:  # (B, nc_T, P) -> the matched classes in the student's order
                    cls_s, cls_t = self.classes.select(cls_s, cls_t, dim=1)
                if decoded:
                    kl_box = decoded_l1(box_s, box_t)  # (B, P): mean L1 of the 4 edge distances (grid units)
                else:
                    log_s = F.log_softmax(box_s / self.T, dim=2)  # (B, 4, R, P) over the bins of each edge
                    log_t = F.log_softmax(box_t / self.T, dim=2)
                    kl_box = (log_t.exp() * (log_t - log_s)).sum(2).mean(1)  # (B, P): KL per edge, mean of 4 edges
                w = torch.sigmoid(cls_t).amax(1) if cls_t.shape[1] else torch.ones_like(kl_box)  # (B, P)
                w = w.square() if power == 2 else w
                box_sum = box_sum + (w * kl_box).sum()
                w_sum = w_sum + w.sum()
                cls_kl = binary_kl(cls_s / self.tau, cls_t / self.tau).sum(1)  # (B, P): summed over the classes
                cls_sum = cls_sum + (w * cls_kl if power == 2 else cls_kl).sum()
                points = points + kl_box.numel()
            mass = w_sum.clamp(min=torch.finfo(torch.float32).tiny)
            box = self.gains["box"] * (DECODED_BOX_GAIN if decoded else self.T**2) * box_sum / mass
            cls = self.gains["cls"] * self.tau**2 * cls_sum / (mass if power == 2 else points)
        return box + cls, {"kd_box": box.detach(), "kd_cls": cls.detach()}

    def extra_repr(self) -> str:
        return f"T={self.T:g}, tau={self.tau:g}, normalize={self.normalize}, gains={self.gains}"


def one_to_many(out):
    """The per-level maps the loss reads: a YOLO26 head's train-mode {"one2many", "one2one"} -> its one-to-many
    maps (module docstring); anything else as it is."""
    return out["one2many"] if isinstance(out, dict) and "one2many" in out else out


def edge_distances(box: torch.Tensor) -> torch.Tensor:
    """(B, 4, R, P) box logits -> (B, 4, P) edge distances in grid units: the DFL expectation
    softmax(bins) . (0, 1, ..., R-1) for R > 1, the raw values for R = 1 (utils/losses/yolov8.py's _decode)."""
    if box.shape[2] == 1:
        return box[:, :, 0]
    proj = torch.arange(box.shape[2], dtype=box.dtype, device=box.device)
    return (box.softmax(2) * proj.view(1, 1, -1, 1)).sum(2)


def decoded_l1(box_s: torch.Tensor, box_t: torch.Tensor) -> torch.Tensor:
    """(B, P) mean over the 4 edges of |d_s - d_t|, the decoded distances of student and teacher box logits
    (B, 4, R, P) of any two reg_max; the teacher's clamped to [0, R_s - 1], the range a DFL student can reach
    (no clamp for a reg_max-1 student)."""
    d_s, d_t = edge_distances(box_s), edge_distances(box_t.detach())
    if box_s.shape[2] > 1:
        d_t = d_t.clamp(0, box_s.shape[2] - 1)
    return (d_s - d_t).abs().mean(1)


def _check_levels(student, teacher, reg_max: int, nc: int | None, same_classes: bool = True,
                  teacher_reg_max: int | None = None) -> None:
    t_reg_max = reg_max if teacher_reg_max is None else teacher_reg_max
    ok = isinstance(student, (list, tuple)) and all(torch.is_tensor(p) and p.dim() == 4 for p in student)
    if not ok:
        raise ValueError("v8_output_kd: the student layer must be a DetectV8 head returning raw (B, 4*reg_max + nc, "
                         "ny, nx) maps (layers: detect); YOLOv5 heads use YoloKDLoss")
    if len(student) != len(teacher):
        raise ValueError(f"v8_output_kd: student has {len(student)} output levels, teacher {len(teacher)}")
    for i, (ps, pt) in enumerate(zip(student, teacher)):
        same = torch.is_tensor(pt) and pt.dim() == 4 and (ps.shape[0], *ps.shape[2:]) == (pt.shape[0], *pt.shape[2:])
        if same and same_classes:  # the class channels too (each side past its own 4 x reg_max box channels)
            same = ps.shape[1] - 4 * reg_max == pt.shape[1] - 4 * t_reg_max
        if not same or pt.shape[1] < 4 * t_reg_max:
            raise ValueError(f"v8_output_kd: level {i} student {tuple(ps.shape)} != teacher "
                             f"{tuple(getattr(pt, 'shape', ()))} (teacher reg_max {t_reg_max}, student {reg_max}: the "
                             "same strides are required, and the same nc unless a class map pairs the classes)")
        if ps.shape[1] < 4 * reg_max or (nc is not None and ps.shape[1] - 4 * reg_max != nc):
            raise ValueError(f"v8_output_kd: level {i} has {ps.shape[1]} channels, not 4 x reg_max {reg_max} + nc")
