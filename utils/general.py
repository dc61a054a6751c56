"""General helpers shared by every script: logging, paths, user errors, yaml, seeds (box conversions:
utils/boxes.py)."""

from __future__ import annotations

import glob
import logging
import math
import os
import random
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]  # repository root
RANK = int(os.getenv("RANK", -1))
LOGGER = logging.getLogger("yolov5")


def set_logging(verbose: bool = True) -> None:
    """Configure the 'yolov5' logger once (called by scripts, never at import)."""
    if LOGGER.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO if verbose and RANK in (-1, 0) else logging.WARNING)
    LOGGER.propagate = False


class UserError(Exception):
    """An error caused by user input (a path, a flag, a file). Scripts print it without a traceback."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main function; a UserError becomes one clear line and exit status 2. A torchrun rank
    whose main function returned leaves through leave_torchrun_rank (see there)."""
    set_logging()
    try:
        main()
    except UserError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    if int(os.getenv("WORLD_SIZE", "1")) > 1:
        leave_torchrun_rank()


def leave_torchrun_rank() -> None:
    """End a torchrun rank whose work is done with exit status 0, without Python's interpreter shutdown.

    A DDP model keeps its process group alive after destroy_process_group (its reducer holds it from C++), so
    the group's gloo/NCCL threads outlive the training function and run while the interpreter finalizes. A
    thread that then needs the GIL (to free a tensor Python once held) is ended by the interpreter inside a
    C++ frame, which aborts the process ("terminate called without an active exception", pytorch/pytorch PR
    179291 describes it): torchrun then reports a finished run as failed. Seen once in CI (gloo, CPU); a bare
    2-process gloo DDP script on a loaded 2-core machine aborted so in 7 of 56 runs, each time after
    destroy_process_group had returned on both ranks, and in 0 of 56 when it ended with os._exit.
    By this point every file is written and closed (checkpoints, results.csv, TensorBoard's writer), so only
    the standard streams need flushing; os._exit skips the finalization and its race."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
            pass
    os._exit(0)


_COLORS = {
    "black": "\033[30m", "red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m",
    "blue": "\033[34m", "magenta": "\033[35m", "cyan": "\033[36m", "white": "\033[37m",
    "bright_blue": "\033[94m", "bold": "\033[1m", "underline": "\033[4m", "end": "\033[0m",
}


def colorstr(*parts: str) -> str:
    """colorstr('blue', 'bold', 'text') -> ANSI-coloured text (plain when not writing to a terminal)."""
    *styles, text = parts if len(parts) > 1 else ("blue", "bold", parts[0])
    if not sys.stdout.isatty():
        return text
    return "".join(_COLORS[s] for s in styles) + text + _COLORS["end"]


def increment_path(path: str | Path, exist_ok: bool = False, sep: str = "", mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... (v6.0 naming: no separator, first run unnumbered)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        suffix = path.suffix if path.is_file() else ""
        stem = path.with_suffix("") if path.is_file() else path
        taken = glob.glob(f"{stem}{sep}*")
        nums = [int(m.group(1)) for d in taken if (m := re.fullmatch(rf"{re.escape(stem.name)}{sep}(\d+)", Path(d).stem))]
        n = max(nums) + 1 if nums else 2
        path = Path(f"{stem}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of divisor that is >= x (YOLOv5 channel rounding: ceil(x / d) * d)."""
    if isinstance(divisor, torch.Tensor):
        divisor = int(divisor.max())
    return math.ceil(x / divisor) * divisor


def check_img_size(imgsz: int | list[int], s: int = 32, floor: int = 0) -> int | list[int]:
    """Round an image size (or [h, w]) up to a multiple of stride s, warning when it changes."""
    if isinstance(imgsz, int):
        new = max(make_divisible(imgsz, int(s)), floor)
    else:
        new = [max(make_divisible(x, int(s)), floor) for x in imgsz]
    if new != imgsz:
        LOGGER.warning(f"WARNING: --img-size {imgsz} must be multiple of max stride {s}, updating to {new}")
    return new


def check_file(file: str | Path, what: str = "file") -> Path:
    """Return an existing file path, or raise a UserError that names it (never downloads)."""
    p = Path(file)
    if p.is_file():
        return p
    for base in (Path.cwd(), ROOT):  # relative paths: try CWD then the repository
        q = base / p
        if q.is_file():
            return q
    hits = glob.glob(str(ROOT / "**" / p.name), recursive=True) if p.name and not p.is_absolute() else []
    if len(hits) == 1:
        return Path(hits[0])
    if p.is_absolute():
        raise UserError(f"{what} '{file}' not found")
    where = " and ".join(dict.fromkeys(str(b) for b in (Path.cwd(), ROOT)))  # once when they are the same
    raise UserError(f"{what} '{file}' not found (looked in {where})")


def yaml_load(file: str | Path) -> dict:
    """Read a yaml file into a dict, with a clear error for missing or malformed files."""
    path = check_file(file, "yaml file")
    try:
        with open(path, errors="ignore") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must contain a YAML mapping (key: value pairs), got {type(data).__name__}")
    return data


def yaml_save(file: str | Path, data: dict) -> None:
    """Write a dict to yaml, turning Paths into strings."""
    clean = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
    with open(file, "w") as f:
        yaml.safe_dump(clean, f, sort_keys=False)


def print_args(name: str, opt: dict) -> None:
    LOGGER.info(colorstr(f"{name}: ") + ", ".join(f"{k}={v}" for k, v in opt.items()))


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch. Seed 0 with deterministic=True also makes cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def one_cycle(y1: float = 0.0, y2: float = 1.0, steps: int = 100) -> Callable[[float], float]:
    """Cosine ramp from y1 to y2 over `steps` (the v6.0 LR lambda)."""
    return lambda x: ((1 - math.cos(x * math.pi / steps)) / 2) * (y2 - y1) + y1
