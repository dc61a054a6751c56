"""train_kd.py's distillation recipes: reading and checking a recipe file (data/kd/*.yaml), applying what
the user gave next to it (`Overrides`), and resolving it into a `Distiller` config for a YOLO student and
teacher. The recipe types are in distill/recipe.py; a recipe file is a list of losses, each a registered
type with its parameters, its layers and its weight:

    losses:
      - {type: YoloKDLoss, name: kd, layers: detect, variant: kl, T: 20}   # output KD on the Detect heads
      - {type: at, name: at, layers: auto, weight: 0.01}                   # AT on the paired C3/SPPF outputs

Keys of an entry: `type` (registered loss), `name` (log key: results.csv column train/<name>_loss),
`weight` (a finite number >= 0, 0 turns the term off; default: the type's registered default for the
student's head family), `layers` ('detect' = the Detect heads, 'auto' = the C3/SPPF outputs paired by
position (distill.pairing), 'detect_inputs' = the maps entering Detect; default: the type's registered
default layers) or `student_layers` / `teacher_layers` (names or indices, paired by position); every other
key is a parameter of the loss.
YoloKDLoss takes its box/obj/cls gains from the run's hyp (box or giou, obj, cls, kd) unless the entry sets
giou/obj/cls/dist.
Top-level keys next to `losses`: `kd_stop_epochs` (distillation off for the last that many epochs) and
`teacher_classes` (DATA: TEACHER class pairs, null for none; the rest matched by name; distill.recipe).

The resolved recipe (explicit layer names, every weight) is written into the run folder as kd.yaml and
read back by --resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from torch import nn

from distill.hooks import closest_names, model_head, unwrap_parallel
from distill.losses import LOSSES, SPECS, spec
from distill.pairing import pair_layers, parse_layer_list
from distill.recipe import (
    LAYER_KEYWORDS,
    ClassMap,
    LossEntry,
    Overrides,
    Recipe,
    check_weight,
    class_key,
    parse_teacher_classes,
)
from distill.registry import flag_name
from utils.general import LOGGER, UserError

ROOT = Path(__file__).resolve().parents[1]
KD_DIR = ROOT / "data" / "kd"
DEFAULT_TEMPERATURE = 20.0  # T of the kl/bce class terms when nothing sets it: the fork's, measured best (README)

# train_kd.py's recipe without --kd_config: output KD as per-class binary KL plus the score-weighted L2 on the
# maps entering Detect = data/kd/scorel2.yaml. Chosen by measurement (bench/RESULTS.md, "Distillation methods
# compared", issue 27's tables): level with output KD alone at 192 px with the committed 30-epoch teacher, 2.9
# points above it with the strong 120-epoch teacher (2 seeds, 0.335 +- 0.009 against 0.306 +- 0.006) and 5.7 in
# the quick start's schedule. Issue 27's
# 320 px table put output KD alone (data/kd/kl_only.yaml) 5.4 points above it, with a teacher weaker there than
# the students it teaches (0.241 mAP@0.5:0.95 at 320 px): a regime users rarely distil in, so the default stays
# until the two-size table is repeated with a strong teacher. data/kd/l2_at.yaml is l2 + AT, card.yaml the card's.
DEFAULT_CONFIG = Recipe.from_dict({"losses": [
    {"type": "YoloKDLoss", "name": "kd", "layers": "detect", "variant": "kl", "T": DEFAULT_TEMPERATURE},
    {"type": "scorel2", "name": "scorel2", "layers": "detect_inputs"},
]})


def is_output(loss_type: str) -> bool:
    """Output KD on the detection heads (YoloKDLoss, v8_output_kd), as opposed to feature distillation."""
    return loss_type in SPECS and SPECS[loss_type].output


def default_weight(entry: LossEntry | Mapping, family: str = "v5") -> float:
    """The weight of a recipe entry that sets none, for a student of this head family (its registration)."""
    entry = entry if isinstance(entry, LossEntry) else LossEntry.from_dict(entry)
    return spec(entry.type).weight(entry.params, family)


# --------------------------------------------------------------------------------------------------
# recipe files


def find_kd_config(name: str | Path) -> Path:
    """A kd config path; a bare name ('card') means data/kd/card.yaml."""
    path = Path(name)
    if not path.is_file() and not path.suffix and (KD_DIR / f"{name}.yaml").is_file():
        path = KD_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in KD_DIR.glob("*.yaml")))
        raise UserError(f"--kd_config {name}: file not found (shipped recipes in data/kd/: {shipped})")
    return path


def load_kd_config(name: str | Path) -> Recipe:
    """Read and check a kd config file; UserError names the bad entry."""
    path = find_kd_config(name)
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"--kd_config {path}: not valid YAML: {e}") from e
    try:
        return Recipe.from_dict(check_kd_config(cfg))
    except UserError as e:
        raise UserError(f"--kd_config {path}: {e}") from e


def check_kd_config(cfg) -> dict:
    """cfg itself when it is a recipe mapping {'losses': [entry, ...]} of registered types; else UserError."""
    if not isinstance(cfg, dict) or "losses" not in cfg or set(cfg) - {"losses", "kd_stop_epochs", "teacher_classes"} \
            or not isinstance(cfg["losses"], list) or not cfg["losses"]:
        raise UserError("a kd config is a mapping with the key 'losses' (a non-empty list of loss entries) and "
                        "optionally 'kd_stop_epochs' (distillation off for the last that many epochs) and "
                        "'teacher_classes' (data class: teacher class pairs for output KD)")
    parse_teacher_classes(cfg.get("teacher_classes"), "teacher_classes")  # a malformed pair fails here
    stop = cfg.get("kd_stop_epochs")
    if stop is not None and not (isinstance(stop, int) and not isinstance(stop, bool) and stop >= 0):
        raise UserError(f"kd_stop_epochs: {stop!r} must be a whole number of epochs >= 0 (0 = distil to the end)")
    names = []
    for i, entry in enumerate(cfg["losses"]):
        if not isinstance(entry, dict) or "type" not in entry:
            raise UserError(f"losses[{i}] must be a mapping with a 'type' key, got {entry!r}")
        if entry["type"] not in LOSSES:
            raise UserError(f"losses[{i}]: unknown loss type {entry['type']!r}{closest_names(entry['type'], LOSSES)}; "
                            f"registered: {', '.join(LOSSES)}")
        layers = entry.get("layers")
        if layers is not None and layers not in LAYER_KEYWORDS:
            raise UserError(f"losses[{i}] ({entry['type']}): layers: {layers!r} must be one of "
                            f"{', '.join(LAYER_KEYWORDS)}; list names under student_layers/teacher_layers")
        if entry.get("weight") is not None:  # null: the type's default
            check_weight(entry["weight"], f"losses[{i}] ({entry['type']}) weight")
        names.append(entry.get("name", entry["type"]))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"loss names {dup} are used twice; give each entry a unique 'name' (its log key)")
    return cfg


def as_recipe(recipe: Recipe | Mapping) -> Recipe:
    """A Recipe from a Recipe (copied) or a recipe mapping (checked)."""
    return recipe.copy() if isinstance(recipe, Recipe) else Recipe.from_dict(check_kd_config(recipe))


def write_kd_config(resolved: Recipe, path: Path, source: str) -> None:
    """kd.yaml of a run: the resolved recipe, loadable by --kd_config and read back by --resume."""
    header = (f"# Resolved distillation config of this run ({source}).\n"
              "# Repeat it with: python train_kd.py --kd_config <this file> ...; --resume reads it back.\n"
              "# YoloKDLoss gains come from the run's hyp (hyp.yaml) unless giou/obj/cls/dist are set here.\n")
    if resolved.teacher_classes:
        header += "# teacher_classes: the teacher class teaching each data class in output KD (null: none).\n"
    path.write_text(header + yaml.safe_dump(resolved.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# overrides


def apply_overrides(recipe: Recipe, given: Overrides | None) -> Recipe:
    """The recipe with what the user gave applied (see Overrides). Output values set every output entry
    (a YoloKDLoss entry is added when there is none). feature_losses replaces the feature entries by one
    entry per type: on the replaced entry's explicit layer lists when it had some and one type is given,
    else on the type's default layers; empty removes them. feature_weight sets the one feature entry's
    weight, loss_params[type] the entries of that type, student_layers / teacher_layers every feature entry."""
    if given is None:
        return recipe.copy()
    classes = _merge_classes(recipe.teacher_classes, given.teacher_classes)
    if not isinstance(given, Overrides):
        raise TypeError(f"overrides must be a distill.recipe.Overrides, got {type(given).__name__} "
                        "(engine/kd_flags.py maps train_kd.py's options onto one)")
    for value, flag in ((given.output_weight, "--alpha"), (given.feature_weight, "--beta")):
        if value is not None:
            check_weight(value, flag)
    losses = _apply_output(list(recipe.losses), given.output_values())
    if given.feature_losses is not None:
        losses = _replace_features(losses, list(given.feature_losses))
    if given.feature_weight is not None:
        features = [i for i, e in enumerate(losses) if not is_output(e.type)]
        if not features:
            raise UserError(f"--beta {given.feature_weight:g} sets the weight of the feature loss, but the recipe has "
                            "none (e.g. data/kd/kl_only.yaml, output KD alone): add one with --feature_loss, e.g. "
                            "--feature_loss scorel2, or use --alpha for output KD")
        if len(features) != 1:
            raise UserError(f"--beta sets the weight of the feature loss, but the config has {len(features)} "
                            "feature losses; set each 'weight' in the kd config file instead")
        losses[features[0]] = losses[features[0]].replace(weight=float(given.feature_weight))
    for loss_type, values in given.loss_params.items():
        for key, value in values.items():
            losses = _apply_loss_param(losses, loss_type, key, value)
    s_layers, t_layers = given.student_layers, given.teacher_layers
    if (s_layers or t_layers) and all(is_output(e.type) for e in losses):
        raise UserError(f"{'--student_layers' if s_layers else '--teacher_layers'} chooses the layers of feature "
                        "distillation, but the recipe has no feature loss (e.g. data/kd/kl_only.yaml, output KD "
                        "alone): add one with --feature_loss, e.g. --feature_loss mse")
    if s_layers or t_layers:
        losses = [e if is_output(e.type) else e.without("layers").replace(
            student_layers=parse_layer_list(s_layers), teacher_layers=parse_layer_list(t_layers)) for e in losses]
    if not losses:
        raise UserError("nothing to distil: the kd config and flags leave no loss")
    stop = recipe.stop_epochs if given.stop_epochs is None else given.stop_epochs
    check_kd_config(Recipe(losses, stop).to_dict())
    return Recipe(_apply_yolo_output(losses, given.yolo_output_values()), stop, classes)


def _merge_classes(recipe: dict | None, given) -> dict | None:
    """The recipe's data -> teacher class pairs with the given ones over them (data names compared as
    class_key compares them)."""
    if not given:
        return dict(recipe) if recipe else None
    kept = {d: t for d, t in (recipe or {}).items() if class_key(d) not in {class_key(k) for k in given}}
    return {**kept, **given}


def _apply_output(losses: list[LossEntry], out: dict) -> list[LossEntry]:
    if out and not any(is_output(e.type) for e in losses):
        losses.insert(0, LossEntry.from_dict({"type": "YoloKDLoss", "name": "kd", "layers": "detect",
                                              "T": DEFAULT_TEMPERATURE}))
    return [e.replace(**out) if is_output(e.type) else e for e in losses]


def _apply_yolo_output(losses: list[LossEntry], values: dict) -> list[LossEntry]:
    """obj_term / subtract_entropy / normalize on the YoloKDLoss entries, normalize also on v8_output_kd ones
    ('cells' is its 'points': the per-point form before issue 27); not given: the file's or the loss's."""
    # the flag names the v8 forms as it names the v5 ones: cells = the per-point form, weight = the w^2 mass
    v8 = {"normalize": V8_FLAG_FORM.get(values["normalize"], values["normalize"])} if "normalize" in values else {}
    needed = values if not any(e.type == "v8_output_kd" for e in losses) else {k: v for k, v in values.items()
                                                                               if k not in v8}
    if needed and not any(e.type == "YoloKDLoss" for e in losses):
        flags = {"obj_term": "kd_obj", "subtract_entropy": "bce_subtract_entropy", "normalize": "kd_normalize"}
        raise UserError(f"{', '.join('--' + flags[k] for k in needed)} sets output distillation (YoloKDLoss), "
                        "but the kd config has none")
    return [e.replace(**values) if e.type == "YoloKDLoss" else e.replace(**v8) if e.type == "v8_output_kd" and v8
            else e for e in losses]


def _replace_features(losses: list[LossEntry], kinds: list[str]) -> list[LossEntry]:
    features = [e for e in losses if not is_output(e.type)]
    # explicit layer lists of the replaced entry are kept; a keyword ('auto') gives way to the new type's default
    keep = {k: features[0].get(k) for k in ("student_layers", "teacher_layers") if features and features[0].get(k)}
    new = [LossEntry.from_dict({"type": k, "name": k, **(keep if keep and len(kinds) == 1 else
                                                        {"layers": _default_layers(k)})}) for k in kinds]
    return [e for e in losses if is_output(e.type)] + new


def _default_layers(loss_type: str) -> str:
    return SPECS[loss_type].default_layers if loss_type in SPECS else "auto"  # unknown: check_kd_config names it


def _apply_loss_param(losses: list[LossEntry], loss_type: str, key: str, value) -> list[LossEntry]:
    """losses with `key` (its weight or an option of its registration) set on every entry of loss_type."""
    flag = flag_name(loss_type, key)
    if not any(e.type == loss_type for e in losses):
        raise UserError(f"--{flag} {value}: the run has no '{loss_type}' loss; add it with "
                        f"--feature_loss {loss_type} (or in the --kd_config file)")
    value = spec(loss_type).checked(key, value, f"--{flag}")
    return [e.replace(**{key: value}) if e.type == loss_type else e for e in losses]


# --------------------------------------------------------------------------------------------------
# resolution


def _detect_name(model: nn.Module) -> list[str]:
    layers = getattr(unwrap_parallel(model), "model", None)
    if not isinstance(layers, nn.Sequential):
        raise UserError(f"{type(unwrap_parallel(model)).__name__} is not a YOLOv5 Model: 'detect' layers need one")
    return [f"model.{len(layers) - 1}"]


def _detect_inputs(model: nn.Module) -> list[str]:
    head = unwrap_parallel(model).model[-1]
    sources = head.f if isinstance(head.f, list) else [head.f]
    n = len(unwrap_parallel(model).model)
    return [f"model.{i % n if i < 0 else i}" for i in sources]


def resolve_layers(recipe: Recipe, student: nn.Module, teacher: nn.Module) -> Recipe:
    """The recipe with a name, a weight and explicit student_layers/teacher_layers in every entry."""
    family = getattr(model_head(student), "family", "v5")
    return Recipe([_resolve_entry(e, student, teacher, family) for e in recipe.losses])


def _resolve_entry(e: LossEntry, student: nn.Module, teacher: nn.Module, family: str) -> LossEntry:
    registered = spec(e.type)
    if e.name is None:
        e = e.replace(name=e.type)
    e = e.replace(weight=float(e.weight if e.weight is not None else registered.weight(e.params, family)))
    if e.weight == 0:  # said here, once per run: the checks before (flags, file, overrides) run more than once
        LOGGER.info(f"distillation: '{e.name}' ({e.type}) has weight 0: that term is off (it adds nothing to the "
                    "loss; its results.csv column stays 0)")
    layers = e.layers
    e = e.without("layers")
    if layers is None and e.student_layers is None and e.teacher_layers is None:
        layers = registered.default_layers
    if layers == "detect":
        s_layers, t_layers = _detect_name(student), _detect_name(teacher)
    elif layers == "detect_inputs":
        s_layers, t_layers = _detect_inputs(student), _detect_inputs(teacher)
    elif not registered.output:  # 'auto' or explicit (one side may default)
        pairing = pair_layers(student, teacher, e.student_layers, e.teacher_layers)
        s_layers, t_layers = pairing.student.names, pairing.teacher.names
        LOGGER.info(f"Distilling features with {e.name} (student -> teacher): " + ", ".join(
            f"{s}({cs}) -> {t}({ct})" for s, cs, t, ct in zip(pairing.student.names, pairing.student.channels,
                                                            pairing.teacher.names, pairing.teacher.channels)))
    else:
        s_layers = [str(x) for x in parse_layer_list(e.student_layers) or _detect_name(student)]
        t_layers = [str(x) for x in parse_layer_list(e.teacher_layers) or _detect_name(teacher)]
    return e.replace(student_layers=[f"model.{x}" if isinstance(x, int) else str(x) for x in s_layers],
                     teacher_layers=[f"model.{x}" if isinstance(x, int) else str(x) for x in t_layers])


def distiller_config(resolved: Recipe, student: nn.Module, teacher: nn.Module, hyp: dict,
                     class_map: ClassMap | None = None) -> dict:
    """The Distiller config (the seed's keys) of a resolved recipe: layer lists concatenated, each loss
    mapped to its own slice by pairs=[...], output losses given the run's hyp gains and, unless it is the
    identity, the class map (class_index: the teacher class of each student class, -1 none)."""
    s_layers, t_layers, losses, weights = [], [], [], []
    for e in resolved.losses:
        params = dict(e.params)
        if is_output(e.type) and not {"giou", "obj", "cls", "dist"} & set(params):
            params["hyp"] = hyp
        if is_output(e.type) and class_map is not None and not class_map.identity:
            params["class_index"] = list(class_map.index)
        start = len(s_layers)
        s_layers += e.student_layers
        t_layers += e.teacher_layers
        losses.append({"type": e.type, "name": e.name, "pairs": list(range(start, len(s_layers))), **params})
        weights.append(e.weight)
    return {"student_model": student, "teacher_model": teacher, "student_distill_layer": s_layers,
            "teacher_distill_layer": t_layers, "loss": losses, "weights": weights, "student_out_layer": None}


# --------------------------------------------------------------------------------------------------
# reductions that changed (issue 27): a run's kd.yaml names them, so a resumed run keeps its loss

# type: (recipe key, today's value, the value before 2026-12-06, what changed)
REDUCTIONS = {
    "YoloKDLoss": ("normalize", "weight", "cells", "output KD's box and class terms per cell"),
    "scorel2": ("reduce", "level", "all", "scorel2 normalised over all levels at once"),
    # the 'weight' form was the default from 2026-12-06 to 2026-12-07 only (runs of then name it in kd.yaml)
    "v8_output_kd": ("normalize", "points", "points", "v8 output KD's class term a mean over the points"),
}
# YoloKDLoss normalize -> v8_output_kd's (a v5 recipe or flag on a v8 pair): the per-cell means are the points
# form; the v5 default 'weight' also becomes the v8 default 'points', the form that trains a v8 student
# (distill/v8_output.py); a v8_output_kd entry that names normalize: weight keeps it.
V8_FLAG_FORM = {"cells": "points"}  # --kd_normalize on a v8_output_kd entry (its 'weight' is the w^2 form)
V8_FORM = {**V8_FLAG_FORM, "weight": "points"}


def explicit_reductions(recipe: Recipe) -> Recipe:
    """The recipe with each changed reduction written out (today's value where not given): kd.yaml names the
    loss a run started with, whatever the defaults become."""
    out = recipe.copy()
    out.losses = [e.replace(**{REDUCTIONS[e.type][0]: REDUCTIONS[e.type][1]})
                  if e.type in REDUCTIONS and e.get(REDUCTIONS[e.type][0]) is None else e for e in out.losses]
    return out


def resumed_reductions(recipe: Recipe, source: str) -> Recipe:
    """A resumed run's kd.yaml written before the reductions were named (2026-12-06): the entries that do not
    name one get the form that run started with, said once."""
    out = recipe.copy()
    old = []
    for i, e in enumerate(out.losses):
        if e.type in REDUCTIONS and e.get(REDUCTIONS[e.type][0]) is None:
            key, _, before, what = REDUCTIONS[e.type]
            out.losses[i] = e.replace(**{key: before})
            old.append(f"{e.log_name}: {key} {before} ({what})")
    if old:
        LOGGER.info(f"{source} was written before 2026-12-06: the run continues with the loss it started with ("
                    + "; ".join(old) + ")")
    return out
