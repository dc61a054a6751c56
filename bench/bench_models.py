"""Benchmark every model yaml in models/: parameters, GFLOPs and CPU forward latency.

Usage: python bench/bench_models.py [--imgsz 640] [--runs 5] [--budget 60]
Latency: batch 1, eval mode, unfused, torch.no_grad, torch's default thread count, one warm-up run,
median of --runs runs. A model whose warm-up run predicts more than --budget seconds for all runs
gets no latency (reported as 'skipped').
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # scripts import models.* / utils.* from the repository root

from models.yolo import MODELS_DIR, Model
from utils.general import LOGGER, run_cli
from utils.torch_utils import get_flops


def bench_one(cfg: Path, imgsz: int, runs: int, budget: float) -> dict:
    """Params, GFLOPs and median latency (ms, or None when skipped) of one yaml at imgsz."""
    torch.manual_seed(0)
    model = Model(cfg).eval()
    row = {"model": cfg.stem, "params": sum(p.numel() for p in model.parameters()),
           "gflops": get_flops(model, imgsz), "latency_ms": None}
    x = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():
        t = time.perf_counter()
        model(x)  # warm-up (allocations, first-call overheads)
        warm = time.perf_counter() - t
        if warm * runs > budget:
            return row
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    row["latency_ms"] = statistics.median(times)
    row["min_ms"] = min(times)  # the least-disturbed run: more telling on a shared, loaded machine
    return row


def markdown(rows: list[dict], imgsz: int) -> str:
    lines = [f"| model | params | GFLOPs@{imgsz} | CPU latency median (ms, bs 1) | min (ms) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lat = f"{r['latency_ms']:.0f} | {r['min_ms']:.0f}" if r["latency_ms"] is not None else "skipped (over budget) | -"
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gflops']:.1f} | {lat} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--budget", type=float, default=60.0, help="max seconds of timed runs per model")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    opt = p.parse_args()
    if opt.threads:
        torch.set_num_threads(opt.threads)
    LOGGER.setLevel(logging.WARNING)  # no per-model layer tables
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = []
    for cfg in sorted(MODELS_DIR.glob("*.yaml"), key=lambda p: ("-" in p.stem, "nsmlx".find(p.stem[6:7]), p.stem)):
        rows.append(bench_one(cfg, opt.imgsz, opt.runs, opt.budget))
        print(f"done {cfg.name}", file=sys.stderr)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, imgsz {opt.imgsz}, "
          f"median of {opt.runs}, 1-min load average {load0:.1f} at start / {load1:.1f} at end\n")
    print(markdown(rows, opt.imgsz))


if __name__ == "__main__":
    run_cli(main)
