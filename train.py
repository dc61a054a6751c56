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

from utils.engine import prepare_opt, train
from utils.general import run_cli
from utils.options import check_train_opt


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The v6.0 train.py flags (W&B flags omitted). train_kd.py extends this parser."""
    p = argparse.ArgumentParser(description="Train YOLOv5", add_help=add_help)
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' = from scratch)")
    p.add_argument("--cfg", type=str, default="", help="model.yaml path")
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset.yaml path")
    p.add_argument("--hyp", type=str, default=None,
                   help="hyperparameters path (default: data/hyps/hyp.scratch.yaml, hyp.v8.yaml for YOLOv8-style models)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training, or a last.pt")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable autoanchor check")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="(not supported in yolov5-kd; refused)")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="--cache images in 'ram' (default) or 'disk'")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--adam", action="store_true", help="use torch.optim.Adam() optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep conv weights NCHW while training (default: channels_last in a single process, "
                        "faster on CPU and GPU; DDP runs always use NCHW)")
    p.add_argument("--bf16", action="store_true",
                   help="CPU: train with bf16 autocast (about 2x faster where the CPU has avx512_bf16 or AMX; "
                        "float32 weights, optimizer and loss sums). CUDA always trains with fp16 AMP")
    p.add_argument("--workers", type=int, default=8, help="maximum number of dataloader workers")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="quad dataloader")
    p.add_argument("--linear-lr", action="store_true", help="linear LR")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", type=int, default=0, help="Number of layers to freeze. backbone=10, all=24")
    p.add_argument("--save-period", type=int, default=-1, help="Save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--local_rank", type=int, default=-1, help="DDP parameter, do not modify")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load --weights with full pickle (only for files you trust; unsafe)")
    g = p.add_argument_group("distillation (the seed's train.py spellings; train_kd.py has every option)")
    g.add_argument("--t_weights", "--t-weights", type=str, default=None,
                   help="teacher checkpoint: distil from it exactly as train_kd.py does (= --teacher_weight)")
    g.add_argument("--dist_loss", "--dist-loss", type=str, default=None, choices=["l2", "kl", "bce"],
                   help="output distillation loss (= train_kd.py --kd_loss_selected)")
    g.add_argument("--distill_ratio", "--distill-ratio", type=float, default=None,
                   help="weight of the output distillation loss (= train_kd.py --alpha)")
    return p


def parse_opt(known: bool = False, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or get_args_parser()
    return parser.parse_known_args()[0] if known else parser.parse_args()


def main(opt: argparse.Namespace, make_objective=None) -> Path:
    """Train; returns the run directory. make_objective swaps the objective (see utils/objective.py).

    Every option is checked first (utils/options.py): a wrong value stops here, before any folder,
    data or model exists. Given a teacher (--t_weights), or resuming a distillation run, it trains
    with train_kd.py's distillation objective; the loop is the same either way."""
    if make_objective is None and _distils(opt):
        import train_kd

        return train_kd.main(train_kd.with_kd_defaults(opt))
    opt = prepare_opt(check_train_opt(opt))
    return train(opt, make_objective=make_objective)


def _distils(opt: argparse.Namespace) -> bool:
    """A teacher is given, or --resume continues a run whose opt.yaml names one."""
    if getattr(opt, "t_weights", None):
        return True
    if not opt.resume:
        return False
    from utils.general import yaml_load
    from utils.options import resolve_resume
    from utils.train_setup import get_latest_run

    last = resolve_resume(opt.resume)  # a last.pt, a run folder or True (the latest run)
    last = last if isinstance(last, str) else get_latest_run()
    opt_file = Path(last).parent.parent / "opt.yaml" if last else None
    return bool(opt_file and opt_file.is_file() and (yaml_load(opt_file) or {}).get("teacher_weight"))


def run(**kwargs) -> Path:
    """Python entry: run(data='data/shapes.yaml', cfg='models/yolov5n.yaml', imgsz=320, epochs=3)."""
    opt = parse_opt(True)
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt)


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
