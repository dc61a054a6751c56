"""Writes tests/data/kd_first_batch_golden.json: first-batch values of train_kd.py's objective.

Run ONCE against the code before the Distiller engine (commit 54c5eb5, the last with distill.objective's
own KDObjective capture path), from a checkout of that commit:

    git worktree add /tmp/old 54c5eb5 && cp tests/data/make_kd_golden.py /tmp/old/ && \
        cd /tmp/old && python make_kd_golden.py OUT.json

The test tests/test_distiller_yolo.py reads the file and never rewrites it. Each case is a set of
train_kd.py flags; the objective is built the way train_kd.py builds it (build_kd_objective) on a
yolov5n student (seed 0) and a yolov5s teacher (seed 1), nc=3, one batch of 2 random 64x64 images.
FitNet adapters are overwritten with seeded values (their default init draws from the global RNG).
"""

import json
import sys
from types import SimpleNamespace

import torch

from models.yolo import Model
from utils.losses.yolov5 import ComputeLoss

NC = 3
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "kd": 1.0}
CASES = {
    "defaults_l2_at": {},
    "card_kl_at": {"kd_loss_selected": "kl"},
    "bce_at_T4": {"kd_loss": "bce", "temperature": 4.0},
    "kl_fitnet": {"kd_loss": "kl", "feature_loss": "fitnet"},
    "kl_softmax_by_cls_nofeat": {"kd_loss": "kl", "kl_softmax": True, "weight_by_cls": True, "feature_loss": "none"},
    "l2_at_layers_alpha_beta": {"alpha": 3.0, "beta": 0.5, "student_layers": "model.4,model.6",
                                "teacher_layers": "4,6"},
    "l2_fitnet_beta_hyp_kd": {"feature_loss": "fitnet", "beta": 0.2, "hyp": {"kd": 2.0, "giou": 0.1}},
}


def models():
    torch.manual_seed(0)
    student = Model("models/yolov5n.yaml", nc=NC)
    torch.manual_seed(1)
    teacher = Model("models/yolov5s.yaml", nc=NC)
    return student, teacher


def batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 64, 64, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5], [1, 0, 0.7, 0.3, 0.3, 0.3]])
    return imgs, targets


def seeded_adapters_(convs) -> None:
    """Deterministic FitNet adapter weights, the same in the old and the new code (pair order)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.01)


def zero_loss(pred, targets):
    return pred[0].sum() * 0, torch.zeros(3)


def grad_norm(model) -> float:
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)))


def main(out_file: str) -> None:
    from distill.objective import build_kd_objective

    results = {}
    for name, flags in CASES.items():
        flags = dict(flags)
        hyp = {**HYP, **flags.pop("hyp", {})}
        student, teacher = models()
        student.train()
        objective = build_kd_objective(student, teacher, ComputeLoss.from_model(student, hyp), hyp,
                                       SimpleNamespace(**flags))
        if objective.adapters is not None:
            seeded_adapters_([a.conv for a in objective.adapters])
        imgs, targets = batch()
        out = objective(student, imgs, targets)
        out["loss"].backward()
        results[name] = {"flags": CASES[name], **{k: float(v.detach()) for k, v in out.items()},
                         "student_grad_norm": grad_norm(student)}
        # the distillation terms alone (detection loss replaced by 0): their gradient reaching the student
        student, teacher = models()
        student.train()
        objective = build_kd_objective(student, teacher, zero_loss, hyp, SimpleNamespace(**flags))
        if objective.adapters is not None:
            seeded_adapters_([a.conv for a in objective.adapters])
        objective(student, imgs, targets)["loss"].backward()
        results[name]["kd_only_student_grad_norm"] = grad_norm(student)
        print(name, results[name])
    with open(out_file, "w") as f:
        json.dump({"generated_with": "commit 54c5eb5 (KDObjective before the Distiller engine)",
                   "torch": torch.__version__, "cases": results}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
