"""The classification example (examples/distill_digits.py) end to end, short: real digits, every method."""

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_digits_example_short(capsys):
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "examples"))
    import distill_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest
    try:
        rows = distill_digits.main(["--epochs", "3", "--seeds", "1", "--quick"])
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(ROOT / "examples"))
    assert list(rows) == ["teacher", "student alone", *distill_digits.METHODS]
    for name, runs in rows.items():
        (acc, seconds), = runs
        assert 0.0 <= acc <= 1.0 and math.isfinite(seconds), name
    assert rows["teacher"][0][0] > 0.2  # learning (chance is 0.1) after 3 epochs on 200 images
    out = capsys.readouterr().out
    assert "| vanilla_kd |" in out and "| fitnet |" in out and "test accuracy (mean ± std)" in out
