"""Every registered distillation loss, automatically: at its minimum (0 unless documented) when student
== teacher, gradients reach the student tensors and the loss's own parameters, never the teacher's.
VID and IRG against values computed by hand (plain Python loops) on tiny tensors."""

import inspect
import math
from copy import deepcopy

import pytest
import torch
from torch import nn

from distill.context import KDContext
from distill.hooks import FeatureHooks
from distill.losses import LOSSES, VIDLoss, build_loss, detect_input_layers
from models.yolo import Model

NC, IMG, BS = 3, 64, 2
_MODELS = {}


def _yolo_ctx(iteration: int = 10**6) -> KDContext:
    """A real context: yolov5n student, yolov5s teacher (nc=3), 2 images of 64 px, their raw outputs.
    iteration is past every warm-up (imitation is off for its first 400 steps)."""
    if not _MODELS:
        torch.manual_seed(0)
        _MODELS["student"], _MODELS["teacher"] = Model("yolov5n.yaml", nc=NC), Model("yolov5s.yaml", nc=NC)
    student, teacher = deepcopy(_MODELS["student"]), deepcopy(_MODELS["teacher"]).eval()
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(BS, 3, IMG, IMG, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5], [1, 0, 0.7, 0.3, 0.6, 0.6]])
    with torch.no_grad():
        s_out, t_out = student.train()(imgs), teacher(imgs)[1]
    return KDContext(imgs=imgs, targets=targets, student=student, teacher=teacher, student_out=s_out,
                     teacher_out=t_out, iteration=iteration)


def _inputs(kind: str, ctx: KDContext, same: bool, seed: int):
    """(student_feats, teacher_feats) for a loss kind. same=True: student == teacher (equal widths,
    values >= 0 so adapters with a ReLU can be the identity); else narrower, different student tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, nonneg=False):
        x = torch.randn(*shape, generator=g)
        return x.relu() + 0.1 * x.abs() if nonneg else x

    if kind == "output":  # the Detect heads: raw (B, na, ny, nx, 5 + nc) per level
        t = [o.clone() for o in ctx.teacher_out]
        s = [o.clone() for o in t] if same else [o + rand(*o.shape) for o in t]
        return [s], [t]
    if kind == "dfl_output":  # the DetectV8 heads: raw (B, 4 * 16 + nc, ny, nx) per level, strides 8, 16, 32
        t = [rand(BS, 4 * 16 + NC, IMG // st, IMG // st) for st in (8, 16, 32)]
        s = [o.clone() for o in t] if same else [o + rand(*o.shape) for o in t]
        return [s], [t]
    if kind == "logits":
        t = [rand(BS, 6), rand(BS, 6)]
        return ([x.clone() for x in t] if same else [rand(BS, 6), rand(BS, 6)]), t
    if kind == "relation":  # two maps and the logits, in network order; the last pair of equal shape
        t = [rand(BS, 16, 8, 8, nonneg=True), rand(BS, 32, 4, 4, nonneg=True), rand(BS, 6)]
        s = [x.clone() for x in t] if same else [rand(BS, 8, 8, 8), rand(BS, 16, 4, 4), rand(BS, 6)]
        return s, t
    if kind == "feature":  # the three maps entering Detect at 64 px: strides 8, 16, 32
        t = [rand(BS, c, IMG // st, IMG // st, nonneg=True) for c, st in ((16, 8), (32, 16), (64, 32))]
        s = [x.clone() for x in t] if same else [rand(BS, c // 2, *x.shape[-2:]) for c, x in zip((16, 32, 64), t)]
        return s, t
    if kind == "head_input":  # the maps entering the teacher's head (CrossKD runs them through a copy of it)
        with torch.no_grad(), FeatureHooks(ctx.teacher, detect_input_layers(ctx.teacher)) as hooks:
            ctx.teacher(ctx.imgs)
        t = [x.clone() for x in hooks.outputs]
        s = [x.clone() for x in t] if same else [rand(BS, x.shape[1] // 2, *x.shape[-2:]) for x in t]
        return s, t
    raise AssertionError(f"no input recipe for loss kind {kind!r}: add one to this test")


def _build(name: str, s, t) -> nn.Module:
    params = inspect.signature(LOSSES[name].__init__).parameters
    kwargs = {}
    if "student_channels" in params:  # the engine fills these from a dummy forward
        kwargs = {"student_channels": [x.shape[1] for x in s], "teacher_channels": [x.shape[1] for x in t]}
    return build_loss(name, **kwargs)


def _identity_(loss: nn.Module) -> None:
    """Every square conv / linear of the loss (adapters, regressors, projectors) set to the identity."""
    with torch.no_grad():
        for m in loss.modules():
            if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels and m.groups == 1:
                m.weight.zero_()
                kh, kw = m.kernel_size
                m.weight[range(m.out_channels), range(m.in_channels), kh // 2, kw // 2] = 1.0
            elif isinstance(m, nn.Linear) and m.in_features == m.out_features:
                m.weight.copy_(torch.eye(m.in_features))
            else:
                continue
            if m.bias is not None:
                m.bias.zero_()


def _kind(name):
    return getattr(LOSSES[name], "kind", "feature")


@pytest.mark.parametrize("name", list(LOSSES))
def test_minimum_when_student_equals_teacher(name):
    ctx = _yolo_ctx()
    s, t = _inputs(_kind(name), ctx, same=True, seed=1)
    loss_fn = _build(name, s, t)
    _identity_(loss_fn)
    leaves = _leaves(s)
    value = loss_fn(s, t, ctx)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    grad = max(x.grad.abs().max().item() for x in leaves if x.grad is not None)
    assert grad < 1e-5, f"{name}: gradient {grad} at student == teacher"
    if getattr(loss_fn, "zero_at_optimum", True):
        assert abs(value.item()) < 1e-6, f"{name}: {value.item()} at student == teacher"
    # a minimum: every perturbation raises it (bce sits at the teacher entropy, vid at 0.5 mean log var)
    torch.manual_seed(2)
    s2 = _perturb(s)
    assert loss_fn(s2, t, ctx).item() > value.item() + 1e-6


def _leaves(feats):
    """Make the student tensors leaves that record gradients; returns them (nested lists flattened)."""
    out = []
    for i, x in enumerate(feats):
        if isinstance(x, list):
            out += _leaves(x)
        else:
            x.requires_grad_(True)
            out.append(x)
    return out


def _perturb(feats):
    if isinstance(feats, list):
        return [_perturb(x) for x in feats]
    return (feats.detach() + 0.3 * torch.randn_like(feats)).abs() if feats.dim() == 4 else \
        feats.detach() + 0.3 * torch.randn_like(feats)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_reach_student_and_loss_parameters_not_teacher(name):
    ctx = _yolo_ctx()
    s, t = _inputs(_kind(name), ctx, same=False, seed=3)
    torch.manual_seed(0)
    loss_fn = _build(name, s, t)
    s_leaves, t_leaves = _leaves(s), _leaves(t)
    value = loss_fn(s, t, ctx)
    assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    for i, x in enumerate(s_leaves):
        assert x.grad is not None and x.grad.abs().sum() > 0, f"{name}: no gradient for student tensor {i}"
    for i, x in enumerate(t_leaves):
        assert x.grad is None or not x.grad.any(), f"{name}: gradient reached teacher tensor {i}"
    for pname, p in loss_fn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: its parameter {pname} gets no gradient"


# --------------------------------------------------------------------------------------------------
# VID and IRG by hand


def test_vid_by_hand():
    """One pair, inC = midC = outC = 2, 1x1 maps of 2 samples; regressor weights chosen by hand."""
    vid = VIDLoss(inC=2, midC=2, outC=2, init_pred_var=5.0, eps=1e-5)
    w1, w2, w3 = [[1.0, 0.5], [-1.0, 2.0]], [[1.0, 0.0], [0.5, 1.0]], [[2.0, -1.0], [0.0, 1.0]]
    with torch.no_grad():
        for conv, w in zip((vid.regressors[0][0], vid.regressors[0][2], vid.regressors[0][4]), (w1, w2, w3)):
            conv.weight.copy_(torch.tensor(w).view(2, 2, 1, 1))
        vid.log_scales[0].copy_(torch.tensor([0.3, -1.2]))
    s = [[1.0, 2.0], [-0.5, 0.25]]
    t = [[3.0, -1.0], [0.0, 0.5]]

    def matvec(w, x):
        return [sum(w[i][j] * x[j] for j in range(2)) for i in range(2)]

    total = 0.0
    for b in range(2):
        h = [max(v, 0.0) for v in matvec(w1, s[b])]
        h = [max(v, 0.0) for v in matvec(w2, h)]
        mu = matvec(w3, h)
        for c, alpha in enumerate([0.3, -1.2]):
            var = math.log1p(math.exp(alpha)) + 1e-5
            total += 0.5 * ((mu[c] - t[b][c]) ** 2 / var + math.log(var))
    expected = total / 4  # mean over (B=2, C=2, H=1, W=1)
    got = vid([torch.tensor(s)], [torch.tensor(t)], None)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the initial variance is init_pred_var
    assert VIDLoss(inC=2, outC=2).variances()[0].tolist() == pytest.approx([5.0, 5.0], rel=1e-6)


def _sqdist(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b))


def _edge(rows):
    n = len(rows)
    d = [[_sqdist(rows[i], rows[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    m = max(max(r) for r in d)
    return [[v / m for v in r] for r in d]


def _mse(a, b):
    a, b = [x for r in a for x in (r if isinstance(r, list) else [r])], [x for r in b for x in (r if isinstance(r, list) else [r])]
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def test_irg_by_hand():
    """3 samples; layer A (B, 2, 1, 2) maps, layer B (B, 1, 1, 1) maps, logits (B, 2): every term by hand."""
    g = torch.Generator().manual_seed(0)
    sa, ta = torch.randn(3, 2, 1, 2, generator=g), torch.randn(3, 4, 1, 2, generator=g)  # widths differ
    sb, tb = torch.randn(3, 1, 1, 1, generator=g), torch.randn(3, 2, 1, 1, generator=g)
    sl, tl = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    irg = build_loss("irg", vert=0.1, edge=5.0, tran=5.0)
    got = irg([sa, sb, sl], [ta, tb, tl], None)

    def rows(x):
        return [r.flatten().tolist() for r in x]

    vert = _mse(sl.tolist(), tl.tolist())
    edge = sum(_mse(_edge(rows(a)), _edge(rows(b))) for a, b in ((sa, ta), (sb, tb), (sl, tl))) / 3

    def tran_ab(a, b):  # layer A (C, 1, 2) vs layer B (c, 1, 1): A pooled to 1x1, then channels to min(C, c)
        a_vec = [[sum(r[c * 2:(c + 1) * 2]) / 2 for c in range(a.shape[1])] for r in rows(a)]  # spatial mean
        b_vec = rows(b)
        c = min(len(a_vec[0]), len(b_vec[0]))
        pool = [lambda v: [sum(v[k * len(v) // c:(k + 1) * len(v) // c]) / (len(v) // c) for k in range(c)]][0]
        d = [_sqdist(pool(x), pool(y)) for x, y in zip(a_vec, b_vec)]
        return [v / max(d) for v in d]

    def tran_bl(b, lg):  # layer B (c, 1, 1) vs logits (2,): both vectors, channels to min
        b_vec, l_vec = rows(b), lg.tolist()
        c = min(len(b_vec[0]), len(l_vec[0]))

        def pool(v):
            return [sum(v[k * len(v) // c:(k + 1) * len(v) // c]) / (len(v) // c) for k in range(c)]

        d = [_sqdist(pool(x), pool(y)) for x, y in zip(b_vec, l_vec)]
        return [v / max(d) for v in d]

    tran = (_mse(tran_ab(sa, sb), tran_ab(ta, tb)) + _mse(tran_bl(sb, sl), tran_bl(tb, tl))) / 2
    expected = 0.1 * vert + 5.0 * edge + 5.0 * tran
    assert got.item() == pytest.approx(expected, rel=1e-5)
    terms = irg.terms([sa, sb, sl], [ta, tb, tl])
    assert terms["edge"].item() == pytest.approx(edge, rel=1e-5) and terms["tran"].item() == pytest.approx(tran, rel=1e-5)
    # two pairs: one transformation (mutation survivor: `len(s) > 1` made `> 2` went unseen)
    two = irg.terms([sb, sl], [tb, tl])["tran"].item()
    assert two == pytest.approx(_mse(tran_bl(sb, sl), tran_bl(tb, tl)), rel=1e-5) and two > 0
    # one pair: no transformation term; the vertex needs equal last shapes
    assert irg.terms([sl], [tl])["tran"].item() == 0.0
    with pytest.raises(ValueError, match="vertex"):
        irg([sa], [ta], None)


def test_vanilla_kd_by_hand():
    """tau^2 * sum_k p_T log(p_T / p_S) averaged over the batch, softmax at T = 4."""
    s, t = [[1.0, -2.0, 0.5]], [[3.0, 0.0, -1.0]]
    tau = 4.0

    def softmax(z):
        e = [math.exp(v / tau) for v in z]
        return [v / sum(e) for v in e]

    ps, pt = softmax(s[0]), softmax(t[0])
    expected = tau * tau * sum(q * math.log(q / p) for p, q in zip(ps, pt))
    assert build_loss("vanilla_kd", T=4)([torch.tensor(s)], [torch.tensor(t)], None).item() == \
        pytest.approx(expected, rel=1e-6)


def test_vid_needs_both_channel_lists():
    """student_channels alone is a clear error (mutation survivor: `and` made `or` reached zip(list, None))."""
    assert VIDLoss(student_channels=[8], teacher_channels=[16]).channels == [(8, 16)]
    for kw in ({"student_channels": [8]}, {"teacher_channels": [16]}):
        with pytest.raises(ValueError, match="vid needs inC/midC/outC, or student_channels/teacher_channels"):
            VIDLoss(**kw)
