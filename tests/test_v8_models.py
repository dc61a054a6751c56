"""YOLOv8-style family: C2f/DFL blocks, the DetectV8 head, yolov8*.yaml parameter counts and shapes."""

from copy import deepcopy

import pytest
import torch

from models.common import ASCBAM, DFL, SPPF, C2f
from models.head_v8 import DetectV8
from models.yolo import MODELS_DIR, Detect, Model
from utils.boxes import dist2bbox, make_anchors
from utils.general import UserError, yaml_load


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def ref_v8(fixtures_dir):
    return torch.load(fixtures_dir / "reference_v8.pt", weights_only=True, map_location="cpu")


@pytest.mark.parametrize("size", "nsmlx")
def test_param_counts_match_fixture(ref_v8, size):
    for nc in (80, 20):
        model = Model(f"yolov8{size}.yaml", nc=nc)
        assert n_params(model) == int(ref_v8[f"yolov8{size}/n_params_nc{nc}"])
        assert model.family == "v8" and isinstance(model.head, DetectV8) and model.head.nc == nc


def test_yolov8n_shapes_gradients_fuse(ref_v8):
    torch.manual_seed(0)
    model = Model("yolov8n.yaml")
    assert torch.equal(model.stride, torch.tensor([8.0, 16.0, 32.0])) and model.save == [4, 6, 9, 12, 15, 18, 21]
    out = model(torch.rand(2, 3, 64, 96))  # train mode: per-level raw maps (B, 4*16 + nc, ny, nx)
    assert [tuple(o.shape) for o in out] == [(2, 144, 8, 12), (2, 144, 4, 6), (2, 144, 2, 3)]
    sum(o.sum() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert not model.head.dfl.conv.weight.requires_grad  # the DFL projection is fixed
    model.eval()
    with torch.no_grad():
        pred, raw = model(torch.rand(1, 3, 64, 96))
        assert pred.shape == (1, 84, 8 * 12 + 4 * 6 + 2 * 3) and len(raw) == 3
        model.fuse()
        assert n_params(model) == int(ref_v8["yolov8n/fused_n_params"])
        assert model(torch.rand(1, 3, 64, 96))[0].shape == pred.shape


def test_bias_priors():
    det = Model("yolov8n.yaml", nc=5).head
    for a, b, s in zip(det.cv2, det.cv3, (8, 16, 32)):
        assert torch.all(a[-1].bias == 1.0)
        prior = torch.log(torch.tensor(5 / 5 / (640 / s) ** 2))
        assert torch.allclose(b[-1].bias, prior.expand(5))


def test_cbam_variant_forward_backward():
    torch.manual_seed(0)
    full = Model("yolov8s-cbam.yaml")  # the yaml as shipped: builds and decodes
    assert n_params(full) > n_params(Model("yolov8s.yaml")) and full.family == "v8"
    with torch.no_grad():
        assert full.eval()(torch.rand(1, 3, 64, 64))[0].shape == (1, 84, 84)
    cfg = yaml_load(MODELS_DIR / "yolov8s-cbam.yaml")
    cfg["width_multiple"], cfg["depth_multiple"] = 0.25, 0.33  # small for speed; ASCBAM args scale with it
    model = Model(cfg)
    plain = Model({**yaml_load(MODELS_DIR / "yolov8s.yaml"), "width_multiple": 0.25})
    assert sum(isinstance(m, ASCBAM) for m in model.model) == 8 and model.head.f == [21, 25, 29]
    assert n_params(model) > n_params(plain)
    assert [s[0].conv.in_channels for s in model.head.cv2] == [s[0].conv.in_channels for s in plain.head.cv2]
    out = model(torch.rand(2, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ultralytics_scales_form_builds_the_same_layers():
    """A yaml in the ultralytics form (scales + scale, head 'DetectV8') equals our yolov8s.yaml."""
    ours = yaml_load(MODELS_DIR / "yolov8s.yaml")
    theirs = {k: v for k, v in ours.items() if k not in ("depth_multiple", "width_multiple", "max_channels")}
    theirs["scales"] = {"n": [0.33, 0.25, 1024], "s": [0.33, 0.5, 1024]}
    theirs["scale"] = "s"
    a, b = Model(ours), Model(theirs)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    with pytest.raises(UserError, match="scale 'q'"):
        Model({**theirs, "scale": "q"})


def test_yaml_errors():
    cfg = yaml_load(MODELS_DIR / "yolov8n.yaml")
    bad = deepcopy(cfg)
    bad["head"][-1][2] = "Detect"  # YOLOv5 head without anchors
    with pytest.raises(UserError, match="anchors"):
        Model(bad)
    bad = deepcopy(cfg)
    bad["head"][-1][3] = ["nc", 1]  # reg_max 1: no distribution to learn
    with pytest.raises(UserError, match="layer 22 .*reg_max=1"):
        Model(bad)
    bad = deepcopy(cfg)
    bad["head"][-1][2] = "DetectV9"
    with pytest.raises(UserError, match="unknown module 'DetectV9'.*DetectV8"):
        Model(bad)


def test_c2f_and_sppf_blocks():
    torch.manual_seed(0)
    m = C2f(16, 24, n=2, shortcut=True)
    assert m.c == 12 and m.cv2.conv.in_channels == 4 * 12 and all(b.add for b in m.m)
    assert m.m[0].cv1.conv.kernel_size == (3, 3)  # C2f bottlenecks are 3x3 -> 3x3
    x = torch.rand(1, 16, 8, 8)
    y0, y1 = m.cv1(x).chunk(2, 1)
    y2 = m.m[0](y1)
    y3 = m.m[1](y2)
    assert torch.allclose(m(x), m.cv2(torch.cat((y0, y1, y2, y3), 1)))
    s = SPPF(16, 16).eval()
    assert "n" not in s.__dict__ and s.n == 3 and s.add is False  # a v5 pickle has neither: 3 pools, no residual
    ref = s(x)
    pooled = [s.cv1(x)]
    for _ in range(3):
        pooled.append(s.m(pooled[-1]))
    assert torch.allclose(ref, s.cv2(torch.cat(pooled, 1)))
    s.add = True  # ultralytics pickles `add` (residual): honoured
    assert torch.allclose(s(x), ref + x)


def test_dfl_expectation_and_anchor_points():
    dfl = DFL(16)
    logits = torch.full((1, 64, 1), -1e4)
    for edge, b in enumerate((0, 3, 7, 15)):  # one-hot distributions -> exactly the bin index
        logits[0, edge * 16 + b] = 1e4
    assert torch.equal(dfl(logits), torch.tensor([[[0.0], [3.0], [7.0], [15.0]]]))
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    pts, st = make_anchors(feats, [8, 16])
    assert pts.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5],
                            [0.5, 0.5], [1.5, 0.5]]  # cell + 0.5, row-major, level by level
    assert st.view(-1).tolist() == [8.0] * 6 + [16.0] * 2
    box = dist2bbox(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[10.0, 10.0]]))
    assert box.tolist() == [[11.0, 11.0, 4.0, 6.0]]  # xywh from left/top/right/bottom distances


def test_head_decides_loss_and_nms():
    v8, v5 = Model("yolov8n.yaml", nc=3), Model("yolov5n.yaml", nc=3)
    assert (v8.family, v5.family) == ("v8", "v5") and isinstance(v5.head, Detect)
    hyp = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
    assert type(v8.build_loss(hyp)).__name__ == "V8DetectionLoss"
    hyp5 = {"box": 0.05, "cls": 0.5, "obj": 1.0, "anchor_t": 4.0}
    assert type(v5.build_loss(hyp5)).__name__ == "ComputeLoss"
    v8.eval()
    with torch.no_grad():
        pred, _ = v8(torch.rand(2, 3, 64, 64))
    out = v8.nms(pred, 0.0, 0.7, max_det=5)
    assert len(out) == 2 and all(o.shape == (5, 6) for o in out)


def test_augmented_inference_v8_layout():
    """Test-time augmentation keeps the (B, 4 + nc, N) layout; the full-scale pass is its first block."""
    torch.manual_seed(0)
    model = Model("yolov8n.yaml", nc=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)[0]
        aug, _ = model(x, augment=True)
    assert aug.shape[:2] == (1, 7) and aug.shape[2] > plain.shape[2] * 1.5
    kept = plain.shape[2] - 2 * 2  # the P5 tail (2x2 cells) of the full-scale pass is clipped
    assert torch.allclose(aug[:, :, :kept], plain[:, :, :kept])
