"""Task-aligned assignment (TOOD, Feng et al. 2021, arXiv:2108.07755) for the anchor-free YOLOv8 head.

Units: anchor points and boxes in **input-image pixels**, boxes xyxy. Shapes: B images, M = the largest
number of ground-truth boxes in one image (padded, `mask_gt` marks real ones), A anchor points, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.metrics import bbox_iou


def widen_small_boxes(gt_bboxes: torch.Tensor, mask_gt: torch.Tensor, min_side: float) -> torch.Tensor:
    """xyxy boxes whose width or height is below min_side get that side set to min_side about their centre.

    Used for candidate selection only (ultralytics 8.4, "STAL"): a box narrower than the P4 stride would
    otherwise contain very few P3 points. Padding rows (mask_gt 0) are left as they are."""
    xy = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2
    wh = gt_bboxes[..., 2:] - gt_bboxes[..., :2]
    small = (wh < min_side) & mask_gt.bool()  # (B, M, 2) per side
    wh = torch.where(small, torch.full_like(wh, min_side), wh)
    return torch.cat((xy - wh / 2, xy + wh / 2), -1)


def points_in_boxes(points: torch.Tensor, gt_bboxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(A, 2) points, (B, M, 4) xyxy boxes -> (B, M, A) float 1 where a point lies strictly inside a box."""
    b, m, _ = gt_bboxes.shape
    lt, rb = gt_bboxes.view(-1, 1, 4).chunk(2, 2)  # (B*M, 1, 2) each
    deltas = torch.cat((points[None] - lt, rb - points[None]), 2)  # (B*M, A, 4) distances to the four edges
    return deltas.view(b, m, points.shape[0], 4).amin(3).gt_(eps).to(gt_bboxes.dtype)


class TaskAlignedAssigner(nn.Module):
    """For each ground-truth box, the `topk` anchor points inside it (sides shorter than `min_side`
    widened to it first) with the largest alignment
    t = s^alpha * IoU^beta (s: predicted score of the box's class, IoU: CIoU of the predicted box, >= 0)
    become positives; a point claimed by several boxes goes to the one it overlaps most. Soft class
    targets: one-hot scaled by t / max t of the box * max IoU of the box."""

    def __init__(self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9,
                 min_side: float = 0.0, topk2: int | None = None):
        super().__init__()
        self.topk, self.num_classes, self.alpha, self.beta, self.eps = topk, num_classes, alpha, beta, eps
        self.min_side = min_side  # pixels; boxes are widened to it for candidate selection (0: off)
        # YOLO26's one-to-one branch: of the topk positives left after conflicts, keep each box's topk2 best
        # aligned (topk 7, topk2 1: one positive per box); None = topk (no second cut)
        self.topk2 = topk2 or topk

    @torch.no_grad()
    def forward(self, pd_scores: torch.Tensor, pd_bboxes: torch.Tensor, anc_points: torch.Tensor,
                gt_labels: torch.Tensor, gt_bboxes: torch.Tensor, mask_gt: torch.Tensor):
        """pd_scores (B, A, C) sigmoids; pd_bboxes (B, A, 4) xyxy px; anc_points (A, 2) px; gt_labels (B, M, 1);
        gt_bboxes (B, M, 4) xyxy px; mask_gt (B, M, 1).

        Returns target_labels (B, A) long, target_bboxes (B, A, 4), target_scores (B, A, C), fg_mask (B, A)
        bool, target_gt_idx (B, A) long (index of the assigned box within its image; 0 for background).
        """
        n_max = gt_bboxes.shape[1]
        if n_max == 0:
            z = torch.zeros_like(pd_scores[..., 0])
            return (torch.full_like(z, self.num_classes, dtype=torch.long), torch.zeros_like(pd_bboxes),
                    torch.zeros_like(pd_scores), z.bool(), z.long())
        mask_pos, align_metric, overlaps = self._positive_mask(pd_scores, pd_bboxes, gt_labels, gt_bboxes,
                                                               anc_points, mask_gt)
        target_gt_idx, fg_mask, mask_pos = self._resolve_conflicts(mask_pos, overlaps)
        if self.topk2 != self.topk:
            target_gt_idx, fg_mask, mask_pos = self._keep_topk2(mask_pos, align_metric)
        target_labels, target_bboxes, target_scores = self._targets(gt_labels, gt_bboxes, target_gt_idx, fg_mask)
        align_metric = align_metric * mask_pos
        pos_align = align_metric.amax(-1, keepdim=True)  # (B, M, 1) best alignment per box
        pos_overlap = (overlaps * mask_pos).amax(-1, keepdim=True)  # (B, M, 1) best IoU per box
        norm = (align_metric * pos_overlap / (pos_align + self.eps)).amax(-2).unsqueeze(-1)  # (B, A, 1)
        return target_labels, target_bboxes, target_scores * norm, fg_mask.bool(), target_gt_idx

    def _positive_mask(self, pd_scores, pd_bboxes, gt_labels, gt_bboxes, anc_points, mask_gt):
        cand = widen_small_boxes(gt_bboxes, mask_gt, self.min_side) if self.min_side > 0 else gt_bboxes
        mask_in = points_in_boxes(anc_points, cand)  # (B, M, A)
        align_metric, overlaps = self._metrics(pd_scores, pd_bboxes, gt_labels, gt_bboxes, mask_in * mask_gt)
        mask_topk = self._topk(align_metric, mask_gt.expand(-1, -1, self.topk).bool())
        return mask_topk * mask_in * mask_gt, align_metric, overlaps

    def _metrics(self, pd_scores, pd_bboxes, gt_labels, gt_bboxes, mask):
        """Alignment s^alpha * IoU^beta and IoU (B, M, A), zero outside `mask` (point in a real box)."""
        bs, n_max = gt_bboxes.shape[:2]
        na = pd_bboxes.shape[-2]
        mask = mask.bool()
        overlaps = torch.zeros((bs, n_max, na), dtype=pd_bboxes.dtype, device=pd_bboxes.device)
        scores = torch.zeros((bs, n_max, na), dtype=pd_scores.dtype, device=pd_scores.device)
        b_idx = torch.arange(bs, device=gt_labels.device).view(-1, 1).expand(-1, n_max)  # (B, M)
        cls = gt_labels.squeeze(-1).long()  # (B, M)
        scores[mask] = pd_scores[b_idx, :, cls][mask]  # (B, M, A): each point's score for the box's class
        pd = pd_bboxes.unsqueeze(1).expand(-1, n_max, -1, -1)[mask]  # (K, 4) predicted boxes inside a gt
        gt = gt_bboxes.unsqueeze(2).expand(-1, -1, na, -1)[mask]  # (K, 4) the gt box of each
        overlaps[mask] = bbox_iou(gt, pd, xywh=False, CIoU=True).clamp_(0).to(overlaps.dtype)
        return scores.pow(self.alpha) * overlaps.pow(self.beta), overlaps

    def _topk(self, metrics: torch.Tensor, topk_mask: torch.Tensor) -> torch.Tensor:
        """(B, M, A) 1 at the topk points of each box (none for padded boxes); duplicate picks are dropped."""
        _, idx = torch.topk(metrics, self.topk, dim=-1, largest=True)  # (B, M, topk)
        idx.masked_fill_(~topk_mask, 0)
        count = torch.zeros(metrics.shape, dtype=torch.int8, device=idx.device)
        ones = torch.ones_like(idx[:, :, :1], dtype=torch.int8)
        for k in range(self.topk):
            count.scatter_add_(-1, idx[:, :, k:k + 1], ones)
        count.masked_fill_(count > 1, 0)  # a padded box points all its picks at 0: drop them
        return count.to(metrics.dtype)

    @staticmethod
    def _resolve_conflicts(mask_pos: torch.Tensor, overlaps: torch.Tensor):
        """A point positive for several boxes keeps only the box with the highest IoU.

        Returns target_gt_idx (B, A), fg_mask (B, A) float count (0/1), mask_pos (B, M, A)."""
        fg = mask_pos.sum(-2)  # (B, A)
        if fg.max() > 1:
            multi = (fg.unsqueeze(1) > 1).expand(-1, mask_pos.shape[1], -1)  # (B, M, A)
            best = torch.zeros(mask_pos.shape, dtype=mask_pos.dtype, device=mask_pos.device)
            best.scatter_(1, overlaps.argmax(1).unsqueeze(1), 1)
            mask_pos = torch.where(multi, best, mask_pos).float()
            fg = mask_pos.sum(-2)
        return mask_pos.argmax(-2), fg, mask_pos

    def _keep_topk2(self, mask_pos: torch.Tensor, align_metric: torch.Tensor):
        """Per box, only the topk2 positives with the highest alignment stay (after conflicts are resolved).

        Returns target_gt_idx (B, A), fg_mask (B, A) float count (0/1), mask_pos (B, M, A)."""
        idx = torch.topk(align_metric * mask_pos, self.topk2, dim=-1, largest=True).indices  # (B, M, topk2)
        keep = torch.zeros_like(mask_pos).scatter_(-1, idx, 1.0)
        mask_pos = mask_pos * keep
        return mask_pos.argmax(-2), mask_pos.sum(-2), mask_pos

    def _targets(self, gt_labels, gt_bboxes, target_gt_idx, fg_mask):
        """Gather the assigned box, its class and a one-hot class row per anchor point."""
        bs, n_max = gt_bboxes.shape[:2]
        flat_idx = target_gt_idx + torch.arange(bs, device=gt_labels.device)[:, None] * n_max  # (B, A)
        target_labels = gt_labels.long().flatten()[flat_idx].clamp_(0)  # (B, A)
        target_bboxes = gt_bboxes.view(-1, gt_bboxes.shape[-1])[flat_idx]  # (B, A, 4)
        one_hot = torch.zeros((*target_labels.shape, self.num_classes), dtype=torch.long, device=target_labels.device)
        one_hot.scatter_(2, target_labels.unsqueeze(-1), 1)
        target_scores = torch.where(fg_mask[:, :, None] > 0, one_hot, 0)  # (B, A, C)
        return target_labels, target_bboxes, target_scores
