"""PyTorch helpers: devices, Conv+BN fusion, weight init, model summaries and FLOPs, EMA, early stop."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from copy import deepcopy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from utils.general import LOGGER, UserError


def select_device(device: str | int = "", batch_size: int | None = None) -> torch.device:
    """'' (CUDA 0 if available else CPU), 'cpu', '0', '0,1', 'cuda:0' -> torch.device.

    A CUDA request on a machine without CUDA, or a batch size not divisible by the GPU count, is a
    UserError. Never writes environment variables (no CUDA_VISIBLE_DEVICES side effects).
    """
    s = str(device).strip().lower().replace("cuda:", "").replace("none", "")
    if s == "cpu":
        return torch.device("cpu")
    if s and not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but CUDA is not available on this machine; use --device cpu")
    if not s:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ids = [x for x in s.split(",") if x]
    if not all(x.isdigit() and int(x) < torch.cuda.device_count() for x in ids):
        raise UserError(f"--device {device}: invalid CUDA ids, {torch.cuda.device_count()} GPU(s) visible")
    if batch_size and len(ids) > 1 and batch_size % len(ids):
        raise UserError(f"--batch-size {batch_size} must be a multiple of the GPU count {len(ids)}")
    return torch.device(f"cuda:{ids[0]}")


_ISA_ORDER = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
              "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16",
              "AVX512_CORE_AMX_FP16")


def native_bf16_cpu() -> bool:
    """True when this CPU multiplies bf16 natively (avx512_bf16 or AMX) and oneDNN may use it.

    Without those instructions bf16 convolutions are emulated and slower than float32, so 'auto'
    precision choices stay float32 there. DNNL_MAX_CPU_ISA below AVX512_CORE_BF16 (a user or CI capping
    the instruction set) also means no native bf16."""
    import os

    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no reliable probe, stay float32
        return False
    if not ({"avx512_bf16", "amx_bf16"} & set(flags)):
        return False
    cap = os.environ.get("DNNL_MAX_CPU_ISA", "").strip().upper()
    if cap and cap != "ALL":
        order = {isa: i for i, isa in enumerate(_ISA_ORDER)}
        return order.get(cap, -1) >= order["AVX512_CORE_BF16"]
    return True


TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_teacher_dtype(choice: str, device: torch.device) -> torch.dtype:
    """--teacher_dtype: 'auto' is fp16 on CUDA, bf16 on a CPU with native bf16, else fp32.

    The teacher only runs forward without gradients, so reduced precision costs it nothing but rounding
    (relative ~4e-3 for bf16, ~5e-4 for fp16) in the targets the student imitates."""
    choice = str(choice).lower()
    if choice == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_bf16_cpu() else torch.float32
    if choice not in TEACHER_DTYPES:
        raise UserError(f"--teacher_dtype {choice}: choose one of auto, {', '.join(TEACHER_DTYPES)}")
    dtype = TEACHER_DTYPES[choice]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--teacher_dtype fp16 needs a CUDA device; on CPU use bf16 (fast only where the CPU has "
                        "avx512_bf16 or AMX) or fp32")
    return dtype


def to_contiguous_format(model: nn.Module) -> nn.Module:
    """Undo to_channels_last (checkpoints are written in the usual NCHW layout)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous()
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 4-d conv weight channels_last (NHWC): cuDNN then picks its NHWC kernels, which use the
    tensor cores without layout transposes. Other tensors (anchors, grids, biases) are left as they are,
    unlike model.to(memory_format=...), which fails on the Detect grids."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


def time_sync() -> float:
    """time.time() after waiting for queued CUDA work (accurate timings)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


def is_parallel(model: nn.Module) -> bool:
    return type(model) in (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)


def de_parallel(model: nn.Module) -> nn.Module:
    """The underlying module of a DP/DDP wrapper (the model itself otherwise)."""
    return model.module if is_parallel(model) else model


def intersect_dicts(da: dict, db: dict, exclude: tuple | list = ()) -> dict:
    """Entries of da whose key is in db with the same shape and contains no `exclude` substring."""
    return {k: v for k, v in da.items() if k in db and not any(x in k for x in exclude) and v.shape == db[k].shape}


def initialize_weights(model: nn.Module) -> None:
    """v6.0 init: default Conv2d init; BatchNorm2d eps=1e-3, momentum=0.03; in-place activations."""
    for m in model.modules():
        t = type(m)
        if t is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
        elif t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6):
            m.inplace = True


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One Conv2d (with bias) equal to bn(conv(x)) in eval mode; parameters are frozen."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    fused = fused.requires_grad_(False).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():  # else copy_ from parameters that require grad makes fused.weight a non-leaf
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (c2,)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        b_conv = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((b_conv - bn.running_mean) * scale + bn.bias)
    return fused


def _input_channels(model: nn.Module) -> int:
    yaml = getattr(model, "yaml", None)
    if isinstance(yaml, dict) and "ch" in yaml:
        return int(yaml["ch"])
    return next(model.parameters()).shape[1]  # first conv weight (c2, c1, k, k)


def get_flops(model: nn.Module, imgsz: int | list[int] = 640) -> float:
    """GFLOPs of one forward at imgsz (int or [h, w]), counted by torch.utils.flop_counter.

    The count runs on 'meta' copies of the weights (no real compute, no effect on `model`) at the
    full size, so attention blocks whose cost does not scale with H*W are counted exactly.
    FlopCounterMode counts matmul/conv FLOPs (2 per multiply-add), not element-wise ops.
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    model = de_parallel(model)
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    m = deepcopy(model, memo).to("meta").train()  # train mode: Detect skips decoding (no grid caches)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(torch.empty(1, _input_channels(model), h, w, device="meta"))
    return counter.get_total_flops() / 1e9


def model_info(model: nn.Module, verbose: bool = False, img_size: int | list[int] = 640) -> dict:
    """Log 'Model Summary: L layers, P parameters, G gradients, F GFLOPs'; return those numbers.

    Layers = len(list(model.modules())) as in v6.0; gradients = parameters with requires_grad.
    """
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    n_l = len(list(model.modules()))
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} {'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            name = name.replace("module_list.", "")
            LOGGER.info(f"{i:5g} {name:>40} {p.requires_grad!s:>9} {p.numel():12g} {list(p.shape)!s:>20} "
                        f"{p.mean():10.3g} {p.std() if p.numel() > 1 else 0.0:10.3g}")
    try:
        gflops = get_flops(model, img_size)
        fs = f", {gflops:.1f} GFLOPs"
    except Exception as e:  # noqa: BLE001  (a module FlopCounterMode cannot trace must not break a summary)
        gflops, fs = None, ""
        LOGGER.debug(f"GFLOPs not computed: {e}")
    LOGGER.info(f"Model Summary: {n_l} layers, {n_p} parameters, {n_g} gradients{fs}")
    return {"layers": n_l, "parameters": n_p, "gradients": n_g, "gflops": gflops}


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize a (B, C, H, W) batch by ratio (bilinear) and pad right/bottom to a gs multiple with 0.447."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)  # 0.447 = ImageNet mean


def copy_attr(a: object, b: object, include: tuple = (), exclude: tuple = ()) -> None:
    """Copy public attributes of b onto a (only `include` when given, never `exclude`)."""
    for k, v in b.__dict__.items():
        if (include and k not in include) or k.startswith("_") or k in exclude:
            continue
        setattr(a, k, v)


class ModelEMA:
    """Exponential moving average of a model's state_dict (v6.0 §8.4).

    decay(updates) = decay * (1 - exp(-updates / 2000)); every floating-point entry of the state_dict
    (parameters, BN running stats, the anchors buffer) becomes d * ema + (1 - d) * model. Integer
    entries (num_batches_tracked) are left alone. The EMA copy is FP32, in eval mode, frozen.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_base = decay
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int) -> float:
        return self.decay_base * (1 - math.exp(-updates / 2000))

    def update(self, model: nn.Module) -> None:
        with torch.no_grad():
            self.updates += 1
            d = self.decay(self.updates)
            msd = de_parallel(model).state_dict()
            ema, live = [], []
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    ema.append(v)
                    live.append(msd[k].detach().to(v.dtype))
            # one fused kernel per step over all tensors (foreach) instead of two launches per tensor
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, live, alpha=1 - d)

    def update_attr(self, model: nn.Module, include: tuple = ("yaml", "nc", "hyp", "names", "stride", "class_weights"),
                    exclude: tuple = ("process_group", "reducer")) -> None:
        copy_attr(self.ema, model, include, exclude)


class EarlyStopping:
    """Stop when fitness has not improved for `patience` epochs (0 = never), v6.0 §8.6."""

    def __init__(self, patience: int = 30):
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.patience = patience or float("inf")
        self.possible_stop = False  # True when the next epoch may stop training

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:  # >= so that a plateau at 0 early on keeps moving best_epoch
            self.best_epoch = epoch
            self.best_fitness = fitness
        delta = epoch - self.best_epoch
        self.possible_stop = delta >= (self.patience - 1)
        stop = delta >= self.patience
        if stop:
            LOGGER.info(f"Stopping training early as no improvement observed in last {self.patience} epochs. "
                        f"Best results observed at epoch {self.best_epoch}, best model saved as best.pt.\n"
                        f"To update EarlyStopping(patience={self.patience}) pass a new patience value, "
                        f"i.e. `python train.py --patience 300` or use `--patience 0` to disable EarlyStopping.")
        return stop


@contextmanager
def torch_distributed_zero_first(local_rank: int):
    """Make every DDP process wait until rank 0 has done the enclosed work (e.g. caching a dataset)."""
    if local_rank not in (-1, 0):
        dist.barrier(device_ids=[local_rank])
    yield
    if local_rank == 0:
        dist.barrier(device_ids=[0])
