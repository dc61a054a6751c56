"""Optimizer, LR schedule and warmup of YOLOv5 v6.0 train.py.

Parameter groups keep the v6.0 order, which warmup relies on:
  0: normalisation-layer weights (no weight decay), and 0-d/1-d parameters named other than weight/bias
  1: all other weights (weight decay = hyp['weight_decay']), and >= 2-d parameters named otherwise
  2: biases (no weight decay; warmup starts them at hyp['warmup_bias_lr'])
Every trainable parameter of the model and of the extra modules (a KD objective: adapters, projectors, VID's
variances) is in one group; build_optimizer checks this and names any parameter left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.general import LOGGER, colorstr

NBS = 64  # nominal batch size: gradients are accumulated to about this many images per step

# Hyp keys of the optimizer, LR schedule and warmup (the functions below take them; engine/trainer.py reads
# lrf, warmup_epochs, warmup_min_iters and nbs for them). Rule format: utils/losses/yolov5.py HYP_KEYS;
# gathered by engine/options.py.
HYP_KEYS: dict[str, tuple] = {
    "lr0": (0, None, True, False, False, "initial learning rate, e.g. 0.01"),
    "lrf": (0, None, False, False, False, "final LR as a fraction of lr0, e.g. 0.1"),
    "momentum": (0, 1, False, True, False, "SGD momentum / Adam beta1, e.g. 0.937"),
    "weight_decay": (0, None, False, False, False, "e.g. 0.0005"),
    "warmup_epochs": (0, None, False, False, False, "e.g. 3.0"),
    "warmup_momentum": (0, 1, False, True, False, "e.g. 0.8"),
    "warmup_bias_lr": (0, None, False, False, False, "e.g. 0.1"),
    "warmup_min_iters": (0, None, False, False, True, "warmup floor in iterations, e.g. 1000"),
    "nbs": (1, None, False, False, True, "nominal batch size, e.g. 64"),
}

# Norm layers whose scale must not be decayed (v6.0 only has BatchNorm2d; adapters may use others).
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def nominal_accumulate(batch_size: int, nbs: int = NBS) -> int:
    """Number of batches whose gradients are summed per optimizer step: max(round(nbs / bs), 1)."""
    return max(round(nbs / batch_size), 1)


def scale_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nbs: int = NBS) -> float:
    """Weight decay for the real images per step: wd * bs * accumulate / nbs (unchanged for bs=16)."""
    scaled = weight_decay * batch_size * accumulate / nbs
    LOGGER.info(f"Scaled weight_decay = {scaled}")
    return scaled


def _group_of(module: nn.Module, name: str, p: nn.Parameter) -> int:
    """The group (0, 1 or 2, see the module docstring) of parameter `name` held directly by `module`.

    v6.0 only knows `.weight` and `.bias`. Any other parameter (VID's log_scales, a learnt temperature or
    scale, a bare nn.Parameter of an adapter) is placed by its shape: a matrix or kernel (>= 2-d) is a
    weight and is decayed; a scalar or vector (0-d/1-d) is a scale, a variance or an offset and joins the
    norm weights in group 0. Decay would pull such a value towards 0, which is no regularisation for it
    (VID's log_scales: sigma^2 towards softplus(0) = 0.69, a bias on the learnt variance); group 0 rather
    than the biases' group 2 because warmup starts group 2 at warmup_bias_lr (10x lr0 by default), meant
    for biases only.
    """
    if name == "bias":
        return 2
    if name == "weight":
        return 0 if isinstance(module, _NORM_TYPES) else 1
    return 1 if p.ndim >= 2 else 0


def _split_params(modules: Iterable[nn.Module], groups: tuple[list, list, list], seen: set[int]) -> None:
    """Walk modules in order, appending each one's own parameters to groups (see _group_of)."""
    for v in modules:
        for name, p in v.named_parameters(recurse=False):
            if id(p) not in seen:  # a shared parameter may appear in only one group
                seen.add(id(p))
                groups[_group_of(v, name, p)].append(p)


def _walk_extra(extra_params) -> list[nn.Module]:
    """Expand extra_params (a module or an iterable of modules/parameters) into a module list."""
    if isinstance(extra_params, nn.Module):
        extra_params = [extra_params]
    modules = []
    for item in extra_params:
        if isinstance(item, nn.Module):
            modules.extend(item.modules())
        elif isinstance(item, nn.Parameter):
            # a bare parameter has no name: placed by its shape like any parameter not named weight/bias
            holder = nn.Module()
            holder.register_parameter("param", item)
            modules.append(holder)
        else:
            raise TypeError(f"extra_params must hold nn.Module or nn.Parameter objects, got {type(item).__name__}")
    return modules


def _named_params(model: nn.Module, extra_params) -> list[tuple[str, nn.Parameter]]:
    """(qualified name, parameter) of the model and the extra modules, each parameter once: the model's as
    model.named_parameters() names them, an extra module's by its own named_parameters() (a KD objective:
    'kd.losses.vid.log_scales.0'), a bare parameter as 'extra_params[i]'."""
    items = [extra_params] if isinstance(extra_params, nn.Module) else list(extra_params)
    named = list(model.named_parameters())
    for i, item in enumerate(items):
        named += list(item.named_parameters()) if isinstance(item, nn.Module) else [(f"extra_params[{i}]", item)]
    out, seen = [], set()
    for name, p in named:
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def check_param_groups(named: Iterable[tuple[str, nn.Parameter]], groups: Iterable) -> None:
    """RuntimeError naming every trainable parameter (requires_grad) of `named` that no group holds.

    groups: an optimizer's param_groups (dicts with 'params') or lists of parameters. A parameter left out
    would get gradients every step and never change (the optimizer does not know it), yet be saved with
    the run as if trained."""
    held = {id(p) for g in groups for p in (g["params"] if isinstance(g, Mapping) else g)}
    missing = [name for name, p in named if p.requires_grad and id(p) not in held]
    if missing:
        raise RuntimeError(f"{len(missing)} trainable parameter(s) are in no optimizer group and would never be "
                           f"trained: {', '.join(missing)} (engine/optim.py _split_params places parameters)")


def build_optimizer(model: nn.Module, hyp: Mapping[str, Any], adam: bool = False,
                    extra_params: Iterable[nn.Module] | nn.Module = (),
                    weight_decay: float | None = None) -> torch.optim.Optimizer:
    """SGD (nesterov) or Adam over model + extra modules, in the three v6.0 groups (see module docstring).

    hyp needs lr0 and momentum. weight_decay (group 1) defaults to hyp['weight_decay']; a training run
    passes its value scaled to the nominal batch (as scale_weight_decay does), leaving hyp as loaded.
    Parameters with requires_grad=False (frozen layers) are kept in the groups, as in v6.0: they get
    no gradient, so the optimizer skips them. Every trainable parameter must land in a group: the built
    optimizer is checked (check_param_groups), a RuntimeError names any that did not.
    """
    if not isinstance(extra_params, nn.Module):
        extra_params = list(extra_params)  # walked twice: groups, then the completeness check
    groups: tuple[list, list, list] = ([], [], [])
    seen: set[int] = set()
    _split_params(model.modules(), groups, seen)
    n_model = [len(g) for g in groups]
    _split_params(_walk_extra(extra_params), groups, seen)
    g0, g1, g2 = groups

    if adam:
        optimizer = torch.optim.Adam(g0, lr=hyp["lr0"], betas=(hyp["momentum"], 0.999))
    else:
        optimizer = torch.optim.SGD(g0, lr=hyp["lr0"], momentum=hyp["momentum"], nesterov=True)
    decay = hyp["weight_decay"] if weight_decay is None else weight_decay
    optimizer.add_param_group({"params": g1, "weight_decay": decay})
    optimizer.add_param_group({"params": g2})
    check_param_groups(_named_params(model, extra_params), optimizer.param_groups)
    extra = [len(g) - n for g, n in zip(groups, n_model)]
    extra_txt = f" (extra modules: {extra[0]}/{extra[1]}/{extra[2]})" if any(extra) else ""
    # v6.0 prints the first two labels swapped ("57 weight, 60 weight (no decay)"); these are correct.
    LOGGER.info(f"{colorstr('optimizer:')} {type(optimizer).__name__} with parameter groups "
                f"{len(g0)} weight (no decay), {len(g1)} weight, {len(g2)} bias{extra_txt}")
    return optimizer


def lr_lambda(epochs: int, lrf: float, linear: bool = False) -> Callable[[float], float]:
    """LR multiplier per epoch for LambdaLR: 1 at epoch 0 falling to lrf.

    cosine (default): ((1 - cos(pi * x / epochs)) / 2) * (lrf - 1) + 1   (reaches lrf at x = epochs)
    linear:           (1 - x / (epochs - 1)) * (1 - lrf) + lrf          (reaches lrf at the last epoch)
    For epochs == 1 the linear form would divide by zero (v6.0 crashes); it then stays at 1.
    """
    if linear:
        span = max(epochs - 1, 1)
        return lambda x: (1 - x / span) * (1.0 - lrf) + lrf
    return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1


def warmup_iterations(warmup_epochs: float, nb: int, minimum: int = 1000) -> int:
    """Warmup length in iterations: max(round(warmup_epochs * nb), 1000) as in v6.0."""
    return max(round(warmup_epochs * nb), minimum)


def warmup(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch: int, lf: Callable[[float], float],
           hyp: Mapping[str, Any], batch_size: int, nbs: int = NBS) -> int:
    """Apply v6.0 warmup for global iteration ni (= i + nb * epoch) and return accumulate.

    While ni <= nw: accumulate ramps from 1 to nbs / batch_size; the lr of group 2 (biases) falls
    linearly from warmup_bias_lr and the others rise from 0, both towards initial_lr * lf(epoch);
    SGD momentum rises from warmup_momentum to momentum (Adam betas are left alone).
    After warmup nothing is changed (the scheduler owns the lr) and the nominal accumulate is returned.
    Call it after the LambdaLR scheduler has been created (it sets 'initial_lr' on the groups).
    """
    if ni > nw:
        return nominal_accumulate(batch_size, nbs)
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 2 else 0.0
        target = group.get("initial_lr", hyp["lr0"]) * lf(epoch)
        group["lr"] = float(np.interp(ni, xi, [start, target]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    return accumulate
