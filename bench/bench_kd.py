#!/usr/bin/env python
"""Distillation step-time overhead: KD step (teacher forward + output KD + AT, or features only) vs plain
training of the same student, next to the compute bound 1 + F_teacher / (3 F_student) from the models'
GFLOPs, for a float32 teacher and train_kd.py's default teacher precision (bf16 on CPUs with native bf16).

Usage:
    python bench/bench_kd.py                       # n<-s and s<-m at 320, batch 8
    python bench/bench_kd.py --pairs yolov5n:yolov5s --img 256 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.append(str(p))

from bench_train import build, synthetic_batch, time_steps  # noqa: E402

from distill.objective import build_kd_objective  # noqa: E402
from engine.kd_flags import objective_options  # noqa: E402
from engine.objective import DetectionObjective  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.general import yaml_load  # noqa: E402
from utils.torch_utils import get_flops  # noqa: E402


def bench_pair(student_cfg: str, teacher_cfg: str, imgsz: int, batch: int, steps: int, kd_loss: str,
               teacher_dtypes=("fp32", "auto"), nc: int = 80, recipes=()) -> list[dict]:
    hyp = yaml_load(ROOT / "data/hyps/hyp.scratch.yaml")
    imgs, targets = synthetic_batch(batch, imgsz, nc)
    model, loss, h = build(student_cfg, nc, imgsz, hyp)
    plain = DetectionObjective(loss)
    t_plain = statistics.median(time_steps(model, plain, imgs, targets, build_optimizer(model, h), steps))

    teacher = Model(ROOT / "models" / f"{teacher_cfg}.yaml", nc=nc)
    fs, ft = get_flops(model, imgsz), get_flops(teacher, imgsz)
    teacher.fuse().eval()  # as train_kd.py loads it (distill.objective.load_teacher)
    rows = []
    kinds = {name: {"recipe": name} for name in recipes} if recipes else KD_KINDS
    for dtype in teacher_dtypes:
        for kind, flags in kinds.items():
            if "recipe" in flags:  # a data/kd recipe as train_kd.py --kd_config NAME runs it
                from distill.yolo_config import load_kd_config

                cfg = load_kd_config(flags["recipe"]).to_dict()
                for entry in cfg["losses"]:  # imitation is off for its first 400 steps: time it switched on
                    if entry["type"] == "imitation":
                        entry["warmup"] = 0
                kd = build_kd_objective(model, teacher, loss, dict(h), teacher_dtype=dtype, kd_config=cfg)
            else:
                kd = build_kd_objective(model, teacher, loss, dict(h), **objective_options(SimpleNamespace(
                    kd_loss=kd_loss if flags["out"] else None, feature_loss=flags["feature"], teacher_dtype=dtype)),
                    kd_config=None if flags["out"] else {"losses": [{"type": flags["feature"], "name": flags["feature"]}]})
            t_kd = statistics.median(time_steps(model, kd, imgs, targets,
                                                build_optimizer(model, h, extra_params=[kd]), steps))
            rows.append({"pair": f"{student_cfg}<-{teacher_cfg}", "kind": kind, "dtype": str(
                kd.distiller.teacher_dtype or torch.float32).replace("torch.", ""), "plain": t_plain, "kd": t_kd,
                "ratio": t_kd / t_plain, "bound": 1 + ft / (3 * fs), "gflops_s": fs, "gflops_t": ft,
                "early_exit": kd.distiller.teacher_early_exit})
    return rows


# what the step distils: output KD + attention transfer (train_kd.py's default), or features only (the
# teacher's forward then stops after its last distilled layer)
KD_KINDS = {"output + AT": {"out": True, "feature": "at"}, "features only (mse)": {"out": False, "feature": "mse"}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["yolov5n:yolov5s", "yolov5s:yolov5m"], help="student:teacher")
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--kd-loss", default="l2", choices=["l2", "kl", "bce"])
    p.add_argument("--teacher-dtype", nargs="+", default=["fp32", "auto"], choices=["fp32", "bf16", "auto"],
                   help="teacher precisions to time (auto: bf16 where the CPU has native bf16, as train_kd.py)")
    p.add_argument("--recipes", nargs="*", default=[],
                   help="time these data/kd recipes (e.g. kl_only card imitation) instead of the two default kinds")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    opt = p.parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    p_dtypes = opt.teacher_dtype
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {opt.batch}, imgsz {opt.img}, "
          f"median of {opt.steps} steps, output KD = {opt.kd_loss}; the teacher fused (as train_kd.py loads it)")
    print("| student <- teacher | distilled | teacher dtype | GFLOPs S / T | plain s/step | KD s/step | KD / plain | "
          "bound 1+F_T/(3F_S) |\n|---|---|---|---|---|---|---|---|")
    for pair in opt.pairs:
        s, t = pair.split(":")
        for r in bench_pair(s, t, opt.img, opt.batch, opt.steps, opt.kd_loss, p_dtypes, recipes=opt.recipes):
            print(f"| {r['pair']} | {r['kind']} | {r['dtype']} | {r['gflops_s']:.2f} / {r['gflops_t']:.2f} | "
                  f"{r['plain']:.3f} | {r['kd']:.3f} | {r['ratio']:.2f}x | {r['bound']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
