"""Loading and saving YOLOv5 checkpoints safely.

Official v5.x/v6.x/v7.0 `.pt` files pickle whole `models.yolo.Model` objects plus numpy arrays, so a
plain `weights_only=True` load refuses them and `weights_only=False` would run arbitrary pickled
code. `safe_torch_load` uses torch's weights-only unpickler with an explicit allow-list of the
classes such files legitimately contain; anything else is refused *before* it runs.

Checkpoints of the ultralytics package (YOLOv8, YOLO11 and YOLO26 families) pickle `ultralytics.nn.*` classes;
the allow-list maps each of those names onto the class of this repository with the same attributes
(`_ULTRALYTICS`), so they load without ultralytics installed and without trusted unpickling.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath

import numpy as np
import torch
from torch import nn

from models import blocks_v11, common
from models.head_v8 import DetectV8
from models.yolo import Detect, Model
from utils.general import LOGGER, UserError, colorstr
from utils.torch_utils import intersect_dicts

_TORCH_NN = (nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.Upsample, nn.MaxPool2d, nn.Sequential, nn.ModuleList,
             nn.ModuleDict, nn.Identity, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Sigmoid, nn.Linear,
             nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_COMMON = (common.Conv, common.DWConv, common.Bottleneck, common.BottleneckCSP, common.C3, common.SPP, common.SPPF,
           common.Focus, common.Concat, common.Conv1_1, common.SELayer, common.ChannelAttention,
           common.SpatialAttention, common.ASCBAM, common.CABlock, common.h_sigmoid, common.h_swish, common.C2f,
           common.DFL)
_V11 = (blocks_v11.C3k2, blocks_v11.C3k, blocks_v11.C2PSA, blocks_v11.PSABlock, blocks_v11.Attention,
        blocks_v11.SPPFn)
# ultralytics 8.x global -> our class with the same pickled attribute names (see models/head_v8.py)
_ULTRALYTICS = {
    "ultralytics.nn.tasks.DetectionModel": Model,
    "ultralytics.nn.modules.conv.Conv": common.Conv,
    "ultralytics.nn.modules.conv.Concat": common.Concat,
    "ultralytics.nn.modules.block.C2f": common.C2f,
    "ultralytics.nn.modules.block.Bottleneck": common.Bottleneck,
    "ultralytics.nn.modules.block.SPPF": common.SPPF,  # reads the pickled n, add (and cv1's own act: YOLO26)
    "ultralytics.nn.modules.block.DFL": common.DFL,
    # legacy (v8) or YOLO11 class branch read from its layers; YOLO26: reg_max 1 (dfl an Identity) and the
    # one-to-one branches one2one_cv2/one2one_cv3 (end2end, see models/head_v8.py)
    "ultralytics.nn.modules.head.Detect": DetectV8,
    # YOLO11 (ultralytics >= 8.3)
    "ultralytics.nn.modules.conv.DWConv": common.DWConv,
    "ultralytics.nn.modules.block.C3k2": blocks_v11.C3k2,
    "ultralytics.nn.modules.block.C3k": blocks_v11.C3k,
    "ultralytics.nn.modules.block.C2PSA": blocks_v11.C2PSA,
    "ultralytics.nn.modules.block.PSABlock": blocks_v11.PSABlock,
    "ultralytics.nn.modules.block.Attention": blocks_v11.Attention,
}
# ultralytics 8.0.0-8.0.9x kept every module in one file, ultralytics/nn/modules.py: the same classes
_ULTRALYTICS.update({f"ultralytics.nn.modules.{k.rsplit('.', 1)[1]}": v for k, v in list(_ULTRALYTICS.items())
                     if k.startswith("ultralytics.nn.modules.")})


WEIGHTS_HINT = "official YOLOv5 v6.0 weights can be fetched with: python weights/download_weights.py yolov5s"


def checkpoints_in(folder: str | Path) -> list[Path]:
    """The checkpoint files a folder holds, as paths under `folder` as given: a run folder's weights/best.pt
    and weights/last.pt first, then every *.pt directly in it (best.pt, last.pt, then by name)."""
    folder = Path(folder)
    found = [p for p in (folder / "weights" / "best.pt", folder / "weights" / "last.pt") if p.is_file()]
    first = {"best.pt": 0, "last.pt": 1}
    found += sorted((p for p in folder.glob("*.pt") if p.is_file()), key=lambda p: (first.get(p.name, 2), p.name))
    return found


def folder_message(path: str | Path, flag: str | None = None, shown: int = 6) -> str:
    """What to say when a checkpoint is expected but `path` is a folder, naming the checkpoints inside it:
    '--teacher_weight runs/train/exp is a folder; give a checkpoint file inside it: runs/train/exp/weights/
    best.pt, runs/train/exp/weights/last.pt'. flag (the option given, if any) leads the message."""
    lead = f"{flag} {path}" if flag else str(path)
    found = checkpoints_in(path)
    if not found:
        return (f"{lead} is a folder with no checkpoint in it (looked for weights/best.pt, weights/last.pt and "
                "*.pt); give a checkpoint file")
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return f"{lead} is a folder; give a checkpoint file inside it: {', '.join(map(str, found[:shown]))}{more}"


def weights_hint(path: str | Path) -> str:
    """The download command for a missing official checkpoint (weights/yolov5m.pt -> '... yolov5m'); for a
    folder, that it is one and the checkpoints inside it (folder_message)."""
    if Path(path).is_dir():
        return folder_message(path)
    m = re.fullmatch(r"(yolov5[nsmlx])\.pt", Path(path).name)
    if m:
        return f"official YOLOv5 v6.0 {m.group(1)} weights can be fetched with: python weights/download_weights.py {m.group(1)}"
    return WEIGHTS_HINT


def _numpy_globals() -> list:
    """numpy objects a pickled best_fitness array needs, under both module spellings (numpy 1.x/2.x)."""
    from numpy._core import multiarray

    out = [np.ndarray, np.dtype, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
           (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
           (multiarray.scalar, "numpy.core.multiarray.scalar"), (multiarray.scalar, "numpy._core.multiarray.scalar")]
    out += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")]  # numpy.dtypes.*
    return out


def allowed_globals() -> list:
    """The explicit allow-list passed to torch.serialization.safe_globals."""
    import _codecs
    import collections

    return [Model, (Model, "models.yolo.DetectionModel"), Detect, DetectV8, *_COMMON, *_V11, *_TORCH_NN,
            *_numpy_globals(),
            *((cls, name) for name, cls in _ULTRALYTICS.items()),
            set, frozenset, collections.OrderedDict, _codecs.encode,
            PosixPath, WindowsPath, PurePosixPath, PureWindowsPath]


def _refused_global(msg: str) -> str | None:
    # torch phrases it "Unsupported global: GLOBAL a.b.C was not an allowed global" or
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    return m.group(1) if m else None


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False):
    """torch.load through the allow-list (trust=True: the unsafe full pickle load, with a warning).

    Raises UserError naming the path for a missing, truncated or non-checkpoint file, and naming the
    global for a pickle that needs anything outside the allow-list (nothing from it is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    if trust:
        LOGGER.warning(colorstr("red", "bold", f"WARNING: loading {path} with full pickle (--trust-checkpoint): "
                                               "it can run arbitrary code; only do this for files you trust"))
    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(str(e))
        if name:
            raise UserError(f"checkpoint '{path}' was refused: it needs the global '{name}', which is not on the "
                            f"allow-list of model classes (it could run code on load). If you trust this file, "
                            f"load it with --trust-checkpoint (trust=True)") from None
        raise UserError(f"checkpoint '{path}' is not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError, ImportError, KeyError) as e:
        raise UserError(f"checkpoint '{path}' is truncated or not a PyTorch checkpoint ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    """The informative part of a torch.load error (skipping its generic weights_only preamble)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [m.group(1)] if m else [x for x in text.strip().splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _is_state_dict(x) -> bool:
    return isinstance(x, dict) and len(x) > 0 and all(isinstance(v, torch.Tensor) for v in x.values())


def _model_from_state_dict(sd: dict, cfg, path: Path, nc: int | None) -> Model:
    if cfg is None:
        raise UserError(f"checkpoint '{path}' holds only a state_dict; pass the model yaml (cfg=...) to build it")
    sd = {k: v for k, v in sd.items() if not k.endswith("anchor_grid")}  # v5.x buffer, rebuilt at run time
    model = Model(cfg, nc=nc)
    det = model.model[-1]
    if isinstance(det, DetectV8):
        key = f"model.{det.i}.cv3.0.2.weight"  # class branch output conv: nc rows
        if nc is None and key in sd and sd[key].shape[0] != det.nc:
            model = Model(cfg, nc=sd[key].shape[0])
    else:
        key = f"model.{det.i}.m.0.weight"
        if nc is None and key in sd and sd[key].shape[0] != det.na * det.no:
            model = Model(cfg, nc=sd[key].shape[0] // det.na - 5)  # nc from the Detect output width
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint '{path}' does not match {cfg}: missing {list(missing)[:5]}, "
                        f"unexpected {list(unexpected)[:5]}")
    return model


def model_from_checkpoint(ckpt, path: str | Path = "<memory>", cfg=None) -> nn.Module:
    """The model in a loaded checkpoint: ckpt['ema'] if present, else ckpt['model'], else a state_dict
    (ckpt['model'], ckpt['state_dict'] or the dict itself) loaded into Model(cfg)."""
    path = Path(path)
    if isinstance(ckpt, nn.Module):
        return ckpt
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(ckpt).__name__}, not a model or checkpoint dict")
    for key in ("ema", "model"):
        if isinstance(ckpt.get(key), nn.Module):
            return ckpt[key]
    for sd in (ckpt.get("model"), ckpt.get("state_dict"), ckpt):
        if _is_state_dict(sd):
            return _model_from_state_dict(sd, cfg, path, ckpt.get("nc"))
    raise UserError(f"checkpoint '{path}' has no 'model'/'ema' module and no state_dict (keys: {list(ckpt)[:10]})")


def _compat(model: nn.Module, inplace: bool) -> None:
    """Make a model unpickled from any release run under this code (v6.0 attempt_load pass).

    ultralytics models are already translated while unpickling (Model.__setstate__)."""
    for m in model.modules():
        t = type(m)
        if t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU, Detect, DetectV8, Model):
            m.inplace = inplace
        if t is DetectV8:
            m.reset_cache()  # anchor points are rebuilt for the input size, dtype and device at hand
        if t is Detect:
            if "anchor_grid" in m._buffers:  # v5.x persisted anchor_grid as a buffer
                del m._buffers["anchor_grid"]
            # drop cached grids: a v7.0 cache has the -0.5 folded in and would shift boxes half a cell
            m.grid = [torch.zeros(1, device=m.anchors.device)] * m.nl
            m.anchor_grid = [torch.zeros(1, device=m.anchors.device)] * m.nl
        elif t is nn.Upsample and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # pickled by torch < 1.11
        elif isinstance(m, common.Conv) and not hasattr(m, "_non_persistent_buffers_set"):
            m._non_persistent_buffers_set = set()  # pickled by torch < 1.6


class Ensemble(nn.ModuleList):
    """Several models run on the same input; decoded outputs concatenated along dim 1 ("NMS ensemble")."""

    def forward(self, x, augment: bool = False, profile: bool = False, visualize: bool = False):
        y = [module(x, augment, profile, visualize)[0] for module in self]  # v5: (B, N_i, no), v8: (B, no, N_i)
        return torch.cat(y, 2 if self.family == "v8" else 1), None

    @property
    def family(self) -> str:
        """The members' family (attempt_load only builds ensembles of one family)."""
        return getattr(self[0], "family", "v5")

    def nms(self, prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """The members' NMS (see models.yolo.Model.nms)."""
        return self[0].nms(prediction, *args, **kwargs)


def attempt_load(weights, map_location=None, inplace: bool = True, fuse: bool = True, cfg=None,
                 trust: bool = False, end2end: bool = False) -> nn.Module:
    """Load one checkpoint (-> Model) or a list (-> Ensemble) for inference: FP32, optionally fused, eval.

    Takes 'ema' when present, else 'model'; a state_dict-only file needs cfg (model yaml). end2end: models
    with a one-to-one head (YOLO26) answer with its NMS-free top-k rows (and fusing drops their one-to-many
    head); False (the default, and always for other models) keeps the output NMS expects.
    """
    model = Ensemble()
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    end2end &= len(weights) == 1  # an ensemble concatenates one-to-many outputs for a joint NMS
    for w in weights:
        ckpt = safe_torch_load(w, map_location or "cpu", trust=trust)
        m = model_from_checkpoint(ckpt, w, cfg).float()
        _compat(m, inplace)
        if end2end and getattr(m, "supports_end2end", False):
            m.set_end2end(True)
        if fuse and hasattr(m, "fuse"):
            m.fuse()
        model.append(m.eval())
    if len(model) == 1:
        return model[-1]
    LOGGER.info(f"Ensemble created with {weights}\n")
    nc = {getattr(m, "nc", None) or m.model[-1].nc for m in model}
    if len(nc) > 1:
        raise UserError(f"ensemble models have different class counts {sorted(nc)}: {weights}")
    families = {getattr(m, "family", "v5") for m in model}
    if len(families) > 1:
        raise UserError(f"ensemble models mix head families {sorted(families)} (outputs and NMS differ): {weights}")
    model.names = model[-1].names
    model.stride = model[int(torch.argmax(torch.tensor([m.stride.max() for m in model])))].stride
    return model


def load_state_into(model: nn.Module, ckpt_or_sd, exclude: tuple = ()) -> tuple[int, int]:
    """Transfer matching tensors (same key and shape, no `exclude` substring) into model (train.py §6.5).

    Accepts a checkpoint dict, a module or a state_dict. Returns (transferred, total in model).
    """
    src = ckpt_or_sd
    if isinstance(src, dict) and not _is_state_dict(src):
        src = src.get("ema") or src.get("model") or src.get("state_dict")
    sd = src.float().state_dict() if isinstance(src, nn.Module) else src
    if not _is_state_dict(sd):
        raise UserError("load_state_into: no state_dict found in the given checkpoint")
    csd = intersect_dicts(sd, model.state_dict(), exclude=exclude)
    model.load_state_dict(csd, strict=False)
    total = len(model.state_dict())
    LOGGER.info(f"Transferred {len(csd)}/{total} items")
    return len(csd), total


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """torch.save atomically: write path.tmp<pid> then os.replace (a crash never leaves half a file).

    Path values inside ckpt['opt'] are stored as strings so the file stays loadable by the allow-list.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ckpt.get("opt"), dict):
        ckpt = {**ckpt, "opt": {k: str(v) if isinstance(v, Path) else v for k, v in ckpt["opt"].items()}}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def strip_optimizer(f: str | Path = "best.pt", s: str | Path = "") -> None:
    """Finalize a training checkpoint (v6.0 §6.2): ema -> model, optimizer etc. None, epoch -1, FP16."""
    x = safe_torch_load(f)
    if x.get("ema") is not None:
        x["model"] = x["ema"]
    for k in ("optimizer", "training_results", "wandb_id", "ema", "updates"):
        x[k] = None
    x.pop("kd_state", None)  # distillation adapters are for resuming only: the final file is the student alone
    x["epoch"] = -1
    x["model"].half()
    for p in x["model"].parameters():
        p.requires_grad = False
    save_checkpoint(x, s or f)
    mb = os.path.getsize(s or f) / 1e6
    LOGGER.info(f"Optimizer stripped from {f},{f' saved as {s},' if s else ''} {mb:.1f}MB")
