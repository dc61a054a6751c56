"""End to end: the real train_kd.py for one epoch at --img 64 on generated nc=80 data."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from utils.loggers import V6_COLUMNS, read_results_csv

ROOT = Path(__file__).resolve().parents[1]


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    """Generated shapes (classes 0-5) declared as an 80-class dataset, like a COCO-class custom set."""
    import yaml

    from utils.data.synthetic import build_synthetic_dataset

    f = build_synthetic_dataset(tmp_path_factory.mktemp("kd_data"), n_train=8, n_val=4, img_size=64, nc=6, seed=2)
    d = yaml.safe_load(f.read_text())
    d.update(nc=80, names=[f"class{i}" for i in range(80)])
    d.pop("download", None)
    f.write_text(yaml.safe_dump(d))
    return f


def _kd(cwd, data, teacher, *extra):
    cmd = [sys.executable, str(ROOT / "train_kd.py"), "--teacher_weight", str(teacher), "--data", str(data),
           "--img", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--project", str(cwd / "runs"),
           "--name", "kd", "--noautoanchor", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, check=False)


def test_one_epoch_kd_with_fixture_teacher(coco_like, fixtures_dir, tmp_path):
    """One epoch of the default recipe (kl output KD + scorel2). Every KD run has distillation state (at least the
    batch counter kd.iteration) in its mid-run checkpoints, so best.pt lacking 'kd_state' shows that the
    final file is stripped to the student.
    Mutation seen failing: strip_optimizer keeping 'kd_state' (models/checkpoint.py)."""
    teacher = fixtures_dir / "yolov5s_v6.0.pt"
    before = _md5(teacher)
    r = _kd(tmp_path, coco_like, teacher, "--cfg", str(ROOT / "models/yolov5n.yaml"), "--weights", "")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "runs/kd"
    for f in ["weights/last.pt", "weights/best.pt", "hyp.yaml", "opt.yaml", "results.csv", "results.png"]:
        assert (run / f).exists(), f
    names, rows = read_results_csv(run / "results.csv")
    assert names[:14] == V6_COLUMNS
    # the terms, then output KD's parts (logged by default since issue 27)
    assert names[14:] == ["train/kd_loss", "train/scorel2_loss", "train/kd_box", "train/kd_obj", "train/kd_cls"]
    assert rows[0][names.index("train/kd_loss")] > 0 and rows[0][names.index("train/scorel2_loss")] > 0
    parts = [rows[0][names.index(f"train/kd_{k}")] for k in ("box", "obj", "cls")]
    assert all(v > 0 for v in parts)  # epoch means of the weighted parts: they add up to kd's (csv: 5 digits)
    assert sum(parts) == pytest.approx(rows[0][names.index("train/kd_loss")], rel=1e-3)
    assert "teacher: mAP@0.5" in r.stdout  # sanity check of the teacher before epoch 0
    assert _md5(teacher) == before  # the teacher file is never written

    from models.checkpoint import attempt_load, safe_torch_load

    ckpt = safe_torch_load(run / "weights/best.pt")
    assert "kd_state" not in ckpt and ckpt["optimizer"] is None
    student = ckpt["model"]
    assert sum(p.numel() for p in student.parameters()) == 1_872_157  # yolov5n at nc=80: student only
    assert attempt_load(run / "weights/best.pt").model[-1].nc == 80


def test_card_command_with_yolov5m_teacher(coco_like, tmp_path):
    """`python train_kd.py --teacher_weight weights/yolov5m.pt --isL False --kd_loss_selected kl` (+ data flags)."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.yolo import Model

    (tmp_path / "weights").mkdir()
    torch.manual_seed(0)
    m = Model(ROOT / "models/yolov5m.yaml", nc=80).half()
    save_checkpoint({"epoch": -1, "best_fitness": None, "model": m, "ema": None, "updates": None,
                     "optimizer": None, "wandb_id": None}, tmp_path / "weights/yolov5m.pt")
    r = _kd(tmp_path, coco_like, "weights/yolov5m.pt", "--isL", "False", "--kd_loss_selected", "kl")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "runs/kd/weights/best.pt").exists()


def test_isl_contradiction_is_reported(coco_like, fixtures_dir, tmp_path):
    r = _kd(tmp_path, coco_like, fixtures_dir / "yolov5s_v6.0.pt", "--isL", "True", "--cfg",
            str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--epochs", "1", "--noval", "--nosave")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "isL" in (r.stdout + r.stderr)


def test_teacher_errors_are_clear(coco_like, tmp_path):
    r = _kd(tmp_path, coco_like, tmp_path / "weights/none.pt", "--cfg", str(ROOT / "models/yolov5n.yaml"))
    assert r.returncode == 2 and "none.pt" in r.stderr and "Traceback" not in r.stderr
    from utils.data.synthetic import build_synthetic_dataset

    six = build_synthetic_dataset(tmp_path / "six", n_train=4, n_val=2, img_size=64, nc=6, seed=3)
    r = _kd(tmp_path, six, ROOT.parent / "shared/fixtures/yolov5s_v6.0.pt", "--cfg", str(ROOT / "models/yolov5n.yaml"))
    if (ROOT.parent / "shared/fixtures").is_dir():
        assert r.returncode == 2 and "80 classes" in r.stderr and "nc=6" in r.stderr, r.stderr[-2000:]


def test_kd_resume_rebuilds_teacher_and_restores_adapters(coco_like, fixtures_dir, tmp_path):
    """--resume reads the run's kd.yaml (edited weight used), skips the teacher check, continues the
    results. That the adapters come back exactly is tests/test_kd_resume.py::test_kd_resume_is_exact's
    (it fails when engine/run_checkpoint.restore_run skips 'kd_state'; this test alone did not)."""
    import torch
    from conftest import kill_when_written

    from models.checkpoint import safe_torch_load

    cmd = [sys.executable, str(ROOT / "train_kd.py"), "--teacher_weight", str(fixtures_dir / "yolov5s_v6.0.pt"),
           "--data", str(coco_like), "--cfg", str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--img", "64",
           "--epochs", "3", "--batch-size", "4", "--workers", "0", "--project", str(tmp_path), "--name", "kd",
           "--noautoanchor", "--feature_loss", "fitnet"]
    last = tmp_path / "kd/weights/last.pt"
    kill_when_written(cmd, tmp_path, last)
    assert last.exists(), "train_kd.py never wrote last.pt"
    saved = safe_torch_load(last)["kd_state"]
    assert any(k.startswith("kd.losses.fitnet.adapters.") for k in saved)  # trained 1x1 adapters travel with the run
    kd_yaml = tmp_path / "kd/kd.yaml"
    assert "fitnet" in kd_yaml.read_text()  # the resolved recipe of the run, read back by --resume
    kd_yaml.write_text(kd_yaml.read_text().replace("weight: 0.1\n", "weight: 0.5\n"))  # resume uses this file
    r = subprocess.run([sys.executable, str(ROOT / "train_kd.py"), "--resume", str(last), "--workers", "0"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names, rows = read_results_csv(tmp_path / "kd/results.csv")
    assert [int(x[0]) for x in rows] == [0, 1, 2]
    assert "train/fitnet_loss" in names and "train/kd_loss" in names
    assert "Resuming training from epoch" in r.stdout
    assert "teacher: mAP" not in r.stdout  # the sanity check runs once, not again on resume
    assert "0.5 x fitnet" in r.stdout + r.stderr  # weights restored from the run's kd.yaml, not re-derived
    final = safe_torch_load(tmp_path / "kd/weights/last.pt")
    assert "kd_state" not in final and torch.is_tensor(next(iter(final["model"].state_dict().values())))


def test_seed_command_distils_from_train_py(coco_like, fixtures_dir, tmp_path):
    """The seed's `python train.py --data ... --weights student.pt --t_weights teacher.pt` distils with
    train_kd.py's objective; --dist_loss / --distill_ratio are --kd_loss_selected / --alpha.
    Mutation seen failing: train.main ignoring --t_weights (_distils returning False): no kd column."""
    import yaml

    from distill.teacher_record import sha256_of

    teacher = fixtures_dir / "yolov5s_v6.0.pt"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(coco_like), "--weights",
           str(fixtures_dir / "yolov5n_v6.0.pt"), "--t_weights", str(teacher), "--dist_loss", "kl",
           "--distill_ratio", "0.5", "--img", "64", "--epochs", "1", "--batch-size", "4", "--workers", "0",
           "--project", str(tmp_path / "runs"), "--name", "seed", "--noautoanchor", "--noval"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "runs/seed"
    names, rows = read_results_csv(run / "results.csv")
    assert "train/kd_loss" in names and rows[0][names.index("train/kd_loss")] > 0
    kd = yaml.safe_load((run / "kd.yaml").read_text())["losses"][0]
    assert (kd["type"], kd["variant"], kd["weight"]) == ("YoloKDLoss", "kl", 0.5)
    assert yaml.safe_load((run / "opt.yaml").read_text())["teacher_record"]["sha256"] == sha256_of(teacher)
    kd_cmd = [cmd[0], str(ROOT / "train_kd.py"), *cmd[2:], "--alpha", "2"]  # both spellings, different values
    r = subprocess.run(kd_cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
    assert r.returncode == 2 and "--distill_ratio 0.5 and --alpha 2.0" in r.stderr, r.stderr[-2000:]


def test_teacher_overlap_gives_the_same_run(coco_like, fixtures_dir, tmp_path):
    """--teacher_overlap on (the teacher's forward of the next batch on a second thread, engine/prefetch.py)
    trains the same student as off, to the bit: the same kernels run on the same inputs in the same order, only
    on another thread, and the batches are drawn in the same order (--multi-scale's draws too). Equality, not
    a tolerance: any difference means a batch met the wrong teacher output or the draws moved.
    Mutation seen failing: teacher_ahead yielding the next batch's teacher output with this batch."""
    import torch

    from models.checkpoint import safe_torch_load

    teacher = fixtures_dir / "yolov5s_v6.0.pt"
    runs = {}
    for mode in ("off", "on"):
        cwd = tmp_path / mode
        cwd.mkdir()
        r = _kd(cwd, coco_like, teacher, "--cfg", str(ROOT / "models/yolov5n.yaml"), "--weights", "",
                "--teacher_overlap", mode, "--multi-scale", "--noval")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert ("Teacher forward overlapped" in r.stdout + r.stderr) == (mode == "on")
        runs[mode] = cwd / "runs/kd"
    names, off = read_results_csv(runs["off"] / "results.csv")
    _, on = read_results_csv(runs["on"] / "results.csv")
    assert on == off
    a = safe_torch_load(runs["off"] / "weights/last.pt")["model"].state_dict()
    b = safe_torch_load(runs["on"] / "weights/last.pt")["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
