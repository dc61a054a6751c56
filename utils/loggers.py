"""Run logging: results.csv in the YOLOv5 v6.0 format (+ appended columns) and optional TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

from utils.general import LOGGER, UserError, colorstr

# The exact v6.0 header (spec §8.7); written padded to width 20 like v6.0.
V6_COLUMNS = [
    "epoch", "train/box_loss", "train/obj_loss", "train/cls_loss",
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss", "x/lr0", "x/lr1", "x/lr2",
]
_V6_TRAIN_KEYS = ("box", "obj", "cls")


PART_SUFFIXES = ("_box", "_obj", "_cls")  # a logged sub-term of a loss: 'kd_box' is output KD's box part


def extra_columns(loss_names: list[str]) -> list[str]:
    """Objective terms beyond box/obj/cls become appended columns: 'kd' -> 'train/kd_loss'; a loss's parts
    keep their name: 'kd_box' -> 'train/kd_box' (next to train/kd_loss)."""
    return [f"train/{k}" if k.endswith(PART_SUFFIXES) else f"train/{k}_loss"
            for k in loss_names if k not in _V6_TRAIN_KEYS]


def is_number(s: str) -> bool:
    """The text parses as a float (a results.csv value, or a yaml value given as a string)."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse_results_csv(file: str | Path) -> tuple[list[str], list[list[float]], list[int]]:
    """(stripped names, rows, numbers of the damaged lines that were skipped) of a results.csv.

    A line with the wrong number of fields or a value that is not a number (a run killed while writing,
    a file edited by hand) is skipped with a warning naming it. A file whose first line is not a header
    raises UserError: without names no column can be trusted.
    """
    with open(file, newline="", errors="replace") as f:
        lines = list(enumerate(csv.reader(f), 1))
    lines = [(i, r) for i, r in lines if any(c.strip() for c in r)]
    if not lines:
        return [], [], []
    names = [c.strip() for c in lines[0][1]]
    if not names or any(not n or is_number(n) for n in names):
        raise UserError(f"{file} line {lines[0][0]} is not a results.csv header (got {','.join(names)[:80]!r}); "
                        f"restore the header line or delete the file")
    rows, skipped = [], []
    for i, r in lines[1:]:
        try:
            values = [float(v) for v in r]
        except ValueError:
            values = []
        if len(values) != len(names):
            skipped.append(i)
            continue
        rows.append(values)
    if skipped:
        LOGGER.warning(f"WARNING: {file}: damaged line{'s' * (len(skipped) > 1)} {', '.join(map(str, skipped))} "
                       f"skipped (expected {len(names)} numbers per line)")
    return names, rows, skipped


def read_results_csv(file: str | Path) -> tuple[list[str], list[list[float]]]:
    """Parse a results.csv whose names may carry v6.0's padding. Returns (stripped names, rows); damaged
    lines are skipped with a warning (see parse_results_csv)."""
    names, rows, _ = parse_results_csv(file)
    return names, rows


def clear_previous_run(save_dir: str | Path) -> list[Path]:
    """A new run in an existing folder (--exist-ok): remove the earlier run's checkpoints and results.csv,
    so that neither its best.pt is validated as this run's result nor its rows mix with this run's.
    Returns the removed files (each named in a warning)."""
    save_dir = Path(save_dir)
    wdir = save_dir / "weights"
    old = [f for f in (wdir / "last.pt", wdir / "best.pt", save_dir / "results.csv") if f.is_file()]
    old += sorted(wdir.glob("epoch*.pt")) if wdir.is_dir() else []
    if old:
        LOGGER.warning(f"WARNING: {save_dir} holds files of an earlier run ({', '.join(str(f.relative_to(save_dir)) for f in old)}); "
                       f"they are removed so that this run's results are not mixed with them "
                       f"(--exist-ok reuses the folder; omit it to start a new exp folder)")
    for f in old:
        f.unlink()
    return old


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
            except Exception:  # noqa: BLE001  tensorboard is optional; any failure means no TensorBoard
                self.tb = None

    def truncate_from(self, epoch: int) -> None:
        """On resume: drop rows of epochs >= epoch (a run killed after writing a row but before saving
        last.pt repeats that epoch), so results.csv stays continuous."""
        if not self.file.exists():
            return
        names, rows, skipped = parse_results_csv(self.file)
        if not names:  # empty file: the next row writes a fresh header
            self.file.unlink()
            return
        kept = [r for r in rows if int(r[0]) < epoch]
        unfinished = not self.file.read_bytes().endswith(b"\n")  # the next row would join the last line
        if len(kept) != len(rows) or skipped or unfinished:  # rewritten without damaged lines: appending is safe
            self._rewrite(names, kept)

    def _match_columns(self, columns: list[str]) -> None:
        """A resumed run that logs other terms than the rows before it (e.g. a run started before output KD
        logged its parts): the file is rewritten with this run's columns, nan where a row has no value."""
        names, rows, _ = parse_results_csv(self.file)
        if not names or names == columns:
            return
        LOGGER.warning(f"WARNING: {self.file}: the columns change from this epoch on (added: "
                       f"{', '.join(c for c in columns if c not in names) or 'none'}; dropped: "
                       f"{', '.join(c for c in names if c not in columns) or 'none'}); earlier rows get nan there")
        index = {n: i for i, n in enumerate(names)}
        self._rewrite(columns, [[r[index[c]] if c in index else float("nan") for c in columns] for r in rows])

    def _rewrite(self, names: list[str], rows: list[list[float]]) -> None:
        tmp = self.file.with_suffix(".csv.tmp")
        with open(tmp, "w") as f:
            f.write(",".join(f"{n:>20s}" for n in names) + "\n")
            f.writelines(",".join(f"{v:20.5g}" for v in r) + "\n" for r in rows)
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
        if not new:
            self._match_columns(columns)
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
