"""The CUDA path (issue 15 §3), skipped without a GPU: AMP student with a fp16 teacher, train_kd.py and
train.py end to end on a GPU with resume, val.py --half. Run on a GPU machine with
`python -m pytest tests/test_cuda.py tests/test_loss.py -k cuda`."""

import subprocess
import sys
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import kill_when_written

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "weights/teacher-shapes-yolov5s.pt"


def test_fp16_teacher_under_amp():
    """train_kd.py's default on CUDA: the fused teacher's weights in fp16, its forward under fp16 autocast;
    the KD terms are float32, finite, and within fp16 rounding of a float32 teacher's: fp16 keeps 11
    significant bits (unit roundoff 4.9e-4), ~25 convs deep that is a relative ~5e-3 on features, so 2e-2
    on each term."""
    from distill.objective import build_kd_objective, load_teacher
    from engine.kd_flags import objective_options
    from models.yolo import Model
    from utils.losses.yolov5 import ComputeLoss

    hyp = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0,
           "label_smoothing": 0.0}
    torch.manual_seed(0)
    student = Model(ROOT / "models/yolov5n.yaml", nc=6).cuda().train()
    teacher = load_teacher(TEACHER, "cuda", nc=6)
    imgs = torch.rand(4, 3, 160, 160, device="cuda")
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [2, 3, 0.3, 0.6, 0.2, 0.2]], device="cuda")
    terms = {}
    for dtype in ("fp32", "fp16"):  # fp32 first: the fp16 build converts the teacher in place
        s = deepcopy(student)
        obj = build_kd_objective(s, teacher, ComputeLoss.from_model(s, hyp), dict(hyp),
                                 **objective_options(SimpleNamespace(kd_loss="l2", feature_loss="at", teacher_dtype=dtype)))
        with torch.autocast("cuda"):
            out = obj(s, imgs, targets)
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        out["loss"].backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in s.parameters() if p.requires_grad)
        terms[dtype] = {k: float(out[k]) for k in ("kd", "at")}
    assert next(teacher.parameters()).dtype == torch.float16
    for k in ("kd", "at"):
        assert terms["fp16"][k] == pytest.approx(terms["fp32"][k], rel=2e-2), k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from utils.data.synthetic import build_synthetic_dataset

    return build_synthetic_dataset(tmp_path_factory.mktemp("cuda_data"), n_train=32, n_val=8, img_size=128,
                                   nc=6, seed=3)


def _run(cmd, cwd):
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_train_kd_on_cuda_resumes(data, tmp_path):
    """train_kd.py --device 0 (AMP student, fp16 teacher): killed after epoch 0 and resumed, it finishes
    with one results row per epoch and a non-zero KD loss."""
    from models.checkpoint import safe_torch_load
    from utils.loggers import read_results_csv

    cmd = [sys.executable, str(ROOT / "train_kd.py"), "--teacher_weight", str(TEACHER), "--data", str(data),
           "--cfg", str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--img", "128", "--epochs", "2",
           "--batch-size", "8", "--workers", "2", "--device", "0", "--project", str(tmp_path), "--name", "kd",
           "--cache", "ram"]
    last = tmp_path / "kd/weights/last.pt"
    kill_when_written(cmd, tmp_path, last)
    assert safe_torch_load(last)["epoch"] == 0
    _run([sys.executable, str(ROOT / "train_kd.py"), "--resume", str(last)], cwd=tmp_path)
    names, rows = read_results_csv(tmp_path / "kd/results.csv")
    assert [int(r[names.index("epoch")]) for r in rows] == [0, 1]
    assert all(r[names.index("train/kd_loss")] > 0 for r in rows)
    assert (tmp_path / "kd/weights/best.pt").exists()


def test_train_and_half_val_on_cuda(data, tmp_path):
    """train.py --device 0 for one epoch, then val.py --half on its best.pt: a metrics line is printed."""
    _run([sys.executable, str(ROOT / "train.py"), "--data", str(data), "--cfg", str(ROOT / "models/yolov5n.yaml"),
          "--weights", "", "--img", "128", "--epochs", "1", "--batch-size", "8", "--workers", "2", "--device", "0",
          "--project", str(tmp_path), "--name", "plain"], cwd=tmp_path)
    r = _run([sys.executable, str(ROOT / "val.py"), "--data", str(data), "--weights",
              str(tmp_path / "plain/weights/best.pt"), "--img", "128", "--device", "0", "--half"], cwd=tmp_path)
    assert "all" in r.stdout + r.stderr
