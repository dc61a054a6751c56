"""Bad inputs, continued: results.csv damage, --exist-ok into an old run, the warmup notice (issue 16 §3, §4),
and one subprocess per script proving exit status 2, the flag named, no traceback and nothing created.
The flag and yaml tables are in test_bad_inputs.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.options import check_warmup
from utils.general import UserError
from utils.loggers import ResultsLogger, clear_previous_run, read_results_csv

ROOT = Path(__file__).resolve().parents[1]
HYP = ROOT / "data" / "hyps" / "hyp.scratch.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from utils.data.synthetic import build_synthetic_dataset

    return build_synthetic_dataset(tmp_path_factory.mktemp("bad_runs") / "ds", n_train=4, n_val=2, img_size=64,
                                   nc=3, seed=2)


@pytest.fixture(scope="module")
def sd_checkpoint(tmp_path_factory):
    from models.yolo import Model

    f = tmp_path_factory.mktemp("sd") / "sd_only.pt"
    torch.save(Model(ROOT / "models" / "yolov5n.yaml", nc=3).state_dict(), f)
    return f


# ------------------------------------------------------------------------------------------------
# results.csv: tolerant where a warning is enough, strict where the user must act


def _csv_with_damage(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    log = ResultsLogger(d, tensorboard=False)
    for e in range(3):
        log.log_epoch(e, {"box": 0.1, "obj": 0.05, "cls": 0.02}, (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02), [0.01] * 3)
    lines = (d / "results.csv").read_text().splitlines()
    lines[2] = lines[2][:30]  # epoch 1 cut short (a kill while writing, a bad copy)
    (d / "results.csv").write_text("\n".join(lines) + "\n" + "   3,  0.1")  # and an unfinished last line
    return d / "results.csv"


def test_damaged_results_line_is_skipped_with_warning(tmp_path, caplog):
    f = _csv_with_damage(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        names, rows = read_results_csv(f)
    assert [r[0] for r in rows] == [0, 2] and names[0] == "epoch"
    assert "damaged lines 3, 5 skipped" in caplog.text and str(f) in caplog.text


def test_resume_truncate_survives_damaged_results(tmp_path):
    f = _csv_with_damage(tmp_path / "run")
    log = ResultsLogger(f.parent, tensorboard=False)
    log.truncate_from(3)  # what --resume does before continuing at epoch 3
    log.log_epoch(3, {"box": 0.1, "obj": 0.05, "cls": 0.02}, (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02), [0.01] * 3)
    _, rows = read_results_csv(f)
    assert [int(r[0]) for r in rows] == [0, 2, 3] and all(len(r) == 14 for r in rows)


def test_results_without_header_is_an_error(tmp_path):
    f = tmp_path / "results.csv"
    f.write_text("0,1,2\n1,2,3\n")
    with pytest.raises(UserError, match="line 1 is not a results.csv header"):
        read_results_csv(f)


def test_exist_ok_clears_the_earlier_runs_files(tmp_path, caplog):
    (tmp_path / "weights").mkdir()
    for name in ("weights/best.pt", "weights/last.pt", "weights/epoch3.pt", "results.csv", "opt.yaml"):
        (tmp_path / name).write_text("old")
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        removed = clear_previous_run(tmp_path)
    assert sorted(p.name for p in removed) == ["best.pt", "epoch3.pt", "last.pt", "results.csv"]
    assert (tmp_path / "opt.yaml").exists() and not (tmp_path / "weights/best.pt").exists()
    assert "earlier run" in caplog.text and "--exist-ok" in caplog.text


def test_warmup_notice():
    assert check_warmup(1000, 50, 30, {}) is True  # 800 images at batch 16 for 30 epochs: 20 epochs of warmup
    assert check_warmup(1000, 50, 300, {}) is False
    assert check_warmup(100, 50, 4, {"warmup_min_iters": 100}) is False  # exactly half: no notice


def test_warmup_notice_text(caplog):
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        check_warmup(1000, 50, 30, {})
        check_warmup(100, 10, 5, {"warmup_min_iters": 100})
    first, second = [r.getMessage() for r in caplog.records]
    assert "1000 iterations (20.0 epochs" in first and "data/hyps/hyp.short.yaml" in first
    assert "hyp.short.yaml" not in second and "more epochs" in second


# ------------------------------------------------------------------------------------------------
# one subprocess per script: exit status 2, the flag named, no traceback, nothing created


SCRIPT_CASES = [
    ("train.py", ["--batch-size", "0", "--cfg", "models/yolov5n.yaml"], "--batch-size 0"),
    ("val.py", ["--conf-thres", "2", "--weights", "W"], "--conf-thres 2"),
    ("detect.py", ["--iou-thres", "1.5", "--weights", "W"], "--iou-thres 1.5"),
    ("export.py", ["--img", "0", "--weights", "W"], "--imgsz 0"),
    ("plot_curves.py", ["nope_run"], "nope_run"),
]


@pytest.mark.parametrize(("script", "args", "words"), SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
def test_scripts_exit_2_without_traceback(script, args, words, data, sd_checkpoint, tmp_path):
    args = [str(sd_checkpoint) if a == "W" else a for a in args]
    extra = ["--data", str(data)] if script in ("train.py", "val.py") else []
    extra += ["--project", str(tmp_path / "runs")] if script != "plot_curves.py" and script != "export.py" else []
    r = subprocess.run([sys.executable, str(ROOT / script), *args, *extra], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_plot_curves_cli_with_damaged_line(tmp_path):
    f = _csv_with_damage(tmp_path / "run")
    r = subprocess.run([sys.executable, str(ROOT / "plot_curves.py"), str(f.parent), "--out", str(tmp_path / "c.png")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "damaged lines 3, 5 skipped" in r.stdout + r.stderr and (tmp_path / "c.png").stat().st_size > 1000
    r = subprocess.run([sys.executable, str(ROOT / "plot_curves.py"), str(f.parent), "--out", str(tmp_path / "c.txt")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------
# end to end: --exist-ok into an old run, and the warmup notice of a short default-hyp run


def test_train_exist_ok_does_not_report_the_old_best(data, tmp_path):
    """A subprocess (training sets global seeds and flags that must not leak into other tests)."""
    from models.checkpoint import safe_torch_load

    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    old = {"epoch": -1, "best_fitness": np.zeros(1), "model": None, "marker": "old run"}
    torch.save(old, run / "weights" / "best.pt")
    (run / "results.csv").write_text("epoch,x\n0,1\n1,2\n5,3\n")
    argv = ["--data", str(data), "--cfg", str(ROOT / "models/yolov5n.yaml"), "--img", "64", "--epochs", "1",
            "--batch-size", "2", "--workers", "0", "--project", str(tmp_path), "--name", "exp", "--exist-ok",
            "--noautoanchor", "--hyp", str(HYP)]
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "earlier run" in out and "data/hyps/hyp.short.yaml" in out  # the warmup notice of §4, once
    assert out.count("warmup lasts") == 1
    assert "marker" not in safe_torch_load(run / "weights" / "best.pt")
    names, rows = read_results_csv(run / "results.csv")
    assert names[0] == "epoch" and [r[0] for r in rows] == [0]
