"""Detection feature losses: zero at student == teacher, gradients to student and adapters only, bf16."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.context import KDContext
from distill.losses import (
    SPECS,
    ChannelWiseDivergence,
    FineGrainedImitation,
    PearsonDistillation,
    ScoreWeightedL2,
    ShapeError,
    StridedFeatureMSE,
    detect_input_layers,
    teacher_score,
)
from distill.losses._detection import FeatureLoss
from models.yolo import Detect
from utils.general import UserError

LOSSES = {name: s.cls for name, s in SPECS.items() if issubclass(s.cls, FeatureLoss)}  # the detection feature losses
B, NC = 2, 3
SIZES = [(8, 8), (4, 4), (2, 2)]  # a 64 px image at strides 8, 16, 32
STUDENT_CH, TEACHER_CH = [4, 8, 16], [8, 16, 32]
# IDENTITY_TOL: with identity adapters the student path computes x * 1 + 0 * neighbours in float32
# (possibly through Winograd or blocked sums), so each element is off by at most a few ulps of values
# <= ~5 (relu of N(0, 1)): |delta| < 1e-5, squared < 1e-10, and the losses are means or per-location
# sums over <= 16 channels: < 2e-9. 1e-8 keeps that margin while a one-cell shift or a wrong scale gives
# losses of order 1 (checked by the perturbed case of the same test).
IDENTITY_TOL = 1e-8


def _student_model(anchors_px=((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))):
    """A minimal YOLOv5-like model: only .model[-1] (a real Detect with stride and grid-unit anchors)."""
    detect = Detect(nc=NC, anchors=anchors_px, ch=STUDENT_CH)
    detect.stride = torch.tensor([8.0, 16.0, 32.0])
    detect.anchors /= detect.stride.view(-1, 1, 1)
    model = nn.Module()
    model.model = nn.Sequential(detect)
    return model


def _raw_outputs(seed=0, obj=None):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(B, 3, h, w, 5 + NC, generator=g) for h, w in SIZES]
    if obj is not None:
        for p in out:
            p[..., 4:] = obj
    return out


def _ctx(iteration=1000, targets=None):
    if targets is None:
        targets = torch.tensor([[0, 1, 0.3, 0.4, 0.3, 0.5], [1, 0, 0.7, 0.6, 0.6, 0.4], [1, 2, 0.1, 0.1, 0.2, 0.2]])
    return KDContext(targets=targets, student=_student_model(), student_out=_raw_outputs(1),
                     teacher_out=_raw_outputs(2), iteration=iteration)


def _feats(channels, seed=0, dtype=torch.float32, nonneg=False):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(B, c, h, w, generator=g) for c, (h, w) in zip(channels, SIZES)]
    return [(x.relu() if nonneg else x).to(dtype) for x in out]


def _set_identity(loss: nn.Module) -> None:
    """Make every adapter conv an identity map (equal widths): centre tap = eye, other taps and bias 0."""
    with torch.no_grad():
        for m in loss.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
                k = m.kernel_size[0] // 2
                m.weight[:, :, k, k] = torch.eye(m.out_channels, m.in_channels)


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_at_identity_positive_otherwise(name):
    torch.manual_seed(0)
    loss_fn = LOSSES[name](student_channels=TEACHER_CH, teacher_channels=TEACHER_CH)
    _set_identity(loss_fn)
    teacher = _feats(TEACHER_CH, seed=3, nonneg=True)  # >= 0: reachable through the ReLU adapters
    ctx = _ctx()
    assert loss_fn([t.clone() for t in teacher], teacher, ctx).item() < IDENTITY_TOL
    shifted = [t.roll(1, dims=-1) * 1.5 + 0.1 for t in teacher]  # a one-cell shift and a scale
    assert loss_fn(shifted, teacher, ctx).item() > 1e-3


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_reach_student_and_adapters_only(name):
    torch.manual_seed(0)
    loss_fn = LOSSES[name](student_channels=STUDENT_CH, teacher_channels=TEACHER_CH)
    student = [x.requires_grad_(True) for x in _feats(STUDENT_CH, seed=4)]
    teacher = [x.requires_grad_(True) for x in _feats(TEACHER_CH, seed=5)]
    loss = loss_fn(student, teacher, _ctx())
    assert loss.dtype == torch.float32 and loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert all(t.grad is None for t in teacher), "no gradient may reach the teacher"
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    params = list(loss_fn.parameters())
    assert params, "widths differ: every loss owns an adapter here"
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_finite_under_autocast(name, dtype):
    torch.manual_seed(0)
    loss_fn = LOSSES[name](student_channels=STUDENT_CH, teacher_channels=TEACHER_CH)
    student = [(x * 30).requires_grad_(True) for x in _feats(STUDENT_CH, seed=6, dtype=dtype)]
    teacher = [x * 30 for x in _feats(TEACHER_CH, seed=7, dtype=dtype)]  # large: exp(30) overflows fp16
    with torch.autocast("cpu", dtype=dtype):
        loss = loss_fn(student, teacher, _ctx())
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert all(torch.isfinite(s.grad).all() for s in student)


def test_registry_contract():
    assert set(LOSSES) == {"imitation", "cwd", "mse", "pkd", "scorel2"}
    assert {n: SPECS[n].default_layers for n in LOSSES} == dict.fromkeys(LOSSES, "detect_inputs")
    allowed = {"targets", "student", "teacher_out", "student_out"}
    for name, cls in LOSSES.items():
        assert set(cls.needs) <= allowed, name
        assert re.search(r"\(.*(19|20)\d\d", cls.__doc__.splitlines()[0]), f"{name}: cite the paper on line 1"
        with pytest.raises(UserError, match=name):
            cls(student_channels=[4, 8], teacher_channels=[8])


def test_check_shapes_before_any_forward():
    """The engine calls check_shapes with probed shapes at build: ShapeError is a ValueError for it and a
    UserError for the scripts."""
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, UserError)
    s_shapes, t_shapes = [(1, 4, 8, 8), (1, 8, 4, 4)], [(1, 8, 8, 8), (1, 16, 4, 4)]
    for cls in LOSSES.values():
        loss_fn = cls(student_channels=[4, 8], teacher_channels=[8, 16])
        loss_fn.check_shapes(s_shapes, t_shapes)
        with pytest.raises(ValueError, match="built for 4 -> 8 channels"):
            loss_fn.check_shapes([(1, 6, 8, 8), (1, 8, 4, 4)], t_shapes)
        with pytest.raises(ValueError, match="2 layer pairs"):
            loss_fn.check_shapes(s_shapes[:1], t_shapes[:1])
    finer = [(1, 4, 16, 16), (1, 8, 8, 8)]  # student one stride finer than the teacher
    StridedFeatureMSE([4, 8], [8, 16]).check_shapes(finer, t_shapes)
    PearsonDistillation([4, 8], [8, 16]).check_shapes(finer, t_shapes)
    for cls in (FineGrainedImitation, ChannelWiseDivergence, ScoreWeightedL2):
        with pytest.raises(ShapeError, match=r"\(1, 4, 16, 16\) and teacher map \(1, 8, 8, 8\)"):
            cls([4, 8], [8, 16]).check_shapes(finer, t_shapes)


def test_imitation_masks_warmup_and_empty_batch():
    loss_fn = FineGrainedImitation(TEACHER_CH, TEACHER_CH, warmup=400)
    _set_identity(loss_fn)
    teacher = _feats(TEACHER_CH, seed=8, nonneg=True)
    ctx = _ctx()
    masks = loss_fn.masks(teacher, ctx)
    assert [tuple(m.shape) for m in masks] == [(B, h, w) for h, w in SIZES]
    n_pos = sum(int(m.sum()) for m in masks)
    assert 0 < n_pos < sum(B * h * w for h, w in SIZES)
    b, i, j = torch.nonzero(masks[0])[0].tolist()
    b2, i2, j2 = torch.nonzero(~masks[0])[0].tolist()
    student = [t.clone() for t in teacher]
    student[0][b2, 0, i2, j2] += 5.0  # outside the mask: ignored
    assert loss_fn(student, teacher, ctx).item() < IDENTITY_TOL
    student[0][b, 0, i, j] += 2.0  # one positive cell, one channel: 2^2 / (2 N_p)
    assert loss_fn(student, teacher, ctx).item() == pytest.approx(4.0 / (2 * n_pos), rel=1e-5)

    early = loss_fn(student, teacher, _ctx(iteration=399))
    assert early.item() == 0.0
    early.backward()
    assert all(p.grad is not None for p in loss_fn.parameters()), "warm-up keeps adapters in the graph (DDP)"

    student = [x.requires_grad_(True) for x in _feats(TEACHER_CH, seed=9)]
    empty = loss_fn(student, teacher, _ctx(targets=torch.zeros(0, 6)))
    assert empty.item() == 0.0
    empty.backward()
    assert all(torch.isfinite(s.grad).all() for s in student)


def test_imitation_errors_name_shapes():
    loss_fn = FineGrainedImitation(STUDENT_CH, TEACHER_CH)
    student, teacher = _feats(STUDENT_CH), _feats(TEACHER_CH)
    with pytest.raises(UserError, match=r"\(2, 4, 4, 4\).*\(2, 8, 8, 8\)"):
        loss_fn([F.avg_pool2d(student[0], 2)] + student[1:], teacher, _ctx())
    with pytest.raises(UserError, match="no Detect level"):
        loss_fn([student[0][..., :3, :3]] + student[1:], [teacher[0][..., :3, :3]] + teacher[1:], _ctx())
    with pytest.raises(UserError, match="ctx.targets"):
        loss_fn(student, teacher, KDContext(iteration=1000))
    # a head with strides but no anchors (mutation survivor: the check's `and` made `or` let it through)
    headless = _student_model()
    del headless.model[-1].anchors
    ctx = _ctx()
    ctx.student = headless
    with pytest.raises(UserError, match="imitation needs an anchor-based YOLOv5 Detect head"):
        loss_fn(student, teacher, ctx)


def test_cwd_matches_kl_definition():
    tau = 2.0
    loss_fn = ChannelWiseDivergence(TEACHER_CH, TEACHER_CH, tau=tau)
    student, teacher = _feats(TEACHER_CH, seed=10), _feats(TEACHER_CH, seed=11)
    expected = 0.0
    for s, t in zip(student, teacher):
        n, c = t.shape[:2]
        p_t = F.softmax(t.double().flatten(2) / tau, -1)
        kl = F.kl_div(F.log_softmax(s.double().flatten(2) / tau, -1), p_t, reduction="sum")
        expected += kl.item() * tau**2 / (n * c)
    # float32 vs float64 softmax over <= 64 positions: relative error ~1e-6
    assert loss_fn(student, teacher, KDContext()).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(UserError, match=r"\(2, 8, 4, 4\).*\(2, 8, 8, 8\)"):
        loss_fn([F.avg_pool2d(student[0], 2)] + student[1:], teacher, KDContext())


def test_mse_strided_adapter():
    loss_fn = StridedFeatureMSE([4], [8])
    s = torch.randn(B, 4, 16, 12)
    t = torch.randn(B, 8, 8, 6)
    conv = loss_fn.adapters[0]
    direct = nn.Conv2d(4, 8, 3, stride=2, padding=1)
    direct.load_state_dict(conv.state_dict())
    expected = F.mse_loss(F.relu(direct(s)), t)
    # the same conv evaluated by one call path vs another: float32 sums of 36 products, ~1e-6 relative
    assert loss_fn([s], [t], KDContext()).item() == pytest.approx(expected.item(), rel=1e-5)
    for bad in (torch.randn(B, 4, 12, 9), torch.randn(B, 4, 16, 18), torch.randn(B, 4, 4, 3)):
        with pytest.raises(UserError, match=re.escape(str(tuple(bad.shape))) + ".*" + re.escape("(2, 8, 8, 6)")):
            loss_fn([bad], [t], KDContext())


def test_pkd_is_one_minus_pearson_and_scale_invariant():
    loss_fn = PearsonDistillation([6], [6], eps=0.0)
    s, t = torch.randn(B, 6, 5, 5), torch.randn(B, 6, 5, 5)
    s = s + 0.7 * t  # correlated
    r = [torch.corrcoef(torch.stack((s[:, c].flatten(), t[:, c].flatten())).double())[0, 1] for c in range(6)]
    expected = 1 - torch.stack(r).mean().item()
    # float32 standardisation of 50 values per channel: ~1e-6 absolute on a loss of order 0.5
    assert loss_fn([s], [t], KDContext()).item() == pytest.approx(expected, abs=1e-5)
    scaled = s * torch.tensor([3.0, 0.5, 2, 1, 7, 0.1]).view(1, 6, 1, 1) + 4.0
    assert loss_fn([scaled], [t], KDContext()).item() == pytest.approx(expected, abs=1e-5)
    resized = PearsonDistillation([6], [6])([torch.randn(B, 6, 10, 10)], [t], KDContext())  # stride 2x finer
    assert math.isfinite(resized.item()) and resized.item() > 0


def test_scorel2_weights_by_teacher_confidence():
    loss_fn = ScoreWeightedL2(TEACHER_CH, TEACHER_CH)
    _set_identity(loss_fn)
    teacher = _feats(TEACHER_CH, seed=12, nonneg=True)
    ctx = _ctx()
    ctx.teacher_out = _raw_outputs(3, obj=-30.0)  # sigma(-30) ~ 1e-13: no confidence anywhere
    ctx.teacher_out[1][1, 1:, 3, 0, 4:] = 30.0  # level 1, image 1, cell (3, 0): weight 1 (anchors 1, 2)
    ctx.teacher_out[1][0, 0, 2, 2, 4:] = torch.tensor([30.0, 1.0, -30.0, -30.0])  # image 0, cell (2, 2):
    w_b = torch.sigmoid(torch.tensor(1.0)).item()  # obj 1 x the best class sigma(1); best anchor, no means
    student = [t.clone() for t in teacher]
    student[1][0, 0, 0, 0] += 10.0  # a level-1 cell of weight ~1e-26 beside the confident ones: invisible
    student[1][1, 5, 3, 0] += 2.0  # the weight-1 cell: loss = 1 x 2^2 / (C (1 + w_b)), C = 16
    # weights 1 - 1e-13 and w_b, ~1e-26 elsewhere: the ratio is exact to float32 rounding (~1e-7)
    assert loss_fn(student, teacher, ctx).item() == pytest.approx(4.0 / (16 * (1 + w_b)), rel=1e-5)
    # each level is normalised by its own score mass (ultralytics' loss_sl2, issue 27): on level 0, where the
    # teacher is equally unsure everywhere, the weights are equal and the term is the plain mean of err / C
    student[0][0, 0, 1, 1] += 10.0
    c0, cells0 = teacher[0].shape[1], teacher[0].shape[0] * teacher[0].shape[2] * teacher[0].shape[3]
    assert loss_fn(student, teacher, ctx).item() == pytest.approx(4.0 / (16 * (1 + w_b)) + 100.0 / (c0 * cells0),
                                                                  rel=1e-5)
    single = torch.zeros(1, 1, 1, 1, 6)
    single[..., 4], single[..., 5] = 2.0, -50.0  # nc == 1: the untrained class logit is ignored
    assert teacher_score(single).item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    with pytest.raises(UserError, match="teacher_out"):
        loss_fn(teacher, teacher, KDContext(teacher_out=None))


@pytest.fixture(scope="module")
def yolo_pair():
    from models.yolo import Model

    torch.manual_seed(0)
    student, teacher = Model("models/yolov5n.yaml", nc=NC), Model("models/yolov5s.yaml", nc=NC).eval()
    teacher.requires_grad_(False)
    return student, teacher


@pytest.mark.parametrize("name", list(LOSSES))
def test_real_models_detect_inputs(yolo_pair, name):
    """yolov5n <- yolov5s on the maps entering Detect (64/128/256 -> 128/256/512 channels), train mode."""
    from distill.hooks import FeatureHooks

    student, teacher = yolo_pair
    layers = detect_input_layers(student)
    assert layers == ["model.17", "model.20", "model.23"] == detect_input_layers(teacher)
    head = student.model[-1]  # layer 24
    head.f, f = [-7, -4, -1], head.f  # relative to the head: 17, 20, and the layer before it (23)
    try:
        assert detect_input_layers(student) == layers
    finally:
        head.f = f
    imgs = torch.rand(B, 3, 64, 96)  # non-square: grids 8 x 12, 4 x 6, 2 x 3
    with FeatureHooks(student, layers) as s_feats:
        s_out = student(imgs)
    with torch.no_grad(), FeatureHooks(teacher, layers) as t_feats:
        t_out = teacher(imgs)[1]  # eval mode: (decoded, raw per-level list); the losses read the raw list
    loss_fn = LOSSES[name](student_channels=[64, 128, 256], teacher_channels=[128, 256, 512])
    ctx = KDContext(imgs=imgs, targets=torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.6], [1, 0, 0.2, 0.8, 0.3, 0.3]]),
                    student=student, teacher=teacher, student_out=s_out, teacher_out=t_out, iteration=10**6)
    loss = loss_fn(s_feats.outputs, t_feats.outputs, ctx)
    assert math.isfinite(loss.item()) and loss.item() > 0
    student.zero_grad()
    loss.backward()
    assert student.model[17].cv3.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", list(LOSSES))
def test_training_the_student_side_lowers_the_loss(name):
    """Adam on the student maps and the loss's adapters: the loss falls (adapters are trainable, signs right)."""
    torch.manual_seed(0)
    loss_fn = LOSSES[name](student_channels=STUDENT_CH, teacher_channels=TEACHER_CH)
    student = [x.requires_grad_(True) for x in _feats(STUDENT_CH, seed=13)]
    teacher = _feats(TEACHER_CH, seed=14, nonneg=True)
    opt = torch.optim.Adam(student + list(loss_fn.parameters()), lr=0.05)
    ctx = _ctx()
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(student, teacher, ctx)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, f"{name}: {first:.4g} -> {loss.item():.4g}"
