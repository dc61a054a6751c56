"""Training objectives: what the training loop minimises.

An objective is called as ``objective(model, imgs, targets)`` and returns a dict:
``"loss"`` is the tensor to back-propagate (scaled by batch size, as YOLOv5 v6.0's ComputeLoss does);
every other entry is a detached scalar for logging, in the order box, obj, cls, then extras.
The loop logs every entry except "loss" and never looks at the names, so a distillation objective
(distill.objective.DistillObjective) adds its own terms without the loop knowing.
"""

from __future__ import annotations

import torch
from torch import nn


class DetectionObjective(nn.Module):
    """Plain YOLOv5 training: the detection loss of the student's raw outputs."""

    def __init__(self, compute_loss):
        super().__init__()
        self.compute_loss = compute_loss

    def forward(self, model: nn.Module, imgs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = model(imgs)  # train mode: list of nl raw tensors (bs, na, ny, nx, 5 + nc)
        loss, items = self.compute_loss(pred, targets)
        names = getattr(self.compute_loss, "names", ("box", "obj", "cls"))  # v8 loss: box, cls, dfl
        return {"loss": loss, **{k: items[i] for i, k in enumerate(names)}}
