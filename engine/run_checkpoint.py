"""A training run's checkpoints: what --resume restores from last.pt, and last.pt/best.pt/epoch{N}.pt as
each epoch writes them (the v6.0 format, plus date, kd_state and the KD run's teacher record)."""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import save_checkpoint
from utils.general import LOGGER, UserError
from utils.torch_utils import ModelEMA, de_parallel, to_contiguous_format


def restore_run(ckpt: dict, opt, optimizer, ema, objective) -> tuple[int, float]:
    """--resume: restore optimizer, EMA, objective state, epoch and best fitness from last.pt.

    Starting from a checkpoint without --resume (fine-tuning) restores only the weights.
    """
    if not opt.resume:
        return 0, 0.0
    best_fitness = 0.0
    if ckpt.get("optimizer") is not None:
        _load_optimizer(optimizer, ckpt["optimizer"], opt.weights)
        best_fitness = float(np.asarray(ckpt["best_fitness"]).reshape(-1)[0])
    if ema and ckpt.get("ema") is not None:
        ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
        ema.updates = ckpt["updates"]
    if ckpt.get("kd_state") is not None:
        objective.load_state_dict(ckpt["kd_state"])
    start_epoch = int(ckpt["epoch"]) + 1
    if start_epoch <= 0:
        raise UserError(f"{opt.weights} was stripped at the end of training (epoch -1): nothing to resume; "
                        "start a new run with --weights instead")
    if start_epoch >= opt.epochs:
        raise UserError(f"{opt.weights} already finished all {opt.epochs} epochs: nothing to resume")
    LOGGER.info(f"Resuming training from epoch {start_epoch} to {opt.epochs} total epochs")
    return start_epoch, best_fitness


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict, path) -> None:
    """optimizer.load_state_dict, or UserError when the saved groups hold other parameter counts: a run saved
    before every trainable parameter of the objective went to the optimizer (VID's log_scales, which it
    never trained), whose optimizer state cannot be matched to this run's."""
    saved = [len(g["params"]) for g in state.get("param_groups", [])]
    now = [len(g["params"]) for g in optimizer.param_groups]
    if saved != now:
        raise UserError(f"{path}: its optimizer state has {'/'.join(map(str, saved))} parameters per group, this run's "
                        f"optimizer {'/'.join(map(str, now))}, so it cannot be resumed (runs saved before every "
                        "trainable parameter of the objective was optimized lack VID's log_scales); start a new run, "
                        f"or one from its weights with --weights {path}")
    optimizer.load_state_dict(state)


def save_run(epoch: int, best_fitness: float, fi: float, opt, wdir: Path, *, model: nn.Module, ema: ModelEMA,
             optimizer: torch.optim.Optimizer, objective: nn.Module) -> None:
    """Write last.pt (and best.pt, epoch{N}.pt) atomically in the v6.0 format (+ date, kd_state).

    model is the trained student (DDP-wrapped or not), ema its weights' moving average; fi is this
    epoch's fitness, saved as best.pt when it equals best_fitness."""
    extra = objective.state_dict()
    ckpt = {"epoch": epoch, "best_fitness": np.array([best_fitness]),
            # float32 while training (v6.0 halves here): --resume continues from the exact weights;
            # strip_optimizer halves best.pt/last.pt when the run ends, as v6.0 ships them
            "model": to_contiguous_format(deepcopy(de_parallel(model)).float()),
            "ema": to_contiguous_format(deepcopy(ema.ema).float()),
            "updates": ema.updates, "optimizer": optimizer.state_dict(), "wandb_id": None,
            "date": datetime.now().isoformat()}
    if len(extra):
        ckpt["kd_state"] = extra  # adapters etc.: needed to resume, absent from the student model
    for k, v in (getattr(objective, "checkpoint_extra", None) or {}).items():  # e.g. the KD run's teacher record
        ckpt.setdefault(k, v)
    if best_fitness == fi:  # best.pt first: a run killed once last.pt names this epoch has its best.pt too
        save_checkpoint(ckpt, wdir / "best.pt")
    save_checkpoint(ckpt, wdir / "last.pt")
    if opt.save_period > 0 and epoch > 0 and epoch % opt.save_period == 0:
        save_checkpoint(ckpt, wdir / f"epoch{epoch}.pt")
