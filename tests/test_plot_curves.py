import subprocess
import sys
from pathlib import Path

import pytest

from utils.loggers import V6_COLUMNS, ResultsLogger, read_results_csv

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(d: Path, epochs: int, kd: bool) -> Path:
    d.mkdir(parents=True)
    log = ResultsLogger(d, tensorboard=False)
    for e in range(epochs):
        losses = {"box": 0.1 / (e + 1), "obj": 0.05, "cls": 0.02}
        if kd:
            losses.update(kd=0.5 / (e + 1), at=0.01)
        log.log_epoch(e, losses, (0.5, 0.4, 0.3 + e / 100, 0.2 + e / 100, 0.1, 0.05, 0.02), [0.01, 0.01, 0.09])
    return d


def test_results_csv_header_is_v6_padded_then_extras(tmp_path):
    d = _fake_run(tmp_path / "kd", 2, kd=True)
    header = (d / "results.csv").read_text().splitlines()[0].split(",")
    assert all(len(h) == 20 for h in header)  # v6.0 pads every name to width 20
    names = [h.strip() for h in header]
    assert names[:14] == V6_COLUMNS
    assert names[14:] == ["train/kd_loss", "train/at_loss"]
    names, rows = read_results_csv(d / "results.csv")
    assert len(rows) == 2 and rows[1][0] == 1.0


def test_truncate_from_keeps_earlier_epochs(tmp_path):
    d = _fake_run(tmp_path / "r", 3, kd=False)
    ResultsLogger(d, tensorboard=False).truncate_from(2)
    _, rows = read_results_csv(d / "results.csv")
    assert [int(r[0]) for r in rows] == [0, 1]


def test_plot_curves_compares_runs(tmp_path):
    a = _fake_run(tmp_path / "baseline", 3, kd=False)
    b = _fake_run(tmp_path / "distilled", 3, kd=True)
    out = tmp_path / "cmp.png"
    r = subprocess.run([sys.executable, str(ROOT / "plot_curves.py"), str(a), str(b / "results.csv"), "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000
    assert "baseline" in r.stdout and "distilled" in r.stdout


def test_plot_curves_missing_file_is_clear_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "plot_curves.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_plot_curves_label_count_mismatch(tmp_path):
    from plot_curves import load_runs
    from utils.general import UserError

    a = _fake_run(tmp_path / "a", 1, kd=False)
    with pytest.raises(UserError, match="one label per run"):
        load_runs([str(a)], ["x", "y"])
