"""Every trainable parameter of the model and of the objective is in the optimizer (engine/optim.py): parameters
named other than weight/bias (VID's log_scales, a bare nn.Parameter) are grouped by shape, a collection that
misses one is refused naming it, and train_kd.py trains VID's variances."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from distill.losses.vid import VIDLoss
from engine import optim
from engine.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "weights/teacher-shapes-yolov5s.pt"
HYP = {"lr0": 0.01, "lrf": 0.1, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.1}


class Scaled(nn.Module):
    """A conv + BN block with two bare parameters: a per-channel scale (1-d) and a mixing matrix (2-d)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.scale = nn.Parameter(torch.ones(4))
        self.mix = nn.Parameter(torch.eye(4))


def _objective_with_vid() -> nn.Module:
    """A module holding a VIDLoss at kd.losses.vid, as DistillObjective holds its losses."""
    obj = nn.Module()
    obj.kd = nn.Module()
    obj.kd.losses = nn.ModuleDict({"vid": VIDLoss(inC=4, midC=4, outC=4)})
    return obj


def _groups(opt):
    return [{id(p) for p in g["params"]} for g in opt.param_groups]


def test_bare_parameters_are_grouped_by_shape():
    """The 1-d scale joins the no-decay group 0 (with the BN weight), the 2-d matrix the decayed weights;
    nothing of the model is left out. Seen failing before the fix: scale and mix were in no group."""
    model = Scaled()
    opt = build_optimizer(model, HYP)
    g0, g1, g2 = _groups(opt)
    assert id(model.scale) in g0 and id(model.bn.weight) in g0
    assert id(model.mix) in g1 and id(model.conv.weight) in g1
    assert id(model.bn.bias) in g2
    assert set().union(g0, g1, g2) == {id(p) for p in model.parameters()}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, HYP["weight_decay"], 0.0]


def test_vid_log_scales_are_trained_without_decay():
    """VID's variances (an nn.ParameterList) reach the optimizer through extra_params, in group 0 (no weight
    decay), and one step with a gradient moves them."""
    model, obj = Scaled(), _objective_with_vid()
    vid = obj.kd.losses["vid"]
    opt = build_optimizer(model, HYP, extra_params=[obj])
    g0, g1, _ = _groups(opt)
    assert id(vid.log_scales[0]) in g0 and all(id(p) in g1 for p in vid.regressors.parameters())
    before = vid.log_scales[0].detach().clone()
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    vid([s], [t]).backward()
    opt.step()
    assert not torch.equal(before, vid.log_scales[0].detach())


def test_a_bare_extra_parameter_is_grouped_by_shape():
    vec, mat = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, 3))
    g0, g1, _ = _groups(build_optimizer(Scaled(), HYP, extra_params=[vec, mat]))
    assert id(vec) in g0 and id(mat) in g1


def _v60_split(modules, groups, seen):
    """The collection before the fix: only `.weight` / `.bias` attributes."""
    for v in modules:
        for name, group in (("bias", 2), ("weight", 0 if isinstance(v, nn.BatchNorm2d) else 1)):
            p = getattr(v, name, None)
            if isinstance(p, nn.Parameter) and id(p) not in seen:
                seen.add(id(p))
                groups[group].append(p)


def test_a_collection_that_misses_parameters_is_refused_by_name(monkeypatch):
    """With the old .weight/.bias walk put back, build_optimizer names every parameter left out, the
    objective's by their qualified names. Seen failing before the fix: no check, the optimizer was built."""
    monkeypatch.setattr(optim, "_split_params", _v60_split)
    with pytest.raises(RuntimeError) as e:
        build_optimizer(Scaled(), HYP, extra_params=[_objective_with_vid()])
    msg = str(e.value)
    assert "3 trainable parameter(s) are in no optimizer group" in msg
    for name in ("scale", "mix", "kd.losses.vid.log_scales.0"):
        assert name in msg


def test_check_param_groups():
    from engine.optim import check_param_groups

    model = Scaled()
    named = list(model.named_parameters())
    everything = [list(model.parameters())]
    check_param_groups(named, everything)  # complete: no error
    check_param_groups(named, [{"params": list(model.parameters())}])  # an optimizer's param_groups
    without = [[p for p in model.parameters() if p is not model.scale and p is not model.bn.bias]]
    with pytest.raises(RuntimeError, match=r"2 trainable .*: scale, bn\.bias \("):
        check_param_groups(named, without)
    model.scale.requires_grad_(False)  # frozen: not trained, so not required
    with pytest.raises(RuntimeError, match=r": bn\.bias \("):
        check_param_groups(named, without)


def test_frozen_parameters_stay_in_the_groups():
    """As in v6.0 (frozen layers): kept in the groups, the optimizer skips them (no gradient)."""
    model = Scaled().requires_grad_(False)
    g0, g1, g2 = _groups(build_optimizer(model, HYP))
    assert set().union(g0, g1, g2) == {id(p) for p in model.parameters()}


def test_train_kd_trains_vid_variances(tmp_path):
    """train_kd.py --feature_loss vid for 2 epochs (64 px, 8 images, one optimizer step per batch, no
    warmup): the run's kd_state (epoch1.pt, written by --save-period 1) holds VID's log_scales, moved from
    their initial value softplus^-1(init_pred_var - eps). Seen failing before the fix: they were saved
    unchanged (never in the optimizer)."""
    import train_kd
    from models.checkpoint import safe_torch_load
    from utils.data.synthetic import build_synthetic_dataset

    data = build_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=64, nc=6, seed=5)
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch.yaml").read_text())
    hyp.update(warmup_epochs=0.0, warmup_min_iters=0, nbs=4)  # a step per batch at lr0 from the first batch
    hyp_file = tmp_path / "hyp.yaml"
    hyp_file.write_text(yaml.safe_dump(hyp))
    run = train_kd.run(teacher_weight=str(TEACHER), data=str(data), cfg=str(ROOT / "models/yolov5n.yaml"),
                       weights="", hyp=str(hyp_file), imgsz=64, epochs=2, batch_size=4, workers=0,
                       project=str(tmp_path / "runs"), name="vid", exist_ok=True, noautoanchor=True,
                       feature_loss=["vid"], save_period=1, seed=0)
    kd_state = safe_torch_load(Path(run) / "weights/epoch1.pt")["kd_state"]
    scales = {k: v for k, v in kd_state.items() if ".log_scales." in k}
    assert scales and all(k.startswith("kd.losses.vid.log_scales.") for k in scales)
    alpha0 = math.log(math.expm1(5.0 - 1e-5))  # VIDLoss defaults: init_pred_var 5, eps 1e-5
    for k, v in scales.items():
        assert torch.isfinite(v).all(), k
        assert not torch.allclose(v.float(), torch.full_like(v.float(), alpha0), rtol=0, atol=1e-6), k


def test_resuming_an_optimizer_saved_without_the_variances_is_a_clear_error():
    """A run saved before the fix has no log_scales in its optimizer state: --resume says it cannot be resumed
    (a UserError naming the file and the group sizes) instead of torch's ValueError; equal groups load.
    Seen failing before the fix: torch's ValueError."""
    from types import SimpleNamespace

    from engine.run_checkpoint import restore_run
    from utils.general import UserError

    model, obj = Scaled(), _objective_with_vid()
    old = torch.optim.SGD([{"params": [model.bn.weight]}, {"params": [model.conv.weight]}, {"params": [model.bn.bias]}],
                          lr=0.01)
    new = build_optimizer(model, HYP, extra_params=[obj])
    opt = SimpleNamespace(resume=True, epochs=3, weights="runs/train/exp/weights/last.pt")
    ckpt = {"optimizer": old.state_dict(), "best_fitness": [0.0], "epoch": 0}
    with pytest.raises(UserError, match=r"^runs/train/exp/weights/last\.pt: its optimizer state has 1/1/1 parameters "
                                        r"per group, this run's optimizer 3/5/1, so it cannot be resumed"):
        restore_run(ckpt, opt, new, None, obj)
    ckpt["optimizer"] = build_optimizer(model, HYP, extra_params=[obj]).state_dict()
    assert restore_run(ckpt, opt, new, None, obj) == (1, 0.0)
