"""Small steps of the training loop (engine/trainer.py, engine/epoch.py): mosaic closing, fitness, class
weights, multi-scale resizing, image re-weighting, autocast and the pictures drawn during training."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.setup import labels_array
from utils.general import LOGGER

# Hyp key of closing the mosaic (rule format: utils/losses/yolov5.py HYP_KEYS; gathered by engine/options.py).
HYP_KEYS: dict[str, tuple] = {
    "close_mosaic": (0, None, False, False, True, "final epochs without mosaic/mixup/copy-paste, e.g. 10; 0 = none"),
}


def mosaic_closed(epoch: int, epochs: int, hyp: Mapping[str, Any]) -> bool:
    """hyp close_mosaic (v8 hyps: 10): the last that many epochs train without mosaic/mixup/copy-paste."""
    return epoch >= epochs - int(hyp.get("close_mosaic", 0))


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


def train_autocast(cuda: bool, bf16: bool = False) -> torch.autocast:
    """Mixed precision of the training forward: fp16 AMP on CUDA (v6.0; with GradScaler), bf16 on CPU with
    --bf16 (bf16 has float32's exponent range: no loss scaling). Weights, optimizer and the loss's sums
    stay float32 either way."""
    if cuda:
        return torch.autocast("cuda")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


class RunningMeans:
    """Epoch means of the logged loss terms, accumulated on the device (float64).

    Reading a CUDA tensor on the host waits for the GPU, so with sync_every_step=False the sums are read
    (means(), one transfer for all terms) only when due(): about once a second and at the epoch's end.
    A non-finite loss is remembered on the device and reported at the next read; on CUDA AMP's GradScaler
    skips such steps meanwhile, so no weight is changed by them. On CPU reading is free: every step."""

    def __init__(self, sync_every_step: bool, every_s: float = 1.0):
        self.sync_every_step, self.every_s = sync_every_step, every_s
        self.names: list[str] = []
        self.sums = self.bad = None
        self.n = 0
        self.synced, self.finite, self._values = False, True, []
        self._last = time.time()

    def add(self, out: dict, loss: torch.Tensor) -> None:
        if self.sums is None:
            self.names = [k for k in out if k != "loss"]
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=loss.device)
            self.bad = torch.zeros((), dtype=torch.bool, device=loss.device)
        self.sums += torch.stack([out[k].detach().reshape(()).to(torch.float64) for k in self.names])
        self.bad |= ~torch.isfinite(loss.detach()).all()
        self.n += 1
        self.synced = False
        if self.sync_every_step:
            self._read()

    def due(self, last: bool) -> bool:
        return self.sync_every_step or last or time.time() - self._last >= self.every_s

    def _read(self) -> None:
        values = torch.cat([self.sums, self.bad.to(torch.float64)[None]]).tolist()  # the one host sync
        self._values, self.finite, self.synced = values[:-1], not values[-1], True
        self._last = time.time()

    def means(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        if not self.synced:
            self._read()
        return {k: v / self.n for k, v in zip(self.names, self._values)}
