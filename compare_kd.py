#!/usr/bin/env python
"""Does distillation help on your data? Train the plain student and distilled ones on the same schedule and
seeds, and get a verdict per recipe (engine/compare.py says how it is reached).

Usage:
    python compare_kd.py --data your.yaml --cfg models/yolov5n.yaml --weights '' --teacher_weight t.pt \\
        --img 640 --epochs 100 --seeds 0 1 2 --recipes default cwd      # plain + 2 recipes x 3 seeds
    python compare_kd.py ... --probe          # a minute, no training: teacher mAP, classes, term balance
    python compare_kd.py ... --batch-size 32 --cache ram --alpha 2   # any train.py / train_kd.py flag
    python compare_kd.py ... --nproc_per_node 4                      # each run on 4 GPUs (torchrun)
    python compare_kd.py ... --device cpu --jobs 2                   # 2 runs at once, the cores shared

Runs go to runs/compare/exp/plain-s0, default-s0, ...; summary.md (verdicts), summary.csv, curves.png and
differences.png next to them. The same command again continues an interrupted comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.general import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train plain and distilled students side by side and say whether "
                                "distillation helps", allow_abbrev=False,
                                epilog="Any other train.py / train_kd.py flag is passed to the runs (train_kd.py "
                                "flags to the distilled ones only).")
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset.yaml path")
    p.add_argument("--cfg", type=str, default="", help="student model.yaml (e.g. models/yolov5n.yaml)")
    p.add_argument("--weights", type=str, default="", help="student initial weights ('' = from scratch)")
    p.add_argument("--teacher_weight", "--teacher-weight", "--teacher", type=str, default="",
                   help="trained teacher checkpoint (same classes as --data)")
    p.add_argument("--imgsz", "--img", "--img-size", dest="img", type=int, default=640, help="train, val image size")
    p.add_argument("--epochs", type=int, default=300, help="epochs of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one plain and one distilled run per seed")
    p.add_argument("--recipes", nargs="+", default=["default"],
                   help="distillation recipes: default (train_kd.py's), data/kd names (card, cwd, ...) or .yaml files")
    p.add_argument("--probe", action="store_true",
                   help="no training: the teacher's val mAP, its classes beside the data's, each KD term's balance "
                        "with the detection loss on a few batches, and what to change")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (CPU: the cores are shared between them)")
    p.add_argument("--nproc_per_node", "--nproc-per-node", type=int, default=1,
                   help="GPUs per run: each run is launched with torchrun, one run after another")
    p.add_argument("--project", default="runs/compare", help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="use project/name as it is (refused if made with other options)")
    return p


def main(argv=None) -> Path:
    from engine.compare import compare

    opt, extra = get_args_parser().parse_known_args(argv)
    if opt.jobs < 1 or opt.nproc_per_node < 1:
        from utils.general import UserError
        raise UserError(f"compare_kd.py: --jobs {opt.jobs} / --nproc_per_node {opt.nproc_per_node}: give 1 or more")
    return compare(opt, extra)


if __name__ == "__main__":
    run_cli(main)
