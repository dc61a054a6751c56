"""Offline, deterministic synthetic detection dataset ("shapes") for tests, CI and distillation runs.

Classes are filled shapes (circle, square, triangle, star, cross, ring, and hexagon, arrow for nc up to 8)
in random colours, rotations and mild aspect changes, from a few pixels to half the image. What makes
it hard: textured backgrounds (gradients, stripes, clouds, noise), unlabelled look-alike distractors
(ellipses, pentagons, rhombi, half-disks, outlines, lines), overlap/occlusion, border truncation,
blur, sensor noise and JPEG artefacts. Labels: `cls x y w h` normalised, box = visible pixels;
objects less than 30% visible are not labelled.
Every image is drawn from np.random.default_rng([seed, split, index]), so output is reproducible.
"""

from __future__ import annotations

import math
import os
import shutil
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np

from utils.general import UserError, yaml_save

CLASS_SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "arrow"]
DISTRACTOR_SHAPES = ["ellipse", "pentagon", "rhombus", "halfdisk", "hexagon", "arrow"]
MARKER = ".synthetic_shapes"  # marks a directory this module may overwrite
MIN_VISIBLE = 0.3  # label an object only if at least this fraction of it is visible


def _ngon(n: int, r: float = 1.0, start: float = -math.pi / 2) -> np.ndarray:
    t = start + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _unit_contours(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Contours of one shape in unit coordinates (about [-1, 1]); several contours make holes."""
    if name == "circle":
        return [_ngon(48)]
    if name == "square":
        return [_ngon(4, 1.25, math.pi / 4)]
    if name == "triangle":
        return [_ngon(3, 1.15) + rng.uniform(-0.08, 0.08, (3, 2))]
    if name == "star":
        pts = _ngon(10)
        pts[1::2] *= rng.uniform(0.38, 0.5)
        return [pts]
    if name == "cross":
        a = rng.uniform(0.25, 0.38)
        return [np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                          [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)]
    if name == "ring":
        return [_ngon(48), _ngon(48, rng.uniform(0.45, 0.68))]
    if name in ("hexagon", "pentagon"):
        return [_ngon(6 if name == "hexagon" else 5)]
    if name == "arrow":
        return [np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.75], [1, 0], [0.2, 0.75], [0.2, 0.3], [-1, 0.3]])]
    if name == "ellipse":
        return [_ngon(48) * [1, rng.uniform(0.3, 0.55)]]
    if name == "rhombus":
        return [np.array([[0, -1], [0.4, 0], [0, 1], [-0.4, 0]], dtype=np.float64)]
    if name == "halfdisk":
        t = np.linspace(0, math.pi, 25)
        return [np.stack([np.cos(t), np.sin(t) - 0.5], 1)]
    raise ValueError(f"unknown shape {name}")


def _place(contours: list[np.ndarray], rng: np.random.Generator, size: float, c: np.ndarray,
           aspect: float = 0.2) -> list[np.ndarray]:
    """Rotate, stretch (aspect up to 1+aspect), scale to `size` px (diameter) and move to centre c."""
    th = rng.uniform(0, 2 * math.pi)
    a = math.sqrt(rng.uniform(1, 1 + aspect))
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    stretch = np.diag([a, 1 / a]) if rng.random() < 0.5 else np.diag([1 / a, a])
    m = rot @ stretch * (size / 2)
    return [x @ m.T + c for x in contours]


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Blend of gradient, stripes and low-frequency 'clouds' -> (s, s, 3) float32 (noise comes later)."""
    v = np.arange(s, dtype=np.float32) / s
    xx, yy = v[None, :], v[:, None]  # broadcast instead of full grids (speed)
    th = rng.uniform(0, 2 * math.pi)
    ramp = np.float32(math.cos(th)) * xx + np.float32(math.sin(th)) * yy  # (s, s)
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    img = ramp[..., None] * (c2 - c1) + c1
    if rng.random() < 0.6:  # stripes at a random angle and frequency
        th2, f = rng.uniform(0, math.pi), rng.uniform(4, 30)
        phase = (np.float32(math.cos(th2) * f * 2 * math.pi) * xx + np.float32(math.sin(th2) * f * 2 * math.pi) * yy)
        amp = (rng.uniform(10, 60) * rng.choice([-1, 1], 3)).astype(np.float32)
        img += np.sin(phase)[..., None] * amp
    if rng.random() < 0.7:  # clouds: upsampled coarse noise
        g = int(rng.integers(3, 12))
        clouds = cv2.resize(rng.uniform(-1, 1, (g, g, 3)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
        img += clouds * np.float32(rng.uniform(20, 80))
    return img


def _paint(img: np.ndarray, ids: np.ndarray, contours: list[np.ndarray], colour: np.ndarray, oid: int,
           rng: np.random.Generator, outline: int = 0) -> None:
    """Anti-aliased fill (or outline) of contours into img (float) and id map ids, inside their ROI."""
    s = img.shape[0]
    allp = np.concatenate(contours)
    x0, y0 = np.floor(allp.min(0)).astype(int).clip(0, s)
    x1, y1 = np.ceil(allp.max(0)).astype(int).clip(0, s)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = [np.round((c - [x0, y0]) * 16).astype(np.int32) for c in contours]
    if outline:
        cv2.polylines(mask, pts, True, 255, outline, cv2.LINE_AA, 4)
    else:
        cv2.fillPoly(mask, pts, 255, cv2.LINE_AA, 4)
    alpha = mask.astype(np.float32)[..., None] / 255
    fill = np.broadcast_to(colour.astype(np.float32), alpha.shape[:2] + (3,))
    if rng.random() < 0.35:  # shading across the object so colour alone is not a cue
        ramp = np.linspace(rng.uniform(0.5, 1.0), rng.uniform(1.0, 1.4), fill.shape[1], dtype=np.float32)
        fill = fill * ramp[None, :, None]
    roi = img[y0:y1, x0:x1]
    roi *= 1 - alpha
    roi += alpha * fill
    ids[y0:y1, x0:x1][mask > 127] = oid


def render_image(rng: np.random.Generator, img_size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image -> (BGR uint8 (s,s,3), labels (n,5) float32 [cls, x, y, w, h] normalised)."""
    s = img_size
    img = _background(rng, s)
    ids = np.zeros((s, s), np.uint8)  # 0 background, 1..n objects, 255 distractors
    distractors = [d for d in DISTRACTOR_SHAPES if d not in classes]
    n_obj, n_dis = int(rng.integers(1, 13)), int(rng.integers(0, 9))
    kinds = [1] * n_obj + [0] * n_dis
    rng.shuffle(kinds)  # random draw order makes objects and distractors occlude each other
    objects = []  # (class index, unit-free area)
    lo, hi = math.log(max(5.0, 0.02 * s)), math.log(0.5 * s)
    for labelled in kinds:
        size = math.exp(rng.uniform(lo, hi)) if rng.random() < 0.8 else rng.uniform(0.25, 0.5) * s
        margin = size / 2 if rng.random() < 0.85 else 0.0  # some objects cut by the border
        c = rng.uniform(margin, s - margin, 2) if s > 2 * margin else np.array([s / 2, s / 2])
        colour = rng.uniform(0, 255, 3)
        if labelled:
            k = int(rng.integers(len(classes)))
            cont = _place(_unit_contours(classes[k], rng), rng, size, c)
            area = abs(cv2.contourArea(cont[0].astype(np.float32))) - sum(
                abs(cv2.contourArea(x.astype(np.float32))) for x in cont[1:])
            objects.append((k, area))
            _paint(img, ids, cont, colour, len(objects), rng)
        else:
            _draw_distractor(img, ids, rng, distractors, size, c, colour)
    labels = []
    for oid, (k, area) in enumerate(objects, 1):
        ys, xs = np.nonzero(ids == oid)
        if len(xs) < max(MIN_VISIBLE * area, 4):
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append([k, (x0 + x1) / 2 / s, (y0 + y1) / 2 / s, (x1 - x0) / s, (y1 - y0) / s])
    _finish(img, rng)
    return img.clip(0, 255).astype(np.uint8), np.array(labels, dtype=np.float32).reshape(-1, 5)


def _draw_distractor(img, ids, rng, pool, size, c, colour) -> None:
    r = rng.random()
    if r < 0.2:  # a line or a scribble
        p = c + rng.uniform(-size, size, (int(rng.integers(2, 5)), 2))
        mask = np.zeros(ids.shape, np.uint8)
        cv2.polylines(mask, [np.round(p * 16).astype(np.int32)], False, 255, int(rng.integers(1, 4)), cv2.LINE_AA, 4)
        a = mask.astype(np.float32)[..., None] / 255
        img *= 1 - a
        img += a * colour.astype(np.float32)
        ids[mask > 127] = 255
    elif r < 0.35:  # outline of a class-like polygon: hollow, so not the filled class
        cont = _place([_ngon(int(rng.integers(3, 5)))], rng, size, c)
        _paint(img, ids, cont, colour, 255, rng, outline=int(rng.integers(1, 3)))
    else:
        name = pool[int(rng.integers(len(pool)))]
        _paint(img, ids, _place(_unit_contours(name, rng), rng, size, c), colour, 255, rng)


def _finish(img: np.ndarray, rng: np.random.Generator) -> None:
    """Global lighting, blur and sensor noise, in place on the float image."""
    if rng.random() < 0.4:
        img *= np.float32(rng.uniform(0.5, 1.2))
    if rng.random() < 0.3:
        k = int(rng.choice([3, 5]))
        cv2.GaussianBlur(img, (k, k), 0, dst=img)
    img += rng.standard_normal(img.shape[:2] + (1,), dtype=np.float32) * np.float32(rng.uniform(2, 16))


def _write_one(args: tuple) -> None:
    im_dir, lb_dir, split_id, i, img_size, classes, seed = args
    rng = np.random.default_rng([seed, split_id, i])
    im, lb = render_image(rng, img_size, classes)
    q = int(rng.integers(60, 96))
    _, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])
    (im_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
    rows = "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in lb)
    (lb_dir / f"{i:06d}.txt").write_text(rows)


def _write_split(root: Path, split: str, split_id: int, n: int, img_size: int, classes: list[str], seed: int) -> None:
    """Render n images; threads are safe because each image has its own generator (numpy/cv2 drop the GIL)."""
    im_dir, lb_dir = root / "images" / split, root / "labels" / split
    im_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(im_dir, lb_dir, split_id, i, img_size, classes, seed) for i in range(n)]
    with ThreadPool(min(8, os.cpu_count() or 1)) as pool:
        pool.map(_write_one, jobs, chunksize=8)


def build_synthetic_dataset(root: str | Path, n_train: int, n_val: int, img_size: int = 320, nc: int = 6,
                            seed: int = 0, names: list[str] | None = None) -> Path:
    """Write root/images/{train,val}/*.jpg, root/labels/{train,val}/*.txt and root/data.yaml; return the yaml.

    Deterministic for a given (seed, sizes, nc). An existing non-empty root is only overwritten if this
    function created it (marker file); otherwise a UserError protects the user's files.
    """
    if not 1 <= nc <= len(CLASS_SHAPES):
        raise UserError(f"synthetic dataset: nc must be 1..{len(CLASS_SHAPES)}, got {nc}")
    classes = CLASS_SHAPES[:nc]
    names = list(names) if names is not None else classes
    if len(names) != nc:
        raise UserError(f"synthetic dataset: {len(names)} names given for nc={nc}")
    root = Path(root).resolve()
    existed = root.exists() and any(root.iterdir())
    if existed:
        if not (root / MARKER).exists():
            raise UserError(f"{root} exists and was not made by build_synthetic_dataset; choose an empty directory")
        for d in ("images", "labels"):
            shutil.rmtree(root / d, ignore_errors=True)
    # build aside, then rename: no half-built dataset; the folder is this process's own, so that two
    # processes starting on a missing dataset at once (two trainings, parallel tests) do not mix their files
    tmp = root.with_name(f"{root.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / MARKER).write_text("made by utils.data.synthetic.build_synthetic_dataset\n")
    _write_split(tmp, "train", 0, n_train, img_size, classes, seed)
    _write_split(tmp, "val", 1, n_val, img_size, classes, seed)
    yaml_save(tmp / "data.yaml", {"path": str(root), "train": "images/train", "val": "images/val", "test": None,
                                  "nc": nc, "names": names})
    if not existed and (root / "data.yaml").exists():  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)  # same seed and sizes, same files: keep theirs, in use already
    elif root.exists():
        for p in tmp.iterdir():
            shutil.rmtree(root / p.name, ignore_errors=True) if (root / p.name).is_dir() else None
            p.replace(root / p.name)
        tmp.rmdir()
    else:
        try:
            tmp.replace(root)
        except OSError:  # another process renamed its finished build to root a moment before this one
            if not (root / "data.yaml").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "data.yaml"
