"""ComputeLoss: the v6.0 reference values, target assignment by hand, and its switches."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from utils.general import yaml_load
from utils.losses.yolov5 import (
    ComputeLoss,
    FocalLoss,
    last_writes,
    scale_loss_gains,
    smooth_BCE,
    take_cells,
)

HYP_FILE = Path(__file__).resolve().parents[1] / "data/hyps/hyp.scratch.yaml"
ANCHORS_PX = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                           [116, 90, 156, 198, 373, 326]], dtype=torch.float32).view(3, 3, 2)
STRIDES = torch.tensor([8.0, 16.0, 32.0])
ANCHORS = ANCHORS_PX / STRIDES.view(3, 1, 1)  # grid units, like the Detect buffer


def fixture_hyp(**over):
    """hyp.scratch.yaml scaled as train.py does for the fixtures (nc=80, nl=3, imgsz=256)."""
    hyp = yaml_load(HYP_FILE)
    hyp["label_smoothing"] = 0.0
    hyp.update(over)
    return scale_loss_gains(hyp, nc=80, nl=3, imgsz=256)


def random_preds(nc=80, bs=2, sizes=((16, 16), (8, 8), (4, 4)), seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, ny, nx, 5 + nc, generator=g).mul_(0.5).requires_grad_(requires_grad)
            for ny, nx in sizes]


TARGETS = torch.tensor([[0, 3, 0.5, 0.5, 0.3, 0.4], [0, 1, 0.2, 0.3, 0.05, 0.08],
                        [1, 0, 0.7, 0.6, 0.5, 0.35], [1, 2, 0.33, 0.77, 0.12, 0.6]])


@pytest.mark.parametrize("name", ["yolov5n", "yolov5s"])
def test_matches_v60_reference(reference, name):
    loss_fn = ComputeLoss(fixture_hyp(), ANCHORS, nc=80)
    loss, items = loss_fn(reference[f"{name}/train_raw"], reference["targets"])
    ref_loss, ref_items = reference[f"{name}/loss"], reference[f"{name}/loss_items"]
    assert loss.shape == (1,) and items.shape == (3,)
    assert torch.allclose(loss, ref_loss, rtol=1e-4, atol=0)
    assert torch.allclose(items, ref_items, rtol=1e-4, atol=0)


def test_fixture_checkpoint_anchors_cross_check(fixtures_dir):
    """The fixture models carry the standard v6.0 anchors (only once models/checkpoint exist)."""
    checkpoint = pytest.importorskip("models.checkpoint")
    model = checkpoint.attempt_load(fixtures_dir / "yolov5n_v6.0.pt", map_location="cpu", fuse=False)
    det = model.model[-1]
    assert torch.allclose(det.anchors.float(), ANCHORS)
    via_model = ComputeLoss.from_model(model, fixture_hyp())
    assert torch.equal(via_model.anchors, ANCHORS) and via_model.nc == 80 and via_model.nl == 3


def test_from_model_reads_detect_attributes():
    det = SimpleNamespace(nc=5, nl=3, na=3, anchors=ANCHORS.clone(), stride=STRIDES)
    model = SimpleNamespace(model=[nn.Identity(), det])
    hyp = fixture_hyp()
    a = ComputeLoss.from_model(model, hyp)
    b = ComputeLoss(hyp, ANCHORS, nc=5)
    assert (a.nc, a.nl, a.na) == (5, 3, 3) and torch.equal(a.anchors, ANCHORS)
    p = random_preds(nc=5)
    assert torch.equal(a(p, TARGETS)[0], b(p, TARGETS)[0])
    wrapped = SimpleNamespace(module=model)  # DataParallel-style wrapper
    assert ComputeLoss.from_model(wrapped, hyp).nc == 5


def test_build_targets_by_hand():
    """One target: its own cell plus the left and the bottom neighbour, only the matching anchor."""
    anchors = torch.tensor([[[2.0, 2.0], [20.0, 20.0], [0.2, 0.2]]])  # nl=1, grid units
    loss_fn = ComputeLoss(fixture_hyp(), anchors, nc=4)
    p = [torch.zeros(1, 3, 8, 8, 9)]
    t = torch.tensor([[0, 2, 0.3, 0.6, 0.25, 0.25]])  # grid xy (2.4, 4.8), wh (2, 2)
    tcls, tbox, indices, anch = loss_fn.build_targets(p, t)
    b, a, gj, gi = indices[0]
    cells = sorted(zip(gj.tolist(), gi.tolist()))
    assert cells == [(4, 1), (4, 2), (5, 2)]
    assert a.tolist() == [0, 0, 0] and b.tolist() == [0, 0, 0] and tcls[0].tolist() == [2, 2, 2]
    by_cell = {(int(y), int(x)): tb[:2].tolist() for y, x, tb in zip(gj, gi, tbox[0])}
    assert by_cell[(4, 2)] == pytest.approx([0.4, 0.8], abs=1e-5)
    assert by_cell[(4, 1)] == pytest.approx([1.4, 0.8], abs=1e-5)
    assert by_cell[(5, 2)] == pytest.approx([0.4, -0.2], abs=1e-5)
    assert torch.allclose(tbox[0][:, 2:], torch.tensor([2.0, 2.0]))
    assert torch.equal(anch[0], anchors[0, [0, 0, 0]])


def test_anchor_t_rejects_mismatched_shapes():
    anchors = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    p = [torch.zeros(1, 3, 8, 8, 9)]
    t = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.1]])  # 4 x 0.8 grid units: ratio 4 is not < 4
    assert ComputeLoss(fixture_hyp(), anchors, nc=4).build_targets(p, t)[2][0][0].numel() == 0
    assert ComputeLoss(fixture_hyp(anchor_t=4.5), anchors, nc=4).build_targets(p, t)[2][0][0].numel() > 0


def test_gradients_flow():
    p = random_preds(requires_grad=True)
    loss, items = ComputeLoss(fixture_hyp(), ANCHORS, nc=80)(p, TARGETS)
    assert not items.requires_grad
    loss.backward()
    for pi in p:
        assert pi.grad is not None and torch.isfinite(pi.grad).all() and pi.grad.abs().sum() > 0
    assert loss.item() == pytest.approx(items.sum().item() * 2, rel=1e-6)  # x batch size 2


def test_single_class_skips_cls_loss():
    p = random_preds(nc=1)
    loss_fn = ComputeLoss(fixture_hyp(), ANCHORS, nc=1)
    targets = TARGETS.clone()
    targets[:, 1] = 0
    loss, items = loss_fn(p, targets)
    assert items[2] == 0 and items[0] > 0 and items[1] > 0
    p2 = [pi.clone() for pi in p]
    for pi in p2:
        pi[..., 5] += 3.0  # the class logit must not matter
    assert torch.equal(loss_fn(p2, targets)[0], loss)


def test_label_smoothing_changes_only_cls():
    assert smooth_BCE(0.1) == pytest.approx((0.95, 0.05))
    p = random_preds(nc=4)
    _, plain = ComputeLoss(fixture_hyp(), ANCHORS, nc=4)(p, TARGETS)
    _, smooth = ComputeLoss(fixture_hyp(label_smoothing=0.1), ANCHORS, nc=4)(p, TARGETS)
    assert torch.equal(plain[:2], smooth[:2]) and plain[2] != smooth[2]
    # hand value for one positive of one level: BCE(x, cp) at the true class, BCE(x, cn) elsewhere
    loss_fn = ComputeLoss(fixture_hyp(label_smoothing=0.1), ANCHORS, nc=4)
    tcls, _, indices, _ = loss_fn.build_targets(p, TARGETS)
    b, a, gj, gi = indices[0]
    logits = p[0][b, a, gj, gi][:, 5:]
    t = torch.full_like(logits, 0.05)
    t[torch.arange(len(b)), tcls[0]] = 0.95
    expected = nn.functional.binary_cross_entropy_with_logits(logits, t)
    assert loss_fn.BCEcls(logits, t) == pytest.approx(expected.item())


def test_empty_targets_are_finite():
    p = random_preds(requires_grad=True)
    loss, items = ComputeLoss(fixture_hyp(), ANCHORS, nc=80)(p, torch.zeros(0, 6))
    assert torch.isfinite(loss).all() and items[0] == 0 and items[2] == 0 and items[1] > 0
    loss.backward()
    assert all(torch.isfinite(pi.grad).all() for pi in p)


@pytest.mark.parametrize("gamma", [0.5, 1.5])  # 0.5 too: a `gamma > 1` mutant of the class term survived 1.5
def test_focal_loss_when_gamma_positive(gamma):
    p = random_preds(nc=4)
    plain = ComputeLoss(fixture_hyp(), ANCHORS, nc=4)
    focal = ComputeLoss(fixture_hyp(fl_gamma=gamma), ANCHORS, nc=4)
    _, a = plain(p, TARGETS)
    _, b = focal(p, TARGETS)
    assert isinstance(focal.BCEobj, FocalLoss) and isinstance(focal.BCEcls, FocalLoss)
    assert torch.equal(a[0], b[0]) and b[1] < a[1] and b[2] < a[2]  # the focal factor is < 1


def test_scale_loss_gains():
    hyp = {"box": 0.05, "cls": 0.5, "obj": 1.0, "lr0": 0.01}
    out = scale_loss_gains(hyp, nc=20, nl=4, imgsz=320)
    assert hyp == {"box": 0.05, "cls": 0.5, "obj": 1.0, "lr0": 0.01}  # input untouched
    assert out["box"] == pytest.approx(0.05 * 3 / 4)
    assert out["cls"] == pytest.approx(0.5 * 20 / 80 * 3 / 4)
    assert out["obj"] == pytest.approx(1.0 * 0.25 * 3 / 4)
    assert out["lr0"] == 0.01


def test_autocast_computes_in_float32():
    p = random_preds(nc=4)
    loss_fn = ComputeLoss(fixture_hyp(), ANCHORS, nc=4)
    low = [pi.bfloat16() for pi in p]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, items = loss_fn(low, TARGETS)
    ref, _ = loss_fn([pi.float() for pi in low], TARGETS)
    assert loss.dtype == torch.float32 and items.dtype == torch.float32
    assert torch.allclose(loss, ref, rtol=1e-6)


def test_loss_step_has_no_data_dependent_shapes():
    """The loss traces as one graph (torch.compile fullgraph, eager backend: no compiler needed): no boolean
    selection, .item() or branch on a tensor value, i.e. nothing that makes a CUDA step wait for the device.
    v6.0's selection `t = t[j]` fails this ("data-dependent expression"); so would a mask made into a
    selection again. The candidates' masked means equal v6.0's means: test_matches_v60_reference."""
    loss_fn = ComputeLoss(fixture_hyp(fl_gamma=1.5), ANCHORS, nc=4)
    p = random_preds(nc=4)
    torch._dynamo.reset()
    traced = torch.compile(loss_fn._loss, fullgraph=True, backend="eager")
    loss, items = traced(p, TARGETS)
    ref, ref_items = loss_fn._loss(p, TARGETS)
    assert torch.equal(loss, ref) and torch.equal(items, ref_items)


def test_a_cell_assigned_twice_takes_the_last_target():
    """v6.0 writes the objectness targets in assignment order: the last candidate of a cell wins (and with
    sort_obj_iou the best IoU). Two targets in one cell: the objectness target is the second one's IoU.
    Mutation seen failing: the writes of _loss made in reverse order (first candidate wins)."""
    loss_fn = ComputeLoss(fixture_hyp(), ANCHORS, nc=4)
    t = torch.tensor([[0, 1, 0.52, 0.52, 0.12, 0.12], [0, 2, 0.53, 0.52, 0.1, 0.08]])
    p = random_preds(nc=4)
    for pi in p:
        pi[..., :4] = 0  # every predicted box: its anchor at the cell centre, so the IoUs are positive
    seen = {}
    bce = loss_fn.BCEobj

    def spy(pred, target):
        seen.setdefault("tobj", []).append(target.clone())
        return bce(pred, target)

    loss_fn._to(torch.device("cpu"))
    loss_fn.BCEobj = spy
    loss_fn(p, t)
    tcls, tbox, indices, anch = loss_fn.build_targets(p, t)
    from utils.metrics import bbox_iou

    checked = 0
    for level, (b, a, gj, gi) in enumerate(indices):
        pi = p[level][b, a, gj, gi]
        pbox = torch.cat((pi[:, :2].sigmoid() * 2 - 0.5, (pi[:, 2:4].sigmoid() * 2) ** 2 * anch[level]), 1)
        iou = bbox_iou(pbox, tbox[level], xywh=True, CIoU=True).clamp(0)
        cells = list(zip(b.tolist(), a.tolist(), gj.tolist(), gi.tolist()))
        for c in {c for c in cells if cells.count(c) > 1}:
            last = max(n for n, x in enumerate(cells) if x == c)
            first = min(n for n, x in enumerate(cells) if x == c)
            assert abs(iou[first] - iou[last]) > 1e-3  # the two targets really differ there
            assert seen["tobj"][level][c] == pytest.approx(iou[last].item(), rel=1e-6)
            checked += 1
    assert checked, "the case needs a cell assigned twice"


def test_last_writes_keeps_only_the_last_write_of_each_cell():
    """Repeated cells: all but the last write go to the spare cell, so `flat[cell] = v` has one writer per
    cell and the same result on any thread count (with 2 threads the objectness loss of the same batch
    differed between two processes before). Mutations seen failing: keeping the first write, keeping all."""
    cell = torch.tensor([3, 1, 3, 2, 1, 3, 7])
    assert last_writes(cell, spare=9).tolist() == [9, 9, 9, 2, 1, 3, 7]
    big = torch.randint(0, 50, (100_000,), generator=torch.Generator().manual_seed(0))  # parallel-sized
    kept = last_writes(big, spare=50)
    values = torch.arange(big.numel(), dtype=torch.float32)
    flat = torch.zeros(51)
    flat[kept] = values
    expected = torch.zeros(50)
    for n, c in enumerate(big.tolist()):  # v6.0's serial rule: the last write wins
        expected[c] = n
    assert torch.equal(flat[:50], expected)



def test_take_cells_backward_is_reproducible_on_two_threads():
    """Gathering the predictions at repeated cells, then backward: the map's gradient is the same bit for bit
    on every repetition with 2 threads, and equals the float64 sum of the rows' gradients to float32 rounding:
    each cell adds ~500 terms of unit scale one after another, partial sums of ~sqrt(500) = 22, so about
    sqrt(500) x 22 x 6e-8 = 3e-5 of rounding (4.4e-5 measured); 1e-3 is 20x that and far below one row
    lost or counted twice.
    Mutation seen failing: `p.reshape(-1, no)[cell]` on the CPU (indexing's backward adds with atomics above
    32768 elements: differs within the first few repetitions; the same size measured below 32768 never did)."""
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(2, 3, 4, 4, 85, generator=g)
    cell = torch.randint(0, 4, (2000,), generator=g)  # 2000 x 85 = 170000 elements on 4 cells: contention
    up = torch.randn(2000, 85, generator=g).clamp(-4, 4)

    def grad():
        p = p0.clone().requires_grad_(True)
        rows = take_cells(p, cell)
        assert torch.equal(rows, p0.reshape(-1, 85)[cell])
        rows.backward(up)
        return p.grad

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = grad()
        assert all(torch.equal(first, grad()) for _ in range(50))
    finally:
        torch.set_num_threads(threads)
    expected = torch.zeros(96, 85, dtype=torch.float64).index_add_(0, cell, up.double()).view(p0.shape)
    assert torch.allclose(first.double(), expected, rtol=0, atol=1e-3)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loss_never_waits_for_the_device():
    p = [pi.cuda() for pi in random_preds(nc=4)]
    loss_fn = ComputeLoss(fixture_hyp(), ANCHORS, nc=4)
    targets = TARGETS.cuda()
    loss_fn(p, targets)  # first call: criteria and anchors move to the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(p, targets)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    p = random_preds(nc=4)
    loss_fn = ComputeLoss(fixture_hyp(), ANCHORS, nc=4)
    cpu, cpu_items = loss_fn(p, TARGETS)
    with torch.autocast("cuda", dtype=torch.float16):
        gpu, gpu_items = loss_fn([pi.cuda() for pi in p], TARGETS)  # targets moved by the loss
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-4) and torch.allclose(gpu_items.cpu(), cpu_items, rtol=1e-4)


def test_real_model_train_step():
    """from_model on a tiny real Model: the loss reaches every trainable parameter."""
    yolo = pytest.importorskip("models.yolo")
    torch.manual_seed(0)
    cfg = {"nc": 4, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": ANCHORS_PX.view(3, 6).tolist(),
           "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                        [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
           "head": [[[2, 3, 4], 1, "Detect", ["nc", "anchors"]]]}
    model = yolo.Model(cfg).train()
    loss_fn = ComputeLoss.from_model(model, fixture_hyp())
    assert torch.allclose(loss_fn.anchors, ANCHORS)
    loss, items = loss_fn(model(torch.rand(2, 3, 64, 64)), TARGETS)
    loss.backward()
    assert torch.isfinite(loss).all() and (items > 0).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_missing_pos_weights_default_to_one():
    """A hyp without cls_pw / obj_pw means pos_weight 1 (v6.0's hyp files always set them; mutation
    survivor: another default went unseen)."""
    p = random_preds(nc=4)
    full = fixture_hyp()
    bare = {k: v for k, v in full.items() if k not in ("cls_pw", "obj_pw")}
    assert full["cls_pw"] == full["obj_pw"] == 1.0
    a, b = ComputeLoss(full, ANCHORS, nc=4)(p, TARGETS), ComputeLoss(bare, ANCHORS, nc=4)(p, TARGETS)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
