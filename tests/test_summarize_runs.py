"""bench/summarize_runs.py: the comparison table of METHOD-sSEED runs and the --balance table."""

import sys
from pathlib import Path

import pytest

from utils.loggers import ResultsLogger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import summarize_runs  # noqa: E402


def _run(d: Path, maps: list[tuple[float, float]], kd: dict | None = None) -> None:
    """One run folder: epoch e gets mAP@0.5, mAP@0.5:0.95 = maps[e]; detection loss 0.1 + 0.05 + 0.05."""
    d.mkdir(parents=True)
    log = ResultsLogger(d, tensorboard=False)
    for e, (m50, m95) in enumerate(maps):
        losses = {"box": 0.1, "obj": 0.05, "cls": 0.05, **{k: v[e] for k, v in (kd or {}).items()}}
        log.log_epoch(e, losses, (0.5, 0.4, m50, m95, 0.1, 0.05, 0.02), [0.01, 0.01, 0.01])


def test_best_epoch_by_fitness_mean_and_spread(tmp_path, capsys):
    # fitness 0.1*mAP50 + 0.9*mAP50-95 picks epoch 1 of seed 0 (0.04+0.27 > 0.05+0.18) though epoch 2 has
    # the higher mAP@0.5: a table that took the last or the max-mAP@0.5 epoch prints other numbers
    _run(tmp_path / "kl_only-s0", [(0.1, 0.05), (0.4, 0.3), (0.5, 0.2)])
    _run(tmp_path / "kl_only-s1", [(0.2, 0.1), (0.3, 0.2)])
    _run(tmp_path / "baseline-s0", [(0.1, 0.05)])
    summarize_runs.main([str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out if line.startswith("| ")}
    assert list(rows)[1:] == ["baseline", "kl_only"]  # --order: baseline first
    seeds, epochs, m50s, m50, m95s, m95 = rows["kl_only"]
    assert (seeds, epochs) == ("0,1", "2/3")
    assert m50s == "0.400 0.300" and m50 == "0.350 ± 0.050"
    assert m95s == "0.300 0.200" and m95 == "0.250 ± 0.050"


def test_balance_is_each_term_over_the_detection_loss(tmp_path, capsys):
    _run(tmp_path / "cwd-s0", [(0.1, 0.05), (0.2, 0.1)], kd={"kd": [0.1, 0.02], "cwd": [10.0, 4.0]})
    _run(tmp_path / "cwd-s1", [(0.1, 0.05), (0.2, 0.1)], kd={"kd": [0.1, 0.02], "cwd": [6.0, 2.0]})
    summarize_runs.main([str(tmp_path), "--balance"])
    out = capsys.readouterr().out
    # detection loss 0.2 at every epoch: kd 0.1/0.2 and 0.02/0.2; cwd mean over seeds (50+30)/2, (20+10)/2
    assert "| cwd | kd | 0.5 | 0.1 |" in out
    assert "| cwd | cwd | 40 | 15 |" in out


def test_no_runs_names_the_folder(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        summarize_runs.main([str(tmp_path)])
