#!/usr/bin/env python
"""CUDA training throughput (images/s) of the step train.py and train_kd.py run, and the checks of the CUDA
path: AMP student, teacher precision (fp32 / fp16), channels_last, host syncs per step, and the change in the
distillation loss that a fp16 teacher makes.

One step = what engine/trainer.train_one_epoch does per batch on CUDA: autocast forward of the objective
(student, and for KD the fused frozen teacher + output KD + attention transfer), GradScaler backward,
SGD step, EMA update; synthetic batch, ~6 labels per image. Timed with torch.cuda.synchronize() around
`--steps` steps after `--warmup` steps; the median of `--repeats` such blocks is printed.

Usage (on a CUDA machine):
    python bench/bench_cuda.py                                   # 640 px, batch 64: n, s plain; n<-s, s<-m KD
    python bench/bench_cuda.py --img 320 --batch 32 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.append(str(p))

from bench_train import build, synthetic_batch  # noqa: E402

from distill.objective import build_kd_objective  # noqa: E402
from engine.kd_flags import objective_options  # noqa: E402
from engine.objective import DetectionObjective  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.general import yaml_load  # noqa: E402
from utils.torch_utils import ModelEMA, get_flops, to_channels_last  # noqa: E402


class Step:
    """One training step as the engine does it on CUDA (autocast, GradScaler, SGD, EMA)."""

    def __init__(self, model, objective, extra=()):
        self.model, self.objective = model, objective
        self.opt = build_optimizer(model, HYP, extra_params=list(extra))
        self.scaler = torch.amp.GradScaler("cuda", enabled=DEV.type == "cuda")
        self.ema = ModelEMA(model)

    def __call__(self, imgs, targets):
        with torch.autocast("cuda", enabled=DEV.type == "cuda"):
            out = self.objective(self.model, imgs, targets)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        return out


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timed(step, imgs, targets, steps: int, warmup: int, repeats: int) -> float:
    """Median seconds per step."""
    for _ in range(warmup):
        step(imgs, targets)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(imgs, targets)
        sync()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def count_syncs(step, imgs, targets) -> int:
    """Host synchronisations in one step, as torch's sync debug mode reports them (warnings)."""
    if DEV.type != "cuda":
        return -1
    sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(imgs, targets)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def student(cfg: str, nc: int, imgsz: int, channels_last: bool):
    model, loss, h = build(cfg, nc, imgsz, HYP)
    model = model.to(DEV)
    loss = type(loss).from_model(model, h)
    if channels_last:
        to_channels_last(model)
    return model, loss, h


def teacher_of(cfg: str, nc: int, channels_last: bool):
    t = Model(ROOT / "models" / f"{cfg}.yaml", nc=nc).to(DEV).fuse().eval()
    if channels_last:
        to_channels_last(t)
    return t


def batch(b: int, imgsz: int, nc: int, channels_last: bool):
    imgs, targets = synthetic_batch(b, imgsz, nc)
    imgs, targets = imgs.to(DEV), targets.to(DEV)
    if channels_last:
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    return imgs, targets


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img", type=int, default=640)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks (median printed)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--plain", nargs="+", default=["yolov5n", "yolov5s"])
    p.add_argument("--pairs", nargs="+", default=["yolov5n:yolov5s", "yolov5s:yolov5m"], help="student:teacher")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a quick smoke run of the script itself")
    opt = p.parse_args(argv)
    global DEV
    DEV = torch.device(opt.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_cuda.py needs a CUDA device (--device cpu runs the script's code on the CPU, for checking)")
    torch.backends.cudnn.benchmark = True  # as train.py on CUDA (fixed input size)
    nc, timing = 80, dict(steps=opt.steps, warmup=opt.warmup, repeats=opt.repeats)
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, imgsz {opt.img}, batch {opt.batch}, "
          f"median of {opt.repeats} blocks of {opt.steps} steps")

    plain = {}
    print("\n| model | channels_last | s/step | images/s | host syncs/step |\n|---|---|---|---|---|")
    for cfg in opt.plain:
        for cl in (False, True):
            model, loss, _ = student(cfg, nc, opt.img, cl)
            imgs, targets = batch(opt.batch, opt.img, nc, cl)
            step = Step(model, DetectionObjective(loss))
            t = timed(step, imgs, targets, **timing)
            plain[(cfg, cl)] = t
            print(f"| {cfg} | {cl} | {t:.4f} | {opt.batch / t:.0f} | {count_syncs(step, imgs, targets)} |", flush=True)
            del model, step
            torch.cuda.empty_cache()

    print("\n| student <- teacher | teacher dtype | channels_last | KD s/step | images/s | KD / plain | "
          "bound 1+F_T/(3F_S) | host syncs/step |\n|---|---|---|---|---|---|---|---|")
    for pair in opt.pairs:
        s_cfg, t_cfg = pair.split(":")
        bound = 1 + get_flops(Model(ROOT / "models" / f"{t_cfg}.yaml", nc=nc), opt.img) / (
            3 * get_flops(Model(ROOT / "models" / f"{s_cfg}.yaml", nc=nc), opt.img))
        for cl in (False, True):
            for dtype in ("fp32", "fp16" if DEV.type == "cuda" else "bf16"):
                model, loss, h = student(s_cfg, nc, opt.img, cl)
                teacher = teacher_of(t_cfg, nc, cl)
                kd = build_kd_objective(model, teacher, loss, dict(h), **objective_options(SimpleNamespace(
                    kd_loss="l2", feature_loss="at", teacher_dtype=dtype)))
                imgs, targets = batch(opt.batch, opt.img, nc, cl)
                step = Step(model, kd, extra=[kd])
                t = timed(step, imgs, targets, **timing)
                print(f"| {s_cfg}<-{t_cfg} | {dtype} | {cl} | {t:.4f} | {opt.batch / t:.0f} | "
                      f"{t / plain.get((s_cfg, cl), float('nan')):.2f}x | {bound:.2f}x | "
                      f"{count_syncs(step, imgs, targets)} |", flush=True)
                del model, teacher, kd, step
                torch.cuda.empty_cache()

    # what a fp16 teacher changes in the distillation loss: the same student, batch and teacher weights
    s_cfg, t_cfg = opt.pairs[0].split(":")
    torch.manual_seed(0)
    model, loss, h = student(s_cfg, nc, opt.img, False)
    teacher = teacher_of(t_cfg, nc, False)
    imgs, targets = batch(min(opt.batch, 16), opt.img, nc, False)
    values = {}
    low = "fp16" if DEV.type == "cuda" else "bf16"
    for dtype in ("fp32", low):  # fp32 first: the fp16 build converts the teacher's weights in place
        kd = build_kd_objective(model, teacher, loss, dict(h),
                                **objective_options(SimpleNamespace(kd_loss="l2", feature_loss="at", teacher_dtype=dtype)))
        with torch.no_grad(), torch.autocast("cuda", enabled=DEV.type == "cuda"):
            out = kd(model, imgs, targets)
        values[dtype] = {k: float(v) for k, v in out.items() if k in ("kd", "at")}
    print(f"\nKD terms, fp32 teacher vs {low} teacher (same weights, batch, student):")
    for k in values["fp32"]:
        a, b = values["fp32"][k], values[low][k]
        print(f"  {k}: {a:.6g} vs {b:.6g}, relative difference {abs(a - b) / max(abs(a), 1e-30):.2e}")


HYP = yaml_load(ROOT / "data/hyps/hyp.scratch.yaml")
DEV = torch.device("cuda")

if __name__ == "__main__":
    main()
