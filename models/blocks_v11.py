"""Building blocks of the YOLO11 family (ultralytics' default detector since 2024): C3k2, C3k, C2PSA,
PSABlock and its Attention, and what YOLO26 adds to them: C3k2's attention variant (4th yaml argument) and
SPPFn, the SPPF with YOLO26's extra arguments. Written from their definitions; the depth-wise conv they use
is models.common.DWConv.

Compatibility: ultralytics checkpoints pickle these modules, and models/checkpoint.py maps each pickled
`ultralytics.nn.modules.block.<Name>` onto the class of the same name here. Unpickling restores
`__dict__` without calling `__init__`, so every `forward` below reads only the attributes ultralytics
pickles: C3k2/C2PSA `c, cv1, cv2, m`; C3k `cv1, cv2, cv3, m`; PSABlock `attn, ffn, add`; Attention
`num_heads, head_dim, key_dim, scale, qkv, proj, pe`. Feature maps are (B, C, H, W) everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import C3, SPPF, Bottleneck, C2f, Conv


class C3k(C3):
    """C3 whose bottlenecks use k x k convolutions on both sides (YOLO11): cv3(cat[m(cv1(x)), cv2(x)])."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5, k: int = 3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, k=(k, k)) for _ in range(n)))


class C3k2(C2f):
    """C2f (split, extend, merge) whose inner blocks are either Bottlenecks with a halved middle width
    (c3k False: 3x3 c -> c/2 -> c) or C3k blocks of two 3x3 bottlenecks (c3k True, YOLO11 m/l/x and the
    deeper n/s stages), or, with attn True (YOLO26's last neck stage), a Bottleneck followed by a PSABlock
    (heads of 64 channels, at least one). n = the number of inner blocks. The argument order is ultralytics'
    (c1, c2, n, c3k, e, attn, g, shortcut), so a yaml row [c2, c3k, e, attn] means the same here."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, attn: bool = False,
                 g: int = 1, shortcut: bool = True):
        super().__init__(c1, c2, n, shortcut, g, e)
        c = self.c

        def block() -> nn.Module:
            if attn:
                return nn.Sequential(Bottleneck(c, c, shortcut, g, e=0.5, k=(3, 3)),
                                     PSABlock(c, attn_ratio=0.5, num_heads=max(c // 64, 1)))
            if c3k:
                return C3k(c, c, 2, shortcut, g)
            return Bottleneck(c, c, shortcut, g, e=0.5, k=(3, 3))

        self.m = nn.ModuleList(block() for _ in range(n))


class SPPFn(SPPF):
    """SPPF with YOLO26's arguments (c1, c2, k, n, shortcut): n chained k x k pools (n + 1 maps into cv2), a
    residual add when shortcut and c1 == c2, and a linear cv1 (no activation), as ultralytics builds SPPF
    whenever the yaml gives n and shortcut. With the short form [c2, k] (YOLOv5/v8/YOLO11 yamls) the parser
    keeps models.common.SPPF, whose cv1 has the SiLU. Pickled attributes as SPPF: cv1, cv2, m, n, add."""

    def __init__(self, c1: int, c2: int, k: int = 5, n: int = 3, shortcut: bool = False):
        nn.Module.__init__(self)  # SPPF.__init__ would build a cv1 and cv2 of the short form first
        if n < 1:
            raise ValueError(f"SPPF n={n}: at least one pooling step is needed")
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, act=False)
        self.cv2 = Conv(c_ * (n + 1), c2, 1, 1)  # (B, (n+1)*c_, H, W) -> (B, c2, H, W)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.n = n
        self.add = bool(shortcut) and c1 == c2


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with 1x1 convolutions for the
    projections and a depth-wise 3x3 positional term on the values (YOLO11's PSA attention).

    Per head: queries and keys have key_dim = head_dim * attn_ratio channels, values head_dim; the output is
    proj(attention(v) + pe(v)), c -> c. No activation on qkv, proj or pe."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"Attention: {dim} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5  # dot products of key_dim-channel vectors
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        # (B, C + 2*heads*key_dim, H, W) -> (B, heads, 2*key_dim + head_dim, N): per head q, k, v stacked
        qkv = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, n)
        q, k, v = qkv.split((self.key_dim, self.key_dim, self.head_dim), dim=2)
        weights = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)  # (B, heads, N query, N key)
        out = (v @ weights.transpose(-2, -1)).view(b, c, h, w)  # (B, heads, head_dim, N) -> (B, C, H, W)
        return self.proj(out + self.pe(v.reshape(b, c, h, w)))


class PSABlock(nn.Module):
    """Position-sensitive attention block: x + attn(x), then + ffn (1x1 c -> 2c -> c), residual when add."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True):
        super().__init__()
        self.attn = Attention(c, num_heads=num_heads, attn_ratio=attn_ratio)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """CSP block with PSA: cv1 splits into halves a and b (c = c1 * e channels each), n PSABlocks refine b
    (heads of 64 channels), cv2 merges cat[a, b]. Keeps the width: c2 must equal c1."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        if c1 != c2:
            raise ValueError(f"C2PSA keeps the channel count, but c1={c1} and c2={c2}; give the incoming width")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        # 64 channels per head as in YOLO11 (every official scale has c >= 128); at least one head for the
        # narrow models a test or a custom width may build
        heads = max(self.c // 64, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=heads) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)  # (B, 2c, H, W) -> 2 x (B, c, H, W)
        return self.cv2(torch.cat((a, self.m(b)), 1))
