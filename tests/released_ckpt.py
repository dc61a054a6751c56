"""Helpers of the tests that compare ultralytics' released checkpoints (YOLOv8, YOLO11, YOLO26) with the
reference outputs in ../shared/fixtures: loading them, counting parameters, output errors, the yaml rebuild."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import attempt_load
from models.yolo import Model


def load_released(fixtures_dir: Path, names) -> dict[str, torch.nn.Module]:
    """{name: the model of fixtures_dir/<name>_ultralytics.pt}, unfused, through the allow-list."""
    return {n: attempt_load(fixtures_dir / f"{n}_ultralytics.pt", fuse=False) for n in names}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.double()
    return torch.log(p / (1 - p))


def pred_error(pred: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Max abs error of the box rows (pixels) and of the class rows as logits, of (B, 4 + nc, N) outputs.
    A sigmoid of 1e-4 carries its logit's error scaled by 1e-4: the logit's error does not depend on the score."""
    assert pred.shape == ref.shape
    return (float((pred[:, :4].double() - ref[:, :4].double()).abs().max()),
            float((logit(pred[:, 4:]) - logit(ref[:, 4:])).abs().max()))


def assert_rebuilds_from_its_yaml(model: Model) -> None:
    """The yaml translated from the checkpoint builds the same layers here: same state_dict, same outputs."""
    rebuilt = Model(model.yaml)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)[0], model(x)[0])
