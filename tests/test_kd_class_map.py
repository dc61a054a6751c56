"""Output KD with a teacher of other classes than the data (distill.recipe.match_classes, ClassColumns in
distill/yolo_output.py): names matched, bad pairs refused, the teacher's columns gathered into the student's
order, teacher-only classes folded into background, the full-class case untouched, train_kd.py end to end."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distill.kd_terms import ClassColumns, matched_objectness
from distill.objective import build_kd_objective, check_compatible, class_names
from distill.recipe import (
    ClassMap,
    Overrides,
    Recipe,
    class_key,
    classes_line_up,
    generic_names,
    match_classes,
    parse_teacher_classes,
)
from distill.v8_output import V8OutputKD
from distill.yolo_config import apply_overrides, load_kd_config, write_kd_config
from distill.yolo_output import VARIANTS
from engine.cli import kd_parser
from engine.kd_flags import kd_overrides
from models.yolo import Model
from utils.general import UserError
from utils.losses.yolov5 import ComputeLoss

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]  # data/shapes.yaml, the committed teacher's
HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "kd": 1.0}
ANCHORS = torch.tensor([[[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]]])  # (nl=1, na=3, 2) grid units


# ---------------------------------------------------------------------------------------------------------
# matching names


def test_names_match_ignoring_case_spaces_underscores_and_synonyms():
    assert class_key("Traffic light") == class_key("traffic_light") == class_key("TrafficLight") == "trafficlight"
    coco = ["person", "bicycle", "car", "motorcycle", "traffic light"]
    data = ["Traffic_Light", "motorbike", "PERSON", "tram"]
    m = match_classes(data, coco, parse_teacher_classes("motorbike:motorcycle"))
    assert m.index == (4, 3, 0, -1) and not m.identity
    assert m.teacher_only == [1, 2]
    assert m.to_dict() == {"Traffic_Light": "traffic light", "motorbike": "motorcycle", "PERSON": "person", "tram": None}
    table = m.table()
    assert "tram" in table[3] and table[3].endswith("<- -") and "motorcycle (3)" in table[1]
    assert table[-1].strip() == "teacher-only (2 of 5): bicycle, car"
    # DATA:- takes a data class out even where a teacher class has its name
    assert match_classes(data, coco, {"PERSON": None}).index == (4, -1, -1, -1)


def test_full_and_generic_class_lists_are_the_identity():
    assert match_classes(SHAPES, [s.upper() for s in SHAPES]).identity  # same names, same order
    assert match_classes(["a", "b", "c"], ["0", "1", "2"]).identity  # generic teacher at the data's count
    assert match_classes([f"class{i}" for i in range(3)], ["x", "y", "z"]).identity  # generic data (today's pairing)
    assert generic_names(["class0", "Class 1", "2"]) and not generic_names(["class0", "dog"])
    swapped = match_classes(["b", "a"], ["a", "b"])  # same count, other order: gathered, not by index
    assert swapped.index == (1, 0) and not swapped.identity and not classes_line_up(["b", "a"], ["a", "b"])


def test_pairs_parse_and_merge_over_a_recipe():
    assert parse_teacher_classes(" motorbike : motorcycle , tram:-, ") == {"motorbike": "motorcycle", "tram": None}
    assert parse_teacher_classes({"tv": "tvmonitor", "tram": None}) == {"tv": "tvmonitor", "tram": None}
    assert parse_teacher_classes(None) is None and parse_teacher_classes("") is None
    recipe = Recipe.from_dict({"teacher_classes": "motorbike:motorbike,tv:tvmonitor",
                               "losses": [{"type": "YoloKDLoss", "name": "kd"}]})
    merged = apply_overrides(recipe, Overrides(teacher_classes={"MotorBike": "motorcycle", "tram": None}))
    assert merged.teacher_classes == {"tv": "tvmonitor", "MotorBike": "motorcycle", "tram": None}
    assert apply_overrides(recipe, Overrides()).teacher_classes == recipe.teacher_classes


@pytest.mark.parametrize("value, match", [
    ("motorbike", r"--teacher_classes 'motorbike': 'motorbike' is not a DATA:TEACHER pair"),
    ("a:b:c", "not a DATA:TEACHER pair"),
    ("a:,b:c", "not a DATA:TEACHER pair"),
    ("Motor bike:motorcycle,motor_bike:bicycle", "--teacher_classes: data class 'motor_bike' is given twice"),
])
def test_malformed_or_duplicate_pairs_name_the_flag(value, match):
    with pytest.raises(UserError, match=match):
        kd_overrides(kd_parser().parse_args(["--teacher_classes", value]))


def test_bad_names_are_user_errors():
    coco = ["person", "bicycle", "motorcycle"]
    with pytest.raises(UserError, match=r"--teacher_classes: the teacher has no class 'motorcyle' \(did you mean "
                                        r"'motorcycle'\?\); its classes: person, bicycle, motorcycle"):
        match_classes(["motorbike"], coco, {"motorbike": "motorcyle"})
    with pytest.raises(UserError, match="--teacher_classes: the data has no class 'bus'"):
        match_classes(["motorbike"], coco, {"bus": "motorcycle"})
    with pytest.raises(UserError, match="'motorcycle' would teach the data classes 'motorbike', 'scooter'"):
        match_classes(["motorbike", "scooter"], coco, {"motorbike": "motorcycle", "scooter": "motorcycle"})
    no_shared = "predicts 3 classes and the data has nc=2, and they share no class: data cat, dog; teacher person, "
    with pytest.raises(UserError, match=no_shared + "bicycle, motorcycle"):
        match_classes(["cat", "dog"], coco)
    with pytest.raises(UserError, match="teacher's class names are missing or generic .* --teacher_classes"):
        match_classes(["cat", "dog"], ["0", "1", "2"])
    with pytest.raises(UserError, match="several classes named 'car'"):
        match_classes(["car"], ["car", "Car", "bus"])
    # a generic teacher of another count is usable once every pair is named
    assert match_classes(["cat", "dog"], ["0", "1", "2"], {"cat": "2", "dog": None}).index == (2, -1)


def test_recipe_file_round_trip_rebuilds_the_map(tmp_path):
    """kd.yaml records the whole map; reading it back (what --resume does) gives the same ClassMap."""
    m = match_classes(["square", "Star", "donut"], SHAPES, {"donut": "ring"})
    resolved = Recipe.from_dict({"losses": [{"type": "YoloKDLoss", "name": "kd"}]})
    resolved.teacher_classes = m.to_dict()
    write_kd_config(resolved, tmp_path / "kd.yaml", "flags")
    back = load_kd_config(tmp_path / "kd.yaml")
    assert back.teacher_classes == {"square": "square", "Star": "star", "donut": "ring"}
    assert match_classes(m.data_names, SHAPES, back.teacher_classes) == m
    (tmp_path / "bad.yaml").write_text("teacher_classes: 'a:b:c'\nlosses: [{type: YoloKDLoss}]\n")
    with pytest.raises(UserError, match="bad.yaml: teacher_classes 'a:b:c'"):
        load_kd_config(tmp_path / "bad.yaml")


# ---------------------------------------------------------------------------------------------------------
# the loss: gather, mask, fold (one level of 3 anchors x 4 x 4 cells, hand-built logits)


def _level(nc: int, seed: int, bs: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bs, 3, 4, 4, 5 + nc, generator=g) * 2


def _loss(variant: str, s: torch.Tensor, t: torch.Tensor, **kw):
    core = VARIANTS[variant](hyp=HYP, temperature=2.0, **kw)
    return core([s], [t], ANCHORS, ANCHORS)


def test_class_columns_gather_the_teacher_into_the_student_order():
    cols = ClassColumns([3, -1, 0])
    s = torch.arange(3.0).expand(2, 3)  # student classes 0 1 2
    t = torch.tensor([10.0, 11.0, 12.0, 13.0]).expand(2, 4)  # teacher classes 0..3
    s_sel, t_sel = cols.select(s, t)
    assert s_sel.tolist() == [[0.0, 2.0]] * 2 and t_sel.tolist() == [[13.0, 10.0]] * 2  # class 1: no teacher class
    assert cols.teacher_only(t) and not ClassColumns([1, 0]).teacher_only(t[:, :2])
    assert "student_classes" not in str(cols.state_dict())  # buffers not saved: kd_state keys unchanged
    for bad in ([-1, -1], [0, 0], [-2, 1], []):
        with pytest.raises(ValueError, match="class_index"):
            ClassColumns(bad)
    with pytest.raises(ValueError, match="teacher classes up to 3"):
        cols.select(s, t[:, :3])


@pytest.mark.parametrize("variant, kw", [("l2", {}), ("kl", {}), ("bce", {"subtract_entropy": True}),
                                         ("kl", {"obj_term": "bce"})])
def test_gather_equals_a_hand_gathered_teacher(variant, kw):
    """Student classes 0..4, teacher classes 0..3, student class 1 without a teacher class (index -1), no
    teacher-only class (so no folding). The reference: the same loss without a map on a teacher built by hand
    in the student's order, its class 1 column a copy of the student's (a zero element for l2, kl and centred
    bce), i.e. the masked column counted in the nc the class term divides by."""
    index = [3, -1, 0, 1, 2]
    s, t = _level(5, 0), _level(4, 1)
    by_hand = torch.cat([t[..., :5]] + [t[..., 5 + j, None] if j >= 0 else s[..., 5 + c, None]
                                        for c, j in enumerate(index)], -1)
    loss, parts = _loss(variant, s, t, class_index=index, **kw)
    ref, ref_parts = _loss(variant, s, by_hand, **kw)
    assert torch.equal(parts["kd_box"], ref_parts["kd_box"]) and torch.equal(parts["kd_obj"], ref_parts["kd_obj"])
    # the class term: 4 matched float32 elements summed / 5 against the mean of 5 with an exact 0 among them,
    # summed in another order: a few ulps (2^-23 ~ 1.2e-7 each) per cell; 1e-6 relative. A wrong column
    # (student classes 0 and 2 taught by each other's teacher class) moves it by > 1000x that (checked below).
    assert parts["kd_cls"] > 0 and torch.allclose(parts["kd_cls"], ref_parts["kd_cls"], rtol=1e-6, atol=0)
    assert torch.allclose(loss, ref, rtol=1e-6, atol=0)
    _, wrong = _loss(variant, s, t, class_index=[0, -1, 3, 1, 2], **kw)
    assert abs(float(wrong["kd_cls"] / ref_parts["kd_cls"]) - 1) > 1e-3


def test_kl_softmax_runs_over_the_matched_classes():
    index = [2, -1, 0]
    s, t = _level(3, 2), _level(4, 3)
    keep_s, keep_t = [0, 1, 2, 3, 4, 5, 7], [0, 1, 2, 3, 4, 7, 5]  # box + obj, then the matched classes
    _, parts = _loss("kl", s, t, class_index=index, kl_softmax=True)
    # the reference: a 2-class student and teacher (its mean over 2 classes, the map's sum over 2 / 3)
    _, ref = _loss("kl", s[..., keep_s], matched_obj_teacher(t[..., keep_t], t), kl_softmax=True)
    assert torch.allclose(parts["kd_cls"], ref["kd_cls"] * 2 / 3, rtol=1e-6, atol=0)


def matched_obj_teacher(t_small: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t_small with its objectness folded as the map folds the 4-class teacher t (teacher classes 1, 3 only)."""
    out = t_small.clone()
    out[..., 4] = matched_objectness(t[..., 4], t[..., [7, 5]])
    return out


def test_teacher_only_columns_and_unmatched_student_columns_take_no_part():
    index = [2, -1, 0]  # teacher classes 1 and 3 teach nothing
    s, t = _level(3, 4).requires_grad_(True), _level(4, 5)
    loss = _loss("kl", s, t, class_index=index)[0]
    other = t.clone()
    other[..., 5 + 1] = other[..., 5 + 3] = -other[..., 5 + 3]  # anything in the teacher-only columns
    assert torch.equal(_loss("kl", s, other, class_index=index)[0], loss)
    loss.backward()
    assert torch.count_nonzero(s.grad[..., 5 + 1]) == 0  # student class 1: no class KD
    assert torch.count_nonzero(s.grad[..., 5 + 0]) > 0 and torch.count_nonzero(s.grad[..., 5 + 2]) > 0


def test_matched_objectness_by_hand():
    t_obj, t_cls = torch.tensor([1.0, -3.0]), torch.tensor([[0.3, -2.0], [4.0, 1.0]])
    q = [1 / (1 + math.exp(-1.0)) / (1 + math.exp(-0.3)), 1 / (1 + math.exp(3.0)) / (1 + math.exp(-4.0))]
    expect = torch.tensor([math.log(p / (1 - p)) for p in q])
    assert torch.allclose(matched_objectness(t_obj, t_cls), expect, rtol=1e-6, atol=1e-6)
    # confident extremes stay finite: q rounds to 1 (the logit is capped at t_obj) or to ~0
    big = matched_objectness(torch.tensor([200.0, 40.0, -50.0]), torch.tensor([[200.0], [40.0], [-50.0]]))
    assert torch.isfinite(big).all() and big[0] == 200.0 and abs(float(big[1]) - (40 - math.log(2))) < 1e-4
    assert abs(float(big[2]) + 100) < 1e-3


def _one_object(teacher_class: int, student_obj: float):
    """Teacher classes [circle, person], data [circle]. The teacher sees a confident object of `teacher_class`
    at cell (0, 0) of anchor 0, a circle at cell (2, 2) and background elsewhere. The student is the teacher
    (its circle column) but for its objectness `student_obj` and a box off in x at cell (0, 0)."""
    t = torch.full((1, 3, 4, 4, 7), -8.0)
    t[..., :4] = 0.0
    t[0, 0, 0, 0, 4] = t[0, 0, 0, 0, 5 + teacher_class] = 6.0
    t[0, 0, 2, 2, 4] = t[0, 0, 2, 2, 5] = 6.0
    s = t[..., :6].clone()
    s[0, 0, 0, 0, 4] = student_obj
    s[0, 0, 0, 0, 0] = 2.0  # x off at (0, 0)
    return _loss("kl", s, t, class_index=[0])[1]


def test_teacher_only_detections_fold_into_background():
    """Option B: the teacher's 'person' (a class the data lacks) is background for objectness KD and weighs
    nothing in the box term; its 'circle' is an object."""
    person_bg, person_obj = _one_object(1, -8.0), _one_object(1, 6.0)
    circle_bg, circle_obj = _one_object(0, -8.0), _one_object(0, 6.0)
    assert person_bg["kd_obj"] < person_obj["kd_obj"]  # option A (objectness as is) would order these the other way
    assert circle_obj["kd_obj"] < circle_bg["kd_obj"]
    # the box term's weight at (0, 0): w^2 ~ (sigma(6) sigma(-8))^2 ~ 1e-7 of the circle's at (2, 2) for the person,
    # equal to it for a circle (the term is then half the x error)
    assert person_bg["kd_box"] < 1e-5 * circle_bg["kd_box"]


def test_v8_output_kd_gathers_and_weights_by_the_matched_classes():
    """V8OutputKD: the teacher's class channels gathered; w the max over the matched classes (teacher-only
    ones, here confident everywhere, weigh nothing). The reference: no map, the teacher's class channels in
    the student's order, the unmatched student class at -30 on both sides (KL exactly 0, never the max)."""
    index, reg_max = [2, -1, 0], 16
    g = torch.Generator().manual_seed(6)
    box_s, box_t = torch.randn(2, 4 * reg_max, 4, 4, generator=g), torch.randn(2, 4 * reg_max, 4, 4, generator=g)
    cls_s, cls_t = torch.randn(2, 3, 4, 4, generator=g) * 3, torch.randn(2, 4, 4, 4, generator=g) * 3
    cls_s[:, 1] = -30.0
    cls_t[:, 1] = cls_t[:, 3] = 10.0  # teacher-only classes, confident
    s, t = torch.cat([box_s, cls_s], 1), torch.cat([box_t, cls_t], 1)
    by_hand = torch.cat([box_t, cls_t[:, 2:3], cls_s[:, 1:2], cls_t[:, 0:1]], 1)
    kd, ref_kd = V8OutputKD(class_index=index), V8OutputKD()
    loss, ref = kd([[s]], [[t]]), ref_kd([[s]], [[by_hand]])
    # the same float32 elements, an exact 0 inserted in the class sums: equal but for summation order, 1e-6 relative
    assert torch.allclose(loss, ref, rtol=1e-6, atol=0)
    assert all(torch.allclose(kd.parts[k], ref_kd.parts[k], rtol=1e-6, atol=0) for k in ("kd_box", "kd_cls"))
    confident_only_class = torch.cat([box_t, cls_t[:, 2:3], cls_s[:, 1:2], torch.full_like(cls_t[:, :1], 10.0)], 1)
    assert not torch.allclose(ref, V8OutputKD()([[s]], [[confident_only_class]]), rtol=1e-2)  # w would differ
    with pytest.raises(ValueError, match="v8_output_kd: level 0"):
        V8OutputKD()([[s]], [[t]])  # without a map the class counts must agree


# ---------------------------------------------------------------------------------------------------------
# the full-class case is untouched


@pytest.mark.parametrize("variant, kw", [("l2", {}), ("kl", {"weight_by_cls": True}), ("kl", {"kl_softmax": True}),
                                         ("bce", {}), ("l2", {"normalize": "cells"})])
def test_identity_gather_changes_no_bit(variant, kw):
    s, t = _level(3, 7), _level(3, 8)
    loss, parts = _loss(variant, s, t, **kw)
    same, same_parts = _loss(variant, s, t, class_index=[0, 1, 2], **kw)
    assert torch.equal(loss, same) and all(torch.equal(parts[k], same_parts[k]) for k in parts)
    box_s, box_t = torch.randn(2, 67, 4, 4), torch.randn(2, 67, 4, 4)
    assert torch.equal(V8OutputKD()([[box_s]], [[box_t]]), V8OutputKD(class_index=[0, 1, 2])([[box_s]], [[box_t]]))


_BUILT: dict = {}


def _model(nc: int, names: list[str] | None = None, cfg: str = "yolov5n.yaml") -> Model:
    if (cfg, nc) not in _BUILT:
        torch.manual_seed(0)
        _BUILT[cfg, nc] = Model(ROOT / "models" / cfg, nc=nc)
    model = deepcopy(_BUILT[cfg, nc])
    if names is not None:
        model.names = names
    return model


def _batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 64, 64, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5], [1, 0, 0.7, 0.3, 0.3, 0.3]])
    return imgs, targets


def _objective(student, teacher, **kw):
    return build_kd_objective(student, teacher, ComputeLoss.from_model(student, HYP), HYP, **kw)


def _before(core, student, teacher, anchors_s, anchors_t):
    """_OutputKD.forward as it was before class maps (distill/yolo_output.py at 964d5c6), 'weight' form:
    the full-class loss the identity path must reproduce bit for bit (same float32 operations, same order)."""
    balance = [4.0, 1.0, 0.4][:len(student)] if len(student) == 3 else [4.0] * len(student)
    lbox, lobj, lcls = (torch.zeros(()) for _ in range(3))
    for i, (ps, pt) in enumerate(zip(student, teacher)):
        ps, pt = ps.float(), pt.detach().float()
        nc = ps.shape[-1] - 5
        w = torch.sigmoid(pt[..., 4])
        if core.weight_by_cls and nc > 1:
            w = w * torch.sigmoid(pt[..., 5:]).amax(-1)
        e_box = core._box_error(ps, pt, anchors_s[i], anchors_t[i]).mean(-1)
        e_cls = core.cls_term(ps[..., 5:], pt[..., 5:]).mean(-1) if nc > 1 else None
        lobj = lobj + balance[i] * core.obj_term(ps[..., 4], pt[..., 4]).mean()
        w = w * w
        mass = w.sum().clamp(min=torch.finfo(torch.float32).tiny)
        lbox = lbox + (e_box * w).sum() / mass
        lcls = lcls + ((e_cls * w).sum() / mass if e_cls is not None else 0.0)
    g = core.gains
    return lbox * g["box"] + lobj * g["obj"] + lcls * g["cls"]


def test_same_classes_build_no_map_and_the_loss_of_before():
    """A teacher of the data's classes (the normal case): no class_index reaches the loss, kd.yaml gets no
    teacher_classes, and a training step's KD loss is bit for bit what the code before class maps computed
    (_before, on the Detect outputs of the same step; tests/test_distiller_yolo.py also holds the objective
    to its golden values, within its derived tolerance)."""
    student, teacher = _model(3, ["a", "b", "c"]), _model(3, ["A", "b", "C"], "yolov5s.yaml")
    objective = _objective(student, teacher)
    assert objective.class_map.identity and objective.resolved.teacher_classes is None
    kd = objective.distiller.losses["kd"]
    assert kd.core.classes is None and not list(kd.buffers())
    imgs, targets = _batch()
    with torch.no_grad():
        s_out, t_out = student.train()(imgs), objective.teacher(imgs)[1]
    value = kd([s_out], [t_out], SimpleNamespace(student=student, teacher=objective.teacher))
    before = _before(kd.core, s_out, t_out, student.model[-1].anchors, objective.teacher.model[-1].anchors)
    assert torch.equal(value, before)
    # and an objective of generic names (paired by index, as every run was before) logs the same values
    torch.manual_seed(0)
    named = _objective(student, teacher)
    plain_student, plain_teacher = _model(3), _model(3, cfg="yolov5s.yaml")
    torch.manual_seed(0)
    plain = _objective(plain_student, plain_teacher)
    out, ref = named(student.train(), imgs, targets), plain(plain_student.train(), imgs, targets)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


# ---------------------------------------------------------------------------------------------------------
# train_kd.py's objective with a teacher of more classes


def test_objective_with_a_teacher_of_more_classes():
    student, teacher = _model(3, ["square", "Star", "donut"]), _model(6, SHAPES)
    objective = _objective(student, teacher, overrides=Overrides(teacher_classes={"donut": "ring"}))
    assert objective.class_map.index == (1, 3, 5)
    assert objective.resolved.teacher_classes == {"square": "square", "Star": "star", "donut": "ring"}
    assert objective.distiller.losses["kd"].core.classes is not None
    imgs, targets = _batch()
    out = objective(student.train(), imgs, targets)
    out["loss"].backward()
    assert all(torch.isfinite(out[k]) and out[k] > 0 for k in ("kd", "scorel2", "kd_cls", "kd_obj"))
    # data names given explicitly (train_kd.py passes the data yaml's) win over the student's
    named = _objective(_model(3), _model(6, SHAPES), data_names=["ring", "x", "circle"])
    assert named.class_map.index == (5, -1, 0)
    with pytest.raises(UserError, match=r"--teacher_classes .*: the teacher has no class 'rng' \(did you mean 'ring'"):
        _objective(_model(3, ["square", "star", "donut"]), _model(6, SHAPES),
                   overrides=Overrides(teacher_classes={"donut": "rng"}))
    with pytest.raises(UserError, match="share no class: data a, b, c; teacher circle, square"):
        _objective(_model(3, ["a", "b", "c"]), _model(6, SHAPES))
    with pytest.raises(UserError, match="generic .*--teacher_classes"):
        _objective(_model(3, ["a", "b", "c"]), _model(6))
    with pytest.raises(UserError, match="generic"):
        check_compatible(_model(3, ["a", "b", "c"]), _model(6))
    check_compatible(_model(3, ["square", "star", "cross"]), _model(6, SHAPES))  # names match: compatible


@pytest.mark.parametrize("loss", ["cwd", "scorel2", "at"])
def test_feature_only_recipes_take_any_class_counts(loss):
    """No output KD, no class map: a teacher of 6 generic-named classes teaches the features of a 3-class
    student (scorel2 weights by the teacher's score over all 6 classes)."""
    student, teacher = _model(3), _model(6)
    layers = "auto" if loss == "at" else "detect_inputs"
    objective = _objective(student, teacher, kd_config={"losses": [{"type": loss, "layers": layers}]})
    assert objective.class_map is None and "teacher_classes" not in objective.resolved.to_dict()
    imgs, targets = _batch()
    out = objective(student.train(), imgs, targets)
    assert torch.isfinite(out["loss"]) and out[loss] > 0
    assert class_names(teacher) == [str(i) for i in range(6)]


# ---------------------------------------------------------------------------------------------------------
# end to end


def _subset(root: Path) -> Path:
    """Generated shapes (6 classes) kept as a 3-class dataset: the labels of square, star and ring renumbered
    0, 1, 2, every other label dropped (its objects stay in the images, unlabelled), named with a synonym."""
    import yaml

    from utils.data.synthetic import build_synthetic_dataset

    f = build_synthetic_dataset(root, n_train=8, n_val=4, img_size=64, nc=6, seed=5)
    keep = {1: 0, 3: 1, 5: 2}
    for label in root.glob("labels/*/*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join([str(keep[int(r[0])]), *r[1:]]) + "\n" for r in rows if int(r[0]) in keep))
    d = yaml.safe_load(f.read_text())
    d.update(nc=3, names=["square", "Star", "donut"])
    f.write_text(yaml.safe_dump(d))
    return f


def test_train_kd_with_a_teacher_of_more_classes(tmp_path):
    """One epoch of train_kd.py (default recipe) on a 3-class subset with the committed 6-class shapes teacher;
    kd.yaml records the map, and reading it back (what --resume does) rebuilds the same one."""
    data = _subset(tmp_path / "data")
    teacher = ROOT / "weights/teacher-shapes-yolov5s.pt"
    cmd = [sys.executable, str(ROOT / "train_kd.py"), "--teacher_weight", str(teacher), "--data", str(data),
           "--cfg", str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--img", "64", "--epochs", "1",
           "--batch-size", "4", "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "kd",
           "--noautoanchor", "--teacher_classes", "donut:ring"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"\n +2 +donut +<- ring \(5\)\n", r.stdout), r.stdout[-3000:]  # the table, at the start
    assert "teacher-only (3 of 6): circle, triangle, cross" in r.stdout
    assert "val mAP not measured" in r.stdout  # validation pairs classes by index: skipped
    kd_file = tmp_path / "runs/kd/kd.yaml"
    recipe = load_kd_config(kd_file)
    assert recipe.teacher_classes == {"square": "square", "Star": "star", "donut": "ring"}

    from models.checkpoint import attempt_load

    t = attempt_load(teacher, map_location="cpu", fuse=True)
    student = _model(3, ["square", "Star", "donut"])
    rebuilt = _objective(student, t, kd_config=recipe)  # a resumed run: its kd.yaml, no flags
    assert rebuilt.class_map == ClassMap(("square", "Star", "donut"), tuple(SHAPES), (1, 3, 5))
    assert SimpleNamespace(**rebuilt.resolved.to_dict()).teacher_classes == recipe.teacher_classes
