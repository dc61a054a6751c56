"""YOLOv5 v6.0 detection model: Detect head, Model (alias DetectionModel) and the yaml parser.

Box formats: Detect in eval mode returns xywh in **input-image pixels** (centre x, centre y, w, h),
followed by the objectness and class sigmoids. Detect.anchors is stored in **grid units** (pixels /
stride) as v6.0 does; the loss uses it directly, decoding multiplies it back by the stride.
"""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

# Re-exported (see __all__): v6.0's models/yolo.py star-imports models.common, and code written against it
# imports the blocks from here; parse_model itself takes them from models/parse.py's table.
from models.common import (
    ASCBAM,
    C3,
    SPP,
    SPPF,
    Bottleneck,
    BottleneckCSP,
    C2f,
    CABlock,
    Concat,
    Conv,
    Conv1_1,
    DWConv,
    Focus,
    SELayer,
)
from models.head_v8 import DetectV8
from models.parse import MODULES, parse_model, register_module
from utils.general import LOGGER, UserError, yaml_load
from utils.torch_utils import (
    fuse_conv_and_bn,
    initialize_weights,
    model_info,
    scale_img,
    time_sync,
)

MODELS_DIR = Path(__file__).resolve().parent


class Detect(nn.Module):
    """Per-level 1x1 conv to na*(nc+5) channels; decodes boxes in eval mode."""

    family = "v5"  # anchor-based with objectness (see models/head_v8.py for the anchor-free family)
    stride = None  # set by Model after the dry run: tensor (nl,) of pixels per grid cell
    onnx_dynamic = False  # rebuild grids every call (ONNX export with dynamic axes)

    def __init__(self, nc=80, anchors=(), ch=(), inplace=True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # outputs per anchor: xywh, obj, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl  # caches, rebuilt when the feature size changes
        self.anchor_grid = [torch.zeros(1)] * self.nl
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))  # (nl, na, 2)
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, xs):
        """Train: list of (bs, na, ny, nx, no) raw maps. Eval: (decoded (bs, N, no), raw list)."""
        raw, z = [], []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()  # -> (bs, na, ny, nx, no)
            raw.append(x)
            if not self.training:
                g = self.grid[i]
                if self.onnx_dynamic or g.shape[2:4] != x.shape[2:4] or g.device != x.device or g.dtype != x.dtype:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i, x)
                z.append(self._decode(x.sigmoid(), i).view(bs, -1, self.no))
        return raw if self.training else (torch.cat(z, 1), raw)

    def _decode(self, y, i):
        # xy = (2*sigmoid - 0.5 + grid) * stride, wh = (2*sigmoid)^2 * anchor (pixels), v6.0 decoding
        s = self.stride[i]
        if self.inplace:
            y[..., 0:2] = (y[..., 0:2] * 2 - 0.5 + self.grid[i]) * s
            y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
            return y
        xy = (y[..., 0:2] * 2 - 0.5 + self.grid[i]) * s
        wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, y[..., 4:]), -1)

    def loss_gains(self, hyp: dict, nc: int, imgsz: int) -> dict:
        """hyp with the v6.0 gains scaled for nc classes, this head's levels and imgsz (utils.losses.yolov5.scale_loss_gains)."""
        from utils.losses.yolov5 import scale_loss_gains

        return scale_loss_gains(hyp, nc, self.nl, imgsz)

    def build_loss(self, model: nn.Module, hyp: dict):
        """The training loss of this head: utils.losses.yolov5.ComputeLoss (v6.0)."""
        from utils.losses.yolov5 import ComputeLoss

        return ComputeLoss.from_model(model, hyp)

    @staticmethod
    def nms(prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """NMS for this head's eval output (B, N, 5 + nc): utils.nms.non_max_suppression."""
        from utils.nms import non_max_suppression

        return non_max_suppression(prediction, *args, **kwargs)

    def _make_grid(self, nx, ny, i, like):
        d = self.anchors.device
        yv, xv = torch.meshgrid(torch.arange(ny, device=d), torch.arange(nx, device=d), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2).to(like.dtype)  # (x, y) cell offsets
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
        return grid, anchor_grid.expand(1, self.na, ny, nx, 2).to(like.dtype)


def check_anchor_order(m: Detect) -> None:
    """Flip Detect anchors when their area order disagrees with the stride order (v6.0)."""
    a = m.anchors.prod(-1).view(-1)  # anchor areas
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da != 0 and da.sign() != ds.sign():
        LOGGER.info("Reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)


class Model(nn.Module):
    """YOLOv5 model built from a yaml (path or dict). See module docstring for output formats."""

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None,
                 anchors: int | list | None = None):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml = deepcopy(cfg)
        else:
            path = Path(cfg)
            if not path.is_file() and (MODELS_DIR / path.name).is_file():
                path = MODELS_DIR / path.name
            self.yaml_file = path.name
            self.yaml = yaml_load(path)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml.get("nc"):
            LOGGER.info(f"Overriding model.yaml nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, (int, float)) else anchors
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)

        m = self.model[-1]
        if isinstance(m, (Detect, DetectV8)):
            s = 256  # dry run in train mode: stride = input size / feature size per level
            m.inplace = self.inplace
            with torch.no_grad():
                out = self.forward(torch.zeros(1, ch, s, s))
                out = out["one2many"] if isinstance(out, dict) else out  # YOLO26: {one2many, one2one} maps
                m.stride = torch.tensor([s / x.shape[-2] for x in out])
            self.stride = m.stride
            if isinstance(m, Detect):
                m.anchors /= m.stride.view(-1, 1, 1)  # pixels -> grid units
                check_anchor_order(m)
                self._initialize_biases()
            else:
                m.bias_init()
        initialize_weights(self)
        self.info()
        LOGGER.info("")

    def forward(self, x, augment: bool = False, profile: bool = False, visualize: bool = False):
        """x: (B, ch, H, W) float in [0, 1]. augment: test-time augmentation (returns (pred, None)).

        `visualize` is accepted for v6.0 call compatibility; feature-map plots are not produced here.
        """
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile)

    def _forward_once(self, x, profile: bool = False):
        y, dt = [], []  # layer outputs kept for later layers (None where not in self.save)
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                t = time_sync()
                x = m(x)
                dt.append((time_sync() - t) * 1000)
                LOGGER.info(f"{dt[-1]:10.2f} ms  {m.np:10.0f}  {m.type}")
            else:
                x = m(x)
            y.append(x if m.i in self.save else None)
        if profile:
            LOGGER.info(f"{sum(dt):10.2f} ms  Total")
        return x

    def _forward_augment(self, x):
        if self.end2end:
            raise UserError("augmented inference (--augment) merges one-to-many outputs for NMS; this YOLO26 model "
                             "answers with NMS-free one-to-one rows: add --nms to use --augment")
        img_size = x.shape[-2:]  # (h, w)
        gs = int(self.stride.max())
        y = []
        v8 = isinstance(self.model[-1], DetectV8)
        for si, fi in zip((1, 0.83, 0.67), (None, 3, None)):  # scales and flips (3 = left-right)
            xi = scale_img(x.flip(fi) if fi else x, si, gs=gs)
            yi = self._forward_once(xi)[0]
            if v8:
                yi = yi.transpose(1, 2)  # (B, 4 + nc, N) -> (B, N, 4 + nc): one row per box, as for v5
            y.append(self._descale_pred(yi, fi, si, img_size))
        out = torch.cat(self._clip_augmented(y), 1)
        return (out.transpose(1, 2) if v8 else out), None  # each family's own eval layout

    @staticmethod
    def _descale_pred(p, flips, scale, img_size):
        p = p.clone()
        p[..., :4] /= scale
        if flips == 2:
            p[..., 1] = img_size[0] - p[..., 1]  # up-down
        elif flips == 3:
            p[..., 0] = img_size[1] - p[..., 0]  # left-right
        return p

    def _clip_augmented(self, y):
        # drop the large-object tail of the full-scale output and the small-object head of the smallest
        nl = self.model[-1].nl
        g = sum(4 ** x for x in range(nl))  # grid cells per P-level unit
        i = y[0].shape[1] // g
        y[0] = y[0][:, :-i]
        i = (y[-1].shape[1] // g) * 4 ** (nl - 1)
        y[-1] = y[-1][:, i:]
        return y

    def _initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Add v6.0 priors to Detect biases: obj ln(8/(640/s)^2), cls ln(0.6/(nc-0.99)) or ln(cf/sum)."""
        m = self.model[-1]
        with torch.no_grad():
            for mi, s in zip(m.m, m.stride):
                b = mi.bias.view(m.na, -1)  # (na*no,) -> (na, no), a view: edits land in the bias
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (m.nc - 0.99)) if cf is None else torch.log(cf / cf.sum())

    def fuse(self) -> Model:
        """Fold every Conv/DWConv BatchNorm into its conv (eval-time speed-up); returns self. A YOLO26 head in
        end2end mode also drops its one-to-many branches, which its output no longer uses (ultralytics' fuse);
        with end2end off they stay, for the one-to-many + NMS output."""
        LOGGER.info("Fusing layers... ")
        head = self.model[-1]
        if isinstance(head, DetectV8) and head.has_one2one and head.end2end:
            head.fuse()
        for m in self.model.modules():
            if isinstance(m, Conv) and "bn" in m._modules:
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
        self.info()
        return self

    def info(self, verbose: bool = False, img_size: int | list[int] = 640) -> dict:
        """Log layers, parameters, gradients and GFLOPs at img_size; returns them as a dict."""
        return model_info(self, verbose, img_size)

    def _apply(self, fn):
        # stride and the grid caches are plain attributes, not buffers: move/cast them too
        super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect) and m.stride is not None:
            m.stride = fn(m.stride)
            m.grid = list(map(fn, m.grid))
            if isinstance(m.anchor_grid, list):
                m.anchor_grid = list(map(fn, m.anchor_grid))
        elif isinstance(m, DetectV8) and m.stride is not None:
            m.stride = fn(m.stride)
            m.reset_cache()
        return self

    @property
    def head(self) -> nn.Module:
        """The detection head (last layer): Detect (YOLOv5 family) or DetectV8 (anchor-free, DFL)."""
        return self.model[-1]

    @property
    def end2end(self) -> bool:
        """True when the eval output is the NMS-free one-to-one top-k (B, max_det, 6) [x1, y1, x2, y2, conf,
        cls] of a YOLO26 head; False for every other model and for a YOLO26 model answering with its
        one-to-many head (B, 4 + nc, N) for NMS (the default of a freshly built or loaded model)."""
        head = self.model[-1]
        return bool(getattr(head, "has_one2one", False) and head.end2end)

    @property
    def supports_end2end(self) -> bool:
        """True when the head has a one-to-one (NMS-free) branch: YOLO26 models."""
        return bool(getattr(self.model[-1], "has_one2one", False))

    def set_end2end(self, on: bool) -> Model:
        """Choose the eval output of a YOLO26 model: NMS-free one-to-one top-k (True) or one-to-many for NMS
        (False). No-op for False on other models; True raises there (they have no one-to-one head)."""
        head = self.model[-1]
        if not self.supports_end2end:
            if on:
                raise ValueError(f"{type(head).__name__} head has no one-to-one branch: end2end (NMS-free) output "
                                 "needs a YOLO26 model; use NMS")
            return self
        if not on and not head.has_one2many:
            raise ValueError("this YOLO26 model was fused in end2end mode, which dropped its one-to-many head: "
                             "load it again with end2end off (--nms) for the one-to-many + NMS output")
        head.end2end = bool(on)
        return self

    @property
    def family(self) -> str:
        """'v5' (anchor-based, objectness) or 'v8' (anchor-free with DFL): decided by the head in the yaml."""
        return getattr(self.model[-1], "family", "v5")

    def __setstate__(self, state: dict) -> None:
        """Unpickling (any loader): an ultralytics DetectionModel becomes a plain Model of ours: its names
        dict {0: 'a', ...} -> list, its yaml head 'Detect' -> 'DetectV8' (with args [nc, reg_max, False] for a
        YOLO11 head, whose class branch ultralytics picks from the blocks above it; so Model(model.yaml)
        rebuilds the same layers here) and its training arguments `args` dropped (the model carries nc,
        names, stride)."""
        super().__setstate__(state)
        self.__dict__.pop("end2end", None)  # ultralytics' copy of its head's flag; here the head decides (end2end)
        if isinstance(self.__dict__.get("names"), dict):
            self.names = [str(self.names[k]) for k in sorted(self.names)]
        head = self._modules["model"][-1] if "model" in self._modules else None
        yaml = self.__dict__.get("yaml")
        if isinstance(head, DetectV8) and isinstance(yaml, dict) and yaml.get("head"):
            row = yaml["head"][-1]
            if isinstance(row, list) and len(row) == 4 and row[2] == "Detect":
                row[2] = "DetectV8"
                nc_arg = row[3][0] if row[3] else "nc"
                if head.has_one2one:  # YOLO26: reg_max (1) and end2end from the yaml's top-level keys
                    row[3] = [nc_arg, head.reg_max, head.legacy, True]
                elif not head.legacy:
                    row[3] = [nc_arg, head.reg_max, False]
            self.__dict__.pop("args", None)

    @property
    def has_anchors(self) -> bool:
        """True for the anchor-based YOLOv5 head (autoanchor applies), False for the anchor-free one."""
        return isinstance(self.model[-1], Detect)

    def loss_gains(self, hyp: dict, nc: int, imgsz: int) -> dict:
        """A copy of hyp with the loss gains this head's training uses for nc classes at imgsz pixels."""
        return self.model[-1].loss_gains(hyp, nc, imgsz)

    def build_loss(self, hyp: dict):
        """The training loss for this model's head, called as loss(raw_outputs, targets) -> (loss * bs, items).

        The gains in hyp are used as given (scale v5 gains first with utils.losses.yolov5.scale_loss_gains)."""
        return self.model[-1].build_loss(self, hyp)

    def nms(self, prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """NMS matching this model's eval output, with the arguments of utils.nms.non_max_suppression
        (conf_thres, iou_thres, classes, agnostic, multi_label, labels, max_det, backend); returns per
        image (n, 6) [x1, y1, x2, y2, conf, cls]."""
        return self.model[-1].nms(prediction, *args, **kwargs)


DetectionModel = Model  # v7.0 name


# ---------------------------------------------------------------------------------------------------
# yaml -> layers: models/parse.py (shared by both families); the YOLOv5 head defined here joins its table.
register_module("Detect", Detect)

__all__ = [
    "ASCBAM",
    "C3",
    "MODELS_DIR",
    "MODULES",
    "SPP",
    "SPPF",
    "Bottleneck",
    "BottleneckCSP",
    "C2f",
    "CABlock",
    "Concat",
    "Conv",
    "Conv1_1",
    "DWConv",
    "Detect",
    "DetectV8",
    "DetectionModel",
    "Focus",
    "Model",
    "SELayer",
    "check_anchor_order",
    "parse_model",
]
