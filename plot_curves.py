#!/usr/bin/env python
"""Compare training runs in one picture: mAP, precision, recall and every loss term, one line per run.

Usage:
    python plot_curves.py runs/train/baseline runs/train/distilled
    python plot_curves.py runs/train/exp/results.csv runs/train/exp2/results.csv --labels base kd --out cmp.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.general import LOGGER, UserError, run_cli
from utils.run_curves import load_runs, plot_runs, summary


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Compare YOLOv5 runs (results.csv) in one PNG")
    p.add_argument("runs", nargs="+", help="run folders or results.csv files")
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per run (default: folder names)")
    p.add_argument("--out", default="runs/compare.png", help="output PNG path")
    return p.parse_args(argv)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp", ".tif", ".tiff", ".eps")


def main(opt: argparse.Namespace) -> Path:
    if Path(opt.out).suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"plot_curves: --out {opt.out} needs an image suffix ({', '.join(IMAGE_SUFFIXES)})")
    runs = load_runs(opt.runs, opt.labels)
    out = plot_runs(runs, Path(opt.out))
    LOGGER.info(summary(runs))
    LOGGER.info(f"Saved {out}")
    return out


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
