"""A YOLOv5 v6.0 style Python API: AutoShape (any image in, detections out) and Detections (the results).

    model = AutoShape(attempt_load('best.pt'))       # or torch.hub.load('.', 'custom', path='best.pt', source='local')
    results = model(['a.jpg', Image.open('b.png'), rgb_array], size=640)
    results.print(); results.save('runs/hub'); results.crop('runs/hub'); results.pandas().xyxy[0]

Inputs (one, or a list of them): a file path (str or Path), an http(s) URL (fetched with urllib only
when given), a PIL image, a numpy array HWC RGB uint8 (v6.0 convention: flip cv2's BGR with [..., ::-1];
CHW arrays and grey HW arrays are accepted too), or a torch tensor (B, 3, H, W) float in [0, 1], which is
passed to the model unchanged (raw model output, no NMS, as v6.0).

Boxes come back in pixels of each ORIGINAL image: `xyxy` corners and `xywh` centre/size, each row
followed by confidence and class; `xyxyn` / `xywhn` are the same normalised by the image width/height.
"""

from __future__ import annotations

import io
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from utils.boxes import scale_coords, xyxy2xywh
from utils.data.augmentations import letterbox
from utils.general import LOGGER, UserError, increment_path, make_divisible
from utils.nms import nms_for

URL_TIMEOUT_S = 10


def _open_image(src: str | Path) -> Image.Image:
    """A PIL image from a local path or an http(s) URL, EXIF orientation applied."""
    s = str(src)
    if s.lower().startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(s, timeout=URL_TIMEOUT_S) as r:  # the caller gave this URL
                data = r.read()
        except OSError as e:
            raise UserError(f"image URL {s} could not be fetched ({e}); check the network or download the "
                            f"file and pass its local path") from None
        im = Image.open(io.BytesIO(data))
    else:
        if not Path(s).is_file():
            raise UserError(f"image {s} does not exist")
        try:
            im = Image.open(s)
            im.load()
        except OSError as e:
            raise UserError(f"image {s} could not be read ({e})") from None
    return ImageOps.exif_transpose(im)


def to_rgb_array(x, i: int) -> tuple[np.ndarray, str]:
    """One input -> (HWC RGB uint8 array, file name used by save/crop)."""
    name = f"image{i}.jpg"
    if isinstance(x, (str, Path)):
        name = Path(str(x).split("?")[0]).with_suffix(".jpg").name
        x = _open_image(x)
    if isinstance(x, Image.Image):
        name = Path(getattr(x, "filename", "") or name).with_suffix(".jpg").name
        x = np.asarray(x.convert("RGB"))
    if not isinstance(x, np.ndarray):
        raise UserError(f"input {i}: unsupported type {type(x).__name__}; give a file path, URL, PIL image, numpy "
                        f"array (HWC RGB) or a torch tensor (B, 3, H, W)")
    if x.ndim == 3 and x.shape[0] in (1, 3, 4) and x.shape[2] not in (1, 3, 4):
        x = x.transpose(1, 2, 0)  # CHW -> HWC
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)  # grey -> 3 channels
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4) or min(x.shape[:2]) < 2:
        raise UserError(f"input {i}: array of shape {x.shape} is not an image (expected HWC with 3 channels)")
    x = np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[..., :3]  # grey or RGBA -> RGB
    if x.dtype != np.uint8:
        scale = 255.0 if x.dtype.kind == "f" and x.max() <= 1.0 else 1.0  # float images in [0, 1]
        x = np.clip(np.round(x.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x), name


class AutoShape(nn.Module):
    """Wraps a detection model: letterbox, inference, NMS, boxes scaled back to the input images.

    Settings (attributes, change them on the instance): conf (0.25), iou (0.45), classes (None = all),
    agnostic (False), multi_label (False), max_det (1000): the v6.0 values.
    """

    conf = 0.25
    iou = 0.45
    classes: list[int] | None = None
    agnostic = False
    multi_label = False
    max_det = 1000

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.eval()  # inference only: the wrapper reports eval mode like the model it holds
        m = model.module if hasattr(model, "module") else model
        self.names = list(m.names.values()) if isinstance(m.names, dict) else list(m.names)
        self.stride = m.stride

    def autoshape(self) -> AutoShape:
        LOGGER.info("AutoShape already enabled, skipping... ")
        return self

    @torch.no_grad()
    def forward(self, imgs, size: int = 640, augment: bool = False, profile: bool = False):
        """imgs: one input or a list (see module docstring); size: the inference long side in pixels.
        profile is accepted for v6.0 compatibility and ignored (timings are always in Detections.t)."""
        if isinstance(imgs, torch.Tensor):  # already a batch: raw model output, as v6.0
            p = next(self.model.parameters())
            return self.model(imgs.to(p.device).type_as(p), augment=augment)
        if isinstance(size, bool) or not isinstance(size, int) or size < 32:
            raise UserError(f"size={size!r}: give the inference image size in pixels, an integer >= 32 (e.g. 640)")
        t0 = time.time()
        items = list(imgs) if isinstance(imgs, (list, tuple)) else [imgs]
        if not items:
            raise UserError("no images given")
        arrays, files = zip(*(to_rgb_array(x, i) for i, x in enumerate(items)))
        stride = int(max(self.stride)) if isinstance(self.stride, (list, torch.Tensor)) else int(self.stride)
        # one batch shape for all: each image scaled so its long side is `size`, the largest h and w kept
        scaled = np.array([[s * size / max(im.shape[:2]) for s in im.shape[:2]] for im in arrays]).max(0)
        shape1 = [make_divisible(x, stride) for x in scaled]
        batch = np.stack([letterbox(im, new_shape=shape1, auto=False)[0] for im in arrays])
        p = next(self.model.parameters())
        x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).to(p.device).type_as(p) / 255  # BHWC -> BCHW
        t1 = time.time()
        y = self.model(x, augment=augment)
        y = y[0] if isinstance(y, (tuple, list)) else y  # decoded, in the layout of the model's head
        t2 = time.time()
        pred = nms_for(self.model)(y.float(), self.conf, self.iou, classes=self.classes, agnostic=self.agnostic,
                                   multi_label=self.multi_label, max_det=self.max_det)  # the head's own NMS
        for det, im in zip(pred, arrays):
            scale_coords(shape1, det[:, :4], im.shape[:2])  # letterboxed pixels -> original pixels
        t3 = time.time()
        n = len(arrays)
        times = tuple((b - a) * 1000 / n for a, b in ((t0, t1), (t1, t2), (t2, t3)))
        return Detections(list(arrays), pred, list(files), times, self.names, tuple(x.shape))


class Detections:
    """Results of one AutoShape call. Per image i: xyxy[i] / xywh[i] (n, 6) tensors in original pixels
    [box, confidence, class]; xyxyn[i] / xywhn[i] the same normalised by (w, h, w, h); imgs[i] the RGB input."""

    def __init__(self, imgs: list[np.ndarray], pred: list[torch.Tensor], files: list[str],
                 times: tuple[float, float, float] = (0.0, 0.0, 0.0), names: list[str] | None = None,
                 shape: tuple | None = None) -> None:
        self.imgs, self.pred, self.files = imgs, pred, files
        self.names = list(names or [])
        gn = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0], device=p.device)
              for im, p in zip(imgs, pred)]
        self.xyxy = pred
        self.xywh = [xyxy2xywh(p) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gn)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gn)]
        self.n = len(pred)
        self.t = tuple(times)  # ms per image: pre-process, inference, NMS
        self.s = shape  # (B, 3, H, W) of the inference batch

    def __len__(self) -> int:
        return self.n

    def _name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else str(c)

    def _summary(self, i: int) -> str:
        im, det = self.imgs[i], self.pred[i]
        s = f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} "
        if not len(det):
            return s + "(no detections)"
        counts = []
        for c in det[:, 5].unique():
            k = int((det[:, 5] == c).sum())
            counts.append(f"{k} {self._name(int(c))}{'s' * (k > 1)}")
        return s + ", ".join(counts)

    def __str__(self) -> str:
        lines = [self._summary(i) for i in range(self.n)]
        lines.append(f"Speed: {self.t[0]:.1f}ms pre-process, {self.t[1]:.1f}ms inference, {self.t[2]:.1f}ms NMS "
                     f"per image at shape {self.s}")
        return "\n".join(lines)

    def print(self) -> None:
        """The per-image summary and the speed line on stdout (v6.0 prints, whatever the logging setup)."""
        sys.stdout.write(str(self) + "\n")

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Copies of the input images (RGB) with the boxes drawn; the inputs are left untouched."""
        from utils.plots import Annotator, colors

        out = []
        for im, det in zip(self.imgs, self.pred):
            ann = Annotator(im.copy())
            for *box, conf, cls in det.tolist():
                label = f"{self._name(int(cls))} {conf:.2f}" if labels else ""
                ann.box_label(box, label, color=colors(int(cls)))
            out.append(ann.result())
        return out

    def save(self, save_dir: str | Path = "runs/detect/exp", labels: bool = True) -> Path:
        """Annotated images as save_dir/<file name>; the default folder is incremented (exp, exp2, ...)."""
        save_dir = increment_path(save_dir, exist_ok=str(save_dir) != "runs/detect/exp", mkdir=True)
        for im, f in zip(self.render(labels), self.files):
            Image.fromarray(im).save(save_dir / f)
        LOGGER.info(f"Saved {self.n} image{'s' * (self.n > 1)} to {save_dir}")
        return save_dir

    def crop(self, save_dir: str | Path = "runs/detect/exp", save: bool = True) -> list[dict]:
        """One dict per box {box, conf, cls, label, im (RGB crop)}; with save, also
        save_dir/crops/<class name>/<file name> (the default folder is incremented)."""
        from utils.plots import save_one_box

        if save:
            save_dir = increment_path(save_dir, exist_ok=str(save_dir) != "runs/detect/exp", mkdir=True)
        crops = []
        for im, det, f in zip(self.imgs, self.pred, self.files):
            for *box, conf, cls in det.tolist():
                name = self._name(int(cls))
                file = Path(save_dir) / "crops" / name / f
                crop = save_one_box(box, im, file=file, save=save)  # im is RGB: flipped for the JPEG writer
                crops.append({"box": box, "conf": conf, "cls": int(cls), "label": f"{name} {conf:.2f}",
                              "im": np.ascontiguousarray(crop[..., ::-1])})
        if save:
            LOGGER.info(f"Saved {len(crops)} crop{'s' * (len(crops) != 1)} to {Path(save_dir) / 'crops'}")
        return crops

    def pandas(self) -> PandasDetections:
        """The boxes as pandas DataFrames: .xyxy[i], .xyxyn[i], .xywh[i], .xywhn[i] (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError:
            raise UserError("Detections.pandas() needs pandas: pip install pandas (the tensors .xyxy, .xywh, "
                            ".xyxyn, .xywhn work without it)") from None
        box_cols = {"xyxy": ["xmin", "ymin", "xmax", "ymax"], "xywh": ["xcenter", "ycenter", "width", "height"]}
        out = PandasDetections(self)
        for k in ("xyxy", "xyxyn", "xywh", "xywhn"):
            cols = [*box_cols[k.rstrip("n")], "confidence", "class", "name"]
            frames = []
            for t in getattr(self, k):
                rows = [[*r[:5], int(r[5]), self._name(int(r[5]))] for r in t.tolist()]
                frames.append(pd.DataFrame(rows, columns=cols))
            setattr(out, k, frames)
        return out

    def tolist(self) -> list[Detections]:
        """One Detections per image."""
        return [Detections([self.imgs[i]], [self.pred[i]], [self.files[i]], self.t, self.names, self.s)
                for i in range(self.n)]


class PandasDetections:
    """What Detections.pandas() returns: the same results with xyxy/xyxyn/xywh/xywhn as lists of DataFrames."""

    def __init__(self, det: Detections) -> None:
        self.names, self.files, self.imgs, self.n = det.names, det.files, det.imgs, det.n
        self.xyxy: list = []
        self.xyxyn: list = []
        self.xywh: list = []
        self.xywhn: list = []
