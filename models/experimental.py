"""Experimental modules: Ensemble, and attempt_load (re-exported from utils.checkpoint, v6.0 location)."""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.ModuleList):
    """Several models run on the same input; decoded outputs concatenated along dim 1 ("NMS ensemble")."""

    def forward(self, x, augment: bool = False, profile: bool = False, visualize: bool = False):
        y = [module(x, augment, profile, visualize)[0] for module in self]  # each (B, N_i, no)
        return torch.cat(y, 1), None


def attempt_load(weights, map_location=None, inplace: bool = True, fuse: bool = True, cfg=None, trust: bool = False):
    """See utils.checkpoint.attempt_load (imported lazily: checkpoint imports this module)."""
    from utils.checkpoint import attempt_load as _attempt_load

    return _attempt_load(weights, map_location=map_location, inplace=inplace, fuse=fuse, cfg=cfg, trust=trust)
