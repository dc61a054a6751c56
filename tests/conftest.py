"""Shared test helpers: the fixtures directory and a repository-root working directory."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _fixtures_or_skip() -> Path:
    if FIXTURES.is_dir():
        return FIXTURES
    if os.getenv("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the reference fixtures are missing at {FIXTURES}")
    pytest.skip(f"reference fixtures not found at {FIXTURES} (they live in ../shared/fixtures)")


REFERENCE_FIXTURES = {"fixtures_dir", "reference"}
END_TO_END = {"test_train.py", "test_train_kd.py", "test_readme.py", "test_detect.py", "test_export.py"}


def pytest_configure(config):
    """Under pytest-xdist (README's test command: one worker per core) the workers share the cores: each gets
    its share of torch threads, and so do the scripts it runs (OMP_NUM_THREADS, read by every subprocess), since
    two torch processes with the default threads on the same cores slow each other several times over. A
    thread count set by the caller (CI's one-thread rerun) is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = str(max(1, cores // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, threads)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Mark the fast comparisons with the reference fixtures `reference`, so that .ci/run can run them again
    under lower instruction sets and one thread (a tolerance read off one CPU fails there, not at a user's).
    Runs of the scripts (END_TO_END modules, `slow` tests) use the fixtures as inputs, not as references."""
    for item in items:
        if REFERENCE_FIXTURES & set(getattr(item, "fixturenames", ())) and item.path.name not in END_TO_END \
                and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.reference)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Path to ../shared/fixtures; skips outside CI when absent, fails in CI."""
    return _fixtures_or_skip()


@pytest.fixture(scope="session")
def reference(fixtures_dir):
    """The tensors of reference_v6.0.pt (weights_only load: plain tensors)."""
    import torch

    return torch.load(fixtures_dir / "reference_v6.0.pt", weights_only=True, map_location="cpu")


def kill_when_written(cmd: list[str], cwd: Path, path: Path, timeout: float = 600, env: dict | None = None) -> None:
    """Start a training command and kill it as soon as `path` (e.g. weights/last.pt) exists: a run
    interrupted after its first completed epoch, for the resume tests."""
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while not path.exists() and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
