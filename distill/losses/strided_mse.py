"""Feature MSE through a strided adapter (`mse`), the YOLOv8 KD seed's ver1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.common import fp32, no_autocast
from distill.context import KDContext
from distill.losses._detection import FeatureLoss, ShapeError
from distill.registry import register


# No published weight (the seed leaves it to the user). For YOLOv5 students 1 made the term ~18x the detection
# loss and the student fell below the plain baseline (20 epochs at 160 px, seed 0: 0.027 / 0.008 mAP); 0.002
# (raw 34.1: a third of the detection loss) gave 0.164 / 0.088, output KD alone 0.167 / 0.092. YOLOv8 students
# keep the seed's plain sum, 1.
@register("mse", default_weight=2e-3, v8_weight=1.0, default_layers="detect_inputs", title="strided feature MSE")
class StridedFeatureMSE(FeatureLoss):
    """Feature MSE through a strided 3x3 adapter (FitNets, Romero et al., ICLR 2015; YOLOv8 KD 'ver1' seed).

    Per pair: r = student H / teacher H (an integer, equal for W), A = ReLU(conv3x3(S, stride r, pad 1))
    (c_S -> c_T; the conv weights do not depend on r, so r is read from the shapes at each call), and
    loss_k = mean((A - T)^2) over (B, C, H, W); summed over pairs. Weights: PyTorch's default init.
    Like imitation's, the ReLU adapter reaches only teacher values >= 0.
    """

    name = "mse"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__(student_channels, teacher_channels)
        self.adapters = nn.ModuleList(nn.Conv2d(cs, ct, 3, padding=1)
                                      for cs, ct in zip(self.student_channels, self.teacher_channels))

    def check_size(self, k: int, s: tuple, t: tuple) -> None:
        """Student H, W = r x teacher H, W with one integer r >= 1."""
        (hs, ws), (ht, wt) = s[2:], t[2:]
        if hs % ht or ws % wt or hs // ht != ws // wt or hs < ht:
            raise ShapeError(f"mse: pair {k} student map {s} is not an integer multiple (same in H and W) of "
                             f"teacher map {t}; the strided adapter needs student size = r x teacher size, "
                             "r = 1, 2, ... (pick a student layer at the same or a finer stride)")

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, conv in zip(student_feats, teacher_feats, self.adapters):
            r = s.shape[-2] // t.shape[-2]
            a = F.relu(F.conv2d(s, conv.weight, conv.bias, stride=r, padding=1))  # (B, c_T, H_T, W_T)
            with no_autocast(device):
                loss = loss + F.mse_loss(fp32(a), fp32(t.detach()))
        return loss
