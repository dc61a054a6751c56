"""The loss registry: a loss registered anywhere is a recipe type, a --feature_loss choice and a --<type>_weight
flag of train_kd.py with its registered defaults, and trains; a module added to distill/losses/ registers
without any other edit. Also train_kd.py's --isL: checked only when given."""

from __future__ import annotations

import logging
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.losses import SPECS, register, unregister
from distill.yolo_config import DEFAULT_CONFIG, apply_overrides, default_weight
from engine.cli import kd_parser
from engine.kd_flags import kd_overrides, objective_options
from utils.general import LOGGER
from utils.loggers import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "weights/teacher-shapes-yolov5s.pt"
TOY = "toy_mean_l2"


class ToyMeanL2(nn.Module):
    """Channel-mean L2 (a toy for these tests, 2026): mean over pairs of mean((mean_c S - mean_c T)^2)."""

    kind = "feature"
    needs = ()
    zero_at_optimum = True

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, student_feats, teacher_feats, ctx=None) -> torch.Tensor:
        terms = [(s.float().mean(1) - t.detach().float().mean(1)).pow(2).mean()
                 for s, t in zip(student_feats, teacher_feats)]
        return self.scale * torch.stack(terms).mean()


@pytest.fixture
def toy():
    """ToyMeanL2 registered as TOY for one test, then removed."""
    register(TOY, default_weight=0.5, v8_weight=3.0, default_layers="detect_inputs", title="toy")(ToyMeanL2)
    try:
        yield TOY
    finally:
        unregister(TOY)
    assert TOY not in SPECS


def test_registration_gives_flags_and_defaults(toy):
    p = kd_parser()
    opt = p.parse_args(["--feature_loss", toy, f"--{toy}_weight", "0.25"])
    assert default_weight({"type": toy}) == 0.5 and default_weight({"type": toy}, "v8") == 3.0
    (entry,) = [e for e in apply_overrides(DEFAULT_CONFIG, kd_overrides(opt)).losses if e.type == toy]
    assert (entry.weight, entry.layers) == (0.25, "detect_inputs")  # the flag, the registered default layers
    flag = next(a for a in p._actions if f"--{toy}_weight" in a.option_strings)
    assert flag.help == "toy weight (default 0.5 for YOLOv5 students, 3 for YOLOv8 students)"
    with pytest.raises(SystemExit):  # an unregistered type is no choice
        kd_parser().parse_args(["--feature_loss", "no_such_loss"])


def test_registering_a_taken_name_or_a_bad_default_is_refused(toy):
    with pytest.raises(ValueError, match="already registered"):
        register(toy)(nn.Identity)
    with pytest.raises(ValueError, match="default_layers"):
        register("toy_bad", default_layers="everywhere")


def test_a_module_added_to_the_losses_package_registers(tmp_path, monkeypatch):
    """distill/losses/ imports every module in it: a new file is all a new loss needs (here the package's
    search path gets a folder holding one, so the source tree is left alone)."""
    import distill.losses as losses

    (tmp_path / "toy_added.py").write_text(
        "from torch import nn\n\nfrom distill.registry import register\n\n\n"
        "@register('toy_added', default_weight=0.125)\nclass ToyAdded(nn.Module):\n    pass\n")
    monkeypatch.setattr(losses, "__path__", [*losses.__path__, str(tmp_path)])
    try:
        losses._import_every_module()
        assert SPECS["toy_added"].weight() == 0.125 and "toy_added" in losses.feature_types()
    finally:
        unregister("toy_added")
        sys.modules.pop("distill.losses.toy_added", None)


def test_a_toy_loss_trains_from_a_recipe(toy, tmp_path):
    """A loss defined in this file, registered, named by `type:` in a recipe: train_kd.py trains one epoch
    with it and logs its term as a results.csv column."""
    import train_kd
    from utils.data.synthetic import build_synthetic_dataset

    data = build_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=64, nc=6, seed=3)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"losses:\n  - {{type: {toy}, name: toy, scale: 2.0}}\n")
    run = train_kd.run(teacher_weight=str(TEACHER), data=str(data), cfg=str(ROOT / "models/yolov5n.yaml"),
                       weights="", imgsz=64, epochs=1, batch_size=4, workers=0, project=str(tmp_path / "runs"),
                       name="toy", exist_ok=True, noautoanchor=True, kd_config=str(recipe), seed=0)
    names, rows = read_results_csv(Path(run) / "results.csv")
    assert "train/toy_loss" in names and rows[0][names.index("train/toy_loss")] > 0
    kd_yaml = (Path(run) / "kd.yaml").read_text()
    assert f"type: {toy}" in kd_yaml and "weight: 0.5" in kd_yaml and "scale: 2.0" in kd_yaml


def _is_large_warnings(teacher, argv) -> list[str]:
    from distill.pairing import check_is_large_flag

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        check_is_large_flag(teacher, objective_options(kd_parser().parse_args(argv))["is_large"])
    finally:
        LOGGER.removeHandler(handler)
    return [r.getMessage() for r in records if "--isL" in r.getMessage()]


def test_isl_is_checked_only_when_given():
    """--isL defaults to None: a yolov5l teacher without the flag is no contradiction; a value given that
    disagrees with the teacher is reported."""
    large = Namespace(yaml={"depth_multiple": 1.0, "width_multiple": 1.0})
    assert kd_parser().parse_args([]).isL is None
    assert _is_large_warnings(large, []) == []
    assert _is_large_warnings(large, ["--isL", "True"]) == []
    (warning,) = _is_large_warnings(large, ["--isL", "False"])
    assert "--isL False but the teacher has depth_multiple 1.0" in warning
