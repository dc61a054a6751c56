"""Experimental modules: Ensemble, and attempt_load (re-exported from utils.checkpoint, v6.0 location)."""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.ModuleList):
    """Several models run on the same input; decoded outputs concatenated along dim 1 ("NMS ensemble")."""

    def forward(self, x, augment: bool = False, profile: bool = False, visualize: bool = False):
        y = [module(x, augment, profile, visualize)[0] for module in self]  # v5: (B, N_i, no), v8: (B, no, N_i)
        return torch.cat(y, 2 if self.family == "v8" else 1), None

    @property
    def family(self) -> str:
        """The members' family (attempt_load only builds ensembles of one family)."""
        return getattr(self[0], "family", "v5")

    def nms(self, prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """The members' NMS (see models.yolo.Model.nms)."""
        return self[0].nms(prediction, *args, **kwargs)


def attempt_load(weights, map_location=None, inplace: bool = True, fuse: bool = True, cfg=None, trust: bool = False):
    """See utils.checkpoint.attempt_load (imported lazily: checkpoint imports this module)."""
    from utils.checkpoint import attempt_load as _attempt_load

    return _attempt_load(weights, map_location=map_location, inplace=inplace, fuse=fuse, cfg=cfg, trust=trust)
