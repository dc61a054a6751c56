"""train_kd.py --resume: exact (an interrupted run ends where an uninterrupted one does, adapters
included), and bound to the run's teacher file (path, size, sha256 recorded; a changed file refused)."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_when_written

from utils.general import LOGGER, UserError
from utils.loggers import read_results_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Generated shapes declared as 80 classes, the fixture teacher's (as tests/test_train_kd.py)."""
    import yaml

    from utils.data.synthetic import build_synthetic_dataset

    f = build_synthetic_dataset(tmp_path_factory.mktemp("kd_resume_data"), n_train=8, n_val=4, img_size=64,
                                nc=6, seed=4)
    d = yaml.safe_load(f.read_text())
    d.update(nc=80, names=[f"class{i}" for i in range(80)])
    d.pop("download", None)
    f.write_text(yaml.safe_dump(d))
    return f


def _cmd(data, teacher, project, epochs=3):
    return [sys.executable, str(ROOT / "train_kd.py"), "--teacher_weight", str(teacher), "--data", str(data),
            "--cfg", str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--img", "64", "--epochs", str(epochs),
            "--batch-size", "4", "--workers", "1", "--project", str(project), "--name", "kd", "--noautoanchor",
            "--feature_loss", "fitnet", "--save-period", "1", "--seed", "5"]


# One torch thread in every run of this file. With two threads on a loaded 2-core machine two processes
# given the same state used to end ~2e-6 apart after two epochs: the loss's gradient summed repeated cells
# with atomic adds in thread order (fixed by utils.losses.yolov5.take_cells; tests/test_determinism.py and
# tests/test_loss.py check multi-threaded reproducibility). One thread keeps this file about resume only.
# The exactness bound below (1e-6) is about state that resume must restore; a miss moves weights ~1e-2.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(cmd, cwd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, check=False, env=ONE_THREAD)


def _floats(sd: dict) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point()}


def _worst(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(data, fixtures_dir, tmp_path_factory):
    """(uninterrupted run, run killed after epoch 0 then resumed, copy of its epoch-0 last.pt, teacher).
    Mutation seen failing: teacher_record keeping the relative path (the resume from another directory
    cannot find the teacher)."""
    tmp = tmp_path_factory.mktemp("kd_resume")
    teacher = tmp / "teacher.pt"
    shutil.copy(fixtures_dir / "yolov5s_v6.0.pt", teacher)
    r = _run(_cmd(data, teacher.name, tmp / "a"), cwd=tmp)  # a relative path, recorded as an absolute one
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = tmp / "b/kd/weights/last.pt"
    kill_when_written(_cmd(data, teacher.name, tmp / "b"), tmp, last, env=ONE_THREAD)
    from models.checkpoint import safe_torch_load

    assert safe_torch_load(last)["epoch"] == 0, "the run was not interrupted after its first epoch"
    # killed the moment last.pt appeared: best.pt of that epoch is already there (written first; the
    # other order loses it when the resumed epochs validate worse, seen on a GPU run)
    assert last.with_name("best.pt").exists()
    epoch0 = last.with_name("epoch0_copy.pt")
    shutil.copy(last, epoch0)
    other_dir = tmp / "elsewhere"
    other_dir.mkdir()
    # resumed by train.py: a run whose opt.yaml names a teacher continues as distillation (train_kd.py
    # --resume is tests/test_train_kd.py's); from another directory: the recorded absolute path is used
    r = _run([sys.executable, str(ROOT / "train.py"), "--resume", str(last), "--workers", "1"], cwd=other_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "a/kd", tmp / "b/kd", epoch0, teacher


def test_kd_resume_is_exact(runs):
    """Killed after epoch 0 and resumed, a KD run ends where the uninterrupted run of the same seed ends:
    student weights, EMA, optimizer momentum (student and adapters), the distillation state (FitNet's
    1x1 adapters, batch counter) and results.csv. Both runs execute the same kernels on this machine, so
    only state that resume fails to restore can differ, and any such miss moves weights by far more than
    the 1e-6 bound (a fresh adapter or momentum buffer changes every later step).
    Mutations seen failing: kd_state not restored in engine/run_checkpoint.restore_run (adapters differ by ~1e-2);
    live model resumed from the EMA (engine/setup._ckpt_model taking 'ema' first)."""
    from models.checkpoint import safe_torch_load

    a_dir, b_dir, _, _ = runs
    a, b = (safe_torch_load(d / "weights/epoch2.pt") for d in (a_dir, b_dir))
    for key in ("model", "ema"):
        worst = _worst(_floats(a[key].state_dict()), _floats(b[key].state_dict()))
        assert worst <= 1e-6, f"{key} differs after resume by {worst:.3g}"
    assert a["updates"] == b["updates"]
    assert any(k.startswith("kd.losses.fitnet.adapters.") for k in a["kd_state"])
    assert _worst(_floats(a["kd_state"]), _floats(b["kd_state"])) <= 1e-6, "adapters differ after resume"
    assert int(a["kd_state"]["kd.iteration"]) == int(b["kd_state"]["kd.iteration"]) > 0
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert len(sa) == len(sb) > 0
    for pa, pb in zip(sa.values(), sb.values()):
        assert torch.allclose(pa["momentum_buffer"], pb["momentum_buffer"], rtol=0, atol=1e-6)
    (na, ra), (nb, rb) = (read_results_csv(d / "results.csv") for d in (a_dir, b_dir))
    assert na == nb and "train/fitnet_loss" in na and len(ra) == len(rb) == 3
    assert torch.allclose(torch.tensor(ra), torch.tensor(rb), rtol=0, atol=1e-6)


def test_teacher_recorded_with_the_run(runs):
    import yaml

    from distill.teacher_record import sha256_of
    from models.checkpoint import safe_torch_load

    a_dir, _, epoch0, teacher = runs
    record = {"path": str(teacher.resolve()), "size": teacher.stat().st_size, "sha256": sha256_of(teacher)}
    assert yaml.safe_load((a_dir / "opt.yaml").read_text())["teacher_record"] == record
    assert safe_torch_load(a_dir / "weights/epoch2.pt")["teacher"] == record
    assert safe_torch_load(epoch0)["teacher"] == record


def test_resume_with_changed_teacher_is_refused(runs, tmp_path):
    """A retrained teacher file is never used silently: the message names the path and both hashes.
    Mutation seen failing: the sha256 comparison in distill/teacher_record.resume_teacher removed."""
    from distill.teacher_record import sha256_of

    _, _, epoch0, teacher = runs
    before = sha256_of(teacher)
    original = teacher.read_bytes()
    try:
        teacher.write_bytes(original + b"\0")  # any change of content
        after = sha256_of(teacher)
        r = _run([sys.executable, str(ROOT / "train_kd.py"), "--resume", str(epoch0), "--workers", "0"], cwd=tmp_path)
    finally:
        teacher.write_bytes(original)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert str(teacher.resolve()) in r.stderr and before in r.stderr and after in r.stderr, r.stderr[-2000:]
    assert "--teacher_weight" in r.stderr and "Traceback" not in r.stderr


def test_resume_teacher_rules(tmp_path):
    """The record's rules without a run: missing file, override warning naming both hashes, old runs."""
    from distill.teacher_record import resume_teacher, teacher_record

    t = tmp_path / "t.pt"
    t.write_bytes(b"teacher one")
    record = teacher_record(t)
    assert resume_teacher(record, "ignored.pt", None) == (Path(record["path"]), record)
    new = tmp_path / "t2.pt"
    new.write_bytes(b"teacher two")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        path, rec = resume_teacher(record, record["path"], str(new))
    finally:
        LOGGER.removeHandler(handler)
    assert path == new and rec == teacher_record(new)
    text = " ".join(r.getMessage() for r in records)
    assert record["sha256"] in text and rec["sha256"] in text
    t.unlink()
    with pytest.raises(UserError, match=f"{record['sha256']}.*no longer exists"):
        resume_teacher(record, None, None)
    with pytest.raises(UserError, match="given with --resume"):
        resume_teacher(record, None, str(tmp_path / "missing.pt"))
    assert resume_teacher(None, str(new), None)[1] == teacher_record(new)  # a run saved before records
