"""End to end for the YOLOv8 family: train.py one epoch of a yolov8n at --img 64 on generated images with
hyp.v8.yaml, then val.py and detect.py on the result and on the ultralytics fixture."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.loggers import V6_COLUMNS, read_results_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from utils.synthetic import build_synthetic_dataset

    return build_synthetic_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=4, img_size=64, nc=3, seed=1)


@pytest.fixture(scope="module")
def v8_run(tiny_data, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(tiny_data), "--cfg", str(ROOT / "models/yolov8n.yaml"),
           "--weights", "", "--hyp", str(ROOT / "data/hyps/hyp.v8.yaml"), "--img", "64", "--epochs", "1",
           "--batch-size", "4", "--workers", "0", "--project", str(project), "--name", "exp"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=project, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return project / "exp"


def test_train_one_epoch_v8(v8_run, tiny_data):
    from utils.checkpoint import attempt_load
    from utils.general import yaml_load

    names, rows = read_results_csv(v8_run / "results.csv")
    assert names[:14] == V6_COLUMNS and names[14:] == ["train/dfl_loss"]  # v8 items: box, cls, dfl
    row = dict(zip(names, rows[0]))
    assert row["train/box_loss"] > 0 and row["train/cls_loss"] > 0 and row["train/dfl_loss"] > 0
    assert row["train/obj_loss"] == 0  # no objectness in this family
    model = attempt_load(v8_run / "weights/best.pt")
    names_data = yaml_load(tiny_data)["names"]
    assert model.family == "v8" and model.names == list(names_data.values() if isinstance(names_data, dict) else names_data)
    assert torch.equal(model.head.dfl.conv.weight.view(-1), torch.arange(16.0))  # the DFL bins never train


def test_val_and_detect_on_v8_checkpoints(v8_run, tiny_data, fixtures_dir, tmp_path):
    import detect
    import val

    for w in (v8_run / "weights/best.pt", fixtures_dir / "yolov8n_ultralytics.pt"):
        results, maps, _ = val.run(tiny_data, weights=str(w), imgsz=64, batch_size=4, workers=0, project=tmp_path,
                                   plots=False)
        assert len(results) == 7 and 0 <= results[2] <= 1 and len(maps) == 3  # P, R, mAP@.5, ...
    source = Path(tiny_data).parent / "images" / "val"
    detect.run(weights=str(fixtures_dir / "yolov8n_ultralytics.pt"), source=str(source), imgsz=[64, 64],
               conf_thres=0.0001, project=tmp_path / "det", name="exp", save_txt=True)
    assert list((tmp_path / "det" / "exp").glob("*.jpg"))
