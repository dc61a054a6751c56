#!/usr/bin/env python
"""Export a YOLOv5 checkpoint to TorchScript and/or ONNX (v6.0 export.py, without the TF/CoreML formats).

Usage:
    python export.py --weights yolov5s.pt --include torchscript onnx
    python export.py --weights runs/train/exp/weights/best.pt --include onnx --imgsz 320 --dynamic

Outputs, next to the weights:
    yolov5s.torchscript.pt  traced model; extra file config.txt = {"shape", "stride", "names"} (JSON)
    yolov5s.onnx            input 'images' (B, 3, H, W) float [0, 1] RGB, output 'output' (B, N, 5 + nc):
                            xywh in input pixels, objectness, class sigmoids; metadata_props stride, names
After the ONNX export the file is run with onnxruntime and compared with PyTorch on one test image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

FILE = Path(__file__).resolve()
ROOT = FILE.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # scripts import models.* and utils.* from the repository root

from engine.options import check_export_args
from models.backend import check_weights_exist
from models.yolo import Detect
from utils.general import (
    LOGGER,
    UserError,
    check_img_size,
    colorstr,
    print_args,
    run_cli,
)
from utils.torch_utils import select_device

FORMATS = ("torchscript", "onnx")
UNSUPPORTED = ("coreml", "saved_model", "pb", "tflite", "tfjs", "engine", "openvino")


class ExportSiLU(nn.Module):
    """x * sigmoid(x): the same function as nn.SiLU, written with ops every exporter/runtime knows."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class ExportWrapper(nn.Module):
    """Returns only the decoded predictions (B, N, 5 + nc) in eval mode, so the ONNX graph has exactly
    one output named 'output'; in train mode it returns the nl raw maps (B, na, ny, nx, 5 + nc)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        y = self.model(x)
        if isinstance(y, tuple):  # eval: (decoded, raw list)
            return y[0]
        if isinstance(y, dict):  # train, YOLO26: one-to-many maps, then one-to-one maps
            return tuple(y["one2many"]) + tuple(y["one2one"])
        return tuple(y)  # train: raw maps


def swap_silu(model: nn.Module) -> int:
    """Replace every nn.SiLU submodule by ExportSiLU in place; returns how many were swapped."""
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.SiLU:
                setattr(parent, name, ExportSiLU())
                n += 1
    return n


def prepare_model(model: nn.Module, train: bool = False, inplace: bool = False, dynamic: bool = False) -> nn.Module:
    """Set the export switches of v6.0 on a loaded (fused) model and return it wrapped for tracing."""
    model.train() if train else model.eval()
    for p in model.parameters():
        p.requires_grad_(False) if p.is_leaf else p.detach_()  # fused params may carry a grad_fn
    swap_silu(model)
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace = inplace
            m.onnx_dynamic = dynamic
        elif hasattr(m, "dynamic"):  # the v8 head: rebuild anchor points for every input size
            m.dynamic = dynamic
    return ExportWrapper(model).train(train)


def metadata(model: nn.Module, im: torch.Tensor) -> dict:
    """{'shape', 'stride', 'names'} stored with every export (detect.py reads them back), plus 'family': 'v8'
    for the anchor-free family (output (B, 4 + nc, N), no objectness); YOLOv5 exports stay as v6.0 wrote them."""
    names = model.module.names if hasattr(model, "module") else model.names
    meta = {"shape": list(im.shape), "stride": int(max(model.stride)), "names": [str(n) for n in names]}
    family = getattr(model, "family", "v5")
    if getattr(model, "end2end", False):  # YOLO26 NMS-free output (B, k, 6) [x1, y1, x2, y2, conf, cls]
        meta["end2end"] = True
    return meta if family == "v5" else {**meta, "family": family}


def export_torchscript(wrapper: nn.Module, im: torch.Tensor, file: Path, meta: dict, optimize: bool = False,
                       prefix: str = colorstr("TorchScript:")) -> Path:
    """Trace the model and save it with config.txt (JSON metadata) as an extra file -> *.torchscript.pt."""
    LOGGER.info(f"\n{prefix} starting export with torch {torch.__version__}...")
    f = file.with_suffix(".torchscript.pt")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated, still works
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape->int in Detect, expected
        ts = torch.jit.trace(wrapper, im, strict=False)
        extra = {"config.txt": json.dumps(meta)}
        if optimize:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            optimize_for_mobile(ts)._save_for_lite_interpreter(str(f), _extra_files=extra)
        else:
            ts.save(str(f), _extra_files=extra)
    LOGGER.info(f"{prefix} export success, saved as {f} ({f.stat().st_size / 1e6:.1f} MB)")
    return f


def check_mobile_optimizer() -> None:
    """UserError up front when --optimize cannot work (PyTorch wheels built without XNNPACK)."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            optimize_for_mobile(torch.jit.script(nn.Identity()))
    except RuntimeError as e:
        why = "it was built without XNNPACK" if "XNNPACK" in str(e) else str(e).strip().splitlines()[0][:120]
        raise UserError(f"--optimize: this PyTorch build cannot optimize for mobile ({why}); "
                        f"export without --optimize") from None


def export_onnx(wrapper: nn.Module, im: torch.Tensor, file: Path, meta: dict, opset: int = 12,
                train: bool = False, dynamic: bool = False, simplify: bool = False,
                prefix: str = colorstr("ONNX:")) -> Path:
    """Export with the TorchScript-based exporter (works offline, no onnxscript) -> *.onnx with metadata."""
    try:
        import onnx
    except ImportError:
        raise UserError("--include onnx needs the onnx package: pip install onnx") from None
    LOGGER.info(f"\n{prefix} starting export with onnx {onnx.__version__}...")
    f = file.with_suffix(".onnx")
    outputs = ["output"] if not train else [f"output{i}" for i in range(len(wrapper(im)))]
    axes = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        box_axis = 2 if meta.get("family") == "v8" else 1  # v8: (B, 4 + nc, N), v5: (B, N, 5 + nc)
        box_axis = 1 if meta.get("end2end") else box_axis  # end2end: (B, k, 6), k = min(300, N)
        axes.update({o: {0: "batch", box_axis: "anchors"} for o in outputs} if not train else
                    {o: {0: "batch", 2: "y", 3: "x"} for o in outputs})
    with warnings.catch_warnings():
        # the legacy exporter warns that it is deprecated and that traced shapes become constants
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        kwargs = {"training": torch.onnx.TrainingMode.TRAINING} if train else {}
        torch.onnx.export(wrapper, (im,), str(f), dynamo=False, verbose=False, opset_version=opset,
                          do_constant_folding=not train, input_names=["images"], output_names=outputs,
                          dynamic_axes=axes, **kwargs)
    model_onnx = onnx.load(str(f))
    onnx.checker.check_model(model_onnx)
    for k in [k for k in ("stride", "names", "family", "end2end") if k in meta]:  # str() like v6.x for other YOLOv5 tools
        prop = model_onnx.metadata_props.add()
        prop.key, prop.value = k, str(meta[k])
    if simplify:
        model_onnx = _simplify(model_onnx, prefix)
    onnx.save(model_onnx, str(f))
    LOGGER.info(f"{prefix} export success, saved as {f} ({f.stat().st_size / 1e6:.1f} MB)")
    return f


def _simplify(model_onnx, prefix: str):
    """onnx-simplifier when installed; otherwise a clear warning and the unsimplified model."""
    try:
        import onnxsim
    except ImportError:
        LOGGER.warning(f"{prefix} WARNING: --simplify needs onnx-simplifier (pip install onnxsim); "
                       f"saving the model unsimplified")
        return model_onnx
    LOGGER.info(f"{prefix} simplifying with onnx-simplifier {getattr(onnxsim, '__version__', '')}...")
    simplified, ok = onnxsim.simplify(model_onnx)  # recent versions keep dynamic axes symbolic
    if not ok:
        LOGGER.warning(f"{prefix} WARNING: onnx-simplifier check failed; saving the model unsimplified")
        return model_onnx
    return simplified


def test_image(imgsz: list[int], batch_size: int, stride: int, device: torch.device) -> torch.Tensor:
    """(B, 3, h, w) float [0, 1]: the first image of data/images letterboxed (auto=False), else a random
    tensor from a fixed seed, so the export check is reproducible."""
    import cv2

    from utils.data.augmentations import letterbox
    from utils.data.label_cache import IMG_FORMATS

    files = sorted(p for p in (ROOT / "data" / "images").glob("*.*") if p.suffix[1:].lower() in IMG_FORMATS)
    img0 = cv2.imread(str(files[0])) if files else None
    if img0 is None:
        g = torch.Generator().manual_seed(0)
        return torch.rand(batch_size, 3, *imgsz, generator=g).to(device)
    img = letterbox(img0, imgsz, stride=stride, auto=False)[0]
    img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
    return (torch.from_numpy(img).float() / 255).unsqueeze(0).repeat(batch_size, 1, 1, 1).to(device)


def max_diffs(ref, out) -> tuple[float, float]:
    """Max abs difference on boxes (columns 0:4) and on scores (4:) between two outputs: tensors (B, N, no)
    (boxes in pixels) or lists of raw maps (B, na, ny, nx, no) (train-mode exports, logits)."""
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    out = [out] if isinstance(out, (torch.Tensor, np.ndarray)) else list(out)
    if len(ref) != len(out):
        raise ValueError(f"output count differs: {len(ref)} vs {len(out)}")
    box = score = 0.0
    for r, o in zip(ref, out):
        r, o = r.float().cpu(), torch.as_tensor(o).float().cpu()
        if r.shape != o.shape:
            raise ValueError(f"output shape differs: {tuple(r.shape)} vs {tuple(o.shape)}")
        box = max(box, (r[..., :4] - o[..., :4]).abs().max().item())
        score = max(score, (r[..., 4:] - o[..., 4:]).abs().max().item())
    return box, score


def run_onnx(f: str | Path, im: torch.Tensor) -> list[np.ndarray]:
    """All outputs of an ONNX file for input im (onnxruntime, CUDA provider when im is on CUDA)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if im.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(f), providers=providers)
    return session.run(None, {session.get_inputs()[0].name: im.cpu().numpy()})


def check_export(f: Path, wrapper: nn.Module, im: torch.Tensor) -> tuple[float, float] | None:
    """Run an exported file (ONNX via onnxruntime, TorchScript via torch.jit) on im and compare it with the
    PyTorch model; logs and returns (max abs diff boxes, scores), or None when it cannot be checked."""
    prefix = colorstr("ONNX:") if f.suffix == ".onnx" else colorstr("TorchScript:")
    with torch.no_grad():
        ref = wrapper(im)
        try:
            if f.suffix == ".onnx":
                out = run_onnx(f, im)
                out = out[0] if len(out) == 1 else out
            else:
                out = torch.jit.load(str(f), map_location=im.device)(im)
        except ImportError:
            LOGGER.warning(f"{prefix} WARNING: onnxruntime not installed (pip install onnxruntime); check skipped")
            return None
        except Exception as e:  # noqa: BLE001 (the file is written; report a runtime that cannot run it)
            LOGGER.warning(f"{prefix} WARNING: check run failed ({type(e).__name__}: {str(e).splitlines()[0]})")
            return None
    end2end = getattr(wrapper.model, "end2end", False)  # (B, k, 6) rows already box-first
    if getattr(wrapper.model, "family", "v5") == "v8" and not wrapper.training and not end2end:
        ref, out = ref.transpose(1, 2), torch.as_tensor(out).transpose(1, 2)  # (B, 4 + nc, N) -> (B, N, 4 + nc)
    box, score = max_diffs(ref, out)
    what = "raw box logits" if wrapper.training else "boxes"
    LOGGER.info(f"{prefix} check vs PyTorch on {tuple(im.shape)}: max abs diff {what} {box:.3g}"
                f"{' px' if not wrapper.training else ''}, scores {score:.3g}")
    return box, score


def load_for_export(weights: str | Path, device: torch.device, trust: bool = False, cfg=None,
                    end2end: bool = False) -> nn.Module:
    """attempt_load(fuse=True, inplace=True) as v6.0, after a clear check that the file exists; end2end: a
    YOLO26 model exports its NMS-free one-to-one rows (B, k, 6), its one-to-many head dropped."""
    from models.checkpoint import attempt_load

    (path,) = check_weights_exist(weights)
    if path.suffix != ".pt" or "torchscript" in path.name:
        raise UserError(f"--weights {path}: export.py needs a PyTorch .pt checkpoint")
    return attempt_load(str(path), map_location=device, inplace=True, fuse=True, trust=trust, cfg=cfg,
                        end2end=end2end)


def run(weights: str | Path = ROOT / "yolov5s.pt", imgsz: tuple[int, ...] = (640, 640), batch_size: int = 1,
        device: str = "cpu", include: tuple[str, ...] = FORMATS, half: bool = False, inplace: bool = False,
        train: bool = False, optimize: bool = False, dynamic: bool = False, simplify: bool = False,
        opset: int = 12, trust_checkpoint: bool = False, cfg: str | Path | None = None,
        nms: bool = False) -> list[Path]:
    """Export weights to the formats in include; returns the written files (see module docstring). A YOLO26
    model exports NMS-free (B, k, 6) rows [x1, y1, x2, y2, conf, cls] (metadata end2end); nms=True exports
    its one-to-many (B, 4 + nc, N) output for NMS instead."""
    t = time.time()
    include = [x.lower() for x in include]
    bad = [x for x in include if x not in FORMATS]
    if bad:
        known = f"supported: {', '.join(FORMATS)}"
        why = " (not implemented in this project)" if set(bad) & set(UNSUPPORTED) else ""
        raise UserError(f"--include {' '.join(bad)}: unknown format{why}; {known}")
    check_export_args(weights, imgsz, batch_size, opset, include, device, cfg)  # before the model is loaded
    device = select_device(device)
    if optimize and "torchscript" in include:
        check_mobile_optimizer()
    if half and device.type == "cpu":
        raise UserError("--half exports need a CUDA device (e.g. --device 0); CPU FP16 export is not supported")
    if half and dynamic:
        raise UserError("--half and --dynamic cannot be combined; drop one of them")
    model = load_for_export(weights, device, trust_checkpoint, cfg, end2end=not nms and not train)
    imgsz = list(imgsz) * (2 if len(imgsz) == 1 else 1)  # [h, w]
    gs = int(max(model.stride))
    imgsz = [check_img_size(x, gs) for x in imgsz]
    im = test_image(imgsz, batch_size, gs, device)
    wrapper = prepare_model(model, train=train, inplace=inplace, dynamic=dynamic)
    if half:
        im, wrapper = im.half(), wrapper.half()
    with torch.no_grad():
        for _ in range(2):  # dry runs: build Detect's grids and catch shape errors before exporting
            y = wrapper(im)
    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else [tuple(x.shape) for x in y]
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {weights} with output shape {shape}")
    meta, file, files = metadata(model, im), Path(weights), []
    if "torchscript" in include:
        files.append(export_torchscript(wrapper, im, file, meta, optimize))
        check_export(files[-1], wrapper, im)
    if "onnx" in include:
        files.append(export_onnx(wrapper, im, file, meta, opset, train, dynamic, simplify))
        check_export(files[-1], wrapper, im)
    LOGGER.info(f"\nExport complete ({time.time() - t:.2f}s)\nResults saved to {colorstr('bold', str(file.parent.resolve()))}"
                f"\nDetect: python detect.py --weights {files[-1] if files else file}")
    return files


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export YOLOv5 weights to TorchScript / ONNX")
    parser.add_argument("--weights", type=str, default=ROOT / "yolov5s.pt", help="weights path (.pt)")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640, 640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--half", action="store_true", help="FP16 half-precision export (CUDA only)")
    parser.add_argument("--inplace", action="store_true", help="set Detect() inplace=True")
    parser.add_argument("--train", action="store_true", help="model.train() mode: export the raw maps")
    parser.add_argument("--optimize", action="store_true", help="TorchScript: optimize for mobile")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch and image size axes")
    parser.add_argument("--simplify", action="store_true", help="ONNX: simplify model (needs onnxsim)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX: opset version")
    parser.add_argument("--include", nargs="+", default=list(FORMATS), help=f"formats: {', '.join(FORMATS)}")
    parser.add_argument("--cfg", type=str, default=None, help="model.yaml for a state_dict-only --weights file")
    parser.add_argument("--nms", action="store_true",
                        help="YOLO26 (end2end) models: export the one-to-many output for NMS, not the NMS-free rows")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full (unsafe) unpickling of a checkpoint you trust")
    opt = parser.parse_args(argv)
    print_args(FILE.stem, vars(opt))
    return opt


def main(opt: argparse.Namespace) -> list[Path]:
    return run(**vars(opt))


if __name__ == "__main__":
    run_cli(lambda: main(parse_opt()))
