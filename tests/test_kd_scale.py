"""Distillation strength does not depend on the image size or the batch (issue 27).

Every KD term must keep its ratio to its detection counterpart (output KD: kd_box/box, kd_obj/obj,
kd_cls/cls) or, for feature terms, its value, when the same content is seen on more cells. Learning is
off: two trained models in eval mode, no optimizer.

Two constructions, each the one where a reduction's claim can be checked with the models we ship:
- Output KD: the same 4 shapes images (160 px) letterboxed (grey 114, as YOLOv5's letterbox pads) into
  160, 320 and 640 px canvases: the same objects at the same pixel size on 1x, 4x and 16x the cells. This is
  the defect of the per-cell means (the teacher's weight mass is fixed by the objects, the cell count grows),
  and the detection loss is unchanged by it (its box and class terms are means over the positives, its
  objectness a mean over the cells times a gain that train.py scales by (imgsz/640)^2).
- Feature terms: the real maps of both models at 160 px, then the same maps upsampled x2 and x4 (nearest),
  i.e. the same content at 320 and 640 px for models whose features follow the content. Resizing the images
  instead is no check of the losses with these teachers: they were trained at 192 px and their P5 maps'
  mean square goes from 0.13 at 160 px to 131 at 640 px (objects 3-4x larger than any they saw).
The tolerance 1.5x across sizes is the issue's (per-cell box and class KD changed 11x from 192 to 640 px);
1.2x between batch 4 and batch 16 (the batch of 16 repeats the 4 images, so a per-image term is the same up
to float32 summation order; a term summed over the batch would be 4x).
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from distill.context import KDContext
from distill.hooks import FeatureHooks
from distill.objective import build_kd_objective
from distill.recipe import LossEntry, Recipe
from distill.registry import SPECS
from models.checkpoint import attempt_load
from utils.data.synthetic import render_image
from utils.general import yaml_load
from utils.losses.yolov5 import ComputeLoss, scale_loss_gains
from utils.losses.yolov8 import V8DetectionLoss

STUDENT = ROOT / "weights" / "teacher-shapes-yolov5s.pt"  # 60 epochs: the student of this check
TEACHER = ROOT / "weights" / "teacher-shapes-yolov5s-120e.pt"
SIZES = (160, 320, 640)
ACROSS_SIZES, ACROSS_BATCHES = 1.5, 1.2
OUTPUT_TYPES = {t for t, s in SPECS.items() if s.output}  # heads (layers: detect): checked on their own pairs below; bckd in tests/test_kd_recent_methods.py
V8_TEACHER = ROOT / "weights" / "teacher-shapes-yolov8s.pt"
V8_NOISE = 0.1  # the v8 student: the teacher with N(0, (0.1 std)^2) added to every weight (no second v8 ships)


def shapes_batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    """4 generated shapes images at 160 px (RGB 0-1) and their label rows [img, cls, x, y, w, h]."""
    names = [str(n) for n in (model.names.values() if isinstance(model.names, dict) else model.names)]
    rng = np.random.default_rng(0)
    imgs, rows = [], []
    for i in range(4):
        im, lb = render_image(rng, 160, names)
        imgs.append(torch.from_numpy(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255)
        rows += [[i, *r] for r in lb.tolist()]
    return torch.stack(imgs), torch.tensor(rows, dtype=torch.float32).view(-1, 6)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = attempt_load(STUDENT, fuse=False).eval()
    teacher = attempt_load(TEACHER, fuse=True).eval()
    return student, teacher, *shapes_batch(student)


@pytest.fixture(scope="module")
def v8_pair():
    teacher = attempt_load(V8_TEACHER, fuse=True).eval()
    student = attempt_load(V8_TEACHER, fuse=False).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=g) * V8_NOISE * p.std().clamp(min=1e-3))
    return student, teacher, *shapes_batch(student)


def letterbox(imgs: torch.Tensor, targets: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 160 px batch centred in a size x size grey canvas; labels (normalised xywh) follow."""
    h = imgs.shape[-1]
    p = (size - h) // 2
    out = F.pad(imgs, (p, size - h - p, p, size - h - p), value=114 / 255)
    t = targets.clone()
    t[:, 2:] *= h / size
    t[:, 2:4] += p / size
    return out, t


def objective_for(student, teacher, entry: dict, imgsz: int):
    if getattr(student.model[-1], "family", "v5") == "v8":  # the v8 loss's gains do not depend on the size
        hyp = yaml_load(ROOT / "data" / "hyps" / "hyp.v8.yaml")
        loss = V8DetectionLoss.from_model(student, hyp)
    else:
        hyp = scale_loss_gains(yaml_load(ROOT / "data" / "hyps" / "hyp.short.yaml"), student.model[-1].nc, 3, imgsz)
        detect = student.model[-1]
        loss = ComputeLoss(hyp, detect.anchors, detect.nc, stride=detect.stride)
    objective = build_kd_objective(student, copy.deepcopy(teacher), loss, hyp, kd_config=Recipe([LossEntry.from_dict(entry)]),
                                   log_parts=True).train()
    objective.distiller.kd.iteration += 10**6  # past any warm-up
    objective.distiller.kd._count = None
    return objective


def output_terms(pair, imgsz: int, repeat: int = 1, normalize: str | None = None) -> dict[str, float]:
    student, teacher, imgs, targets = pair
    v8 = getattr(student.model[-1], "family", "v5") == "v8"
    entry = ({"type": "v8_output_kd", "name": "kd", "layers": "detect", "T": 10.0} if v8 else
             {"type": "YoloKDLoss", "name": "kd", "layers": "detect", "variant": "kl", "T": 20.0})
    if normalize:
        entry["normalize"] = normalize
    objective = objective_for(student, teacher, entry, imgsz)
    imgs, targets = letterbox(imgs, targets, imgsz)
    if repeat > 1:  # the same images again: image index i + k * 4
        n = imgs.shape[0]
        imgs = imgs.repeat(repeat, 1, 1, 1)
        targets = torch.cat([targets + torch.tensor([k * n, 0, 0, 0, 0, 0.0]) for k in range(repeat)])
    student.eval()
    with torch.no_grad():
        out = objective(student, imgs, targets)
    return {k: float(out[f"kd_{k}"]) / float(out[k]) for k in (("box", "cls") if v8 else ("box", "obj", "cls"))}


def spread(values) -> float:
    values = [abs(v) for v in values]
    return max(values) / min(values)


def test_output_kd_keeps_its_ratio_to_the_detection_loss_at_any_size(pair):
    ratios = {s: output_terms(pair, s) for s in SIZES}
    for term in ("box", "obj", "cls"):
        values = [ratios[s][term] for s in SIZES]
        assert spread(values) < ACROSS_SIZES, f"kd_{term}/{term} at {SIZES} px: {values}"


def test_card_per_cell_means_shrink_with_the_cells(pair):
    """The card's reduction (normalize: cells, data/kd/card_exact.yaml) is kept for reproducing the fork, and
    shows the defect the default removes: its box and class terms fall with the cell count."""
    small, large = output_terms(pair, 160, normalize="cells"), output_terms(pair, 640, normalize="cells")
    for term in ("box", "cls"):
        assert small[term] / large[term] > 5, (term, small[term], large[term])  # 16x the cells; measured ~9x


def test_output_kd_is_per_image(pair):
    four, sixteen = output_terms(pair, 160), output_terms(pair, 160, repeat=4)
    for term in ("box", "obj", "cls"):
        assert spread([four[term], sixteen[term]]) < ACROSS_BATCHES, (term, four[term], sixteen[term])


def test_v8_output_kd_keeps_its_ratio_to_the_detection_loss(v8_pair):
    """v8_output_kd in the 'weight' form (normalize: weight) against the v8 loss's box and class items (the
    DFL item follows the box), sizes and batches as above. Measured (weight 3): kd_box/box 0.195, 0.178, 0.174
    and kd_cls/cls 0.519, 0.523, 0.710 at 160, 320, 640 px. Not the default: trained, it taught students
    less than no teacher (distill/v8_output.py)."""
    ratios = {s: output_terms(v8_pair, s, normalize="weight") for s in SIZES}
    for term in ("box", "cls"):
        values = [ratios[s][term] for s in SIZES]
        assert spread(values) < ACROSS_SIZES, f"v8 kd_{term}/{term} at {SIZES} px: {values}"
    four, sixteen = ratios[160], output_terms(v8_pair, 160, repeat=4, normalize="weight")
    for term in ("box", "cls"):
        assert spread([four[term], sixteen[term]]) < ACROSS_BATCHES, (term, four[term], sixteen[term])


def test_v8_default_form_box_keeps_its_ratio_class_follows_the_background(v8_pair):
    """The default form (normalize: points): its box term, by the teacher's confidence mass, keeps its ratio
    to the detection box loss at any size and batch; its class term, a mean over every point, is carried by
    the background's softened sigmoids and moves with the share of background (measured kd_cls/cls 0.39 at 160
    px, 1.12 at 640 px, the 160 px images in a 640 px grey canvas). Kept as the default because it is the form
    that trains a student (distill/v8_output.py); this test pins what it does at other sizes."""
    ratios = {s: output_terms(v8_pair, s) for s in SIZES}
    assert spread([ratios[s]["box"] for s in SIZES]) < ACROSS_SIZES, [ratios[s]["box"] for s in SIZES]
    four, sixteen = ratios[160], output_terms(v8_pair, 160, repeat=4)
    for term in ("box", "cls"):
        assert spread([four[term], sixteen[term]]) < ACROSS_BATCHES, (term, four[term], sixteen[term])
    assert ratios[640]["cls"] / ratios[160]["cls"] > 2, (ratios[160]["cls"], ratios[640]["cls"])


def upsample_raw(p: torch.Tensor, k: int) -> torch.Tensor:
    """(B, na, ny, nx, C) raw Detect level -> the same cells repeated k x k."""
    return p.repeat_interleave(k, 2).repeat_interleave(k, 3)


def up(x: torch.Tensor, k: int) -> torch.Tensor:
    return x if k == 1 or x.dim() != 4 else F.interpolate(x, scale_factor=k, mode="nearest")


FEATURE_TYPES = [t for t in SPECS if t not in OUTPUT_TYPES]


@pytest.mark.parametrize("loss_type", FEATURE_TYPES)
def test_feature_terms_do_not_depend_on_the_size_or_the_batch(pair, loss_type):
    student, teacher, imgs, targets = pair
    objective = objective_for(student, teacher, {"type": loss_type, "name": loss_type}, 160)
    entry = objective.resolved.losses[0]
    loss = objective.distiller.losses[loss_type].eval()
    fused = objective.teacher
    with torch.no_grad(), FeatureHooks(student, entry.student_layers) as s_hooks, \
            FeatureHooks(fused, entry.teacher_layers) as t_hooks:
        s_out, t_out = student(imgs)[1], fused(imgs)[1]
    values = {}
    for k in (1, 2, 4):
        for repeat in (1, 4) if k == 1 else (1,):
            def grow(x, k=k, repeat=repeat):
                x = up(x, k)
                return x.repeat(repeat, *[1] * (x.dim() - 1)) if repeat > 1 else x
            t = targets.clone() if repeat == 1 else torch.cat(
                [targets + torch.tensor([j * 4, 0, 0, 0, 0, 0.0]) for j in range(repeat)])
            ctx = KDContext(imgs=grow(imgs), targets=t, student=student, teacher=fused,
                            student_out=[grow(upsample_raw(p, k)) for p in s_out],
                            teacher_out=[grow(upsample_raw(p, k)) for p in t_out], iteration=10**6)
            with torch.no_grad():
                values[(k, repeat)] = float(loss([grow(f) for f in s_hooks.outputs],
                                                 [grow(f) for f in t_hooks.outputs], ctx))
    sizes = [values[(k, 1)] for k in (1, 2, 4)]
    assert all(v > 0 for v in sizes), f"{loss_type}: {values}"  # a term that is 0 here checks nothing
    assert spread(sizes) < ACROSS_SIZES, f"{loss_type} at 1x, 2x, 4x the cells: {sizes}"
    assert spread([values[(1, 1)], values[(1, 4)]]) < ACROSS_BATCHES, f"{loss_type} batch 4 / 16: {values}"
