#!/usr/bin/env python
"""Validate a trained YOLOv5 model on a detection dataset: P, R, mAP@.5, mAP@.5:.95, speed and plots.

Usage:
    python val.py --data data/shapes.yaml --weights runs/train/exp/weights/best.pt --img 640
    python val.py --data data/shapes.yaml --weights a.pt b.pt --task speed   # ensemble, timing only

The validation itself is engine/validate.py (`val.run` is its `run`, which the trainer calls after every epoch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import numpy as np

from engine.options import VAL_TASKS, check_val_args  # noqa: F401 (check_val_args: part of val's API)
from engine.validate import (  # noqa: F401 (the v6.0 names of val.py, kept for users)
    IOUV,
    coco80_to_coco91_class,
    image_stats,
    run,
    save_one_json,
    save_one_txt,
    summarize,
)
from utils.general import LOGGER, UserError, print_args, run_cli
from utils.torch_utils import select_device


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validate a YOLOv5 model")
    parser.add_argument("--data", type=str, default=str(ROOT / "data/coco128.yaml"), help="dataset.yaml path")
    parser.add_argument("--weights", nargs="+", type=str, default=str(ROOT / "yolov5s.pt"), help="model.pt path(s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--task", default="val", help="train, val, test, speed or study")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--augment", action="store_true", help="augmented inference")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true", help="save label+prediction hybrid results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file")
    parser.add_argument("--project", default=str(ROOT / "runs/val"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a full (unsafe) unpickle of checkpoints you trust")
    parser.add_argument("--cfg", type=str, default=None, help="model.yaml for a state_dict-only --weights file")
    parser.add_argument("--nms", action="store_true",
                        help="YOLO26 (end2end) models: one-to-many head + NMS instead of the NMS-free one-to-one top-300")
    opt = parser.parse_args(argv)
    opt.save_json |= opt.data.endswith("coco.yaml")
    opt.save_txt |= opt.save_hybrid
    return opt


def main(opt: argparse.Namespace) -> None:
    print_args(FILE.stem, vars(opt))
    kw = {k: v for k, v in vars(opt).items() if k != "trust_checkpoint"}
    kw["trust"] = opt.trust_checkpoint
    if opt.half and select_device(opt.device).type == "cpu":
        LOGGER.warning("WARNING: --half is only supported on CUDA; running in FP32 on CPU")
    if opt.task not in VAL_TASKS:
        raise UserError(f"val.py --task {opt.task}: choose {', '.join(VAL_TASKS)}")
    if opt.task in ("train", "val", "test", "speed"):
        kw["half"] = opt.half
        run(**kw)
    elif opt.task == "study":  # mAP over image sizes, one text file per weights
        for w in opt.weights if isinstance(opt.weights, list) else [opt.weights]:
            f = Path(f"study_{Path(opt.data).stem}_{Path(w).stem}.txt")
            rows = []
            for size in range(256, 1536 + 128, 128):
                LOGGER.info(f"\nRunning {f} --imgsz {size}...")
                r, _, t = run(**{**kw, "weights": w, "imgsz": size, "plots": False, "half": opt.half})
                rows.append(list(r) + list(t))
            np.savetxt(f, rows, fmt="%10.4g")
            LOGGER.info(f"Study results saved to {f}")


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
