#!/usr/bin/env python
"""Train a student YOLOv5 by knowledge distillation from a trained teacher.

Every train.py flag works here (shared parser), plus the distillation flags.

Usage:
    python train_kd.py --teacher_weight weights/yolov5m.pt --isL False --kd_loss_selected kl
    python train_kd.py --teacher_weight weights/yolov5m.pt --kd_config data/kd/card.yaml   # the same, as a file
    python train_kd.py --data data/shapes.yaml --cfg models/yolov5n.yaml --weights '' \
        --teacher_weight weights/teacher-shapes-yolov5s.pt --img 256 --epochs 30
    python train_kd.py --resume runs/train/exp3/weights/last.pt   # rebuilds the teacher, restores KD state
    python train_kd.py --model models/yolov8n.yaml --teacher best-v8s.pt --kd_layer 15 18 21 \
        --hyp data/hyps/hyp.v8.yaml   # a v8 student (the YOLOv8 KD seed's names; README "YOLOv8-style models")
"""

from __future__ import annotations

import sys
from pathlib import Path

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from engine.cli import kd_parser as get_args_parser
from engine.kd import train_kd as main
from utils.general import run_cli


def run(**kwargs) -> Path:
    """Python entry: run(teacher_weight='t.pt', data='data/shapes.yaml', cfg='models/yolov5n.yaml', epochs=3)."""
    opt = get_args_parser().parse_args([])
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
