#!/usr/bin/env python
"""Output KD's terms against their detection counterparts at three image sizes (issue 27).

The same shapes images (rendered at 160 px) letterboxed into 160, 320 and 640 px canvases: the same objects
on 1x, 4x and 16x the cells. Student: weights/teacher-shapes-yolov5s.pt, teacher: the 120-epoch one, both in
eval mode, no learning (what tests/test_kd_scale.py asserts). Prints kd_box/box, kd_obj/obj, kd_cls/cls per
size for the default reduction (normalize: weight) and the card's per-cell means (normalize: cells).

Usage: python bench/kd_scale.py [--images 4] [--sizes 160 320 640]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from distill.objective import build_kd_objective
from distill.recipe import LossEntry, Recipe
from models.checkpoint import attempt_load
from utils.data.synthetic import render_image
from utils.general import yaml_load
from utils.losses.yolov5 import ComputeLoss, scale_loss_gains


def ratios(student, teacher, imgs, targets, size: int, normalize: str) -> dict[str, float]:
    h = imgs.shape[-1]
    p = (size - h) // 2
    x = F.pad(imgs, (p, size - h - p, p, size - h - p), value=114 / 255)
    t = targets.clone()
    t[:, 2:] *= h / size
    t[:, 2:4] += p / size
    hyp = scale_loss_gains(yaml_load(ROOT / "data" / "hyps" / "hyp.short.yaml"), student.model[-1].nc, 3, size)
    d = student.model[-1]
    entry = {"type": "YoloKDLoss", "name": "kd", "layers": "detect", "variant": "kl", "T": 20.0, "normalize": normalize}
    objective = build_kd_objective(student, teacher, ComputeLoss(hyp, d.anchors, d.nc, stride=d.stride), hyp,
                                   kd_config=Recipe([LossEntry.from_dict(entry)])).train()
    student.eval()
    with torch.no_grad():
        out = objective(student, x, t)
    return {k: float(out[f"kd_{k}"]) / float(out[k]) for k in ("box", "obj", "cls")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs="+", default=[160, 320, 640])
    opt = p.parse_args(argv)
    student = attempt_load(ROOT / "weights" / "teacher-shapes-yolov5s.pt", fuse=False).eval()
    teacher = attempt_load(ROOT / "weights" / "teacher-shapes-yolov5s-120e.pt", fuse=True).eval()
    names = [str(n) for n in (student.names.values() if isinstance(student.names, dict) else student.names)]
    rng = np.random.default_rng(0)
    imgs, rows = [], []
    for i in range(opt.images):
        im, lb = render_image(rng, 160, names)
        imgs.append(torch.from_numpy(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255)
        rows += [[i, *r] for r in lb.tolist()]
    imgs, targets = torch.stack(imgs), torch.tensor(rows, dtype=torch.float32).view(-1, 6)
    print("| reduction | term | " + " | ".join(f"{s} px" for s in opt.sizes) + " | max / min |")
    print("|---|---|" + "---|" * (len(opt.sizes) + 1))
    for normalize in ("weight", "cells"):
        table = [ratios(student, teacher, imgs, targets, s, normalize) for s in opt.sizes]
        for term in ("box", "obj", "cls"):
            values = [r[term] for r in table]
            print(f"| {normalize} | kd_{term} / {term} | " + " | ".join(f"{v:.4f}" for v in values)
                  + f" | {max(values) / min(values):.2f} |")


if __name__ == "__main__":
    main()
