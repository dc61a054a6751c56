#!/usr/bin/env python
"""Training step throughput (images/s) of plain YOLOv5 training, the compute part of train.py.

One step = the objective's forward (model + loss) + backward + SGD step, on a fixed synthetic batch with
~6 labels per image, exactly the objects train.py uses. Data loading is measured by
bench/bench_dataloader.py (far faster than these steps on CPU).

Usage:
    python bench/bench_train.py                                  # n and s at 320 and 640, batch 8
    python bench/bench_train.py --models yolov5n --img 320 --batch 16 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from engine.objective import DetectionObjective  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.general import yaml_load  # noqa: E402
from utils.losses.yolov5 import ComputeLoss, scale_loss_gains  # noqa: E402


def synthetic_batch(batch: int, imgsz: int, nc: int, per_image: int = 6, seed: int = 0):
    """Random images in [0, 1] and targets [img, cls, x, y, w, h] (normalised) with plausible sizes."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    n = batch * per_image
    img_idx = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, nc, (n,), generator=g).float()
    xy = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
    return imgs, torch.cat([img_idx[:, None], cls[:, None], xy, wh], 1)


def build(cfg: str, nc: int, imgsz: int, hyp: dict):
    model = Model(ROOT / "models" / f"{cfg}.yaml", nc=nc).train()
    h = scale_loss_gains(hyp, nc, model.model[-1].nl, imgsz)
    return model, ComputeLoss.from_model(model, h), h


def time_steps(model, objective, imgs, targets, optimizer, steps: int, warmup: int = 2) -> list[float]:
    """Seconds per optimisation step (forward + loss + backward + step)."""
    times = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        out = objective(model, imgs, targets)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def bench_plain(cfg: str, imgsz: int, batch: int, steps: int, nc: int = 80) -> dict:
    hyp = yaml_load(ROOT / "data/hyps/hyp.scratch.yaml")
    model, loss, h = build(cfg, nc, imgsz, hyp)
    objective = DetectionObjective(loss)
    opt = build_optimizer(model, h)
    imgs, targets = synthetic_batch(batch, imgsz, nc)
    t = statistics.median(time_steps(model, objective, imgs, targets, opt, steps))
    return {"model": cfg, "imgsz": imgsz, "batch": batch, "step_s": t, "img_s": batch / t}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    p.add_argument("--img", nargs="+", type=int, default=[320, 640])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    opt = p.parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {opt.batch}, median of {opt.steps} steps")
    print("| model | imgsz | batch | s/step | images/s |\n|---|---|---|---|---|")
    for img in opt.img:
        for cfg in opt.models:
            r = bench_plain(cfg, img, opt.batch, opt.steps)
            print(f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['step_s']:.2f} | {r['img_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
