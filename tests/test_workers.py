"""Results do not depend on --workers (README "Train"): a seeded run loading its data in the main process
(--workers 0) and one loading it in worker processes (--workers 2) end with the same weights, bit for bit.

EpochSampler hands every sample its own seed, drawn from (--seed, epoch, position), and the dataset seeds
`random` and numpy with it before augmenting; which process loads a sample, and what that process loaded
before, must not matter. The run augments with every random draw of the dataset switched on (mosaic, mixup,
HSV, flips, rotation, translation, scale, shear, perspective) and lasts 2 epochs, so the persistent workers
also carry the sampler from one epoch to the next. One torch thread in both runs: the worker count is the
only difference, so tolerance 0.
Mutation seen failing: the per-sample `random.seed` / `np.random.seed` removed from
LoadImagesAndLabels.__getitem__ (234 tensors differ).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.checkpoint import safe_torch_load
from utils.loggers import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
EVERY_DRAW = {"mosaic": 1.0, "mixup": 0.5, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "fliplr": 0.5, "flipud": 0.5,
              "degrees": 10.0, "translate": 0.1, "scale": 0.5, "shear": 2.0, "perspective": 0.0005}


@pytest.fixture(scope="module")
def data_and_hyp(tmp_path_factory) -> tuple[Path, Path]:
    from utils.data.synthetic import build_synthetic_dataset

    root = tmp_path_factory.mktemp("workers")
    data = build_synthetic_dataset(root / "data", n_train=16, n_val=4, img_size=64, nc=3, seed=6)
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.short.yaml").read_text())
    hyp.update(EVERY_DRAW)
    (root / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    return data, root / "hyp.yaml"


def _train(data: Path, hyp: Path, workers: int, project: Path) -> Path:
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--hyp", str(hyp), "--cfg",
           str(ROOT / "models/yolov5n.yaml"), "--weights", "", "--img", "64", "--epochs", "2", "--batch-size", "8",
           "--workers", str(workers), "--device", "cpu", "--noautoanchor", "--seed", "3", "--project", str(project),
           "--name", "exp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=project.parent, timeout=600, env=env, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return project / "exp"


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    ckpt = safe_torch_load(run / "weights/last.pt")
    parts = [p for p in ("model", "ema") if ckpt.get(p) is not None]  # a finished run's last.pt may hold no ema
    return {f"{part}.{k}": v for part in parts for k, v in ckpt[part].state_dict().items()}


def test_workers_do_not_change_the_results(data_and_hyp, tmp_path):
    data, hyp = data_and_hyp
    a, b = _train(data, hyp, 0, tmp_path / "w0"), _train(data, hyp, 2, tmp_path / "w2")
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ between --workers 0 and 2, e.g. {differ[0]}"
    (names, rows_a), (_, rows_b) = read_results_csv(a / "results.csv"), read_results_csv(b / "results.csv")
    assert len(rows_a) == 2 and rows_a == rows_b  # losses, metrics and learning rates of both epochs
    assert rows_a[-1][names.index("train/box_loss")] > 0  # it trained on labelled images
