"""Output KD between YOLOv8-style heads of different reg_max (distill/v8_output.py, distill/families.py): a YOLO26
head (reg_max 1, the four edge distances predicted directly) against a DFL head (yolov8n / yolo11n, reg_max 16), both
ways. The box term then compares decoded edge distances (L1, grid units); the class term and the same-reg_max LD
path are unchanged."""

from __future__ import annotations

import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.context import KDContext
from distill.families import for_family
from distill.recipe import Recipe
from distill.v8_output import DECODED_BOX_GAIN, V8OutputKD
from models.yolo import Model
from utils.general import UserError

ROOT = Path(__file__).resolve().parents[1]
# The references below state the 'weight' form (sums by the teacher's w^2 mass), so the loss is built in it;
# the default 'points' form shares the box and class terms per point (tests/test_v8_kd.py states it by hand).
NC, IMG = 6, 64
LEVELS = ((8, 8), (4, 4), (2, 2))  # the (ny, nx) of P3-P5 at 64 px
_BUILT: dict[str, Model] = {}


def _model(name: str, seed: int = 0) -> Model:
    """models/<name>.yaml at nc=6, seeded, built once per session and copied."""
    key = f"{name}:{seed}"
    if key not in _BUILT:
        torch.manual_seed(seed)
        _BUILT[key] = Model(ROOT / f"models/{name}.yaml", nc=NC)
    return deepcopy(_BUILT[key])


def _dfl_logits(dist: torch.Tensor, reg_max: int = 16) -> torch.Tensor:
    """(B, 4, ny, nx) distances in [0, reg_max - 1] -> (B, 4*reg_max, ny, nx) bin logits whose DFL expectation is
    exactly those distances: all the probability on the two bins around each distance (linear split), none
    elsewhere (-inf logits; exp(-inf) = 0, so the softmax is exact)."""
    lo = dist.floor().clamp(max=reg_max - 2)
    frac = dist - lo  # in [0, 1]
    bins = torch.arange(reg_max, dtype=dist.dtype).view(1, 1, -1, 1, 1)
    p = torch.where(bins == lo.unsqueeze(2), 1 - frac.unsqueeze(2), torch.zeros(()))
    p = p + torch.where(bins == lo.unsqueeze(2) + 1, frac.unsqueeze(2), torch.zeros(()))
    b, _, ny, nx = dist.shape
    return p.log().view(b, 4 * reg_max, ny, nx)


def _pair_maps(seed: int = 0, batch: int = 2):
    """Per level: distances (B, 4, ny, nx) in (0.2, 14.8) grid units and class logits (B, nc, ny, nx)."""
    g = torch.Generator().manual_seed(seed)
    dists = [0.2 + 14.6 * torch.rand(batch, 4, ny, nx, generator=g) for ny, nx in LEVELS]
    cls = [2 * torch.randn(batch, NC, ny, nx, generator=g) for ny, nx in LEVELS]
    return dists, cls


def _ctx(student: str, teacher: str) -> KDContext:
    return KDContext(student=_model(student), teacher=_model(teacher, 1))


# ---------------------------------------------------------------------------------------------------------
# (a) the minimum: equal decoded distances and class logits


@pytest.mark.parametrize("student, teacher", [("yolov8n", "yolo26n"), ("yolo26n", "yolov8n")])
def test_zero_when_decoded_distances_are_equal(student, teacher):
    """A DFL map whose expectation is d (all probability on the bins around d) against a reg_max-1 map of d,
    both ways; reg_max of each side read from ctx's models. Class logits equal: the whole loss is 0."""
    dists, cls = _pair_maps()
    dfl = [torch.cat((_dfl_logits(d), c), 1) for d, c in zip(dists, cls)]
    direct = [torch.cat((d, c), 1) for d, c in zip(dists, cls)]
    s, t = (dfl, direct) if student == "yolov8n" else (direct, dfl)
    loss_fn = V8OutputKD(nc=NC, normalize="weight")
    loss = loss_fn([s], [t], _ctx(student, teacher))
    # float32: the expectation sum_i p_i * i of distances up to 15 rounds to ~15 * 6e-8 per edge; times the gain 4
    # and the T^2 = 100 of the class term (whose KL is exactly 0 on equal logits) 1e-4 is ~100x that rounding
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    assert loss_fn.parts["kd_cls"].item() == 0.0  # binary_kl is exactly 0 where the logits are equal


def test_teacher_beyond_the_student_bins_is_clamped():
    """A YOLO26 teacher's distances are not bounded; a DFL student reaches 0..15 only: the teacher's are clamped to
    that range (as bbox2dist clamps the DFL targets), so a student at the end bins is at the minimum."""
    dists, cls = _pair_maps(1)
    far = [d * 3 - 10 for d in dists]  # -9.4 .. 34.4 grid units: beyond both ends of the bins
    s = [torch.cat((_dfl_logits(d.clamp(0, 15)), c), 1) for d, c in zip(far, cls)]
    t = [torch.cat((d, c), 1) for d, c in zip(far, cls)]
    loss = V8OutputKD(nc=NC, normalize="weight").terms(s, t, 16, 1)[0]
    assert loss.item() == pytest.approx(0.0, abs=1e-4)  # the same float32 rounding bound as above


# ---------------------------------------------------------------------------------------------------------
# (b) away from the minimum: the value and the gradient


def _reference_decoded(s, t, rs: int, rt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent statement of the docstring's formula (no helper of distill/): (box, cls) of
    gain * sum_p w^2 term_p / sum_p w^2 with the L1 box term and the tau = 10 class binary KL."""
    num_box = num_cls = den = 0.0
    for ps, pt in zip(s, t):
        b, _, ny, nx = ps.shape
        ds_logits, cs = ps[:, :4 * rs].reshape(b, 4, rs, ny * nx), ps[:, 4 * rs:].reshape(b, NC, ny * nx)
        dt_logits, ct = pt[:, :4 * rt].reshape(b, 4, rt, ny * nx), pt[:, 4 * rt:].reshape(b, NC, ny * nx)
        ds = ds_logits[:, :, 0] if rs == 1 else (ds_logits.softmax(2) * torch.arange(rs).view(1, 1, rs, 1)).sum(2)
        dt = dt_logits[:, :, 0] if rt == 1 else (dt_logits.softmax(2) * torch.arange(rt).view(1, 1, rt, 1)).sum(2)
        if rs > 1:
            dt = torch.minimum(torch.maximum(dt, torch.zeros(())), torch.full((), rs - 1.0))
        w2 = ct.sigmoid().max(1).values ** 2
        num_box = num_box + (w2 * (ds - dt).abs().mean(1)).sum()
        q, p = (ct / 10).sigmoid(), (cs / 10).sigmoid()
        kl = q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())
        num_cls = num_cls + (w2 * kl.sum(1)).sum()
        den = den + w2.sum()
    return DECODED_BOX_GAIN * num_box / den, 100 * num_cls / den


@pytest.mark.parametrize("rs, rt", [(16, 1), (1, 16), (1, 1)])
def test_decoded_term_value_and_gradient(rs, rt):
    """Random maps: the loss matches the reference, is > 0, and its gradient reaches every student map (box and
    class channels) and nothing of the teacher. (1, 1): two YOLO26 heads, whose one-bin LD would be 0."""
    g = torch.Generator().manual_seed(2)
    s = [(torch.randn(2, 4 * rs + NC, ny, nx, generator=g) * (1 if rs > 1 else 4)).requires_grad_()
         for ny, nx in LEVELS]
    t = [(torch.randn(2, 4 * rt + NC, ny, nx, generator=g) * (1 if rt > 1 else 4)).requires_grad_()
         for ny, nx in LEVELS]
    loss_fn = V8OutputKD(nc=NC, normalize="weight")
    loss, parts = loss_fn.terms(s, t, rs, rt)
    box, cls = _reference_decoded([p.detach() for p in s], [p.detach() for p in t], rs, rt)
    # two float32 computations of the same sums in other orders: a relative 1e-5 is ~100x their rounding
    assert parts["kd_box"].item() == pytest.approx(box.item(), rel=1e-5)
    assert parts["kd_cls"].item() == pytest.approx(cls.item(), rel=1e-5)
    assert parts["kd_box"] > 0.1  # random distances several grid units apart: far from 0
    loss.backward()
    for p in s:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad[:, :4 * rs].abs().sum() > 0 and p.grad[:, 4 * rs:].abs().sum() > 0
    assert all(p.grad is None for p in t)  # the teacher is detached


@pytest.mark.parametrize("student, teacher", [("yolov8n", "yolo26n"), ("yolo11n", "yolo26n"), ("yolo26n", "yolov8n")])
def test_real_heads_teach_across_reg_max(student, teacher):
    """The maps of real models (student in train mode, teacher in eval mode as the distiller runs it): a finite
    loss > 0 whose gradient reaches the student's box branch. A YOLO26 student is read at its one-to-many maps."""
    s_model, t_model = _model(student).train(), _model(teacher, 1).eval()
    x = torch.rand(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_out = t_model(x)
    s_out = s_model(x)
    loss_fn = V8OutputKD(nc=NC, normalize="weight")
    loss = loss_fn([s_out], [t_out], KDContext(student=s_model, teacher=t_model))
    assert torch.isfinite(loss) and loss_fn.parts["kd_box"] > 0
    loss.backward()
    head = s_model.model[-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.cv2.parameters())
    if head.has_one2one:  # the one-to-one branch is not what the loss reads
        assert all(p.grad is None for p in head.one2one_cv2.parameters())
        maps = s_out["one2many"]
        again = V8OutputKD(nc=NC, normalize="weight")([[m.detach() for m in maps]], [t_out], KDContext(student=s_model, teacher=t_model))
        assert again.item() == loss.item()  # the same computation on the same maps: exactly equal


# ---------------------------------------------------------------------------------------------------------
# (c) the same-reg_max path is LD, as before


def _reference_ld(s, t, reg_max: int, T: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The docstring's LD form with F.kl_div (not the module's own expression): T^2 * sum_p w^2 mean_edges KL /
    sum_p w^2, and the class term as in _reference_decoded."""
    num_box = num_cls = den = 0.0
    for ps, pt in zip(s, t):
        b, _, ny, nx = ps.shape
        bs = ps[:, :4 * reg_max].reshape(b, 4, reg_max, ny * nx).permute(0, 3, 1, 2)  # (B, P, 4, R)
        bt = pt[:, :4 * reg_max].reshape(b, 4, reg_max, ny * nx).permute(0, 3, 1, 2)
        kl = F.kl_div((bs / T).log_softmax(-1), (bt / T).log_softmax(-1), reduction="none", log_target=True)
        cs, ct = ps[:, 4 * reg_max:].reshape(b, NC, -1), pt[:, 4 * reg_max:].reshape(b, NC, -1)
        w2 = ct.sigmoid().max(1).values ** 2
        num_box = num_box + (w2 * kl.sum(-1).mean(-1)).sum()
        q, p = (ct / T).sigmoid(), (cs / T).sigmoid()
        ckl = q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())
        num_cls = num_cls + (w2 * ckl.sum(1)).sum()
        den = den + w2.sum()
    return T**2 * num_box / den, T**2 * num_cls / den


def test_same_reg_max_is_ld_as_before():
    """Two reg_max-16 heads (the teacher's reg_max read from ctx.teacher, or defaulting to the student's without
    one): LD on the bins, equal to an independent F.kl_div form, and identical whichever way reg_max arrives."""
    g = torch.Generator().manual_seed(5)
    s = [torch.randn(2, 64 + NC, ny, nx, generator=g) * 3 for ny, nx in LEVELS]
    t = [torch.randn(2, 64 + NC, ny, nx, generator=g) * 3 for ny, nx in LEVELS]
    loss_fn = V8OutputKD(nc=NC, normalize="weight")
    with_teacher = loss_fn([s], [t], _ctx("yolov8n", "yolo11n")).item()
    parts = dict(loss_fn.parts)
    box, cls = _reference_ld(s, t, 16)
    # float32 sums of the same terms in another order (and kl_div's own expression): 1e-5 is ~100x the rounding
    assert parts["kd_box"].item() == pytest.approx(box.item(), rel=1e-5)
    assert parts["kd_cls"].item() == pytest.approx(cls.item(), rel=1e-5)
    # the same code path whether reg_max comes from ctx.teacher, from the student alone or as an argument
    assert loss_fn([s], [t], KDContext(student=_model("yolov8n"))).item() == with_teacher
    assert V8OutputKD(nc=NC, normalize="weight").terms(s, t, 16)[0].item() == with_teacher
    assert V8OutputKD(nc=NC, normalize="weight").terms(s, t, 16, 16)[0].item() == with_teacher


def test_level_checks_name_both_reg_max():
    """Channels that fit neither side's reg_max + nc are refused, naming both reg_max."""
    dists, cls = _pair_maps()
    s = [torch.cat((_dfl_logits(d), c), 1) for d, c in zip(dists, cls)]
    t = [torch.cat((d, c[:, :3]), 1) for d, c in zip(dists, cls)]  # 3 classes against the student's 6
    with pytest.raises(ValueError, match="teacher reg_max 1, student 16"):
        V8OutputKD(nc=NC, normalize="weight")([s], [t], _ctx("yolov8n", "yolo26n"))


# ---------------------------------------------------------------------------------------------------------
# distill/families.py


def test_families_accept_reg_max_pairs_and_still_refuse_v5_v8():
    recipe = Recipe.from_dict({"losses": [{"type": "v8_output_kd", "name": "kd", "layers": "detect"}]})
    for s, t in (("yolov8n", "yolo26n"), ("yolo26n", "yolo11n"), ("yolo26n", "yolo26n")):
        assert for_family(recipe, _model(s), _model(t, 1)).losses[0].type == "v8_output_kd"
    with pytest.raises(UserError, match="the student is v5 and the teacher v8"):
        for_family(recipe, _model("yolov5n"), _model("yolo26n", 1))


# ---------------------------------------------------------------------------------------------------------
# (d) train_kd.py end to end


@pytest.mark.slow
def test_train_kd_yolov8n_from_a_yolo26n_teacher(tmp_path):
    """A yolov8n student, a randomly initialised yolo26n teacher checkpoint: the default v8 recipe (v8_output_kd +
    mse) runs one epoch and logs a kd loss > 0."""
    from models.checkpoint import save_checkpoint
    from utils.data.synthetic import build_synthetic_dataset
    from utils.loggers import read_results_csv

    data = build_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, img_size=IMG, nc=NC, seed=4)
    teacher = save_checkpoint({"epoch": -1, "best_fitness": None, "model": _model("yolo26n", 1), "ema": None,
                               "updates": None, "optimizer": None, "wandb_id": None}, tmp_path / "yolo26n-t.pt")
    cmd = [sys.executable, str(ROOT / "train_kd.py"), "--data", str(data), "--cfg", str(ROOT / "models/yolov8n.yaml"),
           "--weights", "", "--teacher_weight", str(teacher), "--img", str(IMG), "--epochs", "1", "--batch-size", "4",
           "--workers", "0", "--hyp", str(ROOT / "data/hyps/hyp.v8-short.yaml"), "--project", str(tmp_path / "runs"),
           "--name", "kd", "--noautoanchor"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names, rows = read_results_csv(tmp_path / "runs/kd/results.csv")
    row = dict(zip(names, rows[0]))
    assert row["train/kd_loss"] > 0 and row["train/dfl_loss"] > 0


def test_bckd_decodes_a_reg_max_1_head_by_its_raw_distances():
    """BCKD's box term on a YOLO26 head (reg_max 1): the four values are the edge distances (no softmax over one
    bin, which would make every distance 0 and every box a point).
    Mutation seen failing: bckd decoding reg_max 1 through the DFL softmax (distances all 0)."""
    from distill.losses.bckd import HeadInfo, dense_level

    p = torch.zeros(1, 4 + 2, 2, 2)  # (B, 4 * reg_max + nc, ny, nx)
    p[:, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)  # left, top, right, bottom in grid units
    d = dense_level(p, HeadInfo("v8", reg_max=1), 0)
    # boxes relative to each point: (-left, -top, right, bottom), exact (copies and negations only)
    assert torch.equal(d.boxes, torch.tensor([[-1.0, -2.0, 3.0, 4.0]]).expand(4, 4))
