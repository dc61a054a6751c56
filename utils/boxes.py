"""Boxes: conversions between xyxy/xywh (pixels or normalised), polygons, clipping and rescaling, and the
anchor-point geometry of anchor-free heads (DetectV8 and its loss).

Conventions used throughout the project:
- xyxy: (x1, y1, x2, y2) corners; xywh: (x_center, y_center, width, height).
- "pixels" means coordinates of the image the boxes refer to; "normalised" means divided by its w/h.
The conversions work on torch tensors and numpy arrays of shape (n, 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x):
    """(n, 4) corners -> centre, width, height."""
    y = _clone(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2
    y[:, 2] = x[:, 2] - x[:, 0]
    y[:, 3] = x[:, 3] - x[:, 1]
    return y


def xywh2xyxy(x):
    """(n, 4) centre, width, height -> corners."""
    y = _clone(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def xywhn2xyxy(x, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0):
    """Normalised xywh -> pixel xyxy in an image of size (w, h) placed at offset (padw, padh)."""
    y = _clone(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x, w: int = 640, h: int = 640, clip: bool = False, eps: float = 0.0):
    """Pixel xyxy -> normalised xywh; with clip, boxes are first clipped to (h - eps, w - eps)."""
    if clip:
        x = _clone(x)
        clip_coords(x, (h - eps, w - eps))
    y = _clone(x)
    y[:, 0] = ((x[:, 0] + x[:, 2]) / 2) / w
    y[:, 1] = ((x[:, 1] + x[:, 3]) / 2) / h
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


def xyn2xy(x, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0):
    """Normalised polygon points (n, 2) -> pixels."""
    y = _clone(x)
    y[:, 0] = w * x[:, 0] + padw
    y[:, 1] = h * x[:, 1] + padh
    return y


def segment2box(segment, width: int = 640, height: int = 640) -> np.ndarray:
    """One polygon (n, 2) in pixels -> one xyxy box (4,), keeping the points inside the image."""
    x, y = segment.T
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    x, y = x[inside], y[inside]
    return np.array([x.min(), y.min(), x.max(), y.max()]) if x.size else np.zeros(4)


def segments2boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons [(n, 2), ...] normalised -> (m, 4) normalised xywh boxes from their min/max."""
    boxes = [np.array([s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()]) for s in segments]
    return xyxy2xywh(np.array(boxes, dtype=np.float32).reshape(-1, 4))


def resample_segments(segments: list[np.ndarray], n: int = 1000) -> list[np.ndarray]:
    """Resample each closed polygon to n points by linear interpolation."""
    out = []
    for s in segments:
        s = np.concatenate((s, s[0:1, :]), axis=0)
        x = np.linspace(0, len(s) - 1, n)
        xp = np.arange(len(s))
        out.append(np.stack([np.interp(x, xp, s[:, i]) for i in range(2)], axis=1))
    return out


def clip_coords(boxes, shape) -> None:
    """Clip xyxy boxes in place to an image of shape (h, w)."""
    if isinstance(boxes, torch.Tensor):
        boxes[:, 0].clamp_(0, shape[1])
        boxes[:, 1].clamp_(0, shape[0])
        boxes[:, 2].clamp_(0, shape[1])
        boxes[:, 3].clamp_(0, shape[0])
    else:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, shape[0])


def scale_coords(img1_shape, coords, img0_shape, ratio_pad=None):
    """Map xyxy boxes from a letterboxed image of shape img1_shape (h, w) back to img0_shape (h, w)."""
    if ratio_pad is None:  # compute from the shapes
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    coords[:, [0, 2]] -= pad[0]
    coords[:, [1, 3]] -= pad[1]
    coords[:, :4] /= gain
    clip_coords(coords, img0_shape)
    return coords


# ---------------------------------------------------------------------------------------------------
# Anchor points of anchor-free heads (grid units of their level)


def make_anchors(feats: Sequence[torch.Tensor], strides: Sequence[float] | torch.Tensor,
                 offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (N, 2) as (x, y) in grid units of their level (cell + offset) and strides (N, 1).

    feats: per-level maps (B, C, ny, nx); points are ordered level by level, row-major within a level.
    """
    points, stride_rows = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for f, s in zip(feats, strides):
        ny, nx = f.shape[-2:]
        sy = torch.arange(ny, device=device, dtype=dtype) + offset
        sx = torch.arange(nx, device=device, dtype=dtype) + offset
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))  # (ny, nx, 2) -> (ny*nx, 2)
        stride_rows.append(torch.full((ny * nx, 1), float(s), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_rows)


def dist2bbox(distance: torch.Tensor, anchor_points: torch.Tensor, xywh: bool = True, dim: int = -1) -> torch.Tensor:
    """Edge distances (left, top, right, bottom) from anchor points -> boxes (xywh or xyxy), same units."""
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)
    return torch.cat((x1y1, x2y2), dim)


def bbox2dist(anchor_points: torch.Tensor, bbox: torch.Tensor, reg_max: float) -> torch.Tensor:
    """xyxy boxes -> edge distances (left, top, right, bottom) from anchor points, clamped to [0, reg_max - 0.01]."""
    x1y1, x2y2 = bbox.chunk(2, -1)
    return torch.cat((anchor_points - x1y1, x2y2 - anchor_points), -1).clamp_(0, reg_max - 0.01)
