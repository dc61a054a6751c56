#!/usr/bin/env python
"""Cost of the detection feature losses (forward + backward, ms per call) and of the imitation mask.

Feature maps are synthetic at the shapes of yolov5n <- yolov5s on the maps entering Detect:
student 64/128/256 channels, teacher 128/256/512, strides 8/16/32. The mask is timed for a batch at a
larger image size with a fixed number of random boxes per image (the issue's goal: < 5 ms for 16 images
at 640 px with 50 boxes each). Prints median and minimum over the timed repeats.

Usage:
    OMP_NUM_THREADS=1 python bench/bench_feature_losses.py               # 320 px, batch 16; mask 640 px
    python bench/bench_feature_losses.py --img 256 --batch 8 --repeats 5 --threads 2
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

from distill.context import KDContext
from distill.imitation import imitation_mask
from distill.losses import SPECS, detect_input_layers
from distill.losses._detection import FeatureLoss
from models.yolo import Model
from utils.general import yaml_load
from utils.losses.yolov5 import ComputeLoss, scale_loss_gains

LOSSES = {name: s.cls for name, s in SPECS.items() if issubclass(s.cls, FeatureLoss)}  # the detection feature losses
STRIDES = (8, 16, 32)
STUDENT_CH, TEACHER_CH = (64, 128, 256), (128, 256, 512)  # yolov5n / yolov5s at P3, P4, P5


def random_targets(batch: int, boxes: int, nc: int, gen: torch.Generator) -> torch.Tensor:
    """(batch * boxes, 6) rows [img, cls, x, y, w, h], boxes of 1-40 % of the image side inside it."""
    n = batch * boxes
    wh = torch.rand(n, 2, generator=gen) * 0.39 + 0.01
    xy = torch.rand(n, 2, generator=gen) * (1 - wh) + wh / 2
    img = torch.arange(batch).repeat_interleave(boxes)[:, None].float()
    cls = torch.randint(0, nc, (n, 1), generator=gen).float()
    return torch.cat((img, cls, xy, wh), 1)


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    """Wall times in ms of `fn()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_losses(imgsz: int, batch: int, repeats: int, nc: int = 80) -> list[tuple[str, list[float]]]:
    gen = torch.Generator().manual_seed(0)
    grids = [(imgsz // s, imgsz // s) for s in STRIDES]
    student = Model(ROOT / "models" / "yolov5n.yaml", nc=nc)  # only its Detect (anchors, stride) is read
    assert len(detect_input_layers(student)) == len(STRIDES)
    s_feats = [torch.randn(batch, c, h, w, generator=gen).requires_grad_(True) for c, (h, w) in zip(STUDENT_CH, grids)]
    t_feats = [torch.randn(batch, c, h, w, generator=gen) for c, (h, w) in zip(TEACHER_CH, grids)]
    raw = [torch.randn(batch, 3, h, w, 5 + nc, generator=gen) for h, w in grids]
    ctx = KDContext(targets=random_targets(batch, 8, nc, gen), student=student, student_out=raw,
                    teacher_out=raw, iteration=10**6)
    results = []
    for name, cls in LOSSES.items():
        loss_fn = cls(student_channels=list(STUDENT_CH), teacher_channels=list(TEACHER_CH))

        def step(loss_fn=loss_fn):
            loss_fn.zero_grad(set_to_none=True)
            for s in s_feats:
                s.grad = None
            loss_fn(s_feats, t_feats, ctx).backward()

        results.append((name, timed(step, repeats)))
    return results


def bench_mask(imgsz: int, batch: int, boxes: int, repeats: int) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    student = Model(ROOT / "models" / "yolov5n.yaml", nc=80)
    detect = student.model[-1]
    anchors_px = detect.anchors * detect.stride.view(-1, 1, 1)
    targets = random_targets(batch, boxes, 80, gen)
    shapes = [(imgsz // s, imgsz // s) for s in STRIDES]
    return timed(lambda: imitation_mask(targets, anchors_px, detect.stride, shapes, batch), repeats, warmup=3)


def initial_values(weights: Path, imgsz: int, batch: int) -> list[tuple[str, float]]:
    """Each loss at the start of training: yolov5n from scratch (train mode) <- the shapes teacher, on
    `batch` freshly rendered shapes images (utils.data.synthetic, seed 0), past imitation's warm-up; first
    the student's detection loss (box + obj + cls items of ComputeLoss, hyp.scratch gains scaled as
    train.py does), the scale the KD terms are added to."""
    import cv2
    import numpy as np

    from distill.hooks import FeatureHooks
    from models.checkpoint import attempt_load
    from utils.data.synthetic import render_image

    teacher = attempt_load(weights, fuse=False).requires_grad_(False)
    names = [str(n) for n in (teacher.names.values() if isinstance(teacher.names, dict) else teacher.names)]
    rng = np.random.default_rng(0)
    imgs, rows = [], []
    for i in range(batch):
        im, lb = render_image(rng, imgsz, names)
        imgs.append(torch.from_numpy(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255)
        rows += [[i, *r] for r in lb.tolist()]
    imgs, targets = torch.stack(imgs), torch.tensor(rows, dtype=torch.float32).view(-1, 6)
    torch.manual_seed(0)
    student = Model(ROOT / "models" / "yolov5n.yaml", nc=len(names)).train()
    layers = detect_input_layers(student)
    with torch.no_grad(), FeatureHooks(student, layers) as s_hooks, FeatureHooks(teacher, layers) as t_hooks:
        s_out, t_out = student(imgs), teacher(imgs)[1]
    ctx = KDContext(imgs=imgs, targets=targets, student=student, teacher=teacher, student_out=s_out,
                    teacher_out=t_out, iteration=10**6)
    hyp = scale_loss_gains(yaml_load(ROOT / "data" / "hyps" / "hyp.scratch.yaml"), len(names), 3, imgsz)
    detect = student.model[-1]
    _, items = ComputeLoss(hyp, detect.anchors, detect.nc, stride=detect.stride)(s_out, targets)
    s_ch = [f.shape[1] for f in s_hooks.outputs]
    t_ch = [f.shape[1] for f in t_hooks.outputs]
    torch.manual_seed(0)
    values = [("detection", float(items.sum()))]
    for name, cls in LOSSES.items():
        loss_fn = cls(student_channels=s_ch, teacher_channels=t_ch)
        values.append((name, float(loss_fn(s_hooks.outputs, t_hooks.outputs, ctx).detach())))
    return values


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img", type=int, default=320, help="image size for the loss timings")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--mask-img", type=int, default=640)
    p.add_argument("--mask-batch", type=int, default=16)
    p.add_argument("--mask-boxes", type=int, default=50, help="boxes per image")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--teacher", default=str(ROOT / "weights" / "teacher-shapes-yolov5s.pt"),
                   help="teacher for the start-of-training loss values ('' to skip)")
    opt = p.parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); yolov5n <- yolov5s maps at "
          f"{opt.img} px, batch {opt.batch}, forward + backward")
    print(f"{'loss':<12}{'median ms':>12}{'min ms':>10}")
    for name, times in bench_losses(opt.img, opt.batch, opt.repeats):
        print(f"{name:<12}{statistics.median(times):>12.1f}{min(times):>10.1f}")
    times = bench_mask(opt.mask_img, opt.mask_batch, opt.mask_boxes, max(opt.repeats, 20))
    print(f"imitation mask, {opt.mask_batch} images at {opt.mask_img} px, {opt.mask_boxes} boxes each: "
          f"median {statistics.median(times):.2f} ms, min {min(times):.2f} ms")
    if opt.teacher and Path(opt.teacher).is_file():
        print(f"\nvalues at the start of training (yolov5n from scratch <- {Path(opt.teacher).name}, "
              f"{opt.batch} shapes images at {opt.img} px), raw and x the registered default weights")
        for name, value in initial_values(Path(opt.teacher), opt.img, opt.batch):
            print(f"{name:<12}{value:>12.4g}{value * SPECS[name].weight():>12.4g}")


if __name__ == "__main__":
    main()
