"""export.py: ONNX and TorchScript exports of a tiny yolov5n run and match PyTorch; detect.py agrees across formats."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_detect import NAMES, make_checkpoint, make_images, read_labels

ROOT = Path(__file__).resolve().parents[1]
# ONNX (onnxruntime's MLAS kernels) vs PyTorch: the same float32 network summed in another order. The
# rounding error of this tiny random-weight model is ~1e-6 relative (logits); boxes of up to ~200 px and
# sigmoid scores (derivative <= 1/4) therefore differ by ~1e-4 px and ~1e-6: the tolerances keep 100x
# of margin for other CPUs and runtimes while a wrong export (a missing sigmoid, a grid off by one cell,
# an anchor swapped) moves boxes by pixels and scores by > 1e-2.
BOX_TOL, SCORE_TOL = 1e-2, 1e-4  # pixels; sigmoid scores


def _onnx_ok() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


needs_onnx = pytest.mark.skipif(not _onnx_ok(), reason="onnx and onnxruntime are not importable")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "tiny.pt")


@pytest.fixture(scope="module")
def static_export(ckpt, tmp_path_factory) -> dict[str, Path]:
    """TorchScript + ONNX exports at 128x128 (fixed shape), made once for the module."""
    import export

    w = shutil.copy(ckpt, tmp_path_factory.mktemp("static") / "tiny.pt")
    include = ("torchscript", "onnx") if _onnx_ok() else ("torchscript",)
    files = export.run(weights=w, imgsz=(128,), include=include, opset=13)
    return {"pt": Path(w), **{f.suffix if f.suffix == ".onnx" else "ts": f for f in files}}


@pytest.fixture(scope="module")
def dynamic_export(ckpt, tmp_path_factory) -> tuple[Path, Path]:
    """(weights, ONNX file with dynamic batch/height/width axes, opset 12), made once for the module."""
    import export

    w = Path(shutil.copy(ckpt, tmp_path_factory.mktemp("dynamic") / "dyn.pt"))
    (f,) = export.run(weights=w, imgsz=(128,), include=("onnx",), dynamic=True, opset=12)
    return w, f


def _reference(weights: Path, im: torch.Tensor, dynamic: bool = False, train: bool = False):
    """PyTorch outputs of the model exactly as export.py prepares it."""
    import export

    wrapper = export.prepare_model(export.load_for_export(weights, torch.device("cpu")), train=train, dynamic=dynamic)
    with torch.no_grad():
        return wrapper(im)


def _diffs(ref: torch.Tensor, out) -> tuple[float, float]:
    out = torch.as_tensor(np.asarray(out))
    assert out.shape == ref.shape
    return (ref[..., :4] - out[..., :4]).abs().max().item(), (ref[..., 4:] - out[..., 4:]).abs().max().item()


@needs_onnx
def test_onnx_matches_pytorch(static_export):
    import onnx

    import export

    f = static_export[".onnx"]
    model = onnx.load(str(f))
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["output"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["stride"] == "32" and ast.literal_eval(meta["names"]) == NAMES  # v6.x str(list) format
    torch.manual_seed(1)
    im = torch.rand(1, 3, 128, 128)
    ref = _reference(static_export["pt"], im)
    (out,) = export.run_onnx(f, im)
    assert out.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4), 5 + len(NAMES))  # 1 x N x (5 + nc)
    box, score = _diffs(ref, out)
    print(f"ONNX vs PyTorch: max abs diff boxes {box:.3g} px, scores {score:.3g}")
    assert box <= BOX_TOL and score <= SCORE_TOL
    assert ref[..., 4].max() > 0.5 and ref[..., :4].abs().max() > 10  # a comparison of non-trivial outputs


def test_torchscript_matches_pytorch(static_export):
    f = static_export["ts"]
    assert f.name == "tiny.torchscript.pt"
    extra = {"config.txt": ""}
    ts = torch.jit.load(str(f), _extra_files=extra)
    cfg = json.loads(extra["config.txt"])
    assert cfg == {"shape": [1, 3, 128, 128], "stride": 32, "names": NAMES}
    im = torch.rand(1, 3, 128, 128)
    box, score = _diffs(_reference(static_export["pt"], im), ts(im))
    # TorchScript runs the same ATen kernels as eager PyTorch on the same CPU, so only graph-level rewrites
    # could change the rounding: a few float32 ulps of boxes up to 128 px (ulp 1.5e-5) and of scores <= 1.
    assert box <= 1e-4 and score <= 1e-6


@needs_onnx
def test_dynamic_onnx_other_shapes(dynamic_export):
    import export

    w, f = dynamic_export
    im = torch.rand(2, 3, 96, 160)  # another batch size and a non-square shape
    box, score = _diffs(_reference(w, im, dynamic=True), export.run_onnx(f, im)[0])
    assert box <= BOX_TOL and score <= SCORE_TOL


@needs_onnx
def test_train_mode_onnx_exports_raw_maps(ckpt, tmp_path):
    import export

    w = shutil.copy(ckpt, tmp_path / "train.pt")
    (f,) = export.run(weights=w, imgsz=(64,), include=("onnx",), train=True)
    im = torch.rand(1, 3, 64, 64)
    ref, outs = _reference(Path(w), im, train=True), export.run_onnx(f, im)
    assert [o.shape for o in outs] == [tuple(r.shape) for r in ref] == [(1, 3, s, s, 8) for s in (8, 4, 2)]
    # raw logits (|x| up to ~10, no sigmoid): summation-order error ~1e-6 relative, BOX_TOL/10 of margin
    assert max(np.abs(r.numpy() - o).max() for r, o in zip(ref, outs)) < 1e-3


def _same_detections(a: dict[str, np.ndarray], b: dict[str, np.ndarray], gn: float, conf_thres: float = 0.5) -> None:
    """Label files with --save-conf agree: same rows, boxes within one rounding pixel, conf within 1e-4.

    PyTorch and onnxruntime sum in different orders, so a score within SCORE_TOL of the confidence
    threshold may fall on either side of it: such borderline rows are left out on both sides first."""
    def clear(rows: np.ndarray) -> np.ndarray:
        return rows[np.abs(rows[:, 5] - conf_thres) > SCORE_TOL]

    assert sorted(a) == sorted(b) and a
    for stem, x in a.items():
        x, y = clear(x), clear(b[stem])
        assert x.shape == y.shape and len(x) > 0
        x, y = x[np.lexsort(x[:, :5].T[::-1])], y[np.lexsort(y[:, :5].T[::-1])]
        assert np.array_equal(x[:, 0], y[:, 0])
        assert np.abs(x[:, 1:5] - y[:, 1:5]).max() <= 1 / gn + 1e-6
        assert np.abs(x[:, 5] - y[:, 5]).max() <= 1e-4


@needs_onnx
def test_detect_same_from_pt_onnx_torchscript(static_export, tmp_path):
    import detect

    images = make_images(tmp_path / "images", n=3)
    square = images / "img2.jpg"  # 112x112: the full 128x128 letterbox equals the minimal one
    runs = {}
    for k in ("pt", ".onnx", "ts"):
        d = detect.run(weights=str(static_export[k]), source=str(square), imgsz=[128], project=str(tmp_path),
                       name=k.strip("."), device="cpu", save_txt=True, save_conf=True, nosave=True,
                       conf_thres=0.5)
        runs[k] = read_labels(d)
    _same_detections(runs["pt"], runs[".onnx"], 112)
    _same_detections(runs["pt"], runs["ts"], 112)


@needs_onnx
def test_detect_same_from_pt_and_dynamic_onnx(dynamic_export, tmp_path):
    """A dynamic-axes ONNX file takes the same minimal letterbox as .pt, so non-square images match too."""
    import detect

    w, f = dynamic_export
    images = make_images(tmp_path / "images", n=2)
    runs = [read_labels(detect.run(weights=str(x), source=str(images), imgsz=[128], project=str(tmp_path),
                                   name=Path(x).suffix[1:], device="cpu", save_txt=True, save_conf=True,
                                   nosave=True, conf_thres=0.5)) for x in (w, f)]
    _same_detections(runs[0], runs[1], 128)


def test_export_errors(ckpt, tmp_path):
    import export
    from utils.general import UserError

    with pytest.raises(UserError, match="download_weights.py"):
        export.run(weights=tmp_path / "yolov5x_missing.pt", include=("onnx",))
    with pytest.raises(UserError, match="tflite"):
        export.run(weights=ckpt, include=("tflite",))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--half"):
            export.run(weights=ckpt, include=("onnx",), half=True, device="cpu")
    try:
        export.check_mobile_optimizer()
    except UserError:  # wheels without XNNPACK: a clear error before any work, not an internal assert
        with pytest.raises(UserError, match="--optimize.*without --optimize"):
            export.run(weights=ckpt, include=("torchscript",), optimize=True)
    r = subprocess.run([sys.executable, str(ROOT / "export.py"), "--weights", str(tmp_path / "none.pt")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "none.pt" in r.stderr


def test_export_silu_swap_is_exact():
    import export

    x = torch.randn(1000)
    assert torch.allclose(export.ExportSiLU()(x), torch.nn.SiLU()(x), atol=1e-6)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SiLU(), torch.nn.Sequential(torch.nn.SiLU()))
    assert export.swap_silu(net) == 2 and not any(isinstance(m, torch.nn.SiLU) for m in net.modules())


@needs_onnx
def test_backend_metadata_and_fallback_names(static_export, tmp_path):
    """Names/stride come from the ONNX metadata; a file without it gets stride 32 and class0..class{nc-1}."""
    import onnx

    from models.backend import DetectBackend

    b = DetectBackend(static_export[".onnx"])
    assert (b.fmt, b.names, b.stride, b.fixed_shape) == ("onnx", NAMES, 32, (128, 128))
    model = onnx.load(str(static_export[".onnx"]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    b = DetectBackend(bare)
    assert b.names == ["class0", "class1", "class2"] and b.stride == 32
    y = b(torch.rand(1, 3, 128, 128))
    assert y.shape == (1, 1008, 8) and y.dtype == torch.float32
    ts = DetectBackend(static_export["ts"])
    assert (ts.fmt, ts.names, ts.fixed_shape) == ("torchscript", NAMES, (128, 128))
