"""Training/validation dataset and dataloader (spec §9), plus re-exports of the detect.py loaders.

Labels are (n, 5) float32 [cls, x, y, w, h] normalised to the image. Batches are
(imgs uint8 (B,3,H,W) RGB, targets float32 (N,6) [img_idx, cls, x, y, w, h] normalised, paths, shapes).
"""

from __future__ import annotations

import random
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.boxes import xyn2xy, xywhn2xyxy, xyxy2xywhn
from utils.data.augmentations import (
    Albumentations,
    augment_hsv,
    copy_paste,
    letterbox,
    mixup,
    random_perspective,
)
from utils.data.image_loaders import LoadImages, LoadStreams  # noqa: F401 (public API of utils.data.datasets)
from utils.data.label_cache import (  # noqa: F401
    IMG_FORMATS,
    NUM_THREADS,
    VID_FORMATS,
    build_cache,
    cache_path_for,
    get_hash,
    get_image_files,
    img2label_paths,
    load_cache,
    report,
)
from utils.general import LOGGER, UserError

# v6.0 hyp.scratch augmentation values, used for keys a hyp dict does not give
DEFAULT_AUG_HYP = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, shear=0.0,
                       perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0, copy_paste=0.0)
# The checks of those keys (rule format: utils/losses/yolov5.py HYP_KEYS; gathered by engine/options.py).
HYP_KEYS: dict[str, tuple] = {
    "hsv_h": (0, 1, False, False, False, "fraction"),
    "hsv_s": (0, 1, False, False, False, "fraction"),
    "hsv_v": (0, 1, False, False, False, "fraction"),
    "degrees": (0, 180, False, False, False, "rotation in degrees"),
    "translate": (0, 1, False, True, False, "fraction of the image size"),
    "scale": (0, 1, False, True, False, "scale gain; 1 would allow zero-size images"),
    "shear": (0, 90, False, True, False, "shear in degrees"),
    "perspective": (0, 0.1, False, False, False, "keep within 0-0.001"),
    "flipud": (0, 1, False, False, False, "probability"),
    "fliplr": (0, 1, False, False, False, "probability"),
    "mosaic": (0, 1, False, False, False, "probability"),
    "mixup": (0, 1, False, False, False, "probability"),
    "copy_paste": (0, 1, False, False, False, "probability"),
}


class LoadImagesAndLabels(Dataset):
    """Images + YOLO labels with verification, a label cache, image caching, mosaic and augmentation.

    Attributes: im_files, label_files, labels (list of (n,5) [cls,x,y,w,h] normalised), shapes (N,2)
    original (w, h), segments, n, indices, batch_shapes (rect only, (nb,2) (h, w)), batch.
    """

    def __init__(self, path, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, image_weights: bool = False,
                 cache_images: bool | str = False, single_cls: bool = False, stride: int = 32,
                 pad: float = 0.0, prefix: str = "") -> None:
        self.img_size, self.augment, self.stride = img_size, augment, stride
        self.hyp = {**DEFAULT_AUG_HYP, **(hyp or {})}
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        self.mosaic = self.augment and not self.rect  # mosaic needs square batches
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.path = path
        self.albumentations = Albumentations() if augment else None

        self.im_files = get_image_files(path, prefix)
        cache = self._scan(path, prefix)
        labels, shapes, self.segments = zip(*cache.values())
        self.labels = [np.asarray(lb, dtype=np.float32) for lb in labels]
        self.shapes = np.array(shapes, dtype=np.float64)
        self.im_files = list(cache.keys())  # only the usable images
        self.label_files = img2label_paths(self.im_files)
        self.segments = list(self.segments)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.n = len(self.shapes)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)  # batch index of each image
        self.indices = list(range(self.n))
        if self.rect:
            self._init_rect(batch_size, pad)
        self.ims: list = [None] * self.n
        self.im_hw0: list = [None] * self.n
        self.im_hw: list = [None] * self.n
        if cache_images:
            self._cache_images(cache_images, prefix)

    def _scan(self, path, prefix: str) -> dict:
        """{image file: [labels, (w, h), segments]} of the usable images of self.im_files, from the label
        cache next to the labels (built when missing or stale); the scan is reported in one line."""
        self.label_files = img2label_paths(self.im_files)
        cache_path = cache_path_for(path, self.label_files)
        cache = load_cache(cache_path, self.label_files + self.im_files)
        found = cache is not None
        if not found:
            cache = build_cache(self.im_files, self.label_files, cache_path, prefix)
        report(cache, cache_path, prefix, found_cache=found)
        nf, *_, n, _ = cache["results"]  # found, missing, empty, corrupt, total, dups
        if nf == 0 and self.augment:
            raise UserError(f"{prefix}no labels found next to {path} (labels go in .../labels/ beside .../images/)")
        for k in ("hash", "version", "msgs", "results"):
            cache.pop(k)
        if not cache:
            raise UserError(f"{prefix}all {n} images in {path} are corrupt; see the warnings above")
        return cache

    def _init_rect(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio h/w and give each batch the smallest stride-multiple (h, w) shape."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]
        irect = ar.argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in irect]
        self.label_files = [self.label_files[i] for i in irect]
        self.labels = [self.labels[i] for i in irect]
        self.segments = [self.segments[i] for i in irect]
        self.shapes, ar = self.shapes[irect], ar[irect]
        nb = self.batch[-1] + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        self.batch_shapes = np.ceil(shapes * self.img_size / self.stride + pad).astype(int) * self.stride

    def _cache_images(self, how: bool | str, prefix: str) -> None:
        """'ram' (or True): keep resized images in memory; 'disk': save decoded originals as .npy."""
        disk = how == "disk"
        fn = self._save_npy if disk else self.load_image
        gb = 0
        with ThreadPool(NUM_THREADS) as pool:
            for i, x in enumerate(pool.imap(fn, range(self.n))):
                if disk:
                    gb += x
                else:
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = x
                    gb += self.ims[i].nbytes
        LOGGER.info(f"{prefix}Cached {self.n} images ({gb / 1e9:.2f}GB {'disk' if disk else 'ram'})")

    def _npy_path(self, i: int) -> Path:
        f = Path(self.im_files[i])
        return Path(f.parent.as_posix() + "_npy") / (f.stem + ".npy")

    def _save_npy(self, i: int) -> int:
        f = self._npy_path(i)
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, self._read(i))
        return f.stat().st_size

    def _read(self, i: int) -> np.ndarray:
        f = self.im_files[i]
        npy = self._npy_path(i)
        im = np.load(npy) if npy.exists() else cv2.imread(f)  # BGR
        if im is None:
            raise UserError(f"image not readable: {f}")
        return im

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """-> (BGR image with long side = img_size, (h0, w0) original, (h, w) resized)."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:  # INTER_AREA shrinks without aliasing; augmentation prefers the faster linear
            interp = cv2.INTER_AREA if r < 1 and not self.augment else cv2.INTER_LINEAR
            im = cv2.resize(im, (int(w0 * r), int(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def __len__(self) -> int:
        return len(self.im_files)

    def __getitem__(self, index: int | tuple[int, int]):
        """-> (img uint8 (3,H,W) RGB tensor, labels (nl,6) [0, cls, x, y, w, h] normalised, path, shapes).

        `index` may be an (index, sample_seed) pair from EpochSampler: the augmentation of this sample is
        then drawn from `random`/`np.random` seeded with sample_seed, whichever worker runs it."""
        if isinstance(index, tuple):
            index, sample_seed = index
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
        index = self.indices[index]  # image_weights may remap
        hyp = self.hyp
        if self.mosaic and random.random() < hyp["mosaic"]:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp["mixup"]:
                img, labels = mixup(img, labels, *self.load_mosaic(random.randint(0, self.n - 1)))
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)  # for COCO mAP rescaling
            labels = self.labels[index].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp["degrees"], translate=hyp["translate"],
                                                 scale=hyp["scale"], shear=hyp["shear"],
                                                 perspective=hyp["perspective"])
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            img, labels = self._augment(img, labels)
            nl = len(labels)
        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    def _augment(self, img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Albumentations (if installed), HSV and flips on normalised xywh labels."""
        hyp = self.hyp
        img, labels = self.albumentations(img, labels)
        augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])
        if random.random() < hyp["flipud"]:
            img = np.flipud(img)
            if len(labels):
                labels[:, 2] = 1 - labels[:, 2]
        if random.random() < hyp["fliplr"]:
            img = np.fliplr(img)
            if len(labels):
                labels[:, 1] = 1 - labels[:, 1]
        return img, labels

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4 images around a random centre on a 2s x 2s canvas, then random_perspective down to s x s.

        Returns (img (s,s,3) BGR, labels (n,5) [cls, x1, y1, x2, y2] pixels).
        """
        s = self.img_size
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        random.shuffle(indices)
        img4 = np.full((s * 2, s * 2, 3), 114, dtype=np.uint8)
        labels4, segments4 = [], []
        for i, idx in enumerate(indices):
            img, _, (h, w) = self.load_image(idx)
            if i == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif i == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif i == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            padw, padh = x1a - x1b, y1a - y1b
            labels = self.labels[idx].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
            labels4.append(labels)
            segments4 += [xyn2xy(x, w, h, padw, padh) for x in self.segments[idx]]
        labels4 = np.concatenate(labels4, 0)
        for x in (labels4[:, 1:], *segments4):
            np.clip(x, 0, 2 * s, out=x)
        hyp = self.hyp
        img4, labels4, segments4 = copy_paste(img4, labels4, segments4, p=hyp["copy_paste"])
        return random_perspective(img4, labels4, segments4, degrees=hyp["degrees"], translate=hyp["translate"],
                                  scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"],
                                  border=self.mosaic_border)

    def check_classes(self, nc: int, data_file: str | Path = "") -> None:
        """Raise a UserError naming the label file and line of the first class id >= nc."""
        for lb, f in zip(self.labels, self.label_files):
            if len(lb) and lb[:, 0].max() >= nc:
                line, c = _find_class_line(f, nc)
                src = f" of {data_file}" if data_file else ""
                raise UserError(f"{f} line {line}: class {c} exceeds nc={nc}{src}; classes must be 0..{nc - 1}. "
                                f"Fix the label file or nc/names in the data yaml")

    @staticmethod
    def collate_fn(batch):
        """Stack images; targets (N,6) [img_idx, cls, x, y, w, h] with img_idx written per image."""
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes

    @staticmethod
    def collate_fn4(batch):
        """Quad collate: each group of 4 images becomes one 2x image (upsampled first image, or a 2x2 tile).

        Tile order: [0 top-left, 1 bottom-left, 2 top-right, 3 bottom-right]; labels are shifted by
        the tile offset and halved. Paths/shapes keep the first n entries (v6.0 behaviour).
        """
        im, label, path, shapes = zip(*batch)
        n = len(shapes) // 4
        im4, label4 = [], []
        dy = torch.tensor([[0.0, 0, 0, 1, 0, 0]])  # one tile down
        dx = torch.tensor([[0.0, 0, 1, 0, 0, 0]])  # one tile right
        half = torch.tensor([[1.0, 1, 0.5, 0.5, 0.5, 0.5]])
        for i in range(0, 4 * n, 4):
            if random.random() < 0.5:
                up = torch.nn.functional.interpolate(im[i][None].float(), scale_factor=2.0, mode="bilinear",
                                                     align_corners=False)
                im4.append(up[0].round().clamp(0, 255).to(im[i].dtype))
                label4.append(label[i])
            else:
                cols = torch.cat((im[i], im[i + 1]), 1), torch.cat((im[i + 2], im[i + 3]), 1)  # (3, 2H, W) each
                im4.append(torch.cat(cols, 2))  # (3, 2H, 2W)
                label4.append(torch.cat((label[i], label[i + 1] + dy, label[i + 2] + dx, label[i + 3] + dx + dy))
                              * half)
        for i, lb in enumerate(label4):
            lb[:, 0] = i
        return torch.stack(im4, 0), torch.cat(label4, 0), path[:n], shapes[:n]


def _find_class_line(label_file: str, nc: int) -> tuple[int, str]:
    with open(label_file, errors="ignore") as f:
        for n, ln in enumerate(f.read().splitlines(), 1):
            x = ln.split()
            if x and float(x[0]) >= nc:
                return n, x[0]
    return 0, "?"
