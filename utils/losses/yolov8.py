"""YOLOv8-style detection loss: task-aligned assignment, CIoU box loss, BCE classes, distribution focal loss
(or, for a head with reg_max 1 such as YOLO26's, an L1 loss on the box-edge distances instead of the DFL).

Units used throughout:
- targets: (N, 6) rows [img_idx, cls, x, y, w, h], xywh normalised to [0, 1] of the network input
  (the same rows the YOLOv5 loss takes);
- predictions: list of nl raw maps (B, 4*reg_max + nc, ny, nx) from DetectV8 in train mode;
- internally boxes are xyxy, in grid units of their level for the box/DFL losses and in pixels for
  the assigner.
Returned items: [box (CIoU), cls (BCE), dfl] after the gains box, cls, dfl (data/hyps/hyp.v8.yaml), and
the total = their sum × batch size (what is back-propagated, as in YOLOv5). With reg_max 1 the third item
is the L1 term ([box, cls, l1]), still scaled by the dfl gain as ultralytics does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.boxes import bbox2dist, dist2bbox, make_anchors
from utils.general import UserError
from utils.losses.tal import TaskAlignedAssigner
from utils.metrics import bbox_iou

ITEM_NAMES = ("box", "cls", "dfl")

# Hyp keys this loss reads (rule format and gathering: utils/losses/yolov5.py HYP_KEYS, engine/options.py);
# box and cls are the YOLOv5 loss's keys, so their bounds must equal the ones declared there.
HYP_KEYS: dict[str, tuple] = {
    "box": (0, None, False, False, False, "box (CIoU) loss gain, e.g. 7.5"),
    "cls": (0, None, False, False, False, "class BCE loss gain, e.g. 0.5"),
    "dfl": (0, None, False, False, False, "distribution focal loss gain, e.g. 1.5"),
    "tal_topk": (1, None, False, False, True, "task-aligned assigner: positives per ground-truth box, e.g. 10"),
}


def dfl_loss(pred_dist: torch.Tensor, target: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss (Li et al. 2020, arXiv:2006.04388): cross-entropy towards the two bins
    around each continuous target distance, weighted by proximity. pred_dist (K*4, reg_max) logits,
    target (K, 4) distances in bins -> (K, 1) mean over the four edges."""
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl = target.long()  # left bin
    tr = tl + 1  # right bin
    wl = tr - target  # weight of the left bin
    wr = 1 - wl
    ce_l = F.cross_entropy(pred_dist, tl.view(-1), reduction="none").view(tl.shape)
    ce_r = F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl.shape)
    return (ce_l * wl + ce_r * wr).mean(-1, keepdim=True)


def targets_per_image(targets: torch.Tensor, batch_size: int, scale: torch.Tensor) -> torch.Tensor:
    """(N, 6) [img, cls, xywh normalised] -> (B, M, 5) [cls, xyxy pixels], zero-padded to M per image."""
    if targets.shape[0] == 0:
        return torch.zeros(batch_size, 0, 5, device=targets.device, dtype=targets.dtype)
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=batch_size)
    out = torch.zeros(batch_size, int(counts.max()), 5, device=targets.device, dtype=targets.dtype)
    for j in range(batch_size):
        rows = targets[img == j, 1:]
        out[j, : rows.shape[0]] = rows
    xy, wh = (out[..., 1:5] * scale).split(2, -1)  # (B, M, 2) centres and sizes in pixels
    out[..., 1:5] = torch.cat((xy - wh / 2, xy + wh / 2), -1)  # xywh -> xyxy
    return out


class V8DetectionLoss:
    """Call with (preds, targets) -> (loss * bs of shape (1,), detached [box, cls, dfl or l1]).

    hyp needs box, cls, dfl gains (used as given); the loss is computed in float32 (autocast disabled
    inside) on the predictions' device, or in float64 when the predictions are float64.

    `labelled` (optional, (bs,) bool): which images carry labels. An unlabelled image has no boxes, so the
    assigner gives it no positive; its class term (BCE towards all-zero scores over every anchor: "no
    object here") is left out as well, and the loss is scaled by the labelled images' count instead of bs.
    No labelled image: a loss of exactly 0. None: every image is labelled.
    """

    names = ITEM_NAMES

    def __init__(self, hyp: dict, nc: int, stride: list[float] | torch.Tensor, reg_max: int = 16, topk: int = 10,
                 alpha: float = 0.5, beta: float = 6.0, topk2: int | None = None):
        missing = [k for k in ("box", "cls", "dfl") if k not in hyp]
        if missing:
            raise UserError(f"the YOLOv8-style loss needs the hyperparameters {missing} (gains box, cls, dfl); "
                            f"train v8 models with --hyp data/hyps/hyp.v8.yaml")
        self.hyp = hyp
        self.nc, self.reg_max = int(nc), int(reg_max)
        self.no = self.nc + 4 * self.reg_max
        self.stride = [float(s) for s in stride]
        # min_side = the second stride (16 px for P3-P5), as ultralytics 8.4 selects candidates; this
        # reproduces its fg_mask on the reference fixture (a 12.8 px wide box gains a column of P3 points)
        min_side = self.stride[1] if len(self.stride) > 1 else self.stride[0]
        self.assigner = TaskAlignedAssigner(topk=topk, num_classes=self.nc, alpha=alpha, beta=beta, min_side=min_side,
                                            topk2=topk2)
        self.names = ITEM_NAMES if self.reg_max > 1 else ("box", "cls", "l1")
        self.last_assignment: dict[str, torch.Tensor] = {}  # fg_mask and target_gt_idx of the last call

    @classmethod
    def from_model(cls, model: nn.Module, hyp: dict | None = None) -> V8DetectionLoss:
        """Build from a model whose last module is DetectV8 (nc, reg_max, stride); hyp defaults to model.hyp."""
        m = model.module if hasattr(model, "module") else model  # unwrap DP/DDP
        det = m.model[-1]
        hyp = hyp if hyp is not None else getattr(m, "hyp", None)
        if hyp is None:
            raise ValueError("V8DetectionLoss.from_model needs hyp (or a model with a .hyp attribute)")
        return cls(hyp, det.nc, det.stride.tolist(), det.reg_max, topk=int(hyp.get("tal_topk", 10)))

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor,
                 labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = preds[0].device
        with torch.autocast(device_type=device.type, enabled=False):
            dtype = torch.float64 if preds[0].dtype == torch.float64 else torch.float32
            preds = [p.to(dtype) for p in preds]
            labelled = None if labelled is None else labelled.to(device=device, dtype=torch.bool)
            return self._loss(preds, targets.to(device=device, dtype=dtype), labelled)

    def _decode(self, anchor_points: torch.Tensor, pred_dist: torch.Tensor) -> torch.Tensor:
        """(B, A, 4*reg_max) logits -> (B, A, 4) xyxy boxes in grid units (DFL expectation per edge; with
        reg_max 1 the four values are the edge distances themselves)."""
        if self.reg_max == 1:
            return dist2bbox(pred_dist, anchor_points, xywh=False)
        b, a, c = pred_dist.shape
        proj = torch.arange(self.reg_max, dtype=pred_dist.dtype, device=pred_dist.device)
        dist = pred_dist.view(b, a, 4, c // 4).softmax(3).matmul(proj)  # (B, A, 4, reg_max) -> (B, A, 4)
        return dist2bbox(dist, anchor_points, xywh=False)

    def _loss(self, feats: list[torch.Tensor], targets: torch.Tensor,
              labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        bs = feats[0].shape[0]
        x = torch.cat([f.view(bs, self.no, -1) for f in feats], 2)  # nl x (B, no, ny, nx) -> (B, no, A)
        pred_distri, pred_scores = x.split((4 * self.reg_max, self.nc), 1)
        pred_scores = pred_scores.permute(0, 2, 1).contiguous()  # (B, nc, A) -> (B, A, nc)
        pred_distri = pred_distri.permute(0, 2, 1).contiguous()  # (B, 4*reg_max, A) -> (B, A, 4*reg_max)
        dtype = pred_scores.dtype
        h, w = feats[0].shape[2] * self.stride[0], feats[0].shape[3] * self.stride[0]  # input size in pixels
        anchor_points, stride_tensor = make_anchors(feats, self.stride, 0.5)  # (A, 2) grid units, (A, 1)

        gt = targets_per_image(targets, bs, torch.tensor([w, h, w, h], dtype=dtype, device=x.device))
        gt_labels, gt_bboxes = gt.split((1, 4), 2)  # (B, M, 1) classes, (B, M, 4) xyxy pixels
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)  # (B, M, 1) real (non-padding) boxes

        pred_bboxes = self._decode(anchor_points, pred_distri)  # (B, A, 4) xyxy grid units
        _, target_bboxes, target_scores, fg_mask, target_gt_idx = self.assigner(
            pred_scores.detach().sigmoid(), (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
            anchor_points * stride_tensor, gt_labels, gt_bboxes, mask_gt)
        self.last_assignment = {"fg_mask": fg_mask, "target_gt_idx": target_gt_idx}
        target_scores_sum = max(target_scores.sum(), 1)

        loss = torch.zeros(3, device=x.device, dtype=dtype)  # box, cls, dfl
        bce = F.binary_cross_entropy_with_logits(pred_scores, target_scores.to(dtype), reduction="none")
        loss[1] = bce.sum() if labelled is None else (bce.flatten(1).sum(1) * labelled).sum()
        loss[1] = loss[1] / target_scores_sum
        if fg_mask.sum():
            target_bboxes = target_bboxes / stride_tensor  # pixels -> grid units of each point's level
            weight = target_scores.sum(-1)[fg_mask].unsqueeze(-1)  # (K, 1) soft weight of each positive
            iou = bbox_iou(pred_bboxes[fg_mask], target_bboxes[fg_mask], xywh=False, CIoU=True).unsqueeze(-1)
            loss[0] = ((1.0 - iou) * weight).sum() / target_scores_sum
            if self.reg_max == 1:
                d = self._l1_edges(pred_distri, anchor_points, target_bboxes, stride_tensor, (h, w), fg_mask)
            else:
                target_ltrb = bbox2dist(anchor_points, target_bboxes, self.reg_max - 1)  # (B, A, 4) in bins
                d = dfl_loss(pred_distri[fg_mask].view(-1, self.reg_max), target_ltrb[fg_mask], self.reg_max)
            loss[2] = (d * weight).sum() / target_scores_sum

        loss = loss * torch.tensor([self.hyp["box"], self.hyp["cls"], self.hyp["dfl"]], dtype=dtype, device=x.device)
        n = bs if labelled is None else labelled.sum()  # images the loss is about
        return loss.sum().view(1) * n, loss.detach()

    @staticmethod
    def _l1_edges(pred_dist, anchor_points, target_bboxes, stride_tensor, hw, fg_mask) -> torch.Tensor:
        """(K, 1) mean L1 distance of the positives' four edge distances (left, top, right, bottom), both in
        fractions of the input size: grid units x stride / width for left and right, / height for top and
        bottom. No clamping (a reg_max-1 head regresses the distances directly)."""
        h, w = hw
        x1y1, x2y2 = target_bboxes.chunk(2, -1)
        target = torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1)  # (B, A, 4) grid units
        norm = torch.tensor([w, h, w, h], dtype=pred_dist.dtype, device=pred_dist.device)
        target, pred = target * stride_tensor / norm, pred_dist * stride_tensor / norm
        return F.l1_loss(pred[fg_mask], target[fg_mask], reduction="none").mean(-1, keepdim=True)
