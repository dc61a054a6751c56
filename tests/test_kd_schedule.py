"""Issue 27: scorel2 = ultralytics' loss, the teacher's precision, warm-ups in optimizer steps, distillation
stopped for the last epochs, output KD's parts in results.csv."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import ROOT
from torch import nn

from distill.distiller import Distiller
from distill.losses.score_l2 import ScoreWeightedL2, score_weighted_l2
from distill.objective import DistillObjective, build_kd_objective
from distill.recipe import Overrides, Recipe
from distill.yolo_config import apply_overrides, as_recipe, check_kd_config
from engine.kd_flags import kd_overrides
from models.yolo import Model
from utils.general import UserError
from utils.loggers import ResultsLogger, extra_columns, read_results_csv
from utils.losses.yolov5 import ComputeLoss

# --- scorel2 against ultralytics 8.4 (fixtures/reference_ul_distill.pt) -------------------------------------

def test_scorel2_equals_ultralytics_per_level_and_in_total(fixtures_dir):
    ref = torch.load(fixtures_dir / "reference_ul_distill.pt")
    per_level = score_weighted_l2(ref["student"], ref["teacher"], ref["teacher_scores"])
    # float32 sums of <= 131k non-negative terms: a blocked/pairwise order's relative error is ~log2(n) eps
    # = 17 x 6e-8 = 1e-6 for each of numerator and denominator, and the fixture's order is another such one;
    # 1e-5 covers any ISA / thread count with room. Measured here: 1.2e-7.
    torch.testing.assert_close(per_level, ref["per_level"], rtol=1e-5, atol=0)
    total = per_level.sum() * ref["dis"]  # weight 6 = ultralytics' dis
    torch.testing.assert_close(total, ref["total"], rtol=1e-5, atol=0)


def test_scorel2_module_sums_the_levels_of_its_projections():
    torch.manual_seed(0)
    chans = (8, 16)
    loss = ScoreWeightedL2(student_channels=chans, teacher_channels=chans).eval()
    s = [torch.randn(2, c, h, h) for c, h in zip(chans, (8, 4))]
    t = [torch.randn(2, c, h, h) for c, h in zip(chans, (8, 4))]
    raw = [torch.randn(2, 3, h, h, 5 + 3) for h in (8, 4)]  # teacher Detect levels for the scores

    class Ctx:
        teacher_out = raw

    from distill.losses import teacher_score
    expected = score_weighted_l2([p(x) for p, x in zip(loss.projectors, s)], t, [teacher_score(r) for r in raw]).sum()
    torch.testing.assert_close(loss(s, t, Ctx()), expected)
    # a level whose mass is 10x larger does not outweigh the other: each level is normalised by its own mass
    scaled = [raw[0].clone(), raw[1]]
    scaled[0][..., 4] += 50.0  # every P3 cell confident (score ~ max class prob) -> different mass, same mean form
    Ctx.teacher_out = scaled
    assert torch.isfinite(loss(s, t, Ctx()))


# --- the teacher's precision ---------------------------------------------------------------------------------

class _Probe(nn.Module):
    """A teacher that records the dtype its first conv computes in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen = None

    def forward(self, x):
        y = self.conv(x)
        self.seen = y.dtype
        return y


@pytest.mark.parametrize("dtype, expected", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_teacher_dtype_holds_inside_the_training_autocast(dtype, expected):
    """--teacher_dtype fp32 runs the teacher with autocast disabled even inside the step's CPU bf16 autocast
    (--bf16); bf16 runs it in bf16."""
    teacher, student = _Probe(), _Probe()
    distiller = Distiller({"student_model": student, "teacher_model": teacher, "student_distill_layer": ["conv"],
                           "teacher_distill_layer": ["conv"], "loss": [{"type": "fitnet"}],
                           "teacher_dtype": dtype})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distiller(torch.rand(2, 3, 8, 8))
    assert teacher.seen == expected
    assert student.seen == torch.bfloat16  # the student stays under the step's autocast


# --- warm-ups count optimizer steps; distillation stopped for the last epochs ------------------------------

@pytest.fixture(scope="module")
def small_pair():
    torch.manual_seed(0)
    student = Model(ROOT / "models" / "yolov5n.yaml", nc=3)
    teacher = Model(ROOT / "models" / "yolov5n.yaml", nc=3)
    return student, teacher


def _objective(pair, **kw) -> DistillObjective:
    student, teacher = pair
    hyp = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0, "cls_pw": 1.0, "obj_pw": 1.0, "fl_gamma": 0.0}
    d = student.model[-1]
    loss = ComputeLoss(hyp, d.anchors, d.nc, stride=d.stride)
    return build_kd_objective(student, teacher, loss, hyp, **kw).train()


def _batch():
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.4]])
    return torch.rand(2, 3, 64, 64), targets


def test_warmups_count_optimizer_steps_not_batches(small_pair):
    objective = _objective(small_pair)
    student = small_pair[0].train()
    imgs, targets = _batch()
    for _ in range(3):  # three accumulated batches, no optimizer step yet
        objective(student, imgs, targets)
    assert objective.kd.count() == 0
    objective.optimizer_step()
    assert objective.kd.count() == 1 and int(objective.kd.iteration) == 1


def test_train_one_epoch_steps_the_counter_once_per_optimizer_step(small_pair):
    from engine.epoch import EpochSettings, train_one_epoch

    objective = _objective(small_pair)
    student = small_pair[0].train()
    imgs, targets = _batch()
    loader = [((imgs * 255).to(torch.uint8), targets, ["a.jpg", "b.jpg"], None)] * 8
    params = list(student.parameters()) + list(objective.parameters())
    optimizer = torch.optim.SGD(params, lr=0.0)
    cfg = EpochSettings(epochs=1, nb=8, nw=-1, lf=lambda e: 1.0, hyp={}, batch_size=2, nbs=8, imgsz=64, gs=32,
                        main=False)
    train_one_epoch(student, objective, loader, optimizer, torch.amp.GradScaler("cpu", enabled=False), None, 0, cfg)
    # batch 2, nominal batch 8: one step every 4 batches (v6.0 steps when ni - last >= accumulate: at 3 and 7)
    assert objective.kd.count() == 2


def test_kd_stop_epochs_switches_distillation_off_for_the_last_epochs(small_pair, monkeypatch):
    objective = _objective(small_pair, stop_epochs=2)
    student = small_pair[0].train()
    imgs, targets = _batch()
    objective.start_epoch(7, 10)
    on = objective(student, imgs, targets)
    assert objective.active and float(on["kd"]) > 0
    objective.start_epoch(8, 10)
    calls = []
    monkeypatch.setattr(type(objective.distiller), "forward", lambda *a, **k: calls.append(1))
    off = objective(student, imgs, targets)
    assert not objective.active and not calls  # no teacher forward
    assert list(off) == list(on)  # the same columns, KD logged as 0
    assert all(float(off[k]) == 0 for k in ("kd", "kd_box", "kd_obj", "kd_cls", "scorel2"))
    torch.testing.assert_close(off["loss"].reshape(()), sum(off[k] for k in ("box", "obj", "cls")) * imgs.shape[0])


def test_kd_stop_epochs_from_a_recipe_and_a_flag():
    recipe = as_recipe({"kd_stop_epochs": 5, "losses": [{"type": "YoloKDLoss", "layers": "detect"}]})
    assert recipe.stop_epochs == 5 and Recipe.from_dict(recipe.to_dict()).stop_epochs == 5  # kd.yaml round trip
    assert apply_overrides(recipe, Overrides(stop_epochs=0)).stop_epochs == 0  # the flag wins
    assert apply_overrides(recipe, Overrides(variant="kl")).stop_epochs == 5  # other flags keep it
    for bad in (-1, 2.5, "five", True):
        with pytest.raises(UserError, match="kd_stop_epochs"):
            check_kd_config({"kd_stop_epochs": bad, "losses": [{"type": "YoloKDLoss"}]})
    with pytest.raises(UserError, match="--kd_stop_epochs 30.*--epochs 30"):
        kd_overrides(argparse.Namespace(kd_stop_epochs=30, epochs=30))
    assert kd_overrides(argparse.Namespace(kd_stop_epochs=5, epochs=30)).stop_epochs == 5


def test_card_exact_recipe_keeps_the_per_cell_form():
    recipe = as_recipe(__import__("yaml").safe_load((ROOT / "data" / "kd" / "card_exact.yaml").read_text()))
    kd = recipe.losses[0]
    assert kd.type == "YoloKDLoss" and kd.get("normalize") == "cells" and kd.weight == 2.0
    assert kd_overrides(argparse.Namespace(kd_normalize="cells")).normalize == "cells"


# --- results.csv -------------------------------------------------------------------------------------------

def test_output_kd_parts_get_their_own_columns(tmp_path):
    assert extra_columns(["kd", "kd_box", "kd_obj", "kd_cls", "scorel2"]) == [
        "train/kd_loss", "train/kd_box", "train/kd_obj", "train/kd_cls", "train/scorel2_loss"]
    log = ResultsLogger(tmp_path, tensorboard=False)
    results, lrs = (0.1,) * 7, [0.01] * 3
    log.log_epoch(0, {"box": 1.0, "obj": 2.0, "cls": 3.0, "kd": 4.0}, results, lrs)
    # a run resumed with newer code that logs the parts too: earlier rows get nan there, nothing is lost
    log.log_epoch(1, {"box": 1.0, "obj": 2.0, "cls": 3.0, "kd": 4.0, "kd_box": 5.0}, results, lrs)
    names, rows = read_results_csv(tmp_path / "results.csv")
    assert names[-2:] == ["train/kd_loss", "train/kd_box"] and len(rows) == 2
    assert rows[0][-2] == 4.0 and rows[0][-1] != rows[0][-1] and rows[1][-1] == 5.0  # nan != nan


# --- runs saved before issue 27 resume with the loss they started with ------------------------------------

def test_old_scorel2_form_is_kept_for_resumed_runs():
    torch.manual_seed(1)
    chans = (8, 16)
    loss = ScoreWeightedL2(student_channels=chans, teacher_channels=(4, 12), reduce="all").eval()
    s = [torch.randn(2, c, h, h) for c, h in zip(chans, (8, 4))]
    t = [torch.randn(2, c, h, h) for c, h in zip((4, 12), (8, 4))]
    raw = [torch.randn(2, 3, h, h, 8) for h in (8, 4)]

    class Ctx:
        teacher_out = raw

    from distill.losses import teacher_score
    num = den = 0.0
    for proj, x, y, r in zip(loss.projectors, s, t, raw):  # the form before issue 27, written out
        w = teacher_score(r).double()
        num = num + (w * (proj(x).double() - y.double()).pow(2).sum(1)).sum()
        den = den + w.sum() * y.shape[1]
    torch.testing.assert_close(loss(s, t, Ctx()).double(), num / den, rtol=1e-5, atol=0)  # float32 sums of ~1e3 terms
    with pytest.raises(ValueError, match="reduce"):
        ScoreWeightedL2(student_channels=chans, teacher_channels=chans, reduce="levels")


def test_kd_yaml_names_the_reductions_and_old_ones_resume_unchanged(small_pair):
    from distill.yolo_config import resumed_reductions

    objective = _objective(small_pair)
    entries = {e.type: e for e in objective.resolved.losses}
    assert entries["YoloKDLoss"].get("normalize") == "weight" and entries["scorel2"].get("reduce") == "level"
    old = as_recipe({"losses": [{"type": "YoloKDLoss", "name": "kd", "variant": "kl", "weight": 2.0},
                                {"type": "scorel2", "weight": 1.0}]})  # a kd.yaml written before 2026-12-06
    kept = resumed_reductions(old, "runs/train/exp/kd.yaml")
    assert [e.get("normalize") or e.get("reduce") for e in kept.losses] == ["cells", "all"]
    assert resumed_reductions(objective.resolved, "kd.yaml").losses == objective.resolved.losses  # named: kept
