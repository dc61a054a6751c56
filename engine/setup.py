"""Setup steps of a training run: options and resume, hyperparameters, model, data.

Each function does one step and raises utils.general.UserError for anything the user can fix.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from models.checkpoint import weights_hint
from utils.distributed import ddp_env
from utils.general import (
    LOGGER,
    ROOT,
    UserError,
    check_file,
    colorstr,
    increment_path,
    yaml_load,
)

# Hyp key read by build_model (rule format: utils/losses/yolov5.py HYP_KEYS; gathered by engine/options.py).
HYP_KEYS: dict[str, tuple] = {
    "anchors": (0, None, True, False, False, "anchors per output layer, e.g. 3"),
}


def get_latest_run(search_dir: str | Path = ".") -> str:
    """Most recently written last*.pt under search_dir (for `--resume` without a path)."""
    files = glob.glob(f"{search_dir}/**/last*.pt", recursive=True)
    return max(files, key=os.path.getctime) if files else ""


def prepare_opt(opt: argparse.Namespace) -> argparse.Namespace:
    """Validate flags; for --resume, restore the run's options from its opt.yaml."""
    if getattr(opt, "evolve", None):
        raise UserError("--evolve (hyperparameter evolution) is not implemented in yolov5-kd; "
                        "train with a hyp file instead (--hyp data/hyps/hyp.scratch-high.yaml)")
    if ddp_env()[0] != -1:  # launched by torchrun: one process per device, a process group over them
        from utils.distributed import init_distributed

        init_distributed(opt.device, opt.batch_size)
        if opt.image_weights:
            raise UserError("--image-weights is not supported with DDP (multi-GPU) training")
    if opt.resume:
        return _resume_opt(opt)
    if not opt.cfg and not opt.weights:
        raise UserError("either --cfg or --weights must be given (e.g. --cfg models/yolov5n.yaml --weights '')")
    from utils.distributed import broadcast_object

    # rank 0 names the run folder; the others take its name (each picking exp2, exp3... would split the run)
    opt.save_dir = broadcast_object(str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)))
    return opt


def _resume_opt(opt: argparse.Namespace) -> argparse.Namespace:
    ckpt = opt.resume if isinstance(opt.resume, str) else get_latest_run()
    if not ckpt:
        raise UserError("--resume: no last.pt found under the current directory; pass the path, "
                        "e.g. --resume runs/train/exp/weights/last.pt")
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise UserError(f"--resume: checkpoint '{ckpt}' does not exist")
    opt_file = ckpt.parent.parent / "opt.yaml"
    if not opt_file.is_file():
        raise UserError(f"--resume: {opt_file} not found; a resumable run keeps opt.yaml two levels above last.pt")
    saved = yaml_load(opt_file)
    keep = {"device": opt.device, "workers": opt.workers}  # machine-specific, may change between sessions
    new = argparse.Namespace(**{**vars(opt), **saved})
    new.device = keep["device"] or new.device
    new.workers = keep["workers"]
    new.cfg, new.weights, new.resume = "", str(ckpt), True
    new.save_dir = str(ckpt.parent.parent)
    LOGGER.info(f"Resuming training from {ckpt}")
    return new


def load_hyp(hyp: str | dict) -> dict:
    """Hyperparameters from a yaml path (or a dict already restored from opt.yaml)."""
    if isinstance(hyp, dict):
        return dict(hyp)
    data = yaml_load(hyp)
    required = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "box", "cls", "obj", "anchor_t")
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"hyperparameter file {hyp} lacks keys {missing}; start from data/hyps/hyp.scratch.yaml")
    return data


def build_model(opt, nc: int, hyp: Mapping[str, Any], device: torch.device):
    """Create the model from --cfg and/or --weights. Returns (model, ckpt or None)."""
    from models.checkpoint import safe_torch_load
    from models.yolo import Model
    from utils.torch_utils import intersect_dicts

    if not opt.weights:
        model = Model(check_file(opt.cfg, "--cfg model yaml"), ch=3, nc=nc, anchors=hyp.get("anchors")).to(device)
        return model, None
    if not str(opt.weights).endswith(".pt"):
        raise UserError(f"--weights '{opt.weights}' must be a .pt checkpoint (or '' to train from scratch)")
    wpath = Path(opt.weights)
    if not wpath.is_file():
        raise UserError(f"--weights '{opt.weights}' not found; {weights_hint(wpath)}, or use --weights '' --cfg <yaml>")
    ckpt = safe_torch_load(wpath, map_location="cpu", trust=getattr(opt, "trust_checkpoint", False))
    src = _ckpt_model(ckpt, wpath)
    cfg = check_file(opt.cfg, "--cfg model yaml") if opt.cfg else src.yaml
    model = Model(cfg, ch=3, nc=nc, anchors=hyp.get("anchors")).to(device)
    exclude = ["anchor"] if (opt.cfg or hyp.get("anchors")) and not opt.resume else []
    src_sd = src.float().state_dict()
    csd = intersect_dicts(src_sd, model.state_dict(), exclude=exclude)
    model.load_state_dict(csd, strict=False)
    skipped = [k for k in model.state_dict() if k not in csd]
    LOGGER.info(f"Transferred {len(csd)}/{len(model.state_dict())} items from {wpath}")
    if skipped:
        src_nc = getattr(src, "nc", None) or src.yaml.get("nc")
        why = f" (checkpoint nc={src_nc}, data nc={nc})" if src_nc != nc else ""
        LOGGER.warning(f"WARNING: {len(skipped)} items not transferred{why}: "
                       f"{', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}")
    return model, ckpt


def _ckpt_model(ckpt, path: Path):
    """The live model of a checkpoint, as v6.0 reads it (ckpt['model']; the EMA is restored on its own by
    --resume). A file holding only an EMA falls back to it."""
    if isinstance(ckpt, dict):
        for key in ("model", "ema"):
            if ckpt.get(key) is not None:
                return ckpt[key]
    raise UserError(f"{path} holds no 'model'; for a state-dict-only file pass it with --cfg to val.py/detect.py, "
                    "or re-save it with models.checkpoint.save_checkpoint")


def freeze_layers(model: torch.nn.Module, n: int) -> None:
    """Freeze the first n layers (v6.0 --freeze: parameters named model.{k}. for k < n)."""
    n_layers = len(getattr(model, "model", ()))
    if n_layers and n >= n_layers:  # every layer frozen: nothing would train, silently
        raise UserError(f"--freeze {n}: the model has {n_layers} layers (0..{n_layers - 1}); freezing all of "
                        f"them leaves nothing to train (backbone = 10)")
    prefixes = [f"model.{k}." for k in range(n)]
    for name, p in model.named_parameters():
        p.requires_grad = True
        if any(name.startswith(x) for x in prefixes):
            LOGGER.info(f"freezing {name}")
            p.requires_grad = False


def write_run_files(save_dir: Path, hyp: dict, opt) -> None:
    """hyp.yaml (before gain scaling) and opt.yaml, as v6.0."""
    with open(save_dir / "hyp.yaml", "w") as f:
        yaml.safe_dump(hyp, f, sort_keys=False)
    clean = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}
    with open(save_dir / "opt.yaml", "w") as f:
        yaml.safe_dump(clean, f, sort_keys=False)


def labels_array(dataset) -> np.ndarray:
    return np.concatenate(dataset.labels, 0) if len(dataset.labels) else np.zeros((0, 5))


def log_header(extra: list[str], terms: list[str] | tuple[str, ...] = ("box", "obj", "cls")) -> str:
    """Console column titles: the objective's terms (YOLOv5: box obj cls; v8: box cls dfl), then extra."""
    names = ["Epoch", "gpu_mem", *terms, *extra, "labels", "img_size"]
    return ("%10s" * len(names)) % tuple(names)


def describe_start(opt, save_dir: Path) -> None:
    LOGGER.info(f"{colorstr('train: ')}logging results to {colorstr('bold', str(save_dir))}\n"
                f"Starting training for {opt.epochs} epochs...")


__all__ = ["ROOT", "build_model", "describe_start", "freeze_layers", "labels_array", "load_hyp", "log_header", "prepare_opt", "write_run_files"]
