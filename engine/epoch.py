"""One training epoch: warmup, accumulation, mixed precision, the EMA update and the progress line."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from engine.optim import nominal_accumulate, warmup
from engine.prefetch import teacher_ahead
from engine.setup import log_header
from engine.train_utils import (
    RunningMeans,
    multi_scale,
    plot_train_batch,
    train_autocast,
)
from utils.distributed import allreduce_grads
from utils.general import UserError

if TYPE_CHECKING:
    from utils.torch_utils import ModelEMA


class NonFiniteLoss(UserError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


@dataclass(frozen=True)
class EpochSettings:
    """The run's settings that train_one_epoch reads; the same for every epoch of the run."""

    epochs: int  # total epochs of the run, shown in the progress line
    nb: int  # batches per epoch: batch i of epoch e is global iteration i + nb * e
    nw: int  # warmup length in global iterations (engine.optim.warmup)
    lf: Callable[[float], float]  # LR multiplier per epoch: warmup ramps towards each group's lr * lf(epoch)
    hyp: Mapping[str, Any]  # the run's hyp: lr0, momentum and warmup_* for warmup
    batch_size: int  # --batch-size: images per batch over all processes
    nbs: int  # nominal batch size: batches are accumulated to about this many images per optimizer step
    imgsz: int  # train image size, the middle of the --multi-scale range
    gs: int  # grid size: --multi-scale sizes are multiples of it
    multi_scale: bool = False  # --multi-scale: each batch resized to 0.5-1.5 x imgsz
    quad: bool = False  # --quad: loss x 4, as v6.0 does for its quad collate
    bf16: bool = False  # --bf16: bf16 autocast of the forward on CPU
    world_size: int = 1  # processes: the loss is scaled by it and the objective's gradients all-reduced
    main: bool = True  # this process shows the progress line and draws train_batch*.jpg
    last: Path = Path("last.pt")  # the run's last.pt, named when a non-finite loss stops the run
    overlap_teacher: bool = False  # the objective's teacher forward one batch ahead on a thread (engine.prefetch)


def train_one_epoch(model: nn.Module, objective: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, ema: ModelEMA | None, epoch: int, cfg: EpochSettings,
                    plot_dir: Path | None = None) -> dict[str, float]:
    """One pass over the training data; returns the mean of every logged objective term.

    loader yields (imgs uint8, targets, paths, shapes) batches; ema, if any, follows every optimizer step;
    plot_dir, when given, receives the first three batches as train_batch{0,1,2}.jpg."""
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    batches = _prepared(loader, device, cfg)
    ahead = getattr(objective, "teacher_forward", None) if cfg.overlap_teacher else None
    batches = teacher_ahead(batches, ahead) if ahead is not None else ((*b, None) for b in batches)
    pbar = enumerate(batches)
    if cfg.main:
        pbar = tqdm(pbar, total=cfg.nb, bar_format="{l_bar}{bar:10}{r_bar}{bar:-10b}")
    log = RunningMeans(sync_every_step=not cuda)  # on CPU reading the sums costs nothing
    accumulate = nominal_accumulate(cfg.batch_size, cfg.nbs)
    optimizer.zero_grad()
    on_step = getattr(objective, "optimizer_step", None)
    last_opt_step = -1
    for i, (imgs, targets, paths, labelled, teacher) in pbar:
        ni = i + cfg.nb * epoch
        if ni <= cfg.nw:
            accumulate = warmup(optimizer, ni, cfg.nw, epoch, cfg.lf, cfg.hyp, cfg.batch_size, nbs=cfg.nbs)
        with train_autocast(cuda, cfg.bf16):
            # teacher: its forward of these images, run one batch ahead on a second thread (engine.prefetch)
            # labelled: which images carry labels, when the batch mixes in unlabeled ones (utils.data.unlabeled)
            kw = {} if labelled is None else {"labelled": labelled}
            out = (objective(model, imgs, targets, **kw) if teacher is None
                   else objective(model, imgs, targets, teacher, **kw))
        loss = out["loss"]
        if cfg.world_size > 1:
            loss = loss * cfg.world_size  # gradients are averaged between DDP processes
        if cfg.quad:
            loss = loss * 4.0
        log.add(out, loss)
        if log.synced and not log.finite:  # on CPU: every step, before the step can change the weights
            _raise_non_finite(epoch, i, log, cfg.last)
        scaler.scale(loss).backward()
        if cfg.world_size > 1:
            allreduce_grads(objective)  # adapters/loss parameters sit outside the DDP-wrapped student
        if ni - last_opt_step >= accumulate:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            if ema:
                ema.update(model)
            if on_step is not None:
                on_step()  # the objective's step counter (KD warm-ups count optimizer steps)
            last_opt_step = ni
        last = i == cfg.nb - 1
        if cfg.main:
            if i == 0:  # v6.0 column header, with the objective's extra terms (kd, at, ...)
                pbar.write(log_header([], log.names))  # the logged terms, in the order they are printed
            if log.due(last):  # CUDA: one host sync per second of training, not one per step
                mean = log.means()
                mem = f"{torch.cuda.memory_reserved() / 1e9 if torch.cuda.is_available() else 0:.3g}G"
                pbar.set_description(("%10s" * 2 + "%10.4g" * (len(mean) + 2)) % (
                    f"{epoch}/{cfg.epochs - 1}", mem, *mean.values(), targets.shape[0], imgs.shape[-1]))
            if plot_dir is not None and ni < 3:
                plot_train_batch(imgs, targets, paths, plot_dir / f"train_batch{ni}.jpg")
        elif log.due(last):
            log.means()
        if log.synced and not log.finite:  # CUDA: AMP's GradScaler skipped the non-finite steps
            _raise_non_finite(epoch, i, log, cfg.last)
    return log.means()


def _prepared(loader: Iterable, device: torch.device, cfg: EpochSettings) -> Iterator[tuple]:
    """The loader's batches as the step takes them: (imgs float [0, 1] on device, targets, paths, labelled),
    resized by --multi-scale (one draw per batch, in batch order, also when the teacher runs a batch ahead).
    labelled: None, or the (bs,) bool mask of a batch that mixes in unlabeled images (a fifth batch item)."""
    for imgs, targets, paths, _, *rest in loader:
        imgs = imgs.to(device, non_blocking=True).float() / 255  # uint8 -> [0, 1]
        if cfg.multi_scale:
            imgs = multi_scale(imgs, cfg.imgsz, cfg.gs)
        labelled = rest[0] if rest and not bool(rest[0].all()) else None  # a CPU mask: no device sync
        yield imgs, targets.to(imgs.device), paths, None if labelled is None else labelled.to(imgs.device)


def _raise_non_finite(epoch: int, i: int, log: RunningMeans, last: Path) -> None:
    terms = ", ".join(f"{k}={v:.4g}" for k, v in log.means().items())
    raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, batch {i} (epoch means so far: {terms}); training "
                        f"stopped. The last good checkpoint is {last if last.exists() else 'none (first epoch)'}; "
                        "lower lr0 in the hyp file or check the labels, then --resume or restart")
