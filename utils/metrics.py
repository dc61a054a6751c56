"""Detection metrics as pure functions (tensors/arrays in, tensors/arrays out; no files, no plots).

Plots of these metrics (PR/F1 curves, confusion matrix) live in utils/plots.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch


def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: box1 (N, 4), box2 (M, 4) -> (N, M)."""
    (a1, a2), (b1, b2) = box1[:, None].chunk(2, 2), box2.chunk(2, 1)  # (N,1,2) corners vs (M,2)
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(2)
    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    return inter / (area1[:, None] + area2 - inter + eps)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, GIoU: bool = False,
             DIoU: bool = False, CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU (or GIoU/DIoU/CIoU) of box1 (..., 4) against box2 (..., 4), broadcasting -> (...,).

    Boxes are xywh when xywh=True, else xyxy. As in YOLOv5 v6.0, eps is added to the heights, and the
    CIoU trade-off alpha is computed without gradient.
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps

    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box width
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)  # enclosing box height
    if CIoU or DIoU:
        c2 = cw ** 2 + ch ** 2 + eps  # squared diagonal of the enclosing box
        rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
        if DIoU:
            return iou - rho2 / c2
        v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        return iou - (rho2 / c2 + v * alpha)
    c_area = cw * ch + eps  # GIoU
    return iou - (c_area - union) / c_area


# ---------------------------------------------------------------------------------------------------
# Validation statistics (YOLOv5 v6.0 semantics)

class APStats(NamedTuple):
    """Result of ap_per_class (see there)."""
    p: np.ndarray
    r: np.ndarray
    ap: np.ndarray
    f1: np.ndarray
    classes: np.ndarray
    curves: dict


def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness from rows [P, R, mAP@.5, mAP@.5:.95, ...]: 0.1 * mAP@.5 + 0.9 * mAP@.5:.95."""
    w = [0.0, 0.0, 0.1, 0.9]
    return (np.asarray(x)[:, :4] * w).sum(1)


def process_batch(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are correct at each IoU threshold (v6.0 matching).

    detections (n, 6) [x1, y1, x2, y2, conf, cls]; labels (m, 5) [cls, x1, y1, x2, y2], same pixel space;
    iouv (k,) IoU thresholds. Returns (n, k) bool.
    One matching is made at iouv[0] (IoU >= iouv[0] and same class): pairs sorted by IoU descending,
    then the first pair per detection, then the first pair per label *by detection index* (v6.0 leaves
    the second IoU sort commented out). correct[d, k] = IoU of d's match >= iouv[k].
    """
    correct = torch.zeros(detections.shape[0], iouv.shape[0], dtype=torch.bool, device=iouv.device)
    iou = box_iou(labels[:, 1:], detections[:, :4])
    x = torch.where((iou >= iouv[0]) & (labels[:, 0:1] == detections[:, 5]))
    if x[0].shape[0]:
        matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()  # [label, det, iou]
        if x[0].shape[0] > 1:
            matches = matches[matches[:, 2].argsort()[::-1]]
            matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
            matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        matches = torch.from_numpy(matches).to(iouv.device)
        correct[matches[:, 1].long()] = matches[:, 2:3].to(iouv.dtype) >= iouv
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP from one recall/precision curve (both ordered by decreasing confidence).

    Sentinels recall [0, ..., 1] and precision [1, ..., 0]; the precision envelope (running max from the
    right); AP = trapezoidal integral of the envelope sampled at 101 recall points.
    Returns (ap, envelope precision mpre, mrec).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = float(np.trapezoid(np.interp(x, mrec, mpre), x))  # np.trapz in v6.0, removed in numpy 2
    return ap, mpre, mrec


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 eps: float = 1e-16) -> APStats:
    """Per-class P, R, AP and F1 over all images (v6.0 ap_per_class, without plotting).

    tp (n, k) bool correct-at-threshold per prediction, conf (n,), pred_cls (n,), target_cls (m,).
    Only classes present in target_cls are evaluated (nc below = their number). Returns APStats:
    p, r, f1 (nc,) at the confidence of maximum mean F1, ap (nc, k), classes (nc,) int32, and
    curves {px (1000,) grid, p/r/f1 (nc, 1000) over confidence px, py (nc, 1000) precision at IoU .5
    over recall px} for utils.plots. `p, r, ap, f1, classes = stats[:5]` reads like v6.0.
    """
    tp, conf = np.asarray(tp), np.asarray(conf)
    pred_cls, target_cls = np.asarray(pred_cls), np.asarray(target_cls)
    i = np.argsort(-conf)
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]

    unique_classes = np.unique(target_cls)
    nc = unique_classes.shape[0]
    px = np.linspace(0, 1, 1000)
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    py = np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l = (target_cls == c).sum()
        if i.sum() == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)  # negated: conf decreases along the curve
        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                py[ci] = np.interp(px, mrec, mpre)

    f1 = 2 * p * r / (p + r + eps)
    i = int(f1.mean(0).argmax()) if nc else 0
    curves = {"px": px, "py": py, "p": p, "r": r, "f1": f1}
    return APStats(p[:, i], r[:, i], ap, f1[:, i], unique_classes.astype("int32"), curves)


class ConfusionMatrix:
    """(nc+1, nc+1) counts: rows = predicted class, columns = true class; index nc = background.

    conf: detections below it are ignored; iou_thres: a label and a detection match when IoU > it.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """detections (n, 6) [x1, y1, x2, y2, conf, cls] or None; labels (m, 5) [cls, x1, y1, x2, y2].

        Unlike v6.0, images without detections still count their labels as missed (background column
        of the predicted axis), and unmatched detections count as background FPs even when nothing
        in the image matched.
        """
        gt_classes = labels[:, 0].int().tolist()
        if detections is None:
            detections = torch.zeros((0, 6))
        detections = detections[detections[:, 4] > self.conf]
        detection_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:], detections[:, :4])

        x = torch.where(iou > self.iou_thres)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()
            if x[0].shape[0] > 1:  # one detection per label and one label per detection, best IoU first
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        else:
            matches = np.zeros((0, 3))

        m0, m1 = matches[:, 0].astype(int), matches[:, 1].astype(int)
        for i, gc in enumerate(gt_classes):
            j = m0 == i
            if j.sum() == 1:
                self.matrix[detection_classes[m1[j][0]], gc] += 1  # matched: predicted class vs true class
            else:
                self.matrix[self.nc, gc] += 1  # label missed: predicted background
        for i, dc in enumerate(detection_classes):
            if not (m1 == i).any():
                self.matrix[dc, self.nc] += 1  # detection without a label: true background

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true positives and false positives (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]
