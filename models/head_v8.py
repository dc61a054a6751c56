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
"""

from __future__ import annotations

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

    def __init__(self, nc: int = 80, ch: Sequence[int] = (), reg_max: int = 16, legacy: bool = True):
        super().__init__()
        if not ch:
            raise ValueError("DetectV8 needs the input channels of each level (ch)")
        if reg_max < 2:
            raise ValueError(f"DetectV8 reg_max={reg_max}: the DFL head needs at least 2 bins per box edge")
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
        self.dfl = DFL(reg_max)
        self.anchors = torch.empty(0)  # cached (2, N) anchor points and (1, N) strides
        self.strides = torch.empty(0)

    @property
    def legacy(self) -> bool:
        """True for the YOLOv8 class branch, False for YOLO11's. Read from the layers (a YOLO11 branch starts
        with a DWConv -> Conv pair), because ultralytics does not pickle the flag with its Detect."""
        return not isinstance(self.cv3[0][0], nn.Sequential)

    def forward(self, xs: list[torch.Tensor]):
        """Train: list of nl raw maps (B, 4*reg_max + nc, ny, nx). Eval: (decoded (B, 4 + nc, N), raw list)."""
        raw = [torch.cat((self.cv2[i](xs[i]), self.cv3[i](xs[i])), 1) for i in range(self.nl)]
        if self.training:
            return raw
        return self.decode(raw), raw

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Per-level raw maps -> (B, 4 + nc, N): xywh pixels from the DFL expectation, class sigmoids."""
        b = raw[0].shape[0]
        x = torch.cat([r.view(b, self.no, -1) for r in raw], 2)  # nl x (B, no, ny, nx) -> (B, no, N)
        box, cls = x.split((4 * self.reg_max, self.nc), 1)
        n = x.shape[2]
        a = self.anchors
        if self.dynamic or a.shape != (2, n) or a.dtype != x.dtype or a.device != x.device:
            points, strides = make_anchors(raw, self.stride, 0.5)
            self.anchors, self.strides = points.transpose(0, 1), strides.transpose(0, 1)  # (2, N), (1, N)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=True, dim=1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)

    def bias_init(self) -> None:
        """Priors: box logits 1.0; class logits log(5 / nc / (640 / s)^2) (about 5 objects per 640 image)."""
        with torch.no_grad():
            for a, b, s in zip(self.cv2, self.cv3, self.stride):
                a[-1].bias.fill_(1.0)
                b[-1].bias[: self.nc] = math.log(5 / self.nc / (640 / float(s)) ** 2)

    def reset_cache(self) -> None:
        """Forget cached anchor points (after loading a checkpoint or changing the stride)."""
        self.anchors, self.strides = torch.empty(0), torch.empty(0)

    # ---- what the scripts ask the head --------------------------------------------------------------
    def loss_gains(self, hyp: dict, nc: int, imgsz: int) -> dict:
        """The v8 gains (box, cls, dfl) are used as written: no rescaling for nc, levels or image size."""
        return dict(hyp)

    def build_loss(self, model: nn.Module, hyp: dict):
        """The training loss of this head: utils.losses.yolov8.V8DetectionLoss (box CIoU, BCE classes, DFL)."""
        from utils.losses.yolov8 import V8DetectionLoss

        return V8DetectionLoss.from_model(model, hyp)

    @staticmethod
    def nms(prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """NMS for this head's eval output (B, 4 + nc, N): utils.nms.non_max_suppression_v8 (same arguments
        as the YOLOv5 non_max_suppression)."""
        from utils.nms import non_max_suppression_v8

        return non_max_suppression_v8(prediction, *args, **kwargs)
