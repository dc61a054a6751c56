"""Instance relationship graph (`irg`): relations between the images of a batch and between layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.common import as_map, fp32, no_autocast
from distill.registry import register


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


@register("irg", title="instance relationship graph")
class IRGLoss(nn.Module):
    """Instance relationship graph (Liu et al., CVPR 2019, "Knowledge Distillation via IRG"), KD-Zoo's form.

    Tensor contract: all the pairs mapped to it, in network order, each (B, ...) per instance (maps or
    vectors; student and teacher widths may differ except for the last pair). With n pairs, computed in
    float32:
        vert = MSE(S_n, T_n)                                   the last pair (logits): equal shapes;
               not computed (0) when vert = 0
        edge = mean_k MSE(E(S_k), E(T_k)) over all n pairs. E(X) is the (B, B) matrix of squared Euclidean
               distances between the flattened instances of X (clamped at 0, the diagonal exactly 0),
               divided by its largest entry (the max over the whole matrix, floored at the smallest
               positive float so an all-equal batch gives zeros, not NaN)
        tran = mean_k MSE(D(S_k, S_{k+1}), D(T_k, T_{k+1})) over the n - 1 consecutive pairs; 0 when n = 1.
               D(a, b) is the (B,) squared Euclidean distance, per instance, between two layers of one
               model brought to one shape parameter-free (_common_shape: the larger H x W average-pooled
               to the smaller, the wider channel axis averaged down to the narrower, a vector taken as a
               1 x 1 map), divided by its largest entry over the batch (floored the same way)
        loss = vert * vert_loss + edge * edge_loss + tran * tran_loss   (KD-Zoo: 0.1, 5.0, 5.0)
    Both E and D are divided by their max, as KD-Zoo does (its euclidean_dist_feat / euclidean_dist_fm and
    euclidean_dist_fms with squared=True): relations, not magnitudes, are compared, and every entry lies
    in [0, 1] whatever the feature size (undivided, D grows with it). Exactly 0 at student == teacher. A
    relation over the batch: weak with very small batches (with B = 1, E is 0 and the edge term is 0).
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
