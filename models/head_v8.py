"""YOLOv8-style anchor-free detection head with distribution focal loss (DFL) box regression.

Box formats: in eval mode DetectV8 returns (B, 4 + nc, N): rows 0..3 are xywh in **input-image pixels**
(centre x, centre y, w, h), rows 4.. the class sigmoids (no objectness). Columns are the anchor points
of P3, then P4, then P5, row-major within a level; the anchor point of cell (i, j) is (j + 0.5, i + 0.5)
in grid units. In train mode it returns the per-level raw maps (B, 4*reg_max + nc, ny, nx): 4*reg_max
box-edge logits (left, top, right, bottom; reg_max bins each) followed by nc class logits.

The head decides what differs from the YOLOv5 family: `family`, `build_loss`, `nms` (see below), so
scripts ask the model instead of testing file names. Attribute names (nc, nl, reg_max, no, stride, cv2,
cv3, dfl, anchors, strides) follow ultralytics so its pickled `Detect` maps onto this class.

Two class branches exist, as in ultralytics: the "legacy" one of YOLOv8 (Conv3x3, Conv3x3, Conv2d1x1)
and YOLO11's lighter one (DWConv3x3, Conv1x1, DWConv3x3, Conv1x1, Conv2d1x1). Everything else (box branch,
DFL, decoding, loss, NMS) is the same, so YOLO11 models are family "v8" too.

YOLO26 (end2end=True, reg_max=1: no DFL, the 4 box logits are the edge distances in grid units) adds a
second, one-to-one copy of both branches (one2one_cv2, one2one_cv3, deep copies at build time) that reads
the same maps *detached*, so its loss never reaches the backbone. Train mode then returns
{"one2many": [maps], "one2one": [maps]}. In eval mode the head answers according to `end2end`:
  - False (a freshly built or loaded model): (one-to-many decoded (B, 4 + nc, N), its raw list), exactly as
    a v8 head, for NMS (`nms` = non_max_suppression_v8);
  - True (`Model.set_end2end(True)`, what the scripts ask for a YOLO26 model): (B, max_det, 6) rows
    [x1, y1, x2, y2, conf, cls] in input pixels, the top max_det (300) class scores of the one-to-one head
    over all anchors and classes, no NMS; `nms` then only applies conf_thres, classes and max_det.
fuse() on a YOLO26 head drops the one-to-many branches (cv2 = cv3 = None, as ultralytics) and the
one-to-one head answers alone: end2end True gives the top-k rows, False its decoded (B, 4 + nc, N).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from models.common import DFL, Conv, DWConv
from utils.boxes import dist2bbox, make_anchors


class DetectV8(nn.Module):
    """Anchor-free head: per level a box branch (Conv3x3, Conv3x3, Conv2d1x1 -> 4*reg_max) and a class
    branch, boxes decoded through DFL. legacy=True (YOLOv8, the default): class branch Conv3x3, Conv3x3,
    Conv2d1x1 -> nc; legacy=False (YOLO11): DWConv3x3 -> Conv1x1, DWConv3x3 -> Conv1x1, Conv2d1x1 -> nc."""

    family = "v8"
    stride = None  # tensor (nl,) of pixels per grid cell, set by Model after the dry run
    dynamic = False  # rebuild anchor points every call (ONNX export with dynamic axes)
    inplace = True
    end2end = False  # eval output of a YOLO26 head: one-to-one top-k rows (True) or one-to-many decoded (False)
    max_det = 300  # rows of the one-to-one (end2end) output per image

    def __init__(self, nc: int = 80, ch: Sequence[int] = (), reg_max: int = 16, legacy: bool = True,
                 end2end: bool = False):
        super().__init__()
        if not ch:
            raise ValueError("DetectV8 needs the input channels of each level (ch)")
        if reg_max < 1 or (reg_max == 1 and not end2end):
            raise ValueError(f"DetectV8 reg_max={reg_max}: the DFL head needs at least 2 bins per box edge "
                             "(reg_max 1, direct edge distances, only with end2end True as in YOLO26)")
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max  # outputs per anchor point
        self.stride = torch.zeros(self.nl)
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))  # box / class branch widths
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch)
        if legacy:
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        else:
            self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                                                   nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                                                   nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        if end2end:  # YOLO26: the one-to-one copy, trained on detached maps (see the module docstring)
            self.one2one_cv2 = copy.deepcopy(self.cv2)
            self.one2one_cv3 = copy.deepcopy(self.cv3)
        self.anchors = torch.empty(0)  # cached (2, N) anchor points and (1, N) strides
        self.strides = torch.empty(0)

    @property
    def legacy(self) -> bool:
        """True for the YOLOv8 class branch, False for YOLO11's. Read from the layers (a YOLO11 branch starts
        with a DWConv -> Conv pair), because ultralytics does not pickle the flag with its Detect."""
        cls = self.cv3 if self.has_one2many else self._modules["one2one_cv3"]
        return not isinstance(cls[0][0], nn.Sequential)

    @property
    def has_one2one(self) -> bool:
        """True for a YOLO26 head (one-to-one branches present; ultralytics pickles them as one2one_cv2/cv3)."""
        return self._modules.get("one2one_cv2") is not None

    @property
    def has_one2many(self) -> bool:
        """False once fuse() dropped the one-to-many branches of a YOLO26 head."""
        return self._modules.get("cv2") is not None

    def _branches(self, xs: list[torch.Tensor], box: nn.ModuleList, cls: nn.ModuleList) -> list[torch.Tensor]:
        return [torch.cat((box[i](xs[i]), cls[i](xs[i])), 1) for i in range(self.nl)]

    def forward(self, xs: list[torch.Tensor]):
        """Train: list of nl raw maps (B, 4*reg_max + nc, ny, nx); a YOLO26 head {"one2many": list, "one2one":
        list}. Eval: (decoded (B, 4 + nc, N), raw list), or with end2end (B, max_det, 6) top-k rows instead
        of the decoded tensor (see the module docstring)."""
        if not self.has_one2one:
            raw = self._branches(xs, self.cv2, self.cv3)
            return raw if self.training else (self.decode(raw), raw)
        if self.training:
            if not self.has_one2many:
                raise RuntimeError("DetectV8: this YOLO26 head was fused (one-to-many branches dropped); "
                                   "it cannot be trained")
            return {"one2many": self._branches(xs, self.cv2, self.cv3),
                    "one2one": self._branches([x.detach() for x in xs], self.one2one_cv2, self.one2one_cv3)}
        if self.end2end or not self.has_one2many:  # eval runs only the branch it answers with
            raw = self._branches(xs, self.one2one_cv2, self.one2one_cv3)
            return (self.topk(self.decode(raw, xyxy=True)) if self.end2end else self.decode(raw)), raw
        raw = self._branches(xs, self.cv2, self.cv3)
        return self.decode(raw), raw

    def decode(self, raw: list[torch.Tensor], xyxy: bool = False) -> torch.Tensor:
        """Per-level raw maps -> (B, 4 + nc, N): xywh (xyxy when asked) pixels from the DFL expectation (or
        the distances themselves when reg_max is 1), class sigmoids."""
        b = raw[0].shape[0]
        x = torch.cat([r.view(b, self.no, -1) for r in raw], 2)  # nl x (B, no, ny, nx) -> (B, no, N)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        n = x.shape[2]
        a = self.anchors
        if self.dynamic or a.shape != (2, n) or a.dtype != x.dtype or a.device != x.device:
            points, strides = make_anchors(raw, self.stride, 0.5)
            self.anchors, self.strides = points.transpose(0, 1), strides.transpose(0, 1)  # (2, N), (1, N)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=not xyxy, dim=1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)

    def topk(self, decoded: torch.Tensor) -> torch.Tensor:
        """(B, 4 + nc, N) xyxy + class scores -> (B, k, 6) [x1, y1, x2, y2, conf, cls], k = min(max_det, N):
        the k highest (anchor, class) scores, found among the k anchors with the highest best-class score
        (ultralytics' order of operations, so ties resolve as there). NMS-free: one row per (anchor, class)."""
        boxes, scores = decoded.transpose(1, 2).split((4, self.nc), 2)  # (B, N, 4), (B, N, nc)
        b, n, nc = scores.shape
        k = min(self.max_det, n)
        anchor_idx = scores.amax(-1).topk(k, dim=1).indices  # (B, k) anchors with the best top class
        scores = scores.gather(1, anchor_idx[..., None].expand(b, k, nc))  # (B, k, nc)
        conf, flat = scores.flatten(1).topk(k, dim=1)  # (B, k) over the k*nc (anchor, class) pairs
        idx = anchor_idx.gather(1, flat // nc)  # (B, k) anchor of each kept pair
        boxes = boxes.gather(1, idx[..., None].expand(b, k, 4))
        return torch.cat((boxes, conf[..., None], (flat % nc)[..., None].to(boxes.dtype)), 2)

    def bias_init(self) -> None:
        """Priors: box logits 1.0 (2.0 on a YOLO26 head, both branches, as ultralytics' YOLO26-era Detect);
        class logits log(5 / nc / (640 / s)^2) (about 5 objects per 640 image)."""
        pairs = [(self.cv2, self.cv3)] + ([(self.one2one_cv2, self.one2one_cv3)] if self.has_one2one else [])
        box_prior = 2.0 if self.has_one2one else 1.0  # the v8/YOLO11 value stays as their tests pin it
        with torch.no_grad():
            for box, cls in pairs:
                for a, b, s in zip(box, cls, self.stride):
                    a[-1].bias.fill_(box_prior)
                    b[-1].bias[: self.nc] = math.log(5 / self.nc / (640 / float(s)) ** 2)

    def fuse(self) -> None:
        """A YOLO26 head keeps only its one-to-one branches for inference (ultralytics' fuse); others: no-op."""
        if self.has_one2one:
            self.cv2 = self.cv3 = None

    def reset_cache(self) -> None:
        """Forget cached anchor points (after loading a checkpoint or changing the stride)."""
        self.anchors, self.strides = torch.empty(0), torch.empty(0)

    # ---- what the scripts ask the head --------------------------------------------------------------
    def loss_gains(self, hyp: dict, nc: int, imgsz: int) -> dict:
        """The v8 gains (box, cls, dfl) are used as written: no rescaling for nc, levels or image size."""
        return dict(hyp)

    def build_loss(self, model: nn.Module, hyp: dict):
        """The training loss of this head: utils.losses.yolov8.V8DetectionLoss (box CIoU, BCE classes, DFL), or
        for a YOLO26 head utils.losses.e2e.E2ELoss (one-to-many + one-to-one, L1 box term instead of DFL)."""
        if self.has_one2one:
            from utils.losses.e2e import E2ELoss

            return E2ELoss.from_model(model, hyp)
        from utils.losses.yolov8 import V8DetectionLoss

        return V8DetectionLoss.from_model(model, hyp)

    def nms(self, prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """The post-processing of this head's eval output, with the arguments of the YOLOv5 non_max_suppression
        (conf_thres, iou_thres, classes, agnostic, multi_label, labels, max_det, ...): for (B, 4 + nc, N)
        utils.nms.non_max_suppression_v8; for end2end top-k rows (B, k, 6) utils.nms.select_end2end (no NMS:
        conf_thres, classes and max_det only)."""
        from utils.nms import non_max_suppression_v8, select_end2end

        if self.has_one2one and self.end2end:
            return select_end2end(prediction, *args, **kwargs)
        return non_max_suppression_v8(prediction, *args, **kwargs)
