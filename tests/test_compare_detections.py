"""compare_detections.py: one row per model under a ground-truth row, one column per image; clear errors."""

from pathlib import Path

import cv2
import pytest

import compare_detections as cd
from utils.general import UserError

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "weights/teacher-shapes-yolov5s.pt"


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    from utils.data.synthetic import build_synthetic_dataset

    f = build_synthetic_dataset(tmp_path_factory.mktemp("cmpdet"), n_train=2, n_val=3, img_size=96, nc=6, seed=2)
    return f.parent / "images/val" if (f.parent / "images/val").is_dir() else next(f.parent.rglob("images/val"))


def test_grid_rows_and_columns(val_dir, tmp_path):
    """2 models + the labels row, 2 images: a (3 x (STRIP + TILE)) by (2 x TILE) picture; the labels row
    draws every label box (its title counts them)."""
    out = cd.compare([str(TEACHER), str(TEACHER)], str(val_dir), labels=["a", "b"], n=2, img=96, out=tmp_path / "c.jpg")
    im = cv2.imread(str(out))
    assert im.shape == (3 * (cd.STRIP + cd.TILE), 2 * cd.TILE, 3)
    files = cd.pick_images(val_dir, 2)
    gt = cd.ground_truth(files, [str(i) for i in range(6)])
    labels = [ln for f in files for ln in (f.parent.parent.parent / "labels/val" / f"{f.stem}.txt").read_text().splitlines()
              if ln.strip()]
    assert sum(len(g) for g in gt) == len(labels) > 0


def test_bad_inputs(val_dir, tmp_path):
    with pytest.raises(UserError, match="one label each"):
        cd.compare([str(TEACHER)], str(val_dir), labels=["a", "b"], out=tmp_path / "x.jpg")
    with pytest.raises(UserError, match="neither an image nor a folder"):
        cd.compare([str(TEACHER)], str(tmp_path / "missing"), out=tmp_path / "x.jpg")
    with pytest.raises(UserError, match="--conf"):
        cd.compare([str(TEACHER)], str(val_dir), conf=2, out=tmp_path / "x.jpg")
