"""Distillation losses. Each takes tensors and returns a scalar (output losses also return parts).

Output losses work on the raw per-level YOLOv5 outputs: a list of nl tensors (bs, na, ny, nx, 5+nc)
of logits, as Detect returns them in train mode (index 0:2 xy, 2:4 wh, 4 objectness, 5: classes).
Feature losses work on lists of paired feature maps (B, C, H, W).
Everything is computed in float32 with autocast disabled (fp16 sigmoid/log terms lose precision).

Notation: S = student, T = teacher, sigma = sigmoid, tau = temperature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_V60_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}  # hyp.scratch.yaml, used when no hyp is given


def level_balance(nl: int) -> list[float]:
    """Per-level weights of YOLOv5's objectness loss: [4.0, 1.0, 0.4] for 3 levels (P3-P5)."""
    if nl == 3:
        return [4.0, 1.0, 0.4]
    base = [4.0, 1.0, 0.25, 0.06, 0.02]  # ComputeLoss's list for other level counts
    return (base + [base[-1]] * nl)[:nl]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float32 else x


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def binary_kl(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bern(sigma(t)) || Bern(sigma(s))); exactly 0 where s == t (log-sigmoid form)."""
    q = torch.sigmoid(logits_t)
    return q * (F.logsigmoid(logits_t) - F.logsigmoid(logits_s)) + (1 - q) * (
        F.logsigmoid(-logits_t) - F.logsigmoid(-logits_s))


def soft_bce(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Elementwise BCE(sigma(s), sigma(t)) = binary_kl + H(sigma(t)); its minimum over s is the entropy."""
    return F.binary_cross_entropy_with_logits(logits_s, torch.sigmoid(logits_t), reduction="none")


class _OutputKD(nn.Module):
    """Teacher-objectness-weighted output distillation (Mehta & Ozturk 2018, arXiv:1805.06361).

    Per level i (balance b_i = level_balance(nl)[i]) with w = sigma(t_obj) (x max_c sigma(t_cls) if
    `weight_by_cls` and nc > 1), means taken over every (image, anchor, cell[, coord/class]) element:
        box_i = mean(w * [(xy_S - xy_T)^2, ((wh_S - wh_T) / a_T)^2])   decoded, grid units:
                xy = 2 sigma(t_xy) - 0.5 (the +grid offset cancels), wh = (2 sigma(t_wh))^2 * anchor;
                the wh error is divided by the teacher anchor so P5's large anchors do not dominate
                (with equal anchors it is the error of (2 sigma)^2). Anchors may differ S vs T.
        obj_i = mean(obj_term(s_obj, t_obj))                            NOT weighted
        cls_i = mean(w * cls_term(s_cls, t_cls))                        only when nc > 1
    Totals: box = g_box * sum_i b_i box_i (g_box = hyp['giou'] if present else hyp['box']),
    obj = g_obj * sum_i b_i obj_i, cls = g_cls * sum_i b_i cls_i, each gain x hyp.get('kd', 1.0);
    returned loss = (box + obj + cls) * bs, the scaling of ComputeLoss.
    """

    kind = "output"
    zero_at_optimum = True  # loss is exactly 0 when student outputs == teacher outputs

    def __init__(self, hyp: dict | None = None, temperature: float = 1.0, weight_by_cls: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
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
        """Return (scalar loss x bs, {'kd_box', 'kd_obj', 'kd_cls'} detached, after gains, before x bs).

        student/teacher: nl raw tensors (bs, na, ny, nx, 5+nc) each; anchors: (nl, na, 2) grid units.
        """
        _check_outputs(student, teacher, student_anchors, teacher_anchors)
        device = student[0].device
        balance = level_balance(len(student))
        lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
        with _no_autocast(device):
            for i, (ps, pt) in enumerate(zip(student, teacher)):
                ps, pt = _fp32(ps), _fp32(pt.detach())
                nc = ps.shape[-1] - 5
                w = torch.sigmoid(pt[..., 4])  # (bs, na, ny, nx) teacher objectness
                if self.weight_by_cls and nc > 1:
                    w = w * torch.sigmoid(pt[..., 5:]).amax(-1)
                lbox = lbox + balance[i] * (self._box_error(ps, pt, student_anchors[i], teacher_anchors[i])
                                            * w[..., None]).mean()
                lobj = lobj + balance[i] * self.obj_term(ps[..., 4], pt[..., 4]).mean()
                if nc > 1:  # like ComputeLoss: no class loss for a single class
                    lcls = lcls + balance[i] * (self.cls_term(ps[..., 5:], pt[..., 5:]) * w[..., None]).mean()
        lbox, lobj, lcls = lbox * self.gains["box"], lobj * self.gains["obj"], lcls * self.gains["cls"]
        bs = student[0].shape[0]
        parts = {"kd_box": lbox.detach(), "kd_obj": lobj.detach(), "kd_cls": lcls.detach()}
        return (lbox + lobj + lcls) * bs, parts

    @staticmethod
    def _box_error(ps: torch.Tensor, pt: torch.Tensor, anchors_s: torch.Tensor, anchors_t: torch.Tensor):
        """Squared decoded-box error (bs, na, ny, nx, 4), grid units; wh error relative to a_T."""
        na = ps.shape[1]
        a_s = _fp32(anchors_s).to(ps.device).view(1, na, 1, 1, 2)  # (na, 2) -> broadcast over cells
        a_t = _fp32(anchors_t).to(ps.device).view(1, na, 1, 1, 2)
        xy_s, xy_t = torch.sigmoid(ps[..., :2]) * 2 - 0.5, torch.sigmoid(pt[..., :2]) * 2 - 0.5
        wh_s = (torch.sigmoid(ps[..., 2:4]) * 2) ** 2 * a_s
        wh_t = (torch.sigmoid(pt[..., 2:4]) * 2) ** 2 * a_t
        return torch.cat(((xy_s - xy_t) ** 2, ((wh_s - wh_t) / a_t) ** 2), dim=-1)


def _check_outputs(student, teacher, anchors_s, anchors_t) -> None:
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} output levels, teacher {len(teacher)}")
    for i, (ps, pt) in enumerate(zip(student, teacher)):
        if ps.shape != pt.shape:
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
    """

    zero_at_optimum = False

    def obj_term(self, s, t):
        return soft_bce(s, t)

    def cls_term(self, s, t):
        tau = self.temperature
        return soft_bce(s / tau, t / tau) * tau * tau


class OutputKLKD(_OutputKD):
    """KL output distillation (Hinton et al. 2015, arXiv:1503.02531).

    Default (binary, for YOLO's independent sigmoid classes): obj = KL(Bern(sigma(t)) || Bern(sigma(s)));
    cls = KL(Bern(sigma(t/tau)) || Bern(sigma(s/tau))) * tau^2 per class. `kl_softmax=True` gives the
    fork's softmax-over-classes KL: KL(softmax(t/tau) || softmax(s/tau)) * tau^2, its per-class
    terms averaged like every other element-wise term. Both are exactly 0 at student == teacher.
    """

    def __init__(self, hyp: dict | None = None, temperature: float = 1.0, weight_by_cls: bool = False,
                 kl_softmax: bool = False):
        super().__init__(hyp, temperature, weight_by_cls)
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


def _match_size(student: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, C, H, W) student map to the teacher's (H, W) (bilinear) when strides differ."""
    if tuple(student.shape[-2:]) == tuple(size):
        return student
    return F.interpolate(student, size=size, mode="bilinear", align_corners=False)


def _check_pairs(student_feats, teacher_feats) -> None:
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"{len(student_feats)} student feature maps but {len(teacher_feats)} teacher maps")
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
            raise ValueError(f"feature pair {i}: need (B, C, H, W) maps with equal B, got "
                             f"{tuple(s.shape)} and {tuple(t.shape)}")


class AttentionTransfer(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv:1612.03928).

    Q = mean_c |A_c|^p (p = 2) per sample, (B, H, W); the student map is resized (bilinear) to the
    teacher's H x W if they differ; flattened and L2-normalised per sample. Loss = sum over pairs of
    the squared L2 distance ||Q_S - Q_T||^2 (summed over positions, as in the paper), averaged over the
    batch. Summing rather than averaging over positions (the authors' code) keeps the loss independent
    of the image size: each pair lies in [0, 4]. Channel counts may differ. The weight is the
    objective's `beta`.
    """

    kind = "feature"
    needs_adapters = False
    zero_at_optimum = True

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = float(p)

    def attention(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W) L2-normalised attention map (resized to `size` first if given)."""
        q = _fp32(x).abs().pow(self.p).mean(1, keepdim=True)  # (B, 1, H, W)
        if size is not None:
            q = _match_size(q, size)
        return F.normalize(q.flatten(1), dim=1)

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_pairs(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        with _no_autocast(device):
            for s, t in zip(student_feats, teacher_feats):
                qt = self.attention(t.detach())
                qs = self.attention(s, size=tuple(t.shape[-2:]))
                loss = loss + (qs - qt).pow(2).sum(1).mean()
        return loss


class FitNetHint(nn.Module):
    """FitNet hint loss (Romero et al., ICLR 2015, arXiv:1412.6550): sum over pairs of mean((r(S) - T)^2).

    Takes student maps already passed through the learnable regressors r (distill.adapters), so the
    channel counts must match; the student map is resized (bilinear) to the teacher's H x W if needed.
    """

    kind = "feature"
    needs_adapters = True
    zero_at_optimum = True

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_pairs(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        with _no_autocast(device):
            for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
                if s.shape[1] != t.shape[1]:
                    raise ValueError(f"feature pair {i}: student has {s.shape[1]} channels, teacher {t.shape[1]}; "
                                     "pass the student maps through distill.adapters first")
                s = _match_size(_fp32(s), tuple(t.shape[-2:]))
                loss = loss + (s - _fp32(t.detach())).pow(2).mean()
        return loss


LOSSES = {
    "l2": OutputL2KD,
    "kl": OutputKLKD,
    "bce": OutputBCEKD,
    "at": AttentionTransfer,
    "fitnet": FitNetHint,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the registered loss `name` with `kwargs`; ValueError lists the choices."""
    if name not in LOSSES:
        raise ValueError(f"unknown distillation loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
