"""The state of one training run (engine/trainer.py), declared in one place.

engine.trainer._setup fills the fields that the options, the environment and the hyp file decide; train()
fills the other groups below, in their order, before the first epoch. No step adds attributes of its own:
each reads the fields it needs and returns what it builds, which train() stores here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from utils.data.datasets import LoadImagesAndLabels
    from utils.torch_utils import ModelEMA


@dataclass
class TrainRun:
    """One training run: where it runs, what it trains on, and the objects its epochs update."""

    # decided by the options, the environment and the hyp file (engine.trainer._setup)
    local_rank: int  # this process's device index on its machine; -1 outside DDP
    rank: int  # this process's global rank; -1 outside DDP, 0 on the process that validates and saves
    world_size: int  # number of training processes (1 outside DDP)
    device: torch.device  # where the model trains
    save_dir: Path  # the run folder: weights/, results.csv, hyp.yaml, opt.yaml, plots
    hyp: Mapping[str, Any]  # hyperparameters as loaded (+ label_smoothing); read-only for the whole run
    nbs: int  # nominal batch size (hyp nbs, default 64): gradients accumulate to about this many images
    weight_decay: float  # hyp weight_decay scaled to the images one optimizer step sees (nominal batch)
    data_dict: dict[str, Any]  # the checked dataset yaml: train/val paths, nc, names
    nc: int  # number of classes trained (1 with --single-cls)
    names: list[str]  # class names, one per class trained
    batch_size: int  # images per batch on this process (--batch-size / world_size)

    # decided by the model (train, after build_model)
    gs: int = 32  # grid size: the model's largest stride, at least 32
    imgsz: int = 0  # train and val image size, a multiple of gs
    start_epoch: int = 0  # first epoch to train: 0, or the one after last.pt's on --resume
    unlabeled: str | list[str] | None = None  # unlabeled images mixed into the batches (distillation only)

    # built before the first epoch (train: loaders, objective, optimizer, EMA)
    model: nn.Module | None = None  # the student being trained (wrapped in DDP under torchrun)
    train_loader: DataLoader | None = None  # shuffled augmented loader; rebuilt when mosaic closes
    dataset: LoadImagesAndLabels | None = None  # train_loader's dataset (labels, image weights)
    val_loader: DataLoader | None = None  # rect val loader; None on DDP ranks other than 0
    loss_hyp: dict[str, Any] = field(default_factory=dict)  # hyp with the loss gains scaled to model and imgsz
    compute_loss: Callable | None = None  # the head's detection loss, built with loss_hyp (also used by val)
    objective: nn.Module | None = None  # what is minimised: detection loss, or detection + distillation
    optimizer: torch.optim.Optimizer | None = None  # SGD/Adam over the student and the objective's parameters
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None  # per-epoch LR schedule
    lf: Callable[[float], float] | None = None  # the schedule's LR multiplier per epoch (warmup's target)
    ema: ModelEMA | None = None  # EMA of the student's weights on the main process; None on the other ranks
    nb: int = 0  # batches per epoch
    nw: int = 0  # warmup length in iterations

    @property
    def main(self) -> bool:
        """This process validates, logs, plots and saves (rank 0, or the only process)."""
        return self.rank in (-1, 0)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def wdir(self) -> Path:
        return self.save_dir / "weights"

    @property
    def last(self) -> Path:
        return self.wdir / "last.pt"

    @property
    def best(self) -> Path:
        return self.wdir / "best.pt"
