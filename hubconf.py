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

def custom(path: str | Path = "path/to/model.pt", autoshape: bool = True, verbose: bool = True, device=None,
           trust: bool = False, cfg: str | Path | None = None, nms: bool = False):
    """A model from a local checkpoint: ours, official v5.x-v7.0 files, or a state_dict with cfg (model yaml).

    trust=True allows the full (unsafe) unpickle of a file you trust, as --trust-checkpoint does. A YOLO26
    model predicts NMS-free (its one-to-one rows); nms=True uses its one-to-many head with NMS instead.
    """
    from models.hub import custom as load

    return load(path, autoshape=autoshape, verbose=verbose, device=device, trust=trust, cfg=cfg, nms=nms)


def _official(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device, verbose: bool):
    from models.hub import official

    return official(name, pretrained, channels, classes, autoshape, device, verbose)


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
