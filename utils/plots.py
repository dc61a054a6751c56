"""Pictures: box drawing (cv2 only, no fonts to fetch), batch mosaics, label statistics, training
results, PR/F1 curves and the confusion matrix. Matplotlib is imported lazily with the Agg backend.

Box formats: plot_images takes targets [img_idx, cls, x, y, w, h(, conf)] (normalised or pixels),
Annotator and save_one_box take xyxy pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import clip_coords, xywh2xyxy, xyxy2xywh
from utils.general import LOGGER


class Colors:
    """A fixed palette of 20 well-separated colours; colors(i) is RGB, colors(i, bgr=True) BGR."""

    HEX = ("E6194B", "3CB44B", "FFB000", "4363D8", "F58231", "911EB4", "42D4F4", "F032E6", "BFEF45",
           "FA8072", "469990", "9A6324", "800000", "AAFFC3", "808000", "000075", "FF6F91", "00A36C",
           "8B8BFF", "C04000")

    def __init__(self):
        self.palette = [tuple(int(h[k:k + 2], 16) for k in (0, 2, 4)) for h in self.HEX]
        self.n = len(self.palette)

    def __call__(self, i: int, bgr: bool = False) -> tuple[int, int, int]:
        c = self.palette[int(i) % self.n]
        return (c[2], c[1], c[0]) if bgr else c


colors = Colors()


def mpl():
    """pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Annotator:
    """Draw boxes and labels on a uint8 HWC image (in place on a contiguous copy) with cv2 fonts."""

    def __init__(self, im: np.ndarray, line_width: int | None = None):
        self.im = np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(self.im.shape[:2]) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # font thickness
        self.fs = self.lw / 3  # font scale

    def box_label(self, box, label: str = "", color=(128, 128, 128), txt_color=(255, 255, 255)) -> None:
        """box: xyxy pixels; the label sits on a filled strip above the box (below when at the top)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            w, h = cv2.getTextSize(label, 0, fontScale=self.fs, thickness=self.tf)[0]
            outside = p1[1] - h - 3 >= 0
            p2 = p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3
            cv2.rectangle(self.im, p1, p2, color, -1, cv2.LINE_AA)
            org = (p1[0], p1[1] - 2 if outside else p1[1] + h + 2)
            cv2.putText(self.im, label, org, 0, self.fs, txt_color, thickness=self.tf, lineType=cv2.LINE_AA)

    def rectangle(self, xy, fill=None, outline=None, width: int = 1) -> None:
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, fill, -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, outline, width)

    def text(self, xy, text: str, txt_color=(255, 255, 255)) -> None:
        """Text with its top-left corner at xy (pixels)."""
        h = cv2.getTextSize(text, 0, fontScale=self.fs, thickness=self.tf)[0][1]
        cv2.putText(self.im, text, (int(xy[0]), int(xy[1]) + h), 0, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def result(self) -> np.ndarray:
        return self.im


def _to_numpy(x):
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def output_to_target(output: list[torch.Tensor]) -> np.ndarray:
    """NMS output list of (n, 6) xyxy pixels -> (N, 7) [img_idx, cls, x, y, w, h (pixels), conf]."""
    rows = []
    for i, o in enumerate(output):
        o = o.detach().float().cpu()
        if len(o):
            xywh = xyxy2xywh(o[:, :4])
            rows.append(torch.cat((torch.full((len(o), 1), float(i)), o[:, 5:6], xywh, o[:, 4:5]), 1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, 7), dtype=np.float32)


def plot_images(images, targets, paths=None, fname: str | Path = "images.jpg", names=None,
                max_size: int = 1920, max_subplots: int = 16) -> np.ndarray:
    """Mosaic of a batch with its boxes, written to fname (JPEG).

    images (B, 3, H, W) RGB, float in [0, 1] or uint8; targets (N, 6) [img_idx, cls, x, y, w, h] labels
    or (N, 7) with conf for predictions (boxes with conf <= 0.25 are not drawn); x, y, w, h normalised
    or pixels of the batch image. Returns the mosaic (RGB uint8).
    """
    images, targets = _to_numpy(images), _to_numpy(targets)
    targets = targets if targets.ndim == 2 else targets.reshape(-1, 6)
    if images.max(initial=0) <= 1:
        images = images * 255
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # grid side
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i in range(bs):
        y0, x0 = (i // ns) * h, (i % ns) * w
        mosaic[y0:y0 + h, x0:x0 + w] = images[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        mosaic = cv2.resize(mosaic, (ns * w, ns * h))

    ann = Annotator(mosaic, line_width=round(max(2, min(ns * w, ns * h) * 0.002)))
    ann.fs = max(ann.fs * 0.5, 0.35)
    for i in range(bs):
        x0, y0 = (i % ns) * w, (i // ns) * h
        ann.rectangle((x0, y0, x0 + w, y0 + h), outline=(255, 255, 255), width=2)
        if paths is not None:
            ann.text((x0 + 5, y0 + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        t = targets[targets[:, 0] == i]
        if not len(t):
            continue
        boxes = xywh2xyxy(t[:, 2:6].copy())
        labels = t.shape[1] == 6  # no conf column
        if boxes.max() <= 1.01:  # normalised
            boxes[:, [0, 2]] *= w
            boxes[:, [1, 3]] *= h
        elif scale < 1:  # pixels of the batch image, which was shrunk
            boxes *= scale
        boxes[:, [0, 2]] += x0
        boxes[:, [1, 3]] += y0
        for j, box in enumerate(boxes):
            c = int(t[j, 1])
            conf = None if labels else t[j, 6]
            if labels or conf > 0.25:
                name = names[c] if names is not None and c < len(names) else str(c)
                ann.box_label(box, name if labels else f"{name} {conf:.1f}", color=colors(c))
    cv2.imwrite(str(fname), cv2.cvtColor(ann.result(), cv2.COLOR_RGB2BGR))
    return ann.result()


def plot_labels(labels: np.ndarray, names=(), save_dir: str | Path = Path("")) -> None:
    """labels.jpg (class counts, box shapes, centre and size histograms) and labels_correlogram.jpg.

    labels (N, 5) [cls, x, y, w, h] normalised. Drawn with matplotlib 2-D histograms: fast for any N.
    """
    plt = mpl()
    save_dir = Path(save_dir)
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 5)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = int(c.max()) + 1 if len(c) else 1
    LOGGER.info(f"Plotting labels to {save_dir / 'labels.jpg'}... ")
    cols = ["x", "y", "width", "height"]

    fig, ax = plt.subplots(4, 4, figsize=(8, 8), tight_layout=True)
    for i in range(4):
        for j in range(4):
            a = ax[i, j]
            if i == j:
                a.hist(b[:, i], bins=50, range=(0, 1), color="#4363D8")
            elif i > j:
                a.hist2d(b[:, j], b[:, i], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
            else:
                a.axis("off")
            if i == 3:
                a.set_xlabel(cols[j])
            if j == 0:
                a.set_ylabel(cols[i])
    fig.savefig(save_dir / "labels_correlogram.jpg", dpi=150)
    plt.close(fig)

    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    ax[0].bar(range(nc), np.bincount(c, minlength=nc), color=[np.array(colors(k)) / 255 for k in range(nc)])
    ax[0].set_ylabel("instances")
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(len(names)))
        ax[0].set_xticklabels(list(names), rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, dtype=np.uint8)  # up to 1000 boxes drawn at the centre
    for k, (w, h) in enumerate(b[:1000, 2:]):
        x1, y1 = 500 - w * 500, 500 - h * 500
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(1000 - x1), int(1000 - y1)), colors(c[k]), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    for a, (u, v) in zip(ax[2:], ((0, 1), (2, 3))):
        a.hist2d(b[:, u], b[:, v], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        a.set_xlabel(cols[u])
        a.set_ylabel(cols[v])
    fig.savefig(save_dir / "labels.jpg", dpi=200)
    plt.close(fig)


# results.png panels in v6.0 order (spec §8.7): 2 x 5, train losses, P, R, val losses, mAPs
RESULTS_PANELS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                  "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
_V6_NOT_PLOTTED = ("epoch", "x/lr0", "x/lr1", "x/lr2")


def plot_results(file: str | Path = "results.csv", dir: str | Path = "") -> Path:
    """results.png next to results.csv: the 10 v6.0 panels, then one more row per 5 extra columns.

    Header names may carry v6.0's width-20 padding. Raises FileNotFoundError when no csv exists.
    """
    from utils.loggers import read_results_csv

    file = Path(dir) / "results.csv" if dir else Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found, nothing to plot")
    names, rows = read_results_csv(file)
    data = np.array(rows, dtype=np.float64).reshape(-1, len(names))
    x = data[:, names.index("epoch")] if "epoch" in names else np.arange(len(data))
    extra = [n for n in names if n not in RESULTS_PANELS and n not in _V6_NOT_PLOTTED]
    panels = list(RESULTS_PANELS) + extra
    nrow = 2 + math.ceil(len(extra) / 5)
    plt = mpl()
    fig, ax = plt.subplots(nrow, 5, figsize=(12, 3 * nrow), tight_layout=True)
    ax = ax.ravel()
    for a, name in zip(ax, panels):
        a.set_title(name, fontsize=12)
        if name in names:
            y = data[:, names.index(name)]
            a.plot(x, y, marker=".", label="results", linewidth=2, markersize=8)
    for a in ax[len(panels):]:
        a.axis("off")
    out = file.with_name("results.png")
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out


def _curve_figure(px, py, labels: list[str], mean_label, xlabel: str, ylabel: str, save_dir) -> None:
    """Shared body of the PR and metric-confidence plots: one thin line per class (legend when < 21
    classes, grey otherwise), the class mean in bold (mean_label(mean_curve) names it), saved at 250 dpi."""
    plt = mpl()
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    py = np.asarray(py).reshape(-1, len(px))
    if 0 < len(py) < 21:
        for y, label in zip(py, labels):
            ax.plot(px, y, linewidth=1, label=label)
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    if len(py):
        y = py.mean(0)
        ax.plot(px, y, linewidth=3, color="blue", label=mean_label(y))
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    fig.savefig(Path(save_dir), dpi=250)
    plt.close(fig)


def _class_name(names, i: int):
    return names[i] if i < len(names) else i


def plot_pr_curve(px, py, ap, save_dir: str | Path = "pr_curve.png", names=()) -> None:
    """Precision over recall per class (legend when < 21 classes) and the mean, mAP@0.5 in the legend.

    px (1000,) recall grid, py (nc, 1000) precision, ap (nc, k) with column 0 = IoU 0.5.
    """
    labels = [f"{_class_name(names, i)} {ap[i, 0]:.3f}" for i in range(len(ap))]
    _curve_figure(px, py, labels, lambda _: f"all classes {ap[:, 0].mean():.3f} mAP@0.5", "Recall", "Precision",
                  save_dir)


def plot_mc_curve(px, py, save_dir: str | Path = "mc_curve.png", names=(), xlabel: str = "Confidence",
                  ylabel: str = "Metric") -> None:
    """A metric (F1, P or R) over confidence px (1000,) per class py (nc, 1000), plus the class mean."""
    labels = [f"{_class_name(names, i)}" for i in range(len(np.asarray(py).reshape(-1, len(px))))]
    _curve_figure(px, py, labels, lambda y: f"all classes {y.max():.2f} at {px[y.argmax()]:.3f}", xlabel, ylabel,
                  save_dir)


def plot_confusion_matrix(matrix: np.ndarray, save_dir: str | Path = "", names=(), normalize: bool = True) -> Path:
    """confusion_matrix.png: columns = true class, rows = predicted, last = background (FP column, FN row).

    With normalize, each column is divided by its total (so a column shows where that class's labels went).
    """
    plt = mpl()
    nc = matrix.shape[0] - 1
    m = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-6) if normalize else 1)
    m = np.where(m < 0.005, np.nan, m)  # hide near-zero cells
    labelled = 0 < len(names) == nc and nc < 30
    fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if nc < 30:  # cell values, readable only for few classes
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=8)
    if labelled:  # true background holds the false positives, predicted background the misses
        ax.set_xticks(range(nc + 1), [*names, "background FP"], rotation=90)
        ax.set_yticks(range(nc + 1), [*names, "background FN"])
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    out = Path(save_dir) / "confusion_matrix.png"
    fig.savefig(out, dpi=250)
    plt.close(fig)
    return out


def save_one_box(xyxy, im: np.ndarray, file: str | Path = "image.jpg", gain: float = 1.02, pad: int = 10,
                 square: bool = False, BGR: bool = False, save: bool = True) -> np.ndarray:
    """Crop one box (xyxy pixels of im, HWC) enlarged by gain and pad; optionally saved (mkdir, no clash).

    im is BGR for BGR=True (returned as is), RGB otherwise (channels flipped for the JPEG writer).
    """
    xyxy = torch.as_tensor(np.asarray(xyxy, dtype=np.float32)).view(-1, 4)
    b = xyxy2xywh(xyxy)
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdim=True).values
    b[:, 2:] = b[:, 2:] * gain + pad
    xyxy = xywh2xyxy(b).long()
    clip_coords(xyxy, im.shape)
    x1, y1, x2, y2 = (int(v) for v in xyxy[0])
    crop = im[y1:y2, x1:x2, ::(1 if BGR else -1)]
    if save:
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        out, k = file, 2
        while out.exists():  # never overwrite an earlier crop of the same image
            out, k = file.with_name(f"{file.stem}{k}{file.suffix}"), k + 1
        cv2.imwrite(str(out), np.ascontiguousarray(crop))
    return crop


def plot_imitation_masks(images, targets, masks, fname: str | Path = "imitation_masks.jpg", strides=None,
                         max_images: int = 4) -> np.ndarray:
    """What FGFI imitates: one row per image, one column per feature level, positive cells tinted red.

    images (B, 3, H, W) RGB float in [0, 1] or uint8; targets (N, 6) [img_idx, cls, x, y, w, h]
    normalised (outlined in their class colour); masks: one (B, h_l, w_l) bool tensor per level
    (distill.imitation.imitation_mask), drawn over the whole image cell by cell (nearest neighbour).
    strides (optional) label the columns. Writes fname (JPEG) and returns the mosaic (RGB uint8).
    """
    images, targets = _to_numpy(images), _to_numpy(targets).reshape(-1, 6)
    if images.max(initial=0) <= 1:
        images = images * 255
    n, (h, w) = min(len(images), max_images), images.shape[2:]
    mosaic = np.full((n * h, len(masks) * w, 3), 255, dtype=np.uint8)
    for i in range(n):
        im = images[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)
        t = targets[targets[:, 0] == i]
        boxes = xywh2xyxy(t[:, 2:6].copy()) * np.array([w, h, w, h], dtype=np.float32)
        for level, m in enumerate(masks):
            cells = _to_numpy(m[i]).astype(np.uint8)  # (h_l, w_l)
            up = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            tile = im.copy()
            tile[up] = (0.5 * tile[up] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)  # RGB red tint
            ann = Annotator(tile, line_width=max(1, round(min(h, w) / 200)))
            for c, box in zip(t[:, 1], boxes):
                ann.rectangle(box, outline=colors(int(c)), width=ann.lw)
            name = f"P{level + 3}" if strides is None else f"stride {float(strides[level]):g}"
            ann.text((3, 3), f"{name}: {int(cells.sum())} cells")
            mosaic[i * h:(i + 1) * h, level * w:(level + 1) * w] = ann.result()
    cv2.imwrite(str(fname), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
    return mosaic
