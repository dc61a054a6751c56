"""Each distillation term against the detection loss, on a few fixed batches: its value and the pull of its
gradient on the student's own parameters (norm and cosine against the detection loss's), and the warnings and
weight advice that follow from them. Behind compare_kd.py --probe (engine.probe) and bench/kd_grad_balance.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DOMINANT = 10.0  # a term above this multiple of the detection loss is warned about (as DistillObjective does)
TARGET = 1 / 3  # ... with the weight that puts it at this fraction of it (the repo's default-weight rule)
AGAINST = -0.2  # a term whose gradient cosine with the detection loss's is below this pulls against the labels
BALANCE_HEADER = ("| recipe | term | weight | value (x batch) / detection loss | grad norm / detection's | "
                  "cos(grad, detection's) |\n|---|---|---|---|---|---|")


@dataclass(frozen=True)
class TermBalance:
    """One distillation term against the detection loss, means over the fixed batches.

    value: the term as the objective adds it (batch size x weight x loss) / the detection loss (ComputeLoss's
    loss x batch size). grad_norm and cos: the norm of its gradient w.r.t. the student's own parameters
    (adapters and other loss parameters excluded) over the detection loss's, and the cosine between the two."""

    recipe: str
    term: str
    loss_type: str
    weight: float
    value: float
    grad_norm: float
    cos: float

    def row(self) -> str:
        return (f"| {self.recipe} | {self.term} | {self.weight:g} | {self.value:.3g} | {self.grad_norm:.3g} | "
                f"{self.cos:+.2f} |")


def fixed_batches(path, imgsz: int, batch_size: int, n: int, hyp: Mapping, stride: int = 32, nc: int | None = None,
                  data_file: str | Path = "", device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n batches of the training images in file order, letterboxed to imgsz without augmentation:
    [(imgs (B, 3, imgsz, imgsz) RGB float 0-1, targets (N, 6) [image, class, x, y, w, h] normalised)]."""
    from utils.data.dataloaders import create_dataloader

    loader = create_dataloader(path, imgsz, batch_size, stride, hyp=dict(hyp), augment=False, rect=False,
                               workers=0, shuffle=False, nc=nc, data_file=data_file)[0]
    out = []
    for i, (imgs, targets, *_) in enumerate(loader):
        if i == n:
            break
        out.append((imgs.to(device).float() / 255, targets.to(device)))
    return out


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def term_balance(make_student: Callable[[], nn.Module], teacher: nn.Module, hyp: Mapping, imgsz: int,
                 batches: list[tuple[torch.Tensor, torch.Tensor]], recipes: Mapping[str, object],
                 adapter_steps: int = 0, adapter_lr: float = 0.01,
                 data_names: Sequence[str] | None = None) -> list[TermBalance]:
    """Each recipe's terms against the detection loss (TermBalance), on a fresh student per recipe.

    make_student() -> the student at its start, in train mode (a new one per call: output KD may give it the
    teacher's anchors); it should seed the RNG, from which the losses' adapters are initialised next.
    hyp: unscaled; the student's head scales its gains for imgsz as training does. recipes: name -> distill.recipe.Recipe, or None for train_kd.py's default for the pair. Warm-ups are taken
    as past (imitation's 400 iterations). adapter_steps: first train only the losses' own parameters (adapters,
    projectors) for that many SGD steps on the batches, the student fixed; an adapter that starts near zero
    pulls on the student only once it has learned. data_names: the data's class names, for a teacher whose
    classes are matched with them by name (train_kd.py's rule; None: the teacher's classes are the data's)."""
    from distill.objective import build_kd_objective, detect_layer
    from distill.yolo_output import raw_outputs

    rows = []
    for name, recipe in recipes.items():
        student = make_student()
        loss_hyp = student.loss_gains(dict(hyp), detect_layer(student).nc, imgsz)
        compute_loss = student.build_loss(loss_hyp)
        objective = build_kd_objective(student, teacher, compute_loss, loss_hyp, kd_config=recipe,
                                       data_names=data_names)
        d = objective.distiller
        d.kd.iteration.fill_(10**6)  # past any warm-up
        d.kd._count = None  # re-read from the buffer
        types = {e.name: e.type for e in objective.resolved.losses}
        params = [p for p in student.parameters() if p.requires_grad]
        own = [p for p in d.kd.parameters() if p.requires_grad]
        if adapter_steps and own:
            sgd = torch.optim.SGD(own, lr=adapter_lr, momentum=0.937)
            for step in range(adapter_steps):
                imgs, targets = batches[step % len(batches)]
                _, kd_loss = d(imgs, targets)
                sgd.zero_grad()
                (kd_loss * imgs.shape[0]).backward(inputs=own)
                sgd.step()
        values = {n: [] for n in d.names}
        weights = list(d.weights)
        for imgs, targets in batches:
            g_det = det = None
            for k, term in enumerate(d.names):  # one term at a time: the others' weights set to 0
                d.weights = [w if j == k else 0.0 for j, w in enumerate(weights)]
                pred, kd_loss = d(imgs, targets)
                if g_det is None:  # the student's forward is the same for every term: one detection gradient
                    det = compute_loss(raw_outputs(pred), targets)[0].sum()
                    g_det = _flat_grad(det, params)
                g_kd = _flat_grad(kd_loss * imgs.shape[0], params)
                values[term].append((float(kd_loss.detach() * imgs.shape[0] / det.detach()),
                                     float(g_kd.norm() / g_det.norm()),
                                     float(nn.functional.cosine_similarity(g_kd, g_det, dim=0))))
        d.weights = weights
        for term, w in zip(d.names, weights):
            v = [statistics.mean(x[i] for x in values[term]) for i in range(3)]
            rows.append(TermBalance(name, term, types.get(term, ""), w, *v))
    return rows


def _sig(x: float) -> str:
    return f"{float(f'{x:.2g}'):g}"


def weight_advice(row: TermBalance, feature_entries: int, source: Path | str | None) -> str:
    """The weight that puts a term at TARGET x the detection loss (weight * TARGET / value) and how to set it."""
    from distill.registry import flag_name
    from distill.yolo_config import is_output

    w = _sig(row.weight * TARGET / row.value)
    if is_output(row.loss_type):
        flag = f"--alpha {w}"
    elif feature_entries == 1:
        flag = f"--beta {w}"
    else:
        flag = f"--{flag_name(row.loss_type, 'weight')} {w}"
    where = f"in {source}" if source else "in a recipe file (--kd_config)"
    return f"weight {w} puts it at about a third of it ({flag}, or 'weight: {w}' on its entry {where})"


def balance_warnings(rows: list[TermBalance], sources: Mapping[str, Path | None]) -> list[str]:
    """(a) terms above DOMINANT x the detection loss, (d) terms whose gradient pulls against the labels.
    sources: recipe name -> its file (None: the default recipe, which has no file)."""
    from distill.yolo_config import is_output

    out = []
    for r in rows:
        features = sum(not is_output(x.loss_type) for x in rows if x.recipe == r.recipe)  # --beta needs exactly one
        if r.value > DOMINANT:
            out.append(f"recipe '{r.recipe}': term '{r.term}' is {r.value:.3g}x the detection loss at weight "
                       f"{r.weight:g}; {weight_advice(r, features, sources.get(r.recipe))}")
        if r.cos < AGAINST:
            out.append(f"recipe '{r.recipe}': term '{r.term}' pulls against the labels (cosine {r.cos:+.2f} "
                       f"between its gradient and the detection loss's, below {AGAINST:g}); lower its weight or "
                       "leave it out of the recipe")
    return out
