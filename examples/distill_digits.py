#!/usr/bin/env python
"""Distillation on real data that ships offline: scikit-learn's load_digits (1,797 handwritten 8x8 digits).

A teacher CNN, a smaller student trained alone, and the same student distilled with vanilla_kd, vid,
irg, at and fitnet through `Distiller(config)` (the seed's five steps), all for the same epochs, over
several seeds. Prints mean +- std test accuracy and seconds per run.

    OMP_NUM_THREADS=1 python examples/distill_digits.py                 # the full table (~2 minutes)
    python examples/distill_digits.py --epochs 2 --seeds 1 --quick      # seconds (the test)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make `distill` importable

from distill import Distiller

METHODS = ("vanilla_kd", "vid", "irg", "at", "fitnet")


class DigitsNet(nn.Module):
    """layer1 (c1, 8x8) -> layer2 (c2, 4x4) -> layer3 (c3, 2x2) -> linear: the seed's layer names."""

    def __init__(self, widths: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = widths

        def block(ci, co, stride):
            return nn.Sequential(nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU())

        self.layer1, self.layer2, self.layer3 = block(1, c1, 1), block(c1, c2, 2), block(c2, c3, 2)
        self.linear = nn.Linear(c3, 10)

    def forward(self, x):
        return self.linear(self.layer3(self.layer2(self.layer1(x))).mean((2, 3)))


TEACHER, STUDENT = (32, 64, 128), (4, 8, 16)


def load_data(train_size: int, validation: bool = False):
    """((x_train, y_train), (x_eval, y_eval)), pixels in [0, 1], shapes (N, 1, 8, 8).

    A fixed stratified split (random_state 0): 30% of the 1,797 images are the test set, never used to
    choose anything; `train_size` training images come from the other 70%. validation=True evaluates on
    the rest of that 70% instead of the test set (bench/bench_digits.py chooses the loss weights there).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_pool, x_te, y_pool, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    x_tr, x_val, y_tr, y_val = train_test_split(x_pool, y_pool, train_size=train_size, stratify=y_pool,
                                                random_state=0)

    def tensors(a, b):
        return torch.tensor(a, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0, torch.tensor(b)

    return tensors(x_tr, y_tr), tensors(x_val, y_val) if validation else tensors(x_te, y_te)


# Weight of each method's kd_loss next to the cross-entropy (weight 1), chosen once on the validation
# split (not the test set) by bench/bench_digits.py over {0.1, 0.3, 1, 3, 10}, seeds 100-102.
WEIGHTS = {"vanilla_kd": 3.0, "vid": 0.1, "irg": 0.3, "at": 1.0, "fitnet": 10.0}


def kd_config(method: str, student: nn.Module, teacher: nn.Module, weights: dict | None = None) -> dict:
    """The Distiller config of each method: loss parameters from the spec, the weight from WEIGHTS."""
    w = (weights or WEIGHTS)[method]
    common = {"student_model": student, "teacher_model": teacher, "student_out_layer": ["linear"], "device": "cpu"}
    layers = ["layer1", "layer2", "layer3"]
    if method == "vanilla_kd":  # Hinton: T = 4 (spec 3.1)
        return {**common, "student_distill_layer": ["linear"], "teacher_distill_layer": ["linear"],
                "loss": [{"type": "vanilla_kd", "T": 4}], "weights": [w]}
    if method == "vid":  # one VID per stage, init variance 5 (spec 3.9), the seed's inC/midC/outC form
        return {**common, "student_distill_layer": layers, "teacher_distill_layer": layers,
                "loss": [{"type": "vid", "inC": cs, "midC": ct, "outC": ct, "init_pred_var": 5.0, "eps": 1e-5}
                         for cs, ct in zip(STUDENT, TEACHER)], "weights": [w] * 3}
    if method == "irg":  # KD-Zoo's term weights (spec 3.10) on the seed's layers
        return {**common, "student_distill_layer": ["layer2", "layer3", "linear"],
                "teacher_distill_layer": ["layer2", "layer3", "linear"],
                "loss": [{"type": "irg", "vert": 0.1, "edge": 5.0, "tran": 5.0}], "weights": [w]}
    if method == "at":  # attention maps of the three stages (paper form: each pair in [0, 4])
        return {**common, "student_distill_layer": layers, "teacher_distill_layer": layers,
                "loss": [{"type": "at"}], "weights": [w]}
    if method == "fitnet":  # hint on the middle stage (spec 3.3) through a learnt 1x1 regressor (probed widths)
        return {**common, "student_distill_layer": ["layer2"], "teacher_distill_layer": ["layer2"],
                "loss": [{"type": "fitnet"}], "weights": [w], "example_input": (1, 1, 8, 8)}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def fit(model: nn.Module, data, epochs: int, seed: int, distiller: Distiller | None = None, lr: float = 0.05):
    """SGD (momentum 0.9, weight decay 5e-4, cosine LR), batch 64: the same schedule for every row.
    With a distiller, the seed's steps: output, kd_loss = distiller(x); CE + kd_loss; backward; step."""
    (x, y), _ = data
    params = distiller.get_learnable_params() if distiller is not None else model.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x) / 64)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / (epochs * steps_per_epoch))))
    g = torch.Generator().manual_seed(seed)
    (distiller or model).train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            xb, yb = x[order[i:i + 64]], y[order[i:i + 64]]
            if distiller is not None:
                output, kd_loss = distiller.forward(xb)
                loss = F.cross_entropy(output, yb) + kd_loss
            else:
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model


def run(epochs: int, seeds, train_size: int, methods=METHODS, out=print, validation: bool = False,
        weights: dict | None = None) -> dict[str, list[tuple[float, float]]]:
    """{row: [(accuracy, seconds) per seed]} for teacher, student alone and each method. seeds: a count
    or a list; weights: {method: weight} replacing WEIGHTS (bench/bench_digits.py)."""
    data = load_data(train_size, validation)
    (x_te, y_te) = data[1]
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(seeds) if isinstance(seeds, int) else seeds:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        teacher = fit(DigitsNet(TEACHER), data, epochs, seed)
        rows.setdefault("teacher", []).append((accuracy(teacher, x_te, y_te), time.perf_counter() - t0))
        for method in ("student alone", *methods):
            torch.manual_seed(1000 + seed)  # every student row starts from the same weights
            student = DigitsNet(STUDENT)
            t0 = time.perf_counter()
            distiller = None if method == "student alone" else Distiller(kd_config(method, student, teacher, weights))
            fit(student, data, epochs, seed, distiller)
            rows.setdefault(method, []).append((accuracy(student, x_te, y_te), time.perf_counter() - t0))
        out(f"seed {seed}: " + ", ".join(f"{k} {v[-1][0]:.4f}" for k, v in rows.items()))
    return rows


def table(rows: dict[str, list[tuple[float, float]]]) -> str:
    base = statistics.mean(a for a, _ in rows["student alone"])
    lines = ["| model | test accuracy (mean ± std) | vs student alone | seconds per run |",
             "|---|---|---|---|"]
    for name, runs in rows.items():
        acc = [a for a, _ in runs]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        delta = "" if name in ("teacher", "student alone") else f"{100 * (statistics.mean(acc) - base):+.2f} pt"
        lines.append(f"| {name} | {100 * statistics.mean(acc):.2f} ± {100 * std:.2f} % | {delta} | "
                     f"{statistics.mean(t for _, t in runs):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--train-size", type=int, default=300, help="training images (the rest, 30%%, is the test set)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--quick", action="store_true", help="a tiny run for the test: 200 training images")
    opt = p.parse_args(argv)
    if opt.quick:
        opt.train_size = 200
    t0 = time.perf_counter()
    rows = run(opt.epochs, opt.seeds, opt.train_size, opt.methods)
    print(f"\nload_digits, {opt.train_size} training images, {opt.epochs} epochs, {opt.seeds} seed(s), "
          f"teacher {TEACHER}, student {STUDENT}, {torch.get_num_threads()} thread(s), "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
