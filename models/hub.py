"""Models for torch.hub and Python use (hubconf.py's entry points): a local checkpoint or an official
yolov5n..x, wrapped in AutoShape for any-image input. Nothing is ever downloaded."""

from __future__ import annotations

from pathlib import Path

from models.autoshape import AutoShape
from models.checkpoint import attempt_load, load_state_into
from models.yolo import Model
from utils.general import LOGGER, ROOT, UserError
from utils.torch_utils import select_device


def finish(model, autoshape: bool, device, verbose: bool):
    """Wrap for any-image input (unless autoshape=False) and move to the device."""
    model = AutoShape(model) if autoshape else model
    device = select_device("" if device is None else device)
    if next(model.parameters()).device != device:  # (a no-op .to() would still touch every parameter)
        model = model.to(device)
    if verbose:
        names = model.names if autoshape else getattr(model, "names", [])
        LOGGER.info(f"yolov5-kd hub model: {type(model).__name__}, {len(names)} classes")
    return model


def custom(path: str | Path = "path/to/model.pt", autoshape: bool = True, verbose: bool = True, device=None,
           trust: bool = False, cfg: str | Path | None = None, nms: bool = False):
    """A model from a local checkpoint: ours, official v5.x-v7.0 files, or a state_dict with cfg (model yaml).

    trust=True allows the full (unsafe) unpickle of a file you trust, as --trust-checkpoint does. A YOLO26
    model predicts NMS-free (its one-to-one rows, the model's own nms() then only filters them); nms=True
    uses its one-to-many head with NMS instead.
    """
    p = Path(path)
    if str(path).lower().startswith(("http://", "https://")):
        raise UserError(f"custom(path={path}): weights are never downloaded; download the file and pass its path")
    if not p.is_file():
        raise UserError(f"custom(path={path}): file not found (give the path of a .pt checkpoint, e.g. "
                        f"runs/train/exp/weights/best.pt)")
    model = attempt_load(p, map_location="cpu", fuse=autoshape, trust=trust, cfg=cfg, end2end=not nms)
    return finish(model, autoshape, device, verbose)


def official(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device, verbose: bool):
    """yolov5n..x: weights/<name>.pt when pretrained (weights transferred into a new head when classes or
    channels differ from the checkpoint, as v6.0), else a randomly initialised model from models/<name>.yaml."""

    cfg = ROOT / "models" / f"{name}.yaml"
    if not pretrained:
        return finish(Model(cfg, ch=channels, nc=classes), autoshape, device, verbose)
    w = ROOT / "weights" / f"{name}.pt"
    if not w.is_file():
        raise UserError(f"{name}: {w} not found; nothing is downloaded unasked. Fetch it once with: "
                        f"python weights/download_weights.py {name}  (or use pretrained=False for random weights)")
    model = attempt_load(w, map_location="cpu", fuse=False)
    nc = int(model.model[-1].nc)
    if classes != nc or channels != 3:
        new = Model(cfg, ch=channels, nc=classes)
        load_state_into(new, model, exclude=("anchors",))
        if len(model.names) == classes:
            new.names = model.names
        model = new
    if autoshape:
        model = model.fuse() if hasattr(model, "fuse") else model
    return finish(model.eval(), autoshape, device, verbose)
