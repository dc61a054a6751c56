"""Non-maximum suppression as in YOLOv5 v6.0, with an optional torchvision backend.

torchvision is optional: when it imports and its `ops.nms` runs, it is used; otherwise a greedy NMS
in torch + numpy (backend 'torch') gives the same kept indices in the same order (stable sort by
score, descending; a box is suppressed by an earlier kept box when IoU > iou_thres, IoU computed in
the same float32 arithmetic).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from utils.boxes import xywh2xyxy
from utils.general import LOGGER

MAX_WH = 4096  # (pixels) class offset of the batched-NMS trick: boxes of different classes never overlap
MAX_NMS = 30000  # at most this many boxes go into the NMS itself
TOP_K_PER_DET = 8  # first try NMS on the 8 x max_det best boxes (exact when it keeps max_det of them)
# v6.0 stops NMS after 10 s per batch and drops the remaining images' detections: on a slow or busy machine
# the same model and data would then score a lower mAP. We finish every image and warn once instead.
TIME_LIMIT = 10.0  # seconds for the whole batch before the (one) slowness warning
_CHUNK = 512  # boxes resolved at once by the pure-torch NMS (memory: CHUNK x kept IoUs)
_GROUP = 256  # clusters of x-overlapping boxes are packed into groups of about this many


@functools.lru_cache(maxsize=1)
def _torchvision_nms() -> Callable | None:
    """torchvision.ops.nms if torchvision is installed and its NMS actually runs here, else None."""
    try:
        import torchvision  # optional dependency

        fn = torchvision.ops.nms
        keep = fn(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.9, 0.8]), 0.5)
        if keep.tolist() != [0]:
            return None
        return fn
    except Exception:  # noqa: BLE001  missing, or built against another torch (operator not registered)
        return None


def torchvision_available() -> bool:
    """True when torchvision.ops.nms imports and works (tests use this to skip that backend)."""
    return _torchvision_nms() is not None


def _pairwise_iou(a: np.ndarray, b: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """IoU of float32 xyxy boxes a (N,4) against b (M,4) -> (N,M), in torchvision's operation order (no eps)."""
    w = np.minimum(a[:, 2:3], b[:, 2]) - np.maximum(a[:, 0:1], b[:, 0])
    h = np.minimum(a[:, 3:4], b[:, 3]) - np.maximum(a[:, 1:2], b[:, 1])
    inter = np.maximum(w, 0, out=w) * np.maximum(h, 0, out=h)
    with np.errstate(divide="ignore", invalid="ignore"):  # two zero-area boxes: 0/0 = nan, never suppresses
        return inter / ((area_a[:, None] + area_b) - inter)


def _greedy(b: np.ndarray, area: np.ndarray, iou_thres: float) -> np.ndarray:
    """Greedy NMS of boxes already sorted by decreasing score -> kept positions (ascending).

    Boxes are processed in chunks: a chunk is first pruned by the boxes already kept (one matrix
    op), then its overlap matrix is scanned in order, each kept box removing the later ones it
    overlaps (the same scan torchvision's CUDA kernel does on its overlap mask).
    """
    kept = []
    kept_boxes, kept_area = b[:0], area[:0]
    for s in range(0, b.shape[0], _CHUNK):
        cb, ca = b[s:s + _CHUNK], area[s:s + _CHUNK]
        if kept_boxes.shape[0]:
            removed = (_pairwise_iou(kept_boxes, cb, kept_area, ca) > iou_thres).any(0)
        else:
            removed = np.zeros(cb.shape[0], dtype=bool)
        over = np.triu(_pairwise_iou(cb, cb, ca, ca) > iou_thres, k=1)
        keep = []
        for i in range(cb.shape[0]):
            if not removed[i]:
                keep.append(i)
                removed |= over[i]
        kept.append(np.asarray(keep, dtype=np.int64) + s)
        kept_boxes = np.concatenate((kept_boxes, cb[keep]))
        kept_area = np.concatenate((kept_area, ca[keep]))
    return np.concatenate(kept)


def _nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Greedy NMS without torchvision: indices of kept boxes, by decreasing score (stable for ties).

    The score sort is torch's stable sort; the overlap tests run in float32 numpy on the CPU, which
    gives the same IEEE results as torchvision's kernel and, unlike many tiny multi-threaded torch
    ops, stays fast when the CPU is shared. Boxes whose x-ranges do not overlap have zero
    intersection, so they can never suppress each other (IoU > iou_thres >= 0 needs a positive
    intersection): boxes are split into clusters of overlapping x-ranges (with the class offset of
    the batched trick, at least one per class), packed into groups of about _GROUP boxes, and each
    group is solved exactly on its own.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order].detach().float().cpu().numpy()  # positions 0..n-1 are now score ranks
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    xs = np.argsort(b[:, 0], kind="stable")  # sweep along x1
    reach = np.maximum.accumulate(b[xs, 2])  # right-most x2 seen so far
    starts = np.ones(n, dtype=bool)
    starts[1:] = b[xs[1:], 0] > reach[:-1]  # a gap in x: a new cluster begins
    cluster = np.cumsum(starts) - 1
    sizes = np.bincount(cluster)
    group_of_cluster = (np.cumsum(sizes) - sizes) // _GROUP  # whole clusters only, so groups stay exact
    group = np.empty(n, dtype=np.int64)
    group[xs] = group_of_cluster[cluster]

    by_group = np.argsort(group * n + np.arange(n), kind="stable")  # by group, then by score rank
    bounds = np.cumsum(np.bincount(group))[:-1]
    kept = [pos[_greedy(b[pos], area[pos], iou_thres)] for pos in np.split(by_group, bounds) if len(pos)]
    keep = torch.from_numpy(np.sort(np.concatenate(kept))).to(order.device)
    return order[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float, backend: str | None = None) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score.

    boxes (N,4) xyxy pixels, scores (N,). backend: None (torchvision when it works, else torch),
    'torch' or 'torchvision' (raises RuntimeError when torchvision is unusable).
    """
    if backend not in (None, "torch", "torchvision"):
        raise ValueError(f"unknown NMS backend '{backend}', choose None, 'torch' or 'torchvision'")
    tv = _torchvision_nms() if backend != "torch" else None
    if backend == "torchvision" and tv is None:
        raise RuntimeError("NMS backend 'torchvision' requested but torchvision is not installed or not working")
    if tv is not None:
        return tv(boxes, scores, iou_thres)
    return _nms_torch(boxes, scores, iou_thres)


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """(n, 5+nc) rows [xywh, obj, cls...] -> (m, 6) rows [xyxy, conf, cls] above conf_thres."""
    x[:, 5:] *= x[:, 4:5]  # conf = obj_conf * cls_conf
    box = xywh2xyxy(x[:, :4])
    if multi_label:  # one row per (box, class) pair above the threshold
        i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
        return torch.cat((box[i], x[i, j + 5, None], j[:, None].float()), 1)
    conf, j = x[:, 5:].max(1, keepdim=True)  # best class only
    return torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: Sequence[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        labels: Sequence[torch.Tensor] = (), max_det: int = 300,
                        backend: str | None = None) -> list[torch.Tensor]:
    """YOLOv5 v6.0 NMS on decoded predictions.

    prediction: (bs, N, 5+nc) rows [x, y, w, h (pixels), obj, class scores (sigmoids)].
    labels: optional per-image (k, 5) [cls, x, y, w, h pixels] added as conf-1 boxes (autolabelling).
    Returns a list of bs tensors (n, 6) [x1, y1, x2, y2 (pixels), conf, cls], by decreasing conf.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} must be in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} must be in [0, 1]")
    nc = prediction.shape[2] - 5
    xc = prediction[..., 4] > conf_thres  # objectness filter, before class scores are multiplied in
    multi_label &= nc > 1

    t = time.time()
    output = [torch.zeros((0, 6), device=prediction.device)] * prediction.shape[0]
    for xi, x in enumerate(prediction):
        x = x[xc[xi]]  # boolean indexing copies, so the caller's tensor is never modified
        if labels and len(labels[xi]):
            lb = labels[xi]
            v = torch.zeros((len(lb), nc + 5), device=x.device)
            v[:, :4] = lb[:, 1:5]
            v[:, 4] = 1.0
            v[range(len(lb)), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, v), 0)
        if not x.shape[0]:
            continue
        x = _candidates(x, conf_thres, multi_label)
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        if x.shape[0] > MAX_NMS:
            x = x[x[:, 4].argsort(descending=True, stable=True)[:MAX_NMS]]

        output[xi] = _per_class_nms(x, iou_thres, 0 if agnostic else MAX_WH, max_det, backend)
        t = _warn_if_slow(t)
    return output


# ---------------------------------------------------------------------------------------------------
# YOLOv8 family (anchor-free head, no objectness)

MAX_WH_V8 = 7680  # (pixels) class offset used by ultralytics 8.x; kept so the float32 offsets round alike


def non_max_suppression_v8(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.7,
                           classes: Sequence[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                           labels: Sequence[torch.Tensor] = (), max_det: int = 300,
                           backend: str | None = None) -> list[torch.Tensor]:
    """NMS on the eval output of a DetectV8 head (ultralytics 8.x semantics).

    prediction: (bs, 4 + nc, N) rows [x, y, w, h (pixels), class scores (sigmoids)], or the (pred, raw)
    tuple the model returns. conf = the class score (best class, or every class above conf_thres with
    multi_label). labels: optional per-image (k, 5) [cls, x, y, w, h pixels] added as conf-1 boxes.
    Returns a list of bs tensors (n, 6) [x1, y1, x2, y2 (pixels), conf, cls], by decreasing conf.
    The caller's tensor is never modified.
    """
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} must be in [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} must be in [0, 1]")
    nc = prediction.shape[1] - 4
    xc = prediction[:, 4:].amax(1) > conf_thres  # (bs, N) candidates: best class score above threshold
    multi_label &= nc > 1
    pred = prediction.transpose(-1, -2)  # (bs, 4 + nc, N) -> (bs, N, 4 + nc)

    t = time.time()
    output = [torch.zeros((0, 6), device=prediction.device)] * prediction.shape[0]
    for xi, x in enumerate(pred):
        x = x[xc[xi]]
        if labels and len(labels[xi]):
            lb = labels[xi]
            v = torch.zeros((len(lb), nc + 4), device=x.device, dtype=x.dtype)
            v[:, :4] = lb[:, 1:5]
            v[range(len(lb)), lb[:, 0].long() + 4] = 1.0
            x = torch.cat((x, v), 0)
        if not x.shape[0]:
            continue
        box, cls = xywh2xyxy(x[:, :4]), x[:, 4:]
        if multi_label:  # one row per (box, class) pair above the threshold
            i, j = (cls > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], cls[i, j, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = cls.max(1, keepdim=True)
            x = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        # Order by score with torch's default (non-stable) sort as ultralytics does (once to cut to MAX_NMS,
        # once more inside its NMS): equal float32 scores then come out in the reference's order (the
        # kept set does not depend on it). The NMS below sorts stably, so it keeps this order among ties.
        if x.shape[0] > MAX_NMS:
            x = x[x[:, 4].argsort(descending=True)[:MAX_NMS]]
        x = x[x[:, 4].argsort(descending=True)]
        output[xi] = _per_class_nms(x, iou_thres, 0 if agnostic else MAX_WH_V8, max_det, backend)
        t = _warn_if_slow(t)
    return output


def select_end2end(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.7,
                   classes: Sequence[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                   labels: Sequence[torch.Tensor] = (), max_det: int = 300,
                   backend: str | None = None) -> list[torch.Tensor]:
    """The NMS-free counterpart of non_max_suppression_v8 for an end2end head (YOLO26's one-to-one top-k).

    prediction: (bs, k, 6) rows [x1, y1, x2, y2 (pixels), conf, cls] by decreasing conf, or the (pred, raw)
    tuple the model returns. Keeps the rows with conf > conf_thres (and in `classes`), at most max_det.
    iou_thres, agnostic, multi_label and backend are accepted for the common signature and not used: the
    one-to-one head was trained to give one row per object. labels: optional per-image (n, 5) [cls, x, y,
    w, h pixels] added as conf-1 rows first (val --save-hybrid). Returns a list of bs (n, 6) tensors."""
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} must be in [0, 1]")
    if prediction.ndim != 3 or prediction.shape[-1] != 6:
        raise ValueError(f"select_end2end expects (bs, k, 6) end2end rows, got {tuple(prediction.shape)}: a "
                         "(bs, 4 + nc, N) one-to-many output needs non_max_suppression_v8")
    output = []
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device, dtype=x.dtype)).any(1)]
        if labels and len(labels[xi]):
            lb = labels[xi].to(x.dtype)
            rows = torch.cat((xywh2xyxy(lb[:, 1:5]), torch.ones_like(lb[:, :1]), lb[:, :1]), 1)
            x = torch.cat((rows, x), 0)
        output.append(x[:max_det])
    return output


def _per_class_nms(x: torch.Tensor, iou_thres: float, offset: float, max_det: int, backend: str) -> torch.Tensor:
    """Kept rows of x (n, 6) [xyxy, conf, cls]: boxes shifted by cls x offset so that classes never suppress
    each other (offset 0: class-agnostic), at most max_det.

    Greedy NMS decides each box from the higher-scored boxes alone, so when the TOP_K best-scored boxes
    already keep max_det of them, those are exactly the first max_det of the full run: the rest is never
    looked at (validation at conf 0.001 has thousands of candidates per image and keeps 300)."""
    boxes = x[:, :4] + x[:, 5:6] * offset
    k, order = max(TOP_K_PER_DET * max_det, 1), None
    while x.shape[0] > k:  # 8, 32, 128 ... x max_det best boxes, then all of them
        if order is None:
            order = x[:, 4].argsort(descending=True, stable=True)  # the same order nms() ranks by
        top = order[:k]
        i = nms(boxes[top], x[top, 4], iou_thres, backend=backend)
        if i.shape[0] >= max_det:
            return x[top[i[:max_det]]]
        k *= 4
    i = nms(boxes, x[:, 4], iou_thres, backend=backend)[:max_det]
    return x[i]


def _warn_if_slow(t: float | None) -> float | None:
    """Once per batch, past TIME_LIMIT seconds since t: a warning, never dropped detections. Returns the
    start time, or None once warned."""
    if t is not None and (time.time() - t) > TIME_LIMIT:
        LOGGER.warning(f"WARNING: NMS took over {TIME_LIMIT:g}s for this batch (results are complete; "
                       "raise --conf-thres or lower --max-det to speed it up)")
        return None
    return t


def nms_for(model: object) -> Callable[..., list[torch.Tensor]]:
    """The NMS that matches a model's eval output: its own `nms` (the detection head decides, see
    models.yolo.Model.nms), looked up on the model, a DDP/DP wrapper (.module) or a backend holding the
    model (.model); the YOLOv5 non_max_suppression for anything else (exported YOLOv5 models)."""
    for m in (model, getattr(model, "module", None), getattr(model, "model", None)):
        fn = getattr(m, "nms", None)
        if callable(fn):
            return fn
    return non_max_suppression
