"""An MLP for vectors (2-D toy sets, low-dimensional mixtures): residual blocks
h <- h + W2 SiLU(W1 LN(h) + emb), with a time (and optional class) embedding.

Input of any shape (batch, *event_shape) is flattened to (batch, dim) and the output reshaped back.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .common import ClassEmbedding, TimeEmbedding, check_time_batch

Tensor = torch.Tensor


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        u = F.silu(self.fc1(self.norm(h)) + self.emb(F.silu(emb)))
        return h + self.fc2(self.drop(u))


class MLP(nn.Module):
    """Residual MLP ``net(x, t, y=None) -> tensor shaped like x``.

    dim: number of features of x (its event shape flattened); width: hidden width; depth: residual
    blocks; num_classes: optional class conditioning with a null class (index num_classes or y=None);
    time_embedding / time_scale: as in ``TimeEmbedding``.
    """

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, dropout: float = 0.0,
                 num_classes: Optional[int] = None, time_embedding: str = "sinusoidal",
                 time_scale: float = 1000.0, emb_dim: int = 64):
        super().__init__()
        self.config = {
            "type": "MLP", "dim": int(dim), "width": int(width), "depth": int(depth), "dropout": float(dropout),
            "num_classes": None if num_classes is None else int(num_classes),
            "time_embedding": time_embedding, "time_scale": float(time_scale), "emb_dim": int(emb_dim),
        }
        self.dim = dim
        self.num_classes = num_classes
        self.null_class = num_classes
        self.time_emb = TimeEmbedding(emb_dim, width, kind=time_embedding, time_scale=time_scale)
        self.class_emb = ClassEmbedding(num_classes, width) if num_classes is not None else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([_Block(width, dropout) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] != self.dim:
            raise ValueError(f"MLP was built for {self.dim} features; x has shape {tuple(x.shape)}")
        t = check_time_batch(x, t)
        emb = self.time_emb(t)
        if self.class_emb is not None:
            emb = emb + self.class_emb(y, x.shape[0], x.device)
        elif y is not None:
            raise ValueError("this MLP has no class conditioning (num_classes=None) but y was given")
        emb = emb.to(x.dtype)
        h = self.inp(xf)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h))).reshape(x.shape)
