"""General helpers shared by every script: logging, paths, user errors, box conversions.

Box conventions used throughout the project:
- xyxy: (x1, y1, x2, y2) corners; xywh: (x_center, y_center, width, height).
- "pixels" means coordinates of the image the boxes refer to; "normalised" means divided by its w/h.
"""

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
    """Run a script's main function; a UserError becomes one clear line and exit status 2."""
    set_logging()
    try:
        main()
    except UserError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)


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


# ---------------------------------------------------------------------------------------------------
# Box conversions: work on torch tensors and numpy arrays of shape (n, 4)


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x):
    """(n, 4) corners -> centre, width, height."""
    y = _clone(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2
    y[:, 2] = x[:, 2] - x[:, 0]
    y[:, 3] = x[:, 3] - x[:, 1]
    return y


def xywh2xyxy(x):
    """(n, 4) centre, width, height -> corners."""
    y = _clone(x)
    y[:, 0] = x[:, 0] - x[:, 2] / 2
    y[:, 1] = x[:, 1] - x[:, 3] / 2
    y[:, 2] = x[:, 0] + x[:, 2] / 2
    y[:, 3] = x[:, 1] + x[:, 3] / 2
    return y


def xywhn2xyxy(x, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0):
    """Normalised xywh -> pixel xyxy in an image of size (w, h) placed at offset (padw, padh)."""
    y = _clone(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x, w: int = 640, h: int = 640, clip: bool = False, eps: float = 0.0):
    """Pixel xyxy -> normalised xywh; with clip, boxes are first clipped to (h - eps, w - eps)."""
    if clip:
        x = _clone(x)
        clip_coords(x, (h - eps, w - eps))
    y = _clone(x)
    y[:, 0] = ((x[:, 0] + x[:, 2]) / 2) / w
    y[:, 1] = ((x[:, 1] + x[:, 3]) / 2) / h
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


def xyn2xy(x, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0):
    """Normalised polygon points (n, 2) -> pixels."""
    y = _clone(x)
    y[:, 0] = w * x[:, 0] + padw
    y[:, 1] = h * x[:, 1] + padh
    return y


def segment2box(segment, width: int = 640, height: int = 640) -> np.ndarray:
    """One polygon (n, 2) in pixels -> one xyxy box (4,), keeping the points inside the image."""
    x, y = segment.T
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    x, y = x[inside], y[inside]
    return np.array([x.min(), y.min(), x.max(), y.max()]) if x.size else np.zeros(4)


def segments2boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons [(n, 2), ...] normalised -> (m, 4) normalised xywh boxes from their min/max."""
    boxes = [np.array([s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()]) for s in segments]
    return xyxy2xywh(np.array(boxes, dtype=np.float32).reshape(-1, 4))


def resample_segments(segments: list[np.ndarray], n: int = 1000) -> list[np.ndarray]:
    """Resample each closed polygon to n points by linear interpolation."""
    out = []
    for s in segments:
        s = np.concatenate((s, s[0:1, :]), axis=0)
        x = np.linspace(0, len(s) - 1, n)
        xp = np.arange(len(s))
        out.append(np.stack([np.interp(x, xp, s[:, i]) for i in range(2)], axis=1))
    return out


def clip_coords(boxes, shape) -> None:
    """Clip xyxy boxes in place to an image of shape (h, w)."""
    if isinstance(boxes, torch.Tensor):
        boxes[:, 0].clamp_(0, shape[1])
        boxes[:, 1].clamp_(0, shape[0])
        boxes[:, 2].clamp_(0, shape[1])
        boxes[:, 3].clamp_(0, shape[0])
    else:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, shape[0])


def scale_coords(img1_shape, coords, img0_shape, ratio_pad=None):
    """Map xyxy boxes from a letterboxed image of shape img1_shape (h, w) back to img0_shape (h, w)."""
    if ratio_pad is None:  # compute from the shapes
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    coords[:, [0, 2]] -= pad[0]
    coords[:, [1, 3]] -= pad[1]
    coords[:, :4] /= gain
    clip_coords(coords, img0_shape)
    return coords
