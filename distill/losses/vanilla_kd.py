"""Hinton KD on logits (`vanilla_kd`), the classification distillation of the Distiller engine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.common import fp32, no_autocast
from distill.registry import register


@register("vanilla_kd", title="Hinton KD (logits)")
class VanillaKD(nn.Module):
    """Hinton KD (Hinton et al. 2015, arXiv:1503.02531): tau^2 * KL(softmax(T/tau) || softmax(S/tau)).

    Tensor contract: per pair, logits (B, K) (or (B, K, ...), the softmax runs over dim 1) of equal shape;
    KL summed over the K classes and averaged over the batch (and positions): torchdistill's 'batchmean'.
    Sum over pairs. Exactly 0 at student == teacher. Spec §3.1: T = 4 with weight 0.9 (CE 0.1).
    """

    kind = "logits"
    needs = ()
    zero_at_optimum = True

    def __init__(self, T: float = 4.0):
        super().__init__()
        if not T > 0:
            raise ValueError(f"vanilla_kd: T must be > 0, got {T}")
        self.T = float(T)

    def check_shapes(self, s_shapes, t_shapes) -> None:
        for i, (s, t) in enumerate(zip(s_shapes, t_shapes)):
            if tuple(s) != tuple(t):
                raise ValueError(f"vanilla_kd: pair {i} student logits {tuple(s)} vs teacher {tuple(t)}: the class "
                                 "counts (dim 1) must be equal; distil the classifier layers of both models")

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        self.check_shapes([s.shape for s in student_feats], [t.shape for t in teacher_feats])
        device, tau = student_feats[0].device, self.T
        loss = torch.zeros((), device=device)
        with no_autocast(device):
            for s, t in zip(student_feats, teacher_feats):
                kl = F.kl_div(F.log_softmax(fp32(s) / tau, dim=1), F.log_softmax(fp32(t.detach()) / tau, dim=1),
                              reduction="none", log_target=True)
                loss = loss + kl.sum(1).mean() * tau * tau
        return loss
