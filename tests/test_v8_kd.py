"""Distillation of YOLOv8-style students (issue 14 item 5): the ver2 output loss (distill/v8_output.py),
train_kd.py's objective for v8 and mixed v5/v8 pairs, the seed's flag names, and train_kd.py end to end."""

from __future__ import annotations

import math
import subprocess
import sys
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distill.context import KDContext
from distill.objective import build_kd_objective
from distill.v8_output import V8OutputKD
from distill.yolo_config import KD_DIR, load_kd_config
from engine.kd_flags import objective_options
from models.yolo import Model
from utils.general import UserError
from utils.loggers import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
NC, IMG = 3, 64
HYP_V8 = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
HYP_V5 = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0, "fl_gamma": 0.0, "label_smoothing": 0.0,
          "cls_pw": 1.0, "obj_pw": 1.0}
_BUILT: dict[str, Model] = {}


def _model(name: str, seed: int = 0) -> Model:
    """models/<name>.yaml at nc=3, seeded, built once per test session and copied."""
    key = f"{name}:{seed}"
    if key not in _BUILT:
        torch.manual_seed(seed)
        _BUILT[key] = Model(ROOT / f"models/{name}.yaml", nc=NC)
    return deepcopy(_BUILT[key])


def _batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, IMG, IMG, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5], [1, 0, 0.7, 0.3, 0.6, 0.6]])
    return imgs, targets


def _raw(model: Model, imgs: torch.Tensor) -> list[torch.Tensor]:
    """Per-level raw DetectV8 maps (B, 4*16 + nc, ny, nx) of a model in train mode."""
    with torch.no_grad():
        return model.train()(imgs)


# ---------------------------------------------------------------------------------------------------------
# the ver2 loss


def test_v8_output_kd_by_hand():
    """One level of 1 x 2 cells, reg_max 2, nc 1, T = tau = 3 (not 2, where T**2 == 2 * T: the mutation
    tau**2 -> tau*2 of the class term survived that choice, tools/mutation_sample.py). Cell 0: teacher confident (w = sigma(1.5));
    cell 1: teacher class logit -30 (w ~ 1e-13), so its very different box hardly counts, and both class
    logits are equal there (class KL 0). Expected: box = KL of cell 0 and cls = KL_0 (means weighted by w^2,
    normalize 'weight'); the default form (normalize 'points'): the same box, cls = (KL_0 + 0) / 2."""
    R, T = 2, 3.0
    t_edges = [[2.0, 0.0], [0.0, 0.0], [1.0, -1.0], [0.0, 3.0]]  # teacher logits per edge; student's are 0
    t = torch.zeros(1, 4 * R + 1, 1, 2)
    s = torch.zeros(1, 4 * R + 1, 1, 2)
    for e, row in enumerate(t_edges):
        t[0, e * R:(e + 1) * R, 0, 0] = torch.tensor(row)
        t[0, e * R:(e + 1) * R, 0, 1] = torch.tensor([9.0, -9.0])  # cell 1: far from the student's uniform bins
    t[0, -1, 0, 0], s[0, -1, 0, 0] = 1.5, -0.5
    t[0, -1, 0, 1] = s[0, -1, 0, 1] = -30.0

    def kl_edge(row):  # KL(softmax(row / T) || uniform over 2 bins)
        z = [math.exp(v / T) for v in row]
        p = [v / sum(z) for v in z]
        return sum(pi * math.log(pi / 0.5) for pi in p)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    q, p = sig(1.5 / T), sig(-0.5 / T)
    box = T**2 * sum(kl_edge(r) for r in t_edges) / 4
    cls = T**2 * (q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)))
    # float32 sums of a few O(1) terms: relative error ~1e-6; the cell-1 leak is ~1e-13 x KL (w), 1e-26 (w^2)
    for normalize, cls_expected in (("weight", cls), ("points", cls / 2)):
        got = V8OutputKD(T=T, normalize=normalize).terms([s], [t], reg_max=R)[1]
        assert got["kd_box"].item() == pytest.approx(box, rel=1e-5), normalize
        assert got["kd_cls"].item() == pytest.approx(cls_expected, rel=1e-5), normalize
    assert V8OutputKD(T=T, box=0.8, cls=0.2).terms([s], [t], reg_max=R)[0].item() == pytest.approx(
        0.8 * box + 0.2 * cls / 2, rel=1e-5)  # the seed's 0.8 / 0.2 mix is two gains (default form: cls / 2)
    assert V8OutputKD(T=T).normalize == "points"  # the default: the form that trains (distill/v8_output.py)


def test_positive_for_different_models_zero_for_equal():
    """The seed's two defects: its 'teacher' tensors came from the student (loss ~0 whatever the teacher)
    and it fed probabilities to KLDivLoss (not 0 at equality). Here: > 0 between two models, exactly 0
    for a model against itself, and against a copy of its outputs."""
    imgs, _ = _batch()
    student, teacher = _model("yolov8n", 0), _model("yolov8n", 1)
    s, t = _raw(student, imgs), _raw(teacher, imgs)
    loss = V8OutputKD()
    ctx = KDContext(student=student)
    assert loss([s], [t], ctx).item() > 1e-3
    assert loss.parts["kd_box"].item() > 0 and loss.parts["kd_cls"].item() > 0
    assert loss([s], [[x.clone() for x in s]], ctx).item() == 0.0
    teacher.eval()
    with torch.no_grad():
        t_eval = teacher(imgs)  # eval mode: (decoded, raw); the raw maps are read
    assert isinstance(t_eval, tuple) and loss([[x.clone() for x in t_eval[1]]], [t_eval], ctx).item() == 0.0
    assert loss([s], [t_eval], ctx).item() > 1e-3


def test_gradients_reach_student_only_and_bf16_is_finite():
    imgs, _ = _batch()
    s = [x.clone().requires_grad_(True) for x in _raw(_model("yolov8n", 0), imgs)]
    t = [x.clone().requires_grad_(True) for x in _raw(_model("yolov8n", 1), imgs)]
    loss = V8OutputKD()
    value = loss([s], [t], None)
    value.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss([[x.detach().bfloat16() for x in s]], [[x.detach().bfloat16() for x in t]], None)
    # inputs rounded to bf16 (8 mantissa bits: relative 2^-9 ~ 0.2% per logit); the loss itself is fp32,
    # so it moves by about that much, well under 5%; a loss computed in bf16 would still be finite, so
    # the dtype is checked too
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert low.item() == pytest.approx(value.item(), rel=0.05)


def test_bad_outputs_and_flags_are_refused():
    imgs, _ = _batch()
    s = _raw(_model("yolov8n", 0), imgs)
    v5 = _model("yolov5n").train()(imgs)
    with pytest.raises(ValueError, match="DetectV8"):
        V8OutputKD()([v5], [v5], None)
    with pytest.raises(ValueError, match="level 0"):
        V8OutputKD()([s], [[x[:, :-1] for x in s]], None)
    with pytest.raises(ValueError, match="YOLOv5 students"):
        V8OutputKD(variant="l2")
    with pytest.raises(ValueError, match="> 0"):
        V8OutputKD(T=0)


# ---------------------------------------------------------------------------------------------------------
# train_kd.py's objective


def _objective(student_name: str, teacher_name: str, flags: dict | None = None, kd_config=None):
    student, teacher = _model(student_name, 0), _model(teacher_name, 1)
    with torch.no_grad():  # as after train_kd.py's sanity val: DetectV8 caches anchor points (not priors)
        teacher.eval()(torch.zeros(1, 3, 96, 96))
    hyp = HYP_V8 if student.family == "v8" else HYP_V5
    objective = build_kd_objective(student.train(), teacher, student.build_loss(hyp), hyp,
                                   **objective_options(SimpleNamespace(**(flags or {}))), kd_config=kd_config)
    return objective, student


def _step(objective, student) -> dict:
    imgs, targets = _batch()
    objective.distiller.kd.iteration.fill_(10**6)  # past every warm-up
    out = objective(student, imgs, targets)
    out["loss"].backward()
    return out


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "bench/kd_configs").glob("v8_*.yaml")))
def test_v8_bench_configs_build_with_the_weights_and_forms_they_state(config):
    """bench/kd_configs/v8_*.yaml (the YOLOv8 recipes of bench/RESULTS.md) build on a v8 pair with each entry's
    stated weight and output KD form, every term live on a batch."""
    cfg = load_kd_config(ROOT / "bench/kd_configs" / config)
    objective, student = _objective("yolov8n", "yolov8n", kd_config=cfg)
    assert objective.distiller.weights == [float(e.weight) for e in cfg.losses]
    kd = objective.distiller.losses["kd"]
    assert isinstance(kd, V8OutputKD) and kd.normalize == cfg.losses[0].get("normalize")
    out = _step(objective, student)
    assert torch.isfinite(out["loss"]) and all(float(out[k]) > 0 for k in objective.distiller.names)


def test_v8_default_recipe_is_the_points_form_at_weight_4():
    """No flags, data/kd/v8_both.yaml and data/kd/v8_ver2.yaml: output KD in the 'points' form at weight 4, the
    form and weight that trained students (distill/v8_output.py; the 'weight' form at weight 3, the default of
    2026-12-06, trained them below the plain student)."""
    for cfg in (None, load_kd_config("v8_both"), load_kd_config("v8_ver2")):
        objective, _ = _objective("yolov8n", "yolov8n", kd_config=cfg)
        kd = objective.distiller.losses["kd"]
        assert (kd.normalize, objective.distiller.weights[0]) == ("points", 4.0), cfg
    flagged, _ = _objective("yolov8n", "yolov8n", flags={"kd_normalize": "weight"})
    assert flagged.distiller.losses["kd"].normalize == "weight"  # the flag still reaches the w^2-mass form


def test_v8_default_is_ver2_plus_ver1_with_v8_loss_items():
    objective, student = _objective("yolov8n", "yolov8n")
    entries = {e["name"]: e for e in objective.resolved.to_dict()["losses"]}
    assert entries["kd"]["type"] == "v8_output_kd" and entries["kd"]["student_layers"] == ["model.22"]
    assert entries["mse"]["student_layers"] == entries["mse"]["teacher_layers"] == ["model.15", "model.18", "model.21"]
    out = _step(objective, student)
    # the student's own loss items, the terms, then output KD's weighted parts (logged by default, issue 27)
    assert list(out) == ["loss", "box", "cls", "dfl", "kd", "mse", "kd_box", "kd_cls"]
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    items = ["box", "cls", "dfl", "kd", "mse"]  # the parts are inside kd: not added again
    assert out["loss"].item() == pytest.approx(2 * sum(out[k].item() for k in items), rel=1e-5)
    assert (out["kd_box"] + out["kd_cls"]).item() == pytest.approx(out["kd"].item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", "cwd", "pkd", "at", "fitnet"])
def test_feature_losses_at_chosen_layers(loss):
    flags = {"feature_loss": [loss], "student_layers": "15,18,21", "teacher_layers": "15,18,21"}
    objective, student = _objective("yolov8n", "yolov8n", flags)
    out = _step(objective, student)
    assert torch.isfinite(out[loss]) and out[loss] > 0
    params = list(objective.kd.parameters())
    assert all(p.grad is not None for p in params), f"{loss}: adapters without gradient"


def test_scorel2_needs_a_yolov5_teacher():
    """scorel2 weighs by YOLOv5 teacher scores (objectness x class): a v8 teacher is a clear error, and a
    v8 student with a v5 teacher works."""
    objective, student = _objective("yolov8n", "yolov8n", {"feature_loss": ["scorel2"]})
    with pytest.raises(UserError, match="YOLOv5 Detect"):
        _step(objective, student)
    objective, student = _objective("yolov8n", "yolov5n", {"feature_loss": ["scorel2"]})
    assert torch.isfinite(_step(objective, student)["scorel2"])


@pytest.mark.parametrize("pair", [("yolov8n", "yolov5n"), ("yolov5n", "yolov8n")])
def test_cross_family_features_work_output_kd_is_refused(pair):
    objective, student = _objective(*pair)
    assert [e["type"] for e in objective.resolved.to_dict()["losses"]] == ["mse"]  # default across families
    out = _step(objective, student)
    assert torch.isfinite(out["mse"]) and out["mse"] > 0
    objective, student = _objective(*pair, {"feature_loss": ["at"]})  # C2f and C3 outputs pair by position
    assert len(objective.resolved.to_dict()["losses"][0]["student_layers"]) == 9
    assert torch.isfinite(_step(objective, student)["at"])
    for flags, cfg in (({"alpha": 1.0}, None), ({}, load_kd_config("v8_ver2")), ({}, load_kd_config("card"))):
        with pytest.raises(UserError, match=r"student is v\d and the teacher v\d") as e:
            _objective(*pair, flags, kd_config=cfg)
        assert "v5" in str(e.value) and "v8" in str(e.value)


def test_centre_region_mask_by_hand_and_by_loop():
    from distill.imitation import CENTRE_RADIUS, centre_region_mask

    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 0, 0.7, 0.3, 0.6, 0.6], [1, 2, 0.5, 0.5, 1.0, 1.0]])
    m8 = centre_region_mask(targets[:1], [(8, 8)], 2)[0]
    # box 0 in grid units: centre (4, 4), size 3.2 x 2.4 -> points with |x - 4| < 1.6, |y - 4| < 1.2
    expected = torch.zeros(2, 8, 8, dtype=torch.bool)
    expected[0, 3:5, 2:6] = True
    assert torch.equal(m8, expected)
    shapes = [(8, 8), (4, 4), (2, 2)]
    for level, (h, w) in zip(centre_region_mask(targets, shapes, 2), shapes):
        loop = torch.zeros(2, h, w, dtype=torch.bool)
        for img, _, x, y, bw, bh in targets.tolist():
            for i in range(h):
                for j in range(w):
                    dx, dy = abs(j + 0.5 - x * w), abs(i + 0.5 - y * h)
                    if dx < min(bw * w / 2, CENTRE_RADIUS) and dy < min(bh * h / 2, CENTRE_RADIUS):
                        loop[int(img), i, j] = True
        assert torch.equal(level, loop)
    # the 8 x 8-cell box centred at (4, 4): radius 2.5 keeps the points 2.5 .. 5.5 of each axis, not all 64
    assert centre_region_mask(targets[2:], [(8, 8)], 2)[0][1].sum() == 16
    assert not centre_region_mask(targets[:0], [(8, 8)], 2)[0].any()


def test_imitation_mask_pictures_of_a_v8_model(kd_setup):
    from distill.imitation import centre_region_mask, model_imitation_masks
    from distill.mask_examples import save_mask_examples
    from utils.data.config import check_dataset

    root, data, _ = kd_setup
    model = _model("yolov8n")
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 2, 0.3, 0.6, 0.2, 0.5]])
    masks, strides = model_imitation_masks(model, targets, (IMG, IMG), 2)
    assert strides.tolist() == [8, 16, 32]
    assert all(torch.equal(a, b) for a, b in zip(masks, centre_region_mask(targets, [(8, 8), (4, 4), (2, 2)], 2)))
    out = save_mask_examples(model, check_dataset(data)["train"], IMG, 0.5, 2, root / "masks.jpg")
    assert out is not None and out.stat().st_size > 0


def test_output_kd_across_reg_max():
    """A reg_max-1 (YOLO26) teacher of a DFL student is no longer refused: v8_output_kd compares decoded edge
    distances (tests/test_kd_reg_max.py tests the loss)."""
    objective, student = _objective("yolov8n", "yolo26n")
    assert isinstance(objective.distiller.losses["kd"], V8OutputKD)
    assert _step(objective, student)["kd_box"] > 0


def test_imitation_on_a_v8_student():
    objective, student = _objective("yolov8n", "yolov8n", {"feature_loss": ["imitation"]})
    out = _step(objective, student)
    assert torch.isfinite(out["imitation"]) and out["imitation"] > 0
    loss = objective.distiller.losses["imitation"]
    assert all(conv.weight.grad is not None for conv in loss.adapters)


def test_output_flags_map_to_the_v8_loss():
    objective, _ = _objective("yolov8n", "yolov8n", {"kd_loss_selected": "kl", "temperature": 5.0, "alpha": 2.0})
    kd = objective.distiller.losses["kd"]
    assert isinstance(kd, V8OutputKD) and kd.T == kd.tau == 5.0 and objective.distiller.weights[0] == 2.0
    with pytest.raises(UserError, match="YOLOv5 students"):
        _objective("yolov8n", "yolov8n", {"kd_loss_selected": "l2"})
    # a YOLOv5 recipe on two v8 models: its output entry becomes v8_output_kd (kl, T, weight kept)
    objective, _ = _objective("yolov8n", "yolov8n", kd_config=load_kd_config("kl_only"))
    assert isinstance(objective.distiller.losses["kd"], V8OutputKD) and objective.distiller.losses["kd"].T == 20.0
    # kd.yaml names the form: the v5 default 'weight' becomes the v8 default 'points' (distill/v8_output.py)
    assert objective.resolved.losses[0].get("normalize") == "points"
    # --kd_normalize cells (the per-cell form before issue 27) is the v8 loss's per-point form, from the flag
    # or from a v5 recipe that names it; an old v8 kd.yaml without the key resumes in that form
    objective, _ = _objective("yolov8n", "yolov8n", {"kd_normalize": "cells"})
    assert objective.distiller.losses["kd"].normalize == "points"
    objective, _ = _objective("yolov8n", "yolov8n", kd_config=load_kd_config("card_exact"))
    assert objective.distiller.losses["kd"].normalize == "points"
    from distill.yolo_config import resumed_reductions
    old = resumed_reductions(load_kd_config("v8_ver2"), "runs/train/exp/kd.yaml")
    assert old.losses[0].get("normalize") == "points"


@pytest.mark.parametrize("recipe,argv", [("v8_ver2", ["--feature_loss", "none"]), ("v8_both", []),
                                         ("v8_both", ["--kd_layer", "15", "18", "21"])])
def test_v8_recipes_equal_their_flags(recipe, argv):
    import train_kd
    from engine.kd import seed_layers

    opt = train_kd.get_args_parser().parse_args(argv)
    seed_layers(opt)
    flags = {k: v for k, v in vars(opt).items() if k != "hyp"}
    a, _ = _objective("yolov8n", "yolov8n", kd_config=load_kd_config(recipe))
    b, _ = _objective("yolov8n", "yolov8n", flags)
    norm = [{**e, "student_layers": [str(x) for x in e["student_layers"]]} for e in a.resolved.to_dict()["losses"]]
    assert norm == b.resolved.to_dict()["losses"]
    assert (KD_DIR / "v8_ver1.yaml").is_file()


def test_seed_flag_names():
    import train_kd
    from engine.kd import seed_layers

    p = train_kd.get_args_parser()
    opt = p.parse_args(["--model", "m.yaml", "--teacher", "t.pt", "--kd_layer", "15", "18", "21", "--batch", "4",
                        "--imgsz", "64"])
    assert (opt.cfg, opt.teacher_weight, opt.batch_size, opt.imgsz) == ("m.yaml", "t.pt", 4, 64)
    seed_layers(opt)
    assert opt.student_layers == opt.teacher_layers == "15,18,21" and opt.feature_loss == ["mse"]
    default = p.parse_args([])
    assert default.cfg.endswith("yolov5s.yaml") and default.batch_size == 16  # the originals' defaults stay
    with pytest.raises(UserError, match="--kd_layer"):
        seed_layers(p.parse_args(["--kd_layer", "15", "--student_layers", "4"]))


# ---------------------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def kd_setup(tmp_path_factory):
    """Generated data (nc=3) and a yolov8n teacher checkpoint at that nc, saved like train.py saves."""
    from models.checkpoint import save_checkpoint
    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("v8kd")
    data = build_synthetic_dataset(root / "data", n_train=8, n_val=4, img_size=IMG, nc=NC, seed=4)
    teacher = root / "teacher-v8n.pt"
    save_checkpoint({"epoch": -1, "best_fitness": None, "model": _model("yolov8n", 1), "ema": None,
                     "updates": None, "optimizer": None, "wandb_id": None}, teacher)
    return root, data, teacher


def _cmd(root: Path, data: Path, teacher: Path, name: str, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "train_kd.py"), "--model", str(ROOT / "models/yolov8n.yaml"), "--teacher",
            str(teacher), "--data", str(data), "--img", str(IMG),  # no --hyp: the v8 family's hyp.v8.yaml
            "--batch", "4", "--workers", "0", "--project", str(root / "runs"), "--name", name, "--weights", "", *extra]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_ver2_output_kd_run(kd_setup):
    root, data, teacher = kd_setup
    _run(_cmd(root, data, teacher, "ver2", "--kd_config", "v8_ver2", "--epochs", "1", "--noval"), root)
    names, rows = read_results_csv(root / "runs/ver2/results.csv")
    assert "train/dfl_loss" in names and "train/kd_loss" in names and rows[0][names.index("train/kd_loss")] > 0
    assert "mse" not in (root / "runs/ver2/kd.yaml").read_text()


def test_seed_ver1_command_resumes_with_its_adapters(kd_setup):
    """The seed's command (--model, --teacher, --kd_layer 15 18 21, --batch) interrupted after its first
    epoch, then resumed: the trained strided adapters travel in last.pt and are read back."""
    from conftest import kill_when_written

    from models.checkpoint import safe_torch_load

    root, data, teacher = kd_setup
    last = root / "runs/ver1/weights/last.pt"
    kill_when_written(_cmd(root, data, teacher, "ver1", "--kd_layer", "15", "18", "21", "--epochs", "2",
                           "--noval"), root, last)
    assert last.exists(), "train_kd.py never wrote last.pt"
    saved = safe_torch_load(last)["kd_state"]
    keys = [k for k in saved if k.startswith("kd.losses.mse.adapters.")]
    assert len(keys) == 6  # weight and bias of the three strided 3x3 adapters
    # the run's kd.yaml rebuilds an objective that takes exactly this state
    objective, _ = _objective("yolov8n", "yolov8n", kd_config=load_kd_config(root / "runs/ver1/kd.yaml"))
    objective.load_state_dict(saved)
    assert all(torch.equal(objective.state_dict()[k], saved[k]) for k in keys)
    r = _run([sys.executable, str(ROOT / "train_kd.py"), "--resume", str(last), "--workers", "0"], root)
    assert "Resuming training from epoch" in r.stdout
    names, rows = read_results_csv(root / "runs/ver1/results.csv")
    assert [int(x[0]) for x in rows] == [0, 1] and "train/dfl_loss" in names
    for c in ("train/kd_loss", "train/mse_loss"):
        assert c in names and all(row[names.index(c)] > 0 for row in rows), c


@pytest.mark.parametrize("student, teacher, layers", [("yolov8n", "yolov8s", [15, 18, 21]),
                                                      ("yolo11n", "yolov8s", [16, 19, 22])])
def test_ver1_distils_the_maps_entering_the_head(student, teacher, layers):
    """v8_ver1 names the head's inputs, not layer numbers: the seed's 15, 18, 21 on v8 students, 16, 19, 22 on
    YOLO11 ones (numbered 15, 18, 21 there, it would distil a C3k2's inner maps of other strides)."""
    objective, _ = _objective(student, teacher, kd_config=load_kd_config("v8_ver1"))
    entry = objective.resolved.to_dict()["losses"][0]
    assert [int(str(x).split(".")[-1]) for x in entry["student_layers"]] == layers
