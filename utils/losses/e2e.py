"""YOLO26's end-to-end training loss (ultralytics' E2ELoss): the YOLOv8-style loss on both heads of an
end2end DetectV8, mixed by weights that move from the one-to-many to the one-to-one head during training.

- one-to-many branch: task-aligned assigner topk 10 (many positives per box, a dense signal);
- one-to-one branch: topk 7, then each box keeps its single best-aligned positive (topk2 1), which is what
  lets the head predict without NMS (one anchor per object);
- both with reg_max 1: CIoU + BCE + an L1 term on the edge distances in place of the DFL
  (utils.losses.yolov8.V8DetectionLoss with reg_max 1), gains box, cls, dfl as given.
Total = o2m * loss_one2many + o2o * loss_one2one (each already x batch size), o2m starting at 0.8 (o2o
0.2) and decaying linearly to 0.1 over `epochs` calls of update() (ultralytics calls it once per epoch).
The returned items are the one-to-one branch's [box, cls, l1] (what ultralytics logs). Given the eval
output of a model with end2end off (its one-to-many maps, a list, which val.py scores with NMS during
training) the loss is the one-to-many branch's alone.

Predictions: the train-mode output of the head, {"one2many": [maps], "one2one": [maps]}, each map
(B, 4 + nc, ny, nx); targets (N, 6) [img, cls, x, y, w, h] normalised, as for every loss of this repo.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.losses.yolov8 import V8DetectionLoss

O2M_START, O2M_FINAL = 0.8, 0.1  # one-to-many weight at the first and the last epoch


class E2ELoss:
    """Call with (preds, targets) -> (total loss * bs of shape (1,), detached one-to-one [box, cls, l1])."""

    names = ("box", "cls", "l1")

    def __init__(self, hyp: dict, nc: int, stride: list[float] | torch.Tensor, reg_max: int = 1, epochs: int = 100):
        self.one2many = V8DetectionLoss(hyp, nc, stride, reg_max, topk=10)
        self.one2one = V8DetectionLoss(hyp, nc, stride, reg_max, topk=7, topk2=1)
        self.names = self.one2one.names
        self.epochs = int(epochs)
        self.updates = 0
        self.o2m, self.o2o = O2M_START, 1.0 - O2M_START
        self.last_parts: dict[str, torch.Tensor] = {}  # detached items of each branch from the last call

    @classmethod
    def from_model(cls, model: nn.Module, hyp: dict | None = None) -> E2ELoss:
        """Build from a model whose last module is an end2end DetectV8; hyp defaults to model.hyp. The decay
        runs over 100 epochs (ultralytics' default) until set_epoch gives the run's length (the training loop
        calls it before every epoch)."""
        m = model.module if hasattr(model, "module") else model  # unwrap DP/DDP
        det = m.model[-1]
        hyp = hyp if hyp is not None else getattr(m, "hyp", None)
        if hyp is None:
            raise ValueError("E2ELoss.from_model needs hyp (or a model with a .hyp attribute)")
        return cls(hyp, det.nc, det.stride.tolist(), det.reg_max)

    def __call__(self, preds, targets: torch.Tensor, labelled: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """labelled: optional (bs,) bool, the images that carry labels (V8DetectionLoss's, for both heads)."""
        if isinstance(preds, tuple) and len(preds) == 2 and isinstance(preds[1], (dict, list)):
            preds = preds[1]
        if isinstance(preds, list):  # eval output (end2end off): the one-to-many maps alone, as NMS validates them
            return self.one2many(preds, targets, labelled)
        if not isinstance(preds, dict) or set(preds) != {"one2many", "one2one"}:
            raise ValueError("E2ELoss takes the train-mode output of a YOLO26 head, {'one2many': maps, 'one2one': "
                             f"maps}}, or its one-to-many maps (a list), got {type(preds).__name__}")
        loss_m, items_m = self.one2many(preds["one2many"], targets, labelled)
        loss_o, items_o = self.one2one(preds["one2one"], targets, labelled)
        self.last_parts = {"one2many": items_m, "one2one": items_o}
        return loss_m * self.o2m + loss_o * self.o2o, items_o

    def update(self) -> None:
        """One step of the decay schedule (call once per epoch): o2m from 0.8 down to 0.1 at epochs - 1."""
        self.updates += 1
        self.o2m = self.decay(self.updates)
        self.o2o = max(1.0 - self.o2m, 0.0)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """The schedule at `epoch` of a run of `epochs` (the training loop calls it before each epoch, so a
        resumed run continues the schedule where it stopped): the weights after `epoch` update() calls."""
        self.epochs, self.updates = int(epochs), int(epoch)
        self.o2m = self.decay(self.updates)
        self.o2o = max(1.0 - self.o2m, 0.0)

    def decay(self, step: int) -> float:
        """One-to-many weight after `step` updates: linear from O2M_START (step 0) to O2M_FINAL."""
        return max(1 - step / max(self.epochs - 1, 1), 0) * (O2M_START - O2M_FINAL) + O2M_FINAL
