"""Forward-hook feature capture as a context manager.

    with FeatureHooks(model, ["model.4", "model.6"]) as feats:
        out = model(x)
    feats.outputs  # [output of model.4, output of model.6], in the order asked for

Hooks are registered on enter and always removed on exit (also when the body raises). Nothing is
patched: only `register_forward_hook` is used. Captured tensors keep their autograd graph (the
student's distillation loss must reach its weights); run the teacher under `torch.no_grad()` and its
features carry no graph.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Self

from torch import nn

_MAX_LISTED = 80  # cap on names listed in an error message for arbitrary modules


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside DataParallel/DistributedDataParallel (hooks go on the real layers)."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def is_layered_model(model: nn.Module) -> bool:
    """True for a YOLOv5-style Model: its layers live in an nn.Sequential called `model`."""
    return isinstance(getattr(model, "model", None), nn.Sequential)


def model_head(model: nn.Module | None) -> nn.Module | None:
    """The last layer of a YOLO-style Model (its detection head), looked through DP/DDP; None for any
    other module (distill.objective.detect_layer is the strict form, which checks the head's attributes)."""
    layers = getattr(unwrap_parallel(model), "model", None) if model is not None else None
    return layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None


def valid_layer_names(model: nn.Module) -> list[str]:
    """Names offered in error messages: 'model.0'... for a YOLOv5 Model, else every named module."""
    model = unwrap_parallel(model)
    if is_layered_model(model):
        return [f"model.{i}" for i in range(len(model.model))]
    return [name for name, _ in model.named_modules() if name]


def resolve_layer_names(model: nn.Module, layers: Sequence[str | int]) -> list[str]:
    """Turn layer names / integer indices into `named_modules` names, validating each one.

    An int i (or a digit string "i") means top-level layer i of a YOLOv5 Model ('model.i'). Any
    name from `model.named_modules()` is accepted, e.g. 'model.4' or 'model.4.cv3'.
    Raises ValueError naming the bad entry and listing the valid names.
    """
    model = unwrap_parallel(model)
    known = dict(model.named_modules())
    names = []
    for layer in layers:
        if isinstance(layer, bool):  # bool is an int subclass; never a layer index
            raise TypeError(f"layer {layer!r} is not a layer name or index")
        if isinstance(layer, str) and layer.strip().isdigit():
            layer = int(layer.strip())
        if isinstance(layer, int):
            if not is_layered_model(model):
                raise ValueError(f"integer layer {layer} needs a YOLOv5 Model (with .model); "
                                 f"use a module name instead: {_listing(model)}")
            if not 0 <= layer < len(model.model):
                raise ValueError(f"layer index {layer} is out of range 0..{len(model.model) - 1}; "
                                 f"valid layers: {_listing(model)}")
            layer = f"model.{layer}"
        layer = str(layer).strip()
        if layer not in known or not layer:
            raise ValueError(f"unknown layer {layer!r}{closest_names(layer, known)}; valid layers: {_listing(model)}")
        names.append(layer)
    return names


def closest_names(name: str, choices, n: int = 3) -> str:
    """' (closest: a, b)' from difflib, or '' when nothing is close: appended to 'unknown ...' errors."""
    close = difflib.get_close_matches(str(name), [c for c in choices if c], n=n, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def _listing(model: nn.Module) -> str:
    names = valid_layer_names(model)
    text = ", ".join(names[:_MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
    if is_layered_model(model):
        text += " (sub-module names such as 'model.4.cv3' are accepted too)"
    return text


class StopForward(Exception):
    """Raised by FeatureHooks(stop_when_done=True) once every asked layer has produced its output: the
    rest of the network (e.g. a teacher's Detect head that no loss reads) is not computed."""


class FeatureHooks:
    """Capture the forward outputs of named sub-modules during the `with` block.

    Args:
        model: the network (DataParallel/DDP wrappers are looked through).
        layers: names from `model.named_modules()` or, for a YOLOv5 Model, integer layer indices.
        detach: store detached outputs (for logging/visualisation; the losses need the graph).
        stop_when_done: raise StopForward as soon as every layer has run once (catch it around the
            forward). Only for networks that run each module once per forward (YOLO models do).

    `outputs` is the list of captured outputs in the order of `layers` (the last call wins if a
    module runs more than once). It stays readable after the block; hooks do not.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | int], detach: bool = False,
                 stop_when_done: bool = False):
        self.model = unwrap_parallel(model)
        self.names = resolve_layer_names(self.model, layers)  # fail now, before any forward
        self.detach = detach
        self.stop_when_done = stop_when_done
        self._n_unique = len(set(self.names))
        self._captured: dict[str, object] = {}
        self._handles: list = []

    def __enter__(self) -> Self:
        if self._handles:
            raise RuntimeError("FeatureHooks is already active; use one `with` block at a time")
        self._captured.clear()
        modules = dict(self.model.named_modules())
        try:
            for name in dict.fromkeys(self.names):  # unique, order kept: one hook per module
                self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            self._captured[name] = output.detach() if self.detach and hasattr(output, "detach") else output
            if self.stop_when_done and len(self._captured) == self._n_unique:
                raise StopForward

        return hook

    def remove(self) -> None:
        """Remove every registered hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        """Forget captured outputs (e.g. between two forwards inside one block)."""
        self._captured.clear()

    @property
    def outputs(self) -> list:
        """Captured outputs in the order of `layers`; RuntimeError names layers that never ran."""
        missing = [n for n in self.names if n not in self._captured]
        if missing:
            raise RuntimeError(f"no output captured for layer(s) {missing}: they did not run in the forward pass")
        return [self._captured[n] for n in self.names]
