"""Which feature maps of the student and the teacher are compared, found from a dummy forward.

Default layers of a YOLOv5 Model: the output of every C3-type block and of SPPF/SPP, in layer order
(backbone and neck alike); when an attention block (SELayer, ASCBAM, CABlock) directly follows such a
block, its output is taken instead. For the v6.0 P5 yamls that is model.{2,4,6,8,9,13,17,20,23};
for the '-se/-cbam/-ca' yamls model.{3,6,9,12,13,18,23,27,31}. For the v8 yamls (C2f blocks)
model.{2,4,6,8,9,12,15,18,21}: nine too, so the two families pair one to one. Layers are found by module type,
never by hard-coded indices, and student/teacher layers are paired by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distill.hooks import FeatureHooks, resolve_layer_names, unwrap_parallel
from utils.general import LOGGER, UserError

CSP_BLOCKS = ("C3", "BottleneckCSP", "C3TR", "C3SPP", "C3Ghost", "C2f", "C3k2")  # C2f: v8, C3k2: YOLO11
POOL_BLOCKS = ("SPPF", "SPP")
ATTENTION_BLOCKS = ("SELayer", "ASCBAM", "CABlock", "C2PSA")  # C2PSA: YOLO11's attention after SPPF


@dataclass
class FeatureInfo:
    """Output channels and stride (input pixels per feature cell) of hooked layers, in order."""

    names: list[str]
    channels: list[int]
    strides: list[float]


@dataclass
class LayerPairing:
    """Paired student/teacher layers (same length, same order)."""

    student: FeatureInfo
    teacher: FeatureInfo


def _layers(model: nn.Module) -> nn.Sequential:
    model = unwrap_parallel(model)
    if not isinstance(getattr(model, "model", None), nn.Sequential):
        raise UserError(f"{type(model).__name__} is not a YOLOv5 Model (no .model layer list); "
                        "pass explicit layer names")
    return model.model


def default_feature_layers(model: nn.Module) -> list[str]:
    """'model.i' names of the C3/SPPF outputs (or the attention block right after them), in order."""
    layers = list(_layers(model))
    picked = []
    for i, layer in enumerate(layers):
        if type(layer).__name__ in CSP_BLOCKS + POOL_BLOCKS:
            j = i
            while j + 1 < len(layers) and type(layers[j + 1]).__name__ in ATTENTION_BLOCKS:
                j += 1  # the attention block refines this block's output: distil what the model uses
            picked.append(f"model.{j}")
    if not picked:
        raise UserError(f"no C3/SPPF layers found in {type(unwrap_parallel(model)).__name__}; "
                        "pass the layers explicitly (--student-layers / --teacher-layers)")
    return picked


def probe_features(model: nn.Module, layers: Sequence[str | int], imgsz: int | None = None) -> FeatureInfo:
    """Channels and strides of `layers` from one no-grad dummy forward in eval mode.

    imgsz defaults to 4x the model's largest stride. Every module's train/eval flag is restored
    afterwards; eval mode keeps BatchNorm running statistics untouched.
    """
    model = unwrap_parallel(model)
    names = resolve_layer_names(model, layers)
    if imgsz is None:
        stride = getattr(model, "stride", None)
        imgsz = int(max(stride.tolist() if isinstance(stride, torch.Tensor) else (stride or [32]))) * 4
    p = next(model.parameters())
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), FeatureHooks(model, names) as feats:
            model(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
        outs = feats.outputs
    finally:
        for m, mode in modes.items():
            m.training = mode
    channels, strides = [], []
    for name, out in zip(names, outs):
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise UserError(f"layer {name} does not output a (B, C, H, W) feature map; pick another layer")
        channels.append(int(out.shape[1]))
        strides.append(imgsz / out.shape[-2])
    return FeatureInfo(names, channels, strides)


def parse_layer_list(text: str | Sequence[str | int] | None) -> list[str | int] | None:
    """'model.4,model.6' or '4,6' (or a list) -> list of names/indices; empty -> None (use defaults)."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [int(s) if isinstance(s, str) and s.isdigit() else s for s in items if s != ""]
    return items or None


def pair_layers(student: nn.Module, teacher: nn.Module, student_layers=None, teacher_layers=None,
                imgsz: int | None = None) -> LayerPairing:
    """Pair student/teacher feature layers by position (defaults from default_feature_layers).

    Explicit lists (names, indices or 'model.4,model.6' strings) override the defaults per side.
    Raises UserError on unknown names, unequal counts, or (default pairing) unequal strides.
    """
    explicit = {"student": parse_layer_list(student_layers), "teacher": parse_layer_list(teacher_layers)}
    infos = {}
    for side, model in (("student", student), ("teacher", teacher)):
        layers = explicit[side] or default_feature_layers(model)
        try:
            infos[side] = probe_features(model, layers, imgsz)
        except ValueError as e:
            raise UserError(f"--{side}-layers: {e}") from e
    s, t = infos["student"], infos["teacher"]
    if len(s.names) != len(t.names):
        raise UserError(f"student has {len(s.names)} distillation layers {s.names} but the teacher has "
                        f"{len(t.names)} {t.names}; layers are paired by position, so give both "
                        "--student-layers and --teacher-layers with the same count")
    for k, (sn, tn, ss, ts) in enumerate(zip(s.names, t.names, s.strides, t.strides)):
        if ss != ts:
            msg = f"pair {k}: student {sn} has stride {ss:g} but teacher {tn} stride {ts:g}"
            if not (explicit["student"] or explicit["teacher"]):
                raise UserError(msg + "; the architectures differ, pass explicit layer lists")
            LOGGER.warning(f"WARNING: {msg}; the student map is resized to the teacher's")
    return LayerPairing(s, t)


def infer_is_large(teacher: nn.Module) -> bool | None:
    """True for a yolov5l-scaled teacher (depth_multiple 1.0, width_multiple 1.0); None if unknown."""
    cfg = getattr(unwrap_parallel(teacher), "yaml", None)
    if not isinstance(cfg, dict) or "depth_multiple" not in cfg or "width_multiple" not in cfg:
        return None
    return float(cfg["depth_multiple"]) == 1.0 and float(cfg["width_multiple"]) == 1.0


def check_is_large_flag(teacher: nn.Module, is_large: bool | str | None) -> bool | None:
    """Warn (never fail) when the fork's --isL flag contradicts the teacher; returns the inferred value.

    The flag does not change anything: layers and channels are inferred from the models.
    """
    inferred = infer_is_large(teacher)
    if isinstance(is_large, str):
        is_large = {"true": True, "1": True, "false": False, "0": False}.get(is_large.strip().lower())
    if is_large is not None and inferred is not None and bool(is_large) != inferred:
        cfg = unwrap_parallel(teacher).yaml
        LOGGER.warning(f"WARNING: --isL {is_large} but the teacher has depth_multiple {cfg['depth_multiple']}, "
                       f"width_multiple {cfg['width_multiple']} (isL={inferred}); --isL is ignored, "
                       "feature layers and channels are inferred from the models")
    return inferred
