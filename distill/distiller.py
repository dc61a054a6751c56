"""`Distiller(config)`: knowledge distillation for any pair of PyTorch models, configured by a dict.

    distiller = Distiller({
        'student_model': modelS, 'teacher_model': modelT,
        'student_distill_layer': ['layer1', 'layer2'],    # names from named_modules()
        'teacher_distill_layer': ['layer1', 'layer2'],    # paired by position with the student's
        'loss': [dict(type='vid', inC=16, midC=16, outC=16), dict(type='vid', inC=32, midC=32, outC=32)],
        'weights': [1.0, 1.0],                            # one per loss
        'student_out_layer': ['linear'],                  # what forward returns (None: the model's output)
        'device': device})
    optimizer = torch.optim.SGD(distiller.get_learnable_params(), lr=0.1, momentum=0.9)
    output, kd_loss = distiller(data)                     # kd_loss = sum_i weights[i] * loss_i
    (criterion(output, target) + kd_loss).backward(); optimizer.step()

The four parts (mmrazor's names): recorders = distill.hooks.FeatureHooks on the named layers;
connectors = the adapters/regressors each loss owns; losses = the registry (distill/registry.py; one module
per loss in distill/losses/); mapping = which layer pairs go into which loss, with which weight:
  * as many losses as layer pairs: loss i gets pair i (the seed's VID config);
  * one loss: it gets all the pairs (IRG's edge and transformation terms need several layers);
  * `pairs=[...]` (indices into the layer lists) in a loss dict maps it explicitly; `name=` sets the
    key under which its weighted value is logged (default: the type, numbered when repeated).
Every layer pair must feed at least one loss. Optional keys beyond the seed's: `example_input` (a
tensor or a shape such as (1, 3, 32, 32)) for the dummy forward that finds the layers' channel counts
(needed by losses that build adapters: fitnet, the detection losses; YOLOv5 models are probed without
it). `teacher_dtype` (torch.float16 / torch.bfloat16; default float32) runs the teacher's forward under
autocast to that type (fp16 weights on CUDA), float32 with autocast disabled (whatever encloses the call); `teacher_early_exit` ('auto', True, False) stops the teacher's
forward once its last distilled layer has run ('auto': when no loss reads ctx.teacher_out and the teacher
is a YOLO model, whose layers each run once). Config errors are ValueErrors naming the key.

The teacher is frozen (requires_grad False), kept in eval mode whatever `.train()` is called, run once
per call under no_grad, and never registered: it is not in parameters(), state_dict() or
get_learnable_params(). `state_dict()` holds the student and the losses' own parameters;
`distill_state_dict()` only the distillation part (what a training run saves next to the student).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from distill.context import KDContext
from distill.distiller_config import (
    build_loss,
    check_keys,
    config_layers,
    loss_names,
    loss_specs,
    map_pairs,
)
from distill.hooks import (
    FeatureHooks,
    StopForward,
    is_layered_model,
    unwrap_parallel,
)
from distill.yolo_output import raw_outputs

class TeacherPass(NamedTuple):
    """What the teacher's forward of one batch gives the losses: its output (None after an early exit) and
    the outputs of the distilled teacher layers, in the order of teacher_layers."""

    out: Any
    feats: list


CTX_FIELDS = ("imgs", "targets", "student", "teacher", "student_out", "teacher_out", "iteration")


class KDModules(nn.Module):
    """Everything the distillation owns: the losses (with their adapters and parameters) and the step
    counter (ctx.iteration, for warm-ups; restored on resume). It counts training forwards, one per step of a
    plain loop; a loop that accumulates gradients over several batches sets `external_steps` and calls
    step() after each optimizer step (train_kd.py does), so warm-ups count optimizer steps."""

    def __init__(self, losses: dict[str, nn.Module]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._count: int | None = None  # host copy of `iteration`: reading the buffer each step would sync a GPU
        self.external_steps = False  # True: the training loop calls step() after each optimizer step

    def count(self) -> int:
        if self._count is None:
            self._count = int(self.iteration)
        return self._count

    def step(self) -> None:
        self.iteration += 1
        self._count = self.count() + 1

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None  # re-read from the loaded buffer


class Distiller(nn.Module):
    """Knowledge distillation engine built from the seed's config keys (see the module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        config = check_keys(config)
        student, teacher = config["student_model"], config["teacher_model"]
        for key, m in (("student_model", student), ("teacher_model", teacher)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"config['{key}'] must be a torch nn.Module, got {type(m).__name__}")
        self.student = unwrap_parallel(student)
        self.__dict__["_teacher"] = unwrap_parallel(teacher).eval().requires_grad_(False)  # never registered
        self.student_layers = config_layers(self.student, config, "student_distill_layer")
        self.teacher_layers = config_layers(self.teacher, config, "teacher_distill_layer")
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(f"config['student_distill_layer'] has {len(self.student_layers)} layers but "
                             f"config['teacher_distill_layer'] {len(self.teacher_layers)}; they are paired by position")
        out = config.get("student_out_layer")
        self.out_layers = config_layers(self.student, config, "student_out_layer") if out else []

        specs = loss_specs(config["loss"])
        weights = config.get("weights")
        weights = [1.0] * len(specs) if weights is None else list(weights)
        if len(weights) != len(specs):
            raise ValueError(f"config['weights'] has {len(weights)} entries but config['loss'] {len(specs)}: "
                             "give one weight per loss")
        self.weights = [float(w) for w in weights]
        self.pairs = map_pairs(specs, self.student_layers, self.teacher_layers)
        self.names = loss_names(specs)

        device = config.get("device")
        if device is not None:
            self.student.to(device)
            self.teacher.to(device)
        shapes = self._probe(config.get("example_input"))
        losses = {name: build_loss(i, spec, [shapes[0][k] for k in pairs] if shapes else None,
                                    [shapes[1][k] for k in pairs] if shapes else None)
                  for i, (name, spec, pairs) in enumerate(zip(self.names, specs, self.pairs))}
        self.kd = KDModules(losses).to(_device_of(self.student))
        self.teacher_dtype = _teacher_dtype(config.get("teacher_dtype"))
        if self.teacher_dtype == torch.float16 and _device_of(self.teacher).type == "cuda":
            self.teacher.half()  # no per-forward weight casts (a frozen teacher gets no autocast cache)
        early = config.get("teacher_early_exit", "auto")
        if early not in ("auto", True, False):
            raise ValueError(f"config['teacher_early_exit'] must be 'auto', True or False, got {early!r}")
        needs_output = any("teacher_out" in getattr(m, "needs", ()) for m in losses.values())
        if early is True and needs_output:
            raise ValueError("config['teacher_early_exit'] is True but a loss reads the teacher's output (ctx.teacher_out)")
        # 'auto': stop the teacher after its last distilled layer when no loss reads its output and the
        # model runs each layer once (YOLO models); feature-only KD then never computes the teacher's head
        self.teacher_early_exit = bool(early) if early != "auto" else (not needs_output and is_layered_model(self.teacher))
        self._shapes_checked = False
        if shapes is not None:
            self._check_shapes(*shapes)
        self.terms: dict[str, torch.Tensor] = {}  # detached weighted value of each loss, last call
        self.parts: dict[str, torch.Tensor] = {}  # detached weighted sub-terms a loss reports (YoloKDLoss)

    # ----------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self.__dict__["_teacher"]

    @property
    def losses(self) -> nn.ModuleDict:
        return self.kd.losses

    def train(self, mode: bool = True) -> Distiller:
        """Student and losses follow `mode`; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def get_learnable_params(self) -> list[nn.Parameter]:
        """The student's parameters, then the losses' own (regressors, variances, adapters); no teacher."""
        seen, params = set(), []
        for p in list(self.student.parameters()) + list(self.kd.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return params

    def distill_state_dict(self) -> dict:
        """The distillation part of the state (losses' parameters, batch counter): saved to resume."""
        return self.kd.state_dict()

    def load_distill_state_dict(self, state: dict, strict: bool = True):
        return self.kd.load_state_dict(state, strict=strict)

    # ----------------------------------------------------------------------------------------------
    def teacher_forward(self, data) -> TeacherPass:
        """The teacher's part of a call: its forward (frozen, eval, no_grad, its own precision) and the
        distilled layers' outputs. Thread-safe towards the student's step: it touches no state the student
        reads, so a training loop may run it for the next batch on another thread (engine.prefetch)."""
        teacher = self.teacher
        teacher.eval()  # re-asserted: a caller flipping the teacher to train mode must not move its BN
        t_out = None
        with torch.no_grad(), _autocast_to(self.teacher_dtype, data), \
                FeatureHooks(teacher, self.teacher_layers, stop_when_done=self.teacher_early_exit) as t_hooks:
            try:
                t_out = teacher(data)  # the single teacher forward of this call
            except StopForward:  # every distilled teacher layer has run; its later layers are not needed
                pass
        return TeacherPass(t_out, t_hooks.outputs)

    def forward(self, data, targets=None, student: nn.Module | None = None, teacher: TeacherPass | None = None):
        """Return (output, kd_loss). `targets` go to ctx for the losses that need them; `student` runs
        the forward instead of the registered student (its DDP wrapper; the hooks see the same layers);
        `teacher`: this data's teacher_forward, computed beforehand (else it runs here)."""
        t_out, t_feats = self.teacher_forward(data) if teacher is None else teacher
        run = self.student if student is None else student
        with FeatureHooks(self.student, self.student_layers + self.out_layers) as s_hooks:
            s_out = run(data)
        captured = s_hooks.outputs
        s_feats, out_feats = captured[:len(self.student_layers)], captured[len(self.student_layers):]
        if not self._shapes_checked:
            self._check_shapes(_shapes(s_feats), _shapes(t_feats))
        ctx = KDContext(imgs=data if torch.is_tensor(data) else None, targets=targets, student=self.student,
                        teacher=self.teacher, student_out=raw_outputs(s_out),
                        teacher_out=None if t_out is None else raw_outputs(t_out), iteration=self.kd.count())
        kd_loss = self._losses(s_feats, t_feats, ctx)
        if self.training and not self.kd.external_steps:
            self.kd.step()
        if self.out_layers:
            output = out_feats[0] if len(out_feats) == 1 else out_feats
        else:
            output = s_out
        return output, kd_loss

    def _losses(self, s_feats, t_feats, ctx: KDContext) -> torch.Tensor:
        total = None
        self.terms, self.parts = {}, {}
        for name, w, pairs in zip(self.names, self.weights, self.pairs):
            loss = self.losses[name]
            for need in getattr(loss, "needs", ()):
                if getattr(ctx, need, None) is None:
                    raise ValueError(f"loss '{name}' needs ctx.{need}" +
                                     (": call distiller(data, targets)" if need == "targets" else ""))
            value = loss([s_feats[k] for k in pairs], [t_feats[k] for k in pairs], ctx)
            if not (torch.is_tensor(value) and value.dim() == 0):
                raise ValueError(f"loss '{name}' must return a scalar tensor, got "
                                 f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}")
            term = w * value
            total = term if total is None else total + term
            self.terms[name] = term.detach()
            self.parts.update({k: w * v for k, v in (getattr(loss, "parts", None) or {}).items()})
        return total

    # ----------------------------------------------------------------------------------------------
    def _probe(self, example_input) -> tuple[list, list] | None:
        """Shapes of the distilled layers (student, teacher) from one no-grad eval-mode forward, when an
        input can be made: `example_input` (tensor or shape), or 4 x the largest stride of a YOLOv5 model."""
        if example_input is None:
            stride = getattr(self.student, "stride", None)
            if not (torch.is_tensor(stride) and isinstance(getattr(self.student, "model", None), nn.Sequential)):
                return None
            size = int(stride.max()) * 4
            example_input = (1, int(getattr(self.student, "yaml", {}).get("ch", 3)), size, size)
        shapes = []
        for model, layers in ((self.student, self.student_layers), (self.teacher, self.teacher_layers)):
            p = next(iter(model.parameters()), None)
            device, dtype = (p.device, p.dtype) if p is not None else (None, None)
            x = example_input.to(device, dtype) if torch.is_tensor(example_input) else torch.zeros(
                *example_input, device=device, dtype=dtype)
            modes = {m: m.training for m in model.modules()}
            try:
                model.eval()  # eval: BatchNorm statistics untouched
                with torch.no_grad(), FeatureHooks(model, layers) as hooks:
                    model(x)
                shapes.append(_shapes(hooks.outputs))
            finally:
                for m, mode in modes.items():
                    m.training = mode
        return shapes[0], shapes[1]

    def _check_shapes(self, s_shapes: list, t_shapes: list) -> None:
        """Each loss's check_shapes on its pairs (tensor layers only), errors naming the loss."""
        for i, (name, pairs) in enumerate(zip(self.names, self.pairs)):
            loss = self.losses[name]
            ss, ts = [s_shapes[k] for k in pairs], [t_shapes[k] for k in pairs]
            if hasattr(loss, "check_shapes") and all(s is not None for s in ss + ts):
                try:
                    loss.check_shapes(ss, ts)
                except ValueError as e:
                    layers = ", ".join(f"{self.student_layers[k]} -> {self.teacher_layers[k]}" for k in pairs)
                    raise ValueError(f"config['loss'][{i}] ({name}, layers {layers}): {e}") from e
        self._shapes_checked = True

    # ----------------------------------------------------------------------------------------------
    def show_student_net(self, max_depth: int | None = None) -> str:
        """Print (and return) the student's module tree, distilled and output layers marked."""
        marks = {}
        for k, (s, t) in enumerate(zip(self.student_layers, self.teacher_layers)):
            marks.setdefault(s, []).append(f"pair {k} -> teacher {t} ({self._losses_of(k)})")
        for s in self.out_layers:
            marks.setdefault(s, []).append("output")
        text = module_tree(self.student, marks, max_depth)
        print(text)
        return text

    def show_teacher_net(self, max_depth: int | None = None) -> str:
        """Print (and return) the teacher's module tree, distilled layers marked."""
        marks = {}
        for k, (s, t) in enumerate(zip(self.student_layers, self.teacher_layers)):
            marks.setdefault(t, []).append(f"pair {k} <- student {s} ({self._losses_of(k)})")
        text = module_tree(self.teacher, marks, max_depth)
        print(text)
        return text

    def _losses_of(self, k: int) -> str:
        return ", ".join(n for n, pairs in zip(self.names, self.pairs) if k in pairs)

    def extra_repr(self) -> str:
        return (f"teacher={type(self.teacher).__name__} (frozen, not registered), pairs="
                f"{list(zip(self.student_layers, self.teacher_layers))}, weights={dict(zip(self.names, self.weights))}")


def _shapes(outputs: Sequence) -> list:
    return [tuple(o.shape) if torch.is_tensor(o) else None for o in outputs]


def _teacher_dtype(dtype) -> torch.dtype | None:
    """config['teacher_dtype']: None/float32 (full precision) or a reduced float dtype for autocast."""
    if dtype is None or dtype == torch.float32:
        return None
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"config['teacher_dtype'] must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def _autocast_to(dtype: torch.dtype | None, data):
    """The teacher forward's precision on the data's device: autocast to `dtype`, or, for None (float32),
    autocast disabled: an enclosing autocast (the training step's bf16 with --bf16, fp16 AMP on CUDA) does
    not reach a teacher asked to run in float32."""
    device = data.device.type if torch.is_tensor(data) else "cpu"
    if dtype is None:
        return torch.autocast(device_type=device, enabled=False)
    return torch.autocast(device_type=device, dtype=dtype)


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def module_tree(model: nn.Module, marks: dict[str, list[str]], max_depth: int | None = None) -> str:
    """One line per module, indented by depth; '<==' marks. Depth defaults to the deepest mark."""
    depth_of = {name: name.count(".") + 1 for name in marks}
    limit = max_depth if max_depth is not None else max(depth_of.values(), default=1)
    lines = [type(model).__name__]
    for name, m in model.named_modules():
        if not name:
            continue
        depth = name.count(".") + 1
        if depth > limit and name not in marks:
            continue
        mark = f"  <== {'; '.join(marks[name])}" if name in marks else ""
        lines.append(f"{'  ' * depth}({name.rsplit('.', 1)[-1]}) {type(m).__name__}{mark}")
    return "\n".join(lines)
