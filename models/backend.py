"""One inference wrapper for detect.py over PyTorch (.pt), TorchScript (*.torchscript.pt) and ONNX weights.

`DetectBackend(weights, device)(im)` takes a (B, 3, H, W) float tensor in [0, 1] (RGB, letterboxed) and
returns the decoded predictions (B, N, 5 + nc): xywh box centres/sizes in input-image pixels, then the
objectness and class sigmoids, the same layout as `Model(...).eval()(im)[0]`, whatever the format.

Metadata travels with the exported files (written by export.py): ONNX `metadata_props` and the
TorchScript extra file `config.txt` hold `stride` and `names`; TorchScript also holds the traced `shape`.
Files without it (exported elsewhere) fall back to stride 32 and names class0..class{nc-1}.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import torch

from utils.general import LOGGER, ROOT, UserError

DOWNLOAD_HINT = "official v6.0 weights can be fetched with `python weights/download_weights.py`"


def weights_format(w: str | Path) -> str:
    """'onnx', 'torchscript' or 'pt' from the file name (v6.0 rule: 'torchscript' anywhere in the name)."""
    name = Path(w).name.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if "torchscript" in name:
        return "torchscript"
    if name.endswith(".pt"):
        return "pt"
    raise UserError(f"--weights {w}: unsupported format; use a .pt checkpoint, *.torchscript.pt or .onnx file")


def check_weights_exist(weights: str | Path | list) -> list[Path]:
    """Existing weight paths, or a UserError naming the missing one and how to get official weights.

    A bare name such as 'yolov5s.pt' (or ROOT/yolov5s.pt, the v6.0 default) is also looked up in weights/,
    where weights/download_weights.py puts the official files.
    """
    paths = []
    for w in weights if isinstance(weights, (list, tuple)) else [weights]:
        p = Path(w)
        if not p.is_file() and p.parent in (Path("."), ROOT) and (ROOT / "weights" / p.name).is_file():
            p = ROOT / "weights" / p.name
        if not p.is_file():
            raise UserError(f"--weights {p} not found; {DOWNLOAD_HINT}, or pass a path to your own checkpoint")
        paths.append(p)
    return paths


def parse_names(value: object, nc: int | None = None) -> list[str]:
    """Class names from metadata (a list, a {index: name} dict or their str()/JSON text) -> list of str."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)  # export.py writes str(list) like v6.x
            except (ValueError, SyntaxError):
                value = None
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value, key=int)]
    if isinstance(value, (list, tuple)) and value:
        return [str(x) for x in value]
    return [f"class{i}" for i in range(nc or 0)]


def session_options():
    """onnxruntime options: worker threads sleep between runs instead of spinning, so they do not steal
    the CPU from the PyTorch NMS and image decoding that run between two inferences."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class DetectBackend:
    """Uniform inference over .pt / TorchScript / ONNX weights (see module docstring for tensor formats).

    Attributes: fmt ('pt' | 'torchscript' | 'onnx'), stride (int, max model stride), names (list[str]),
    fp16 (inputs must be half), fixed_shape ((h, w) the model only accepts, or None when any stride
    multiple works), model (the nn.Module / ScriptModule / onnxruntime session).
    """

    def __init__(self, weights: str | Path | list, device: torch.device | None = None,
                 half: bool = False, trust: bool = False, cfg: str | Path | None = None) -> None:
        device = device or torch.device("cpu")
        paths = check_weights_exist(weights)
        fmts = {weights_format(p) for p in paths}
        if len(paths) > 1 and fmts != {"pt"}:
            raise UserError("--weights: several weights (an ensemble) are only supported for .pt checkpoints")
        self.fmt, self.device = fmts.pop(), device
        self.fp16 = half and device.type == "cuda"
        self.family = "v5"  # 'v8': output (B, 4 + nc, N), no objectness (from the model or the export metadata)
        self.end2end = False  # NMS-free (B, k, 6) output of a YOLO26 export (metadata end2end)
        self.fixed_shape: tuple[int, int] | None = None
        self.stride, self.names = 32, []
        if self.fmt == "pt":
            self._load_pt(paths, trust, cfg)
        elif self.fmt == "torchscript":
            self._load_torchscript(paths[0])
        else:
            self._load_onnx(paths[0])

    def _load_pt(self, paths: list[Path], trust: bool, cfg: str | Path | None = None) -> None:
        from models.checkpoint import attempt_load

        w = [str(p) for p in paths]
        model = attempt_load(w if len(w) > 1 else w[0], map_location=self.device, inplace=True, fuse=True,
                             trust=trust, cfg=cfg)
        self.stride = int(max(model.stride))
        names = model.module.names if hasattr(model, "module") else model.names
        self.names = parse_names(names, int(model.model[-1].nc) if hasattr(model, "model") else None)
        self.family = getattr(model, "family", "v5")
        self.model = model.half() if self.fp16 else model.float()
        from utils.torch_utils import to_channels_last

        to_channels_last(self.model)  # NHWC convolutions: faster on CPU and on GPU tensor cores

    def _load_torchscript(self, path: Path) -> None:
        extra = {"config.txt": ""}
        try:
            self.model = torch.jit.load(str(path), _extra_files=extra, map_location=self.device)
        except RuntimeError as e:
            raise UserError(f"--weights {path}: not a loadable TorchScript file ({str(e).splitlines()[0]})") from None
        self.model.float().eval()
        if self.fp16:
            self.model.half()
        cfg = json.loads(extra["config.txt"] or "{}")
        self.stride = int(cfg.get("stride", 32))
        if cfg.get("shape"):
            self.fixed_shape = tuple(int(x) for x in cfg["shape"][2:4])  # traced: grids baked in at this size
        self.names = parse_names(cfg.get("names"), None)
        self.family = cfg.get("family", "v5")
        self.end2end = bool(cfg.get("end2end", False))  # YOLO26 exported NMS-free: (B, k, 6) rows
        self._nc_from_output = not self.names and not self.end2end

    def _load_onnx(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("--weights *.onnx needs onnxruntime: pip install onnxruntime") from None
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.model = ort.InferenceSession(str(path), sess_options=session_options(), providers=providers)
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types for bad files)
            raise UserError(f"--weights {path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        meta = self.model.get_modelmeta().custom_metadata_map
        inp, out = self.model.get_inputs()[0], self.model.get_outputs()[0]
        self.input_name = inp.name
        self.fp16 = inp.type == "tensor(float16)"  # the graph decides, not --half
        hw = inp.shape[2:4]
        if all(isinstance(x, int) for x in hw):
            self.fixed_shape = (int(hw[0]), int(hw[1]))
        self.stride = int(meta.get("stride", 32))
        self.family = meta.get("family", "v5")
        self.end2end = str(meta.get("end2end", "")).lower() == "true"  # metadata values are strings
        axis, extra = (1, 4) if self.family == "v8" else (-1, 5)  # v8 (B, 4 + nc, N), v5 (B, N, 5 + nc)
        no = out.shape[axis] if len(out.shape) == 3 and isinstance(out.shape[axis], int) else None
        if self.end2end:  # (B, k, 6) rows [x1, y1, x2, y2, conf, cls]: the class count is not in the shape
            no = None
        self.names = parse_names(meta.get("names"), no - extra if no else None)
        self._nc_from_output = not self.names and not self.end2end

    def __call__(self, im: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """im (B, 3, H, W) float [0, 1] -> predictions (B, N, 5 + nc), xywh in pixels of im."""
        if self.fmt == "pt":
            y = self.model(im.half() if self.fp16 else im.float(), augment=augment)
        elif self.fmt == "torchscript":
            y = self.model(im.half() if self.fp16 else im.float())
        else:
            x = im.cpu().numpy().astype(np.float16 if self.fp16 else np.float32)
            y = torch.from_numpy(self.model.run(None, {self.input_name: x})[0]).to(self.device)
        if isinstance(y, (tuple, list)):  # v6.0 models (and their traces) return (decoded, raw maps)
            y = y[0]
        if getattr(self, "_nc_from_output", False):  # no names stored: class0..class{nc-1}
            nc = y.shape[1] - 4 if self.family == "v8" else y.shape[-1] - 5
            self.names, self._nc_from_output = parse_names(None, nc), False
        return y.float()

    def nms(self, prediction: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        """The NMS for this model's output (arguments of utils.nms.non_max_suppression): the model's own for
        .pt weights, else chosen by the exported family."""
        from utils.nms import non_max_suppression, non_max_suppression_v8, select_end2end

        fn = getattr(self.model, "nms", None) if self.fmt == "pt" else None
        if fn is None and self.end2end:  # an NMS-free export (YOLO26): its rows only need the conf filter
            fn = select_end2end
        fn = fn or (non_max_suppression_v8 if self.family == "v8" else non_max_suppression)
        return fn(prediction, *args, **kwargs)

    def warmup(self, imgsz: tuple[int, int] = (640, 640)) -> None:
        """One forward on zeros so the first timed image does not pay for lazy initialisation."""
        self(torch.zeros(1, 3, *imgsz, device=self.device))

    def check_imgsz(self, imgsz: list[int]) -> list[int]:
        """imgsz [h, w] for this model: a fixed-shape export overrides a different request (with a warning)."""
        if self.fixed_shape and tuple(imgsz) != self.fixed_shape:
            LOGGER.warning(f"WARNING: {self.fmt} weights were exported at {list(self.fixed_shape)}; "
                           f"using --imgsz {list(self.fixed_shape)} instead of {imgsz}")
            return list(self.fixed_shape)
        return list(imgsz)
