"""torch.hub entry points, as YOLOv5 v6.0's hubconf.py, for a local clone (nothing is ever downloaded).

    import torch
    model = torch.hub.load('.', 'custom', path='runs/train/exp/weights/best.pt', source='local')
    model = torch.hub.load('path/to/yolov5-kd', 'yolov5s', source='local')   # needs weights/yolov5s.pt
    results = model(['img.jpg', pil_image, rgb_array])   # see models/autoshape.py
    results.print(); results.save(); results.crop(); results.pandas().xyxy[0]

The official models load only from weights/<name>.pt; when the file is absent the error names the
command that fetches it (python weights/download_weights.py <name>).
"""

from __future__ import annotations

from pathlib import Path

dependencies = ["torch", "yaml", "numpy", "cv2", "PIL"]  # checked by torch.hub before loading

ROOT = Path(__file__).resolve().parent


def _finish(model, autoshape: bool, device, verbose: bool):
    """Wrap for any-image input (unless autoshape=False) and move to the device."""
    from models.autoshape import AutoShape
    from utils.general import LOGGER
    from utils.torch_utils import select_device

    model = AutoShape(model) if autoshape else model
    device = select_device("" if device is None else device)
    if next(model.parameters()).device != device:  # (a no-op .to() would still touch every parameter)
        model = model.to(device)
    if verbose:
        names = model.names if autoshape else getattr(model, "names", [])
        LOGGER.info(f"yolov5-kd hub model: {type(model).__name__}, {len(names)} classes")
    return model


def custom(path: str | Path = "path/to/model.pt", autoshape: bool = True, verbose: bool = True, device=None,
           trust: bool = False, cfg: str | Path | None = None):
    """A model from a local checkpoint: ours, official v5.x-v7.0 files, or a state_dict with cfg (model yaml).

    trust=True allows the full (unsafe) unpickle of a file you trust, as --trust-checkpoint does.
    """
    from utils.checkpoint import attempt_load
    from utils.general import UserError

    p = Path(path)
    if str(path).lower().startswith(("http://", "https://")):
        raise UserError(f"custom(path={path}): weights are never downloaded; download the file and pass its path")
    if not p.is_file():
        raise UserError(f"custom(path={path}): file not found (give the path of a .pt checkpoint, e.g. "
                        f"runs/train/exp/weights/best.pt)")
    model = attempt_load(p, map_location="cpu", fuse=autoshape, trust=trust, cfg=cfg)
    return _finish(model, autoshape, device, verbose)


def _official(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device, verbose: bool):
    """yolov5n..x: weights/<name>.pt when pretrained (weights transferred into a new head when classes or
    channels differ from the checkpoint, as v6.0), else a randomly initialised model from models/<name>.yaml."""
    from models.yolo import Model
    from utils.checkpoint import attempt_load, load_state_into
    from utils.general import UserError

    cfg = ROOT / "models" / f"{name}.yaml"
    if not pretrained:
        return _finish(Model(cfg, ch=channels, nc=classes), autoshape, device, verbose)
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
    return _finish(model.eval(), autoshape, device, verbose)


def yolov5n(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """YOLOv5-nano (v6.0) from weights/yolov5n.pt."""
    return _official("yolov5n", pretrained, channels, classes, autoshape, device, verbose)


def yolov5s(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """YOLOv5-small (v6.0) from weights/yolov5s.pt."""
    return _official("yolov5s", pretrained, channels, classes, autoshape, device, verbose)


def yolov5m(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """YOLOv5-medium (v6.0) from weights/yolov5m.pt."""
    return _official("yolov5m", pretrained, channels, classes, autoshape, device, verbose)


def yolov5l(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """YOLOv5-large (v6.0) from weights/yolov5l.pt."""
    return _official("yolov5l", pretrained, channels, classes, autoshape, device, verbose)


def yolov5x(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """YOLOv5-xlarge (v6.0) from weights/yolov5x.pt."""
    return _official("yolov5x", pretrained, channels, classes, autoshape, device, verbose)
