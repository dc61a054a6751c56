"""Image augmentations (v6.0 semantics, spec §9): letterbox, random_perspective, HSV, mixup, copy_paste.

Images are HWC BGR uint8 numpy arrays. Label arrays passed here are (n, 5) [cls, x1, y1, x2, y2] in
pixels unless a docstring says otherwise. Randomness comes from `random` and `np.random`, which
the dataloader seeds per worker.
"""

from __future__ import annotations

import math
import random

import cv2
import numpy as np

from utils.boxes import resample_segments, segment2box
from utils.general import LOGGER, colorstr


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = 640, color: tuple = (114, 114, 114),
              auto: bool = True, scaleFill: bool = False, scaleup: bool = True, stride: int = 32,
              ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to new_shape (h, w) -> (img, (rw, rh), (dw, dh)).

    auto pads only up to the next multiple of stride; scaleFill stretches without padding; scaleup=False
    never enlarges (val). (dw, dh) is the padding on ONE side (left, top), in pixels.
    """
    shape = im.shape[:2]  # (h, w)
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw, dh = dw / 2, dh / 2  # split the padding between both sides
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def _affine_matrix(im_shape: tuple[int, int], width: int, height: int, degrees: float, translate: float,
                   scale: float, shear: float, perspective: float) -> tuple[np.ndarray, float]:
    """M = T @ S @ R @ P @ C (3x3) and the zoom factor s (spec §9.4)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -im_shape[1] / 2, -im_shape[0] / 2  # move the centre to the origin
    P = np.eye(3)
    P[2, 0], P[2, 1] = random.uniform(-perspective, perspective), random.uniform(-perspective, perspective)
    R = np.eye(3)
    a, s = random.uniform(-degrees, degrees), random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height
    return T @ S @ R @ P @ C, s


def random_perspective(im: np.ndarray, targets: np.ndarray = (), segments: list = (), degrees: float = 10,
                       translate: float = 0.1, scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective. targets (n,5) [cls,x1,y1,x2,y2] pixels.

    Output size = input size + 2 * border (mosaic passes border = -s/2 to crop 2s -> s).
    """
    height = im.shape[0] + border[0] * 2
    width = im.shape[1] + border[1] * 2
    M, s = _affine_matrix(im.shape[:2], width, height, degrees, translate, scale, shear, perspective)
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=(114, 114, 114))
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=(114, 114, 114))
    n = len(targets)
    if not n:
        return im, np.zeros((0, 5), dtype=np.float32) if isinstance(targets, tuple) else targets
    use_segments = any(x.any() for x in segments) and len(segments) == n
    new = np.zeros((n, 4))
    if use_segments:  # boxes from the warped polygons are tighter than warped boxes
        for i, seg in enumerate(resample_segments(segments)):
            xy = np.ones((len(seg), 3))
            xy[:, :2] = seg
            xy = xy @ M.T
            xy = xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]
            new[i] = segment2box(xy, width, height)
    else:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    i = box_candidates(box1=targets[:, 1:5].T * s, box2=new.T, area_thr=0.01 if use_segments else 0.10)
    targets = targets[i]
    targets[:, 1:5] = new[i]
    return im, targets


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 20,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep boxes (4, n) xyxy that stay > wh_thr px, keep > area_thr of their area and aspect < ar_thr."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> None:
    """Random hue/saturation/value gains through lookup tables, in place on a BGR image."""
    if not (hgain or sgain or vgain):
        return
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)


def hist_equalize(im: np.ndarray, clahe: bool = True, bgr: bool = False) -> np.ndarray:
    """Equalise the luminance histogram (optionally CLAHE) of a BGR/RGB image."""
    yuv = cv2.cvtColor(im, cv2.COLOR_BGR2YUV if bgr else cv2.COLOR_RGB2YUV)
    if clahe:
        yuv[:, :, 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(yuv[:, :, 0])
    else:
        yuv[:, :, 0] = cv2.equalizeHist(yuv[:, :, 0])
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR if bgr else cv2.COLOR_YUV2RGB)


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with r ~ Beta(32, 32) and concatenate their labels."""
    r = np.random.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def _bbox_ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of box1 (4,) with each of box2 (n, 4), over box2's area (all xyxy)."""
    iw = (np.minimum(box1[2], box2[:, 2]) - np.maximum(box1[0], box2[:, 0])).clip(0)
    ih = (np.minimum(box1[3], box2[:, 3]) - np.maximum(box1[1], box2[:, 1])).clip(0)
    return iw * ih / ((box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1]) + eps)


def copy_paste(im: np.ndarray, labels: np.ndarray, segments: list, p: float = 0.5):
    """Paste horizontally flipped copies of segmented objects (v6.0 'Simple Copy-Paste'), in place.

    labels (n,5) [cls,x1,y1,x2,y2] pixels, segments polygons in pixels. Returns (im, labels, segments).
    """
    n = len(segments)
    if not (p and n):
        return im, labels, segments
    w = im.shape[1]
    mask = np.zeros(im.shape, np.uint8)
    for j in random.sample(range(n), k=round(p * n)):
        lab, seg = labels[j], segments[j]
        box = np.array([w - lab[3], lab[2], w - lab[1], lab[4]])
        if (_bbox_ioa(box, labels[:, 1:5]) < 0.30).all():  # the copy must not hide existing objects
            labels = np.concatenate((labels, [[lab[0], *box]]), 0)
            segments.append(np.concatenate((w - seg[:, 0:1], seg[:, 1:2]), 1))
            cv2.drawContours(mask, [segments[j].astype(np.int32)], -1, (255, 255, 255), cv2.FILLED)
    flipped = cv2.flip(im, 1)
    src = cv2.flip(mask, 1).astype(bool)
    im[src] = flipped[src]
    return im, labels, segments


class Albumentations:
    """Optional extra augmentations (only when the albumentations package is installed)."""

    def __init__(self) -> None:
        self.transform = None
        try:
            import albumentations as A
        except ImportError:
            return
        self.transform = A.Compose(
            [A.Blur(p=0.01), A.MedianBlur(p=0.01), A.ToGray(p=0.01), A.CLAHE(p=0.01)],
            bbox_params=A.BboxParams(format="yolo", label_fields=["class_labels"]))
        LOGGER.info(colorstr("albumentations: ") + "Blur, MedianBlur, ToGray, CLAHE at p=0.01")

    def __call__(self, im: np.ndarray, labels: np.ndarray, p: float = 1.0):
        """labels (n,5) [cls, x, y, w, h] normalised."""
        if self.transform and random.random() < p:
            new = self.transform(image=im, bboxes=labels[:, 1:], class_labels=labels[:, 0])
            im = new["image"]
            labels = np.array([[c, *b] for c, b in zip(new["class_labels"], new["bboxes"])]).reshape(-1, 5)
        return im, labels
