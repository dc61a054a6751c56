"""The distillation losses: one class per module, each registered where it is defined (distill/registry.py).

Every loss has one call form:

    loss(student_feats: list[Tensor], teacher_feats: list[Tensor], ctx: KDContext) -> float32 scalar

The lists hold the tensors captured at the layer pairs mapped to the loss (distill.distiller), in pair
order; see distill/context.py for ctx. Every loss cites its paper in one docstring line and states its
tensor contract. Optional class attributes the engine reads:
    kind             'logits' | 'feature' | 'relation' | 'output' | 'dfl_output' | 'head_input' (the maps
                     entering the teacher's head, which the loss runs through it: crosskd); documentation and tests
    needs            ctx fields the loss reads besides the features (checked by the engine)
    zero_at_optimum  True when the loss is exactly 0 at student == teacher (else: at its minimum there)
    check_shapes(student_shapes, teacher_shapes)  raises ValueError for shapes the loss cannot take;
                     called at build when the engine could probe the layers, else at the first forward
A loss owning learnable alignment takes `student_channels` / `teacher_channels` (one per pair) in
__init__; the engine fills them from a dummy forward. The output losses live next to the head code they
read (YOLOv5: distill/yolo_output.py, the v8 DFL head: distill/v8_output.py).

A new loss is a module in this package: its class under `@register("name", default_weight=...)`. Importing
this package imports every module in it (names starting with '_' are helpers), so the loss is then a recipe
`type:`, a --feature_loss choice and a --<name>_weight flag of train_kd.py without any other edit.

Notation: S = student, T = teacher, tau (T) = temperature. Teacher tensors are always detached.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from distill.losses._detection import ShapeError, detect_input_layers, teacher_score
from distill.losses.attention import AttentionTransfer
from distill.losses.bckd import BCKDLoss
from distill.losses.crosskd import CrossHeadKD
from distill.losses.cwd import ChannelWiseDivergence
from distill.losses.fgfi import FineGrainedImitation
from distill.losses.fitnet import FitNetHint
from distill.losses.irg import IRGLoss
from distill.losses.mgd import MaskedGenerativeDistillation
from distill.losses.pkd import PearsonDistillation
from distill.losses.score_l2 import ScoreWeightedL2
from distill.losses.strided_mse import StridedFeatureMSE
from distill.losses.vanilla_kd import VanillaKD
from distill.losses.vid import VIDLoss
from distill.registry import (
    LOSSES,
    SPECS,
    LossSpec,
    Option,
    feature_types,
    register,
    unregister,
)
from distill.v8_output import V8OutputKD
from distill.yolo_output import (
    OutputBCEKD,
    OutputKLKD,
    OutputL2KD,
    YoloKDLoss,
    level_balance,
)

__all__ = [
    "LOSSES", "SPECS", "LossSpec", "Option", "feature_types", "register", "unregister", "build_loss", "spec",
    "AttentionTransfer", "ChannelWiseDivergence", "FineGrainedImitation", "FitNetHint", "IRGLoss",
    "PearsonDistillation", "ScoreWeightedL2", "StridedFeatureMSE", "VanillaKD", "VIDLoss", "V8OutputKD",
    "YoloKDLoss", "OutputBCEKD", "OutputKLKD", "OutputL2KD", "level_balance", "ShapeError",
    "detect_input_layers", "teacher_score", "BCKDLoss", "CrossHeadKD", "MaskedGenerativeDistillation",
]


def _import_every_module() -> None:
    """Import each module of this package, so the losses of modules named nowhere else register too."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


# The order the registry lists the shipped types in (error messages, --help): the classification losses,
# output KD, the detection feature losses. Modules import alphabetically; a type not named here (a new module's,
# a test's) follows in the order it registered.
_SHIPPED_ORDER = ("vanilla_kd", "vid", "irg", "at", "fitnet", "YoloKDLoss", "imitation", "cwd", "mse", "pkd",
                  "scorel2", "v8_output_kd", "bckd", "mgd", "crosskd")


def _list_in_shipped_order() -> None:
    for table in (LOSSES, SPECS):
        ordered = {n: table[n] for n in _SHIPPED_ORDER if n in table}
        rest = {n: v for n, v in table.items() if n not in ordered}
        table.clear()
        table.update({**ordered, **rest})


_import_every_module()
_list_in_shipped_order()


def spec(name: str) -> LossSpec:
    """The registration of loss type `name`; ValueError lists the registered ones."""
    if name not in SPECS:
        from distill.hooks import closest_names

        raise ValueError(f"unknown distillation loss type {name!r}{closest_names(name, LOSSES)}; registered: "
                         f"{', '.join(LOSSES)}")
    return SPECS[name]


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the registered loss `name` with `kwargs`; ValueError lists the registered ones."""
    return spec(name).cls(**kwargs)
