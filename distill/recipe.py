"""A distillation recipe as typed data: `Recipe` (the losses of a run), `LossEntry` (one loss) and
`Overrides` (what the user set next to a recipe). distill/ reads these, never a command line: the scripts
map their flags onto `Overrides` in one place (engine/kd_flags.py).

A recipe file (data/kd/*.yaml, a run's kd.yaml) is `{'losses': [entry, ...]}`; an entry's keys are the
fields below plus the loss's own parameters:

    {type: YoloKDLoss, name: kd, layers: detect, variant: kl, T: 20.0, weight: 2.0}

`LossEntry.to_dict` writes the keys in the order they were first given, keys added later (a default weight,
the resolved layer lists) after them: a resolved kd.yaml reads like the recipe it came from.

A recipe may also say which teacher class teaches each data class (`teacher_classes`, flag --teacher_classes):
output KD with a teacher of other classes, e.g. the 80-class COCO yolov5m.pt on data with some of COCO's
classes. `match_classes` matches the names and returns a `ClassMap`; a run's kd.yaml records the whole map.
"""

from __future__ import annotations

import copy
import difflib
import math
import numbers
import re
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
    # data class -> teacher class (None: no class KD for it), the pairs given (recipe key teacher_classes); a
    # resolved recipe (kd.yaml) lists every data class, so that a resumed run rebuilds the same ClassMap
    teacher_classes: dict[str, str | None] | None = None

    @classmethod
    def from_dict(cls, recipe: Mapping[str, Any]) -> Recipe:
        """From a checked recipe mapping (distill.yolo_config.check_kd_config checks one)."""
        return cls([LossEntry.from_dict(e) for e in recipe["losses"]], int(recipe.get("kd_stop_epochs") or 0),
                   parse_teacher_classes(recipe.get("teacher_classes"), "teacher_classes"))

    def to_dict(self) -> dict[str, Any]:
        schedule = {"kd_stop_epochs": self.stop_epochs} if self.stop_epochs else {}
        classes = {"teacher_classes": dict(self.teacher_classes)} if self.teacher_classes else {}
        return {**schedule, **classes, "losses": [e.to_dict() for e in self.losses]}

    def copy(self) -> Recipe:
        return copy.deepcopy(self)


@dataclass(frozen=True)
class Overrides:
    """Values the user gave for this run, applied over its recipe (distill.yolo_config.apply_overrides).
    None everywhere = nothing given.

    Output KD (every output entry; a YoloKDLoss entry is added when the recipe has none): variant ('l2',
    'kl', 'bce'), temperature (T), output_weight, weight_by_cls, kl_softmax, and on YoloKDLoss entries only
    obj_term ('bce'), subtract_entropy and normalize ('weight', 'cells'). stop_epochs: Recipe.stop_epochs.
    teacher_classes: data class -> teacher class pairs, each replacing the recipe's pair for that data class.
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
    teacher_classes: Mapping[str, str | None] | None = None  # pairs over the recipe's (parse_teacher_classes)

    def output_values(self) -> dict[str, Any]:
        """The output KD values given, as recipe keys, in the order kd.yaml lists them when added."""
        values = {"variant": self.variant, "T": self.temperature, "weight": self.output_weight,
                  "weight_by_cls": self.weight_by_cls, "kl_softmax": self.kl_softmax}
        return {k: float(v) if k in ("T", "weight") else v for k, v in values.items() if v is not None}

    def yolo_output_values(self) -> dict[str, Any]:
        """The YoloKDLoss-only values given, as recipe keys."""
        values = {"obj_term": self.obj_term, "subtract_entropy": self.subtract_entropy, "normalize": self.normalize}
        return {k: v for k, v in values.items() if v is not None}


# --------------------------------------------------------------------------------------------------
# teacher classes: which teacher class teaches each data class (output KD with a teacher of other classes)

CLASSES_FLAG = "--teacher_classes"
NO_CLASS = "-"  # DATA:- in --teacher_classes (null in a recipe): no teacher class teaches DATA
_GENERIC = re.compile(r"(class)?\d+")  # '0', '1', ... (a Model's own) and 'class0', ... (a data yaml without names)


def class_key(name: object) -> str:
    """A class name as names are matched: lower case, without spaces, underscores and hyphens
    ('Traffic light' == 'traffic_light' == 'TrafficLight')."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def generic_names(names: Sequence[object]) -> bool:
    """True when the names say nothing about the classes: none, or every one a number or 'class<number>'."""
    return not names or all(_GENERIC.fullmatch(class_key(n)) for n in names)


def parse_teacher_classes(value, what: str = CLASSES_FLAG) -> dict[str, str | None] | None:
    """'DATA:TEACHER,...' (the flag) or a mapping {DATA: TEACHER} (a recipe) as a dict, None when not given.
    TEACHER '-' or null: no teacher class for DATA (no class KD for it). UserError naming `what` for a malformed
    pair or a data class given twice (names compared as class_key compares them)."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        pairs = []
        for item in (x.strip() for x in value.split(",")):
            parts = [p.strip() for p in item.split(":")]
            if item and (len(parts) != 2 or not all(parts)):
                raise UserError(f"{what} {value!r}: {item!r} is not a DATA:TEACHER pair; give pairs separated by "
                                "commas, e.g. 'motorbike:motorcycle,tv:tvmonitor' (DATA:- for a data class that no "
                                "teacher class teaches)")
            if item:
                pairs.append(parts)
    elif isinstance(value, Mapping):
        pairs = [[str(k), NO_CLASS if v is None else str(v)] for k, v in value.items()]
    else:
        raise UserError(f"{what}: give DATA:TEACHER pairs ('motorbike:motorcycle,...' or a mapping), got {value!r}")
    out: dict[str, str | None] = {}
    for data, teacher in pairs:
        if class_key(data) in {class_key(k) for k in out}:
            raise UserError(f"{what}: data class {data!r} is given twice; give one teacher class per data class")
        out[data] = None if teacher.strip() in (NO_CLASS, "") else teacher
    return out or None


@dataclass(frozen=True)
class ClassMap:
    """Which teacher class teaches each data (student) class: index[c] = teacher class of data class c, -1 for
    none. `identity`: the teacher's classes are the data's, in order (output KD gathers nothing)."""

    data_names: tuple[str, ...]
    teacher_names: tuple[str, ...]
    index: tuple[int, ...]

    @property
    def identity(self) -> bool:
        return len(self.teacher_names) == len(self.index) and self.index == tuple(range(len(self.index)))

    @property
    def teacher_only(self) -> list[int]:
        """The teacher classes that teach no data class (left out of the class term)."""
        return [j for j in range(len(self.teacher_names)) if j not in self.index]

    def to_dict(self) -> dict[str, str | None]:
        """Every data class -> its teacher class or None: the recipe's teacher_classes that rebuilds this map."""
        return {d: (self.teacher_names[j] if j >= 0 else None) for d, j in zip(self.data_names, self.index)}

    def table(self) -> list[str]:
        """The map as printed at the start of a run: one line per data class, then the teacher-only classes."""
        width = max(len(n) for n in self.data_names)
        lines = [f"{c:>4}  {d:<{width}}  <- " + (f"{self.teacher_names[j]} ({j})" if j >= 0 else NO_CLASS)
                 for c, (d, j) in enumerate(zip(self.data_names, self.index))]
        only = [self.teacher_names[j] for j in self.teacher_only]
        if only:
            lines.append(f"      teacher-only ({len(only)} of {len(self.teacher_names)}): {_listed(only)}")
        return lines


def classes_line_up(data_names: Sequence[str], teacher_names: Sequence[str]) -> bool:
    """Class i of the teacher is class i of the data as far as the names tell: the same count, and the same
    names in order (case, spaces, underscores aside) or generic names on either side (nothing to compare).
    Then the teacher's val mAP on the data means something, and output KD needs no ClassMap."""
    if len(data_names) != len(teacher_names):
        return False
    return generic_names(data_names) or generic_names(teacher_names) or \
        [class_key(n) for n in data_names] == [class_key(n) for n in teacher_names]


def match_classes(data_names: Sequence[str], teacher_names: Sequence[str],
                  given: Mapping[str, str | None] | None = None, what: str = CLASSES_FLAG) -> ClassMap:
    """The ClassMap of a data/teacher pair: the `given` pairs (parse_teacher_classes), every other data class
    matched to the teacher class of the same name (class_key). With no pair given, classes that line up
    (classes_line_up) are the identity: teachers with generic names at the data's class count keep being paired
    class i with class i. UserError (naming `what`) for a name neither side has, a teacher class teaching two
    data classes, names that cannot be matched (generic, at another count) and no shared class at all."""
    data, teacher = [str(n) for n in data_names], [str(n) for n in teacher_names]
    if not given and classes_line_up(data, teacher):
        return ClassMap(tuple(data), tuple(teacher), tuple(range(len(data))))
    index: list[int | None] = [None] * len(data)
    for d, t in (given or {}).items():
        c = _find(d, data, "the data", what)
        index[c] = -1 if t is None else _find(t, teacher, "the teacher", what)
    by_name = not (generic_names(data) or generic_names(teacher))
    if not by_name and None in index:
        generic_teacher = generic_names(teacher)
        raise UserError(f"the teacher predicts {len(teacher)} classes and the data has nc={len(data)}, and the "
                        f"{'teacher' if generic_teacher else 'data'}'s class names are missing or generic ("
                        f"{_listed(teacher if generic_teacher else data)}): they "
                        f"cannot be matched by name; give every pair with {what} DATA:TEACHER,... (e.g. "
                        f"'{data[0]}:{teacher[0]}'; DATA:- for none), or train the teacher on this data")
    keys = [class_key(n) for n in teacher]
    for c, j in enumerate(index):
        if j is None:
            index[c] = _find(data[c], teacher, "the teacher", what) if class_key(data[c]) in keys else -1
    _check_unique(index, data, teacher, what)
    if all(j < 0 for j in index):
        raise UserError(f"the teacher predicts {len(teacher)} classes and the data has nc={len(data)}, and they share no "
                        f"class: data {_listed(data, 0)}; teacher {_listed(teacher, 0)}. Name the pairs with {what} DATA:TEACHER,... (e.g. 'motorbike:motorcycle'), or use a "
                        "teacher trained on these classes")
    return ClassMap(tuple(data), tuple(teacher), tuple(int(j) for j in index))


def _find(name: str, names: list[str], side: str, what: str) -> int:
    """Index of `name` among `names` (class_key); UserError naming `what` when it is absent or ambiguous."""
    hits = [i for i, n in enumerate(names) if class_key(n) == class_key(name)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UserError(f"{what}: {side} has several classes named {name!r} ({', '.join(map(str, hits))}); rename them")
    close = difflib.get_close_matches(class_key(name), [class_key(n) for n in names], n=1)
    hint = f" (did you mean {names[[class_key(n) for n in names].index(close[0])]!r}?)" if close else ""
    raise UserError(f"{what}: {side} has no class {name!r}{hint}; its classes: {_listed(names, 0)}")


def _check_unique(index: list, data: list[str], teacher: list[str], what: str) -> None:
    for j in sorted({j for j in index if j >= 0}):
        taught = [data[c] for c, k in enumerate(index) if k == j]
        if len(taught) > 1:
            raise UserError(f"{what}: the teacher's class {teacher[j]!r} would teach the data classes "
                            f"{', '.join(map(repr, taught))}; each teacher class teaches one data class (DATA:- for none)")


def _listed(names: Sequence[str], limit: int = 12) -> str:
    """'a, b, c' (the first `limit` names and a count of the rest; 0: all of them)."""
    shown = list(names) if not limit or len(names) <= limit else list(names[:limit])
    rest = len(names) - len(shown)
    return ", ".join(map(str, shown)) + (f", ... ({rest} more)" if rest else "")
