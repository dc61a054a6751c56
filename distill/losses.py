"""The distillation losses, in one registry (`LOSSES`, bottom of this file) with one call form:

    loss(student_feats: list[Tensor], teacher_feats: list[Tensor], ctx: KDContext) -> float32 scalar

The lists hold the tensors captured at the layer pairs mapped to the loss (distill.distiller), in pair
order; see distill/context.py for ctx. Every loss cites its paper in one docstring line and states its
tensor contract. Optional class attributes the engine reads:
    kind             'logits' | 'feature' | 'relation' | 'output' | 'dfl_output' (documentation and tests)
    needs            ctx fields the loss reads besides the features (checked by the engine)
    zero_at_optimum  True when the loss is exactly 0 at student == teacher (else: at its minimum there)
    check_shapes(student_shapes, teacher_shapes)  raises ValueError for shapes the loss cannot take;
                     called at build when the engine could probe the layers, else at the first forward
A loss owning learnable alignment takes `student_channels` / `teacher_channels` (one per pair) in
__init__; the engine fills them from a dummy forward. Output losses of YOLOv5 live in
distill/yolo_output.py, of the v8 DFL head in distill/v8_output.py, detection feature losses in
distill/detection_losses.py; all merge here.

Notation: S = student, T = teacher, tau (T) = temperature. Teacher tensors are always detached.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.adapters import apply_adapters, build_adapters
from distill.common import as_map, fp32, match_size, no_autocast
from distill.v8_output import LOSSES as _V8_LOSSES
from distill.yolo_output import LOSSES as _YOLO_LOSSES
from distill.yolo_output import (  # noqa: F401  (re-exported: the output KD math)
    OutputBCEKD,
    OutputKLKD,
    OutputL2KD,
    level_balance,
)


def _check_feature_pairs(name: str, student_feats, teacher_feats) -> None:
    if len(student_feats) != len(teacher_feats) or not len(student_feats):
        raise ValueError(f"{name}: {len(student_feats)} student tensors but {len(teacher_feats)} teacher tensors")
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
            raise ValueError(f"{name}: pair {i} needs (B, C, H, W) maps with equal B, got "
                             f"{tuple(s.shape)} and {tuple(t.shape)}")


def _check_channels(name: str, s_shapes, t_shapes, pairs=None, hint: str = "") -> None:
    """ValueError naming the first pair whose channel counts (dim 1) differ."""
    for i, (s, t) in enumerate(zip(s_shapes, t_shapes)):
        if (pairs is None or i in pairs) and (len(s) < 2 or len(t) < 2 or s[1] != t[1]):
            raise ValueError(f"{name}: pair {i} has student shape {tuple(s)} but teacher {tuple(t)}; {name} "
                             f"needs equal channel counts{hint}")


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


class AttentionTransfer(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv:1612.03928).

    Tensor contract: per pair (B, C_S, H, W) and (B, C_T, H', W'); channel counts may differ.
    Q = mean_c |A_c|^p (p = 2) per sample, (B, H, W); the student map is resized (bilinear) to the
    teacher's H x W if they differ; flattened and L2-normalised per sample. Loss = sum over pairs of
    the squared L2 distance ||Q_S - Q_T||^2 (summed over positions, as in the paper), averaged over the
    batch. Summing rather than averaging over positions (the authors' code) keeps the loss independent
    of the image size: each pair lies in [0, 4]. Exactly 0 at student == teacher.
    """

    kind = "feature"
    needs = ()
    zero_at_optimum = True

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = float(p)

    def attention(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W) L2-normalised attention map (resized to `size` first if given)."""
        q = fp32(x).abs().pow(self.p).mean(1, keepdim=True)  # (B, 1, H, W)
        if size is not None:
            q = match_size(q, size)
        return F.normalize(q.flatten(1), dim=1)

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        _check_feature_pairs("at", student_feats, teacher_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        with no_autocast(device):
            for s, t in zip(student_feats, teacher_feats):
                qt = self.attention(t.detach())
                qs = self.attention(s, size=tuple(t.shape[-2:]))
                loss = loss + (qs - qt).pow(2).sum(1).mean()
        return loss


class FitNetHint(nn.Module):
    """FitNet hints (Romero et al., ICLR 2015, arXiv:1412.6550): sum over pairs of mean((r(S) - T)^2).

    Tensor contract: per pair (B, C_S, H, W) and (B, C_T, H', W'). r is a learnable 1x1 conv per pair
    (distill.adapters), built from student_channels/teacher_channels (the engine probes them); without
    them r is the identity and the channel counts must match. The student map is resized (bilinear) to
    the teacher's H x W if needed. Exactly 0 at student == teacher with r at the identity.
    """

    kind = "feature"
    needs = ()
    zero_at_optimum = True

    def __init__(self, student_channels: Sequence[int] | None = None, teacher_channels: Sequence[int] | None = None):
        super().__init__()
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError("fitnet: give both student_channels and teacher_channels, or neither")
        self.adapters = build_adapters(student_channels, teacher_channels) if student_channels is not None else None

    def check_shapes(self, s_shapes, t_shapes) -> None:
        if self.adapters is None:
            _check_channels("fitnet", s_shapes, t_shapes, hint=" without adapters: give student_channels/"
                            "teacher_channels (or an example_input in the Distiller config) to build 1x1 adapters")
        else:
            for i, (s, t, a) in enumerate(zip(s_shapes, t_shapes, self.adapters)):
                if (s[1], t[1]) != (a.conv.in_channels, a.conv.out_channels):
                    raise ValueError(f"fitnet: pair {i} adapter was built for {a.conv.in_channels} -> "
                                     f"{a.conv.out_channels} channels but the maps are {tuple(s)} and {tuple(t)}")

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        _check_feature_pairs("fitnet", student_feats, teacher_feats)
        self.check_shapes([s.shape for s in student_feats], [t.shape for t in teacher_feats])
        if self.adapters is not None:
            student_feats = apply_adapters(self.adapters, student_feats)
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        with no_autocast(device):
            for s, t in zip(student_feats, teacher_feats):
                s = match_size(fp32(s), tuple(t.shape[-2:]))
                loss = loss + (s - fp32(t.detach())).pow(2).mean()
        return loss


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al., CVPR 2019, arXiv:1904.05835), RepDistiller's form.

    Tensor contract: per pair S (B, inC[, H, W]) and T (B, outC[, H', W']); (B, C) vectors are 1x1 maps.
    mu = conv1x1(inC->midC) ReLU conv1x1(midC->midC) ReLU conv1x1(midC->outC) applied to S; per channel
    variance sigma_c^2 = softplus(alpha_c) + eps, alpha initialised so sigma^2 = init_pred_var; the larger
    map is average-pooled to the smaller's H x W; loss = mean over (B, C, H, W) of
    0.5 * ((mu - T)^2 / sigma^2 + log sigma^2), summed over pairs. Its minimum over S is not 0: with
    mu(S) = T it is 0.5 * mean_c log sigma_c^2 (the variances are learnt with the student).
    Give inC, midC, outC for one pair (the seed's form), or student_channels/teacher_channels (one
    regressor per pair, midC = the teacher's channels), which the engine fills by probing.
    """

    kind = "feature"
    needs = ()
    zero_at_optimum = False

    def __init__(self, inC: int | None = None, midC: int | None = None, outC: int | None = None,
                 init_pred_var: float = 5.0, eps: float = 1e-5, student_channels: Sequence[int] | None = None,
                 teacher_channels: Sequence[int] | None = None):
        super().__init__()
        if inC is not None or outC is not None:
            if inC is None or outC is None:
                raise ValueError("vid: give both inC and outC (and optionally midC)")
            pairs = [(int(inC), int(midC or outC), int(outC))]
        elif student_channels is not None and teacher_channels is not None:
            pairs = [(int(cs), int(ct), int(ct)) for cs, ct in zip(student_channels, teacher_channels)]
        else:
            raise ValueError("vid needs inC/midC/outC, or student_channels/teacher_channels (an example_input "
                             "in the Distiller config lets the engine probe them)")
        if not init_pred_var > eps:
            raise ValueError(f"vid: init_pred_var must be > eps, got {init_pred_var}")
        self.eps = float(eps)
        self.channels = [(ci, co) for ci, _, co in pairs]
        self.regressors = nn.ModuleList(nn.Sequential(
            nn.Conv2d(ci, cm, 1, bias=False), nn.ReLU(), nn.Conv2d(cm, cm, 1, bias=False), nn.ReLU(),
            nn.Conv2d(cm, co, 1, bias=False)) for ci, cm, co in pairs)
        alpha0 = math.log(math.expm1(init_pred_var - eps))  # softplus^-1(init_pred_var - eps)
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((co,), alpha0)) for _, _, co in pairs)

    def check_shapes(self, s_shapes, t_shapes) -> None:
        if len(s_shapes) != len(self.channels):
            raise ValueError(f"vid: built for {len(self.channels)} layer pair(s) (inC/outC lists), mapped to "
                             f"{len(s_shapes)}; give one vid loss per pair or student_channels/teacher_channels")
        for i, (s, t, (ci, co)) in enumerate(zip(s_shapes, t_shapes, self.channels)):
            if len(s) < 2 or len(t) < 2 or (s[1], t[1]) != (ci, co):
                raise ValueError(f"vid: pair {i} has student {tuple(s)} and teacher {tuple(t)} but the loss was "
                                 f"built with inC={ci}, outC={co}: set inC/outC to the layers' channel counts")

    def variances(self) -> list[torch.Tensor]:
        """sigma_c^2 per pair, (outC,) each."""
        return [F.softplus(fp32(a)) + self.eps for a in self.log_scales]

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        self.check_shapes([s.shape for s in student_feats], [t.shape for t in teacher_feats])
        device = student_feats[0].device
        loss = torch.zeros((), device=device)
        for s, t, regressor, var in zip(student_feats, teacher_feats, self.regressors, self.variances()):
            s, t = as_map(s), as_map(t.detach())
            if s.shape[-2:] != t.shape[-2:]:  # the larger map is pooled to the smaller (RepDistiller)
                size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
                s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
            mu = regressor(s)
            with no_autocast(device):
                var = var.view(1, -1, 1, 1)
                loss = loss + (0.5 * ((fp32(mu) - fp32(t)) ** 2 / var + torch.log(var))).mean()
        return loss


def _pool_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, c, H, W) by averaging neighbouring channels (C = 2c: pairs, as KD-Zoo's IRG)."""
    if x.shape[1] == c:
        return x
    b, _, h, w = x.shape
    y = F.adaptive_avg_pool1d(x.flatten(2).transpose(1, 2), c)  # (B, H*W, C) -> (B, H*W, c)
    return y.transpose(1, 2).reshape(b, c, h, w)


def _common_shape(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two per-instance tensors of one model brought to one (B, c, h, w) shape, parameter-free.

    Vectors (B, D) against maps: the map is globally average-pooled. Maps: the larger H x W is average-
    pooled to the smaller (adaptive), the wider channel axis averaged down to the narrower.
    """
    a, b = as_map(a), as_map(b)
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    a, b = F.adaptive_avg_pool2d(a, (h, w)), F.adaptive_avg_pool2d(b, (h, w))
    c = min(a.shape[1], b.shape[1])
    return _pool_channels(a, c), _pool_channels(b, c)


def _edge_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, B) squared Euclidean distances of the flattened instances, divided by their max."""
    f = x.flatten(1)
    sq = f.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * f @ f.t()).clamp(min=0)
    d = d * (1 - torch.eye(len(f), device=f.device, dtype=f.dtype))  # exact zeros on the diagonal
    return d / d.max().clamp(min=torch.finfo(d.dtype).tiny)


class IRGLoss(nn.Module):
    """Instance relationship graph (Liu et al., CVPR 2019, "Knowledge Distillation via IRG"), KD-Zoo's form.

    Tensor contract: all the pairs mapped to it, in network order, each (B, ...) per instance (maps or
    vectors; student and teacher widths may differ except for the last pair). With n pairs:
        vert = MSE(S_n, T_n)                                   the last pair (logits): equal shapes
        edge = mean_k MSE(E(S_k), E(T_k)),  E = the (B, B) squared-distance matrix / its max
        tran = mean_k MSE(D(S_k, S_{k+1}), D(T_k, T_{k+1})),  k < n; D = the per-instance squared
               distance between two layers brought to one shape parameter-free (_common_shape),
               divided by its max over the batch like E; 0 when n = 1. (KD-Zoo leaves D raw: it then
               grows with the feature size, and diverged at lr 0.05 on 32x8x8 maps.)
        loss = vert * vert_loss + edge * edge_loss + tran * tran_loss   (KD-Zoo: 0.1, 5.0, 5.0)
    Exactly 0 at student == teacher. A relation over the batch: weak with very small batches.
    """

    kind = "relation"
    needs = ()
    zero_at_optimum = True

    def __init__(self, vert: float = 0.1, edge: float = 5.0, tran: float = 5.0):
        super().__init__()
        self.w_vert, self.w_edge, self.w_tran = float(vert), float(edge), float(tran)

    def check_shapes(self, s_shapes, t_shapes) -> None:
        if self.w_vert and tuple(s_shapes[-1]) != tuple(t_shapes[-1]):
            raise ValueError(f"irg: the vertex term compares the last pair, student {tuple(s_shapes[-1])} vs "
                             f"teacher {tuple(t_shapes[-1])}: map the logits (equal shapes) last, or set vert=0")

    def terms(self, student_feats, teacher_feats) -> dict[str, torch.Tensor]:
        """The three unweighted terms {'vert', 'edge', 'tran'}."""
        device = student_feats[0].device
        with no_autocast(device):
            s = [fp32(x) for x in student_feats]
            t = [fp32(x.detach()) for x in teacher_feats]
            vert = F.mse_loss(s[-1], t[-1]) if self.w_vert else torch.zeros((), device=device)
            edge = torch.stack([F.mse_loss(_edge_matrix(a), _edge_matrix(b)) for a, b in zip(s, t)]).mean()
            tran = torch.zeros((), device=device)
            if len(s) > 1:
                tran = torch.stack([F.mse_loss(self._transition(s[k], s[k + 1]), self._transition(t[k], t[k + 1]))
                                    for k in range(len(s) - 1)]).mean()
        return {"vert": vert, "edge": edge, "tran": tran}

    @staticmethod
    def _transition(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _common_shape(a, b)
        d = (a - b).flatten(1).pow(2).sum(1)  # (B,)
        return d / d.max().clamp(min=torch.finfo(d.dtype).tiny)

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        if len(student_feats) != len(teacher_feats) or not len(student_feats):
            raise ValueError(f"irg: {len(student_feats)} student tensors but {len(teacher_feats)} teacher tensors")
        self.check_shapes([s.shape for s in student_feats], [t.shape for t in teacher_feats])
        z = self.terms(student_feats, teacher_feats)
        return self.w_vert * z["vert"] + self.w_edge * z["edge"] + self.w_tran * z["tran"]


def _detection_losses() -> dict[str, type]:
    """distill/detection_losses.py's LOSSES when that module exists (it is built alongside this one)."""
    if importlib.util.find_spec("distill.detection_losses") is None:
        return {}
    from distill.detection_losses import LOSSES as detection

    return detection


LOSSES: dict[str, type] = {
    "vanilla_kd": VanillaKD,
    "vid": VIDLoss,
    "irg": IRGLoss,
    "at": AttentionTransfer,
    "fitnet": FitNetHint,
    **_YOLO_LOSSES,  # YoloKDLoss
    **_detection_losses(),
    **_V8_LOSSES,  # v8_output_kd
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the registered loss `name` with `kwargs`; ValueError lists the registered ones."""
    if name not in LOSSES:
        from distill.hooks import closest_names

        raise ValueError(f"unknown distillation loss type {name!r}{closest_names(name, LOSSES)}; registered: "
                         f"{', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
