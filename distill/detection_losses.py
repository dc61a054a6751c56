"""Feature distillation losses built for detectors: FGFI imitation, CWD, strided MSE, PKD, score-weighted L2.

Contract (distill/context.py): `loss(student_feats, teacher_feats, ctx) -> fp32 scalar`, where the lists
hold the (B, C, H, W) maps of the layer pairs mapped to the loss, in pair order. Adapters are built in
__init__ from `student_channels` / `teacher_channels` (one entry per pair), so the optimizer sees them.

Precision: adapters run under the caller's autocast (cheap convs in bf16/fp16 on a GPU); every loss
term (squares, softmax, standardisation, sums) is computed in float32 with autocast disabled. Teacher
maps and outputs are detached: no gradient reaches the teacher.

Reduction across pairs: CWD, MSE and PKD add one term per pair, as mmrazor configures one loss per FPN
level, so the published per-level weights apply. Imitation and score-weighted L2 are normalised over
all pairs together (positive locations, total weight), which keeps the single-map scale of the papers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.context import KDContext
from distill.feature_weights import BALANCED_WEIGHTS, DEFAULT_WEIGHTS, PAPER_WEIGHTS  # noqa: F401 (re-exported)
from distill.hooks import unwrap_parallel
from distill.imitation import centre_region_mask, imitation_mask
from utils.general import UserError


def _fp32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


class ShapeError(UserError, ValueError):
    """Layer shapes a loss cannot take: a UserError for the scripts, a ValueError for the engine's
    build-time check_shapes (which adds the loss's config entry and layer names)."""


class _FeatureLoss(nn.Module):
    """Shared contract: channel lists fixed at build, shapes checked by check_shapes (also at each call)."""

    kind = "feature"
    needs: tuple[str, ...] = ()
    # 0 at student == teacher with the adapters at the identity; behind the ReLU adapters of imitation,
    # mse and scorel2 only where the teacher maps are >= 0 (SiLU features dip to -0.28)
    zero_at_optimum = True
    name = ""
    size_hint = "pick layers at the same stride"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels) or not len(student_channels):
            raise ShapeError(f"{self.name}: need one student and one teacher channel count per layer pair, "
                             f"got {list(student_channels)} and {list(teacher_channels)}")
        self.student_channels = [int(c) for c in student_channels]
        self.teacher_channels = [int(c) for c in teacher_channels]

    def check_shapes(self, student_shapes: Sequence[Sequence[int]], teacher_shapes: Sequence[Sequence[int]]) -> None:
        """ShapeError unless there is one (B, C, H, W) map per built pair with the built widths, equal B,
        and H x W the loss can relate (check_size)."""
        if not (len(student_shapes) == len(teacher_shapes) == len(self.student_channels)):
            raise ShapeError(f"{self.name}: built for {len(self.student_channels)} layer pairs but got "
                             f"{len(student_shapes)} student and {len(teacher_shapes)} teacher maps")
        for k, (s, t) in enumerate(zip(student_shapes, teacher_shapes)):
            s, t = tuple(s), tuple(t)
            if len(s) != 4 or len(t) != 4 or s[0] != t[0]:
                raise ShapeError(f"{self.name}: pair {k} needs (B, C, H, W) maps of equal B, got student {s}, "
                                 f"teacher {t}")
            if s[1] != self.student_channels[k] or t[1] != self.teacher_channels[k]:
                raise ShapeError(f"{self.name}: pair {k} was built for {self.student_channels[k]} -> "
                                 f"{self.teacher_channels[k]} channels but got student {s}, teacher {t}; "
                                 "rebuild the loss from the probed layer widths")
            self.check_size(k, s, t)

    def check_size(self, k: int, s: tuple, t: tuple) -> None:
        """Default: equal H x W."""
        if s[2:] != t[2:]:
            raise ShapeError(f"{self.name}: pair {k} has student map {s} and teacher map {t}; {self.name} "
                             f"needs equal H x W ({self.size_hint})")

    def _check(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> None:
        self.check_shapes([tuple(s.shape) for s in student_feats], [tuple(t.shape) for t in teacher_feats])


def _zero_with_graph(module: nn.Module, device: torch.device) -> Tensor:
    """0.0 connected to every parameter, so DDP sees them used when a loss is switched off (warm-up)."""
    zero = torch.zeros((), device=device)
    for p in module.parameters():
        zero = zero + p.sum() * 0.0
    return zero


def _align_1x1(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """A 1x1 conv per pair whose widths differ, nn.Identity where they match. No bias: both CWD's
    spatial softmax and PKD's standardisation remove a per-channel constant, it would get no gradient."""
    return nn.ModuleList(nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity()
                         for cs, ct in zip(student_channels, teacher_channels))


def _level_of(name: str, k: int, t: Tensor, out: object, what: str) -> int:
    """Index of the Detect level whose grid (ny, nx) equals the teacher map's H x W."""
    if not isinstance(out, (list, tuple)) or not all(isinstance(p, Tensor) and p.dim() == 5 for p in out):
        raise ShapeError(f"{name}: ctx.{what} must be the raw per-level list (B, na, ny, nx, 5+nc) of a "
                         "YOLOv5 Detect head in train mode")
    sizes = [tuple(p.shape[2:4]) for p in out]
    if tuple(t.shape[-2:]) not in sizes:
        raise ShapeError(f"{name}: pair {k} teacher map {tuple(t.shape)} matches no Detect level grid {sizes}; "
                         "map this loss to layers at the detection strides (the maps entering Detect)")
    return sizes.index(tuple(t.shape[-2:]))


def detect_input_layers(model: nn.Module) -> list[str]:
    """'model.i' names of the layers whose outputs enter the YOLOv5 Detect head (P3, P4, P5 order):
    the default layers of these losses, the levels the anchors and teacher scores belong to."""
    model = unwrap_parallel(model)
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or not isinstance(getattr(head, "f", None), (list, tuple)):
        raise UserError(f"{type(model).__name__} has no YOLOv5 head with input layers (.model[-1].f); "
                        "pass the distillation layers explicitly")
    head_index = len(layers) - 1
    return [f"model.{i if i >= 0 else head_index + i}" for i in head.f]  # -1: the layer before the head


class FineGrainedImitation(_FeatureLoss):
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
        levels = [_level_of("imitation", k, t, ctx.student_out, "student_out") for k, t in enumerate(teacher_feats)]
        shapes = [tuple(p.shape[2:4]) for p in ctx.student_out]
        with _no_autocast(device):  # box coordinates in float32 whatever the caller's autocast
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
        with _no_autocast(device):
            per_level = centre_region_mask(ctx.targets.to(device), shapes, teacher_feats[0].shape[0])
        return [per_level[lv] for lv in levels]

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        if ctx.iteration < self.warmup:
            return _zero_with_graph(self, device)
        masks = self.masks(teacher_feats, ctx)
        total, positives = torch.zeros((), device=device), torch.zeros((), device=device)
        for s, t, conv, mask in zip(student_feats, teacher_feats, self.adapters, masks):
            a = F.relu(conv(s))
            with _no_autocast(device):
                err = (_fp32(a) - _fp32(t.detach())).pow(2).sum(1)  # (B, H, W)
                total = total + torch.where(mask, err, torch.zeros_like(err)).sum()
                positives = positives + mask.sum()
        return total / (2 * positives.clamp(min=1))  # total is 0 when there are no positives


class ChannelWiseDivergence(_FeatureLoss):
    """Channel-wise distillation, CWD (Shu et al., ICCV 2021, arXiv:2011.13256).

    Per pair (equal H x W; student aligned by a bias-free 1x1 conv when widths differ), each of the
    N x C maps becomes a distribution over its H*W positions, softmax(x / tau):
        loss_k = tau^2 / (N * C) * sum_{n,c} KL(softmax(T_nc / tau) || softmax(S_nc / tau))
    summed over pairs (mmrazor ChannelWiseDivergence). Softmax and KL in float32.
    """

    name = "cwd"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], tau: float = 1.0):
        super().__init__(student_channels, teacher_channels)
        if not tau > 0:
            raise UserError(f"cwd: tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.adapters = _align_1x1(self.student_channels, self.teacher_channels)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, align in zip(student_feats, teacher_feats, self.adapters):
            s = align(s)
            n, c = t.shape[:2]
            with _no_autocast(device):
                log_s = F.log_softmax(_fp32(s).flatten(2) / self.tau, dim=-1)  # (N, C, H*W)
                log_t = F.log_softmax(_fp32(t.detach()).flatten(2) / self.tau, dim=-1)
                kl = (log_t.exp() * (log_t - log_s)).sum()
                loss = loss + kl * self.tau**2 / (n * c)
        return loss


class StridedFeatureMSE(_FeatureLoss):
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
            with _no_autocast(device):
                loss = loss + F.mse_loss(_fp32(a), _fp32(t.detach()))
        return loss


class PearsonDistillation(_FeatureLoss):
    """PKD, Pearson correlation distillation (Cao et al., NeurIPS 2022, arXiv:2207.02039).

    Per pair: the student map is resized (bilinear) to the teacher's H x W when strides differ and
    aligned by a bias-free 1x1 conv when widths differ; both are standardised per channel over
    (N, H, W), x_hat = (x - mean) / (std + eps) (population std), and loss_k = mean((S_hat - T_hat)^2) / 2,
    which is 1 - (mean over channels of the Pearson r) as eps -> 0. Summed over pairs.
    """

    name = "pkd"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], eps: float = 1e-6):
        super().__init__(student_channels, teacher_channels)
        self.eps = float(eps)
        self.adapters = _align_1x1(self.student_channels, self.teacher_channels)

    def check_size(self, k: int, s: tuple, t: tuple) -> None:
        """Any sizes: the student map is resized to the teacher's."""

    def standardise(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> same shape, each channel at mean 0 and std 1 over (N, H, W), float32."""
        x = _fp32(x)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, correction=0)
        return (x - mean) / (std + self.eps)

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, align in zip(student_feats, teacher_feats, self.adapters):
            if s.shape[-2:] != t.shape[-2:]:  # resize first: the map is smaller for the 1x1 conv
                s = F.interpolate(s, size=tuple(t.shape[-2:]), mode="bilinear", align_corners=False)
            s = align(s)
            with _no_autocast(device):
                loss = loss + F.mse_loss(self.standardise(s), self.standardise(t.detach())) / 2
        return loss


def teacher_score(p: Tensor) -> Tensor:
    """Teacher confidence per cell (B, ny, nx) from a raw level (B, na, ny, nx, 5+nc), float32.

    max over anchors of sigma(obj) * max_c sigma(cls): the score YOLOv5 ranks detections by (NMS
    conf = obj x cls). With nc == 1 the class logit is never trained (ComputeLoss skips it), so the
    score is sigma(obj) alone.
    """
    p = _fp32(p.detach())
    score = torch.sigmoid(p[..., 4])  # (B, na, ny, nx)
    if p.shape[-1] > 6:
        score = score * torch.sigmoid(p[..., 5:]).amax(-1)
    return score.amax(1)


class ScoreWeightedL2(_FeatureLoss):
    """Teacher-score-weighted feature L2 (ultralytics 8.4 built-in distillation, PR #24894, 2026).

    Per pair (equal H x W, at a Detect level of the teacher): P = conv1x1(ReLU(conv1x1(S))) (c_S -> c_T
    -> c_T), w = teacher_score of the teacher's output level whose grid is H x W (B, H, W), and
        loss = sum_k sum_{b,h,w} w * sum_c (P - T)^2 / sum_k (C_T,k * sum_{b,h,w} w)
    i.e. a w-weighted mean of the element-wise squared error over all pairs (0 when every w is 0).
    """

    needs = ("teacher_out",)
    name = "scorel2"

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__(student_channels, teacher_channels)
        self.projectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cs, ct, 1), nn.ReLU(), nn.Conv2d(ct, ct, 1))
            for cs, ct in zip(self.student_channels, self.teacher_channels))

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], ctx: KDContext) -> Tensor:
        self._check(student_feats, teacher_feats)
        device = student_feats[0].device
        total, norm = torch.zeros((), device=device), torch.zeros((), device=device)
        for k, (s, t, proj) in enumerate(zip(student_feats, teacher_feats, self.projectors)):
            level = _level_of("scorel2", k, t, ctx.teacher_out, "teacher_out")
            p = proj(s)
            with _no_autocast(device):
                w = teacher_score(ctx.teacher_out[level]).to(device)  # (B, H, W)
                err = (_fp32(p) - _fp32(t.detach())).pow(2).sum(1)  # (B, H, W)
                total = total + (w * err).sum()
                norm = norm + w.sum() * t.shape[1]
        return total / norm.clamp(min=torch.finfo(torch.float32).tiny)


LOSSES = {
    "imitation": FineGrainedImitation,
    "cwd": ChannelWiseDivergence,
    "mse": StridedFeatureMSE,
    "pkd": PearsonDistillation,
    "scorel2": ScoreWeightedL2,
}
