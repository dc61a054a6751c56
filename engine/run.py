"""A training run from parsed options: check them, prepare the run folder (or the resumed run), train."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.options import check_train_opt
from engine.setup import prepare_opt
from engine.trainer import train


def train_run(opt: argparse.Namespace, make_objective=None) -> Path:
    """Train; returns the run directory. make_objective swaps the objective (engine/objective.py).

    Every option is checked first (engine/options.py): a wrong value stops here, before any folder,
    data or model exists."""
    opt = prepare_opt(check_train_opt(opt))
    return train(opt, make_objective=make_objective)
