"""BCKD, MGD and CrossKD (distill/losses/bckd.py, mgd.py, crosskd.py): values by hand, minima, gradients, the
frozen private teacher head of CrossKD, MGD's mask, autocast, both head families, size invariance and recipes.

Tiny yolov5n / yolov5s and yolov8n / yolov8s models (nc=3) at 64 px, seeded; CPU.
"""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch
from conftest import ROOT
from torch import nn

from distill.context import KDContext
from distill.hooks import FeatureHooks
from distill.losses import SPECS, ShapeError, build_loss, detect_input_layers
from distill.losses.bckd import HeadInfo, dense_kd, dense_level
from distill.losses.crosskd import frozen_copy, head_levels
from distill.yolo_config import load_kd_config
from models.yolo import Model
from utils.general import UserError

NC, IMG, BS = 3, 64, 2
_CACHE: dict = {}


def _pair(family: str):
    """(student, teacher) of a family, built once: yolov5n <- yolov5s or yolov8n <- yolov8s, nc=3."""
    if family not in _CACHE:
        torch.manual_seed(0)
        names = ("yolov5n.yaml", "yolov5s.yaml") if family == "v5" else ("models/yolov8n.yaml", "models/yolov8s.yaml")
        _CACHE[family] = Model(names[0], nc=NC), Model(names[1], nc=NC)
    s, t = _CACHE[family]
    return deepcopy(s).train(), deepcopy(t).eval()


def _ctx(family: str = "v5"):
    """ctx, the student's and teacher's maps entering their heads, and their raw head outputs."""
    student, teacher = _pair(family)
    imgs = torch.rand(BS, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FeatureHooks(student, detect_input_layers(student)) as hs, \
            FeatureHooks(teacher, detect_input_layers(teacher)) as ht:
        s_out, t_out = student(imgs), teacher(imgs)[1]
    ctx = KDContext(imgs=imgs, student=student, teacher=teacher, student_out=s_out, teacher_out=t_out,
                    iteration=7)
    return ctx, hs.outputs, ht.outputs


def _channels(s, t) -> dict:
    return {"student_channels": [x.shape[1] for x in s], "teacher_channels": [x.shape[1] for x in t]}


def _identity_(module: nn.Module) -> None:
    """Square convs of a loss (adapters, generator) set to the identity map."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels:
                m.weight.zero_()
                kh, kw = m.kernel_size
                m.weight[range(m.out_channels), range(m.in_channels), kh // 2, kw // 2] = 1.0
                if m.bias is not None:
                    m.bias.zero_()


# ------------------------------------------------------------------------------------------------
# the shared dense terms, by hand


def test_dense_kd_by_hand():
    """One YOLOv5 point (1 anchor, 1 cell, nc=2): the class and box terms computed with math, power 1 and 2."""
    ps = torch.tensor([0.2, -0.3, 0.1, 0.4, 0.5, 1.0, -1.0]).view(1, 1, 1, 1, 7)
    pt = torch.tensor([0.0, 0.1, -0.2, 0.3, 1.5, 2.0, -2.0]).view(1, 1, 1, 1, 7)
    anchors = torch.tensor([[[1.5, 2.0]]])  # (nl, na, 2) grid units
    info = HeadInfo("v5", anchors=anchors)
    sig = lambda x: 1 / (1 + math.exp(-x))

    def decode(p):
        x, y = sig(p[0]) * 2 - 0.5, sig(p[1]) * 2 - 0.5
        w, h = (sig(p[2]) * 2) ** 2 * 1.5, (sig(p[3]) * 2) ** 2 * 2.0
        return x - w / 2, y - h / 2, x + w / 2, y + h / 2

    a, b = decode(ps.flatten().tolist()), decode(pt.flatten().tolist())
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    g = inter / union - (hull - union) / hull
    s_obj, t_obj = sig(0.5), sig(1.5)
    p_s = [s_obj * sig(1.0), s_obj * sig(-1.0)]
    p_t = [t_obj * sig(2.0), t_obj * sig(-2.0)]
    qfl = sum(abs(q - p) ** 2 * -(q * math.log(p) + (1 - q) * math.log(1 - p)) for p, q in zip(p_s, p_t))
    for power in (1.0, 2.0):
        w = max(p_t) ** power
        cls, box = dense_kd([dense_level(ps, info, 0)], [dense_level(pt, info, 0)], gamma=2.0, power=power)
        # float32 against float64 on values ~0.01-1: a relative 1e-5 is ~100 float32 ulps of margin
        assert cls.item() == pytest.approx(qfl / w, rel=1e-5)
        assert box.item() == pytest.approx(w * (1 - g) / w, rel=1e-5)


def test_giou_of_known_boxes():
    """The GIoU bckd and crosskd take (utils.metrics.bbox_iou, xyxy rows matched one to one)."""
    from utils.metrics import bbox_iou

    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    # box 0: IoU 1/7, hull 9, union 7 -> 1/7 - 2/9; box 1: identical boxes -> 1 (to the 1e-7 eps)
    assert bbox_iou(a, b, xywh=False, GIoU=True).tolist() == pytest.approx([1 / 7 - 2 / 9, 1.0], abs=1e-6)


# ------------------------------------------------------------------------------------------------
# BCKD


@pytest.mark.parametrize("family", ["v5", "v8"])
def test_bckd_zero_at_the_teacher_and_gradients(family):
    ctx, _, _ = _ctx(family)
    loss = build_loss("bckd")
    t = [p.clone() for p in ctx.teacher_out]
    s = [p.clone().requires_grad_(True) for p in t]
    ctx.student = ctx.teacher  # same anchors / reg_max on both sides
    value = loss([s], [t], ctx)
    assert value.dtype == torch.float32 and abs(value.item()) < 1e-6  # 1 - GIoU of equal boxes: ~1e-7 from eps
    value.backward()
    assert max(x.grad.abs().max().item() for x in s) < 1e-5
    noisy = [(p + 0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
             for p in t]
    value = loss([noisy], [t], ctx)
    value.backward()
    assert value.item() > 1e-3 and all(x.grad.abs().sum() > 0 for x in noisy)


def test_bckd_refuses_the_yolo_output_flags_and_other_classes():
    with pytest.raises(UserError, match="YoloKDLoss entry"):
        build_loss("bckd", T=10.0)
    ctx, _, _ = _ctx("v5")
    t = ctx.teacher_out
    s = [torch.cat((p, p[..., -1:]), -1) for p in t]  # one class more on the student
    with pytest.raises(UserError, match="teacher_classes"):
        build_loss("bckd")([s], [t], ctx)
    # with a class map (student class 3 has no teacher class) the matched classes are compared
    loss = build_loss("bckd", class_index=[0, 1, 2, -1])
    assert torch.isfinite(loss([s], [t], ctx))


# ------------------------------------------------------------------------------------------------
# MGD


def test_mgd_zero_without_mask_and_identity_generator():
    ctx, _, t = _ctx("v5")
    t = [x.relu() for x in t]  # the identity generator (ReLU inside) returns maps >= 0 unchanged
    loss = build_loss("mgd", mask_ratio=0.0, **_channels(t, t))
    _identity_(loss)
    assert loss(t, t, ctx).item() == 0.0
    assert SPECS["mgd"].cls.zero_at_optimum is False  # with the paper's mask it is not 0 at the teacher


def test_mgd_mask_share_determinism_and_rng():
    ctx, s, t = _ctx("v5")
    loss = build_loss("mgd", **_channels(s, t))
    x = torch.zeros(16, 1, 40, 40)
    keep = loss.mask(x, 0, 7)
    # 25600 Bernoulli(0.35) draws: std of the share 0.003; 0.02 is > 6 sigma
    assert abs(1 - keep.mean().item() - 0.65) < 0.02
    assert torch.equal(keep, loss.mask(x, 0, 7)) and not torch.equal(keep, loss.mask(x, 0, 8))
    assert not torch.equal(keep, loss.mask(x, 1, 7))
    state = torch.random.get_rng_state()
    a = loss(s, t, ctx)
    assert torch.equal(state, torch.random.get_rng_state())  # the run's random stream is untouched
    assert a.item() == loss(s, t, ctx).item()  # same step, same mask
    loss.eval()
    unmasked = loss(s, t, ctx)
    assert unmasked.item() != a.item()  # eval: no mask


def test_mgd_decreases_as_the_generator_learns():
    """Student maps fixed: training the align convs and the generator lowers the loss (it cannot reach 0:
    the masked positions are regenerated from their neighbours)."""
    ctx, s, t = _ctx("v5")
    torch.manual_seed(0)
    loss = build_loss("mgd", **_channels(s, t))
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    values = []
    for step in range(30):
        ctx.iteration = step  # a new mask each step, as in training
        value = loss(s, t, ctx)
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(value.item())
    assert sum(values[-5:]) < 0.5 * sum(values[:5]), values


# ------------------------------------------------------------------------------------------------
# CrossKD


@pytest.mark.parametrize("family", ["v5", "v8"])
def test_crosskd_zero_at_the_teacher_gradients_and_frozen_head(family):
    """The automatic per-loss checks (tests/test_distiller_losses.py) on real head inputs: CrossKD's maps must
    be the ones entering the teacher's head, which that file's random 'feature' maps are not."""
    ctx, s, t = _ctx(family)
    head = ctx.teacher.model[-1]
    before = {k: v.clone() for k, v in head.state_dict().items()}
    same = build_loss("crosskd", **_channels(t, t))
    leaves = [x.clone().requires_grad_(True) for x in t]
    value = same(leaves, t, ctx)
    assert value.dtype == torch.float32 and abs(value.item()) < 1e-6  # exact but for GIoU's 1e-7 eps
    value.backward()
    assert max(x.grad.abs().max().item() for x in leaves) < 1e-5

    loss = build_loss("crosskd", **_channels(s, t))
    s_leaves = [x.clone().requires_grad_(True) for x in s]
    t_leaves = [x.clone().requires_grad_(True) for x in t]
    value = loss(s_leaves, t_leaves, ctx)
    value.backward()
    assert value.item() > 0 and all(x.grad is not None and x.grad.abs().sum() > 0 for x in s_leaves)
    assert all(x.grad is None for x in t_leaves)
    for name, p in loss.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the private head: outside parameters() / state_dict(), frozen; the teacher's own head untouched
    assert all(k.startswith("adapters.") for k in loss.state_dict())
    assert all(p.grad is None for p in head.parameters())
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    private = loss.__dict__["_cross_head"][1]
    assert private is not head and not any(p.requires_grad for p in private.parameters())


def test_crosskd_head_copy_matches_the_teacher_and_drops_its_hooks():
    ctx, _, t = _ctx("v5")
    head = ctx.teacher.model[-1]
    with FeatureHooks(ctx.teacher, [f"model.{len(ctx.teacher.model) - 1}"]) as hooks:
        private = frozen_copy(head)
        assert not private._forward_hooks  # a copied hook would write into `hooks` from the loss
        out = head_levels(private, t)
        with pytest.raises(RuntimeError, match="no output captured"):
            hooks.outputs  # noqa: B018 (the copy ran; the teacher's hooked head did not)
    for mine, theirs in zip(out, ctx.teacher_out):
        # the same float32 convs on the same maps: equal up to summation order
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_crosskd_names_the_layers_when_the_widths_do_not_fit_the_head():
    ctx, _, t = _ctx("v5")
    small = [x[:, :16] for x in t]
    loss = build_loss("crosskd", **_channels(small, small))
    with pytest.raises(ShapeError, match="detect_inputs"):
        loss(small, small, ctx)


# ------------------------------------------------------------------------------------------------
# all three


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["bckd", "mgd", "crosskd"])
def test_float32_under_autocast(name, dtype):
    ctx, s, t = _ctx("v5")
    if name == "bckd":
        args = ([ctx.student_out], [ctx.teacher_out])
        loss = build_loss(name)
    else:
        args = (s, t)
        loss = build_loss(name, **_channels(s, t))
    with torch.autocast("cpu", dtype=dtype):
        value = loss(*args, ctx)
    assert value.dtype == torch.float32 and torch.isfinite(value) and value.item() > 0


@pytest.mark.parametrize("name", ["bckd", "mgd", "crosskd"])
def test_recipes_and_registration(name):
    recipe = load_kd_config(ROOT / "data" / "kd" / f"{name}.yaml")
    (entry,) = [e for e in recipe.losses if e.type == name]
    assert entry.name == name and entry.weight is None  # the registered default applies
    spec = SPECS[name]
    assert spec.default_layers == ("detect" if name == "bckd" else "detect_inputs")
    assert 0 < spec.weight() < 1 and spec.weight(family="v8") > 0
    assert "arXiv" in spec.cls.__doc__


def test_bckd_keeps_its_ratio_to_the_detection_loss_at_any_size():
    """tests/test_kd_scale.py's output-KD check for bckd (its feature check cannot hook a head): the same 4 shapes
    images letterboxed into 160, 320 and 640 px canvases, the bckd term over the detection loss within 1.5x."""
    from test_kd_scale import STUDENT, TEACHER, letterbox, objective_for, shapes_batch

    from models.checkpoint import attempt_load

    student = attempt_load(STUDENT, fuse=False).eval()
    teacher = attempt_load(TEACHER, fuse=True).eval()
    imgs, targets = shapes_batch(student)
    ratios = []
    for size in (160, 320, 640):
        objective = objective_for(student, teacher, {"type": "bckd", "name": "bckd", "layers": "detect"}, size)
        x, y = letterbox(imgs, targets, size)
        with torch.no_grad():
            out = objective(student, x, y)
        ratios.append(float(out["bckd"]) / float(out["box"] + out["obj"] + out["cls"]))
    assert max(ratios) / min(ratios) < 1.5, ratios
