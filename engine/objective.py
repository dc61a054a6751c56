"""Training objectives: what the training loop minimises.

An objective is called as ``objective(model, imgs, targets)`` and returns a dict (with images that carry no
labels in the batch, distillation on unlabeled images, also ``labelled=`` a (bs,) bool tensor for the
detection loss, utils.losses.detection_loss):
``"loss"`` is the tensor to back-propagate (scaled by batch size, as YOLOv5 v6.0's ComputeLoss does);
every other entry is a detached scalar for logging, in the order box, obj, cls, then extras.
The loop logs every entry except "loss" and never looks at the names, so a distillation objective
(distill.objective.DistillObjective) adds its own terms without the loop knowing. Two optional methods the
loop calls when an objective has them: ``start_epoch(epoch, epochs)`` before each epoch (schedules such as
switching distillation off for the last epochs) and ``optimizer_step()`` after each optimizer step (step
counters of warm-ups: with gradient accumulation several batches make one step).

engine.trainer.train builds the objective with a factory, ``make_objective(ctx: ObjectiveContext)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.losses import detection_loss


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective factory may use to build the run's objective (engine.kd.make_kd_objective reads it)."""

    model: nn.Module  # the student, on device, before DDP wrapping
    compute_loss: Callable  # the detection loss of the model's head, called as (raw outputs, targets)
    hyp: dict[str, Any]  # the loss hyperparameters: the run's hyp with the gains scaled to model and image size
    opt: argparse.Namespace  # the run's options
    device: torch.device  # where the student trains
    data_dict: dict[str, Any]  # the checked dataset yaml (train/val paths, nc, names)
    val_loader: torch.utils.data.DataLoader | None  # the val loader on the main process; None on other DDP ranks
    imgsz: int  # train and val image size
    nc: int  # classes trained (1 with --single-cls)
    names: list[str]  # class names


class DetectionObjective(nn.Module):
    """Plain YOLOv5 training: the detection loss of the student's raw outputs."""

    def __init__(self, compute_loss):
        super().__init__()
        self.compute_loss = compute_loss

    def forward(self, model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor,
                labelled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred = model(imgs)  # train mode: list of nl raw tensors (bs, na, ny, nx, 5 + nc)
        loss, items = detection_loss(self.compute_loss, pred, targets, labelled)
        names = getattr(self.compute_loss, "names", ("box", "obj", "cls"))  # v8 loss: box, cls, dfl
        return {"loss": loss, **{k: items[i] for i, k in enumerate(names)}}
