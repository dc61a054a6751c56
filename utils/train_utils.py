"""Small steps of the training loop (utils/engine.py): fitness, class weights, multi-scale resizing,
image re-weighting and the pictures drawn during training."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.general import LOGGER
from utils.train_setup import labels_array


def fitness_of(results) -> float:
    from utils.metrics import fitness

    return float(fitness(np.array(results).reshape(1, -1))[0])


def class_weights(labels, nc: int) -> torch.Tensor:
    """Inverse class frequency weights (v6.0 labels_to_class_weights)."""
    if not len(labels) or not sum(len(x) for x in labels):
        return torch.ones(nc) / nc
    classes = np.concatenate(labels, 0)[:, 0].astype(int)
    weights = np.bincount(classes, minlength=nc).astype(float)
    weights[weights == 0] = 1
    weights = 1 / weights
    return torch.from_numpy(weights / weights.sum()).float()


def multi_scale(imgs: torch.Tensor, imgsz: int, gs: int) -> torch.Tensor:
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    return nn.functional.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def reweight_images(dataset, model, maps: np.ndarray, nc: int) -> None:
    """--image-weights: draw this epoch's images by class weight x (1 - class mAP)^2 (v6.0)."""
    from utils.torch_utils import de_parallel

    cw = de_parallel(model).class_weights.cpu().numpy() * (1 - maps) ** 2 / nc
    counts = np.array([np.bincount(x[:, 0].astype(int), minlength=nc) for x in dataset.labels]).reshape(-1, nc)
    iw = (cw.reshape(1, nc) * counts).sum(1) + 1e-9  # images without labels keep a tiny weight
    dataset.indices = random.choices(range(dataset.n), weights=iw, k=dataset.n)


def plot_label_stats(dataset, names, save_dir: Path) -> None:
    from utils.plots import plot_labels

    try:
        plot_labels(labels_array(dataset), names, save_dir)
    except Exception as e:  # noqa: BLE001  (a picture must never stop a run)
        LOGGER.warning(f"WARNING: labels.jpg not written: {e}")


def plot_train_batch(imgs, targets, paths, fname: Path) -> None:
    from utils.plots import plot_images

    try:
        plot_images(imgs, targets, paths, fname)
    except Exception as e:  # noqa: BLE001  (a picture must never stop a run)
        LOGGER.warning(f"WARNING: {fname.name} not written: {e}")
