"""Building blocks of YOLOv5 v6.0 models, plus the attention blocks and 1x1 adapter used for KD.

Compatibility: official checkpoints pickle instances of these classes. Unpickling restores
`__dict__` without calling `__init__`, so every `forward` below uses only the attribute names that
v6.0 pickles (conv/bn/act, cv1..cv4, m, add, d). Feature maps are (B, C, H, W) everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def autopad(k: int | list[int], p: int | list[int] | None = None) -> int | list[int]:
    """'same' padding for odd kernels (k // 2) unless p is given."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU. After Model.fuse() `bn` is gone and conv has a bias."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x):
        # Checking for `bn` (instead of swapping in a bound forward_fuse like v6.0 did) keeps fused
        # models picklable through the weights-only loader.
        bn = self._modules.get("bn")
        x = self.conv(x)
        return self.act(bn(x) if bn is not None else x)

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class DWConv(Conv):
    """Depth-wise convolution: Conv with groups = gcd(c1, c2)."""

    def __init__(self, c1, c2, k=1, s=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class Bottleneck(nn.Module):
    """1x1 Conv -> 3x3 Conv, with a residual add when shortcut and c1 == c2."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5, k=(1, 3)):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)  # k = (1, 3) in YOLOv5 blocks, (3, 3) inside C2f
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """Legacy CSP bottleneck (v4/v5 yamls); cv2/cv3 are plain bias-free Conv2d as in v6.0."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)  # applied to cat(cv3, cv2)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP bottleneck with 3 convs: cv3(cat[m(cv1(x)), cv2(x)]) (m-branch first, as v6.0)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling (v5.x): cv2(cat[x, pool5(x), pool9(x), pool13(x)]) after cv1."""

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: three chained k-pools, numerically equal to SPP(k, 2k-1, 3k-2).

    Checkpoints of the ultralytics package (8.4) pickle two more attributes, `n` (number of chained
    pools, 3) and `add` (residual, False); a file written without them means n=3, add=False.
    """

    n = 3
    add = False

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(self.n):
            y.append(self.m(y[-1]))
        out = self.cv2(torch.cat(y, 1))  # (B, (n+1)*c_, H, W) -> (B, c2, H, W)
        return out + x if self.add else out


class C2f(nn.Module):
    """CSP bottleneck with 2 convs (YOLOv8): cv1 splits into two halves, each Bottleneck extends the
    list from the last entry, cv2 merges all (2 + n) parts. Attribute names follow ultralytics (c, cv1,
    cv2, m) so its pickles map onto this class."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)  # hidden channels
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, e=1.0, k=(3, 3)) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))  # (B, 2c, H, W) -> 2 x (B, c, H, W)
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral (Li et al. 2020, arXiv:2006.04388): the expected value of a
    softmax over `c1` bins, as a frozen 1x1 conv whose weights are 0..c1-1.

    Input (B, 4*c1, A) box-edge logits; output (B, 4, A) distances in bins (grid units)."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        x = x.view(b, 4, self.c1, a).transpose(2, 1)  # (B, 4*c1, A) -> (B, c1, 4, A): softmax over bins
        # the bin values are fixed even if a freeze/unfreeze pass sets requires_grad on every parameter
        y = F.conv2d(x.softmax(1), self.conv.weight.detach())  # (B, 1, 4, A)
        return y.view(b, 4, a)


class Focus(nn.Module):
    """Space-to-depth (B, C, H, W) -> (B, 4C, H/2, W/2), then Conv (v5.x layer 0)."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along dimension d (channels by default)."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Conv1_1(nn.Module):
    """1x1 Conv2d (with bias) from c1 to c2 channels: a yaml layer or a KD feature adapter."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x):
        return self.conv(x)


# ---------------------------------------------------------------------------------------------------
# Attention blocks. Each keeps the channel count (c2 = c1) unless need11 is set: then a 1x1 conv
# `conv_match` maps c1 -> c2 before the attention (need11) or after it (need11 and reverse). The
# conv only exists when it is used, so every parameter receives a gradient.


class _Attention(nn.Module):
    """Shared need11/reverse plumbing; subclasses implement attend(x) on `width` channels."""

    def _setup(self, c1: int, c2: int | None, need11: bool, reverse: bool) -> int:
        if need11 and c2 is None:
            raise ValueError("need11=True needs the output channel count c2")
        if not need11 and c2 is not None and c2 != c1:
            raise ValueError(f"c2={c2} differs from c1={c1} but need11 is False (no 1x1 conv to change width)")
        self.need11, self.reverse = bool(need11), bool(reverse)
        self.c2 = c2 if need11 else c1
        if self.need11:
            self.conv_match = nn.Conv2d(c1, c2, kernel_size=1, stride=1, padding=0)
        return c2 if (need11 and not reverse) else c1  # channels the attention itself sees

    def forward(self, x):
        if self.need11 and not self.reverse:
            x = self.conv_match(x)
        x = self.attend(x)
        if self.need11 and self.reverse:
            x = self.conv_match(x)
        return x


class SELayer(_Attention):
    """Squeeze-and-excitation (Hu et al. 2018): x * sigmoid(MLP(avgpool(x)))."""

    def __init__(self, c1: int, r: int = 16, c2: int | None = None, need11: bool = False, reverse: bool = False):
        super().__init__()
        c = self._setup(c1, c2, need11, reverse)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.l1 = nn.Linear(c, max(c // r, 1), bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.l2 = nn.Linear(max(c // r, 1), c, bias=False)
        self.sig = nn.Sigmoid()

    def attend(self, x):
        b, c = x.shape[:2]
        y = self.avgpool(x).view(b, c)  # (B, C, 1, 1) -> (B, C)
        y = self.sig(self.l2(self.relu(self.l1(y))))
        return x * y.view(b, c, 1, 1)


class ChannelAttention(nn.Module):
    """CBAM channel attention: x * sigmoid(MLP(avgpool x) + MLP(maxpool x)), shared 1x1-conv MLP."""

    def __init__(self, c1: int, ratio: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(c1, max(c1 // ratio, 1), 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(max(c1 // ratio, 1), c1, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return x * self.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: x * sigmoid(conv_kxk(cat[mean_c x, max_c x]))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        return x * self.sigmoid(self.conv1(torch.cat((avg_out, max_out), 1)))  # (B, 2, H, W) -> (B, 1, H, W)


class ASCBAM(_Attention):
    """CBAM (Woo et al. 2018): channel attention followed by spatial attention."""

    def __init__(self, c1: int, ratio: int = 4, c2: int | None = None, need11: bool = False, reverse: bool = False,
                 kernel_size: int = 7):
        super().__init__()
        c = self._setup(c1, c2, need11, reverse)
        self.ca = ChannelAttention(c, ratio)
        self.sa = SpatialAttention(kernel_size)

    def attend(self, x):
        return self.sa(self.ca(x))


class h_sigmoid(nn.Module):
    """Hard sigmoid relu6(x + 3) / 6."""

    def forward(self, x):
        return F.relu6(x + 3) / 6


class h_swish(nn.Module):
    """Hard swish x * relu6(x + 3) / 6 (its own module so CABlock pickles stay self-contained)."""

    def __init__(self):
        super().__init__()
        self.sigmoid = h_sigmoid()

    def forward(self, x):
        return x * self.sigmoid(x)


class CABlock(_Attention):
    """Coordinate attention (Hou et al. 2021): x * a_h(H-pooled) * a_w(W-pooled)."""

    def __init__(self, c1: int, reduction: int = 32, c2: int | None = None, need11: bool = False,
                 reverse: bool = False):
        super().__init__()
        c = self._setup(c1, c2, need11, reverse)
        mip = max(8, c // reduction)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv1 = nn.Conv2d(c, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()
        self.conv_h = nn.Conv2d(mip, c, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, c, kernel_size=1, stride=1, padding=0)

    def attend(self, x):
        h, w = x.shape[2:]
        x_h = self.pool_h(x)  # (B, C, H, 1)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)  # (B, C, 1, W) -> (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat((x_h, x_w), dim=2))))  # (B, mip, H+W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()  # (B, C, H, 1)
        a_w = self.conv_w(y_w.permute(0, 1, 3, 2)).sigmoid()  # (B, C, 1, W)
        return x * a_w * a_h
