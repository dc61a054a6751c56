"""Validation of every script's options, run before any data or model is touched.

Each check raises utils.general.UserError naming the flag (or the file and key) and what to do; the
scripts turn it into one line on stderr and exit status 2. The checks only stat paths and read small
yaml files, so a wrong flag costs nothing. Called by train.py (main), val.py (main and standalone
run), detect.py (run) and export.py (run); train_kd.py goes through train.main.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
from pathlib import Path

from utils.general import LOGGER, ROOT, UserError, check_file, yaml_load
from utils.loggers import is_number

MIN_IMGSZ = 32  # the largest stride of the P5 models: anything smaller cannot be a real image size
VAL_TASKS = ("train", "val", "test", "speed", "study")
CACHE_MODES = ("ram", "disk")
YAML_SUFFIXES = (".yaml", ".yml")

# Every hyp key is declared by the module that reads it, as HYP_KEYS = {key: rule} next to that code, and
# hyp_rules() gathers them: rule = (low, high, low_open, high_open, integer, what it is), None = unbounded on
# that side. The one key here is read by no code: every v6.0 hyp file carries it (v6.0 does not read it
# either), so it is checked, not reported as unknown.
UNREAD_HYP_KEYS: dict[str, tuple] = {
    "iou_t": (0, 1, False, False, False, "IoU threshold, e.g. 0.2 (unused, as in v6.0)"),
}
HYP_REQUIRED = ("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "box", "cls", "obj", "anchor_t")


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"it must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"it must be {'>' if lo_open else '>='} {lo:g}"
    return f"it must be {'<' if hi_open else '<='} {hi:g}"


def check_range(name: str, value, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, integer: bool = False, hint: str = "") -> None:
    """UserError unless value is a (integer) number within [lo, hi] (open ends when lo_open/hi_open)."""
    hint = f" ({hint})" if hint else ""
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_num or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        extra = ""
        if isinstance(value, str) and is_number(value):
            extra = f"; YAML reads '{value}' as text: write it with a decimal point, e.g. 1.0e-3 not 1e-3"
        raise UserError(f"{name} must be {kind}, got {value!r}{hint}{extra}")
    v = float(value)
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    high_bad = hi is not None and (v >= hi if hi_open else v > hi)
    if math.isnan(v) or low_bad or high_bad:
        raise UserError(f"{name} {value} is out of range: {_range_text(lo, hi, lo_open, hi_open)}{hint}")


def check_imgsz(flag: str, imgsz, max_values: int = 1) -> None:
    """An image size (or [h, w] when max_values is 2): positive integers >= 32 pixels."""
    sizes = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz]
    if not 1 <= len(sizes) <= max_values:
        want = "one value (square)" if max_values == 1 else "one value (square) or two (height width)"
        raise UserError(f"{flag} takes {want}, got {len(sizes)}: {' '.join(map(str, sizes))}")
    for s in sizes:
        check_range(f"{flag}", s, MIN_IMGSZ, integer=True,
                    hint="image size in pixels, a multiple of 32 such as 320 or 640")


def check_yaml_file(flag: str, path) -> Path:
    """An existing .yaml/.yml file (looked up in the current directory, then the repository)."""
    if isinstance(path, dict):
        return Path()
    if not str(path):
        raise UserError(f"{flag} is empty; give a yaml file path")
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; give a yaml file")
    f = check_file(path, f"{flag} file")
    if f.suffix.lower() not in YAML_SUFFIXES:
        raise UserError(f"{flag} {path} is not a yaml file (expected a .yaml or .yml suffix)")
    return f


def check_pt_file(flag: str, path, hint: str = "") -> Path:
    """An existing file; a folder gets the hint of which file inside it is meant."""
    p = Path(path)
    if p.is_dir():
        from models.checkpoint import folder_message

        raise UserError(folder_message(p, flag))
    if not p.is_file():
        raise UserError(f"{flag} {p} not found{'; ' + hint if hint else ''}")
    return p


def check_weights(flag: str, weights, suffixes: tuple[str, ...] = (".pt",), script: str = "") -> list[Path]:
    """Existing weight files (bare official names are also looked up in weights/), with a usable suffix."""
    from models.backend import DOWNLOAD_HINT

    out = []
    for w in weights if isinstance(weights, (list, tuple)) else [weights]:
        p = Path(w)
        if not p.is_file() and p.parent in (Path("."), ROOT) and (ROOT / "weights" / p.name).is_file():
            p = ROOT / "weights" / p.name
        p = check_pt_file(flag, p, f"{DOWNLOAD_HINT}, or pass a path to your own checkpoint")
        name = p.name.lower()
        if not any(name.endswith(s) for s in suffixes):
            raise UserError(f"{flag} {p}: {script or 'this script'} takes {' / '.join(suffixes)} files")
        out.append(p)
    return out


def check_device(device) -> None:
    """'' / 'cpu' / '0' / '0,1,2,3' / 'cuda:0' (CUDA availability is checked by select_device)."""
    s = str(device if device is not None else "").strip().lower()
    if not re.fullmatch(r"|cpu|cuda(:\d+)?|\d+(,\d+)*", s):
        raise UserError(f"--device {device}: use cpu, a CUDA index such as 0, or several such as 0,1,2,3")


def check_project(project) -> None:
    p = Path(project)
    if p.exists() and not p.is_dir():
        raise UserError(f"--project {p} is a file; runs are saved in folders (project/name), give a folder")


def check_model_yaml(flag: str, path) -> None:
    """A model yaml (backbone and head), not a data or hyp yaml given to the wrong flag."""
    d = yaml_load(check_yaml_file(flag, path))
    missing = [k for k in ("backbone", "head") if k not in d]
    if missing:
        raise UserError(f"{flag} {path} is not a model yaml (no {' or '.join(missing)}); give one such as "
                        f"models/yolov5s.yaml")


def _check_data(flag: str, data) -> None:
    """The data yaml exists and its fields (nc, names 0..nc-1, train/val) are right; the images are not read."""
    from utils.data.config import check_data_fields

    check_data_fields(data if isinstance(data, dict) else check_yaml_file(flag, data))


def check_thresholds(conf_thres, iou_thres) -> None:
    check_range("--conf-thres", conf_thres, 0, 1, hint="a confidence between 0 and 1, e.g. 0.25")
    check_range("--iou-thres", iou_thres, 0, 1, hint="an NMS IoU between 0 and 1, e.g. 0.45")


# --------------------------------------------------------------------------------------------------
# hyperparameter files


@functools.cache
def hyp_rules() -> dict[str, tuple]:
    """Every hyp key a module reads -> its rule, gathered from the readers' HYP_KEYS (imported here, on first
    use: val.py, detect.py and export.py never need the training modules). A key read in several places
    (box, cls: both losses) must have the same bounds everywhere; the first declaration's text is shown."""
    from distill.yolo_output import HYP_KEYS as output_distillation
    from engine.optim import HYP_KEYS as optimizer
    from engine.setup import HYP_KEYS as model_setup
    from engine.train_utils import HYP_KEYS as close_mosaic
    from utils.data.datasets import HYP_KEYS as augmentation
    from utils.losses.yolov5 import HYP_KEYS as loss_v5
    from utils.losses.yolov8 import HYP_KEYS as loss_v8

    rules: dict[str, tuple] = {}
    for keys in (optimizer, loss_v5, loss_v8, augmentation, model_setup, close_mosaic, output_distillation,
                 UNREAD_HYP_KEYS):
        for k, rule in keys.items():
            if k in rules and rules[k][:5] != rule[:5]:
                raise ValueError(f"hyp key {k} is declared with two ranges: {rules[k]} and {rule}")
            rules.setdefault(k, rule)
    return rules


def check_hyp(hyp: dict, where: str) -> None:
    """Every known key of a hyp dict has a number in its range; keys no module reads (typos) are warned about."""
    missing = [k for k in HYP_REQUIRED if k not in hyp]
    if missing:
        raise UserError(f"{where} lacks keys {missing}; start from data/hyps/hyp.scratch.yaml")
    rules = hyp_rules()
    for k, v in hyp.items():
        rule = rules.get(k)
        if rule is None:
            continue
        lo, hi, lo_open, hi_open, integer, what = rule
        check_range(f"{where}: {k}", v, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer, hint=what)
    unknown = [k for k in hyp if k not in rules]
    if unknown:
        LOGGER.warning(f"WARNING: {where}: unknown keys {unknown} are ignored (known: {', '.join(rules)})")


def check_warmup(nw: int, nb: int, epochs: int, hyp: dict | None = None) -> bool:
    """Say once when warmup (max(warmup_epochs * nb, warmup_min_iters)) covers more than half the run."""
    total = nb * epochs
    if total <= 0 or nw <= total / 2:
        return False
    floor = int((hyp or {}).get("warmup_min_iters", 1000))
    if floor > 100:  # v6.0's floor: the short-run hyp file is the fix
        advice = (f"the {floor}-iteration warmup floor of YOLOv5 v6.0 is meant for long runs; for short runs use "
                  f"--hyp data/hyps/hyp.short.yaml (1-epoch warmup, 100-iteration floor)")
    else:
        advice = "train for more epochs, or lower warmup_epochs / warmup_min_iters in the hyp file"
    LOGGER.warning(
        f"WARNING: warmup lasts {nw} iterations ({nw / max(nb, 1):.1f} epochs of {nb} batches), more than half of "
        f"this {epochs}-epoch run ({total} iterations): the learning rate is still ramping up for most of "
        f"training, so the model learns slowly. {advice[0].upper()}{advice[1:]}")
    return True


# --------------------------------------------------------------------------------------------------
# per-script checks


def resolve_resume(resume) -> str | bool:
    """--resume value: True (latest run), a last.pt, or a run folder holding weights/last.pt."""
    if resume is True or str(resume) == "True":
        return True
    p = Path(resume)
    if p.is_dir():
        last = next((q for q in (p / "weights" / "last.pt", p / "last.pt") if q.is_file()), None)
        if last is None:
            raise UserError(f"--resume {p}: no weights/last.pt in this folder; pass the run folder "
                            f"(runs/train/exp) or its weights/last.pt")
        return str(last)
    if not p.is_file():
        raise UserError(f"--resume {p} does not exist; pass a run folder (runs/train/exp) or its weights/last.pt")
    return str(p)


HYP_DIR = Path(__file__).resolve().parents[1] / "data" / "hyps"
DEFAULT_HYP = {"v5": HYP_DIR / "hyp.scratch.yaml", "v8": HYP_DIR / "hyp.v8.yaml"}


def default_hyp(cfg: str, weights: str, trust: bool = False) -> Path:
    """--hyp when not given: hyp.scratch.yaml (v6.0's default) for YOLOv5 models, hyp.v8.yaml for the
    YOLOv8-style family, whose loss needs a dfl gain. The family is read from the head of --cfg, else from
    the --weights checkpoint's model."""
    from models.parse import MODULES

    family = None
    if cfg:
        head = (yaml_load(check_yaml_file("--cfg", cfg)).get("head") or [[None, None, None]])[-1]
        family = getattr(MODULES.get(head[2]) if len(head) > 2 else None, "family", None)
    elif weights:
        from models.checkpoint import safe_torch_load

        ckpt = safe_torch_load(weights, map_location="cpu", trust=trust)
        model = ckpt.get("model") if isinstance(ckpt, dict) else None
        family = getattr(model, "family", None)
    return DEFAULT_HYP.get(family or "v5", DEFAULT_HYP["v5"])


def check_train_opt(opt: argparse.Namespace) -> argparse.Namespace:
    """train.py / train_kd.py options (before the run folder, data or model exist)."""
    check_range("--workers", opt.workers, 0, integer=True, hint="0 loads data in the main process")
    if opt.resume:
        opt.resume = resolve_resume(opt.resume)
        return opt  # every other option comes back from the run's opt.yaml
    check_range("--epochs", opt.epochs, 1, integer=True, hint="number of training epochs, e.g. 300")
    check_range("--batch-size", opt.batch_size, 1, integer=True, hint="images per batch, e.g. 16")
    check_imgsz("--imgsz", opt.imgsz)
    check_range("--label-smoothing", opt.label_smoothing, 0, 1, hi_open=True, hint="e.g. 0.1; 0 = off")
    check_range("--patience", opt.patience, 0, integer=True, hint="epochs without improvement; 0 = never stop")
    check_range("--freeze", opt.freeze, 0, integer=True, hint="number of leading layers; backbone = 10")
    check_range("--save-period", opt.save_period, integer=True, hint="< 1 = off")
    check_range("--seed", opt.seed, 0, 2**32 - 1, integer=True)
    from engine.kd_flags import check_weight_flags

    check_weight_flags(opt)  # --alpha / --distill_ratio, --beta, --<type>_weight: finite and >= 0
    if opt.cache is not None and str(opt.cache).lower() not in CACHE_MODES:
        raise UserError(f"--cache {opt.cache}: choose 'ram' or 'disk' (or --cache alone for ram)")
    if opt.quad and opt.batch_size % 4:
        raise UserError(f"--quad joins groups of 4 images: --batch-size {opt.batch_size} must be a multiple of 4")
    if opt.sync_bn and int(os.getenv("WORLD_SIZE", "1")) <= 1:
        LOGGER.warning("WARNING: --sync-bn only applies to multi-GPU (DDP) training; ignored here")
    check_device(opt.device)
    if getattr(opt, "bf16", False):
        from utils.torch_utils import native_bf16_cpu

        if str(opt.device).strip().lower() not in ("cpu", ""):
            LOGGER.warning("WARNING: --bf16 is for CPU training; on CUDA training uses fp16 AMP already")
        elif not native_bf16_cpu():
            LOGGER.warning("WARNING: --bf16: this CPU has no native bf16 (avx512_bf16/AMX), so bf16 is emulated "
                           "and slower than float32; drop --bf16")
    check_project(opt.project)
    if opt.cfg:
        check_model_yaml("--cfg", opt.cfg)
    if opt.weights:
        from models.checkpoint import weights_hint

        p = check_pt_file("--weights", opt.weights, f"{weights_hint(opt.weights)}, or use --weights '' --cfg <yaml>")
        if p.suffix != ".pt":
            raise UserError(f"--weights {p} must be a .pt checkpoint (or '' to train from scratch)")
    _check_data("--data", opt.data)
    if opt.hyp is None:  # not given: the family's own defaults (the model decides, not the file name)
        opt.hyp = str(default_hyp(opt.cfg, opt.weights, getattr(opt, "trust_checkpoint", False)))
    if not isinstance(opt.hyp, dict):
        hyp = yaml_load(check_yaml_file("--hyp", opt.hyp))
        check_hyp(hyp, f"--hyp {opt.hyp}")
    else:
        check_hyp(opt.hyp, "--hyp (dict)")
    if not str(opt.name):
        raise UserError("--name is empty; give a run name such as exp")
    return opt


def check_val_args(data, weights, batch_size, imgsz, conf_thres, iou_thres, task, workers, cfg=None, device="",
                   project=".") -> list[Path]:
    """val.py options; returns the resolved weight paths."""
    check_device(device)
    check_project(project)
    if task not in VAL_TASKS:
        raise UserError(f"val.py --task {task}: choose {', '.join(VAL_TASKS)}")
    if weights is None:
        raise UserError("val.py: --weights is required (a .pt checkpoint, or several for an ensemble)")
    check_range("--batch-size", batch_size, 1, integer=True, hint="images per batch, e.g. 32")
    check_imgsz("--imgsz", imgsz)
    check_thresholds(conf_thres, iou_thres)
    check_range("--workers", workers, 0, integer=True, hint="0 loads data in the main process")
    _check_data("--data", data)
    if cfg:
        check_model_yaml("--cfg", cfg)
    return check_weights("--weights", weights, (".pt",), "val.py (use detect.py for exported models)")


def check_detect_args(weights, source, imgsz, conf_thres, iou_thres, max_det, classes, line_thickness,
                      cfg=None, device="", project=".") -> None:
    """detect.py options (source existence for files, folders and *.txt lists; streams are opened later)."""
    check_device(device)
    check_project(project)
    from utils.data.image_loaders import STREAM_PREFIXES, is_stream

    check_weights("--weights", weights, (".pt", ".onnx"), "detect.py")
    check_imgsz("--imgsz", imgsz, max_values=2)
    check_thresholds(conf_thres, iou_thres)
    check_range("--max-det", max_det, 1, integer=True, hint="maximum detections per image, e.g. 1000")
    check_range("--line-thickness", line_thickness, 1, integer=True, hint="box line width in pixels")
    for c in classes or []:
        check_range("--classes", c, 0, integer=True, hint="class indices of the model, from 0")
    if cfg:
        check_model_yaml("--cfg", cfg)
    s = str(source)
    if not s:
        raise UserError("--source is empty; give an image, video, folder, glob, *.txt list or stream")
    if s.lower().startswith(STREAM_PREFIXES) and not is_stream(s):
        raise UserError(f"--source {s} is a remote file; nothing is downloaded at run time. Download it first and "
                        f"pass the local path (stream URLs without a file suffix are opened as streams)")
    local = not (is_stream(s) or "*" in s)
    if local and not Path(s).exists():
        raise UserError(f"--source {s} does not exist (give an image, video, folder, glob, *.txt list or stream)")


def check_classes_in_model(classes, names: list[str]) -> None:
    """--classes against the loaded model: an index it cannot predict would silently give no detections."""
    bad = [c for c in classes or [] if c >= len(names)]
    if bad:
        raise UserError(f"--classes {' '.join(map(str, bad))}: the model has {len(names)} classes "
                        f"(0..{len(names) - 1}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")


def check_export_args(weights, imgsz, batch_size, opset, include, device="cpu", cfg=None) -> None:
    """export.py options (formats are checked by export.run, which knows which ones exist)."""
    check_device(device)
    if cfg:
        check_model_yaml("--cfg", cfg)
    check_weights("--weights", weights, (".pt",), "export.py")
    check_imgsz("--imgsz", imgsz, max_values=2)
    check_range("--batch-size", batch_size, 1, integer=True, hint="batch size of the exported graph, e.g. 1")
    if "onnx" in [str(x).lower() for x in include]:
        try:
            from torch.onnx._constants import ONNX_MAX_OPSET
        except ImportError:  # private module: fall back to what torch 2.x supports
            ONNX_MAX_OPSET = 20
        check_range("--opset", opset, 7, ONNX_MAX_OPSET, integer=True, hint="ONNX opset, e.g. 13")
