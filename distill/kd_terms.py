"""Elementwise output-KD terms and the class-column matching shared by the YOLOv5 and YOLOv8 output KD
(distill.yolo_output, distill.v8_output) and BCKD (distill.losses.bckd).

`binary_kl`, `soft_bce`, `centred_bce`: per-element binary class KD on logits (each class its own Bernoulli, as
YOLO's sigmoid classes are). `ClassColumns`: the class columns compared when the teacher's classes are not the
student's (from distill.recipe.ClassMap.index). `matched_objectness`: the teacher's object score restricted to
the matched classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ClassColumns(nn.Module):
    """The class columns output KD compares when the teacher's classes are not the student's.

    index[c] = the teacher class teaching student class c, -1 for none (distill.recipe.ClassMap.index). select()
    returns the student's class logits of the matched classes and the teacher's in the same order; a student
    class without a teacher class is left out (no class KD for it), and so is every teacher-only class. The
    column lists are non-persistent buffers: they follow .to(device) and stay out of the state_dict (kd_state).
    """

    def __init__(self, index: Sequence[int]):
        super().__init__()
        index = [int(j) for j in index]
        matched = [j for j in index if j >= 0]
        if not index or not matched or min(index) < -1 or len(set(matched)) != len(matched):
            raise ValueError(f"class_index {index}: give one teacher class (>= 0, each at most once) or -1 per student "
                             "class, at least one matched")
        self.nc = len(index)  # student classes
        self.full = len(matched) == self.nc  # every student class has a teacher class
        self.min_teacher_nc = max(matched) + 1
        self.in_order = index == list(range(self.nc))  # class c is the teacher's class c
        self.register_buffer("student_cols", torch.tensor([c for c, j in enumerate(index) if j >= 0]), persistent=False)
        self.register_buffer("teacher_cols", torch.tensor(matched), persistent=False)

    def select(self, s_cls: torch.Tensor, t_cls: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """(student logits, teacher logits) of the matched classes along `dim`, in the student's order."""
        if t_cls.shape[dim] < self.min_teacher_nc or s_cls.shape[dim] != self.nc:
            raise ValueError(f"class_index maps {self.nc} student classes onto teacher classes up to "
                             f"{self.min_teacher_nc - 1}, but the outputs have {s_cls.shape[dim]} student and "
                             f"{t_cls.shape[dim]} teacher classes")
        if self.in_order and t_cls.shape[dim] == self.nc:  # the identity: the views as they are, not a contiguous
            return s_cls, t_cls  # copy (reductions over a copy may round differently: a full-class run keeps its bits)
        s = s_cls if self.full else s_cls.index_select(dim, self.student_cols.to(s_cls.device))
        return s, t_cls.index_select(dim, self.teacher_cols.to(t_cls.device))

    def teacher_only(self, t_cls: torch.Tensor, dim: int = -1) -> bool:
        """Whether the teacher has classes that teach no student class."""
        return t_cls.shape[dim] > self.teacher_cols.numel()

    def extra_repr(self) -> str:
        return f"student_classes={self.nc}, matched={self.teacher_cols.numel()}"


def matched_objectness(t_obj: torch.Tensor, t_cls: torch.Tensor) -> torch.Tensor:
    """The logit of sigma(t_obj) * max_c sigma(t_cls[..., c]): the teacher's probability of an object of one of
    the classes in t_cls (the matched ones), the score YOLOv5's NMS ranks by, restricted to them. float32
    logits in, (...) out; log-sigmoid form: no 0 * inf. Never above t_obj (where q rounds to 1, log(1 - q) is
    -inf and the logit inf: t_obj is then the exact answer to float32 precision)."""
    log_q = F.logsigmoid(t_obj) + F.logsigmoid(t_cls).amax(-1)  # log q, q = sigma(obj) * max sigma(cls)
    return torch.minimum(log_q - torch.log(-torch.expm1(log_q)), t_obj)  # log q - log(1 - q)


def binary_kl(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bern(sigma(t)) || Bern(sigma(s))); exactly 0 where s == t (log-sigmoid form)."""
    q = torch.sigmoid(logits_t)
    return q * (F.logsigmoid(logits_t) - F.logsigmoid(logits_s)) + (1 - q) * (
        F.logsigmoid(-logits_t) - F.logsigmoid(-logits_s))


def soft_bce(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Elementwise BCE(sigma(s), sigma(t)) = binary_kl + H(sigma(t)); its minimum over s is the entropy."""
    return F.binary_cross_entropy_with_logits(logits_s, torch.sigmoid(logits_t), reduction="none")


def centred_bce(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """soft_bce minus the teacher's binary entropy H(sigma(t)), computed without a graph: the same gradient
    as soft_bce (H does not depend on the student), but 0 at s == t, so a logged value reads how far the
    student is from the teacher instead of the teacher's entropy (~ln 2 per soft element)."""
    with torch.no_grad():
        entropy = soft_bce(logits_t, logits_t)
    return soft_bce(logits_s, logits_t) - entropy
