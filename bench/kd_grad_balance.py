#!/usr/bin/env python
"""How hard each distillation term pulls on the student, against the detection loss (issue 13's "why").

For each recipe (a data/kd or bench/kd_configs file, weights as the recipe resolves them), on a few
fixed batches of the shapes training images (no augmentation), it takes the gradient with respect to the
student's own parameters (adapters and other loss parameters excluded) of
  * the detection loss (ComputeLoss, as the training step adds it), and
  * each distillation term alone (batch size x weight x loss, as DistillObjective adds it),
and prints per term: the norm of its gradient over the detection loss's, and the cosine between the two
(< 0: the term pulls against the detection loss). Values are means over the batches. The measurement is
engine.term_balance.term_balance (also behind compare_kd.py --probe); this is its command line.

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
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from distill.objective import load_teacher  # noqa: E402
from distill.yolo_config import load_kd_config  # noqa: E402
from engine.term_balance import BALANCE_HEADER, fixed_batches, term_balance  # noqa: E402
from models.checkpoint import attempt_load  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.data.config import check_dataset  # noqa: E402
from utils.general import init_seeds, yaml_load  # noqa: E402

RECIPES = ["kl_only", "card", "imitation", "cwd", "mse", "pkd", "scorel2"]


def recipe_path(name: str) -> Path:
    for p in (Path(name), ROOT / "data" / "kd" / f"{name}.yaml", ROOT / "bench" / "kd_configs" / f"{name}.yaml"):
        if p.is_file():
            return p
    sys.exit(f"--recipes: {name} is neither a file nor a recipe of data/kd/ or bench/kd_configs/")


def student_model(path: str, nc: int, seed: int) -> torch.nn.Module:
    init_seeds(seed)  # also seeds the losses' adapters, built next (unseeded, a loaded student's varied per run)
    if path:
        model = attempt_load(path, map_location="cpu", fuse=False)
    else:
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
    recipes = {name: load_kd_config(recipe_path(name)) for name in opt.recipes}
    data = check_dataset(str(ROOT / "data" / "shapes.yaml"))
    nc = int(data["nc"])
    hyp = yaml_load(opt.hyp)
    batches = fixed_batches(data["train"], opt.img, opt.batch, opt.batches, hyp)
    teacher = load_teacher(opt.teacher, "cpu", nc)
    print(f"student: {opt.student or f'fresh yolov5n (seed {opt.seed})'}; teacher: {opt.teacher}; "
          f"{len(batches)} batches of {opt.batch} at {opt.img} px; loss parameters trained alone for "
          f"{opt.adapter_steps} steps first\n")
    print(BALANCE_HEADER)
    for name, recipe in recipes.items():  # printed recipe by recipe, as each is measured
        rows = term_balance(lambda: student_model(opt.student, nc, opt.seed), teacher, hyp, opt.img, batches,
                            {name: recipe}, adapter_steps=opt.adapter_steps, adapter_lr=opt.adapter_lr)
        for r in rows:
            print(r.row())
        if any(math.isnan(x) for r in rows for x in (r.value, r.grad_norm, r.cos)):
            print(f"WARNING: {name}: a non-finite value above")


if __name__ == "__main__":
    main()
