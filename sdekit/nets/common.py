"""Pieces shared by the networks: the time embedding and the class embedding with a null class."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor


class TimeEmbedding(nn.Module):
    """Sinusoidal ("positional", Vaswani et al. 2017 / DDPM) or random Fourier (Tancik et al. 2020,
    used by Song et al. 2021 for the VE SDE) features of a continuous time, followed by an MLP.

    sinusoidal: e(t) = [sin(s t w_k), cos(s t w_k)], w_k = exp(-log(10000) k / (dim/2)), s = ``time_scale``
                (1000 by default, so t in [0, 1] covers the range a DDPM index 0..999 would);
    fourier:    e(t) = [sin(2 pi t W), cos(2 pi t W)], W ~ N(0, fourier_scale^2) fixed at construction
                (a buffer: it is saved with the weights).
    """

    freqs: Tensor  # a buffer, registered in __init__

    def __init__(self, dim: int, out_dim: int, kind: str = "sinusoidal", time_scale: float = 1000.0,
                 fourier_scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even; got {dim}")
        if kind not in ("sinusoidal", "fourier"):
            raise ValueError(f"unknown time embedding {kind!r}; accepted: sinusoidal, fourier")
        self.kind, self.dim, self.time_scale = kind, dim, float(time_scale)
        half = dim // 2
        if kind == "sinusoidal":
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        else:
            gen = torch.Generator().manual_seed(0)
            freqs = 2 * math.pi * fourier_scale * torch.randn(half, generator=gen)
        self.register_buffer("freqs", freqs)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        if t.ndim != 1:
            raise ValueError(f"t must have shape (batch,); got {tuple(t.shape)}")
        scale = self.time_scale if self.kind == "sinusoidal" else 1.0
        arg = (t.float() * scale).unsqueeze(1) * self.freqs.unsqueeze(0)
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        return self.mlp(emb)


class ClassEmbedding(nn.Module):
    """Learned class embedding with one extra row for the null class (index ``num_classes``), used
    for classifier-free guidance: y = None, or entries equal to ``num_classes`` (or -1), mean
    "unconditional"."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.num_classes = int(num_classes)
        self.emb = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Optional[Tensor], batch: int, device) -> Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            y = torch.as_tensor(y, device=device)
            if y.ndim == 0:
                y = y.expand(batch)
            if y.shape != (batch,):
                raise ValueError(f"y must have shape (batch,) = ({batch},); got {tuple(y.shape)}")
            if y.dtype.is_floating_point:
                if not bool((y == y.round()).all()):
                    raise ValueError("class labels must be integers")
            y = y.long()
            y = torch.where(y < 0, torch.full_like(y, self.num_classes), y)
            if bool((y > self.num_classes).any()):
                raise ValueError(
                    f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class) or be -1")
        return self.emb(y)


def check_time_batch(x: Tensor, t: Tensor) -> Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},); got {tuple(t.shape)}")
    return t
