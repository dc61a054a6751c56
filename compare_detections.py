#!/usr/bin/env python
"""Detections of several models on the same images, in one picture: one row per model (ground truth first
when the images have YOLO labels), one column per image, the row's label and box count on each tile.

Usage:
    python compare_detections.py --weights runs/train/base/weights/best.pt runs/train/kd/weights/best.pt \\
        --labels plain distilled --source datasets/shapes/images/val --n 4 --img 160 --out compare.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.general import LOGGER, UserError, run_cli

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TILE = 256  # pixels per tile side in the picture
STRIP = 20  # title strip above each tile


def pick_images(source: str | Path, n: int) -> list[Path]:
    """The first n images of a folder (sorted by name), or the one image given."""
    p = Path(source)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise UserError(f"compare_detections: --source {p} is neither an image nor a folder")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMG_SUFFIXES)
    if not files:
        raise UserError(f"compare_detections: no images ({', '.join(IMG_SUFFIXES)}) in {p}")
    return files[:n]


def ground_truth(files: list[Path], names: list[str]) -> list[np.ndarray] | None:
    """[(n, 6) xyxy pixels, conf 1, cls] per image from the YOLO label files, None if any is missing."""
    from utils.data.label_cache import img2label_paths

    out = []
    for f, lf in zip(files, img2label_paths([str(f) for f in files])):
        if not Path(lf).is_file():
            return None
        h, w = cv2.imread(str(f)).shape[:2]
        rows = np.loadtxt(lf, ndmin=2, dtype=np.float32).reshape(-1, 5)
        c, x, y, bw, bh = rows.T
        out.append(np.stack([(x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h,
                             np.ones_like(c), c], 1))
    return out


def draw(rgb: np.ndarray, det: np.ndarray, names: list[str], title: str) -> np.ndarray:
    """One tile: the image with its boxes, scaled to TILE x TILE, the title on top (BGR for cv2.imwrite)."""
    from utils.plots import Annotator, colors

    ann = Annotator(rgb.copy())
    for *box, conf, cls in det.tolist():
        name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        ann.box_label(box, name if conf >= 1 else f"{name} {conf:.2f}", color=colors(int(cls)))
    tile = cv2.resize(cv2.cvtColor(ann.result(), cv2.COLOR_RGB2BGR), (TILE, TILE), interpolation=cv2.INTER_AREA)
    strip = np.full((STRIP, TILE, 3), 255, dtype=np.uint8)
    cv2.putText(strip, f"{title}: {len(det)} boxes", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, tile], 0)


def compare(weights: list[str], source: str, labels: list[str] | None = None, n: int = 4, img: int = 640,
            conf: float = 0.25, out: str | Path = "compare_detections.jpg", device: str = "cpu") -> Path:
    from models.hub import custom

    if labels and len(labels) != len(weights):
        raise UserError(f"compare_detections: {len(labels)} --labels for {len(weights)} --weights; one label each")
    if not 0 <= conf <= 1:
        raise UserError(f"compare_detections: --conf {conf} must be in [0, 1]")
    files = pick_images(source, n)
    rgb = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    rows, names = [], None
    for k, w in enumerate(weights):
        model = custom(w, verbose=False, device=device)
        model.conf = conf
        names = names or model.names
        res = model(list(rgb), size=img)
        title = labels[k] if labels else Path(w).parent.parent.name or Path(w).stem
        rows.append([draw(im, det.cpu().numpy(), model.names, title) for im, det in zip(rgb, res.pred)])
    gt = ground_truth(files, names)
    if gt is not None:
        rows.insert(0, [draw(im, det, names, "labels") for im, det in zip(rgb, gt)])
    picture = np.concatenate([np.concatenate(r, 1) for r in rows], 0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), picture)
    LOGGER.info(f"compare_detections: {len(weights)} model(s) x {len(files)} image(s) -> {out}")
    return out


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="checkpoints to compare, one row each")
    p.add_argument("--labels", nargs="+", default=None, help="row titles, one per checkpoint")
    p.add_argument("--source", required=True, help="image folder (its first --n images, sorted) or one image")
    p.add_argument("--n", type=int, default=4, help="number of images (columns)")
    p.add_argument("--img", "--imgsz", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--device", default="cpu", help="cpu or a CUDA device id")
    p.add_argument("--out", default="compare_detections.jpg", help="output picture")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    o = parse_opt(argv)
    if o.n < 1:
        raise UserError(f"compare_detections: --n {o.n} must be >= 1")
    return compare(o.weights, o.source, o.labels, o.n, o.img, o.conf, o.out, o.device)


if __name__ == "__main__":
    run_cli(main)
