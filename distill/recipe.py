"""A distillation recipe as typed data: `Recipe` (the losses of a run), `LossEntry` (one loss) and
`Overrides` (what the user set next to a recipe). distill/ reads these, never a command line: the scripts
map their flags onto `Overrides` in one place (engine/kd_flags.py).

A recipe file (data/kd/*.yaml, a run's kd.yaml) is `{'losses': [entry, ...]}`; an entry's keys are the
fields below plus the loss's own parameters:

    {type: YoloKDLoss, name: kd, layers: detect, variant: kl, T: 20.0, weight: 2.0}

`LossEntry.to_dict` writes the keys in the order they were first given, keys added later (a default weight,
the resolved layer lists) after them: a resolved kd.yaml reads like the recipe it came from.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from utils.general import UserError

LAYER_KEYWORDS = ("detect", "auto", "detect_inputs")  # `layers:` values (distill/yolo_config.resolve_layers)
FIELDS = ("type", "name", "weight", "layers", "student_layers", "teacher_layers")  # the rest: loss parameters

WEIGHT_RULE = "weights must be finite and >= 0 (0 turns that term off)"


def check_weight(value, what: str) -> float:
    """A loss weight as a float: a real number, finite and >= 0; else UserError '<what> <value>: weights must
    be finite and >= 0 (0 turns that term off)'. `what` names where it was given: a flag ('--alpha') or a
    recipe entry ('losses[1] (at) weight'). A negative weight would train the student away from the teacher,
    a NaN or inf one would make every loss NaN."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value >= 0):
        raise UserError(f"{what} {value!r}: {WEIGHT_RULE}")
    return float(value)


@dataclass
class LossEntry:
    """One loss of a recipe. None = not set: name defaults to the type, weight to the type's registered
    default, layers to its default layers. A resolved entry has all of name, weight and both layer lists."""

    type: str  # a registered loss type (distill/registry.py)
    name: str | None = None  # log key: results.csv column train/<name>_loss
    weight: float | None = None
    layers: str | None = None  # one of LAYER_KEYWORDS, in place of explicit lists
    student_layers: list[str | int] | None = None  # names or indices, paired by position
    teacher_layers: list[str | int] | None = None
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the loss class
    keys: list[str] = field(default_factory=list, repr=False, compare=False)  # order of to_dict

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> LossEntry:
        fields = {k: entry[k] for k in FIELDS if k in entry}
        params = {k: v for k, v in entry.items() if k not in FIELDS}
        return cls(**copy.deepcopy(fields), params=copy.deepcopy(params), keys=list(entry))

    @property
    def log_name(self) -> str:
        return self.name if self.name is not None else self.type

    def get(self, key: str, default=None):
        """A field or parameter by its recipe key."""
        value = getattr(self, key) if key in FIELDS else self.params.get(key)
        return default if value is None else value

    def replace(self, **values) -> LossEntry:
        """A copy with these fields or parameters set; a key new to the entry comes last in to_dict."""
        entry = copy.deepcopy(self)
        for k, v in values.items():
            if k in FIELDS:
                setattr(entry, k, v)
            else:
                entry.params[k] = v
            if k not in entry.keys:
                entry.keys.append(k)
        return entry

    def without(self, *keys: str) -> LossEntry:
        """A copy with these fields unset and parameters removed."""
        entry = copy.deepcopy(self)
        for k in keys:
            if k in FIELDS:
                setattr(entry, k, None)
            else:
                entry.params.pop(k, None)
            if k in entry.keys:
                entry.keys.remove(k)
        return entry

    def to_dict(self) -> dict[str, Any]:
        """The entry as a recipe mapping: the keys it was given (even as null) and the fields set since."""
        values = {k: getattr(self, k) for k in FIELDS if k in self.keys or getattr(self, k) is not None}
        values |= self.params
        order = [k for k in self.keys if k in values] + [k for k in values if k not in self.keys]
        return {k: copy.deepcopy(values[k]) for k in order}


@dataclass
class Recipe:
    """The losses of a distillation run, in order (the order their adapters are built and logged), and its
    schedule: stop_epochs = distillation off for the run's last that many epochs (recipe key kd_stop_epochs,
    flag --kd_stop_epochs; 0 = distil to the end)."""

    losses: list[LossEntry]
    stop_epochs: int = 0

    @classmethod
    def from_dict(cls, recipe: Mapping[str, Any]) -> Recipe:
        """From a checked recipe mapping (distill.yolo_config.check_kd_config checks one)."""
        return cls([LossEntry.from_dict(e) for e in recipe["losses"]], int(recipe.get("kd_stop_epochs") or 0))

    def to_dict(self) -> dict[str, Any]:
        schedule = {"kd_stop_epochs": self.stop_epochs} if self.stop_epochs else {}
        return {**schedule, "losses": [e.to_dict() for e in self.losses]}

    def copy(self) -> Recipe:
        return copy.deepcopy(self)


@dataclass(frozen=True)
class Overrides:
    """Values the user gave for this run, applied over its recipe (distill.yolo_config.apply_overrides).
    None everywhere = nothing given.

    Output KD (every output entry; a YoloKDLoss entry is added when the recipe has none): variant ('l2',
    'kl', 'bce'), temperature (T), output_weight, weight_by_cls, kl_softmax, and on YoloKDLoss entries only
    obj_term ('bce'), subtract_entropy and normalize ('weight', 'cells'). stop_epochs: Recipe.stop_epochs.
    Features: feature_losses replaces the recipe's feature entries by one entry per type (empty: none);
    feature_weight is the weight of the one feature entry; student_layers / teacher_layers set every
    feature entry's layers; loss_params[type][key] sets a weight or parameter of every entry of that type.
    """

    variant: str | None = None
    temperature: float | None = None
    output_weight: float | None = None
    weight_by_cls: bool | None = None
    kl_softmax: bool | None = None
    obj_term: str | None = None
    subtract_entropy: bool | None = None
    feature_losses: tuple[str, ...] | None = None
    feature_weight: float | None = None
    student_layers: Sequence[str | int] | None = None
    teacher_layers: Sequence[str | int] | None = None
    loss_params: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    normalize: str | None = None  # YoloKDLoss: 'weight' (per level by the teacher's weight mass) or 'cells'
    stop_epochs: int | None = None  # Recipe.stop_epochs

    def output_values(self) -> dict[str, Any]:
        """The output KD values given, as recipe keys, in the order kd.yaml lists them when added."""
        values = {"variant": self.variant, "T": self.temperature, "weight": self.output_weight,
                  "weight_by_cls": self.weight_by_cls, "kl_softmax": self.kl_softmax}
        return {k: float(v) if k in ("T", "weight") else v for k, v in values.items() if v is not None}

    def yolo_output_values(self) -> dict[str, Any]:
        """The YoloKDLoss-only values given, as recipe keys."""
        values = {"obj_term": self.obj_term, "subtract_entropy": self.subtract_entropy, "normalize": self.normalize}
        return {k: v for k, v in values.items() if v is not None}
