"""AutoAnchor (YOLOv5 v6.0): check how well the anchors fit the labels and re-fit them when they do not.

Dataset interface used here: dataset.shapes (N, 2) image (w, h) in pixels and dataset.labels, a list of
(n, 5) arrays [cls, x, y, w, h] normalised to the image. Anchor wh are in pixels of an imgsz-sized
input unless said otherwise; Detect.anchors stores them in grid units (pixels / stride).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.general import LOGGER, colorstr

PREFIX = colorstr("autoanchor: ")
BPR_MIN = 0.98  # below this best possible recall the anchors are re-fitted


def anchor_metrics(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(bpr, aat) of anchors (k, 2) for label sizes wh (n, 2), both in pixels.

    A label fits an anchor when neither side ratio (either way round) exceeds thr. bpr is the
    fraction of labels fitting at least one anchor; aat the mean number of fitting anchors per label.
    """
    x = _ratio_metric(np.asarray(wh, dtype=np.float64), np.asarray(anchors, dtype=np.float64))
    best = x.max(1)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def _ratio_metric(wh: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n, k) worst side ratio in (0, 1] of each label against each anchor; 1 is a perfect fit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = wh[:, None] / k[None]  # (n, k, 2)
        x = np.minimum(r, 1 / r).min(2)
    return np.nan_to_num(x, nan=0.0)  # zero-size labels fit nothing


def label_wh(dataset, imgsz: int, scale: np.ndarray | None = None) -> np.ndarray:
    """Label (w, h) in pixels once each image is resized so its long side is imgsz -> (n, 2).

    scale: optional (N, 1) per-image factor (check_anchors uses U(0.9, 1.1) as augmentation).
    """
    shapes = np.asarray(dataset.shapes, dtype=np.float64)
    if len(shapes) == 0:
        return np.zeros((0, 2))
    shapes = imgsz * shapes / shapes.max(1, keepdims=True)
    if scale is not None:
        shapes = shapes * scale
    rows = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(shapes, dataset.labels)]
    return np.concatenate(rows, 0) if rows else np.zeros((0, 2))


def check_anchors(dataset, model, thr: float = 4.0, imgsz: int = 640, gen: int = 1000, seed: int = 0) -> bool:
    """Log anchors/target and BPR; if BPR < 0.98, re-fit with kmean_anchors and keep the better set.

    New anchors are written into Detect.anchors (grid units) followed by check_anchor_order; the
    model yaml is not changed. Returns True when the anchors were replaced. Never raises for a
    poor dataset: too few labels leave the anchors as they are, with a warning.
    """
    # imported lazily so that utils stays importable on its own (models depends on utils)
    from models.yolo import check_anchor_order

    m = model.module.model[-1] if hasattr(model, "module") else model.model[-1]  # Detect
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.9, 1.1, size=(len(dataset.shapes), 1))  # augmentation-like size jitter
    wh = label_wh(dataset, imgsz, scale)
    if len(wh) == 0:
        LOGGER.warning(f"{PREFIX}WARNING: no labels found, keeping the current anchors")
        return False

    stride = torch.as_tensor(m.stride, dtype=torch.float32).cpu().view(-1, 1, 1)
    current = (m.anchors.detach().float().cpu() * stride).view(-1, 2).numpy()  # pixels
    bpr, aat = anchor_metrics(wh, current, thr)
    msg = f"{PREFIX}anchors/target = {aat:.2f}, Best Possible Recall (BPR) = {bpr:.4f}"
    if bpr >= BPR_MIN:
        LOGGER.info(f"{msg}, Current anchors are a good fit to dataset")
        return False

    LOGGER.info(f"{msg}. Attempting to improve anchors, please wait...")
    try:
        new = kmean_anchors(dataset, n=m.anchors.numel() // 2, img_size=imgsz, thr=thr, gen=gen,
                            verbose=False, seed=seed)
    except ValueError as e:
        LOGGER.warning(f"{PREFIX}WARNING: {e}; keeping the current anchors")
        return False
    new_bpr = anchor_metrics(wh, new, thr)[0]
    if new_bpr <= bpr:
        LOGGER.info(f"{PREFIX}Original anchors better than new anchors. Proceeding with original anchors.")
        return False
    new_t = torch.tensor(new, dtype=m.anchors.dtype, device=m.anchors.device).view_as(m.anchors)
    m.anchors[:] = new_t / stride.to(m.anchors.device, m.anchors.dtype)  # pixels -> grid units
    check_anchor_order(m)
    if isinstance(getattr(m, "anchor_grid", None), list):  # drop decode caches built from the old anchors
        m.grid = [torch.zeros(1)] * m.nl
        m.anchor_grid = [torch.zeros(1)] * m.nl
    LOGGER.info(f"{PREFIX}New anchors saved to model (BPR {new_bpr:.4f}). "
                "Update the model *.yaml to use these anchors in the future.")
    return True


def _kmeans(obs: np.ndarray, n: int, seed: int) -> np.ndarray:
    from scipy.cluster.vq import kmeans

    # scipy >= 1.15 names the generator argument `rng`; older releases call it `seed`
    key = "rng" if "rng" in inspect.signature(kmeans).parameters else "seed"
    k, _ = kmeans(obs, n, iter=30, **{key: seed})
    return k


def _load_dataset(path: str | Path):
    """A data yaml -> its training LoadImagesAndLabels (as v6.0's kmean_anchors('data.yaml'))."""
    from utils.data.config import check_dataset
    from utils.data.datasets import LoadImagesAndLabels

    data = check_dataset(path, autodownload=False)
    return LoadImagesAndLabels(data["train"], augment=True, rect=True)


def kmean_anchors(dataset, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True, seed: int = 0) -> np.ndarray:
    """Fit n anchors (pixels, for img_size inputs) to the dataset labels: k-means, then a genetic search.

    dataset: an object with .shapes/.labels (see module docstring) or a data yaml path.
    Returns an (n, 2) float array sorted by area, small to large. Raises ValueError when there are
    fewer usable labels (a side >= 2 px) than anchors. Deterministic for a given seed.
    """
    if isinstance(dataset, (str, Path)):
        dataset = _load_dataset(dataset)
    thr_x = 1 / thr
    wh0 = label_wh(dataset, img_size)  # no random scale here
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.warning(f"{PREFIX}WARNING: Extremely small objects found. {small} of {len(wh0)} labels are < 3 pixels in size.")
    wh = wh0[(wh0 >= 2.0).any(1)]
    if len(wh) < n:
        raise ValueError(f"only {len(wh)} labels of at least 2 pixels, fewer than the {n} anchors to fit")

    def fitness(k: np.ndarray) -> float:
        best = _ratio_metric(wh, k).max(1)
        return float((best * (best > thr_x)).mean())

    LOGGER.info(f"{PREFIX}Running kmeans for {n} anchors on {len(wh)} points...")
    s = wh.std(0)
    s[s == 0] = 1.0  # identical sides: nothing to whiten
    k = _kmeans(wh / s, n, seed) * s
    if len(k) != n:  # scipy drops empty clusters, e.g. when there are fewer distinct sizes than n
        raise ValueError(f"kmeans found only {len(k)} distinct anchors of the {n} requested")
    _log_anchors(k, wh0, thr_x, n, img_size)

    rng = np.random.default_rng(seed)
    f, mp, sigma = fitness(k), 0.9, 0.1  # fitness, mutation probability, mutation sigma
    desc = f"{PREFIX}Evolving anchors with Genetic Algorithm:"
    pbar = tqdm(range(gen), desc=desc, disable=gen == 0)
    for _ in pbar:
        v = np.ones(k.shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(k.shape) < mp) * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
            pbar.desc = f"{desc} fitness = {f:.4f}"
            if verbose:
                _log_anchors(k, wh0, thr_x, n, img_size)
    return _log_anchors(k, wh0, thr_x, n, img_size)


def _log_anchors(k: np.ndarray, wh0: np.ndarray, thr_x: float, n: int, img_size: int) -> np.ndarray:
    """Sort anchors by area, log their fit to all labels, return the sorted array."""
    k = k[np.argsort(k.prod(1))]
    x = _ratio_metric(wh0, k)
    best = x.max(1)
    bpr, aat = (best > thr_x).mean(), (x > thr_x).mean() * n
    past = x[x > thr_x].mean() if (x > thr_x).any() else 0.0
    LOGGER.info(f"{PREFIX}thr={thr_x:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr")
    LOGGER.info(f"{PREFIX}n={n}, img_size={img_size}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, "
                f"past_thr={past:.3f}-mean: " + ",  ".join(f"{round(a)},{round(b)}" for a, b in k))
    return k
