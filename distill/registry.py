"""The loss registry: every distillation loss type, with what train_kd.py derives from it.

A loss registers itself where it is defined:

    @register("cwd", default_weight=0.03, v8_weight=10.0, default_layers="detect_inputs",
              title="channel-wise distillation", options={"tau": Option("CWD softmax temperature", positive)})
    class ChannelWiseDivergence(nn.Module): ...

From the registrations come the Distiller's `type:` lookup (LOSSES), the default weight of a recipe entry per
student head family, its default layers, and train_kd.py's --feature_loss choices and per-loss flags
(--<type>_weight, --<type>_<option>). Read the registry through `distill.losses`, which imports every loss
module first; this module only holds the tables (it imports no loss, so a loss module can import it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distill.recipe import LAYER_KEYWORDS, check_weight
from utils.general import UserError


def non_negative(value: float) -> bool:
    return value >= 0


def positive(value: float) -> bool:
    return value > 0


@dataclass(frozen=True)
class Option:
    """A loss parameter train_kd.py exposes as --<type>_<key>; type and default come from the class's __init__."""

    help: str
    valid: Callable[[Any], bool] = non_negative
    expect: str = ">= 0"  # how a valid value reads in the error message


@dataclass(frozen=True)
class LossSpec:
    """One registered loss type (see `register`)."""

    name: str
    cls: type
    default_weight: float | Callable[[Mapping[str, Any]], float]  # a callable reads the entry's parameters
    v8_weight: float | None  # default weight for YOLOv8 students; None: default_weight
    default_layers: str  # 'auto', 'detect_inputs' or 'detect' (output losses)
    title: str  # what the loss is, for --help
    options: Mapping[str, Option] = field(default_factory=dict)

    @property
    def output(self) -> bool:
        """Output KD on the detection heads: not a --feature_loss choice, weighted by --alpha."""
        return self.default_layers == "detect"

    def weight(self, params: Mapping[str, Any] | None = None, family: str = "v5") -> float:
        """The weight of an entry of this type that sets none, for a student of this head family."""
        if family == "v8" and self.v8_weight is not None:
            return float(self.v8_weight)
        w = self.default_weight
        return float(w(params or {}) if callable(w) else w)

    def option_default(self, key: str):
        """The default of an option: the class's __init__ default (its type is the option's type)."""
        return inspect.signature(self.cls.__init__).parameters[key].default

    def option_type(self, key: str) -> type:
        """int for an option whose default is an int (a count, e.g. warmup steps), else float."""
        default = self.option_default(key)
        return int if isinstance(default, int) and not isinstance(default, bool) else float

    def checked(self, key: str, value, what: str):
        """value of the weight or an option, checked against its range and cast; UserError names `what`."""
        if key == "weight":
            return check_weight(value, what)
        if key in self.options:
            valid, expect, kind = self.options[key].valid, self.options[key].expect, self.option_type(key)
        else:
            raise UserError(f"{what}: loss type {self.name} has no option {key!r} (options: weight"
                            f"{''.join(', ' + k for k in self.options)})")
        if not valid(value):
            raise UserError(f"{what} {value}: must be {expect}")
        return kind(value)


LOSSES: dict[str, type] = {}  # type name -> class: what a Distiller config's `type` names
SPECS: dict[str, LossSpec] = {}


def register(name: str, *, default_weight: float | Callable = 1.0, v8_weight: float | None = None,
             default_layers: str = "auto", title: str | None = None, options: Mapping[str, Option] | None = None):
    """Class decorator: register a loss under `name` (the recipe's `type:` and the log name by default).

    default_weight: its weight for YOLOv5 students when an entry sets none (a callable gets the entry's
    parameters); v8_weight: the same for YOLOv8 students (None: default_weight); default_layers: where it
    goes when an entry names no layers ('auto' = the paired C3/SPPF outputs, 'detect_inputs' = the maps
    entering the head, 'detect' = the heads: output KD); title: one line for --help; options: parameters
    of its __init__ that train_kd.py exposes as --<name>_<key> flags.
    """
    if default_layers not in LAYER_KEYWORDS:
        raise ValueError(f"register({name!r}): default_layers must be one of {LAYER_KEYWORDS}, got {default_layers!r}")

    def add(cls: type) -> type:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss type {name!r} is already registered by {LOSSES[name].__qualname__}")
        params = inspect.signature(cls.__init__).parameters
        missing = [k for k in options or {} if k not in params or params[k].default is inspect.Parameter.empty]
        if missing:
            raise ValueError(f"register({name!r}): options {missing} must be __init__ parameters with a default")
        LOSSES[name] = cls
        SPECS[name] = LossSpec(name, cls, default_weight, v8_weight, default_layers, title or name, dict(options or {}))
        return cls

    return add


def unregister(name: str) -> None:
    """Remove a registered loss (tests that register their own)."""
    LOSSES.pop(name, None)
    SPECS.pop(name, None)


def feature_types() -> list[str]:
    """Registered losses that distil features (train_kd.py's --feature_loss choices), in registry order."""
    return [n for n, s in SPECS.items() if not s.output]


def flag_name(loss_type: str, key: str) -> str:
    """train_kd.py's flag for a loss's weight or option: --<type>_<key> (without the dashes)."""
    return f"{loss_type}_{key}"
