"""The one place where the distillation flags of train_kd.py and train.py become what distill/ reads.

The seeds' spellings are mapped onto train_kd.py's first (seed_aliases: train.py's --t_weights, --dist_loss,
--distill_ratio; seed_layers: the YOLOv8 KD seed's --kd_layer), so a run's opt.yaml records one spelling;
then kd_overrides turns the options into a typed distill.recipe.Overrides and objective_options adds the
teacher's precision and the fork's --isL. The checks that need these spellings are here too: the weight
flags (check_weight_flags, also run by engine/options.check_train_opt) and a teacher flag naming a folder
(check_teacher_folder, run by seed_aliases).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill.pairing import parse_layer_list
from distill.recipe import Overrides, check_weight, parse_teacher_classes
from utils.general import UserError

SEED_ALIASES = (("t_weights", "teacher_weight"), ("dist_loss", "kd_loss_selected"), ("distill_ratio", "alpha"))


def seed_aliases(opt: argparse.Namespace) -> None:
    """train.py's --t_weights / --dist_loss / --distill_ratio (the seed's names) as --teacher_weight /
    --kd_loss_selected / --alpha: the same meaning (distill_ratio scales the box, obj and cls KD terms
    together, as --alpha does). Both spellings with different values is a UserError; so is a teacher flag
    naming a folder (check_teacher_folder)."""
    for alias, name in SEED_ALIASES:
        value, current = getattr(opt, alias, None), getattr(opt, name, None)
        if value is None:
            continue
        if current is not None and current != value:
            raise UserError(f"--{alias} {value} and --{name} {current} are the same option: give one of them")
        setattr(opt, name, value)
    check_teacher_folder(opt)


def check_teacher_folder(opt: argparse.Namespace) -> None:
    """A teacher flag (--teacher_weight or the seed's --t_weights) naming a folder is a UserError that says
    so and names the checkpoints inside it (models.checkpoint.folder_message). Called by seed_aliases, the
    first step of every distillation run (engine.kd.train_kd), before the teacher file is looked for."""
    for flag in ("t_weights", "teacher_weight"):  # the spelling given first: seed_aliases copies it over
        value = getattr(opt, flag, None)
        if value and Path(value).is_dir():
            from models.checkpoint import folder_message

            raise UserError(folder_message(value, f"--{flag}"))


def seed_layers(opt: argparse.Namespace) -> None:
    """--kd_layer I [I ...]: the same layer indices for student and teacher (the seed's ver1); mse unless
    --feature_loss is given. UserError next to --student_layers / --teacher_layers."""
    layers = getattr(opt, "kd_layer", None)
    if not layers:
        return
    if getattr(opt, "student_layers", None) or getattr(opt, "teacher_layers", None):
        raise UserError("--kd_layer sets both --student_layers and --teacher_layers: give one or the others")
    opt.student_layers = opt.teacher_layers = ",".join(str(i) for i in layers)
    if getattr(opt, "feature_loss", None) is None:
        opt.feature_loss = ["mse"]


def _given(opt, *names: str):
    """The first of these options that is set (None or False: not given)."""
    for name in names:
        value = getattr(opt, name, None)
        if value is not None and value is not False:
            return value
    return None


def _feature_losses(opt) -> tuple[str, ...] | None:
    """--feature_loss X [Y ...] as loss types; 'none' alone: no feature loss."""
    kinds = _given(opt, "feature_loss")
    if kinds is None:
        return None
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    off = [k for k in kinds if str(k).lower() in ("", "none")]
    if off and len(off) != len(kinds):
        raise UserError(f"--feature_loss {' '.join(map(str, kinds))}: 'none' cannot be combined with losses")
    return () if off else tuple(kinds)


def _loss_params(opt) -> dict[str, dict[str, Any]]:
    """--<type>_weight and --<type>_<option> of every registered feature loss that the user gave."""
    from distill.losses import SPECS, feature_types
    from distill.registry import flag_name

    params: dict[str, dict[str, Any]] = {}
    for loss_type in feature_types():
        for key in ("weight", *SPECS[loss_type].options):
            value = _given(opt, flag_name(loss_type, key))
            if value is not None:
                params.setdefault(loss_type, {})[key] = value
    return params


def weight_flags(opt) -> list[tuple[str, Any]]:
    """(flag as the user spelled it, value) of every distillation weight given: --distill_ratio (train.py's
    spelling, before --alpha: seed_aliases copies it there) or --alpha, --beta and each --<type>_weight."""
    from distill.losses import feature_types
    from distill.registry import flag_name

    names = [alias for alias, name in SEED_ALIASES if name == "alpha"] + ["alpha", "beta"]
    names += [flag_name(t, "weight") for t in feature_types()]
    return [(f"--{n}", getattr(opt, n)) for n in names if getattr(opt, n, None) is not None]


def check_weight_flags(opt) -> None:
    """UserError naming the first weight flag that is not a finite number >= 0 (0 is accepted: the term is
    off, said once when the recipe is resolved)."""
    for flag, value in weight_flags(opt):
        check_weight(value, flag)


def kd_overrides(opt) -> Overrides:
    """The distillation options the user gave (None / False = not given), as distill reads them; the weight
    flags checked (check_weight_flags)."""
    check_weight_flags(opt)
    return Overrides(
        variant=_given(opt, "kd_loss_selected", "kd_loss"),
        temperature=_given(opt, "temperature"),
        output_weight=_given(opt, "alpha"),
        weight_by_cls=_given(opt, "weight_by_cls"),
        kl_softmax=_given(opt, "kl_softmax"),
        obj_term=_given(opt, "kd_obj"),
        subtract_entropy=_given(opt, "bce_subtract_entropy"),
        feature_losses=_feature_losses(opt),
        feature_weight=_given(opt, "beta"),
        student_layers=parse_layer_list(_given(opt, "student_layers")),
        teacher_layers=parse_layer_list(_given(opt, "teacher_layers")),
        loss_params=_loss_params(opt),
        normalize=_given(opt, "kd_normalize"),
        stop_epochs=_stop_epochs(opt),
        teacher_classes=parse_teacher_classes(_given(opt, "teacher_classes"), "--teacher_classes"),
    )


def _stop_epochs(opt) -> int | None:
    """--kd_stop_epochs as given (None: not given); a whole number >= 0 below --epochs."""
    n = _given(opt, "kd_stop_epochs")
    if n is None:
        return None
    epochs = getattr(opt, "epochs", None)
    if n < 0 or (isinstance(epochs, int) and n >= epochs):
        raise UserError(f"--kd_stop_epochs {n}: give a number of final epochs from 0 to {epochs - 1 if isinstance(epochs, int) else 'epochs - 1'} "
                        f"(--epochs {epochs}); 0 distils to the end")
    return n


def objective_options(opt) -> dict[str, Any]:
    """Keyword arguments of distill.objective.build_kd_objective for these options: the overrides, the
    teacher's precision (fp32 when not set) and --isL as given (None: not given, nothing to check)."""
    is_large = getattr(opt, "isL", None)
    return {"overrides": kd_overrides(opt), "teacher_dtype": getattr(opt, "teacher_dtype", None) or "fp32",
            "is_large": is_large if is_large is not None else getattr(opt, "is_large", None)}
