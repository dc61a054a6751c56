"""Fine-grained imitation mask (FGFI, Wang et al. CVPR 2019): where near objects the student imitates.

For every feature level, every ground-truth box k is compared with every anchor box of that level
(na anchors centred on each of the H x W cells). With m_k = psi * max IoU of box k over the whole level,
a cell is positive when any of its anchors has IoU > m_k with any box of its image (union over boxes).

Computed without a loop over boxes, images or anchors, and without the (boxes x anchors x H x W) IoU
tensor (800 boxes at 640 px would be 15 M IoUs on P3 alone). Two facts make it separable:

* For one box and one anchor shape the intersection is a product I = ox(j) * oy(i) of the 1-D overlaps
  along x (depends on the column j only) and along y (row i only).
* IoU = I / (A_box + A_anchor - I) grows with I, and IoU > t  <=>  I > c := t (A_box + A_anchor) / (1 + t).
  So the best anchor position has I = max_j ox * max_i oy, and in row i the positive columns are those
  with ox(j) > c / oy(i): with anchor centre u = j + 0.5 the 1-D overlap is
  ox(u) = min(bw, aw, (bw + aw)/2 - |u - cx|), so ox > theta (theta >= 0) is the open interval
  |u - cx| < (bw + aw)/2 - theta, provided theta < bw and theta < aw.

All these intervals of one box and row are centred on cx, so their union over anchors is the widest.
Each (box, row) thus contributes one interval of columns; the intervals are unioned per image with a
difference array (+1 at the first column, -1 after the last) and a cumulative sum. Cost:
O(boxes x na x H + B x H x W) per level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from distill.hooks import unwrap_parallel
from utils.general import UserError


def _check_inputs(targets: Tensor, anchors_px: Tensor, strides: Tensor, shapes: Sequence[tuple[int, int]],
                  batch_size: int, psi: float) -> None:
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise UserError(f"imitation mask: targets must be (n, 6) rows [img, cls, x, y, w, h], got "
                        f"{tuple(targets.shape)}")
    nl = len(shapes)
    if anchors_px.dim() != 3 or anchors_px.shape[0] != nl or anchors_px.shape[2] != 2:
        raise UserError(f"imitation mask: anchors must be (nl, na, 2) pixels with nl = {nl} levels "
                        f"(one per shape {list(shapes)}), got {tuple(anchors_px.shape)}")
    if strides.numel() != nl:
        raise UserError(f"imitation mask: {strides.numel()} strides for {nl} levels {list(shapes)}")
    if not 0.0 < psi <= 1.0:
        raise UserError(f"imitation mask: psi must lie in (0, 1] (the paper uses 0.5), got {psi}")
    if len(targets):
        img = targets[:, 0]
        inside = ((img >= 0) & (img < batch_size)).all()
        if img.is_cuda:  # the data pipeline's invariant: checked without making the host wait for the device
            torch._assert_async(inside, "imitation mask: a target image index lies outside the batch")
        elif not bool(inside):
            raise UserError(f"imitation mask: target image indices span [{img.min().item():g}, "
                            f"{img.max().item():g}] but the batch has {batch_size} images")


def _overlap_1d(lo: Tensor, hi: Tensor, size: Tensor, n_cells: int) -> Tensor:
    """1-D overlap (n, na, n_cells) of boxes [lo, hi] (n, 1) with anchors of length size (1, na)
    centred at cell centres 0.5, 1.5, ... (grid units)."""
    centres = torch.arange(n_cells, device=lo.device, dtype=lo.dtype) + 0.5  # (n_cells,)
    half = (size / 2)[..., None]  # (1, na, 1)
    right = torch.minimum(hi[..., None], centres + half)  # (n, na, n_cells)
    left = torch.maximum(lo[..., None], centres - half)
    return (right - left).clamp_(min=0)


def _level_mask(boxes: Tensor, img: Tensor, anchors: Tensor, shape: tuple[int, int], batch_size: int,
                psi: float) -> Tensor:
    """Mask (B, H, W) bool of one level. boxes (n, 4) xywh (centre, size) and anchors (na, 2) wh, both in
    grid units; img (n,) long image index of each box."""
    h, w = shape
    cx, cy, bw, bh = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]  # (n, 1) each
    aw, ah = anchors[None, :, 0], anchors[None, :, 1]  # (1, na)
    # 1-D overlap along x of an anchor centred at u is min(bw, aw, (bw + aw) / 2 - |u - cx|): largest at the
    # cell centre nearest to cx, so the best column needs no (n, na, W) tensor
    u = (torch.floor(cx) + 0.5).clamp_(0.5, w - 0.5)  # (n, 1)
    ox_max = (torch.minimum(cx + bw / 2, u + aw / 2) - torch.maximum(cx - bw / 2, u - aw / 2)).clamp_(min=0)
    oy = _overlap_1d(cy - bh / 2, cy + bh / 2, ah, h)  # (n, na, H)
    areas = bw * bh + aw * ah  # (n, na) A_box + A_anchor
    inter_max = ox_max * oy.amax(-1)  # (n, na) best anchor position of each (box, anchor shape)
    iou_max = (inter_max / (areas - inter_max)).amax(1, keepdim=True)  # (n, 1) max IoU of each box
    t = psi * iou_max  # threshold m_k
    # IoU > t  <=>  I > c. A box overlapping no anchor (max IoU 0) marks nothing: c = inf.
    c = torch.where(iou_max > 0, t * areas / (1 + t), torch.full_like(areas, float("inf")))  # (n, na)

    # Row i of (box, anchor): positive columns have ox > theta = c / oy(i), i.e. theta < min(bw, aw) and
    # |j + 0.5 - cx| < (bw + aw) / 2 - theta: an interval centred on cx for every anchor, so the union over
    # anchors is the widest one. Rows with oy == 0 get theta = inf (or huge): empty. No NaN anywhere.
    theta = c[..., None] / oy.clamp_(min=1e-30)  # (n, na, H)
    half = torch.where(theta < torch.minimum(bw, aw)[..., None], ((bw + aw) / 2)[..., None] - theta,
                       torch.full_like(theta, -float("inf"))).amax(1)  # (n, H) half-width, -inf: none
    left, right = cx - 0.5 - half, cx - 0.5 + half  # (n, H): column j positive iff left < j < right
    rows = img[:, None] * h + torch.arange(h, device=boxes.device)  # (n, H) row of (image, i)
    # flat indices as floats (one conversion to long at the end); float32 holds integers < 2**24 exactly
    index_dtype = torch.float32 if batch_size * h * (w + 1) < 2**24 else torch.float64
    base = (rows * (w + 1)).to(index_dtype)
    first = torch.floor(left).clamp_(-1, w - 1).to(index_dtype).add_(base + 1)  # first column j > left
    end = torch.ceil(right).clamp_(0, w).to(index_dtype).add_(base)  # after the last column j < right
    step = (first < end).to(torch.int32).flatten()

    # difference array over columns, one row per (image, row i): +1 at first, -1 at end; the cumulative
    # sum along the row counts the intervals covering each cell
    diff = torch.zeros(batch_size * h * (w + 1), dtype=torch.int32, device=boxes.device)
    diff.index_add_(0, torch.cat((first.flatten(), end.flatten())).long(), torch.cat((step, -step)))
    covered = diff.view(batch_size, h, w + 1).cumsum(-1)[..., :w]  # (B, H, W)
    return covered > 0


def imitation_mask(targets: Tensor, anchors_px: Tensor | Sequence, strides: Tensor | Sequence[float],
                   shapes: Sequence[tuple[int, int]], batch_size: int, psi: float = 0.5) -> list[Tensor]:
    """FGFI imitation masks, one (B, H, W) bool tensor per level, on the device of `targets`.

    targets: (n, 6) rows [img_index, cls, x, y, w, h], xywh normalised to the image, whose size is
        H_l * stride_l by W_l * stride_l on every level (YOLOv5 images are multiples of the largest stride).
    anchors_px: (nl, na, 2) anchor wh in pixels of each level (Detect.anchors * Detect.stride[:, None, None]).
    strides: (nl,) pixels per cell; shapes: nl (H, W) grid sizes; batch_size: B.
    psi: threshold factor of the paper (positive when IoU > psi * max IoU of the box on that level).
    Anchors are centred on cell centres ((j + 0.5) * stride). Images without boxes, and boxes of zero
    area (max IoU 0), give no positive cell.
    """
    strides = torch.as_tensor(strides, dtype=torch.float32).flatten()
    anchors_px = torch.as_tensor(anchors_px, dtype=torch.float32)
    _check_inputs(targets, anchors_px, strides, shapes, batch_size, psi)
    device = targets.device
    masks = [torch.zeros(batch_size, h, w, dtype=torch.bool, device=device) for h, w in shapes]
    if len(targets) == 0:
        return masks
    img = targets[:, 0].long()
    xywh = targets[:, 2:6].float()
    for level, (h, w) in enumerate(shapes):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        anchors = anchors_px[level].to(device) / strides[level].item()  # (na, 2) grid units
        masks[level] = _level_mask(xywh * scale, img, anchors, (h, w), batch_size, psi)  # boxes in grid units
    return masks


def model_imitation_masks(model: torch.nn.Module, targets: Tensor, img_hw: tuple[int, int], batch_size: int,
                          psi: float = 0.5) -> tuple[list[Tensor], Tensor]:
    """(masks, strides) for every level of a YOLOv5 model's Detect, for a batch of img_hw (H, W) images.

    The same masks FineGrainedImitation applies to the maps entering Detect; for pictures of what is
    imitated (utils.plots.plot_imitation_masks) without running the model. Grid sizes: ceil(H / stride).
    A v8 model (anchor points, no anchor boxes) gets the centre-region masks (centre_region_mask).
    """
    detect = unwrap_parallel(model).model[-1]
    if getattr(detect, "family", "v5") == "v8":  # anchor points: centre_region_mask (psi does not apply)
        stride = detect.stride.float().cpu()
        shapes = [(-(-img_hw[0] // int(s)), -(-img_hw[1] // int(s))) for s in stride.tolist()]
        return centre_region_mask(targets.cpu(), shapes, batch_size), stride
    if not (hasattr(detect, "anchors") and isinstance(getattr(detect, "stride", None), Tensor)):
        raise UserError(f"imitation masks need an anchor-based YOLOv5 Detect head, the model ends in "
                        f"{type(detect).__name__}")
    stride = detect.stride.float().cpu()
    anchors_px = detect.anchors.float().cpu() * stride.view(-1, 1, 1)  # grid units -> pixels
    shapes = [(-(-img_hw[0] // int(s)), -(-img_hw[1] // int(s))) for s in stride.tolist()]
    return imitation_mask(targets.cpu(), anchors_px, stride, shapes, batch_size, psi), stride


CENTRE_RADIUS = 2.5  # cells: the centre-sampling radius of anchor-free detectors (YOLOX)


def centre_region_mask(targets: Tensor, shapes: Sequence[tuple[int, int]], batch_size: int,
                       radius: float = CENTRE_RADIUS) -> list[Tensor]:
    """Imitation masks for an anchor-free head (YOLOv8-style anchor points), one (B, H, W) bool per level.

    Without anchor boxes there is no IoU to threshold: a cell is positive when its anchor point
    (j + 0.5, i + 0.5) lies inside a box and within `radius` cells of the box centre along x and along y
    (the centre region), on every level. Like v8's assigner, a box narrower than a cell may hold no point.
    targets: (n, 6) rows [img_index, cls, x, y, w, h] normalised to the image; shapes: nl (H, W) grids of
    that image. Cost O(n x (H + W)) per level plus one (n, H, W) product.
    """
    _check_inputs(targets, torch.zeros(len(shapes), 1, 2), torch.ones(len(shapes)), shapes, batch_size, 0.5)
    device = targets.device
    masks = []
    img = targets[:, 0].long()
    for h, w in shapes:
        count = torch.zeros(batch_size, h * w, device=device)
        if len(targets):
            xywh = targets[:, 2:6].float() * torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
            cx, cy, bw, bh = xywh.unbind(1)  # (n,) each, grid units
            px = torch.arange(w, device=device, dtype=torch.float32) + 0.5  # anchor points of the columns
            py = torch.arange(h, device=device, dtype=torch.float32) + 0.5
            in_x = (px[None] - cx[:, None]).abs() < torch.clamp(bw / 2, max=radius)[:, None]  # (n, W)
            in_y = (py[None] - cy[:, None]).abs() < torch.clamp(bh / 2, max=radius)[:, None]  # (n, H)
            inside = (in_y[:, :, None] & in_x[:, None, :]).flatten(1).float()  # (n, H, W) -> (n, H*W)
            count.index_add_(0, img, inside)
        masks.append((count > 0).view(batch_size, h, w))
    return masks
