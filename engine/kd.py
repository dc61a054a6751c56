"""A distillation run (train_kd.py, and train.py given a teacher): the seed's flag spellings, the teacher
file and its record, and the objective factory the training loop calls."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from engine.cli import kd_parser
from engine.run import train_run
from models.checkpoint import weights_hint
from utils.distributed import ddp_env
from utils.general import LOGGER, ROOT, UserError, colorstr

DEFAULT_TEACHER = ROOT / "weights/yolov5m.pt"  # the seed fork's teacher
KD_DEFAULTS = {"kd": 1.0}  # hyp keys honoured when present: kd (gain of all KD terms), giou (KD box gain)


def distils(opt: argparse.Namespace) -> bool:
    """A teacher is given, or --resume continues a run whose opt.yaml names one."""
    if getattr(opt, "t_weights", None):
        return True
    if not opt.resume:
        return False
    from engine.options import resolve_resume
    from engine.setup import get_latest_run
    from utils.general import yaml_load

    last = resolve_resume(opt.resume)  # a last.pt, a run folder or True (the latest run)
    last = last if isinstance(last, str) else get_latest_run()
    opt_file = Path(last).parent.parent / "opt.yaml" if last else None
    return bool(opt_file and opt_file.is_file() and (yaml_load(opt_file) or {}).get("teacher_weight"))


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
    """Objective factory for engine.trainer.train: load the teacher, sanity-check it, build the KD objective.

    teacher_override: --teacher_weight given with --resume (replaces the run's recorded teacher)."""
    from distill.mask_examples import imitation_psis, save_mask_examples
    from distill.objective import build_kd_objective, load_teacher
    from distill.yolo_config import load_kd_config, write_kd_config
    from engine import validate

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
    full = kd_parser().parse_args([])
    for k, v in vars(opt).items():
        setattr(full, k, v)
    return full


def train_kd(opt: argparse.Namespace) -> Path:
    """train_kd.py's run: the seed's spellings mapped, the teacher and recipe checked first, then the training
    loop with the distillation objective; returns the run directory."""
    seed_aliases(opt)
    override = opt.teacher_weight if opt.resume else None  # opt.yaml replaces opt.teacher_weight on resume
    if not opt.resume:
        seed_layers(opt)
        opt.teacher_weight = opt.teacher_weight or str(DEFAULT_TEACHER)
        check_teacher_path(opt.teacher_weight)  # fail before any data scanning or model building
        if opt.kd_config:
            from distill.yolo_config import load_kd_config

            load_kd_config(opt.kd_config)  # a missing or malformed recipe also fails first
    return train_run(opt, make_objective=partial(make_kd_objective, teacher_override=override))
