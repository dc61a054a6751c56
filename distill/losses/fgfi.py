"""Fine-grained feature imitation (`imitation`, FGFI): the student imitates the teacher near objects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.hooks import unwrap_parallel
from distill.imitation import centre_region_mask, imitation_mask
from distill.losses._detection import FeatureLoss, ShapeError, level_of, zero_with_graph
from distill.registry import Option, register
from utils.general import UserError


# 2e-4: raw 331 x 2e-4 = a third of the detection loss; 0.01 is the paper's (and the official code's) lambda
@register("imitation", default_weight=2e-4, v8_weight=0.01, default_layers="detect_inputs", title="imitation (FGFI)",
          options={"psi": Option("imitation mask: a cell is positive when an anchor has IoU > psi x the box's best",
                                 lambda v: 0 < v <= 1, "in (0, 1], e.g. 0.5"),
                   "warmup": Option("imitation off for this many steps")})
class FineGrainedImitation(FeatureLoss):
    """Fine-grained feature imitation, FGFI (Wang et al., CVPR 2019, arXiv:1906.03609).

    Per pair k (student (B, c_S, H, W), teacher (B, c_T, H, W), same H x W, at a Detect level):
    A = ReLU(conv3x3(S)) (c_S -> c_T, weights ~ N(0, 1e-4) as in the official code), mask I (B, H, W)
    from imitation_mask with the student's anchors of the level whose grid is H x W (an anchor-free v8
    student: centre_region_mask, anchor points inside a box's centre region), and
        loss = sum_k sum_{b,h,w} I * sum_c (A - T)^2 / (2 * N_p),   N_p = sum_k sum I (0 when N_p == 0).
    Returns 0 (still connected to the adapters) for ctx.iteration < warmup. The ReLU (the paper's
    ResNet features are >= 0) cannot reach SiLU's negative values (>= -0.28): a small floor remains, so
    the loss is 0 at student == teacher (identity adapter) only where the teacher maps are >= 0.
    """

    needs = ("targets", "student", "student_out")
    name = "imitation"
    size_hint = "use 'mse' for a strided adapter"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], psi: float = 0.5,
                 warmup: int = 400, init_std: float = 1e-4):
        super().__init__(student_channels, teacher_channels)
        self.psi, self.warmup = float(psi), int(warmup)
        self.adapters = nn.ModuleList(nn.Conv2d(cs, ct, 3, padding=1)
                                      for cs, ct in zip(self.student_channels, self.teacher_channels))
        for conv in self.adapters:
            nn.init.normal_(conv.weight, std=init_std)
            nn.init.zeros_(conv.bias)

    def masks(self, teacher_feats: Sequence[Tensor], ctx: KDContext) -> list[Tensor]:
        """Imitation mask (B, H, W) bool of each pair, from ctx.targets and the student's anchors."""
        if ctx.targets is None or ctx.student is None:
            raise UserError("imitation needs ctx.targets and ctx.student (the anchors come from its Detect)")
        detect = unwrap_parallel(ctx.student).model[-1]
        if getattr(detect, "family", "v5") == "v8":  # anchor points: the centre-region rule (distill/imitation.py)
            return self._centre_masks(teacher_feats, ctx)
        if not (hasattr(detect, "anchors") and isinstance(getattr(detect, "stride", None), Tensor)):
            raise UserError(f"imitation needs an anchor-based YOLOv5 Detect head, the student ends in "
                            f"{type(detect).__name__}")
        device = teacher_feats[0].device
        stride = detect.stride.detach().float().cpu()  # read as Python numbers: no device sync per level
        anchors_px = detect.anchors.detach().float().to(device) * stride.to(device).view(-1, 1, 1)  # grid -> px
        levels = [level_of("imitation", k, t, ctx.student_out, "student_out") for k, t in enumerate(teacher_feats)]
        shapes = [tuple(p.shape[2:4]) for p in ctx.student_out]
        with no_autocast(device):  # box coordinates in float32 whatever the caller's autocast
            per_level = imitation_mask(ctx.targets.to(device), anchors_px, stride, shapes,
                                       teacher_feats[0].shape[0], self.psi)
        return [per_level[lv] for lv in levels]

    def _centre_masks(self, teacher_feats: Sequence[Tensor], ctx: KDContext) -> list[Tensor]:
        """Masks for an anchor-free (v8) student: centre_region_mask on the grids of its raw
        (B, 4*reg_max + nc, ny, nx) output levels; each pair takes the level of its teacher map's H x W."""
        out = ctx.student_out
        if not isinstance(out, (list, tuple)) or not all(isinstance(p, Tensor) and p.dim() == 4 for p in out):
            raise ShapeError("imitation: ctx.student_out must be the raw per-level maps of the v8 head (train mode)")
        shapes = [tuple(p.shape[2:4]) for p in out]
        levels = []
        for k, t in enumerate(teacher_feats):
            if tuple(t.shape[-2:]) not in shapes:
                raise ShapeError(f"imitation: pair {k} teacher map {tuple(t.shape)} matches no head level grid "
                                 f"{shapes}; map this loss to the maps entering the head")
            levels.append(shapes.index(tuple(t.shape[-2:])))
        device = teacher_feats[0].device
        with no_autocast(device):
            per_level = centre_region_mask(ctx.targets.to(device), shapes, teacher_feats[0].shape[0])
        return [per_level[lv] for lv in levels]

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        if ctx.iteration < self.warmup:
            return zero_with_graph(self, device)
        masks = self.masks(teacher_feats, ctx)
        total, positives = torch.zeros((), device=device), torch.zeros((), device=device)
        for s, t, conv, mask in zip(student_feats, teacher_feats, self.adapters, masks):
            a = F.relu(conv(s))
            with no_autocast(device):
                err = (fp32(a) - fp32(t.detach())).pow(2).sum(1)  # (B, H, W)
                total = total + torch.where(mask, err, torch.zeros_like(err)).sum()
                positives = positives + mask.sum()
        return total / (2 * positives.clamp(min=1))  # total is 0 when there are no positives
