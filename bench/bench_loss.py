"""Time ComputeLoss forward + backward on the CPU, gathering the predictions at the target cells two ways.

    python bench/bench_loss.py                      # nc 80 and 6, batch 16 at 320, 40 labels per image
    python bench/bench_loss.py --nc 80 --threads 2 --repeats 30

`take_cells` is what the loss uses (index_select: its backward adds repeated cells in index order);
`indexing` is p.view(-1, no)[cell], whose CPU backward adds them with atomics in thread order once the
gradient has 32768+ elements. The two alternate step by step; the median of each is printed.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils.losses.yolov5 as loss_module  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.general import yaml_load  # noqa: E402


def indexing(p: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    return p.reshape(-1, p.shape[-1])[cell]


def run(nc: int, batch: int, img: int, labels: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = Model(str(ROOT / "models/yolov5n.yaml"), nc=nc).train()
    model.hyp = yaml_load(ROOT / "data/hyps/hyp.scratch.yaml")
    with torch.no_grad():
        p0 = [t.detach() for t in model(torch.randn(batch, 3, img, img))]
    g = torch.Generator().manual_seed(1)
    n = batch * labels
    targets = torch.cat([torch.randint(0, batch, (n, 1), generator=g).float(),
                         torch.randint(0, nc, (n, 1), generator=g).float(),
                         torch.rand(n, 2, generator=g) * 0.8 + 0.1,  # centres
                         torch.rand(n, 2, generator=g) * 0.3 + 0.02], 1)  # sizes
    compute_loss = loss_module.ComputeLoss.from_model(model)
    ways = {"indexing": indexing, "take_cells": loss_module.take_cells}

    def step(gather) -> float:
        loss_module.take_cells = gather
        p = [t.clone().requires_grad_(True) for t in p0]
        t0 = time.perf_counter()
        loss, _ = compute_loss(p, targets)
        loss.backward()
        return time.perf_counter() - t0

    try:
        times = {k: [] for k in ways}
        for k in ways:  # warm-up
            for _ in range(3):
                step(ways[k])
        for _ in range(repeats):
            for k in ways:
                times[k].append(step(ways[k]))
    finally:
        loss_module.take_cells = ways["take_cells"]
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nc", type=int, nargs="+", default=[80, 6], help="class counts to time")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img", type=int, default=320)
    ap.add_argument("--labels", type=int, default=40, help="labels per image (a mosaic of 4 images of ~10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    opt = ap.parse_args()
    torch.set_num_threads(opt.threads)
    print(f"ComputeLoss forward + backward, yolov5n maps, batch {opt.batch} at {opt.img}, {opt.labels} labels per "
          f"image, {opt.threads} threads, median of {opt.repeats}")
    print(f"{'nc':>4} {'indexing ms':>12} {'take_cells ms':>14} {'ratio':>6}")
    for nc in opt.nc:
        t = run(nc, opt.batch, opt.img, opt.labels, opt.repeats)
        print(f"{nc:>4} {t['indexing'] * 1e3:>12.1f} {t['take_cells'] * 1e3:>14.1f} "
              f"{t['indexing'] / t['take_cells']:>6.2f}")


if __name__ == "__main__":
    main()
