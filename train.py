#!/usr/bin/env python
"""Train a YOLOv5 model on a dataset in YOLO format (YOLOv5 v6.0 interface).

Usage:
    python train.py --data data/shapes.yaml --cfg models/yolov5n.yaml --weights '' --img 320 --epochs 30
    python train.py --data coco128.yaml --weights weights/yolov5s.pt --img 640
    python train.py --resume                      # continue the latest run
    python train.py --resume runs/train/exp3/weights/last.pt
    python train.py --data coco.yaml --weights student.pt --t_weights yolov5m.pt   # distils, as train_kd.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make `models` and `utils` importable

from engine.cli import train_parser as get_args_parser
from engine.kd import distils, train_kd, with_kd_defaults
from engine.run import train_run
from utils.general import run_cli


def parse_opt(known: bool = False, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or get_args_parser()
    return parser.parse_known_args()[0] if known else parser.parse_args()


def main(opt: argparse.Namespace, make_objective=None) -> Path:
    """Train; returns the run directory. make_objective swaps the objective (engine/objective.py).

    Given a teacher (--t_weights), or resuming a distillation run, it trains with train_kd.py's
    distillation (engine/kd.py); the loop is the same either way."""
    if make_objective is None and distils(opt):
        return train_kd(with_kd_defaults(opt))
    return train_run(opt, make_objective=make_objective)


def run(**kwargs) -> Path:
    """Python entry: run(data='data/shapes.yaml', cfg='models/yolov5n.yaml', imgsz=320, epochs=3)."""
    opt = parse_opt(True)
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt)


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
