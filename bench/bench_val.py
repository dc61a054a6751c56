#!/usr/bin/env python
"""Validation speed: val.run on the embedded shapes dataset, per model and NMS setting.

Usage (from the repository root):
    python bench/bench_val.py                       # yolov5s and yolov5n fixtures, imgsz 320, CPU
    python bench/bench_val.py --weights a.pt --img 640 --batch-size 16 --conf-thres 0.001 0.00001

Prints one markdown row per (weights, conf-thres): wall-clock images/s (whole val.run call, data
loading and metrics included) and val.py's own ms per image for pre-process, inference and NMS.
The fixtures have random weights (class scores ~1e-2), so at the v6.0 val threshold 0.001 nearly no box
survives; a tiny threshold such as 1e-5 makes every image hit NMS's 30000-candidate cap (a stress test).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import torch

import val
from utils.general import LOGGER, run_cli

FIXTURES = ROOT.parent / "shared" / "fixtures"


def bench(weights: str, data: str, imgsz: int, batch_size: int, conf_thres: float, workers: int) -> dict:
    """One val.run over the whole val split (no plots, CPU); returns timings."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        (_, _, map50, *_), _, t = val.run(data, weights=weights, batch_size=batch_size, imgsz=imgsz,
                                            conf_thres=conf_thres, device="cpu", workers=workers,
                                            plots=False, project=tmp, name="bench")
        wall = time.perf_counter() - t0
    n = _n_images(data)
    return {"weights": Path(weights).name, "imgsz": imgsz, "conf": conf_thres, "images": n, "wall": wall,
            "ips": n / wall, "pre": t[0], "inf": t[1], "nms": t[2], "map50": map50}


def _n_images(data: str) -> int:
    from utils.data.config import check_dataset
    from utils.data.datasets import IMG_FORMATS

    d = check_dataset(data)
    v = Path(d["val"]) if isinstance(d["val"], str) else None
    if v is not None and v.is_dir():
        return sum(1 for p in v.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data/shapes.yaml"))
    p.add_argument("--weights", nargs="+", default=[str(FIXTURES / "yolov5s_v6.0.pt"), str(FIXTURES / "yolov5n_v6.0.pt")])
    p.add_argument("--imgsz", "--img", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--conf-thres", type=float, nargs="+", default=[0.001, 0.00001])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    opt = p.parse_args()
    if opt.threads:
        torch.set_num_threads(opt.threads)
    rows = []
    for w in opt.weights:
        for c in opt.conf_thres:
            rows.append(bench(w, opt.data, opt.imgsz, opt.batch_size, c, opt.workers))
    LOGGER.info(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n")
    LOGGER.info("| weights | imgsz | conf-thres | images | wall s | images/s | pre-process ms | inference ms | NMS ms |")
    LOGGER.info("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        LOGGER.info(f"| {r['weights']} | {r['imgsz']} | {r['conf']:g} | {r['images']} | {r['wall']:.1f} | "
                    f"{r['ips']:.1f} | {r['pre']:.1f} | {r['inf']:.1f} | {r['nms']:.1f} |")


if __name__ == "__main__":
    run_cli(main)
