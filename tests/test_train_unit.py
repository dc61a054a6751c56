"""Unit tests of train.py's pieces that do not need a full run."""

from pathlib import Path

import pytest
import torch

import train
from engine.epoch import EpochSettings
from engine.setup import prepare_opt
from engine.trainer import NonFiniteLoss, train_one_epoch
from utils.general import UserError


def _opt(**kw):
    opt = train.get_args_parser().parse_args([])
    for k, v in kw.items():
        setattr(opt, k, v)
    return opt


def test_ddp_batch_size_must_divide_world_size(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="must be a multiple of the number of processes"):
        prepare_opt(_opt(batch_size=16, cfg="models/yolov5n.yaml", project=str(tmp_path)))


def test_cfg_or_weights_required_and_evolve_refused(tmp_path):
    with pytest.raises(UserError, match="either --cfg or --weights"):
        prepare_opt(_opt(cfg="", weights="", project=str(tmp_path)))
    with pytest.raises(UserError, match="--evolve"):
        prepare_opt(_opt(evolve=300, cfg="models/yolov5n.yaml", project=str(tmp_path)))


def test_run_dirs_increment(tmp_path):
    first = prepare_opt(_opt(cfg="models/yolov5n.yaml", project=str(tmp_path))).save_dir
    Path(first).mkdir()
    second = prepare_opt(_opt(cfg="models/yolov5n.yaml", project=str(tmp_path))).save_dir
    assert Path(first).name == "exp" and Path(second).name == "exp2"


class _NaNAfterOne(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, model, imgs, targets):
        self.calls += 1
        loss = model(imgs).sum() * (float("nan") if self.calls > 1 else 1.0)
        return {"loss": loss, "box": torch.tensor(0.1), "obj": torch.tensor(float("nan")), "cls": torch.tensor(0.0)}


def test_non_finite_loss_stops_and_names_terms(tmp_path):
    model = torch.nn.Conv2d(3, 1, 1)
    batches = [(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(0, 6), ("a", "b"), None)] * 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = EpochSettings(epochs=1, nb=3, nw=-1, lf=lambda x: 1.0, hyp={}, batch_size=2, nbs=2, imgsz=8, gs=32,
                      last=tmp_path / "last.pt")
    with pytest.raises(NonFiniteLoss, match=r"obj=nan.*last good checkpoint"):
        train_one_epoch(model, _NaNAfterOne(), batches, opt, torch.amp.GradScaler("cuda", enabled=False), None, 0, s)
    assert torch.isfinite(model.weight).all()  # the NaN step was never applied
