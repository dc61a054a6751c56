"""Distillation on unlabeled images: the teacher supervises images nobody has labelled.

`unlabeled:` in the data yaml (or train_kd.py --unlabeled) names images without labels: a folder, a *.txt
list, or a list of those, as `train:`. The training loader then mixes them into every batch:

- UnlabeledImages scans them (corrupt ones skipped and counted, a cache beside the folder or list), drops
  the val/test images from them (so validation stays held out) and warns about train images among them and
  about label files next to them (ignored: such images belong under `train:`). They are augmented like
  training images: mosaic, mixup and copy-paste take their pieces from the same kind, so no training image
  holds labelled and unlabelled content together (the simple guarantee: a labelled image pasted into an
  unlabelled mosaic would bring objects without boxes into a picture that has boxes, and the loss would
  call them background).
- utils.data.dataloaders.MixedBatchSampler (create_dataloader given `unlabeled=`) makes an epoch one pass
  over the labelled images, each batch `ratio` unlabelled (at least one image of each kind); the unlabelled
  images come from an endless stream of reshuffled passes over them. Everything depends only on (seed,
  epoch, rank), so a resumed run and every DDP rank see what an uninterrupted run would.
- Batches carry a fifth item, the (bs,) bool mask of labelled images: the detection loss is about those
  only (utils.losses.detection_loss; objectness and the assigner's class targets masked per image), every
  distillation term sees every image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.datasets import LoadImagesAndLabels
from utils.data.label_cache import (
    build_cache,
    get_image_files,
    img2label_paths,
    load_cache,
)
from utils.general import LOGGER, UserError

DEFAULT_RATIO = 0.5  # fraction of each batch that is unlabelled (--unlabeled_ratio; bench/kd_unlabeled.sh)


def unlabeled_cache_path(path) -> Path:
    """list.txt -> list.unlabeled.cache; a folder -> <folder>.unlabeled.cache beside it."""
    p = Path(path[-1] if isinstance(path, (list, tuple)) else path)
    return p.with_suffix(".unlabeled.cache") if p.is_file() else p.parent / f"{p.name}.unlabeled.cache"


def _same_file_key(f: str) -> str:
    return os.path.normcase(os.path.realpath(f))


class UnlabeledImages(LoadImagesAndLabels):
    """Images without labels, augmented like training images (LoadImagesAndLabels with no labels).

    held_out: image files that must not be trained on (val, test): removed, with a warning and the count.
    labelled: the train image files: a warning with the count when some are also listed as unlabelled
    (they are kept, and seen both with and without their labels)."""

    def __init__(self, path, img_size: int = 640, batch_size: int = 16, hyp: dict | None = None,
                 cache_images: bool | str = False, stride: int = 32, prefix: str = "",
                 held_out: list[str] | tuple = (), labelled: list[str] | tuple = ()) -> None:
        self._held_out, self._labelled = held_out, labelled
        super().__init__(path, img_size, batch_size, augment=True, hyp=hyp, cache_images=cache_images,
                         stride=stride, prefix=prefix)

    def _scan(self, path, prefix: str) -> dict:
        held = {_same_file_key(f) for f in self._held_out}
        keep = [f for f in self.im_files if _same_file_key(f) not in held]
        if len(keep) < len(self.im_files):
            LOGGER.warning(f"{prefix}WARNING: {len(self.im_files) - len(keep)} of the unlabeled images in {path} are "
                           "val/test images; they are left out so that validation stays held out")
        if not keep:
            raise UserError(f"{prefix}every image in {path} is a val/test image; name other images under "
                            "'unlabeled:' (or --unlabeled)")
        labelled = {_same_file_key(f) for f in self._labelled}
        both = sum(_same_file_key(f) in labelled for f in keep)
        if both:
            LOGGER.warning(f"{prefix}WARNING: {both} of the unlabeled images in {path} are also train images: they "
                           "are used both with their labels and without")
        with_labels = [lb for lb in img2label_paths(keep) if os.path.isfile(lb)]
        if with_labels:
            LOGGER.warning(f"{prefix}WARNING: {len(with_labels)} of the unlabeled images in {path} have a label file "
                           f"(e.g. {with_labels[0]}); it is ignored. Put labelled images under 'train:' to use "
                           "their labels")
        self.im_files = keep
        no_labels = [""] * len(keep)  # verify the images alone
        cache_path = unlabeled_cache_path(path)
        cache = load_cache(cache_path, no_labels + keep)
        if cache is None:
            cache = build_cache(keep, no_labels, cache_path, prefix)
        *_, corrupt, n, _ = cache["results"]
        msgs = cache["msgs"]
        for k in ("hash", "version", "msgs", "results"):
            cache.pop(k)
        LOGGER.info(f"{prefix}{len(cache)} unlabeled images in {path}" + (f", {corrupt} corrupt skipped" if corrupt
                                                                       else ""))
        if msgs:
            more = f"\n  ... and {len(msgs) - 5} more" if len(msgs) > 5 else ""
            LOGGER.warning(f"{prefix}WARNING: {len(msgs)} image problem(s):\n  " + "\n  ".join(msgs[:5]) + more)
        if not cache:
            raise UserError(f"{prefix}all {n} unlabeled images in {path} are corrupt; see the warnings above")
        self.label_files = img2label_paths(list(cache))
        return {f: [np.zeros((0, 5), dtype=np.float32), shape, []] for f, (_, shape, _) in cache.items()}


class MixedImages(Dataset):
    """Labelled images (indices 0..nl-1) then unlabelled ones (nl..nl+nu-1), each item with a fifth field:
    True for a labelled image. Each kind keeps its own mosaic and mixup (see the module docstring)."""

    def __init__(self, labelled: LoadImagesAndLabels, unlabeled: UnlabeledImages) -> None:
        self.labelled, self.unlabeled = labelled, unlabeled
        self.n_labelled, self.n_unlabeled = len(labelled), len(unlabeled)

    def __len__(self) -> int:
        return self.n_labelled + self.n_unlabeled

    def __getitem__(self, index):
        i, seed = index if isinstance(index, tuple) else (index, None)
        ds, j = (self.labelled, i) if i < self.n_labelled else (self.unlabeled, i - self.n_labelled)
        return (*ds[j if seed is None else (j, seed)], i < self.n_labelled)

    @staticmethod
    def collate_fn(batch):
        """LoadImagesAndLabels.collate_fn's (imgs, targets, paths, shapes) + the (bs,) bool labelled mask."""
        *items, flags = zip(*batch)
        return (*LoadImagesAndLabels.collate_fn(list(zip(*items))), torch.tensor(flags, dtype=torch.bool))


def unlabeled_source(opt, data_dict: dict, distils: bool) -> str | list | None:
    """The run's unlabeled images: --unlabeled (train_kd.py) or the data yaml's `unlabeled:`; None without
    them. train.py without a teacher says once that it cannot use them and returns None."""
    flag = getattr(opt, "unlabeled", None)
    src = flag or data_dict.get("unlabeled")
    if not src:
        return None
    where = "--unlabeled" if flag else f"'unlabeled:' of {data_dict.get('yaml_file') or 'the data yaml'}"
    if not distils:
        LOGGER.info(f"{where}: unlabeled images train a student only through a teacher's outputs; train.py trains "
                    "on the labelled images (train_kd.py --teacher_weight T.pt uses both)")
        return None
    srcs = src if isinstance(src, (list, tuple)) else [src]
    missing = [s for s in srcs if not Path(s).exists()]
    if missing:
        raise UserError(f"{where}: {', '.join(map(str, missing))} does not exist (a folder of images, a *.txt list "
                        "of them, or a list of those)")
    return list(srcs) if isinstance(src, (list, tuple)) else str(src)


def check_mixed_options(opt) -> None:
    """Flags whose batches cannot mix in unlabeled images: one line naming the flag."""
    for flag, on in (("--rect", opt.rect), ("--image-weights", opt.image_weights), ("--quad", opt.quad)):
        if on:
            raise UserError(f"{flag} cannot be combined with unlabeled images (batches mix labelled and unlabelled "
                            f"images by a fixed ratio); drop {flag} or the unlabeled images")


def held_out_files(data_dict: dict) -> list[str]:
    """The val and test image files of a checked data dict (left out of the unlabeled images)."""
    files: list[str] = []
    for k in ("val", "test"):
        if data_dict.get(k):
            try:
                files += get_image_files(data_dict[k])
            except UserError:  # a missing split is reported where it is loaded
                pass
    return files
