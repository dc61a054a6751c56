"""Dataset yaml handling (v6.0 keys: path, train, val, test, nc, names, download).

Differences from v6.0 (see spec §14):
- a relative `path:` (and relative train/val/test without `path:`) is tried relative to the current
  directory first (v6.0) and then relative to the yaml file; errors list every path tried;
- an http(s) `download:` URL is fetched only when autodownload=True AND the environment variable
  YOLOV5_DOWNLOAD=1 is set; otherwise a UserError names the URL and what to do. `bash ...` commands
  and Python source (exec'd with `yaml` bound to the data dict, as v6.0) run when autodownload=True.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
import zipfile
from pathlib import Path

from utils.general import LOGGER, ROOT, UserError, yaml_load

DOWNLOAD_ENV = "YOLOV5_DOWNLOAD"  # set to 1 to allow dataset downloads from the internet


def downloads_allowed() -> bool:
    """True only when the user opted in to network downloads (YOLOV5_DOWNLOAD=1)."""
    return os.getenv(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def download_urls(urls: str | list[str], dir: str | Path, unzip: bool = True) -> None:
    """Download files (and unzip .zip archives) into dir; refuses unless downloads_allowed().

    Used by the `download:` entries of data/*.yaml. Raises UserError naming the URLs when offline.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dir = Path(dir)
    if not downloads_allowed():
        raise UserError(
            f"dataset download needed from {', '.join(urls)} into {dir}, but downloads are off. "
            f"Set {DOWNLOAD_ENV}=1 to allow it, or download and unzip the files there yourself.")
    dir.mkdir(parents=True, exist_ok=True)
    for url in urls:
        f = dir / Path(url.split("?")[0]).name
        if not f.exists():
            LOGGER.info(f"Downloading {url} to {f}...")
            try:
                urllib.request.urlretrieve(url, f)
            except OSError as e:
                f.unlink(missing_ok=True)
                raise UserError(f"download of {url} failed ({e}); download it manually into {dir}") from None
        if unzip and f.suffix == ".zip":
            with zipfile.ZipFile(f) as z:
                z.extractall(dir)
            f.unlink()


def _resolve(p: str | Path, bases: list[Path]) -> tuple[Path, list[Path]]:
    """Return the first existing candidate of p under bases (or the first candidate) and all tried."""
    p = Path(p).expanduser()
    if p.is_absolute():
        return p, [p]
    tried = [(b / p).resolve() for b in bases]
    tried = list(dict.fromkeys(tried))  # drop duplicates, keep order
    return next((t for t in tried if t.exists()), tried[0]), tried


def _load(data: str | Path | dict) -> tuple[dict, Path | None]:
    if isinstance(data, dict):
        return dict(data), None
    from utils.general import check_file

    file = check_file(data, "data yaml").resolve()
    return yaml_load(file), file


def _names_from_dict(names: dict, where: str) -> list:
    """{0: a, 1: b} (v7.0 style) -> [a, b]; keys must be exactly 0..n-1 (an inverted {name: id} or a gap
    would put wrong class names into every checkpoint trained on it)."""
    keys = list(names)
    if keys and all(isinstance(v, int) and not isinstance(v, bool) for v in names.values()) \
            and not all(isinstance(k, int) for k in keys):
        raise UserError(f"{where}: 'names' looks inverted ({{name: id}}, e.g. {keys[0]!r}: {names[keys[0]]!r}); "
                        f"write it as {{id: name}} (0: {keys[0]}) or as a list [{keys[0]}, ...]")
    try:
        ids = {int(k): v for k, v in names.items() if not isinstance(k, bool) and str(k).strip().isdigit()}
    except ValueError:
        ids = {}
    if len(ids) != len(names):
        bad = [k for k in names if not (not isinstance(k, bool) and str(k).strip().isdigit())]
        raise UserError(f"{where}: 'names' keys must be class ids 0..{len(names) - 1}, got {bad[:5]}")
    gaps = sorted(set(range(len(ids))) - set(ids))
    if gaps:
        extra = sorted(set(ids) - set(range(len(ids))))
        raise UserError(f"{where}: 'names' keys must be exactly 0..{len(ids) - 1} without gaps; missing ids "
                        f"{gaps[:10]}, unexpected ids {extra[:10]}. Number the classes from 0 without gaps")
    return [ids[i] for i in range(len(ids))]


def _check_nc(data: dict, where: str) -> int:
    nc = data["nc"]
    ok = isinstance(nc, int) and not isinstance(nc, bool)
    if not ok and isinstance(nc, (str, float)):
        try:
            ok = float(nc).is_integer()
            nc = int(float(nc))
        except ValueError:
            ok = False
    if not ok:
        raise UserError(f"{where}: 'nc' must be a whole number of classes, got {data['nc']!r}")
    if nc < 1:
        raise UserError(f"{where}: 'nc' is {nc}; a dataset needs at least 1 class")
    return nc


def _check_names(data: dict, where: str) -> None:
    """nc is required; names defaults to class0..; a dict {i: name} (v7.0) becomes a list."""
    names = data.get("names")
    if isinstance(names, dict):
        names = _names_from_dict(names, where)
    if "nc" not in data:
        if names is None:
            raise UserError(f"{where}: 'nc' (number of classes) is missing; add e.g. 'nc: 80' and 'names: [...]'")
        data["nc"] = len(names)  # v7.0 behaviour; v6.0 asserted here
    data["nc"] = _check_nc(data, where)
    if names is None:
        names = [f"class{i}" for i in range(data["nc"])]
    if not isinstance(names, (list, tuple)):
        raise UserError(f"{where}: 'names' must be a list of class names, got {type(names).__name__}")
    if len(names) != data["nc"]:
        raise UserError(f"{where}: nc={data['nc']} but {len(names)} names are given; make them agree")
    empty = [i for i, n in enumerate(names) if n is None or not str(n).strip()]
    if empty:
        raise UserError(f"{where}: class {empty[0]} has an empty name in 'names'; give every class a name")
    if isinstance(names[0], (list, dict)):
        raise UserError(f"{where}: 'names' must be a flat list of class names, got a nested {type(names[0]).__name__}")
    dups = sorted({str(n) for n in names if [str(x) for x in names].count(str(n)) > 1})
    if dups:
        LOGGER.warning(f"WARNING: {where}: class names {dups} appear more than once in 'names'")
    data["names"] = [str(n) for n in names]


def _resolve_splits(data: dict, yaml_dir: Path | None) -> dict[str, list[Path]]:
    """Make path/train/val/test/unlabeled absolute. Returns {split: [paths tried that do not exist]} (a missing
    'unlabeled:' is not counted: only distillation reads it, utils.data.unlabeled.unlabeled_source)."""
    bases = [Path.cwd()] + ([yaml_dir] if yaml_dir else [])
    tried_root: list[Path] = []
    if data.get("path"):
        root, tried_root = _resolve(data["path"], bases)
        data["path"] = str(root)
        bases = [root]
    missing: dict[str, list[Path]] = {}
    for k in ("train", "val", "test", "unlabeled"):
        v = data.get(k)
        if not v:
            data[k] = None if k in ("test", "unlabeled") else v
            continue
        out, bad = [], []
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            p, tried = _resolve(item, bases)
            out.append(str(p))
            if not p.exists() and k != "unlabeled":  # unlabeled images: checked by the run that uses them
                bad += tried if not tried_root else [p] + [t for t in tried_root if not t.exists()]
        data[k] = out if isinstance(v, (list, tuple)) else out[0]
        if bad:
            missing[k] = list(dict.fromkeys(bad))
    return missing


def _run_download(data: dict, s: str, where: str) -> None:
    """Run a `download:` entry: URL (only when allowed), `bash ...` command, or Python source."""
    if s.startswith(("http://", "https://")):
        root = Path(data["path"]).parent if data.get("path") else ROOT.parent / "datasets"
        download_urls(s, root, unzip=True)
    elif s.startswith("bash "):
        LOGGER.info(f"Running {s} ...")
        if subprocess.run(s, shell=True, cwd=ROOT, check=False).returncode != 0:
            raise UserError(f"{where}: download command failed: {s}")
    else:
        LOGGER.info(f"{where}: building/downloading the dataset with its 'download:' script...")
        exec(s, {"yaml": data, "__name__": "__download__"})  # noqa: S102 (v6.0 semantics)


def _check_fields(data: dict, where: str) -> None:
    for k in ("train", "val"):
        if not data.get(k):
            raise UserError(f"{where}: '{k}' is missing; give a directory, a *.txt list of images, or a list")
    _check_names(data, where)


def check_data_fields(data: str | Path | dict) -> dict:
    """The fields of a data yaml (train/val given, nc, names numbered 0..nc-1) without touching the dataset:
    what the scripts check before any folder, data or model exists. Returns the checked dict."""
    data, file = _load(data)
    _check_fields(data, str(file) if file else "data dict")
    return data


def check_dataset(data: str | Path | dict, autodownload: bool = True) -> dict:
    """Load and validate a data yaml (or dict); download/build the data if missing and allowed.

    Returns the dict with absolute 'train'/'val'/'test' (str, list of str, or None for test),
    'nc' (int), 'names' (list[str]), 'path' (str or absent) and 'yaml_file' (str or None).
    """
    data, file = _load(data)
    where = str(file) if file else "data dict"
    _check_fields(data, where)
    raw = {k: data.get(k) for k in ("path", "train", "val", "test", "unlabeled")}
    missing = _resolve_splits(data, file.parent if file else None)
    if missing:
        dl = data.get("download")
        if not dl:
            raise UserError(_missing_msg(where, missing, "and it has no 'download:' entry"))
        if not autodownload:
            raise UserError(_missing_msg(where, missing, "(autodownload is off)"))
        try:
            _run_download(data, str(dl).strip(), where)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        except Exception as e:  # a broken download script is the yaml's fault: name it
            raise UserError(f"{where}: its 'download:' entry failed: {type(e).__name__}: {e}") from e
        data.update(raw)  # resolve again now that the data exist
        missing = _resolve_splits(data, file.parent if file else None)
        if missing:
            raise UserError(_missing_msg(where, missing, "even after running its 'download:' entry"))
    _check_image_lists(data, where)
    data["yaml_file"] = str(file) if file else None
    return data


def _check_image_lists(data: dict, where: str) -> None:
    """*.txt image lists: entries that no longer exist are named here (the label scan would otherwise call
    them corrupt, and report 'no labels found' when none is left)."""
    from utils.data.label_cache import IMG_FORMATS

    for k in ("train", "val", "test", "unlabeled"):
        for item in data[k] if isinstance(data.get(k), list) else [data.get(k)]:
            p = Path(item) if item else None
            if p is None or not p.is_file() or p.suffix.lower() != ".txt":
                continue
            lines = [x.strip() for x in p.read_text(errors="ignore").splitlines() if x.strip()]
            files = [str(p.parent / x[2:]) if x.startswith("./") else x for x in lines]
            files = [f for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS]
            missing = [f for f in files if not os.path.isfile(f)]
            if not missing:
                continue
            example = ", ".join(missing[:3])
            if len(missing) == len(files):
                raise UserError(f"{where}: none of the {len(files)} images listed in {p} ('{k}') exists, e.g. "
                                f"{example}. Regenerate the list (relative lines starting with ./ are relative "
                                f"to the list file, others to the current directory)")
            LOGGER.warning(f"WARNING: {where}: {len(missing)} of {len(files)} images listed in {p} ('{k}') do not "
                           f"exist and are skipped, e.g. {example}")


def _missing_msg(where: str, missing: dict[str, list[Path]], why: str) -> str:
    lines = "; ".join(f"{k}: tried {', '.join(map(str, v))}" for k, v in missing.items())
    return f"{where}: dataset paths not found {why}. {lines}"


def convert_voc_labels(devkit: str | Path, root: str | Path, year: str, image_set: str, names: list[str]) -> Path:
    """Convert devkit/VOC{year} XML annotations of one image set to YOLO labels (difficult objects skipped).

    Copies the images to root/images/{image_set}{year}/ and writes root/labels/{image_set}{year}/*.txt
    with normalised cls-xywh rows; returns the images directory. Used by data/VOC.yaml's download script.
    """
    import shutil
    import xml.etree.ElementTree as ET

    root = Path(root)
    voc = Path(devkit) / f"VOC{year}"
    img_dir = root / "images" / f"{image_set}{year}"
    lbl_dir = root / "labels" / f"{image_set}{year}"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    ids = (voc / "ImageSets" / "Main" / f"{image_set}.txt").read_text().split()
    for i in ids:
        tree = ET.parse(voc / "Annotations" / f"{i}.xml").getroot()
        w = int(tree.find("size/width").text)
        h = int(tree.find("size/height").text)
        rows = []
        for obj in tree.iter("object"):
            cls = obj.find("name").text
            if cls not in names or int(getattr(obj.find("difficult"), "text", 0)) == 1:
                continue
            b = [float(obj.find(f"bndbox/{t}").text) for t in ("xmin", "xmax", "ymin", "ymax")]
            x, y = (b[0] + b[1]) / 2 / w, (b[2] + b[3]) / 2 / h
            bw, bh = (b[1] - b[0]) / w, (b[3] - b[2]) / h
            rows.append(f"{names.index(cls)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}")
        (lbl_dir / f"{i}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
        shutil.copy(voc / "JPEGImages" / f"{i}.jpg", img_dir / f"{i}.jpg")
    return img_dir
