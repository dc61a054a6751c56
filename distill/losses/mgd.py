"""Masked generative distillation (`mgd`): the teacher's maps regenerated from randomly masked student maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.losses._detection import PairedMaps
from distill.registry import Option, register
from utils.general import UserError

# A third of the detection loss at the first batch (bench/kd_grad_balance.py --recipes mgd --img 192 --batches 1:
# fresh yolov5n <- weights/teacher-shapes-yolov5s.pt, 16 shapes images at 192 px): measured 904x at weight 1, so
# 3.7e-4 -> 0.33x. v8: fresh yolov8n <- weights/teacher-shapes-yolov8s.pt, same batch, hyp.v8: 57.3x at weight 1,
# so 6e-3 -> 0.34x. (The paper's alpha 2e-5 multiplies a sum over H x W positions: ~0.13 at P3 of a 640 px image.)
MGD_WEIGHT, MGD_V8_WEIGHT = 3.7e-4, 6e-3


@register("mgd", default_weight=MGD_WEIGHT, v8_weight=MGD_V8_WEIGHT, default_layers="detect_inputs",
          title="masked generative distillation (MGD)",
          options={"mask_ratio": Option("MGD: share of the student's positions masked (lambda)",
                                        lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.65")})
class MaskedGenerativeDistillation(PairedMaps):
    """MGD, masked generative distillation (Yang et al., ECCV 2022, arXiv:2205.01529).

    Per pair k (equal H x W): S' = align(S) (a 1x1 conv with bias when widths differ, else the identity),
    M (B, 1, H, W) = 0 at a random share mask_ratio (lambda) of the positions, 1 elsewhere, and the generator
    G = Conv3x3 -> ReLU -> Conv3x3 (c_T -> c_T) regenerates the teacher's full map from S' * M:
        loss = sum_k sum_{b,h,w} sum_c (T - G(S' * M))^2 / (B * H_k * W_k)
    The paper's sum over everything / B, times alpha_mgd = 2e-5 (detection, lambda 0.65), grows with the map
    size; here it is a mean over positions (summed over channels), so the registered weight plays alpha's part
    at any image size (tests/test_kd_scale.py). Float32 squares and sums with autocast off; the convs run under
    the caller's autocast.

    The mask: drawn in training mode only (eval() turns it off, as dropout's: a deterministic value for probes),
    from a private generator seeded by (seed, ctx.iteration, pair, DDP rank), so the global RNG stream of the run
    is untouched and two calls at one step mask alike. Not 0 at student == teacher (the masked positions must
    be regenerated from their neighbours): zero_at_optimum False; the gradient there is 0 with G at the identity.
    """

    name = "mgd"
    zero_at_optimum = False

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], mask_ratio: float = 0.65,
                 seed: int = 0):
        super().__init__(student_channels, teacher_channels)
        if not 0 <= mask_ratio < 1:
            raise UserError(f"mgd: mask_ratio (--mgd_mask_ratio) must be in [0, 1), got {mask_ratio}; the paper uses "
                            "0.65 for detection")
        self.mask_ratio, self.seed = float(mask_ratio), int(seed)
        self.adapters = nn.ModuleList(nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity()
                                      for cs, ct in zip(self.student_channels, self.teacher_channels))
        self.generators = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ct, ct, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 3, padding=1))
            for ct in self.teacher_channels)

    def mask(self, x: Tensor, k: int, iteration: int) -> Tensor:
        """(B, 1, H, W) keep-mask of pair k at this step, x's dtype: 1 kept, 0 masked (share mask_ratio)."""
        g = torch.Generator(device=x.device)  # made per call: a module holding one could not be deep-copied
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        g.manual_seed(((self.seed * 1_000_003 + iteration) * 101 + k) * 1031 + rank)
        keep = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=g, device=x.device) >= self.mask_ratio
        return keep.to(x.dtype)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        iteration = int(getattr(ctx, "iteration", 0) or 0)
        loss = torch.zeros((), device=device)
        for k, (s, t, align, gen) in enumerate(zip(student_feats, teacher_feats, self.adapters, self.generators)):
            s = align(s)
            if self.training and self.mask_ratio > 0:
                s = s * self.mask(s, k, iteration)
            g = gen(s)
            with no_autocast(device):
                err = (fp32(g) - fp32(t.detach())).pow(2).sum(1)  # (B, H, W): summed over channels
                loss = loss + err.mean()  # mean over the B x H x W positions
        return loss

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio:g}"
