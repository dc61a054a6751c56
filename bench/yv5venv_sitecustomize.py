"""sitecustomize.py for the public-YOLOv5 benchmark venv ONLY (bench/bench_vs_yolov5.sh).

`bash bench/bench_vs_yolov5.sh --setup` copies this file to the venv's site-packages as sitecustomize.py,
which Python imports at start-up of that venv's interpreter and nowhere else.  Nothing in this
repository imports it.  It adapts the public yolov5==7.0.14 pip package to this machine's CPU torch
2.13 / numpy 2.4 / Pillow 13 without touching those packages, in two independent parts.

Part 1, torchvision NMS.

Why: PyPI's torchvision==0.28.0 wheel (the release paired with torch 2.13.0) is built against CUDA torch;
its compiled ops library torchvision/_C.so needs libtorch_cuda.so / libc10_cuda.so, which the CPU wheel
torch==2.13.0+cpu does not ship, so _C.so cannot be loaded.  Without it `import torchvision` itself fails
(torchvision/_meta_registrations.py registers a fake kernel for the op "torchvision::nms", which then
does not exist), and torchvision.ops.nms would raise "Couldn't load custom C++ ops".

What this does, and only when torchvision's own compiled ops fail to load:
  1. it defines the two op schemas that torchvision's Python code needs at import time,
     torchvision::nms and torchvision::qnms (same signatures as torchvision's C++), with a CPU kernel
     for nms that is the pure-torch greedy NMS below (qnms raises NotImplementedError);
  2. after torchvision has been imported, it replaces torchvision.ops.nms and torchvision.ops.boxes.nms
     (the latter is what batched_nms calls) by that pure-torch NMS.
Nothing else in torchvision is touched; the other compiled ops (roi_align, deform_conv2d, ...) stay
unavailable, and public YOLOv5's detection train/val path does not use them.

It costs nothing until something imports torchvision: a meta-path finder waits for that import.
When torchvision's own _C.so loads (a matching CPU or CUDA torch), the shim does nothing at all.
Set YV5_NMS_SHIM=0 to disable it; YV5_NMS_SHIM_VERBOSE=1 prints one line when it activates.

The NMS (shim_nms: greedy_nms run on one torch thread, like torchvision's sequential CPU kernel) is
exact greedy NMS with torchvision's semantics: boxes (x1, y1, x2, y2), scores sorted descending, a box
is dropped when its IoU with a kept higher-scoring box is > iou_threshold, the result is int64 indices
in decreasing score order.  Boxes whose x ranges do not overlap cannot suppress each other, so it first
splits the candidates into such independent groups (batched NMS offsets every class by a large
constant, so each class is at least one group).  Within a group it works on blocks of candidates in
score order: inside a block the greedy keep mask is the fixed point of
keep[j] = not any(keep[i] and iou[i, j] > t for i < j), reached by iterating from all-True (each pass
settles at least one more leading element, so the result is exact), then the kept boxes of the block
remove the candidates they suppress from the rest of the group in one vectorised IoU test.  Checked
equal to a plain sequential float64 greedy NMS on 160 random cases (up to 3000 boxes, with and without
class offsets, several block/pack sizes).

Part 2, two API aliases for yolov5 7.0.14 on this machine's newer numpy / Pillow, applied
when the `yolov5` package is first imported (so never in other programs), only where the name is missing:
  * numpy.trapz = numpy.trapezoid.  numpy 2.0 renamed trapz to trapezoid and numpy 2.4 removed the old
    name; yolov5/utils/metrics.py compute_ap() calls np.trapz (a fatal AttributeError at the first val).
  * PIL.ImageFont.FreeTypeFont.getsize(text) -> (right, bottom) of getbbox(text).  Pillow 10 removed
    getsize; yolov5/utils/plots.py Annotator uses it to size box labels in plotted images (an
    AttributeError in the plotting thread otherwise, which silently skips those plots).
Both keep the system numpy 2.4 / Pillow 13 (the same ones the compared repository uses) instead of
installing older releases into the venv.  Set YV5_COMPAT_SHIM=0 to disable this part.
"""

import importlib.abc
import importlib.machinery
import os
import sys

_ACTIVE = False  # True once the shim has replaced torchvision's nms
_LIB = None  # torch.library.Library holding the op definitions; must stay alive


def greedy_nms(boxes, scores, iou_threshold, block=128, pack=1024):
    """Greedy NMS, torchvision.ops.nms semantics; int64 indices of kept boxes, highest score first."""
    import torch

    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order]  # everything below works on positions in this score order
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1) * (y2 - y1)

    def iou(a_idx, c_idx):  # IoU matrix between position sets a (rows) and c (columns)
        ix1 = torch.maximum(x1[a_idx, None], x1[None, c_idx])
        iy1 = torch.maximum(y1[a_idx, None], y1[None, c_idx])
        ix2 = torch.minimum(x2[a_idx, None], x2[None, c_idx])
        iy2 = torch.minimum(y2[a_idx, None], y2[None, c_idx])
        inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
        return inter / (area[a_idx, None] + area[None, c_idx] - inter)

    def greedy(remaining):  # exact greedy over the given positions (ascending = score order)
        kept = []
        while remaining.numel():
            blk, rest = remaining[:block], remaining[block:]
            over = torch.triu(iou(blk, blk) > iou_threshold, diagonal=1)  # [i, j]: earlier i hits later j
            keep = torch.ones(blk.numel(), dtype=torch.bool, device=blk.device)
            while True:  # fixed point of keep[j] = not any(keep[i] & over[i, j])
                new = ~(over & keep[:, None]).any(0)
                if torch.equal(new, keep):
                    break
                keep = new
            k = blk[keep]
            kept.append(k)
            if rest.numel():
                rest = rest[~(iou(k, rest) > iou_threshold).any(0)]
            remaining = rest
        return torch.cat(kept)

    # Boxes whose x ranges do not overlap have IoU 0 and cannot suppress each other, so NMS splits into
    # independent groups: sort by x1, a group starts where x1 >= the largest x2 seen so far.  (Batched
    # NMS offsets each class by a large constant, so classes always fall into different groups.)  Groups
    # that follow each other in x are packed together up to `pack` boxes to bound the Python overhead;
    # greedy NMS of a union of independent groups equals the union of their separate results.
    if n > pack:
        xs = torch.argsort(x1, stable=True)
        sx1, sx2 = x1[xs], x2[xs]
        reach = torch.cummax(sx2, 0).values
        start = torch.ones(n, dtype=torch.bool, device=b.device)
        start[1:] = sx1[1:] >= reach[:-1]
        pos = torch.arange(n, device=b.device)
        group_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
        pack_id = torch.empty_like(pos)
        pack_id[xs] = torch.div(group_start, pack, rounding_mode="floor")
        packs = [torch.nonzero(pack_id == p).flatten() for p in torch.unique(pack_id).tolist()]
    else:
        packs = [torch.arange(n, device=b.device)]
    kept = torch.cat([greedy(p) for p in packs])
    return order[torch.sort(kept).values]


def shim_nms(boxes, scores, iou_threshold):
    """What torchvision.ops.nms becomes: greedy_nms on one torch thread.  torchvision's CPU kernel is a
    sequential C++ loop too, and with the default 2 threads these small ops mostly wait for each other
    (measured 17 ms against 6 ms an image for 8000 candidates on a busy 2-core machine)."""
    import torch

    prev = torch.get_num_threads()
    if prev != 1:
        torch.set_num_threads(1)
    try:
        return greedy_nms(boxes, scores, float(iou_threshold))
    finally:
        if prev != 1:
            torch.set_num_threads(prev)


def _torchvision_c_loads():
    """True when torchvision's own compiled ops library loads against this torch."""
    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision here: nothing to fix
    import torch

    for d in spec.submodule_search_locations:
        for name in os.listdir(d):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(d, name))
                    return True
                except (OSError, RuntimeError):  # ctypes: missing libtorch_cuda.so etc.
                    return False
    return False


def _define_ops():
    global _LIB
    import torch

    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.impl("nms", shim_nms, "CPU")

    def _qnms(dets, scores, iou_threshold):
        raise NotImplementedError("quantized NMS is not available in the yv5venv torchvision shim")

    _LIB.impl("qnms", _qnms, "CPU")


def _patch_torchvision(tv):
    global _ACTIVE

    import torchvision.ops.boxes as tvboxes

    tv.ops.nms = shim_nms
    tvboxes.nms = shim_nms
    _ACTIVE = True
    if os.environ.get("YV5_NMS_SHIM_VERBOSE", "0") == "1":
        print("yv5venv shim: torchvision._C not loadable on this torch; using pure-torch greedy NMS",
              file=sys.stderr)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _patch_torchvision(module)


def _yolov5_compat():
    import numpy
    from PIL import ImageFont

    if not hasattr(numpy, "trapz") and hasattr(numpy, "trapezoid"):
        numpy.trapz = numpy.trapezoid
    if not hasattr(ImageFont.FreeTypeFont, "getsize"):
        def getsize(self, text, *args, **kwargs):
            _, _, right, bottom = self.getbbox(text, *args, **kwargs)
            return right, bottom

        ImageFont.FreeTypeFont.getsize = getsize


class _CompatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        """Apply the aliases just before yolov5 is imported; returning None lets the normal finders
        import it."""
        if fullname == "yolov5":
            sys.meta_path.remove(self)  # one shot
            _yolov5_compat()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # one shot
        if _torchvision_c_loads():
            return None  # torchvision works as shipped: leave it alone
        _define_ops()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if os.environ.get("YV5_NMS_SHIM", "1") != "0" and "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _Finder())
if os.environ.get("YV5_COMPAT_SHIM", "1") != "0" and "yolov5" not in sys.modules:
    sys.meta_path.insert(0, _CompatFinder())
