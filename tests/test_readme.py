"""The README's two quick-start commands: they match CI, and the first one works in a fresh clone."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_install_run_and_test_commands():
    install_and_run, test = readme_commands()
    install, run = [x.strip() for x in install_and_run.split("&&")]
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert install in ci, ".ci/run must install exactly as the README says"
    assert test in ci, ".ci/run must run the README's test command"
    assert run == "bash quickstart.sh"
    teacher = re.search(r'^TEACHER="([^"]+)"', (ROOT / "quickstart.sh").read_text(), re.M).group(1)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", teacher], cwd=ROOT, capture_output=True)
    assert tracked.returncode == 0 or not (ROOT / ".git").exists(), f"the quick-start teacher {teacher} must be committed"
    assert (ROOT / teacher).is_file(), teacher


@pytest.mark.slow
def test_quickstart_runs_in_fresh_clone(tmp_path):
    clone = tmp_path / "fresh"
    r = subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot clone the repository here: {r.stderr.strip()}")
    run = readme_commands()[0].split("&&")[1].strip()
    env = {**os.environ, "QS_EPOCHS": "1", "QS_IMG": "64", "QS_BF16": "0", "PYTHONPATH": ""}
    r = subprocess.run(shlex.split(run), cwd=clone, capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    folder = clone / "runs/quickstart/seed0-1x64"
    assert (folder / "default-s0/weights/best.pt").is_file() and (folder / "plain-s0/weights/best.pt").is_file()
    assert (folder / "curves.png").stat().st_size > 10_000
    assert (folder / "detections.jpg").stat().st_size > 10_000
    out = r.stdout + r.stderr
    assert "default: " in out and "on 1 seed (no interval with one seed" in out  # the verdict, printed
    assert "Quick start done" in out and (folder / "summary.md").is_file()
