"""yaml -> layers for every model family: one parser, the head in the yaml decides the family.

Module names are looked up in the explicit table MODULES; yaml strings are never eval'd. Widths scale
with width_multiple (after an optional max_channels cap, YOLOv8 yamls), depths with depth_multiple; the
ultralytics form `scales: {n: [depth, width, max_channels], ...}` + `scale` is accepted too.
"""

from __future__ import annotations

import math

from torch import nn

from models.blocks_v11 import C2PSA, C3k2, SPPFn
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
from utils.general import LOGGER, UserError, make_divisible

MODULES = {
    "Conv": Conv, "DWConv": DWConv, "Bottleneck": Bottleneck, "BottleneckCSP": BottleneckCSP, "C3": C3,
    "SPP": SPP, "SPPF": SPPF, "Focus": Focus, "Concat": Concat, "Conv1_1": Conv1_1,
    "SELayer": SELayer, "ASCBAM": ASCBAM, "CABlock": CABlock, "C2f": C2f, "DetectV8": DetectV8,
    "C3k2": C3k2, "C2PSA": C2PSA,
    "nn.Upsample": nn.Upsample, "nn.BatchNorm2d": nn.BatchNorm2d, "nn.Identity": nn.Identity,
}  # + "Detect" (YOLOv5 head, defined in models/yolo.py), registered there with register_module
_SCALED = (Conv, DWConv, Bottleneck, BottleneckCSP, C3, C2f, SPP, SPPF, SPPFn, Focus, Conv1_1, C3k2,
           C2PSA)  # args[0] = out channels
_REPEAT_INSIDE = (BottleneckCSP, C3, C2f, C3k2, C2PSA)  # n goes in as an argument
_LARGE_SCALES = ("m", "l", "x")  # ultralytics-form yamls: C3k2 uses C3k blocks at these scales (see parse_model)
_ATTENTION = (SELayer, ASCBAM, CABlock)  # args = [channels, ratio, c2, need11, reverse]


def register_module(name: str, cls: type) -> None:
    """Add a class to the yaml table (models/yolo.py registers the YOLOv5 Detect head it defines)."""
    MODULES[name] = cls


def _is_v5_head(m: type) -> bool:
    """The anchor-based head: args [nc, anchors] plus the per-level input channels."""
    return getattr(m, "family", None) == "v5"


def _resolve(a, nc, anchors):
    """The three yaml strings v6.0 evaluates; every other string stays a string."""
    if isinstance(a, str):
        return {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}.get(a, a)
    return a


def _single_input(ch, f, i, name):
    if not isinstance(f, int):
        raise UserError(f"model yaml layer {i} ({name}): 'from' must be a single index, got {f}")
    return ch[f]


def _attention_args(args, c1, width, no, i, name):
    """Validate the yaml channel argument against the incoming width and scale the optional c2."""
    if not args or not isinstance(args[0], int):
        raise UserError(f"model yaml layer {i} ({name}): first argument must be the channel count, got {args}")
    c = width(args[0]) if args[0] != no else args[0]
    if c != c1:
        raise UserError(f"model yaml layer {i} ({name}): channel argument {args[0]} scales to {c} with the "
                        f"yaml's width scaling, but the incoming layer gives {c1} channels; fix args[0]")
    rest = list(args[1:])
    if len(rest) >= 2 and isinstance(rest[1], int):
        rest[1] = width(rest[1])  # optional 1x1 conv output width
    return [c1, *rest]


def _scaling(d: dict) -> tuple[float, float, float, str | None]:
    """(depth, width, max_channels, scale) of a model dict: depth_multiple/width_multiple[/max_channels]
    (scale None), or the ultralytics form `scales: {n: [depth, width, max_channels], ...}` with `scale`
    naming the entry (default: the first)."""
    if "scales" in d and "depth_multiple" not in d:
        scales = d["scales"]
        scale = d.get("scale") or next(iter(scales))
        if scale not in scales:
            raise UserError(f"model yaml scale '{scale}' is not one of its scales {list(scales)}")
        gd, gw, mc = scales[scale]
        return gd, gw, mc, scale
    return d["depth_multiple"], d["width_multiple"], d.get("max_channels", math.inf), None


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a model dict (yaml). Returns (nn.Sequential, sorted save list).

    Depth: n > 1 becomes max(round(n * depth_multiple), 1). Width: c2 = ceil(min(c2, max_channels) *
    width_multiple / 8) * 8 for the channel-changing modules (not for a Detect output width);
    max_channels (YOLOv8 yamls) is unlimited when absent. `anchors` is needed only by the YOLOv5 Detect
    head. Each layer gets i, f, type, np.

    One rule of ultralytics' own parser is kept for yamls in its `scales` form (e.g. the yaml an ultralytics
    YOLO11 checkpoint carries): at scale m, l or x every C3k2 is built with C3k blocks (c3k True) whatever
    the yaml says. This repo's per-scale yamls (depth_multiple form) write c3k explicitly instead.
    """
    LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    try:
        anchors, nc = d.get("anchors"), d["nc"]
        gd, gw, mc, scale = _scaling(d)
        rows = list(d["backbone"]) + list(d["head"])
    except (KeyError, TypeError) as e:
        raise UserError(f"model yaml is missing key {e}: needs nc, depth_multiple, width_multiple (or scales), "
                        f"backbone, head, and anchors for a YOLOv5 Detect head") from None
    if anchors is not None:
        na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
        no = na * (nc + 5)
    else:
        no = nc  # anchor-free yaml: a channel argument equal to nc is a class count, never scaled

    def width(c: int) -> int:
        return make_divisible(min(c, mc) * gw, 8)

    layers, save, c2 = [], [], ch[-1]
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4):
            raise UserError(f"model yaml layer {i}: expected [from, number, module, args], got {row}")
        f, n, name, args = row
        m = MODULES.get(name)
        if m is None:
            raise UserError(f"model yaml layer {i}: unknown module '{name}'. Known modules: {', '.join(MODULES)}")
        if _is_v5_head(m) and anchors is None:
            raise UserError(f"model yaml layer {i} (Detect): the YOLOv5 Detect head needs an 'anchors' entry in "
                            f"the yaml; for the anchor-free head use DetectV8")
        args = [_resolve(a, nc, anchors) for a in (args or [])]
        n = n_ = max(round(n * gd), 1) if n > 1 else n
        if m is SPPF and len(args) > 2:
            m = SPPFn  # [c2, k, n, shortcut] (YOLO26): the SPPF form with a linear cv1, see SPPFn
        if m is C3k2 and scale in _LARGE_SCALES and len(args) > 1:
            args = [args[0], True, *args[2:]]  # [c2, c3k, e, ...]: c3k forced at m/l/x (ultralytics' rule)
        try:
            m_, c2, args, n = _build_layer(m, name, f, n, args, ch, c2, width, no, i)
        except IndexError:
            raise UserError(f"model yaml layer {i} ({name}): 'from' {f} refers to a layer that does not exist "
                            f"yet (only {len(ch)} earlier layers)") from None
        m_.i, m_.f, m_.type = i, f, f"{m.__module__}.{m.__qualname__}"
        m_.np = sum(x.numel() for x in m_.parameters())
        LOGGER.info(f"{i:>3}{f!s:>18}{n_:>3}{m_.np:10.0f}  {m_.type:<40}{args!s:<30}")
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []  # from here on ch[i] is the output width of layer i
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


def _build_layer(m, name, f, n, args, ch, c2, width, no, i):
    """Channel bookkeeping for one row; returns (module, output channels, final args, n)."""
    if m in _SCALED:
        c1, c2 = _single_input(ch, f, i, name), args[0]
        if c2 != no:
            c2 = width(c2)
        args = [c1, c2, *args[1:]]
        if m in _REPEAT_INSIDE:
            args.insert(2, n)
            n = 1
    elif m in _ATTENTION:
        args = _attention_args(args, _single_input(ch, f, i, name), width, no, i, name)
    elif m is nn.BatchNorm2d:
        args = [c2 := _single_input(ch, f, i, name)]
    elif m is Concat:
        c2 = sum(ch[x] for x in ([f] if isinstance(f, int) else f))
    elif _is_v5_head(m):
        args.append([ch[x] for x in f])
        if isinstance(args[1], int):  # anchors given as a count: placeholders for autoanchor
            args[1] = [list(range(args[1] * 2))] * len(f)
    elif m is DetectV8:
        # (nc, per-level channels, reg_max, legacy, end2end)
        args = [args[0] if args else no, [ch[x] for x in f], *args[1:]]
    else:
        c2 = _single_input(ch, f, i, name)
    try:
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
    except (TypeError, ValueError) as e:
        raise UserError(f"model yaml layer {i} ({name}): cannot build with args {args}: {e}") from None
    if m in _ATTENTION:
        c2 = (m_[-1] if n > 1 else m_).c2
    return m_, c2, args, n
