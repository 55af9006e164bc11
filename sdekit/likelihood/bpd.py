"""Bits per dimension (post-processing, ``bits_per_dim``) and dequantisation (pre-processing, ``dequantize``).

One convention, shared with ``sdekit.data.dequantize`` and the CLI. A value x of discrete data stands for
the bin of width a centred on it, [x - a/2, x + a/2); with ``bits`` the levels are x = lo + a (u + 1/2),
u in {0, ..., 2^bits - 1}, a = (hi - lo) / 2^bits, so the bins tile [lo, hi]. Dequantising draws
v = x + a (delta - 1/2), delta ~ U[0, 1)^D; by Jensen log P(u) >= E_delta[log p(v)] + D log a, so

    bpd = -(E_delta[log p_X(v)] + D log a) / (D log 2)

bounds the code length -log2 P(u) / D and is >= 0 when the expectation is taken (``dequantize=True,
repeats=R``: R draws). The bin width is (hi - lo) / 2^bits, or ``data_scale`` for data whose levels
are not a power of two (the digits: a = 1/8). For continuous data bpd = -(log p_X(x) + D log data_scale)
/ (D log 2), the data y relating to the model's x by x = data_scale * y + shift (data_scale = 1 by default).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch

from ..data import dequantize as dequantize_bins
from ..noise import RowNoise
from ..validate import integer
from .config import LikelihoodConfig, bin_width

Tensor = torch.Tensor

__all__ = ["bits_per_dim", "dequantize", "warn_negative", "NegativeBPDWarning"]


class NegativeBPDWarning(UserWarning):
    """A negative bits/dim on discrete data: the density was evaluated without (enough) dequantisation."""


def bits_per_dim(log_prob: Tensor, dim: int, *, bits: Optional[int] = None,
                 data_range: Sequence[float] = (-1.0, 1.0), data_scale: Optional[float] = None,
                 warn: bool = True) -> Tensor:
    """Bits per dimension from a model-space log-density (nats), D = ``dim`` coordinates.

    Discrete data (``bits`` given, or ``data_scale`` = the bin width a): log P(bin) ~ log p(x) + D log a, so
    bpd = -(log p(x) + D log a) / (D log 2), a = (hi - lo) / 2^bits. A density uniform on [lo, hi]^D gives
    exactly ``bits``. Continuous data: x = data_scale * y + shift and bpd = -(log p(x) + D log data_scale) /
    (D log 2). With ``bits`` given a negative value is impossible for a dequantised likelihood, so it raises
    a ``NegativeBPDWarning`` (unless warn=False).
    """
    dim = integer("dim", dim, 1)
    a = bin_width(bits, data_range, data_scale)
    bpd = -(log_prob + dim * math.log(a)) / (dim * math.log(2.0))
    if warn and bits is not None:
        warn_negative(bpd, f"{bits}-bit data", dequantized=False)
    return bpd


def warn_negative(bpd: Tensor, what: str, dequantized: bool) -> None:
    """A ``NegativeBPDWarning`` when any bits/dim of discrete data (``what``) is negative, with its likely cause."""
    if not (bpd.numel() and bool((bpd < 0).any())):
        return
    hint = ("; with dequantisation this means the model's density is not normalised or the solve is inaccurate"
            if dequantized else "; the density was evaluated at the quantised points themselves, which is not a "
            "likelihood of discrete data: pass dequantize=True (uniform dequantisation, repeats=R draws) for the "
            "variational bound, which is >= 0")
    warnings.warn(f"negative bits/dim (min {float(bpd.min()):.4g}) on {what}{hint}", NegativeBPDWarning,
                  stacklevel=3)


def _on_levels(x: Tensor, cfg: LikelihoodConfig, a: float) -> Tensor:
    """x checked against the ``bits`` convention: within data_range (no dequantisation), or snapped to the
    level grid lo + a (u + 1/2) it must lie on (dequantisation)."""
    lo, hi = cfg.data_range
    if not cfg.dequantize:
        tol = 1e-6 * (hi - lo)
        if bool((x < lo - tol).any()) or bool((x > hi + tol).any()):
            raise ValueError(f"with bits={cfg.bits} the data must lie in data_range = [{lo}, {hi}]; "
                             f"got values in [{float(x.min())}, {float(x.max())}]")
        return x
    levels = (x - lo) / a - 0.5
    nearest = levels.round()
    top = 2 ** int(cfg.bits or 0) - 1
    if bool(((levels - nearest).abs() > 1e-3).any()) or bool((nearest < 0).any()) or bool((nearest > top).any()):
        raise ValueError(
            f"dequantize=True expects x on the {cfg.bits}-bit level grid x = lo + (hi - lo)(u + 1/2) / 2^bits "
            f"(bin centres) with integer u in [0, {top}] and (lo, hi) = ({lo}, {hi}); x is not "
            "(a [0, 1] -> u/255 scaling, say, is another convention)")
    return lo + a * (nearest + 0.5)


def dequantize(x: Tensor, cfg: LikelihoodConfig, rows: RowNoise) -> Tensor:
    """The model-space points to solve from: x itself, or ``cfg.repeats`` dequantised copies (repeat-major,
    (repeats * batch, ...)) v = x + a (delta - 1/2), delta ~ U[0, 1)^D from each row's own stream, a the
    bin width. With ``bits`` x must be on the level grid lo + a (u + 1/2); without dequantisation it must
    lie in data_range."""
    if cfg.bits is None and not cfg.dequantize:
        return x
    a = cfg.bin_width
    if cfg.bits is not None:
        x = _on_levels(x, cfg, a)
        if not cfg.dequantize:
            return x
    event = tuple(x.shape[1:])
    delta = rows.draw(lambda g: torch.rand((cfg.repeats, *event), generator=g, dtype=torch.float64))
    delta = delta.transpose(0, 1).to(device=x.device, dtype=x.dtype)  # (repeats, B, *event)
    return dequantize_bins(x.unsqueeze(0), a, offsets=delta).reshape(cfg.repeats * x.shape[0], *event)
