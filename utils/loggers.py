"""Run logging: results.csv in the YOLOv5 v6.0 format (+ appended columns) and optional TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

from utils.general import LOGGER, colorstr

# The exact v6.0 header (spec §8.7); written padded to width 20 like v6.0.
V6_COLUMNS = [
    "epoch", "train/box_loss", "train/obj_loss", "train/cls_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "x/lr0", "x/lr1", "x/lr2",
]
_V6_TRAIN_KEYS = ("box", "obj", "cls")


def extra_columns(loss_names: list[str]) -> list[str]:
    """Objective terms beyond box/obj/cls become appended columns: 'kd' -> 'train/kd_loss'."""
    return [f"train/{k}_loss" for k in loss_names if k not in _V6_TRAIN_KEYS]


def read_results_csv(file: str | Path) -> tuple[list[str], list[list[float]]]:
    """Parse a results.csv whose names may carry v6.0's padding. Returns (stripped names, rows)."""
    with open(file, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return [], []
    names = [c.strip() for c in rows[0]]
    values = [[float(v) for v in r] for r in rows[1:]]
    return names, values


class ResultsLogger:
    """Writes one row per epoch to results.csv; mirrors the scalars to TensorBoard when installed."""

    def __init__(self, save_dir: Path, tensorboard: bool = True):
        self.file = Path(save_dir) / "results.csv"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(save_dir))
                LOGGER.info(f"{colorstr('TensorBoard: ')}Start with 'tensorboard --logdir {Path(save_dir).parent}'")
            except Exception:  # tensorboard is optional
                self.tb = None

    def truncate_from(self, epoch: int) -> None:
        """On resume: drop rows of epochs >= epoch (a run killed after writing a row but before saving
        last.pt repeats that epoch), so results.csv stays continuous."""
        if not self.file.exists():
            return
        names, rows = read_results_csv(self.file)
        kept = [r for r in rows if int(r[0]) < epoch]
        if len(kept) != len(rows):
            self._rewrite(names, kept)

    def _rewrite(self, names: list[str], rows: list[list[float]]) -> None:
        tmp = self.file.with_suffix(".csv.tmp")
        with open(tmp, "w") as f:
            f.write(",".join(f"{n:>20s}" for n in names) + "\n")
            for r in rows:
                f.write(",".join(f"{v:20.5g}" for v in r) + "\n")
        tmp.replace(self.file)

    def log_epoch(self, epoch: int, train_losses: dict[str, float], results: tuple, lrs: list[float]) -> None:
        """results = (P, R, mAP@.5, mAP@.5:.95, val box, val obj, val cls) as returned by val.run.

        train_losses holds every logged objective term; box/obj/cls fill the v6.0 columns and the others
        (e.g. kd, at) are appended after the 14 v6.0 columns as train/<name>_loss.
        """
        train = [float(train_losses.get(k, 0.0)) for k in _V6_TRAIN_KEYS]
        extra_names = [k for k in train_losses if k not in _V6_TRAIN_KEYS]
        extras = [float(train_losses[k]) for k in extra_names]
        values = [epoch, *train, *[float(x) for x in results], *[float(x) for x in lrs], *extras]
        columns = V6_COLUMNS + extra_columns(extra_names)
        new = not self.file.exists()
        with open(self.file, "a") as f:
            if new:
                f.write(",".join(f"{c:>20s}" for c in columns) + "\n")
            f.write(",".join(f"{v:20.5g}" for v in values) + "\n")
        if self.tb:
            for name, v in zip(columns[1:], values[1:]):
                self.tb.add_scalar(name, v, epoch)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
