"""Model building: v6.0 parameter counts, yaml variants, gradients, parser errors, Detect/anchors."""

import functools
from copy import deepcopy

import pytest
import torch

from models.common import ASCBAM, CABlock, Conv1_1, SELayer
from models.yolo import MODELS_DIR, Detect, Model
from utils.general import UserError, yaml_load
from utils.torch_utils import EarlyStopping, ModelEMA, get_flops

V60_PARAMS = {"n": 1_872_157, "s": 7_235_389, "m": 21_190_557, "l": 46_563_709, "x": 86_749_405}
V60_FUSED = {"n": 1_867_405, "s": 7_225_885, "m": 21_172_173, "l": 46_533_693, "x": 86_705_005}  # spec §4.1
V60_MODULES = {"n": 270, "s": 270, "m": 369, "l": 468, "x": 567}
ALL_YAMLS = sorted(p.name for p in MODELS_DIR.glob("*.yaml"))
assert len(ALL_YAMLS) >= 11, ALL_YAMLS


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@functools.cache
def _built(name: str) -> Model:
    """Each yaml is built once per test session (l and x take seconds); tests deepcopy before mutating."""
    torch.manual_seed(0)
    return Model(name)


def _forward_backward_64(model: Model, name: str) -> None:
    """Train-mode forward at 64x64 gives 3 raw maps; every parameter gets a gradient; eval decodes."""
    out = model(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(2, 3, 8, 8, 85), (2, 3, 4, 4, 85), (2, 3, 2, 2, 85)]
    sum(o.sum() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"
    model.eval()
    with torch.no_grad():
        pred, raw = model(torch.rand(1, 3, 64, 64))
    assert pred.shape == (1, 3 * (64 + 16 + 4), 85) and len(raw) == 3


@pytest.mark.parametrize("size", "nsmlx")
def test_param_counts_match_v60(size):
    name = f"yolov5{size}.yaml"
    model = deepcopy(_built(name)) if size in "nsm" else Model(name)  # l/x: built once, not cached (memory)
    assert model.yaml["nc"] == 80
    assert n_params(model) == V60_PARAMS[size]
    assert len(list(model.modules())) == V60_MODULES[size]
    assert len(model.model) == 25 and model.save == [4, 6, 10, 14, 17, 20, 23]
    _forward_backward_64(model, name)
    model.fuse()
    assert n_params(model) == V60_FUSED[size]
    assert len(list(model.modules())) == {"n": 213, "s": 213, "m": 290, "l": 367, "x": 444}[size]


def test_fused_counts_match_fixture(reference):
    for size in "ns":
        assert int(reference[f"yolov5{size}/n_params"]) == V60_PARAMS[size]
        assert int(reference[f"yolov5{size}/fused_n_params"]) == V60_FUSED[size]


def test_nc20_counts(reference):
    assert n_params(Model("yolov5s.yaml", nc=20)) == int(reference["yolov5s_nc20/n_params"]) == 7_073_569
    assert n_params(Model("yolov5m.yaml", nc=20)) == int(reference["yolov5m_nc20/n_params"]) == 20_948_097


def test_detect_anchors_stride_bias_bn():
    model = _built("yolov5n.yaml")
    det = model.model[-1]
    assert isinstance(det, Detect) and det.nl == 3 and det.na == 3 and det.no == 85
    assert torch.equal(model.stride, torch.tensor([8.0, 16.0, 32.0]))
    px = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]).float()
    assert torch.allclose(det.anchors * det.stride.view(-1, 1, 1), px.view(3, 3, 2))  # grid units in the buffer
    bn = model.model[0].bn
    assert bn.eps == 1e-3 and bn.momentum == 0.03
    # biases = default init (|b| <= 1/sqrt(fan_in)) + v6.0 priors
    for conv, s in zip(det.m, (8, 16, 32)):
        b = conv.bias.view(3, 85)
        bound = 1 / conv.weight[0].numel() ** 0.5
        obj_prior = torch.log(torch.tensor(8 / (640 / s) ** 2))
        assert ((b[:, 4] - obj_prior).abs() <= bound + 1e-6).all()
        assert ((b[:, 5:] - torch.log(torch.tensor(0.6 / 79.01))).abs() <= bound + 1e-6).all()


def test_anchor_order_is_fixed():
    cfg = yaml_load(MODELS_DIR / "yolov5n.yaml")
    cfg["anchors"] = cfg["anchors"][::-1]  # largest anchors on P3: must be flipped back
    det = Model(cfg).model[-1]
    areas = (det.anchors * det.stride.view(-1, 1, 1)).prod(-1).view(-1)
    assert areas[-1] > areas[0]


@pytest.mark.parametrize("name", [n for n in ALL_YAMLS if n not in {f"yolov5{k}.yaml" for k in "nsmlx"}
                                  and not n.startswith(("yolov8", "yolo11", "yolo26"))])  # test_v8/v11/v26_models.py
def test_other_yamls_build_forward_backward(name):
    """Every yaml in models/ (the five base ones are covered by test_param_counts_match_v60)."""
    model = deepcopy(_built(name))
    assert model.yaml["nc"] == 80
    _forward_backward_64(model, name)


@pytest.mark.parametrize("base,att", [(b, a) for b in "sm" for a in ("se", "cbam", "ca")])
def test_attention_variants(base, att, capsys):
    plain, variant = _built(f"yolov5{base}.yaml"), _built(f"yolov5{base}-{att}.yaml")
    kinds = {"se": SELayer, "cbam": ASCBAM, "ca": CABlock}
    blocks = [m for m in variant.model if isinstance(m, kinds[att])]
    assert len(blocks) == 8  # one after every C3
    assert next(m.i for m in variant.model if isinstance(m, Detect)) == 32 and variant.model[-1].f == [23, 27, 31]
    with capsys.disabled():
        print(f"\nyolov5{base}-{att}: {n_params(variant):,} parameters (yolov5{base}: {n_params(plain):,})")
    assert n_params(variant) > n_params(plain)
    # same backbone/head widths: Detect inputs equal the plain model's
    assert [c.in_channels for c in variant.model[-1].m] == [c.in_channels for c in plain.model[-1].m]


@pytest.mark.parametrize("cls", [SELayer, ASCBAM, CABlock])
def test_attention_need11_reverse(cls):
    x = torch.rand(2, 16, 8, 8)
    plain = cls(16)
    assert plain(x).shape == x.shape and not hasattr(plain, "conv_match")
    for reverse in (False, True):
        m = cls(16, c2=32, need11=True, reverse=reverse)
        y = m(x)
        assert y.shape == (2, 32, 8, 8) and m.c2 == 32
        y.sum().backward()
        assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError):
        cls(16, c2=32)  # width change without the 1x1 conv


def test_conv1_1_adapter():
    m = Conv1_1(64, 96)
    assert m(torch.rand(1, 64, 4, 4)).shape == (1, 96, 4, 4)


def _bad_cfg(mutate):
    cfg = yaml_load(MODELS_DIR / "yolov5s-se.yaml")
    mutate(cfg)
    return cfg


def test_unknown_module_names_layer_and_known_names():
    cfg = _bad_cfg(lambda c: c["backbone"].__setitem__(2, [-1, 3, "C3x", [128]]))
    with pytest.raises(UserError, match=r"layer 2.*unknown module 'C3x'.*Known modules:.*Conv.*SELayer"):
        Model(cfg)


def test_wrong_attention_channels_names_layer():
    cfg = _bad_cfg(lambda c: c["backbone"].__setitem__(3, [-1, 1, "SELayer", [256, 4]]))
    with pytest.raises(UserError, match=r"layer 3 \(SELayer\).*256.*128.*64 channels"):
        Model(cfg)


def test_bad_from_index_is_user_error():
    cfg = _bad_cfg(lambda c: c["head"].__setitem__(2, [[-1, 40], 1, "Concat", [1]]))
    with pytest.raises(UserError, match="layer 16"):
        Model(cfg)


def test_nc_and_anchor_override():
    model = Model("yolov5n.yaml", nc=3, anchors=3)
    det = model.model[-1]
    assert det.nc == 3 and det.no == 8 and model.yaml["nc"] == 3 and len(model.names) == 3
    assert det.anchors.shape == (3, 3, 2)


def test_gflops_close_to_readme():
    # FlopCounterMode counts conv/matmul only (no BN/activation), so it sits just under thop's README values
    for size, readme in (("n", 4.5), ("s", 16.5)):
        g = get_flops(_built(f"yolov5{size}.yaml"), 640)
        assert readme * 0.98 < g <= readme * 1.005


def test_info_reports_and_tta():
    model = deepcopy(_built("yolov5n.yaml")).eval()
    info = model.info(img_size=64)
    assert info["parameters"] == info["gradients"] == V60_PARAMS["n"] and info["layers"] == 270
    with torch.no_grad():
        pred, none = model(torch.rand(1, 3, 64, 64), augment=True)
    assert none is None and pred.ndim == 3 and pred.shape[-1] == 85


def test_model_ema_and_early_stopping():
    model = deepcopy(_built("yolov5n.yaml"))
    ema = ModelEMA(model)
    assert ema.decay(2000) == pytest.approx(0.9999 * (1 - torch.e ** -1))
    before = deepcopy(ema.ema.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = ema.decay(1)
    k = "model.0.conv.weight"
    assert torch.allclose(ema.ema.state_dict()[k], d * before[k] + (1 - d) * model.state_dict()[k], atol=1e-6)
    assert ema.updates == 1 and not any(p.requires_grad for p in ema.ema.parameters())
    stop = EarlyStopping(patience=3)
    results = [stop(e, f) for e, f in enumerate([0.1, 0.2, 0.1, 0.1, 0.1])]
    assert results == [False, False, False, False, True] and stop.best_epoch == 1
