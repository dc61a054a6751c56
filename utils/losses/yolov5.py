"""YOLOv5 v6.0 detection loss: target assignment, CIoU box loss, IoU-target objectness, BCE classes.

Units used throughout:
- targets: (N, 6) rows [img_idx, cls, x, y, w, h], xywh normalised to [0, 1] of the network input;
- anchors: (nl, na, 2) in *grid units* of their level (pixels / stride), exactly the Detect buffer;
- predictions: list of nl raw tensors (bs, na, ny, nx, 5 + nc) before any sigmoid.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.metrics import bbox_iou

# Hyp keys this loss reads, with their checks (engine/options.py gathers every module's HYP_KEYS):
# key -> (low, high, low_open, high_open, integer, what it is); None = unbounded on that side.
HYP_KEYS: dict[str, tuple] = {
    "box": (0, None, False, False, False, "box loss gain, e.g. 0.05"),
    "cls": (0, None, False, False, False, "class loss gain, e.g. 0.5"),
    "cls_pw": (0, None, True, False, False, "class BCE positive weight, e.g. 1.0"),
    "obj": (0, None, False, False, False, "objectness loss gain, e.g. 1.0"),
    "obj_pw": (0, None, True, False, False, "objectness BCE positive weight, e.g. 1.0"),
    "anchor_t": (1, None, True, False, False, "anchor-multiple threshold, e.g. 4.0; at 1 nothing matches"),
    "fl_gamma": (0, None, False, False, False, "focal loss gamma, 0 = off"),
    "label_smoothing": (0, 1, False, True, False, "set by --label-smoothing"),
}

# Objectness weight per output level (P3 small objects weigh most), as in v6.0.
_BALANCE = {3: [4.0, 1.0, 0.4]}
_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]

# Neighbour-cell offsets (own cell, then +x, +y, -x, -y), scaled by g = 0.5 in build_targets.
_OFFSETS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1))


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:
    """Label-smoothed BCE targets (positive, negative) = (1 - eps/2, eps/2)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017, arXiv:1708.02002) wrapped around a BCEWithLogitsLoss criterion."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the focal factor is applied element-wise before reducing

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def scale_loss_gains(hyp: dict, nc: int, nl: int, imgsz: int) -> dict:
    """Return a copy of hyp with the box/cls/obj gains scaled for nc classes, nl levels and imgsz pixels.

    This is what v6.0 train.py does once before building the loss (the v6.0 hyps are tuned for
    COCO's 80 classes, 3 levels and 640 px): box *= 3/nl, cls *= nc/80 * 3/nl,
    obj *= (imgsz/640)**2 * 3/nl. The input dict is not modified.
    """
    out = dict(hyp)
    out["box"] = hyp["box"] * 3 / nl
    out["cls"] = hyp["cls"] * nc / 80 * 3 / nl
    out["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * 3 / nl
    return out


def last_writes(cell: torch.Tensor, spare: int) -> torch.Tensor:
    """`cell` with every write but the last to each cell sent to `spare` (the cell after the map).

    `flat[cell] = values` with repeated cells keeps an unspecified one of their values once the indexing
    kernel runs on several threads (CPU) or blocks (CUDA): with 2 threads the same run gave different
    objectness losses from one process to the next. v6.0's rule is that the last target written to a cell
    sets it (its serial loop), so each cell keeps the write with the highest position: a max over positions,
    which does not depend on order, then writes that are not the last go to the spare cell. No host sync.
    """
    pos = torch.arange(cell.numel(), device=cell.device)
    last = torch.full((spare + 1,), -1, device=cell.device, dtype=pos.dtype).scatter_reduce_(0, cell, pos, "amax")
    return torch.where(last[cell] == pos, cell, spare)


def take_cells(p: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """The rows of a (bs, na, ny, nx, no) map at flat cell indices: p.view(-1, no)[cell], with a backward that
    sums the gradients of repeated cells in the same order on every run.

    Indexing's backward adds into the map with index_put_(accumulate=True). On a CPU with 2+ threads and
    32768+ elements that uses atomic float adds, so repeated cells (several targets in one cell, every
    invalid candidate on one benign cell) summed in thread order: two identical runs ended ~2e-6 apart
    after 3 epochs (the PyTorch docs list this backward as nondeterministic on CPU). index_select's
    backward, index_add_, adds in index order there, and is faster. On CUDA it is the other way round
    (index_add_ uses atomics, indexing's backward sorts first), so CUDA keeps indexing.
    """
    rows = p.reshape(-1, p.shape[-1])
    return rows[cell] if p.is_cuda else rows.index_select(0, cell)


class ComputeLoss:
    """v6.0 YOLOv5 loss. Call with (p, targets) -> (loss * bs of shape (1,), detached [box, obj, cls]).

    `labelled` (optional, (bs,) bool): which images carry labels. An unlabelled image (distillation on
    unlabeled images) has no targets, so box and class terms never see it; its objectness is left out too
    (an image without labels must not teach "no object here"): the objectness mean runs over the cells of
    the labelled images, and the loss is scaled by their count instead of bs (per labelled image as in a
    batch of those images alone). No labelled image: a loss of exactly 0. None: every image is labelled.

    hyp needs box, obj, cls, cls_pw, obj_pw, anchor_t and optionally fl_gamma (0) and
    label_smoothing (0). The gains are used as given: scale them first with scale_loss_gains.
    The loss is always computed in float32 (autocast is disabled inside), on the predictions' device.
    """

    sort_obj_iou = False  # v6.0 default: the last target written to a cell sets its objectness

    def __init__(self, hyp: dict, anchors: torch.Tensor, nc: int, autobalance: bool = False,
                 stride: list[float] | torch.Tensor | None = None, gr: float = 1.0):
        anchors = torch.as_tensor(anchors, dtype=torch.float32).detach()
        if anchors.ndim != 3 or anchors.shape[-1] != 2:
            raise ValueError(f"anchors must have shape (nl, na, 2) in grid units, got {tuple(anchors.shape)}")
        self.hyp = hyp
        self.nc = int(nc)
        self.nl, self.na = anchors.shape[:2]
        self.anchors = anchors.clone()
        self.gr = gr  # objectness target = (1 - gr) + gr * IoU
        self.anchor_t = float(hyp["anchor_t"])
        self.cp, self.cn = smooth_BCE(eps=hyp.get("label_smoothing", 0.0))
        self.balance = list(_BALANCE.get(self.nl, _BALANCE_DEFAULT[: self.nl]))
        self.autobalance = autobalance
        # With autobalance the gains are renormalised to the stride-16 level (v6.0); index 0 otherwise.
        strides = [float(s) for s in stride] if stride is not None else []
        self.ssi = strides.index(16.0) if autobalance and 16.0 in strides else 0
        self._cls_pw = float(hyp.get("cls_pw", 1.0))
        self._obj_pw = float(hyp.get("obj_pw", 1.0))
        self._fl_gamma = float(hyp.get("fl_gamma", 0.0))
        self._device = None
        self._to(torch.device("cpu"))

    @classmethod
    def from_model(cls, model: nn.Module, hyp: dict | None = None, autobalance: bool = False) -> ComputeLoss:
        """Build from a model whose last module (model.model[-1]) is Detect (nc, nl, na, anchors, stride).

        hyp defaults to model.hyp (v6.0 attaches the scaled hyp to the model).
        """
        m = model.module if hasattr(model, "module") else model  # unwrap DP/DDP
        det = m.model[-1]
        hyp = hyp if hyp is not None else getattr(m, "hyp", None)
        if hyp is None:
            raise ValueError("ComputeLoss.from_model needs hyp (or a model with a .hyp attribute)")
        anchors = det.anchors.detach().float().cpu()
        if anchors.shape[:2] != (det.nl, det.na):
            raise ValueError(f"Detect.anchors shape {tuple(anchors.shape)} does not match nl={det.nl}, na={det.na}")
        stride = getattr(det, "stride", None)
        stride = stride.tolist() if isinstance(stride, torch.Tensor) else stride
        return cls(hyp, anchors, nc=det.nc, autobalance=autobalance, stride=stride)

    def _to(self, device: torch.device) -> None:
        """(Re)create the criteria and anchors on device; they hold pos_weight tensors."""
        if device == self._device:
            return
        cls_pw = torch.tensor([self._cls_pw], device=device)
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=cls_pw)
        obj_pw = torch.tensor([self._obj_pw], device=device)
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=obj_pw)
        obj_elementwise = nn.BCEWithLogitsLoss(pos_weight=obj_pw, reduction="none")  # masked per image
        # per element: _loss reduces the class loss over the valid candidates only
        cls_elementwise = nn.BCEWithLogitsLoss(pos_weight=cls_pw, reduction="none")
        if self._fl_gamma > 0:
            bce_cls, bce_obj, cls_elementwise, obj_elementwise = (
                FocalLoss(c, self._fl_gamma) for c in (bce_cls, bce_obj, cls_elementwise, obj_elementwise))
        self.BCEcls, self.BCEobj, self._cls_elementwise = bce_cls, bce_obj, cls_elementwise
        self._obj_elementwise = obj_elementwise
        self.anchors = self.anchors.to(device)
        self._device = device

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor,
                 labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = p[0].device
        self._to(device)
        with torch.autocast(device_type=device.type, enabled=False):
            p = [pi.float() for pi in p]
            targets = targets.to(device=device, dtype=torch.float32)
            return self._loss(p, targets, None if labelled is None else labelled.to(device=device, dtype=torch.bool))

    def _loss(self, p: list[torch.Tensor], targets: torch.Tensor,
              labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """v6.0's loss on fixed-size assignments: every candidate (offset, anchor, target) of a level is
        kept with a validity mask instead of being selected, so no shape depends on the data and the
        step never waits for the device (v6.0's boolean selection costs one host sync per level). Means
        over the valid candidates equal v6.0's means over the selected ones; invalid candidates carry a
        benign box and get no weight, and their objectness writes land in a spare cell. Valid ones keep
        v6.0's order, so a cell assigned twice takes the same (last) value."""
        device = targets.device
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anch, valid = self.assign(p, targets)
        for i, pi in enumerate(p):  # pi: (bs, na, ny, nx, 5 + nc)
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=pi.dtype)  # contiguous: written through a view
            if b.shape[0]:  # candidates exist whenever there are targets (a shape, known on the host)
                w = valid[i].to(pi.dtype)
                count = w.sum().clamp(min=1)
                _, _, ny, nx = tobj.shape
                cell = ((b * self.na + a) * ny + gj) * nx + gi
                ps = take_cells(pi, cell)  # (n, 5 + nc) predictions at the candidate cells
                pxy = ps[:, :2].sigmoid() * 2 - 0.5  # offset in (-0.5, 1.5) from the cell corner
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anch[i]  # grid units, at most 4x the anchor
                pbox = torch.cat((pxy, pwh), 1)
                iou = bbox_iou(pbox, tbox[i], xywh=True, CIoU=True)  # (n,)
                lbox += ((1.0 - iou) * w).sum() / count

                score_iou = iou.detach().clamp(0).type(tobj.dtype)
                cell = torch.where(valid[i], cell, tobj.numel())  # invalid: the spare cell after the map
                if self.sort_obj_iou:  # write the best IoU last so that it wins the cell
                    order = torch.argsort(score_iou)
                    cell, score_iou = cell[order], score_iou[order]
                cell = last_writes(cell, spare=tobj.numel())
                flat = torch.cat((tobj.view(-1), tobj.new_zeros(1)))
                flat[cell] = (1.0 - self.gr) + self.gr * score_iou
                tobj = flat[:-1].view_as(tobj)

                if self.nc > 1:  # a single class is fully described by objectness
                    t = torch.full_like(ps[:, 5:], self.cn)
                    t[torch.arange(t.shape[0], device=device), tcls[i]] = self.cp
                    lcls += (self._cls_elementwise(ps[:, 5:], t).sum(1) * w).sum() / (count * self.nc)

            if labelled is None:
                obji = self.BCEobj(pi[..., 4], tobj)
            else:  # the mean over the labelled images' cells (0 when there is none)
                per_image = self._obj_elementwise(pi[..., 4], tobj).flatten(1).sum(1)  # (bs,)
                cells = labelled.sum() * tobj[0].numel()
                obji = (per_image * labelled).sum() / cells.clamp(min=1)
            lobj += obji * self.balance[i]
            if self.autobalance and (labelled is None or bool(labelled.any())):  # nothing measured otherwise
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = p[0].shape[0] if labelled is None else labelled.sum()
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor):
        """Assign targets to (image, anchor, cell) per level, as v6.0's build_targets returns them.

        Returns four lists of length nl: tcls (n,) long class ids; tbox (n, 4) = (xy offset from the
        cell corner in (-0.5, 1.5), wh) in grid units; indices (b, a, gj, gi) long (gj/gi clamped
        to the grid); anch (n, 2) matched anchor wh in grid units. These are assign()'s valid candidates,
        in v6.0's order.
        """
        tcls, tbox, indices, anch, valid = self.assign(p, targets)
        return ([c[v] for c, v in zip(tcls, valid)], [t[v] for t, v in zip(tbox, valid)],
                [tuple(x[v] for x in ix) for ix, v in zip(indices, valid)], [x[v] for x, v in zip(anch, valid)], )

    def assign(self, p: list[torch.Tensor], targets: torch.Tensor):
        """v6.0's target assignment without selection: per level, all 5 x na x nt candidates (cell offset,
        anchor, target; v6.0's order) and a validity mask (wh ratio to the anchor below anchor_t, and for the
        four neighbour offsets the target centre in that half of its cell, away from the border).

        Returns tcls, tbox, indices, anch as build_targets (length 5 * na * nt each) plus valid (bool). An
        invalid candidate's box is its anchor's at the cell centre, so that every loss term stays finite.
        """
        device = targets.device
        anchors_all = self.anchors.to(device)
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch, valid = [], [], [], [], []
        gain = torch.ones(7, device=device)  # maps normalised xywh to grid units per level
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).repeat(1, nt)
        # (na, nt, 7): every target once per anchor, with the anchor index appended
        targets = torch.cat((targets.repeat(na, 1, 1), ai[:, :, None]), 2)
        g = 0.5
        off = torch.tensor(_OFFSETS, device=device, dtype=torch.float32) * g

        for i in range(self.nl):
            anchors = anchors_all[i]
            ny, nx = p[i].shape[2], p[i].shape[3]
            gain[2:6] = torch.tensor([nx, ny, nx, ny], device=device, dtype=torch.float32)
            t = targets * gain  # (na, nt, 7)
            r = t[:, :, 4:6] / anchors[:, None]  # wh ratio target/anchor, (na, nt, 2)
            match = torch.max(r, 1 / r).max(2)[0] < self.anchor_t  # shape match, not IoU
            gxy = t[:, :, 2:4]
            gxi = gain[[2, 3]] - gxy  # distance to the far border
            j, k = ((gxy % 1 < g) & (gxy > 1)).unbind(2)  # left / top neighbour
            l, m = ((gxi % 1 < g) & (gxi > 1)).unbind(2)  # right / bottom neighbour
            ok = (torch.stack((torch.ones_like(j), j, k, l, m)) & match).reshape(-1)  # (5 * na * nt,)
            t = t.expand(5, na, nt, 7).reshape(-1, 7)
            offsets = off[:, None, None].expand(5, na, nt, 2).reshape(-1, 2)

            b, c = t[:, :2].long().T
            gxy = t[:, 2:4]
            gwh = t[:, 4:6]
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            a = t[:, 6].long()
            box = torch.cat((gxy - gij, gwh), 1)  # unclamped gij, as v6.0
            benign = torch.cat((torch.full_like(gwh, 0.5), anchors[a]), 1)
            # integer bounds: newer torch refuses float bounds on an integer clamp
            indices.append((b, a, gj.clamp(0, ny - 1), gi.clamp(0, nx - 1)))
            tbox.append(torch.where(ok[:, None], box, benign))
            anch.append(anchors[a])
            tcls.append(c)
            valid.append(ok)
        return tcls, tbox, indices, anch, valid
