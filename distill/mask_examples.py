"""Pictures of what fine-grained imitation imitates: the masks of a few training images, drawn at the start
of a KD run that uses the `imitation` loss (train_kd.py --save_mask_examples N, default 4)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from distill.imitation import model_imitation_masks
from utils.general import LOGGER


def imitation_psis(distiller) -> list[float]:
    """psi of every FineGrainedImitation loss of a Distiller (empty when the run has none)."""
    return [float(m.psi) for m in distiller.losses.values() if type(m).__name__ == "FineGrainedImitation"]


def save_mask_examples(model: nn.Module, train_path, imgsz: int, psi: float, n: int, fname: Path) -> Path | None:
    """Draw the imitation masks of the first n training images (letterboxed to imgsz, no augmentation)
    over the images, one column per level, into fname. A picture must never stop a run: failures warn."""
    from utils.data.datasets import LoadImagesAndLabels
    from utils.plots import plot_imitation_masks

    try:
        dataset = LoadImagesAndLabels(train_path, imgsz, batch_size=n, augment=False, prefix="imitation masks: ")
        imgs, targets, _, _ = LoadImagesAndLabels.collate_fn([dataset[i] for i in range(min(n, len(dataset)))])
        masks, strides = model_imitation_masks(model, targets, tuple(imgs.shape[2:]), len(imgs), psi=psi)
        plot_imitation_masks(imgs, targets, masks, fname, strides=strides.tolist(), max_images=n)
    except Exception as e:  # noqa: BLE001  (a failed picture is reported, the training goes on)
        LOGGER.warning(f"WARNING: imitation mask examples not written: {e}")
        return None
    LOGGER.info(f"imitation: masks of {len(imgs)} training images (psi {psi:g}) drawn in {fname}")
    return fname
