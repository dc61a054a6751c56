"""Optimizer groups, LR schedule and warmup against the v6.0 formulas computed by hand."""

import math

import pytest
import torch
from torch import nn

from engine.optim import (
    build_optimizer,
    lr_lambda,
    nominal_accumulate,
    scale_weight_decay,
    warmup,
    warmup_iterations,
)

HYP = {"lr0": 0.01, "lrf": 0.1, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.1}


class TinyDetector(nn.Module):
    """Two Conv+BN blocks (conv bias=False, as YOLOv5's Conv) and a biased 1x1 head like Detect."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 6, 1)


def ids(params):
    return [id(p) for p in params]


def test_group_membership_and_order():
    torch.manual_seed(0)
    model = TinyDetector()
    opt = build_optimizer(model, HYP)
    g0, g1, g2 = (g["params"] for g in opt.param_groups)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 3
    assert ids(g0) == ids([model.b1.weight, model.b2.weight])
    assert ids(g1) == ids([model.c1.weight, model.c2.weight, model.head.weight])
    assert ids(g2) == ids([model.b1.bias, model.b2.bias, model.head.bias])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, HYP["weight_decay"], 0.0]
    assert all(g["nesterov"] and g["momentum"] == HYP["momentum"] for g in opt.param_groups)
    assert all(g["lr"] == HYP["lr0"] for g in opt.param_groups)


def test_extra_modules_split_the_same_way_without_duplicates():
    model = TinyDetector()
    adapter = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    # model.head passed again must not appear twice (torch refuses duplicated parameters)
    opt = build_optimizer(model, HYP, extra_params=[adapter, model.head])
    g0, g1, g2 = (g["params"] for g in opt.param_groups)
    assert ids(g0)[-1] == id(adapter[1].weight) and len(g0) == 3
    assert ids(g1)[-1] == id(adapter[0].weight) and len(g1) == 4
    assert ids(g2)[-2:] == ids([adapter[0].bias, adapter[1].bias]) and len(g2) == 5
    total = sum(p.numel() for p in list(model.parameters()) + list(adapter.parameters()))
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == total
    with pytest.raises(TypeError, match="extra_params"):
        build_optimizer(model, HYP, extra_params=["adapter"])


def test_adam_betas_and_decay():
    opt = build_optimizer(TinyDetector(), HYP, adam=True)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["betas"] == (HYP["momentum"], 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, HYP["weight_decay"], 0.0]


def test_weight_decay_only_shrinks_group1():
    """One SGD step with zero gradients: only decayed weights move."""
    model = TinyDetector()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = build_optimizer(model, HYP)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.all(model.b1.weight == 1.0) and torch.all(model.head.bias == 1.0)
    assert torch.all(model.c1.weight < 1.0)


def test_nominal_batch_helpers():
    assert [nominal_accumulate(b) for b in (1, 16, 20, 48, 64, 128)] == [64, 4, 3, 1, 1, 1]
    assert scale_weight_decay(0.0005, 16, 4) == pytest.approx(0.0005)
    assert scale_weight_decay(0.0005, 20, 3) == pytest.approx(0.0005 * 60 / 64)
    assert warmup_iterations(3.0, 10) == 1000 and warmup_iterations(3.0, 500) == 1500


def test_lr_lambda_cosine_and_linear():
    cos = lr_lambda(10, 0.1)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1)
    assert cos(5) == pytest.approx(0.55)
    assert cos(3) == pytest.approx(((1 - math.cos(3 * math.pi / 10)) / 2) * (0.1 - 1) + 1)
    lin = lr_lambda(10, 0.1, linear=True)
    assert lin(0) == pytest.approx(1.0) and lin(9) == pytest.approx(0.1)
    assert lin(3) == pytest.approx((1 - 3 / 9) * 0.9 + 0.1)
    assert lr_lambda(1, 0.1, linear=True)(0) == pytest.approx(1.0)  # no division by zero


def make_optimizer_and_lf(linear=False, epochs=10):
    opt = build_optimizer(TinyDetector(), HYP)
    lf = lr_lambda(epochs, HYP["lrf"], linear=linear)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    return opt, lf, scheduler


def lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def test_warmup_start_mid_end():
    opt, lf, _ = make_optimizer_and_lf()
    nw, bs = 1000, 16
    assert warmup(opt, 0, nw, 0, lf, HYP, bs) == 1
    assert lrs(opt) == pytest.approx([0.0, 0.0, 0.1])
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)

    # mid-warmup in epoch 1: targets are lr0 * lf(1); accumulate = round(1 + 0.5 * 3) = round(2.5) = 2
    acc = warmup(opt, 500, nw, 1, lf, HYP, bs)
    target = 0.01 * lf(1)
    assert acc == 2
    assert lrs(opt) == pytest.approx([0.5 * target, 0.5 * target, 0.1 + 0.5 * (target - 0.1)])
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8 + 0.5 * (0.937 - 0.8))

    acc = warmup(opt, 250, nw, 0, lf, HYP, bs)  # 1 + 0.25 * 3 = 1.75 -> 2
    assert acc == 2 and lrs(opt)[0] == pytest.approx(0.25 * 0.01)

    assert warmup(opt, nw, nw, 2, lf, HYP, bs) == 4
    assert lrs(opt) == pytest.approx([0.01 * lf(2)] * 3)
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.937)


@pytest.mark.parametrize("linear", [False, True])
def test_after_warmup_scheduler_owns_lr(linear):
    opt, lf, scheduler = make_optimizer_and_lf(linear=linear)
    nw, bs, nb = 1000, 32, 400
    warmup(opt, nw, nw, 2, lf, HYP, bs)
    for _ in range(3):  # epochs 0, 1, 2 done (no gradients: the step changes nothing)
        opt.step()
        scheduler.step()
    before = lrs(opt)
    assert before == pytest.approx([0.01 * lf(3)] * 3)
    assert warmup(opt, 3 * nb + 5, nw, 3, lf, HYP, bs) == 2  # round(64 / 32)
    assert lrs(opt) == before and opt.param_groups[0]["momentum"] == pytest.approx(0.937)


def test_adam_warmup_leaves_betas():
    opt = build_optimizer(TinyDetector(), HYP, adam=True)
    lf = lr_lambda(10, HYP["lrf"])
    torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    warmup(opt, 100, 1000, 0, lf, HYP, 64)
    assert all("momentum" not in g and g["betas"] == (0.937, 0.999) for g in opt.param_groups)
    assert lrs(opt) == pytest.approx([0.001, 0.001, 0.1 + 0.1 * (0.01 - 0.1)])


def test_yolov5n_groups_match_v60_log():
    """v6.0 logs 57 BN weights, 60 weights and 60 biases for the P5 models (spec §8.1)."""
    yolo = pytest.importorskip("models.yolo")
    model = yolo.Model(yolo.MODELS_DIR / "yolov5n.yaml")
    opt = build_optimizer(model, HYP)
    assert [len(g["params"]) for g in opt.param_groups] == [57, 60, 60]
