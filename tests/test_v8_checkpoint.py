"""ultralytics YOLOv8 checkpoints through the allow-list loader vs reference_v8.pt; our own v8 checkpoints.

Tolerances. The reference tensors were computed in float32 by ultralytics; their own rounding error is
a fixed property of the file. Running OUR model in float64 leaves only that error, independent of the
CPU's kernels and thread count (measured identical with 1 and 2 threads, AVX2 and SSE4.1/default).
Class scores are compared as logits log(p / (1 - p)): a sigmoid of 1e-4 carries the logit's error
scaled by 1e-4, so the logit is the quantity whose error does not depend on the score.
Measured, float64 model vs reference (yolov8n / yolov8s):
  eval and fused xywh: 8.7e-5 / 7.2e-5 px (boxes up to ~480 px: a few float32 ulps after ~60 layers);
  eval class logits: 6.2e-7; train_raw logits: 3.9e-5 / 4.9e-5 (|x| up to 14, batch statistics).
The float64 checks use 1.5e-4 px, 1e-6 and 1e-4: tight, just above the file's own error. A float32 run
adds our own rounding, which moves with summation order (AVX2/AVX-512/AMX, thread count): measured up
to 1.2e-4 px, 1.4e-5 on class logits (2 threads) and 6.6e-5 on train logits (SSE4.1). The float32
checks allow ~4x the reference's own error: 4e-4 px, and 2e-4 on logits (4x its 4.9e-5 logit error).
A real mistake is far outside: anchor points at the cell corner move every box by half a stride
(>= 4 px) and reversed DFL bins change box sizes by tens of pixels (tests below).
"""

import copy

import numpy as np
import pytest
import torch
from released_ckpt import (
    assert_rebuilds_from_its_yaml,
    load_released,
    n_params,
    pred_error,
)

from models.checkpoint import (
    attempt_load,
    safe_torch_load,
    save_checkpoint,
    strip_optimizer,
)
from models.head_v8 import DetectV8
from models.yolo import Model
from utils.general import UserError

TOL = {torch.float64: {"xywh": 1.5e-4, "cls": 1e-6, "raw": 1e-4},
       torch.float32: {"xywh": 4e-4, "cls": 2e-4, "raw": 2e-4}}
NAMES = ("yolov8n", "yolov8s")


@pytest.fixture(scope="module")
def ref_v8(fixtures_dir):
    return torch.load(fixtures_dir / "reference_v8.pt", weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
    return load_released(fixtures_dir, NAMES)


def test_release_format_loads_through_allow_list(fixtures_dir, loaded):
    ckpt = safe_torch_load(fixtures_dir / "yolov8n_ultralytics.pt")  # no trust: the explicit allow-list
    assert ckpt["epoch"] == -1 and ckpt["version"].startswith("8.") and isinstance(ckpt["train_args"], dict)
    model = loaded["yolov8n"]
    assert type(model) is Model and isinstance(model.head, DetectV8) and model.family == "v8"
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert model.names == [str(i) for i in range(80)]  # ultralytics' {0: '0', ...} dict becomes our list
    assert model.yaml["head"][-1][2] == "DetectV8" and "args" not in model.__dict__
    assert_rebuilds_from_its_yaml(model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_eval_train_fused_reproduce_reference(ref_v8, loaded, name, dtype):
    tol = TOL[dtype]
    model = copy.deepcopy(loaded[name]).to(dtype)
    assert n_params(model) == int(ref_v8[f"{name}/n_params"])
    with torch.no_grad():
        e_box, e_cls = pred_error(model(ref_v8["x_eval"].to(dtype))[0], ref_v8[f"{name}/eval_pred"])
        assert e_box <= tol["xywh"] and e_cls <= tol["cls"], (e_box, e_cls)
        # As for v5: train_raw was made in train mode (BatchNorm uses batch statistics and updates its
        # running stats); the reference fused *that* model, so fused_eval_pred follows the same order.
        model.train()
        raw = model(ref_v8["x_train"].to(dtype))
        for r, ref in zip(raw, ref_v8[f"{name}/train_raw"], strict=True):
            assert r.shape == ref.shape and float((r.double() - ref.double()).abs().max()) <= tol["raw"]
        model.eval().fuse()
        assert n_params(model) == int(ref_v8[f"{name}/fused_n_params"])
        e_box, e_cls = pred_error(model(ref_v8["x_eval"].to(dtype))[0], ref_v8[f"{name}/fused_eval_pred"])
        assert e_box <= tol["xywh"] and e_cls <= tol["cls"], (e_box, e_cls)


def test_wrong_models_fail_at_the_tolerance(ref_v8, loaded):
    """The tolerances catch real mistakes: anchor points at cell + 0, DFL bins reversed."""
    x, ref = ref_v8["x_eval"], ref_v8["yolov8n/eval_pred"]
    tol = TOL[torch.float32]["xywh"]
    model = copy.deepcopy(loaded["yolov8n"])
    with torch.no_grad():
        model(x)  # builds the anchor-point cache for this input size
        model.head.anchors = model.head.anchors - 0.5  # cell + 0 instead of cell + 0.5
        e_box, _ = pred_error(model(x)[0], ref)
        assert e_box > 100 * tol  # half a stride: >= 4 px
        model = copy.deepcopy(loaded["yolov8n"])
        model.head.dfl.conv.weight.copy_(model.head.dfl.conv.weight.flip(1))  # bins 15..0
        e_box, _ = pred_error(model(x)[0], ref)
        assert e_box > 100 * tol


def test_own_v8_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Model("yolov8n.yaml", nc=3).eval()
    model.names = ["a", "b", "c"]
    x = torch.rand(1, 3, 64, 64)
    ckpt = {"epoch": 2, "best_fitness": np.array([0.3]), "model": model, "ema": None, "updates": 4,
            "optimizer": None, "wandb_id": None, "opt": {"epochs": 3}}
    path = save_checkpoint(ckpt, tmp_path / "last.pt")
    back = attempt_load(path, fuse=False)
    assert isinstance(back.head, DetectV8) and back.names == model.names and back.yaml == model.yaml
    with torch.no_grad():
        assert torch.equal(back(x)[0], model(x)[0])
        assert torch.allclose(attempt_load(path, fuse=True)(x)[0], model(x)[0], atol=1e-3)
    strip_optimizer(path)
    stripped = safe_torch_load(path)
    assert stripped["epoch"] == -1 and next(stripped["model"].parameters()).dtype == torch.float16
    sd_only = tmp_path / "sd.pt"
    torch.save(model.state_dict(), sd_only)
    with torch.no_grad():
        assert torch.equal(attempt_load(sd_only, cfg="yolov8n.yaml", fuse=False)(x)[0], model(x)[0])


def test_unknown_ultralytics_global_is_refused(tmp_path, monkeypatch):
    """A pickle naming an ultralytics class outside the allow-list is refused before anything runs."""
    import sys
    import types

    class Segment(torch.nn.Module):
        pass

    Segment.__module__, Segment.__qualname__ = "ultralytics.nn.modules.head", "Segment"
    for name in ("ultralytics", "ultralytics.nn", "ultralytics.nn.modules", "ultralytics.nn.modules.head"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))  # only so that pickle can name it
    sys.modules["ultralytics.nn.modules.head"].Segment = Segment
    f = tmp_path / "seg.pt"
    torch.save({"model": Segment()}, f)
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"seg\.pt.*ultralytics\.nn\.modules\.head\.Segment"):
        safe_torch_load(f)


def test_ultralytics_80x_flat_module_names_load(loaded, tmp_path, ref_v8):
    """ultralytics 8.0.x pickled its blocks as ultralytics.nn.modules.<Class> (one modules.py): same mapping."""
    import pickle
    import types

    from models.common import DFL, SPPF, Bottleneck, C2f, Concat, Conv

    flat = {Conv: "Conv", Concat: "Concat", C2f: "C2f", Bottleneck: "Bottleneck", SPPF: "SPPF", DFL: "DFL",
            DetectV8: "Detect"}

    globals_80x = {cls: f"ultralytics.nn.modules\n{name}\n" for cls, name in flat.items()}
    globals_80x[Model] = "ultralytics.nn.tasks\nDetectionModel\n"

    class FlatPickler(pickle._Pickler):  # the pure-Python pickler: writes our classes under 8.0.x names
        def save_global(self, obj, name=None):
            if obj not in globals_80x:
                return super().save_global(obj, name)
            self.write(pickle.GLOBAL + globals_80x[obj].encode())
            self.memoize(obj)
            return None

    mod = types.SimpleNamespace(Pickler=FlatPickler, __name__="flat_pickle")
    f = tmp_path / "v80.pt"
    torch.save({"epoch": -1, "model": copy.deepcopy(loaded["yolov8n"]).half()}, f, pickle_module=mod)
    raw = f.read_bytes()
    assert b"ultralytics.nn.modules\nC2f" in raw and b"models.common" not in raw
    model = attempt_load(f, fuse=False)
    assert isinstance(model.head, DetectV8)
    with torch.no_grad():
        e_box, e_cls = pred_error(model(ref_v8["x_eval"])[0], ref_v8["yolov8n/eval_pred"])
    assert e_box <= TOL[torch.float32]["xywh"] and e_cls <= TOL[torch.float32]["cls"]


def test_v8_ensemble(fixtures_dir, ref_v8):
    from models.experimental import Ensemble

    paths = [fixtures_dir / "yolov8n_ultralytics.pt", fixtures_dir / "yolov8s_ultralytics.pt"]
    ens = attempt_load(paths)
    assert isinstance(ens, Ensemble) and ens.family == "v8"
    with torch.no_grad():
        y, _ = ens(ref_v8["x_eval"])
    assert y.shape == (1, 84, 2 * 1680)  # boxes of both models along the box axis
    assert len(ens.nms(y, 0.25, 0.7)) == 1
    with pytest.raises(UserError, match="mix head families"):
        attempt_load([fixtures_dir / "yolov8n_ultralytics.pt", fixtures_dir / "yolov5n_v6.0.pt"])
