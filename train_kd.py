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

import argparse
import sys
from functools import partial
from pathlib import Path

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import train
from utils.general import LOGGER, UserError, colorstr, run_cli
from utils.train_setup import ddp_env, weights_hint

DEFAULT_TEACHER = ROOT / "weights/yolov5m.pt"  # the seed fork's teacher
KD_DEFAULTS = {"kd": 1.0}  # hyp keys honoured when present: kd (gain of all KD terms), giou (KD box gain)


def str2bool(v: str | bool) -> bool:
    """--isL True/False (the seed's spelling); also yes/no, 1/0."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "t", "yes", "y", "1"):
        return True
    if s in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def get_args_parser() -> argparse.ArgumentParser:
    """train.py's parser plus distillation flags; the student defaults to yolov5s as in the seed fork.

    Distillation flags default to None ("not given"): alone they describe the run with the defaults in
    their help (distill.yolo_config.DEFAULT_CONFIG); next to --kd_config they override the file.
    """
    from distill.losses import LOSSES
    from distill.yolo_config import (
        DEFAULT_TEMPERATURE,
        OUTPUT_DEFAULT_ALPHA,
        OUTPUT_TYPES,
        default_weight,
    )

    p = argparse.ArgumentParser(description="Distil a YOLOv5 student from a teacher",
                                parents=[train.get_args_parser(add_help=False)])
    p.set_defaults(cfg=str(ROOT / "models/yolov5s.yaml"))
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher_weight", "--teacher-weight", "--teacher", type=str, default=None,
                   help="trained teacher checkpoint (official v6.0/v7.0 or ours), same classes as --data "
                        "(default: weights/yolov5m.pt); with --resume: use this file instead of the run's teacher")
    g.add_argument("--kd_config", "--kd-config", type=str, default=None,
                   help="distillation recipe: layers, losses, parameters, weights (data/kd/NAME.yaml or NAME, "
                        "e.g. card); the flags below override it; the resolved recipe is saved as kd.yaml in the run")
    g.add_argument("--teacher_dtype", "--teacher-dtype", type=str, default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of the teacher's forward: auto = fp16 on CUDA, bf16 on CPUs with native bf16 "
                        "(avx512_bf16/AMX), else fp32; the losses are computed in fp32 either way")
    g.add_argument("--isL", type=str2bool, default=False,
                   help="teacher is a yolov5l (True) or yolov5m (False); layer pairing is inferred from the "
                        "models, a value contradicting the teacher is reported")
    g.add_argument("--kd_loss_selected", "--kd-loss", type=str, default=None, choices=["l2", "kl", "bce"],
                   help="output distillation loss on the teacher-objectness-weighted raw outputs (default: kl)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"softening temperature for kl/bce class terms, loss scaled by T^2 (default: {DEFAULT_TEMPERATURE:g})")
    g.add_argument("--alpha", type=float, default=None,
                   help="weight of the output KD loss (default: " +
                        ", ".join(f"{k} {v:g}" for k, v in OUTPUT_DEFAULT_ALPHA.items()) + ")")
    features = [k for k in LOSSES if k not in OUTPUT_TYPES]
    g.add_argument("--beta", type=float, default=None,
                   help="weight of the feature loss (default, by loss: " +
                        ", ".join(f"{k} {default_weight({'type': k}):g}" for k in features) + ")")
    g.add_argument("--feature_loss", "--feature-loss", type=str, nargs="+", default=None, choices=features + ["none"],
                   metavar="LOSS", help="feature distillation on hooked layers, one or more of: " +
                   ", ".join(features) + "; or none (default: scorel2; fitnet uses 1x1 adapters)")
    g.add_argument("--imitation_weight", type=float, default=None, help="imitation loss weight (default 0.0002 for YOLOv5 "
                   "students, about a third of the detection loss; 0.01, FGFI's, for YOLOv8 students)")
    g.add_argument("--imitation_psi", type=float, default=None,
                   help="imitation mask: a cell is positive when an anchor has IoU > psi x the box's best (default 0.5)")
    g.add_argument("--imitation_warmup", type=int, default=None, help="imitation off for this many steps (default 400)")
    g.add_argument("--save_mask_examples", type=int, default=4, metavar="N",
                   help="with imitation: draw the masks of N training images into imitation_masks.jpg (0: none)")
    g.add_argument("--cwd_weight", type=float, default=None, help="channel-wise distillation weight (default 0.03 for "
                   "YOLOv5 students, about a third of the detection loss; 10, the paper's, for YOLOv8 students)")
    g.add_argument("--cwd_tau", type=float, default=None, help="CWD softmax temperature (default 1)")
    g.add_argument("--mse_weight", type=float, default=None, help="strided feature MSE weight (default 0.002 for YOLOv5 students, where 1 overwhelms the "
                        "detection loss; 1 for YOLOv8 students, the seed's)")
    g.add_argument("--pkd_weight", type=float, default=None, help="PKD weight (default 0.02 for YOLOv5 students, about a "
                   "third of the detection loss; 10, the paper's, for YOLOv8 students)")
    g.add_argument("--scorel2_weight", type=float, default=None, help="score-weighted L2 weight (default 1)")
    g.add_argument("--student_layers", "--student-layers", type=str, default=None,
                   help="hooked student layers, e.g. 'model.4,model.6,model.17' (default: C3/SPPF outputs per stride)")
    g.add_argument("--teacher_layers", "--teacher-layers", type=str, default=None,
                   help="hooked teacher layers, paired by position with --student_layers")
    g.add_argument("--weight_by_cls", action="store_true",
                   help="weight cls/box KD by teacher objectness x max class probability (default: objectness)")
    g.add_argument("--kl_softmax", action="store_true",
                   help="kl: softmax over classes as in the public forks (default: per-class binary KL)")
    g.add_argument("--kd_obj", "--kd-obj", type=str, default=None, choices=["bce"],
                   help="objectness KD term: bce = BCE(sigma_s, sigma_t) in its KL form (default: the loss's own; "
                        "l2's squared difference has a vanishing gradient where the student is confidently wrong)")
    g.add_argument("--bce_subtract_entropy", action="store_true",
                   help="bce: log the KD value without the teacher's entropy (gradient unchanged; 0 at student == teacher)")
    g.add_argument("--kd", action="store_true", default=True, help="accepted for compatibility with the seed fork")
    g.add_argument("--kd_layer", "--kd-layer", type=int, nargs="+", default=None, metavar="I",
                   help="the YOLOv8 KD seed's layers: the same indices hooked in student and teacher (e.g. 15 18 21), "
                        "= --student_layers/--teacher_layers; feature loss mse unless --feature_loss is given")
    # the YOLOv8 KD seed's spellings of train.py flags (suppressed defaults: the originals' stay)
    g.add_argument("--model", dest="cfg", default=argparse.SUPPRESS, help="= --cfg (model.yaml)")
    g.add_argument("--batch", dest="batch_size", type=int, default=argparse.SUPPRESS, help="= --batch-size")
    return p


def seed_layers(opt: argparse.Namespace) -> None:
    """--kd_layer I [I ...]: the same layer indices for student and teacher (the seed's ver1); mse unless
    --feature_loss is given. UserError next to --student_layers / --teacher_layers."""
    layers = getattr(opt, "kd_layer", None)
    if not layers:
        return
    if getattr(opt, "student_layers", None) or getattr(opt, "teacher_layers", None):
        raise UserError("--kd_layer sets both --student_layers and --teacher_layers: give one or the others")
    opt.student_layers = opt.teacher_layers = ",".join(str(i) for i in layers)
    if getattr(opt, "feature_loss", None) is None:
        opt.feature_loss = ["mse"]


def check_teacher_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--teacher_weight '{path}' not found. Train a teacher on your data first "
                        f"(python train.py --cfg models/yolov5m.yaml ...), or for COCO-class data: {weights_hint(path)}")
    return path


def record_teacher(opt, override: str | None = None) -> Path:
    """The teacher file of this run, recorded (path, size, sha256) in opt and the run's opt.yaml;
    on --resume checked against the record (distill/teacher_record.py)."""
    import yaml

    from distill.teacher_record import resume_teacher, teacher_record

    if opt.resume:
        path, record = resume_teacher(getattr(opt, "teacher_record", None), opt.teacher_weight, override)
        path = check_teacher_path(path)  # a run saved before teacher records may name a missing file
    else:
        path = check_teacher_path(opt.teacher_weight)
        record = teacher_record(path)
    opt.teacher_weight, opt.teacher_record = record.get("path", str(path)), record
    opt_file = Path(opt.save_dir) / "opt.yaml"
    if ddp_env()[1] in (-1, 0) and opt_file.is_file():
        saved = yaml.safe_load(opt_file.read_text()) or {}
        if (saved.get("teacher_weight"), saved.get("teacher_record")) != (opt.teacher_weight, record):
            saved.update(teacher_weight=opt.teacher_weight, teacher_record=record)
            opt_file.write_text(yaml.safe_dump(saved, sort_keys=False))
    return path


def make_kd_objective(ctx, teacher_override: str | None = None):
    """Objective factory for utils.engine.train: load the teacher, sanity-check it, build the KD objective.

    teacher_override: --teacher_weight given with --resume (replaces the run's recorded teacher)."""
    import val as validate
    from distill.mask_examples import imitation_psis, save_mask_examples
    from distill.objective import build_kd_objective, load_teacher
    from distill.yolo_config import load_kd_config, write_kd_config

    opt = ctx.opt
    path = record_teacher(opt, teacher_override)
    for k, v in KD_DEFAULTS.items():
        ctx.hyp.setdefault(k, v)
    teacher = load_teacher(path, ctx.device, ctx.nc, trust=getattr(opt, "trust_checkpoint", False))
    if ctx.val_loader is not None and not opt.resume:
        LOGGER.info(f"{colorstr('teacher: ')}evaluating {path} on the val set (sanity check)...")
        (_, _, map50, map_, *_), _, _ = validate.run(ctx.data_dict, model=teacher, dataloader=ctx.val_loader,
                                                    imgsz=ctx.imgsz, plots=False, half=ctx.device.type == "cuda",
                                                    single_cls=opt.single_cls)
        LOGGER.info(f"{colorstr('teacher: ')}mAP@0.5 {map50:.4f}, mAP@0.5:0.95 {map_:.4f}")
        if map50 < 0.05:
            LOGGER.warning("WARNING: the teacher scores mAP@0.5 < 0.05 on this val set; is it trained on this data?")
        teacher.eval()
    kd_file = Path(opt.save_dir) / "kd.yaml"
    resumed = bool(opt.resume) and kd_file.is_file()  # the run's own resolved recipe, flags already in it
    config = load_kd_config(kd_file if resumed else opt.kd_config) if resumed or opt.kd_config else None
    objective = build_kd_objective(ctx.model, teacher, ctx.compute_loss, ctx.hyp, opt, kd_config=config,
                                   flags=not resumed)
    d = objective.distiller
    LOGGER.info(f"{colorstr('distillation: ')}" + " + ".join(
        f"{w:g} x {n} ({type(d.losses[n]).__name__}, {len(p)} layer pair{'s' * (len(p) > 1)})"
        for n, w, p in zip(d.names, d.weights, d.pairs)) + ("" if resumed else f"; recipe saved to {kd_file}"))
    if not opt.resume and ddp_env()[1] in (-1, 0):
        write_kd_config(objective.resolved, kd_file, f"--kd_config {opt.kd_config}" if opt.kd_config else "flags")
    objective.checkpoint_extra = {"teacher": dict(opt.teacher_record)}  # saved in every mid-run checkpoint
    psis = imitation_psis(d)
    if psis and opt.save_mask_examples > 0 and not opt.resume and ddp_env()[1] in (-1, 0):
        save_mask_examples(ctx.model, ctx.data_dict["train"], ctx.imgsz, psis[0], opt.save_mask_examples,
                           Path(opt.save_dir) / "imitation_masks.jpg")
    return objective


SEED_ALIASES = (("t_weights", "teacher_weight"), ("dist_loss", "kd_loss_selected"), ("distill_ratio", "alpha"))


def seed_aliases(opt: argparse.Namespace) -> None:
    """train.py's --t_weights / --dist_loss / --distill_ratio (the seed's names) as --teacher_weight /
    --kd_loss_selected / --alpha: the same meaning (distill_ratio scales the box, obj and cls KD terms
    together, as --alpha does). Both spellings with different values is a UserError."""
    for alias, name in SEED_ALIASES:
        value, current = getattr(opt, alias, None), getattr(opt, name, None)
        if value is None:
            continue
        if current is not None and current != value:
            raise UserError(f"--{alias} {value} and --{name} {current} are the same option: give one of them")
        setattr(opt, name, value)


def with_kd_defaults(opt: argparse.Namespace) -> argparse.Namespace:
    """train.py's options completed with this script's distillation defaults (train.py given a teacher)."""
    full = get_args_parser().parse_args([])
    for k, v in vars(opt).items():
        setattr(full, k, v)
    return full


def main(opt: argparse.Namespace) -> Path:
    seed_aliases(opt)
    override = opt.teacher_weight if opt.resume else None  # opt.yaml replaces opt.teacher_weight on resume
    if not opt.resume:
        seed_layers(opt)
        opt.teacher_weight = opt.teacher_weight or str(DEFAULT_TEACHER)
        check_teacher_path(opt.teacher_weight)  # fail before any data scanning or model building
        if opt.kd_config:
            from distill.yolo_config import load_kd_config

            load_kd_config(opt.kd_config)  # a missing or malformed recipe also fails first
    return train.main(opt, make_objective=partial(make_kd_objective, teacher_override=override))


def run(**kwargs) -> Path:
    opt = get_args_parser().parse_args([])
    for k, v in kwargs.items():
        setattr(opt, k, v)
    return main(opt)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
