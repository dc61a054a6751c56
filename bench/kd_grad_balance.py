#!/usr/bin/env python
"""How hard each distillation term pulls on the student, against the detection loss (issue 13's "why").

For each recipe (a data/kd or bench/kd_configs file, weights as the recipe resolves them), on a few
fixed batches of the shapes training images (no augmentation), it takes the gradient with respect to the
student's own parameters (adapters and other loss parameters excluded) of
  * the detection loss (ComputeLoss, as the training step adds it), and
  * each distillation term alone (batch size x weight x loss, as DistillObjective adds it),
and prints per term: the norm of its gradient over the detection loss's, and the cosine between the two
(< 0: the term pulls against the detection loss). Values are means over the batches.

--adapter_steps K first trains only the losses' own parameters (adapters, projectors) for K SGD steps on
those batches, the student fixed: a loss whose adapter starts near zero (imitation's, std 1e-4) pulls on
the student only once the adapter has learned, which the measurement at initialisation would miss.

The student is the --student checkpoint (e.g. the best.pt of a plain run, a student the recipes would
meet mid-training) or, without one, a freshly initialised yolov5n (seeded): the start of training.

Usage:
    python bench/kd_grad_balance.py                                   # fresh student, default recipes
    python bench/kd_grad_balance.py --student runs/compare30/baseline-s0/weights/best.pt --img 192
    python bench/kd_grad_balance.py --recipes kl_only cwd bench/kd_configs/cwd_bal.yaml
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from distill.objective import build_kd_objective, load_teacher  # noqa: E402
from distill.yolo_config import load_kd_config  # noqa: E402
from models.checkpoint import attempt_load  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.data.config import check_dataset  # noqa: E402
from utils.data.dataloaders import create_dataloader  # noqa: E402
from utils.general import init_seeds, yaml_load  # noqa: E402
from utils.losses.yolov5 import ComputeLoss, scale_loss_gains  # noqa: E402

RECIPES = ["kl_only", "card", "imitation", "cwd", "mse", "pkd", "scorel2"]


def recipe_path(name: str) -> Path:
    for p in (Path(name), ROOT / "data" / "kd" / f"{name}.yaml", ROOT / "bench" / "kd_configs" / f"{name}.yaml"):
        if p.is_file():
            return p
    sys.exit(f"--recipes: {name} is neither a file nor a recipe of data/kd/ or bench/kd_configs/")


def flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def student_model(path: str, nc: int, seed: int) -> torch.nn.Module:
    if path:
        model = attempt_load(path, map_location="cpu", fuse=False)
    else:
        init_seeds(seed)
        model = Model(ROOT / "models" / "yolov5n.yaml", nc=nc)
    model.float().train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="", help="student checkpoint ('' = a fresh yolov5n)")
    p.add_argument("--teacher", default=str(ROOT / "weights" / "teacher-shapes-yolov5s.pt"))
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.short.yaml"))
    p.add_argument("--img", type=int, default=192)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="fixed batches averaged over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter_steps", type=int, default=0, help="train the loss parameters alone first")
    p.add_argument("--adapter_lr", type=float, default=0.01)
    opt = p.parse_args(argv)

    torch.set_grad_enabled(True)
    data = check_dataset(str(ROOT / "data" / "shapes.yaml"))
    nc = int(data["nc"])
    loader = create_dataloader(data["train"], opt.img, opt.batch, 32, hyp=yaml_load(opt.hyp), augment=False,
                               rect=False, workers=0, shuffle=False)[0]
    batches = []
    for i, (imgs, targets, *_) in enumerate(loader):
        if i == opt.batches:
            break
        batches.append((imgs.float() / 255, targets))
    teacher = load_teacher(opt.teacher, "cpu", nc)
    hyp = scale_loss_gains(yaml_load(opt.hyp), nc, 3, opt.img)
    hyp.setdefault("kd", 1.0)
    print(f"student: {opt.student or 'fresh yolov5n (seed %d)' % opt.seed}; teacher: {opt.teacher}; "
          f"{len(batches)} batches of {opt.batch} at {opt.img} px; loss parameters trained alone for "
          f"{opt.adapter_steps} steps first\n")
    print("| recipe | term | weight | value (x batch) / detection loss | grad norm / detection's | cos(grad, detection's) |")
    print("|---|---|---|---|---|---|")
    for name in opt.recipes:
        student = student_model(opt.student, nc, opt.seed)
        compute_loss = ComputeLoss.from_model(student, hyp)
        objective = build_kd_objective(student, teacher, compute_loss, hyp, kd_config=load_kd_config(recipe_path(name)))
        d = objective.distiller
        d.kd.iteration.fill_(10**6)  # past any warm-up (imitation's 400 iterations)
        d.kd._count = None
        params = [p for p in student.parameters() if p.requires_grad]
        own = [p for p in d.kd.parameters() if p.requires_grad]
        if opt.adapter_steps and own:
            sgd = torch.optim.SGD(own, lr=opt.adapter_lr, momentum=0.937)
            for step in range(opt.adapter_steps):
                imgs, targets = batches[step % len(batches)]
                _, kd_loss = d(imgs, targets)
                sgd.zero_grad()
                (kd_loss * imgs.shape[0]).backward(inputs=own)
                sgd.step()
        rows = {n: [] for n in d.names}
        for imgs, targets in batches:
            weights = list(d.weights)
            for k, term in enumerate(d.names):  # one term at a time: the others' weights set to 0
                d.weights = [w if j == k else 0.0 for j, w in enumerate(weights)]
                pred, kd_loss = d(imgs, targets)
                det, _ = compute_loss(pred, targets)
                g_det, g_kd = flat_grad(det.sum(), params), flat_grad(kd_loss * imgs.shape[0], params)
                ratio = float(g_kd.norm() / g_det.norm())
                cos = float(torch.nn.functional.cosine_similarity(g_kd, g_det, dim=0))
                rows[term].append((float(kd_loss.detach() * imgs.shape[0] / det.detach().sum()), ratio, cos))
            d.weights = weights
        for term, w in zip(d.names, d.weights):
            v = [statistics.mean(x[i] for x in rows[term]) for i in range(3)]
            print(f"| {name} | {term} | {w:g} | {v[0]:.3g} | {v[1]:.3g} | {v[2]:+.2f} |")
        if any(math.isnan(x) for r in rows.values() for t in r for x in t):
            print(f"WARNING: {name}: a non-finite value above")


if __name__ == "__main__":
    main()
