"""A U-Net for images (DDPM / NCSN++ family, written small): residual blocks with GroupNorm and a
time (and optional class) embedding, self-attention at chosen levels, strided-conv down- and
nearest-neighbour up-sampling, and skip connections from every block of the down path.

Any spatial size works: the input is zero-padded on the bottom/right to a multiple of
2^(levels - 1) and the output cropped back, so 8x8 digits, 7x7 or 28x28 images all pass.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import ClassEmbedding, TimeEmbedding, check_time_batch

Tensor = torch.Tensor


def _groups(ch: int, max_groups: int = 32, min_size: int = 4) -> int:
    """Number of GroupNorm groups: at most 32, at least ``min_size`` channels each where possible."""
    g = max(1, min(max_groups, ch // min_size))
    while ch % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = conv(dropout(SiLU(GN(h) (1 + scale) + shift))); out = skip(x) + h,
    with (scale, shift) = proj(SiLU(emb)) (the scale-shift norm of Dhariwal & Nichol 2021, so a
    normalisation cannot erase the time/class signal)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the spatial positions, residual."""

    def __init__(self, ch: int, heads: int = 1):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention channels {ch} not divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(o.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """U-Net ``net(x, t, y=None) -> tensor shaped like x``.

    in_channels / out_channels: image channels (out defaults to in).
    base_channels: width at level 0; level i has base_channels * channel_mult[i] channels and
        resolution size / 2^i.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attn_levels: level indices with self-attention after each residual block (the middle block
        always has one attention layer).
    dropout: in every residual block.
    num_classes: if set, adds a class embedding with a null class (index num_classes, or y=None)
        for classifier-free guidance.
    time_embedding: "sinusoidal" (of time_scale * t) or "fourier" (random features).
    """

    def __init__(self, in_channels: int = 1, out_channels: Optional[int] = None, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_levels: Sequence[int] = (1,), dropout: float = 0.0, num_classes: Optional[int] = None,
                 time_embedding: str = "sinusoidal", time_scale: float = 1000.0, heads: int = 1):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult, attn_levels = tuple(int(m) for m in channel_mult), tuple(int(a) for a in attn_levels)
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        if any(a < 0 or a >= len(channel_mult) for a in attn_levels):
            raise ValueError(f"attn_levels must index levels 0..{len(channel_mult) - 1}; got {attn_levels}")
        self.config = {
            "type": "UNet", "in_channels": int(in_channels), "out_channels": int(out_channels),
            "base_channels": int(base_channels), "channel_mult": list(channel_mult),
            "num_res_blocks": int(num_res_blocks), "attn_levels": list(attn_levels), "dropout": float(dropout),
            "num_classes": None if num_classes is None else int(num_classes),
            "time_embedding": time_embedding, "time_scale": float(time_scale), "heads": int(heads),
        }
        self.num_classes = num_classes
        self.null_class = num_classes
        emb_dim = 4 * base_channels
        self.time_emb = TimeEmbedding(base_channels, emb_dim, kind=time_embedding, time_scale=time_scale)
        self.class_emb = ClassEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.levels = len(channel_mult)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [base_channels]
        ch = base_channels
        for i, m in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                cout = base_channels * m
                self.down.append(nn.ModuleList([ResBlock(ch, cout, emb_dim, dropout),
                                                Attention(cout, heads) if i in attn_levels else nn.Identity()]))
                ch = cout
                skip_ch.append(ch)
            if i < self.levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_ch.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = Attention(ch, heads)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                cout = base_channels * m
                self.up.append(nn.ModuleList([ResBlock(ch + skip_ch.pop(), cout, emb_dim, dropout),
                                              Attention(cout, heads) if i in attn_levels else nn.Identity()]))
                ch = cout
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape (batch, channels, height, width); got {tuple(x.shape)}")
        t = check_time_batch(x, t)
        emb = self.time_emb(t)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("this UNet has no class conditioning (num_classes=None) but y was given")
        emb = emb.to(x.dtype)
        H, W = x.shape[-2:]
        mult = 2 ** (self.levels - 1)
        ph, pw = (-H) % mult, (-W) % mult
        h = F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x
        h = self.conv_in(h)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](h, emb))
            else:
                h = layer(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, skips.pop()], dim=1), emb))
            else:
                h = layer(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :H, :W]
