"""DistillObjective: the detection loss plus a Distiller's kd_loss, called like any training objective.

    objective(model, imgs, targets) -> {"loss", "box", "obj", "cls", <one entry per distillation loss>}

"loss" = ComputeLoss(student) + bs * kd_loss, with kd_loss = sum_i w_i * loss_i from the Distiller
(distill/distiller.py): every distillation loss is a per-image mean, and ComputeLoss returns its loss x
batch size. The logged entries are per-image scale like ComputeLoss's items: "<name>" = w_i * loss_i,
so (box + obj + cls + sum of the KD entries) * bs == loss. train_kd.py's default recipe (distill.yolo_config
DEFAULT_CONFIG): "kd" (YoloKDLoss, per-class binary KL on the Detect heads) and "scorel2" (the teacher-score-
weighted L2 on the maps entering Detect).

A teacher of other classes than the data: output KD pairs the classes by name (distill.recipe.match_classes,
the recipe's teacher_classes / --teacher_classes for the rest); build_kd_objective prints the map, keeps it as
objective.class_map and, unless it is the identity, in the resolved recipe (kd.yaml). Feature KD takes any
class counts.

What to distil comes as a recipe (distill/recipe.py) and the values the user gave over it (`Overrides`);
build_kd_objective resolves them for the model pair (family defaults, layer names, default weights).

The Distiller holds the teacher unregistered (frozen, eval, one no_grad forward per batch). The objective
registers only the Distiller's `kd` module (the losses' own parameters and the batch counter): that is
what goes to the optimizer next to the student and what train_kd.py saves as 'kd_state'; the student
itself is the training loop's model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from distill.distiller import Distiller, TeacherPass
from distill.families import default_config, for_family
from distill.hooks import model_head, unwrap_parallel
from distill.pairing import check_is_large_flag, parse_layer_list
from distill.recipe import ClassMap, Overrides, Recipe, generic_names, match_classes
from distill.registry import feature_types, flag_name
from distill.yolo_config import (
    DEFAULT_CONFIG,
    apply_overrides,
    as_recipe,
    distiller_config,
    explicit_reductions,
    is_output,
    resolve_layers,
)
from distill.yolo_output import raw_outputs
from utils.general import LOGGER, UserError
from utils.losses import detection_loss
from utils.torch_utils import resolve_teacher_dtype, to_channels_last


def detect_layer(model: nn.Module) -> nn.Module:
    """The detection head of a Model (last layer), looked through DP/DDP: a YOLOv5 Detect (nc, nl, na,
    anchors) or a head of another family (`family` attribute, e.g. DetectV8: nc, nl, reg_max)."""
    head = model_head(model)
    needs = ("nc", "nl", "na", "anchors") if getattr(head, "family", "v5") == "v5" else ("nc", "nl")
    if head is None or not all(hasattr(head, a) for a in needs):
        raise UserError(f"{type(model).__name__} has no YOLOv5 Detect head as its last layer")
    return head


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """float32, eval mode, no parameter gradients (in place; returns the teacher)."""
    teacher.float().eval().requires_grad_(False)
    return teacher


def class_names(model: nn.Module) -> list[str]:
    """The class names a Model carries (model.names, a list or an ultralytics {index: name} dict), one per class
    of its head; ['0', '1', ...] (generic) when it has none or not one per class."""
    nc = detect_layer(model).nc
    names = getattr(unwrap_parallel(model), "names", None) or []
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    return [str(n) for n in names] if len(names) == nc else [str(i) for i in range(nc)]


def check_compatible(student: nn.Module, teacher: nn.Module, what: str = "teacher", classes: bool = True) -> None:
    """UserError unless both heads have the same number of levels, anchors per level and strides, and (classes)
    their classes can be paired: the same count, or names that match (distill.recipe.match_classes on the
    models' names, no pairs given). classes=False: the caller pairs the classes (build_kd_objective)."""
    s, t = detect_layer(student), detect_layer(teacher)
    if classes and s.nc != t.nc:
        match_classes(class_names(student), class_names(teacher))
    if (s.nl, getattr(s, "na", None)) != (t.nl, getattr(t, "na", None)) and not _cross_family(s, t):
        raise UserError(f"{what} has {t.nl} output levels x {t.na} anchors, the student {s.nl} x {s.na}; "
                        "use a teacher of the same family (P5 with P5, P6 with P6)")
    ss, ts = getattr(s, "stride", None), getattr(t, "stride", None)
    if ss is not None and ts is not None and [float(x) for x in ss] != [float(x) for x in ts]:
        raise UserError(f"{what} strides {[float(x) for x in ts]} differ from the student's {[float(x) for x in ss]}")


def _cross_family(s: nn.Module, t: nn.Module) -> bool:
    """Heads of two families (v5 and v8): only features are distilled, anchors per level do not matter
    (distill.v8_output.for_family refuses output KD between them)."""
    return getattr(s, "family", "v5") != getattr(t, "family", "v5") and s.nl == t.nl


class DistillObjective(nn.Module):
    """Detection loss of the student + batch size x the Distiller's kd_loss (see the module docstring).

    Args:
        distiller: a Distiller whose student is the model the loop trains (student_out_layer None).
        compute_loss: utils.losses.yolov5.ComputeLoss for the student (called on its raw outputs).
        log_parts: also log YoloKDLoss's weighted kd_box / kd_obj / kd_cls.
    """

    def __init__(self, distiller: Distiller, compute_loss, log_parts: bool = False, stop_epochs: int = 0):
        super().__init__()
        self.__dict__["distiller"] = distiller  # plain attribute: the student is the loop's, not ours
        self.kd = distiller.kd  # registered: the losses' parameters + step counter (optimizer, kd_state)
        self.kd.external_steps = True  # the loop calls optimizer_step(): warm-ups count optimizer steps
        if not (isinstance(stop_epochs, int) and stop_epochs >= 0):
            raise UserError(f"kd_stop_epochs must be a whole number >= 0, got {stop_epochs!r}")
        self.stop_epochs = stop_epochs  # distillation off for the run's last that many epochs (0: never)
        self.active = True  # False once start_epoch reaches the stop
        # output KD's parts (YoloKDLoss: kd_box, kd_obj, kd_cls), logged as 0 while distillation is off
        self._part_names = [k for m in distiller.losses.values() for k in getattr(m, "part_names", ())]
        self.compute_loss = compute_loss
        self.log_parts = log_parts
        self.resolved: Recipe | None = None  # the resolved recipe it was built from (train_kd.py writes kd.yaml)
        self.class_map: ClassMap | None = None  # output KD's data -> teacher classes (None: no output KD)
        self._balance_checked: set[str] = set()  # terms already compared with the detection loss
        self._balance_calls = 0  # training calls seen by the check (it reads values on the host: rarely)

    @property
    def teacher(self) -> nn.Module:
        return self.distiller.teacher

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch: distillation is off from epoch `epochs - stop_epochs`
        on (RTMDet's recipe stops it for the last epochs, when mosaic closes): the student then trains on the
        labels alone, without the teacher's forward."""
        active = not (self.stop_epochs and epoch >= epochs - self.stop_epochs)
        if self.active and not active:
            LOGGER.info(f"Distillation off for the last {min(self.stop_epochs, epochs - epoch)} epoch(s) ({epoch}-"
                        f"{epochs - 1}, kd_stop_epochs {self.stop_epochs}): the student trains on the labels alone")
        self.active = active

    def optimizer_step(self) -> None:
        """Called by the training loop after each optimizer step: the counter of warm-ups (ctx.iteration)."""
        self.kd.step()

    def teacher_forward(self, imgs: torch.Tensor) -> TeacherPass | None:
        """The teacher's part of a training step on imgs, for a loop that runs it ahead (engine.prefetch);
        None while distillation is off (kd_stop_epochs), when the step needs no teacher."""
        return self.distiller.teacher_forward(imgs) if self.active else None

    def forward(self, model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                teacher: TeacherPass | None = None, labelled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """model: the student as the loop holds it (maybe DDP-wrapped); the Distiller hooks its layers.
        teacher: teacher_forward(imgs) when the loop ran it ahead, else the teacher runs here.
        labelled: (bs,) bool, the images that carry labels when some do not (unlabeled images): the detection
        loss is about those only; every KD term sees every image."""
        if self.training and not self.active:
            return self._labels_only(model, imgs, targets, labelled)
        pred, kd_loss = self.distiller(imgs, targets, student=model, teacher=teacher)
        loss, items = detection_loss(self.compute_loss, raw_outputs(pred), targets, labelled)
        names = getattr(self.compute_loss, "names", ("box", "obj", "cls"))  # v8 loss: box, cls, dfl
        out = {**{k: items[i] for i, k in enumerate(names)}, **self.distiller.terms}
        if self.log_parts:
            out.update(self.distiller.parts)
        if self.training and len(self._balance_checked) < len(self.distiller.terms):
            if self._balance_calls % 50 == 0 and self._balance_calls <= 5000:  # at most ~100 host reads
                self._check_balance(items)
            self._balance_calls += 1
        return {"loss": loss + kd_loss * imgs.shape[0], **out}

    def _labels_only(self, model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                     labelled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The detection loss alone (distillation stopped); the KD columns are logged as 0."""
        loss, items = detection_loss(self.compute_loss, raw_outputs(model(imgs)), targets, labelled)
        names = getattr(self.compute_loss, "names", ("box", "obj", "cls"))
        zero = torch.zeros((), device=loss.device)
        terms = dict.fromkeys([*self.distiller.names, *(self._part_names if self.log_parts else [])], zero)
        return {"loss": loss, **{k: items[i] for i, k in enumerate(names)}, **terms}

    def _check_balance(self, items: torch.Tensor) -> None:
        """Warn once per term when it is more than DOMINANT x the detection loss, with the weight that
        would put it at a third of it; checked every 50th training batch until each term has been seen
        non-zero (imitation's warm-up). Such terms trained students worse than output KD alone
        (bench/RESULTS.md, 'Distillation methods compared'). Reads values on the host only then."""
        det = float(items.sum())
        types = {e.name: e.type for e in self.resolved.losses} if self.resolved is not None else {}
        for name, w in zip(self.distiller.names, self.distiller.weights):
            value = self.distiller.terms.get(name)
            if name in self._balance_checked or value is None:
                continue
            value = float(value)
            if value == 0.0:  # still in a warm-up (imitation): checked when it starts
                continue
            self._balance_checked.add(name)
            if det > 0 and value > DOMINANT * det:
                loss_type = types.get(name, "")
                flag = f"--{flag_name(loss_type, 'weight')} or " if loss_type in feature_types() else ""
                LOGGER.warning(
                    f"WARNING: distillation term '{name}' starts at {value / det:.0f}x the detection loss ({value:.4g} "
                    f"against {det:.4g} at weight {w:g}). Terms this large trained students worse than output KD "
                    f"alone on the shapes data (bench/RESULTS.md); weight {_one_digit(w * det / 3 / value)} ("
                    f"{flag}'weight:' in a recipe) puts it at a third of the detection loss.")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also reads the 'kd_state' of runs saved before the Distiller ('adapters.N.*' of FitNet)."""
        if state_dict and all(k.startswith("adapters.") for k in state_dict):
            fitnet = [n for n, m in self.kd.losses.items() if getattr(m, "adapters", None) is not None]
            if len(fitnet) == 1:
                state_dict = {f"kd.losses.{fitnet[0]}.{k}": v for k, v in state_dict.items()}
                strict = False  # the old state has no batch counter
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"teacher={type(self.teacher).__name__} (not registered), weights={dict(zip(self.distiller.names, self.distiller.weights))}"


DOMINANT = 10.0  # a KD term above this multiple of the detection loss gets a warning (DistillObjective)


def _one_digit(x: float) -> str:
    return f"{float(f'{x:.1g}'):g}"


def build_kd_objective(student: nn.Module, teacher: nn.Module, compute_loss, hyp: dict,
                       overrides: Overrides | None = None, kd_config: Recipe | dict | None = None, *,
                       teacher_dtype: str = "fp32", is_large: bool | None = None, log_parts: bool = True,
                       stop_epochs: int = 0, data_names: Sequence[str] | None = None) -> DistillObjective:
    """The DistillObjective of train_kd.py: recipe (the family's default when None) + overrides -> Distiller.

    overrides: what the user gave over the recipe (None: nothing; a resumed run's kd.yaml is used as is).
    teacher_dtype: precision of the teacher's forward ('auto' is fp16 on CUDA, bf16 on CPUs with native
    bf16, else fp32). is_large: the fork's --isL as given (None: not given), checked against the teacher
    (a warning only). The resolved recipe is kept as objective.resolved. data_names: the data's class names
    (the data yaml's; None: the student's model.names), matched to the teacher's when output KD reads classes
    (objective.class_map, None for feature KD alone, which takes any class counts).
    """
    check_compatible(student, teacher, classes=False)  # classes: paired below, where output KD needs them
    check_is_large_flag(teacher, is_large)
    nc = getattr(compute_loss, "nc", None) or detect_layer(student).nc
    data_names = class_names(student) if data_names is None else [str(n) for n in data_names]
    if len(data_names) != nc:
        raise UserError(f"the data has {len(data_names)} class names but the student predicts {nc} classes")
    device = next(unwrap_parallel(student).parameters()).device
    freeze_teacher(teacher).to(device)
    if device.type == "cuda" or _channels_last(student):
        # NHWC like the student (engine.trainer): no layout conversions between them; on a CPU also 1.2x a
        # fused yolov5s forward (float32, AVX2: 264 -> 210 ms for 16 images at 160 px, bench/RESULTS.md)
        to_channels_last(teacher)
    recipe = as_recipe(kd_config) if kd_config is not None else default_config(student, teacher, DEFAULT_CONFIG)
    recipe = apply_overrides(recipe, overrides)
    resolved = resolve_layers(_fused_names(for_family(recipe, student, teacher), teacher), student, teacher)
    resolved = explicit_reductions(resolved)  # kd.yaml names the loss's form: a resume keeps it
    resolved.stop_epochs = stop_epochs or recipe.stop_epochs  # the schedule, written to kd.yaml with the losses
    class_map = None
    if any(is_output(e.type) for e in resolved.losses):
        align_anchors(student, teacher, compute_loss)
        class_map = match_classes(data_names, class_names(teacher), recipe.teacher_classes, CLASSES_WHERE)
        log_class_map(class_map, resolved)
        resolved.teacher_classes = None if class_map.identity else class_map.to_dict()  # kd.yaml: the whole map
    elif recipe.teacher_classes:
        LOGGER.warning("WARNING: teacher_classes (--teacher_classes) pairs the classes of output KD, but this recipe "
                       "has none: unused (feature losses take any classes)")
    try:
        dtype = resolve_teacher_dtype(teacher_dtype or "fp32", device)
        config = distiller_config(resolved, student, teacher, hyp, class_map)
        distiller = Distiller({**config, "teacher_dtype": dtype})
    except ValueError as e:
        raise UserError(f"distillation config: {e}") from e
    objective = DistillObjective(distiller, compute_loss, log_parts=log_parts, stop_epochs=resolved.stop_epochs)
    objective.resolved = resolved
    objective.class_map = class_map
    return objective


CLASSES_WHERE = "--teacher_classes (recipe key teacher_classes)"  # where the pairs come from, in their errors


def log_class_map(class_map: ClassMap, recipe: Recipe) -> None:
    """The class map at the start of a run: one line when the classes are the teacher's, else the table."""
    n = len(class_map.data_names)
    if class_map.identity:
        names = "generic names, not compared" if generic_names(class_map.data_names) or generic_names(
            class_map.teacher_names) else "the same names"
        LOGGER.info(f"distillation: output KD pairs data class i with the teacher's class i ({n} classes, {names})")
        return
    LOGGER.info(f"distillation: the teacher's {len(class_map.teacher_names)} classes matched to the data's {n} by "
                "name (output KD; data class <- teacher class, - = no class KD for it; recorded in kd.yaml):\n"
                + "\n".join(class_map.table()))
    if class_map.teacher_only:
        LOGGER.info("distillation: teacher-only classes are left out of the class term and count as background in "
                    "the objectness (distill/yolo_output.py, option B)")
    if any(e.type == "scorel2" for e in recipe.losses):
        LOGGER.info("distillation: scorel2 weights its feature imitation by the teacher's score over all its classes, "
                    "teacher-only ones included: it imitates the teacher's maps wherever the teacher sees an object "
                    "(a weight on where to imitate, not a target of the student's outputs)")


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's first conv weight is stored NHWC (engine.trainer's single-process default)."""
    conv = next((m for m in unwrap_parallel(model).modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.weight.dim() == 4 and conv.weight.shape[1] > 1 and \
        conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def align_anchors(student: nn.Module, teacher: nn.Module, compute_loss=None) -> bool:
    """Give the student the teacher's anchors when they differ (after autoanchor); True if copied.

    Output KD teaches anchor slot a of the student from slot a of the teacher: the objectness and class
    of a slot are only comparable when both slots stand for the same prior box. The detection loss's
    copy of the anchors (compute_loss.anchors) follows. Anchors equal to fp16 rounding (rel 1e-3 > the
    half-ulp 4.9e-4 of the fp16-stored anchors) are left alone."""
    s, t = detect_layer(student), detect_layer(teacher)
    # anchor-free heads: nothing to align (DetectV8's .anchors is its cache of anchor points, not priors)
    if any(getattr(h, "family", "v5") != "v5" or not hasattr(h, "anchors") for h in (s, t)):
        return False
    new = t.anchors.detach().to(s.anchors.device, s.anchors.dtype)
    if torch.allclose(s.anchors, new, rtol=1e-3, atol=0):
        return False

    def pixels(head, a):  # (nl, na, 2) grid units -> rounded pixel lists, as autoanchor prints them
        return [[[round(float(v), 1) for v in wh] for wh in level] for level in a * head.stride.view(-1, 1, 1).to(a)]

    LOGGER.warning(f"WARNING: student anchors {pixels(s, s.anchors)} differ from the teacher's {pixels(s, new)} "
                   "(pixels, per level): output distillation compares anchor slots one to one, so the student "
                   "takes the teacher's anchors")
    with torch.no_grad():
        s.anchors[:] = new
    if isinstance(getattr(s, "anchor_grid", None), list):  # decode caches built from the old anchors
        # both: Detect rebuilds them only when the grid's shape differs, so a grid cached at the val size with
        # an emptied anchor_grid decoded every box with zero width and height (in-training mAP 0)
        s.grid = [torch.zeros(1)] * s.nl
        s.anchor_grid = [torch.zeros(1)] * s.nl
    if torch.is_tensor(getattr(compute_loss, "anchors", None)):
        compute_loss.anchors = new.to(compute_loss.anchors.device, compute_loss.anchors.dtype).clone()
    return True


def _fused_names(recipe: Recipe, teacher: nn.Module) -> Recipe:
    """The recipe with each entry's teacher_layers passed through fused_layer_names (kd.yaml keeps the hooked
    names)."""
    entries = []
    for e in recipe.losses:
        names = parse_layer_list(e.teacher_layers)
        if names:
            strings = fused_layer_names(teacher, [n for n in names if isinstance(n, str)])
            e = e.replace(teacher_layers=[n if isinstance(n, int) else strings.pop(0) for n in names])
        entries.append(e)
    return Recipe(entries)


def fused_layer_names(teacher: nn.Module, names: list[str]) -> list[str]:
    """Teacher layer names after Conv+BN fusion: a hooked '<conv block>.bn' (a BatchNorm that fusion
    folds into the conv) is resolved to '<conv block>.conv', whose fused output is what the BatchNorm
    returned (to rounding). Any other name fusion removed is a UserError naming the layer."""
    modules = dict(unwrap_parallel(teacher).named_modules())
    out = []
    for name in names:
        if name not in modules and name.endswith(".bn") and f"{name[:-3]}.conv" in modules:
            LOGGER.info(f"teacher layer {name}: fused into {name[:-3]}.conv (Conv+BN fusion), hooked there")
            name = f"{name[:-3]}.conv"
        elif name not in modules and ".bn." in f"{name}.":
            raise UserError(f"teacher layer {name} does not exist in the fused teacher (Conv+BN fusion removes "
                            "BatchNorm modules); hook its conv block instead, e.g. " + name.split(".bn")[0])
        out.append(name)
    return out


def load_teacher(path: str | Path, device: torch.device | str, nc: int, trust: bool = False,
                 any_classes: bool = False) -> nn.Module:
    """Load a teacher checkpoint (Conv+BN fused, float32, eval, frozen); check it predicts nc classes, unless
    any_classes (train_kd.py: build_kd_objective pairs the classes by name where output KD needs them).

    Fusion folds each BatchNorm into its conv: the teacher only runs in eval mode, where the two are
    the same function, and its forward (most of the distillation overhead) gets cheaper. Hooks on a
    '.bn' module are moved to the fused conv (fused_layer_names)."""
    from models.checkpoint import attempt_load

    teacher = attempt_load(path, map_location=device, fuse=True, trust=trust)
    if isinstance(teacher, nn.ModuleList):
        raise UserError(f"--teacher_weight {path}: give one teacher checkpoint, not an ensemble")
    freeze_teacher(teacher).to(device)
    t_nc = detect_layer(teacher).nc
    if t_nc != nc and not any_classes:
        raise UserError(f"teacher {path} predicts {t_nc} classes but the dataset has nc={nc}; train or "
                        "fine-tune the teacher on this dataset first (train_kd.py matches the classes by name: "
                        "--teacher_classes)")
    return teacher
