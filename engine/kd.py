"""A distillation run (train_kd.py, and train.py given a teacher): the teacher file and its record, the
recipe, and the objective factory the training loop calls. The flags become what distill/ reads in
engine/kd_flags.py."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from engine.cli import kd_parser
from engine.kd_flags import objective_options, seed_aliases, seed_layers
from engine.run import train_run
from models.checkpoint import folder_message, weights_hint
from utils.distributed import ddp_env
from utils.general import LOGGER, ROOT, UserError, colorstr

DEFAULT_TEACHER = ROOT / "weights/yolov5m.pt"  # the seed fork's teacher


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


def check_teacher_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserError(folder_message(path, "--teacher_weight"))
    if not path.is_file():
        raise UserError(f"--teacher_weight '{path}' not found. Train a teacher on your data first "
                        f"(python train.py --cfg models/yolov5m.yaml ...), or for COCO-class data: {weights_hint(path)}")
    return path


# --------------------------------------------------------------------------------------------------
# the objective factory: one job per function; `main` is whether this process writes the run's files


def record_teacher(opt, override: str | None = None, main: bool = True) -> Path:
    """The teacher file of this run, recorded (path, size, sha256) in opt and, by the main process, in the
    run's opt.yaml; on --resume checked against the record (distill/teacher_record.py)."""
    from distill.teacher_record import resume_teacher, teacher_record

    if opt.resume:
        path, record = resume_teacher(getattr(opt, "teacher_record", None), opt.teacher_weight, override)
        path = check_teacher_path(path)  # a run saved before teacher records may name a missing file
    else:
        path = check_teacher_path(opt.teacher_weight)
        record = teacher_record(path)
    opt.teacher_weight, opt.teacher_record = record.get("path", str(path)), record
    if main:
        _save_teacher_record(Path(opt.save_dir) / "opt.yaml", opt.teacher_weight, record)
    return path


def _save_teacher_record(opt_file: Path, teacher_weight: str, record: dict) -> None:
    """opt.yaml names the run's teacher and its record (what --resume checks)."""
    import yaml

    if not opt_file.is_file():
        return
    saved = yaml.safe_load(opt_file.read_text()) or {}
    if (saved.get("teacher_weight"), saved.get("teacher_record")) != (teacher_weight, record):
        saved.update(teacher_weight=teacher_weight, teacher_record=record)
        opt_file.write_text(yaml.safe_dump(saved, sort_keys=False))


def load_checked_teacher(ctx, path: Path):
    """The teacher, loaded for this data (any classes: build_kd_objective pairs them by name where output KD
    needs them); on a new run whose classes line up with the teacher's, its val mAP printed (a teacher trained
    on other data shows as near 0). Validation counts classes by index: with other classes it is skipped."""
    from distill.objective import class_names, load_teacher
    from distill.recipe import classes_line_up
    from engine import validate

    opt = ctx.opt
    teacher = load_teacher(path, ctx.device, ctx.nc, trust=getattr(opt, "trust_checkpoint", False), any_classes=True)
    if ctx.val_loader is not None and not opt.resume and not classes_line_up(ctx.names, class_names(teacher)):
        LOGGER.info(f"{colorstr('teacher: ')}its classes are not the data's ({len(class_names(teacher))} against "
                    f"{len(ctx.names)}): val mAP not measured (validation pairs classes by index)")
    elif ctx.val_loader is not None and not opt.resume:
        LOGGER.info(f"{colorstr('teacher: ')}evaluating {path} on the val set (sanity check)...")
        (_, _, map50, map_, *_), _, _ = validate.run(ctx.data_dict, model=teacher, dataloader=ctx.val_loader,
                                                    imgsz=ctx.imgsz, plots=False, half=ctx.device.type == "cuda",
                                                    single_cls=opt.single_cls)
        LOGGER.info(f"{colorstr('teacher: ')}mAP@0.5 {map50:.4f}, mAP@0.5:0.95 {map_:.4f}")
        if map50 < 0.05:
            LOGGER.warning("WARNING: the teacher scores mAP@0.5 < 0.05 on this val set; is it trained on this data?")
        teacher.eval()
    return teacher


def read_recipe(opt, kd_file: Path):
    """(recipe, resumed): a resumed run's own kd.yaml (resolved, the flags already in it), else the
    --kd_config file, else None (the default recipe)."""
    from distill.yolo_config import load_kd_config, resumed_reductions

    resumed = bool(opt.resume) and kd_file.is_file()
    if resumed:
        return resumed_reductions(load_kd_config(kd_file), str(kd_file)), True
    return (load_kd_config(opt.kd_config) if opt.kd_config else None), False


def log_recipe(distiller, kd_file: Path, resumed: bool) -> None:
    LOGGER.info(f"{colorstr('distillation: ')}" + " + ".join(
        f"{w:g} x {n} ({type(distiller.losses[n]).__name__}, {len(p)} layer pair{'s' * (len(p) > 1)})"
        for n, w, p in zip(distiller.names, distiller.weights, distiller.pairs))
        + ("" if resumed else f"; recipe saved to {kd_file}"))


def save_mask_pictures(ctx, distiller) -> None:
    """imitation_masks.jpg: what the run's first imitation loss imitates on a few training images."""
    from distill.mask_examples import imitation_psis, save_mask_examples

    psis = imitation_psis(distiller)
    if psis and ctx.opt.save_mask_examples > 0:
        save_mask_examples(ctx.model, ctx.data_dict["train"], ctx.imgsz, psis[0], ctx.opt.save_mask_examples,
                           Path(ctx.opt.save_dir) / "imitation_masks.jpg")


def make_kd_objective(ctx, teacher_override: str | None = None):
    """Objective factory for engine.trainer.train: the teacher recorded, loaded and checked, the recipe read,
    the KD objective built, and on a new run its kd.yaml and mask pictures written by the main process.

    teacher_override: --teacher_weight given with --resume (replaces the run's recorded teacher)."""
    from distill.objective import build_kd_objective
    from distill.yolo_config import write_kd_config

    opt = ctx.opt
    main = ddp_env()[1] in (-1, 0)
    kd_file = Path(opt.save_dir) / "kd.yaml"
    teacher = load_checked_teacher(ctx, record_teacher(opt, teacher_override, main))
    recipe, resumed = read_recipe(opt, kd_file)
    options = objective_options(opt)
    if resumed:
        options["overrides"] = None  # kd.yaml is the run's resolved recipe: the flags are in it
    objective = build_kd_objective(ctx.model, teacher, ctx.compute_loss, ctx.hyp, kd_config=recipe,
                                   data_names=ctx.names, **options)
    log_recipe(objective.distiller, kd_file, resumed)
    if main and not opt.resume:
        write_kd_config(objective.resolved, kd_file, f"--kd_config {opt.kd_config}" if opt.kd_config else "flags")
    objective.checkpoint_extra = {"teacher": dict(opt.teacher_record)}  # saved in every mid-run checkpoint
    if main and not opt.resume:
        save_mask_pictures(ctx, objective.distiller)
    return objective


# --------------------------------------------------------------------------------------------------
# the run


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
