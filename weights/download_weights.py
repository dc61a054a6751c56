#!/usr/bin/env python
"""Fetch the official YOLOv5 v6.0 release checkpoints into weights/ (network needed; only on request).

Usage:
    python weights/download_weights.py              # yolov5n/s/m/l/x
    python weights/download_weights.py yolov5m      # one model

Nothing in yolov5-kd downloads implicitly; scripts that miss a weights/yolov5*.pt file print this command.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

URL = "https://github.com/ultralytics/yolov5/releases/download/v6.0/{name}.pt"
MODELS = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")
WEIGHTS = Path(__file__).resolve().parent


def fetch(name: str, dest_dir: Path = WEIGHTS) -> Path:
    """Download one checkpoint atomically (temp file then rename); skip when already present."""
    if name not in MODELS:
        raise SystemExit(f"ERROR: unknown model '{name}'; choose from {', '.join(MODELS)}")
    dest = dest_dir / f"{name}.pt"
    if dest.exists() and dest.stat().st_size > 1_000_000:
        print(f"{dest} already present")
        return dest
    tmp = dest.with_suffix(".pt.part")
    url = URL.format(name=name)
    print(f"Downloading {url} -> {dest}")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"ERROR: could not download {url} ({e}). Check the network, or download it by hand "
                         f"into {dest_dir}/") from None
    tmp.replace(dest)
    return dest


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(MODELS), help="models to fetch (default: all)")
    for name in p.parse_args(argv).models:
        fetch(name)


if __name__ == "__main__":
    sys.exit(main())
