"""Dataloader throughput (images/s) on the embedded shapes dataset.

Usage (from the repository root):  python bench/bench_dataloader.py [--workers 2] [--batch 16] [--batches 30]
Builds datasets/shapes on first use (data/shapes.yaml). Measures the training loader (mosaic + HSV +
flips + random perspective, hyp.scratch values) at 640 and 320 (and 320 with --cache ram), and the val
loader (rect, pad 0.5) at 320.
The first batches (worker start-up, cache scan) are excluded.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.data.config import check_dataset  # noqa: E402
from utils.data.dataloaders import create_dataloader  # noqa: E402
from utils.data.datasets import DEFAULT_AUG_HYP  # noqa: E402
from utils.general import run_cli  # noqa: E402


def throughput(loader, batches: int, warmup: int = 3) -> float:
    """Images per second over `batches` batches after `warmup` batches (epochs wrap as needed)."""
    n, t0, i = 0, 0.0, 0
    while i < warmup + batches:
        for imgs, *_ in loader:
            if i == warmup:
                t0 = time.perf_counter()
            if i >= warmup:
                n += imgs.shape[0]
            i += 1
            if i == warmup + batches:
                break
    return n / (time.perf_counter() - t0)


def parse_opt() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data" / "shapes.yaml"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=30, help="timed batches per setting")
    return p.parse_args()


def main() -> None:
    opt = parse_opt()
    data = check_dataset(opt.data)
    print(f"dataset {data['yaml_file']}: train {data['train']}, workers {opt.workers}, batch {opt.batch}")
    rows = []
    for imgsz in (640, 320):
        loader, _ = create_dataloader(data["train"], imgsz, opt.batch, 32, hyp=DEFAULT_AUG_HYP, augment=True,
                                      workers=opt.workers, shuffle=True, prefix="train: ")
        rows.append((f"train mosaic {imgsz}", throughput(loader, opt.batches)))
    loader, _ = create_dataloader(data["train"], 320, opt.batch, 32, hyp=DEFAULT_AUG_HYP, augment=True,
                                  workers=opt.workers, shuffle=True, cache="ram", prefix="train: ")
    rows.append(("train mosaic 320 cache=ram", throughput(loader, opt.batches)))
    loader, _ = create_dataloader(data["val"], 320, opt.batch * 2, 32, rect=True, pad=0.5, workers=opt.workers,
                                  prefix="val: ")
    rows.append(("val rect 320 (batch x2)", throughput(loader, max(opt.batches // 3, 5))))
    for name, ips in rows:
        print(f"{name:<26} {ips:8.1f} images/s")


if __name__ == "__main__":
    run_cli(main)
