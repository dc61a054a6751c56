"""The teacher as train_kd.py loads it: Conv+BN fused (same KD values to rounding, hooks on '.bn' moved to
the fused conv, leaf parameters), and its anchors given to the student for output KD."""

import logging
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch

from distill.objective import align_anchors, build_kd_objective, load_teacher
from engine.kd_flags import objective_options
from models.checkpoint import attempt_load
from models.yolo import Model
from utils.general import LOGGER, UserError
from utils.losses.yolov5 import ComputeLoss

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "kd": 1.0}
# Fusion replaces conv(x) -> bn by one conv with weights w * scale and a folded bias: each of the ~60 convs
# of a yolov5s changes by one float32 rounding (rel 6e-8), and the KD terms read outputs ~25 layers deep;
# a few roundings per layer, grown over the depth, stay far below rel 1e-5 (measured: 2e-7). A real
# fusion mistake (BN running mean dropped) moves the same values by ~1e-3: test_tolerance_catches_bad_fusion.
FUSED_RTOL = 1e-5


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return Model("models/yolov5n.yaml", nc=80)


def _batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 64, 64, generator=g)
    return imgs, torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5]])


def _kd_values(student, teacher, **flags):
    s = deepcopy(student).train()
    torch.manual_seed(1)  # adapters, if any, start alike
    objective = build_kd_objective(s, teacher, ComputeLoss.from_model(s, HYP), HYP,
                                   **objective_options(SimpleNamespace(**flags)))
    out = objective(s, *_batch())
    return objective, {k: float(v) for k, v in out.items() if k not in ("loss", "box", "obj", "cls")}


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= FUSED_RTOL * abs(a[k]) for k in a)


@pytest.mark.parametrize("flags", [{"kd_loss_selected": "l2", "feature_loss": "at"},
                                   {"kd_loss_selected": "kl", "feature_loss": "at"}])
def test_fused_teacher_gives_the_unfused_kd_values(student, fixtures_dir, flags):
    path = fixtures_dir / "yolov5s_v6.0.pt"
    fused = load_teacher(path, "cpu", nc=80)
    assert not any(hasattr(m, "bn") for m in fused.modules() if type(m).__name__ == "Conv")
    assert all(p.is_leaf and not p.requires_grad for p in fused.parameters())  # fuse_conv_and_bn under no_grad
    _, a = _kd_values(student, attempt_load(path, fuse=False), **flags)
    _, b = _kd_values(student, fused, **flags)
    assert a["kd"] > 0 and a["at"] > 0 and _close(a, b), (a, b)


def test_tolerance_catches_bad_fusion(student, fixtures_dir, monkeypatch):
    """A fusion that drops the BatchNorm running mean is outside FUSED_RTOL."""
    import models.yolo
    from utils.torch_utils import fuse_conv_and_bn

    def drop_mean(conv, bn):
        bn.running_mean.zero_()
        return fuse_conv_and_bn(conv, bn)

    path = fixtures_dir / "yolov5s_v6.0.pt"
    _, good = _kd_values(student, attempt_load(path, fuse=False), kd_loss_selected="l2")
    monkeypatch.setattr(models.yolo, "fuse_conv_and_bn", drop_mean)
    _, bad = _kd_values(student, attempt_load(path, fuse=True), kd_loss_selected="l2")
    assert not _close(good, bad)


def test_bn_hook_moves_to_the_fused_conv(student, fixtures_dir):
    """A teacher layer '<Conv>.bn' (gone after fusion) is hooked on '<Conv>.conv', whose fused output is
    the BatchNorm's: the same FitNet value as the unfused teacher hooked on the BatchNorm itself.
    Mutation seen failing: fused_layer_names returning the names unchanged (unknown layer error)."""
    path = fixtures_dir / "yolov5s_v6.0.pt"
    layers = {"feature_loss": ["fitnet"], "student_layers": "model.4.cv1.bn,model.6.cv2.bn",
              "teacher_layers": "model.4.cv1.bn,model.6.cv2.bn"}
    _, a = _kd_values(student, attempt_load(path, fuse=False), **layers)
    objective, b = _kd_values(student, load_teacher(path, "cpu", nc=80), **layers)
    assert objective.distiller.teacher_layers[-2:] == ["model.4.cv1.conv", "model.6.cv2.conv"]
    assert objective.resolved.losses[1].teacher_layers == ["model.4.cv1.conv", "model.6.cv2.conv"]  # kd.yaml
    assert a["fitnet"] > 0 and _close(a, b), (a, b)
    with pytest.raises(UserError, match=r"model\.4\.bn.*fused"):
        _kd_values(student, load_teacher(path, "cpu", nc=80), feature_loss=["fitnet"], student_layers="model.4",
                   teacher_layers="model.4.bn")


def test_student_takes_the_teacher_anchors_for_output_kd(student, fixtures_dir):
    """After autoanchor the student's anchors may differ from the teacher's; output KD compares slot a with
    slot a, so the student (and its detection loss) take the teacher's, with a warning giving both.
    Mutation seen failing: align_anchors not called by build_kd_objective."""
    teacher = load_teacher(fixtures_dir / "yolov5s_v6.0.pt", "cpu", nc=80)
    s = deepcopy(student)
    with torch.no_grad():
        s.model[-1].anchors.mul_(1.3)  # what a refit by autoanchor might leave
    moved = s.model[-1].anchors.clone()
    compute_loss = ComputeLoss.from_model(s, HYP)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        build_kd_objective(s, teacher, compute_loss, HYP)
    finally:
        LOGGER.removeHandler(handler)
    assert torch.equal(s.model[-1].anchors, teacher.model[-1].anchors)
    assert torch.equal(compute_loss.anchors, teacher.model[-1].anchors)
    text = " ".join(r.getMessage() for r in records)
    px = round(float(moved[0, 0, 0] * s.model[-1].stride[0]), 1)  # the student's first anchor, pixels
    assert "anchors" in text and str(px) in text, text
    assert align_anchors(s, teacher) is False  # equal now: nothing to do
    features_only = deepcopy(student)
    with torch.no_grad():
        features_only.model[-1].anchors.mul_(1.3)
    before = features_only.model[-1].anchors.clone()
    build_kd_objective(features_only, teacher, ComputeLoss.from_model(features_only, HYP), HYP,
                       kd_config={"losses": [{"type": "at", "layers": "auto"}]})
    assert torch.equal(features_only.model[-1].anchors, before)  # no output KD: the student keeps its own


def test_aligned_anchors_decode_like_a_fresh_model(student, fixtures_dir):
    """align_anchors drops Detect's decode caches, grid and anchor_grid together: with the grid kept at the
    size of the next eval forward, Detect kept the emptied anchor_grid and every box had zero width and height
    (train_kd.py's in-training validation then read P = R = mAP = 0 for AT/FitNet recipes, whose layer probe
    had cached the grid). Mutation seen failing: resetting anchor_grid alone."""
    teacher = load_teacher(fixtures_dir / "yolov5s_v6.0.pt", "cpu", nc=80)
    s = deepcopy(student).eval()
    with torch.no_grad():
        s.model[-1].anchors.mul_(1.3)
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        s(x)  # caches grid and anchor_grid at 64 px
        assert align_anchors(s, teacher) is True
        fresh = deepcopy(s)
        fresh.model[-1].grid = [torch.zeros(1)] * fresh.model[-1].nl
        fresh.model[-1].anchor_grid = [torch.zeros(1)] * fresh.model[-1].nl
        out, expected = s(x)[0], fresh(x)[0]
    assert torch.equal(out, expected)  # same weights, same cache rule: bit-identical
    assert (out[..., 2:4] > 0).all()  # boxes have a size
