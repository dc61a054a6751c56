"""YOLO11 family: the C3k2/C3k/C2PSA/PSABlock/Attention blocks, DetectV8's YOLO11 class branch, yolo11*.yaml
parameter counts, ultralytics' yolo11n/s checkpoints through the allow-list vs reference_v11.pt, and the
scripts (train.py, val.py, detect.py, export.py, train_kd.py, torch.hub) with a YOLO11 model.

Tolerances, derived as in tests/test_v8_checkpoint.py. The reference tensors were computed in float32 by
ultralytics, so they carry their own rounding error. Running OUR model in float64 leaves only that error,
whatever this CPU's kernels and thread count. Class scores are compared as logits (see pred_error).
Measured, float64 model vs reference (yolo11n / yolo11s):
  eval xywh 7.3e-5 / 9.0e-5 px, fused 9.3e-5 / 7.6e-5 px (boxes up to ~300 px: a few float32 ulps);
  eval class logits 5.7e-7 / 5.8e-7;
  train_out logits: boxes 5.6e-5 / 8.5e-5, classes 7.8e-5 / 1.1e-4 (|x| up to 17: train-mode BatchNorm
  divides by batch statistics, which adds to the error); feats, the maps entering the head (|x| up to
  9.5), 1.4e-4 / 2.1e-4.
The float64 checks sit just above the file's own error: 1.5e-4 px, 1e-6, 1.5e-4, 3e-4. A float32 run adds
our own rounding, which moves with summation order (AVX2/AVX-512/AMX, SSE4.1, thread count). Measured on
an AVX2 CPU with 1 and 2 threads and with DNNL_MAX_CPU_ISA=SSE41: up to 1.2e-4 px (SSE4.1), 1.5e-5 on eval
class logits (2 threads), 1.2e-4 on train logits and 2.1e-4 on feats (SSE4.1), i.e. as large as the
reference's own error. The float32 checks allow ~4x the reference's own error, as the v8 tests do: 4e-4 px
and 2e-4 on eval logits (the v8 numbers: the same head and decoding), 4.5e-4 on train logits (4x 1.1e-4)
and 8.5e-4 on feats (4x 2.1e-4).
A real mistake is far outside. In eval mode this checkpoint's random weights make the output nearly blind to
the attention block (the attention softmax is almost uniform): dropping its scale moves boxes by 6e-5 px,
below any tolerance. In train mode, where BatchNorm renormalises every map by its batch statistics, the
same mistakes move the raw logits by 2 to 4 (test_wrong_blocks_fail_at_the_tolerance): that is where the
fixture pins the new blocks down.

The loss is computed on the fixture's own train_out (only the loss code under test), as in
tests/test_v8_loss.py: measured 1.2e-7 / 4.8e-7 relative in float64 (the reference's float32 rounding) and
0 in float32 (the same operation order); allowed 2e-6 and 3e-6 as there. Chained on our float64 model's own
train output, the reference's 1.1e-4 logit error carries into the loss: measured 2.5e-7 / 2.7e-6 relative,
allowed 1e-5 (float64 only: it does not move with the CPU).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from released_ckpt import (
    assert_rebuilds_from_its_yaml,
    load_released,
    n_params,
    pred_error,
)

from models.blocks_v11 import C2PSA, Attention, C3k, C3k2, PSABlock
from models.checkpoint import attempt_load, safe_torch_load, save_checkpoint
from models.common import Bottleneck, Conv, DWConv
from models.head_v8 import DetectV8
from models.yolo import Model
from utils.losses.yolov8 import V8DetectionLoss

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("yolo11n", "yolo11s")
HYP = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
TOL = {torch.float64: {"xywh": 1.5e-4, "cls": 1e-6, "raw": 1.5e-4, "feat": 3e-4},
       torch.float32: {"xywh": 4e-4, "cls": 2e-4, "raw": 4.5e-4, "feat": 8.5e-4}}
LOSS_REL_TOL = {torch.float64: 2e-6, torch.float32: 3e-6}
CHAINED_LOSS_REL_TOL = 1e-5  # float64 model -> its train output -> our loss, vs the reference loss
LEVELS = ((32, 32), (16, 16), (8, 8))  # x_train 256 x 256 at strides 8, 16, 32


@pytest.fixture(scope="module")
def ref_v11(fixtures_dir):
    return torch.load(fixtures_dir / "reference_v11.pt", weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
    return load_released(fixtures_dir, NAMES)


def raw_from_train_out(out: dict, dtype=torch.float32) -> list[torch.Tensor]:
    """ultralytics' train output {boxes (B, 64, N), scores (B, nc, N)} -> our per-level raw maps
    (B, 64 + nc, ny, nx), levels P3, P4, P5 one after the other along N, row-major within a level."""
    x = torch.cat((out["boxes"], out["scores"]), 1).to(dtype)  # (B, 64 + nc, N)
    maps, start = [], 0
    for ny, nx in LEVELS:
        maps.append(x[:, :, start:start + ny * nx].reshape(x.shape[0], x.shape[1], ny, nx))
        start += ny * nx
    assert start == x.shape[2]
    return maps


# ---------------------------------------------------------------------------------------------------------
# blocks


def test_attention_equals_scaled_dot_product_attention():
    """Per head: softmax(q^T k * key_dim^-0.5) applied to v, plus the depth-wise positional term, then proj."""
    torch.manual_seed(0)
    att = Attention(64, num_heads=2, attn_ratio=0.5).eval()
    assert (att.head_dim, att.key_dim, att.scale) == (32, 16, 16 ** -0.5)
    assert att.qkv.conv.out_channels == 64 + 2 * 2 * 16 and att.pe.conv.groups == 64
    x = torch.randn(2, 64, 5, 6)
    with torch.no_grad():
        qkv = att.qkv(x).view(2, 2, 16 + 16 + 32, 30)  # per head: q (16), k (16), v (32) channels
        q, k, v = qkv[:, :, :16], qkv[:, :, 16:32], qkv[:, :, 32:]
        o = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1))
        v_map = v.reshape(2, 64, 5, 6)
        expected = att.proj(o.transpose(-2, -1).reshape(2, 64, 5, 6) + att.pe(v_map))
        # float32, values below 1; the fused SDPA kernel and the explicit matmul-softmax-matmul sum in orders
        # that may differ by a few ulps (measured equal here). 1e-5 is ~80 float32 ulps at 1.0; a head_dim-based
        # scale instead of key_dim's moves the output by 4e-2.
        assert torch.allclose(att(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        Attention(64, num_heads=3)


def test_psa_block_and_c2psa():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 4, 4)
    blk = PSABlock(32, num_heads=1).eval()
    with torch.no_grad():
        y = x + blk.attn(x)
        assert torch.allclose(blk(x), y + blk.ffn(y))
        blk.add = False  # ultralytics pickles `add`: honoured
        assert torch.allclose(blk(x), blk.ffn(blk.attn(x)))
    assert blk.ffn[1].act.__class__ is torch.nn.Identity  # the FFN's second conv has no activation
    m = C2PSA(256, 256, n=2).eval()
    assert m.c == 128 and len(m.m) == 2 and m.m[0].attn.num_heads == 2  # heads of 64 channels
    x = torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        a, b = m.cv1(x).split((128, 128), 1)
        assert torch.allclose(m(x), m.cv2(torch.cat((a, m.m[1](m.m[0](b))), 1)))
    with pytest.raises(ValueError, match="c1=64 and c2=128"):
        C2PSA(64, 128)


def test_c3k2_and_c3k_blocks():
    torch.manual_seed(0)
    plain = C3k2(32, 64, n=2, c3k=False, e=0.25)
    assert plain.c == 16 and plain.cv2.conv.in_channels == 4 * 16
    b = plain.m[0]  # Bottleneck 3x3 c -> c/2 -> 3x3 c, residual
    assert type(b) is Bottleneck and b.add and b.cv1.conv.kernel_size == (3, 3)
    assert (b.cv1.conv.out_channels, b.cv2.conv.kernel_size) == (8, (3, 3))
    deep = C3k2(32, 32, n=1, c3k=True)
    k = deep.m[0]  # C3k: cv3(cat[m(cv1), cv2]) with two 3x3 -> 3x3 bottlenecks of full width
    assert type(k) is C3k and len(k.m) == 2 and k.cv1.conv.out_channels == 8
    assert all(x.cv1.conv.kernel_size == (3, 3) and x.cv1.conv.out_channels == 8 for x in k.m)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        y0, y1 = deep.cv1(x).chunk(2, 1)
        inner = k.cv3(torch.cat((k.m(k.cv1(y1)), k.cv2(y1)), 1))
        assert torch.allclose(deep(x), deep.cv2(torch.cat((y0, y1, inner), 1)))


def test_detect_branches_legacy_and_yolo11():
    v8, v11 = Model("yolov8n.yaml", nc=5).head, Model("yolo11n.yaml", nc=5).head
    assert v8.legacy and not v11.legacy
    assert [type(x) for x in v8.cv3[0]] == [Conv, Conv, torch.nn.Conv2d]  # v8 unchanged
    dw1, pw1 = v11.cv3[1][0]
    dw2, pw2 = v11.cv3[1][1]
    assert type(dw1) is DWConv and dw1.conv.groups == dw1.conv.in_channels == 128 and dw1.conv.kernel_size == (3, 3)
    assert pw1.conv.kernel_size == (1, 1) and pw1.conv.out_channels == 64  # c3 = max(ch[0] = 64, min(nc, 100))
    assert type(dw2) is DWConv and dw2.conv.groups == 64 and pw2.conv.out_channels == 64
    assert v11.cv3[1][2].out_channels == 5
    assert [type(x) for x in v11.cv2[0]] == [Conv, Conv, torch.nn.Conv2d]  # box branch as in v8
    for b, s in zip(v11.cv3, (8, 16, 32)):  # the same priors as v8
        assert torch.allclose(b[-1].bias, torch.full((5,), float(torch.log(torch.tensor(5 / 5 / (640 / s) ** 2)))))


# ---------------------------------------------------------------------------------------------------------
# yaml files


@pytest.mark.parametrize("size", "nsmlx")
def test_param_counts_match_fixture(ref_v11, size):
    for nc in (80, 20):
        model = Model(f"yolo11{size}.yaml", nc=nc)
        assert n_params(model) == int(ref_v11[f"yolo11{size}/n_params_nc{nc}"])
        assert model.family == "v8" and isinstance(model.head, DetectV8) and not model.head.legacy
        assert model.head.nc == nc and model.head.f == [16, 19, 22]


def test_yolo11n_shapes_gradients_fuse(ref_v11):
    torch.manual_seed(0)
    model = Model("yolo11n.yaml")
    assert torch.equal(model.stride, torch.tensor([8.0, 16.0, 32.0])) and model.save == [4, 6, 10, 13, 16, 19, 22]
    assert [type(m).__name__ for m in model.model[8:11]] == ["C3k2", "SPPF", "C2PSA"]
    out = model(torch.rand(2, 3, 64, 96))  # train mode: per-level raw maps (B, 4*16 + nc, ny, nx)
    assert [tuple(o.shape) for o in out] == [(2, 144, 8, 12), (2, 144, 4, 6), (2, 144, 2, 3)]
    sum(o.sum() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    model.eval()
    with torch.no_grad():
        pred, raw = model(torch.rand(1, 3, 64, 96))
        assert pred.shape == (1, 84, 8 * 12 + 4 * 6 + 2 * 3) and len(raw) == 3
        model.fuse()
        assert n_params(model) == int(ref_v11["yolo11n/fused_n_params"])
        assert model(torch.rand(1, 3, 64, 96))[0].shape == pred.shape


def test_ultralytics_form_yaml_builds_every_scale(loaded, ref_v11):
    """The yaml an ultralytics checkpoint carries (scales form, head translated to DetectV8) builds every
    scale here: at m, l and x its C3k2 blocks take C3k inside, as ultralytics' parser decides."""
    theirs = copy.deepcopy(loaded["yolo11n"].yaml)
    assert "scales" in theirs and theirs["head"][-1][2:] == ["DetectV8", ["nc", 16, False]]
    for size in "nm":
        assert n_params(Model({**theirs, "scale": size})) == int(ref_v11[f"yolo11{size}/n_params_nc80"])


def test_c2psa_width_mismatch_is_a_clear_yaml_error():
    from utils.general import UserError, yaml_load

    cfg = yaml_load(ROOT / "models/yolo11n.yaml")
    cfg["backbone"][10][3] = [512]  # 512 * 0.25 = 128 channels, but SPPF gives 256
    with pytest.raises(UserError, match=r"layer 10 \(C2PSA\).*c1=256 and c2=128"):
        Model(cfg)


# ---------------------------------------------------------------------------------------------------------
# ultralytics checkpoints vs reference_v11.pt


def test_release_format_loads_through_allow_list(fixtures_dir, loaded):
    ckpt = safe_torch_load(fixtures_dir / "yolo11n_ultralytics.pt")  # no trust: the explicit allow-list
    assert ckpt["epoch"] == -1 and ckpt["version"].startswith("8.") and isinstance(ckpt["train_args"], dict)
    model = loaded["yolo11n"]
    assert type(model) is Model and isinstance(model.head, DetectV8) and model.family == "v8"
    assert not model.head.legacy and type(model.model[10]) is C2PSA and type(model.model[8].m[0]) is C3k
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert model.names == [str(i) for i in range(80)] and "args" not in model.__dict__
    assert_rebuilds_from_its_yaml(model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_eval_train_fused_reproduce_reference(ref_v11, loaded, name, dtype):
    tol = TOL[dtype]
    model = copy.deepcopy(loaded[name]).to(dtype)
    assert n_params(model) == int(ref_v11[f"{name}/n_params"])
    with torch.no_grad():
        e_box, e_cls = pred_error(model(ref_v11["x_eval"].to(dtype))[0], ref_v11[f"{name}/eval_pred"])
        assert e_box <= tol["xywh"] and e_cls <= tol["cls"], (e_box, e_cls)
        # As for v8: train_out was made in train mode (BatchNorm uses batch statistics and updates its
        # running stats); the reference fused *that* model, so fused_eval_pred follows the same order.
        model.train()
        feats = []
        hook = model.head.register_forward_pre_hook(lambda m, args: feats.append(args[0]))
        try:
            raw = model(ref_v11["x_train"].to(dtype))
        finally:
            hook.remove()
        ref_out = ref_v11[f"{name}/train_out"]
        for r, ref in zip(raw, raw_from_train_out(ref_out, torch.float64), strict=True):
            assert r.shape == ref.shape and float((r.double() - ref).abs().max()) <= tol["raw"]
        for f, ref in zip(feats[0], ref_out["feats"], strict=True):
            assert f.shape == ref.shape and float((f.double() - ref.double()).abs().max()) <= tol["feat"]
        if dtype == torch.float64:
            loss, _ = V8DetectionLoss(HYP, nc=80, stride=[8, 16, 32])(raw, ref_v11["targets"])
            ref_loss = float(ref_v11[f"{name}/loss"].double().sum())
            assert abs(float(loss) - ref_loss) / ref_loss <= CHAINED_LOSS_REL_TOL
        model.eval().fuse()
        assert n_params(model) == int(ref_v11[f"{name}/fused_n_params"])
        e_box, e_cls = pred_error(model(ref_v11["x_eval"].to(dtype))[0], ref_v11[f"{name}/fused_eval_pred"])
        assert e_box <= tol["xywh"] and e_cls <= tol["cls"], (e_box, e_cls)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_loss_reproduces_reference(ref_v11, name, dtype):
    """v8DetectionLoss (box 7.5, cls 0.5, dfl 1.5) on the fixture's own train_out: loss (3,) = items x batch."""
    assert ref_v11[f"{name}/criterion"] == "v8DetectionLoss"
    loss_fn = V8DetectionLoss(HYP, nc=80, stride=[8, 16, 32])
    loss, items = loss_fn(raw_from_train_out(ref_v11[f"{name}/train_out"], dtype), ref_v11["targets"])
    ref_items = torch.stack([ref_v11[f"{name}/loss_items"][k] for k in ("box_loss", "cls_loss", "dfl_loss")]).double()
    ref_loss = ref_v11[f"{name}/loss"].double()
    tol = LOSS_REL_TOL[dtype]
    assert float(((items.double() - ref_items) / ref_items).abs().max()) <= tol
    assert float(((items.double() * 2 - ref_loss) / ref_loss).abs().max()) <= tol  # batch of 2
    assert abs(float(loss.double()) - float(ref_loss.sum())) / float(ref_loss.sum()) <= tol


def _attention_softmax_over_queries(self, t):
    """Attention.forward with a classic mistake: softmax over the query axis instead of the key axis."""
    b, c, h, w = t.shape
    q, k, v = self.qkv(t).view(b, self.num_heads, -1, h * w).split((self.key_dim, self.key_dim, self.head_dim), 2)
    a = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-2)
    return self.proj((v @ a.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w)))


def _c3k_branches_swapped(self, t):
    """C3k.forward with cv3's input in the wrong order: cat[cv2(x), m(cv1(x))]."""
    return self.cv3(torch.cat((self.cv2(t), self.m(self.cv1(t))), 1))


@pytest.mark.parametrize("mistake", ["softmax over queries", "attention unscaled", "C3k branches swapped"])
def test_wrong_blocks_fail_at_the_tolerance(ref_v11, loaded, mistake):
    """The train-mode comparison catches mistakes in the new blocks by a factor > 1000 (see the docstring
    on why eval mode cannot)."""
    model = copy.deepcopy(loaded["yolo11n"]).train()
    if mistake == "softmax over queries":
        attn = model.model[10].m[0].attn
        attn.forward = types.MethodType(_attention_softmax_over_queries, attn)
    elif mistake == "attention unscaled":
        model.model[10].m[0].attn.scale = 1.0  # instead of key_dim ** -0.5
    else:
        for m in model.modules():
            if type(m) is C3k:
                m.forward = types.MethodType(_c3k_branches_swapped, m)
    with torch.no_grad():
        raw = model(ref_v11["x_train"])
    ref = raw_from_train_out(ref_v11["yolo11n/train_out"])
    err = max(float((r - q).abs().max()) for r, q in zip(raw, ref, strict=True))
    assert err > 1000 * TOL[torch.float32]["raw"], err


def test_own_yolo11_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Model("yolo11n.yaml", nc=3).eval()
    model.names = ["a", "b", "c"]
    path = save_checkpoint({"epoch": 0, "best_fitness": None, "model": model, "ema": None, "updates": 1,
                            "optimizer": None, "wandb_id": None}, tmp_path / "last.pt")
    back = attempt_load(path, fuse=False)
    assert not back.head.legacy and back.names == model.names and back.yaml == model.yaml
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x)[0], model(x)[0])
        sd = tmp_path / "sd.pt"
        torch.save(model.state_dict(), sd)
        assert torch.equal(attempt_load(sd, cfg="yolo11n.yaml", fuse=False)(x)[0], model(x)[0])


# ---------------------------------------------------------------------------------------------------------
# the scripts with a YOLO11 model (generated data, 64 px, one epoch)

IMG, NC = 64, 3


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from utils.data.synthetic import build_synthetic_dataset

    return build_synthetic_dataset(tmp_path_factory.mktemp("data11"), n_train=8, n_val=4, img_size=IMG, nc=NC, seed=2)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def v11_run(tiny_data, tmp_path_factory):
    """train.py, one epoch of a yolo11n from scratch, no --hyp: the v8 family's hyp.v8.yaml."""
    project = tmp_path_factory.mktemp("runs11")
    _run([sys.executable, str(ROOT / "train.py"), "--data", str(tiny_data), "--cfg", str(ROOT / "models/yolo11n.yaml"),
          "--weights", "", "--img", str(IMG), "--epochs", "1", "--batch-size", "4", "--workers", "0",
          "--project", str(project), "--name", "exp"], project)
    return project / "exp"


@pytest.mark.slow
def test_train_val_detect_yolo11(v11_run, tiny_data, fixtures_dir, tmp_path):
    import detect
    import val
    from utils.loggers import read_results_csv

    names, rows = read_results_csv(v11_run / "results.csv")
    assert names[-1] == "train/dfl_loss" and len(rows) == 1  # v8 loss items: box, cls, dfl
    row = dict(zip(names, rows[0]))
    assert row["train/box_loss"] > 0 and row["train/dfl_loss"] > 0 and row["train/obj_loss"] == 0
    model = attempt_load(v11_run / "weights/best.pt")
    assert model.family == "v8" and not model.head.legacy and len(model.names) == NC
    for w in (v11_run / "weights/best.pt", fixtures_dir / "yolo11n_ultralytics.pt"):
        results, maps, _ = val.run(tiny_data, weights=str(w), imgsz=IMG, batch_size=4, workers=0, project=tmp_path,
                                   plots=False)
        assert len(results) == 7 and 0 <= results[2] <= 1 and len(maps) == NC  # P, R, mAP@.5, ...; per class
    source = Path(tiny_data).parent / "images" / "val"
    detect.run(weights=str(fixtures_dir / "yolo11n_ultralytics.pt"), source=str(source), imgsz=[IMG, IMG],
               conf_thres=0.0001, project=tmp_path / "det", name="exp", save_txt=True)
    assert list((tmp_path / "det" / "exp").glob("*.jpg"))


@pytest.mark.slow
def test_export_yolo11(fixtures_dir, tmp_path):
    """TorchScript (and ONNX where onnxruntime is installed) of the ultralytics yolo11n: the (B, 4 + nc, N)
    output and family 'v8' travel with the file. ONNX vs PyTorch allowed 1e-3 px and 1e-5, as for v8."""
    import shutil

    import export
    from models.backend import DetectBackend

    w = tmp_path / "y11n.pt"
    shutil.copy(fixtures_dir / "yolo11n_ultralytics.pt", w)
    formats = ["torchscript"] + (["onnx"] if _has("onnxruntime") else [])
    files = export.run(weights=str(w), imgsz=[IMG], include=formats, dynamic="onnx" in formats)
    assert len(files) == len(formats)
    pt = DetectBackend(w)
    im = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        a = pt(im)
        ts = DetectBackend(tmp_path / "y11n.torchscript.pt")
        assert ts.family == "v8" and a.shape == (1, 84, 12 * 16 + 6 * 8 + 3 * 4)
        if "onnx" in formats:
            b = DetectBackend(tmp_path / "y11n.onnx")(im)
            assert (a[:, :4] - b[:, :4]).abs().max() <= 1e-3 and (a[:, 4:] - b[:, 4:]).abs().max() <= 1e-5


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
def test_train_kd_yolov8n_teacher_yolo11n_student(tiny_data, tmp_path):
    """train_kd.py's default for two v8-family models (output KD on the heads + mse on the maps entering
    them) with a yolov8n teacher and a yolo11n student: both heads have reg_max 16 and three levels."""
    from utils.loggers import read_results_csv

    torch.manual_seed(1)
    teacher = save_checkpoint({"epoch": -1, "best_fitness": None, "model": Model("yolov8n.yaml", nc=NC), "ema": None,
                               "updates": None, "optimizer": None, "wandb_id": None}, tmp_path / "teacher-v8n.pt")
    _run([sys.executable, str(ROOT / "train_kd.py"), "--model", str(ROOT / "models/yolo11n.yaml"), "--teacher",
          str(teacher), "--data", str(tiny_data), "--img", str(IMG), "--batch", "4", "--workers", "0",
          "--epochs", "1", "--noval", "--weights", "", "--project", str(tmp_path / "runs"), "--name", "kd"], tmp_path)
    names, rows = read_results_csv(tmp_path / "runs/kd/results.csv")
    row = dict(zip(names, rows[0]))
    assert row["train/kd_loss"] > 0 and row["train/mse_loss"] > 0 and row["train/dfl_loss"] > 0


@pytest.mark.slow
def test_torch_hub_custom_yolo11(fixtures_dir, monkeypatch):
    import numpy as np

    monkeypatch.chdir(ROOT)
    m = torch.hub.load(".", "custom", path=str(fixtures_dir / "yolo11n_ultralytics.pt"), source="local", verbose=False)
    assert m.model.family == "v8" and not m.model.head.legacy
    det = m(np.full((64, 80, 3), 114, dtype=np.uint8))
    assert len(det.xyxy) == 1 and det.xyxy[0].shape[1] == 6
