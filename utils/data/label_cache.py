"""Image/label discovery, label verification and the `*.cache` file (spec §2.2, §2.3).

Labels are rows `cls x_center y_center width height`, normalised to [0, 1]. Rows with more than 8
values are polygons `cls x1 y1 x2 y2 ...` (normalised) and become their min/max box.
Cache: a pickled dict saved with np.save, mapping im_file -> [labels (n,5) float32, shape (w, h),
segments list], plus 'hash', 'results' = (found, missing, empty, corrupt, total, duplicates_removed),
'msgs' and 'version'. Version 0.6: unlike v6.0 (0.5), duplicate rows are removed with a warning
instead of discarding the image; a wrong version or hash rebuilds the cache.
"""

from __future__ import annotations

import glob
import hashlib
import os
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from utils.boxes import segments2boxes
from utils.general import LOGGER, UserError

IMG_FORMATS = ("bmp", "jpg", "jpeg", "png", "tif", "tiff", "dng", "webp", "mpo")
VID_FORMATS = ("mov", "avi", "mp4", "mpg", "mpeg", "m4v", "wmv", "mkv")
CACHE_VERSION = 0.6
NUM_THREADS = min(8, os.cpu_count() or 1)


def img2label_paths(img_paths: list[str]) -> list[str]:
    """/a/images/b/c.jpg -> /a/labels/b/c.txt (the LAST '/images/' is replaced, suffix -> .txt)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def get_image_files(path: str | Path | list, prefix: str = "") -> list[str]:
    """Image files from a dir (recursive), a *.txt list (lines './x' are relative to the txt), or a list.

    Sorted, filtered by IMG_FORMATS (case-insensitive). UserError for a missing path or no images.
    """
    files: list[str] = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if p.is_dir():
            files += glob.glob(str(p / "**" / "*.*"), recursive=True)
        elif p.is_file():
            parent = str(p.parent) + os.sep
            lines = [x.strip() for x in p.read_text(errors="ignore").splitlines() if x.strip()]
            files += [parent + x[2:] if x.startswith("./") else x for x in lines]
        else:
            raise UserError(f"{prefix}image path {p} does not exist (expected a directory or a *.txt list)")
    im_files = sorted(x.replace("/", os.sep) for x in files if x.rsplit(".", 1)[-1].lower() in IMG_FORMATS)
    if not im_files:
        raise UserError(f"{prefix}no images found in {path} (supported suffixes: {', '.join(IMG_FORMATS)})")
    return im_files


def get_hash(paths: list[str]) -> str:
    """md5 of the total byte size of the existing files, then of the concatenated paths (v6.0 recipe)."""
    size = sum(os.path.getsize(p) for p in paths if os.path.exists(p))
    h = hashlib.md5(str(size).encode())
    h.update("".join(paths).encode())
    return h.hexdigest()


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(w, h) after the EXIF orientation is applied (orientations 6 and 8 swap the sides)."""
    w, h = img.size
    try:
        if img.getexif().get(274) in (6, 8):
            w, h = h, w
    except (AttributeError, KeyError, OSError, ValueError):  # broken EXIF must not make the image unusable
        pass
    return w, h


def _check_image(im_file: str) -> tuple[tuple[int, int], str]:
    """Verify an image; returns ((w, h), warning). Raises ValueError/OSError for a corrupt image."""
    with Image.open(im_file) as im:
        im.verify()
    with Image.open(im_file) as im:  # verify() invalidates the object, so reopen
        shape, fmt = exif_size(im), (im.format or "").lower()
    if shape[0] < 10 or shape[1] < 10:
        raise ValueError(f"image size {shape} < 10 pixels")
    if fmt not in IMG_FORMATS:
        raise ValueError(f"invalid image format {fmt}")
    msg = ""
    if fmt in ("jpg", "jpeg"):
        with open(im_file, "rb") as f:
            f.seek(-2, 2)
            if f.read() != b"\xff\xd9":  # truncated JPEG: re-save it whole (v6.0 behaviour)
                ImageOps.exif_transpose(Image.open(im_file)).save(im_file, "JPEG", subsampling=0, quality=100)
                msg = f"WARNING: {im_file}: corrupt JPEG restored and saved"
    return shape, msg


def parse_label_rows(lb_file: str) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Read one label file -> (labels (n,5) float32 cls-xywh normalised, segments, duplicates removed).

    Raises ValueError with the line number for a malformed row (wrong column count, non-numeric,
    negative, coordinates > 1, non-integer class).
    """
    rows, segments, any_poly = [], [], False
    with open(lb_file, errors="ignore") as f:
        lines = [(i + 1, ln.split()) for i, ln in enumerate(f.read().splitlines()) if ln.strip()]
    for n, x in lines:
        if len(x) != 5 and len(x) <= 8:
            raise ValueError(f"line {n}: {len(x)} values, expected 5 (class x y w h) or a polygon")
        try:
            v = np.array(x, dtype=np.float32)
        except ValueError:
            raise ValueError(f"line {n}: non-numeric value in {' '.join(x)!r}") from None
        if not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"line {n}: negative or non-finite value in {' '.join(x)!r}")
        if (v[1:] > 1).any():
            raise ValueError(f"line {n}: coordinates must be normalised to [0, 1], got {' '.join(x[1:])!r}")
        if v[0] != int(v[0]):
            raise ValueError(f"line {n}: class {x[0]!r} is not an integer")
        if len(x) > 8:
            any_poly = True
            segments.append(v[1:].reshape(-1, 2))
            rows.append(np.concatenate(([v[0]], segments2boxes([segments[-1]])[0])))
        else:
            segments.append(None)
            rows.append(v)
    lb = np.array(rows, dtype=np.float32).reshape(-1, 5)
    segs = [s if s is not None else _box_polygon(r) for s, r in zip(segments, lb)] if any_poly else []
    _, keep = np.unique(lb, axis=0, return_index=True)
    dup = len(lb) - len(keep)
    if dup:
        keep = np.sort(keep)
        lb = lb[keep]
        segs = [segs[i] for i in keep] if segs else []
    return lb, segs, dup


def _box_polygon(r: np.ndarray) -> np.ndarray:
    """A box row (cls x y w h) as a 4-point polygon, so box rows can live next to polygon rows."""
    x, y, w, h = r[1:]
    return np.array([[x - w / 2, y - h / 2], [x + w / 2, y - h / 2], [x + w / 2, y + h / 2], [x - w / 2, y + h / 2]],
                    dtype=np.float32)


def verify_image_label(args: tuple[str, str, str]) -> list:
    """Check one image/label pair -> [im_file|None, labels, shape, segments, nm, nf, ne, nc, nd, msg]."""
    im_file, lb_file, _prefix = args
    nm = nf = ne = nd = 0
    segments: list = []
    if not os.path.isfile(im_file):  # listed (e.g. in train.txt) but gone: missing, not corrupt
        return [None, None, None, None, nm, nf, ne, 1, nd, f"WARNING: {im_file}: ignoring a listed image that "
                "does not exist (remove it from the list file or restore the image)"]
    try:
        shape, msg = _check_image(im_file)
        if os.path.isfile(lb_file):
            nf = 1
            try:
                lb, segments, nd = parse_label_rows(lb_file)
            except ValueError as e:
                raise ValueError(f"{lb_file} {e}") from None  # name the label file and line
            if nd:
                msg = f"WARNING: {lb_file}: {nd} duplicate row(s) removed"
            ne = int(len(lb) == 0)
        else:
            nm, lb = 1, np.zeros((0, 5), dtype=np.float32)
        return [im_file, lb, shape, segments, nm, nf, ne, 0, nd, msg]
    except Exception as e:  # any failure marks just this pair as corrupt
        return [None, None, None, None, nm, nf, ne, 1, nd, f"WARNING: {im_file}: ignoring corrupt image/label: {e}"]


def cache_path_for(path: str | Path | list, label_files: list[str]) -> Path:
    """train.txt -> train.cache; a directory of images -> <first label dir>.cache (v6.0 rule)."""
    p = Path(path[-1] if isinstance(path, (list, tuple)) else path)
    return (p if p.is_file() else Path(label_files[0]).parent).with_suffix(".cache")


def load_cache(cache_path: Path, files: list[str]) -> dict | None:
    """The cache dict if it exists and matches version and hash, else None."""
    try:
        cache = np.load(cache_path, allow_pickle=True).item()
    except Exception:  # missing, truncated or foreign file: rebuild
        return None
    if cache.get("version") != CACHE_VERSION or cache.get("hash") != get_hash(files):
        return None
    return cache


def build_cache(im_files: list[str], label_files: list[str], cache_path: Path, prefix: str = "") -> dict:
    """Verify every pair (threads, tqdm bar) and save the cache next to the labels."""
    x: dict = {}
    nm = nf = ne = nc = nd = 0
    msgs: list[str] = []
    desc = f"{prefix}Scanning '{cache_path.parent / cache_path.stem}' images and labels..."
    with ThreadPool(NUM_THREADS) as pool:
        it = pool.imap(verify_image_label, [(a, b, prefix) for a, b in zip(im_files, label_files)])
        pbar = tqdm(it, desc=desc, total=len(im_files), leave=False, disable=None)  # None: off when not a TTY
        for im_file, lb, shape, segments, nm_f, nf_f, ne_f, nc_f, nd_f, msg in pbar:
            nm, nf, ne, nc, nd = nm + nm_f, nf + nf_f, ne + ne_f, nc + nc_f, nd + nd_f
            if im_file:
                x[im_file] = [lb, shape, segments]
            if msg:
                msgs.append(msg)
            pbar.set_description(f"{desc} {nf} found, {nm} missing, {ne} empty, {nc} corrupt", refresh=False)
        pbar.close()
    x.update(hash=get_hash(label_files + im_files), results=(nf, nm, ne, nc, len(im_files), nd),
             msgs=msgs, version=CACHE_VERSION)
    try:
        # written under a name of this process's own, then renamed: a reader never sees a half-written cache,
        # and two processes caching the same labels at once (two runs on a new dataset) do not mix bytes
        tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.npy")
        np.save(tmp, x)
        os.replace(tmp, cache_path)
    except OSError as e:
        LOGGER.warning(f"{prefix}WARNING: cache directory {cache_path.parent} is not writeable: {e}")
    return x


def report(cache: dict, cache_path: Path, prefix: str = "", found_cache: bool = False) -> None:
    """One summary line, plus one warning with a few examples when files were skipped or fixed."""
    nf, nm, ne, nc, _, nd = cache["results"]
    src = f"cache '{cache_path}'" if found_cache else f"'{cache_path.parent / cache_path.stem}'"
    line = f"{prefix}Scanning {src} images and labels... {nf} found, {nm} missing, {ne} empty, {nc} corrupt"
    LOGGER.info(line + (f", {nd} duplicate label rows removed" if nd else ""))
    msgs = cache["msgs"]
    if msgs:
        more = f"\n  ... and {len(msgs) - 5} more" if len(msgs) > 5 else ""
        LOGGER.warning(f"{prefix}WARNING: {len(msgs)} image/label problem(s):\n  " + "\n  ".join(msgs[:5]) + more)
