# ruff: noqa: C408  (the seed's configs are kept verbatim, dict(type=...) included)
"""Distiller(config): the seed's vanilla KD / VID / IRG configs run as written, on a small classifier with
layer1..3 and linear; the teacher is frozen and untouched; the mapping and config errors."""

from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import (
    Distiller,  # the seed: from mslim.algorithms.pytorch.distillation.distiller import Distiller
)


class ResNetLike(nn.Module):
    """layer1 (16 ch, 8x8) -> layer2 (32, 4x4) -> layer3 (64, 2x2) -> linear (10): the seed's layer names."""

    def __init__(self, depth: int = 1, nc: int = 10):
        super().__init__()

        def stage(ci, co, stride):
            layers = [nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(co, co, 3, 1, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]
            return nn.Sequential(*layers)

        self.layer1, self.layer2, self.layer3 = stage(3, 16, 1), stage(16, 32, 2), stage(32, 64, 2)
        self.linear = nn.Linear(64, nc)

    def forward(self, x):
        return self.linear(self.layer3(self.layer2(self.layer1(x))).mean((2, 3)))


_TEACHER = {}


def _data(n=64):
    """A learnable 10-class task: labels from a fixed projection of the 2x2-pooled input."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (F.adaptive_avg_pool2d(x, 2).flatten(1) @ torch.randn(12, 10, generator=g)).argmax(1)
    return x, y


def _models():
    """A fresh student and a trained teacher (60 Adam steps, fits the task; trained once per session)."""
    torch.manual_seed(0)
    student = ResNetLike(depth=1)
    if not _TEACHER:
        teacher = ResNetLike(depth=2)
        x, y = _data()
        optimizer = torch.optim.Adam(teacher.parameters(), lr=0.01)
        for _ in range(60):
            loss = F.cross_entropy(teacher(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _TEACHER["model"] = teacher.eval()
    return student, deepcopy(_TEACHER["model"])


def seed_config(name, modelS, modelT, device="cpu"):
    """The three configs of the seed (../shared/seeds/distiller_config_api.md), verbatim."""
    if name == "vanilla_kd":
        return {
            'student_model': modelS,
            'teacher_model': modelT,
            'student_distill_layer': ['linear'],
            'teacher_distill_layer': ['linear'],
            'loss': [dict(type='vanilla_kd', T=4)],
            'weights': [0.2],
            'student_out_layer': ['linear'],
            'device': device
        }
    if name == "vid":
        return {
            'device': device,
            'student_model': modelS,
            'teacher_model': modelT,
            'student_distill_layer': ['layer1', 'layer2', 'layer3'],
            'teacher_distill_layer': ['layer1', 'layer2', 'layer3'],
            'loss': [dict(type='vid', inC=16, midC=16, outC=16, init_pred_var=5.0, eps=1e-5),
                     dict(type='vid', inC=32, midC=32, outC=32, init_pred_var=5.0, eps=1e-5),
                     dict(type='vid', inC=64, midC=64, outC=64, init_pred_var=5.0, eps=1e-5)],
            'weights': [1.0, 1.0, 1.0],
            'student_out_layer': ['linear']
        }
    return {
        'device': device,
        'student_model': modelS,
        'teacher_model': modelT,
        'student_distill_layer': ['layer2', 'layer3', 'linear'],
        'teacher_distill_layer': ['layer2', 'layer3', 'linear'],
        'loss': [dict(type='irg', vert=0.1, edge=5.0, tran=5.0)
                 ],
        'weights': [1.0],
        'student_out_layer': ['linear']
    }


class Counter:
    def __init__(self, module):
        self.calls, self.modes, self.grad = 0, [], []
        module.register_forward_pre_hook(self)

    def __call__(self, module, inputs):
        self.calls += 1
        self.modes.append(module.training)
        self.grad.append(torch.is_grad_enabled())


@pytest.mark.parametrize("name", ["vanilla_kd", "vid", "irg"])
def test_seed_configs_train(name):
    modelS, modelT = _models()
    x, y = _data()
    before = deepcopy(modelT.state_dict())  # parameters and BatchNorm buffers
    counter = Counter(modelT)
    distiller = Distiller(seed_config(name, modelS, modelT))
    # the seed's five steps
    optimizer = torch.optim.SGD(distiller.get_learnable_params(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not {id(p) for p in modelT.parameters()} & opt_ids
    assert {id(p) for p in modelS.parameters()} <= opt_ids
    if name == "vid":  # the regressors and the variances are trained with the student
        vid = [p for loss in distiller.losses.values() for p in loss.parameters()]
        assert len(vid) == 3 * 4 and {id(p) for p in vid} <= opt_ids
    distiller.train()
    kd = []
    steps = 15
    for _ in range(steps):
        output, kd_loss = distiller.forward(x)
        assert output.shape == (len(x), 10)  # student_out_layer 'linear'
        loss = F.cross_entropy(output, y)
        losses = kd_loss + loss
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        kd.append(kd_loss.item())
    assert all(torch.isfinite(torch.tensor(kd))) and kd[0] > 0
    assert sum(kd[-3:]) < sum(kd[:3]), kd  # falls over a few steps
    assert counter.calls == steps and counter.modes == [False] * steps and counter.grad == [False] * steps
    for k, v in modelT.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"
    assert all(p.grad is None and not p.requires_grad for p in modelT.parameters())


def test_teacher_never_registered_nor_trained():
    modelS, modelT = _models()
    distiller = Distiller(seed_config("vid", modelS, modelT))
    assert modelT not in list(distiller.modules())
    assert not any(k.startswith("teacher") for k in distiller.state_dict())
    assert all(k.startswith(("student.", "kd.")) for k in distiller.state_dict())
    n_own = sum(p.numel() for p in distiller.kd.parameters())
    assert sum(p.numel() for p in distiller.get_learnable_params()) == \
        sum(p.numel() for p in modelS.parameters()) + n_own
    nn.ModuleList([distiller]).train()  # a wrapper putting everything in train mode
    assert distiller.student.training and not modelT.training
    modelT.train()  # even an explicit flip is undone by the next forward
    distiller(torch.randn(2, 3, 8, 8))
    assert not modelT.training


def test_distill_state_round_trip():
    modelS, modelT = _models()
    a = Distiller(seed_config("vid", modelS, modelT))
    with torch.no_grad():
        for p in a.kd.parameters():
            p.add_(torch.randn_like(p))
    a.train()(torch.randn(2, 3, 8, 8))  # one training call: batch counter 1
    b = Distiller(seed_config("vid", deepcopy(modelS), modelT))
    b.load_distill_state_dict(a.distill_state_dict())
    for (k, va), vb in zip(a.distill_state_dict().items(), b.distill_state_dict().values()):
        assert torch.equal(va, vb), k
    assert int(b.kd.iteration) == 1
    c = Distiller(seed_config("vid", ResNetLike(), modelT))
    c.load_state_dict(a.state_dict())  # the whole state: student + the losses' own parameters
    assert torch.equal(c.student.linear.weight, a.student.linear.weight)


def test_show_nets_mark_the_distilled_layers(capsys):
    modelS, modelT = _models()
    distiller = Distiller(seed_config("irg", modelS, modelT))
    distiller.show_student_net()
    distiller.show_teacher_net()
    text = capsys.readouterr().out
    assert "(layer2) Sequential  <== pair 0 -> teacher layer2 (irg)" in text
    assert "(linear) Linear  <== pair 2 -> teacher linear (irg); output" in text
    assert "(layer3) Sequential  <== pair 1 <- student layer3 (irg)" in text
    assert "(layer1) Sequential\n" in text  # unmarked layers are listed too


def _cfg(**changes):
    modelS, modelT = _models()
    cfg = seed_config("vid", modelS, modelT)
    cfg.update(changes)
    return cfg


def test_pairing_rules():
    modelS, modelT = _models()
    layers = ['layer1', 'layer2', 'layer3']
    base = dict(student_model=modelS, teacher_model=modelT, student_distill_layer=layers, teacher_distill_layer=layers)
    one_each = Distiller({**base, "loss": [dict(type="at")] * 3})  # as many losses as pairs
    assert one_each.pairs == [[0], [1], [2]] and one_each.names == ["at_0", "at_1", "at_2"]
    all_in_one = Distiller({**base, "loss": [dict(type="irg", vert=0)]})  # one loss, all pairs
    assert all_in_one.pairs == [[0, 1, 2]]
    explicit = Distiller({**base, "loss": [dict(type="at", pairs=[0, 2], name="low_high"),
                                           dict(type="irg", pairs=[1], vert=0)], "weights": [2.0, 0.5]})
    assert explicit.pairs == [[0, 2], [1]] and explicit.names == ["low_high", "irg"]
    _, kd = explicit(torch.randn(4, 3, 8, 8))
    assert set(explicit.terms) == {"low_high", "irg"}
    assert kd.item() == pytest.approx(sum(v.item() for v in explicit.terms.values()), rel=1e-6)
    with pytest.raises(ValueError, match="2 losses for 3 layer pairs"):
        Distiller({**base, "loss": [dict(type="at"), dict(type="at")]})
    with pytest.raises(ValueError, match=r"layer pair\(s\) 1 \(layer2 -> layer2\) feed no loss"):
        Distiller({**base, "loss": [dict(type="at", pairs=[0, 2])]})
    with pytest.raises(ValueError, match="pairs=\\[3\\]"):
        Distiller({**base, "loss": [dict(type="at", pairs=[3])]})


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"student_distill_layer.*'layr2'.*closest: layer2"):
        Distiller(_cfg(student_distill_layer=['layer1', 'layr2', 'layer3']))
    with pytest.raises(ValueError, match=r"teacher_distill_layer.*'lin'"):
        Distiller(_cfg(teacher_distill_layer=['layer1', 'layer2', 'lin']))
    with pytest.raises(ValueError, match=r"unknown loss type 'vidd' \(closest: vid\); registered: vanilla_kd, vid, irg"):
        Distiller(_cfg(loss=[dict(type='vidd', inC=16, outC=16)] * 3))
    with pytest.raises(ValueError, match=r"'weights'\] has 2 entries but config\['loss'\] 3"):
        Distiller(_cfg(weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match="student_distill_layer'\\] has 2 layers but config\\['teacher_distill_layer'\\] 3"):
        Distiller(_cfg(student_distill_layer=['layer1', 'layer2']))
    with pytest.raises(ValueError, match="unknown config key 'weight' \\(closest: weights"):
        Distiller(_cfg(weight=[1.0]))
    with pytest.raises(ValueError, match="missing 'loss'"):
        Distiller(_cfg(loss=None))
    with pytest.raises(ValueError, match=r"vid\): unknown parameter\(s\) \['inc'\] \(closest: inC\)"):
        Distiller(_cfg(loss=[dict(type='vid', inc=16, outC=16)] * 3))
    no_weights = _cfg()
    del no_weights["weights"]
    assert Distiller(no_weights).weights == [1.0, 1.0, 1.0]  # one weight of 1 per loss when none is given
    # a dict without 'type' (mutation survivor: the check's `or` made `and` let it through to a KeyError)
    with pytest.raises(ValueError, match=r"config\['loss'\]\[1\] must be a dict with a 'type' key"):
        Distiller(_cfg(loss=[dict(type='vid', inC=16, outC=16), dict(T=4), dict(type='vid', inC=16, outC=16)]))


def test_channel_mismatch_without_adapter_is_a_config_error():
    modelS, modelT = _models()
    layers = ['layer2', 'layer3']
    # VID built for the wrong widths: found at build with an example input, else at the first forward
    cfg = dict(student_model=modelS, teacher_model=modelT, student_distill_layer=layers,
               teacher_distill_layer=['layer3', 'layer3'],
               loss=[dict(type='vid', inC=32, outC=32), dict(type='vid', inC=64, outC=64)])
    with pytest.raises(ValueError, match=r"loss'\]\[0\] \(vid_0, layers layer2 -> layer3\).*inC=32, outC=32"):
        Distiller({**cfg, "example_input": (1, 3, 8, 8)})
    lazy = Distiller(cfg)
    with pytest.raises(ValueError, match=r"vid_0, layers layer2 -> layer3"):
        lazy(torch.randn(2, 3, 8, 8))
    # FitNet without channel counts has no adapter: widths must match
    cfg = dict(student_model=modelS, teacher_model=modelT, student_distill_layer=['layer2'],
               teacher_distill_layer=['layer3'], loss=[dict(type='fitnet')])
    with pytest.raises(ValueError, match="fitnet needs equal channel counts without adapters"):
        Distiller(cfg)(torch.randn(2, 3, 8, 8))
    fit = Distiller({**cfg, "example_input": (1, 3, 8, 8)})  # probed: 1x1 adapter 32 -> 64
    assert fit.losses["fitnet"].adapters[0].conv.weight.shape == (64, 32, 1, 1)
    # vanilla_kd needs equal class counts
    other = ResNetLike(nc=7)
    with pytest.raises(ValueError, match="vanilla_kd.*class counts"):
        Distiller(dict(student_model=modelS, teacher_model=other, student_distill_layer=['linear'],
                       teacher_distill_layer=['linear'], loss=[dict(type='vanilla_kd')],
                       example_input=(1, 3, 8, 8)))


def test_losses_needing_targets_say_so():
    modelS, modelT = _models()

    class NeedsTargets(nn.Module):
        needs = ("targets",)

        def forward(self, s, t, ctx):
            return (s[0] - t[0]).pow(2).mean()

    from distill import losses

    losses.LOSSES["_needs_targets"] = NeedsTargets
    try:
        d = Distiller(dict(student_model=modelS, teacher_model=modelT, student_distill_layer=['linear'],
                           teacher_distill_layer=['linear'], loss=[dict(type='_needs_targets')]))
        with pytest.raises(ValueError, match="needs ctx.targets"):
            d(torch.randn(2, 3, 8, 8))
        assert d(torch.randn(2, 3, 8, 8), targets=torch.zeros(2))[1].item() > 0
    finally:
        del losses.LOSSES["_needs_targets"]
