"""KDObjective: the detection loss plus teacher distillation, called like any training objective.

    objective(model, imgs, targets) -> {"loss", "box", "obj", "cls", "kd", "at"}

"loss" = ComputeLoss(student) + alpha * KD_out + beta * F_feat * bs, with KD_out the output
distillation loss (already x bs, distill.losses) and F_feat the feature loss (AT by default) over the
paired layers (distill.pairing). The logged entries are per-image scale like ComputeLoss's items:
"kd" = alpha * KD_out / bs and "<feature loss name>" = beta * F_feat, so (box+obj+cls+kd+at) * bs == loss.

The teacher is held but not registered: it is not in parameters(), state_dict() or .train()/.to()
of the objective; it runs once per batch, in eval mode, under no_grad (FP16 autocast on CUDA).
The objective's own parameters (feature adapters, when the feature loss needs them) go to the
optimizer; its state_dict() is what train_kd.py saves as 'kd_state'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from distill.adapters import apply_adapters, build_adapters
from distill.hooks import FeatureHooks, unwrap_parallel
from distill.losses import LOSSES, build_loss
from distill.pairing import check_is_large_flag, pair_layers
from utils.general import LOGGER, UserError

DEFAULT_TEMPERATURE = 20.0  # the fork's --temperature; only the 'kl'/'bce' class terms use it
# Default weights put each KD term at roughly a third of the detection loss at the start of training
# (measured: yolov5n student from scratch, yolov5s teacher, shapes data at 160 px, hyp.short gains):
# detection items sum ~0.20; raw l2 ~0.008, kl ~0.04 (bce = kl + the teacher's constant entropy);
# AT (sum over positions, 9 layer pairs) ~6.6; FitNet ~1 per layer. alpha=None / beta=None pick these.
OUTPUT_DEFAULT_ALPHA = {"l2": 10.0, "kl": 2.0, "bce": 2.0}
DEFAULT_ALPHA = 1.0  # used for output losses missing from OUTPUT_DEFAULT_ALPHA
DEFAULT_BETA = 0.01  # attention transfer
FEATURE_DEFAULT_BETA = {"at": DEFAULT_BETA, "fitnet": 0.1}


def detect_layer(model: nn.Module) -> nn.Module:
    """The Detect head of a YOLOv5 Model (last layer), looked through DP/DDP."""
    model = unwrap_parallel(model)
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if head is None or not all(hasattr(head, a) for a in ("nc", "nl", "na", "anchors")):
        raise UserError(f"{type(model).__name__} has no YOLOv5 Detect head as its last layer")
    return head


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """float32, eval mode, no parameter gradients (in place; returns the teacher)."""
    teacher.float().eval().requires_grad_(False)
    return teacher


def check_compatible(student: nn.Module, teacher: nn.Module, what: str = "teacher") -> None:
    """UserError unless both heads have the same nc, number of levels, anchors per level and strides."""
    s, t = detect_layer(student), detect_layer(teacher)
    if s.nc != t.nc:
        raise UserError(f"{what} predicts {t.nc} classes but the student {s.nc}: distillation needs the same "
                        "classes; train or fine-tune the teacher on this dataset first")
    if (s.nl, s.na) != (t.nl, t.na):
        raise UserError(f"{what} has {t.nl} output levels x {t.na} anchors, the student {s.nl} x {s.na}; "
                        "use a teacher of the same family (P5 with P5, P6 with P6)")
    ss, ts = getattr(s, "stride", None), getattr(t, "stride", None)
    if ss is not None and ts is not None and [float(x) for x in ss] != [float(x) for x in ts]:
        raise UserError(f"{what} strides {[float(x) for x in ts]} differ from the student's {[float(x) for x in ss]}")


def _raw(out):
    """Raw per-level list from a train-mode list or an eval-mode (decoded, raw) tuple."""
    return out[1] if isinstance(out, tuple) else out


class KDObjective(nn.Module):
    """Detection loss + output distillation (kd_loss) + feature distillation (feature_loss).

    Args:
        teacher: YOLOv5 Model with the student's nc; frozen here (float, eval, no grad).
        compute_loss: utils.loss.ComputeLoss for the student (called on the student's raw outputs).
        hyp: (scaled) hyperparameters; gains box/'giou', obj, cls and 'kd' weight the output KD terms.
        kd_loss: output loss name ('l2', 'kl', 'bce'); temperature for kl/bce; alpha its weight
            (None: OUTPUT_DEFAULT_ALPHA[kd_loss]).
        feature_loss: 'at' (default), 'fitnet' (needs student/teacher_channels for its adapters) or
            None; beta its weight (None: FEATURE_DEFAULT_BETA[feature_loss]).
        student_layers/teacher_layers: paired hooked layer names.
        student_anchors/teacher_anchors: (nl, na, 2) grid units; None = read from the models each call
            (so autoanchor changes to the student are seen).
    """

    def __init__(self, teacher: nn.Module, compute_loss, hyp: dict, kd_loss: str = "l2",
                 temperature: float = DEFAULT_TEMPERATURE, alpha: float | None = None,
                 beta: float | None = None, feature_loss: str | None = "at",
                 student_layers: Sequence[str] = (), teacher_layers: Sequence[str] = (),
                 student_channels: Sequence[int] | None = None, teacher_channels: Sequence[int] | None = None,
                 student_anchors: torch.Tensor | None = None, teacher_anchors: torch.Tensor | None = None,
                 weight_by_cls: bool = False, kl_softmax: bool = False, log_parts: bool = False,
                 device: torch.device | str | None = None):
        super().__init__()
        self.__dict__["_teacher"] = freeze_teacher(teacher)  # plain attribute: never a submodule
        self.compute_loss = compute_loss
        nc = getattr(compute_loss, "nc", None)
        if nc is not None and detect_layer(teacher).nc != nc:
            raise UserError(f"teacher predicts {detect_layer(teacher).nc} classes but the student's loss "
                            f"expects {nc}; train or fine-tune the teacher on this dataset first")
        out_kw = {"hyp": hyp, "temperature": temperature, "weight_by_cls": weight_by_cls}
        if kd_loss == "kl":
            out_kw["kl_softmax"] = kl_softmax
        self.output_loss = _build(kd_loss, "output", "--kd_loss", **out_kw)
        self.feature_name = feature_loss or None
        self.alpha = float(OUTPUT_DEFAULT_ALPHA.get(kd_loss, DEFAULT_ALPHA) if alpha is None else alpha)
        self.beta = float(FEATURE_DEFAULT_BETA.get(self.feature_name, DEFAULT_BETA) if beta is None else beta)
        self.feature_loss = _build(feature_loss, "feature", "--feature-loss") if self.feature_name else None
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        if self.feature_loss is not None and (not self.student_layers or
                                              len(self.student_layers) != len(self.teacher_layers)):
            raise ValueError("feature distillation needs equally long, non-empty student/teacher layer lists")
        self.adapters = None
        if self.feature_loss is not None and self.feature_loss.needs_adapters:
            if student_channels is None or teacher_channels is None:
                raise ValueError(f"feature loss {feature_loss!r} needs student_channels and teacher_channels")
            self.adapters = build_adapters(student_channels, teacher_channels)
        self.student_anchors, self.teacher_anchors = student_anchors, teacher_anchors
        self.log_parts = log_parts
        if device is not None:
            self.to(device)
            teacher.to(device)

    @property
    def teacher(self) -> nn.Module:
        return self.__dict__["_teacher"]

    def forward(self, model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        teacher.eval()  # re-asserted: a wrapper calling .train() on everything must not flip BN/Detect
        feats_on = self.feature_loss is not None
        with torch.no_grad(), torch.autocast(imgs.device.type, dtype=torch.float16, enabled=imgs.is_cuda), \
                FeatureHooks(teacher, self.teacher_layers if feats_on else []) as t_hooks:
            t_raw = _raw(teacher(imgs))  # the single teacher forward of this batch
        with FeatureHooks(model, self.student_layers if feats_on else []) as s_hooks:
            s_raw = _raw(model(imgs))
        loss, items = self.compute_loss(s_raw, targets)
        bs = imgs.shape[0]

        s_anchors = self.student_anchors if self.student_anchors is not None else detect_layer(model).anchors
        t_anchors = self.teacher_anchors if self.teacher_anchors is not None else detect_layer(teacher).anchors
        kd, parts = self.output_loss(s_raw, t_raw, s_anchors.detach(), t_anchors.detach())
        kd = self.alpha * kd
        out = {"box": items[0], "obj": items[1], "cls": items[2], "kd": (kd / bs).detach()}
        total = loss + kd
        if feats_on:
            s_feats = s_hooks.outputs
            if self.adapters is not None:
                s_feats = apply_adapters(self.adapters, s_feats)
            feat = self.beta * self.feature_loss(s_feats, t_hooks.outputs)
            total = total + feat * bs
            out[self.feature_name] = feat.detach()
        if self.log_parts:
            out.update({k: self.alpha * v for k, v in parts.items()})
        return {"loss": total, **out}

    def extra_repr(self) -> str:
        return (f"teacher={type(self.teacher).__name__} (not registered), alpha={self.alpha}, beta={self.beta}, "
                f"feature_layers={len(self.student_layers)}")


def _build(name: str, kind: str, flag: str, **kwargs) -> nn.Module:
    choices = [k for k, v in LOSSES.items() if v.kind == kind]
    if name not in choices:
        raise UserError(f"{flag} {name!r} is not a {kind} distillation loss; choose one of: {', '.join(choices)}")
    return build_loss(name, **kwargs)


def _opt(opt_like, *names, default=None):
    for n in names:
        v = getattr(opt_like, n, None)
        if v is not None:
            return v
    return default


def build_kd_objective(student: nn.Module, teacher: nn.Module, compute_loss, hyp: dict, opt_like) -> KDObjective:
    """KDObjective for train_kd.py: pairs layers, checks compatibility, infers adapter channels.

    Reads from opt_like (argparse Namespace or any object; missing attributes take the defaults):
    kd_loss or kd_loss_selected ('l2'), temperature (20), alpha (None: l2 10, kl/bce 2), beta (None: 0.01 for 'at', 0.1 for
    'fitnet'), feature_loss
    ('at'; 'none' disables), student_layers / teacher_layers ('model.4,model.6' strings, default
    inferred), isL (checked against the teacher, warning only), weight_by_cls, kl_softmax.
    """
    check_compatible(student, teacher)
    check_is_large_flag(teacher, _opt(opt_like, "isL", "is_large"))
    feature_loss = _opt(opt_like, "feature_loss", default="at")
    feature_loss = None if str(feature_loss).lower() in ("", "none") else feature_loss
    device = next(unwrap_parallel(student).parameters()).device
    teacher.to(device)
    kw = {}
    if feature_loss is not None:
        pairing = pair_layers(student, teacher, _opt(opt_like, "student_layers"), _opt(opt_like, "teacher_layers"))
        kw = {"student_layers": pairing.student.names, "teacher_layers": pairing.teacher.names,
              "student_channels": pairing.student.channels, "teacher_channels": pairing.teacher.channels}
        LOGGER.info("Distilling features (student -> teacher): " + ", ".join(
            f"{s}({cs}) -> {t}({ct})" for s, cs, t, ct in zip(kw["student_layers"], kw["student_channels"],
                                                            kw["teacher_layers"], kw["teacher_channels"])))
    return KDObjective(teacher, compute_loss, hyp,
                       kd_loss=_opt(opt_like, "kd_loss", "kd_loss_selected", default="l2"),
                       temperature=float(_opt(opt_like, "temperature", default=DEFAULT_TEMPERATURE)),
                       alpha=_opt(opt_like, "alpha"),
                       beta=_opt(opt_like, "beta"),
                       feature_loss=feature_loss, weight_by_cls=bool(_opt(opt_like, "weight_by_cls", default=False)),
                       kl_softmax=bool(_opt(opt_like, "kl_softmax", default=False)), device=device, **kw)


def load_teacher(path: str | Path, device: torch.device | str, nc: int, trust: bool = False) -> nn.Module:
    """Load a teacher checkpoint (unfused, float32, eval, frozen) and check it predicts nc classes."""
    from utils.checkpoint import (
        attempt_load,  # helper A's loader (allow-listed, clear UserErrors)
    )

    teacher = attempt_load(path, map_location=device, fuse=False, trust=trust)
    if isinstance(teacher, nn.ModuleList):
        raise UserError(f"--teacher_weight {path}: give one teacher checkpoint, not an ensemble")
    freeze_teacher(teacher).to(device)
    t_nc = detect_layer(teacher).nc
    if t_nc != nc:
        raise UserError(f"teacher {path} predicts {t_nc} classes but the dataset has nc={nc}; train or "
                        "fine-tune the teacher on this dataset first")
    return teacher
