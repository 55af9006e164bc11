"""Per-row random numbers that depend on (seed, row, counter) only: never on the batch, the device or the order.

Counter-based generation (the idea of Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"):
a Gaussian is a pure function of a key, so any row, step or Brownian-tree node can be drawn on its own, on the
state's device, with no Python loop over rows and no generator state to carry.

The hash is SplitMix64's output function (Steele, Lea & Flood 2014; the constants of Vigna's splitmix64.c),

    mix(z) = m3(m2(m1(z))),  m1: z ^= z >> 30, z *= 0xbf58476d1ce4e5b9;  m2: z ^= z >> 27, z *= 0x94d049bb133111eb;
    m3: z ^= z >> 31,

a bijection of 64-bit words. torch has no unsigned 64-bit arithmetic, so it runs on int64: multiplication and
addition wrap modulo 2^64 as unsigned ones do, and the logical shift z >> k is the arithmetic shift masked to its low
64 - k bits. ``mix_py`` is the same function on Python integers; the tests check the two agree bit for bit.

Keys.  row key     k_r = mix(mix(seed) + r G)                   (G = 0x9e3779b97f4a7c15, SplitMix's Weyl step)
       stream key  c   = mix(domain + mix(counter))             (a Python int: one per call, tree node or leaf point)
       word j      z_j = mix((k_r ^ c) + j G),  j = 0, 1, ...

Gaussians (inversion).  A b-bit field of a word, read as a signed integer m in [-2^(b-1), 2^(b-1)), gives the
uniform y = (2m + 1) 2^-b on (-1, 1) and the N(0, 1) value sqrt(2) erfinv(y); y is exact in the working precision
(b = 24 in float32 and lower precision, two fields per word; b = 52 in float64, one per word). The largest |value|
is 5.42 in float32 and 8.2 in float64 (tail probabilities 6e-8 and 5e-16 folded into the last level). One value per
field keeps every pass contiguous and vectorised (erfinv is), with no cos/sin pair to interleave as in Box-Muller.

The Brownian path built on these Gaussians is ``sdekit.brownian`` (``BrownianPath``, ``PathPlan``; re-exported
here).
"""
from __future__ import annotations

import functools
import hashlib
import math
import operator
import sys
from typing import Callable, Optional, Sequence, Union

import torch

Tensor = torch.Tensor

__all__ = ["RowNoise", "BrownianPath", "PathPlan", "work_dtype", "mix", "mix_py", "row_keys", "normals", "uniforms",
           "key_of", "check_seed"]

_M64 = (1 << 64) - 1
_C1, _C2, _G = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def _signed(v: int) -> int:
    """The int64 whose two's-complement bits are the unsigned word v."""
    v &= _M64
    return v - (1 << 64) if v >> 63 else v


_C1S, _C2S, _GS = _signed(_C1), _signed(_C2), _signed(_G)
_MASK = {k: (1 << (64 - k)) - 1 for k in (27, 30, 31)}
# stream domains (arbitrary distinct constants): per-call noise, tree nodes, leaf points, uniforms
_STEPS, NODE_DOMAIN, LEAF_DOMAIN, _UNIFORM = 0x5354455053, 0x4E4F4445, 0x4C454146, 0x554E4946


def mix_py(z: int) -> int:
    """SplitMix64's output function on a Python int (taken mod 2^64), returned as a signed int64 value."""
    z &= _M64
    z ^= z >> 30
    z = (z * _C1) & _M64
    z ^= z >> 27
    z = (z * _C2) & _M64
    return _signed(z ^ (z >> 31))


def mix(z: Tensor, tmp: Optional[Tensor] = None) -> Tensor:
    """SplitMix64's output function on an int64 tensor, in place (returns ``z``; ``tmp``: a scratch tensor like z)."""
    tmp = torch.empty_like(z) if tmp is None else tmp
    for shift, mult in ((30, _C1S), (27, _C2S), (31, None)):
        torch.bitwise_right_shift(z, shift, out=tmp).bitwise_and_(_MASK[shift])
        z.bitwise_xor_(tmp)
        if mult is not None:
            z.mul_(mult)
    return z


def key_of(*parts: int) -> int:
    """A stream key from integers: mix(... mix(mix(p0) + p1) ...), as a signed int64 value."""
    k = 0
    for p in parts:
        k = mix_py(k + (p & _M64))
    return k


def row_keys(seed: int, rows: Tensor) -> Tensor:
    """k_r = mix(mix(seed) + r G) for an int64 tensor of row indices r (on the rows' device)."""
    return mix(rows.to(torch.int64) * _GS + mix_py(seed))


def _words(keys: Tensor, stream: Tensor, m: int, tmp: Optional[Tensor] = None) -> Tensor:
    """z[..., s, j] = mix((keys[...] ^ stream[s]) + j G): shape (*keys.shape, len(stream), m), int64."""
    base = torch.bitwise_xor(keys[..., None], stream)[..., None]
    return mix(base + torch.arange(m, device=keys.device, dtype=torch.int64) * _GS, tmp)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_BLOCK = 1 << 16  # words per block: a block's scratch stays in cache and is reused, not allocated per operation
_SWAP_HALVES = sys.byteorder != "little"


def normals(keys: Tensor, stream: Union[int, Sequence[int], Tensor], n: int, dtype=torch.float32) -> Tensor:
    """N(0, 1) values of shape (*keys.shape, len(stream), n) (or (*keys.shape, n) for one int stream key):
    entry [..., s, i] depends only on (keys[...], stream[s], i).

    Entry i takes its bits from word z_{i // 2} (float32 and lower: the top 24 bits of its low 32-bit half for
    even i, of its high half for odd i) or z_i (float64: the top 52 bits): read as a signed integer m, arithmetic
    shift keeps it signed, and y = (2m + 1) 2^-b (b = 24 or 52; exact, |y| < 1) gives sqrt(2) erfinv(y). The words
    are made and transformed a block of rows at a time into the output, so the work is a fixed number of passes
    over scratch that stays in cache."""
    if isinstance(stream, int):  # one stream: xor with a scalar, no index tensor
        out = keyed_normals(torch.bitwise_xor(keys.reshape(-1), _signed(stream)), n, dtype)
        res = out.reshape(tuple(keys.shape) + (n,))
        return res if res.dtype == dtype else res.to(dtype)
    streams = torch.as_tensor(stream, dtype=torch.int64).to(keys.device)
    out = keyed_normals(torch.bitwise_xor(keys.reshape(-1, 1), streams).reshape(-1), n, dtype)
    shape = tuple(keys.shape) + (len(streams), n)
    res = out.reshape(shape)
    return res if res.dtype == dtype else res.to(dtype)


def keyed_normals(base: Tensor, n: int, dtype=torch.float32, out: Optional[Tensor] = None) -> Tensor:
    """``normals``' work: N(0, 1) values of shape (len(base), n), row k from the stream key base[k] = key ^ stream
    (an int64 tensor; any order of (key, stream) pairs gives the same values for each pair). ``out``: a contiguous
    tensor of the working dtype and len(base) * n entries to write into."""
    work = work_dtype(dtype)
    dev, pair = base.device, work != torch.float64  # pair: two 24-bit entries per 64-bit word
    q = (n + 1) // 2 if pair else n  # words per (key, stream)
    base = base.reshape(-1, 1)
    count = base.shape[0]
    out = torch.empty(count, n, dtype=work, device=dev) if out is None else out.view(count, n)
    step = _weyl_steps(q, dev)
    per = max(1, min(count, _BLOCK // max(q, 1)))
    zb, tb = (torch.empty(per * q, dtype=torch.int64, device=dev) for _ in range(2))
    for a in range(0, count if n else 0, per):
        rows = min(count - a, per)
        z = mix(torch.add(base[a:a + rows], step, out=zb[: rows * q].view(rows, q)), tb[: rows * q].view(rows, q))
        o = out[a:a + rows]
        if pair:
            k = z.view(torch.int32)  # (rows, 2q): each word's low then high 32-bit half
            if _SWAP_HALVES:
                k = k.view(rows, q, 2).flip(-1).reshape(rows, 2 * q)
            o.copy_((k if n == 2 * q else k[:, :n]).bitwise_right_shift_(7).bitwise_or_(1)).mul_(2.0**-24)
        else:
            o.copy_(z.bitwise_right_shift_(11).bitwise_or_(1)).mul_(2.0**-52)
        o.erfinv_().mul_(math.sqrt(2.0))
    return out


@functools.lru_cache(maxsize=64)
def _weyl_steps(q: int, device: torch.device) -> Tensor:
    """j G for j = 0 .. q - 1 (int64, wrapping), kept per (q, device): a solve asks for the same q every step."""
    return torch.arange(q, dtype=torch.int64, device=device).mul_(_GS)


def uniforms(keys: Tensor, stream: int, n: int, dtype=torch.float64) -> Tensor:
    """U(0, 1) values (53-bit for float64, 24-bit otherwise) of shape (*keys.shape, n), a pure function of
    (key, stream, i), on an open interval (never 0 or 1)."""
    z = _words(keys, torch.tensor([stream], dtype=torch.int64, device=keys.device), n)[..., 0, :]
    bits = 53 if dtype == torch.float64 else 24
    frac = torch.bitwise_right_shift(z, 64 - bits).bitwise_and_((1 << bits) - 1).to(work_dtype(dtype))
    return frac.add_(0.5).mul_(2.0 ** -bits).to(dtype)


def check_seed(seed) -> int:
    """The int seed of ``generator=``: an int in [-2^63, 2^64) (bool and floats refused: 1.5 is not truncated), a
    torch.Generator (one int is drawn from it) or None (a random seed)."""
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed))
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)))
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"generator must be an int seed, a torch.Generator or None; got {type(seed).__name__} "
                        f"{seed!r}")
    value = operator.index(seed)
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"an int seed must lie in [-2^63, 2^64) (64 bits); got {value}")
    return value


def _legacy_row_seed(base: int, row: int) -> int:
    digest = hashlib.blake2b(f"{base}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class _LazyGenerators(Sequence):
    """One torch.Generator per row, made when asked for (for ``RowNoise.draw``; len() is free)."""

    def __init__(self, seed: int, rows: range):
        self.seed, self.rows = seed, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return torch.Generator(device="cpu").manual_seed(_legacy_row_seed(self.seed, self.rows[i]))


class RowNoise:
    """Gaussian noise with one counter-based stream per row.

    Row i's draws are pure functions of (seed, row_offset + i, call number, position): a row's noise, hence its
    sample, does not depend on the batch size, on the rows beside it or on the device (a shard of rows [a, b)
    is reproduced by ``row_offset=a``). The k-th ``randn_like`` call gives every row its k-th draw.
    ``path(T)`` gives the rows' Brownian paths (``BrownianPath``), from the same key and independent of the draws.

    seed: an int, a torch.Generator (one int is drawn from it) or None (a random seed).
    device: where the row keys live (default: moved to each state's device on first use).
    """

    def __init__(self, seed: Union[int, torch.Generator, None], n_rows: int, row_offset: int = 0, device=None):
        self.seed = check_seed(seed)
        self.n_rows = int(n_rows)
        self.row_offset = int(row_offset)
        self.rows = range(self.row_offset, self.row_offset + self.n_rows)
        self.calls = 0
        self._keys: Optional[Tensor] = None
        self._paths: dict = {}
        self.device = device

    def keys(self, device=None) -> Tensor:
        """The rows' 64-bit keys k_r (int64, shape (n_rows,)) on ``device``, computed once per device."""
        device = torch.device(device if device is not None else (self.device or "cpu"))
        if self._keys is None or self._keys.device != device:
            rows = torch.arange(self.row_offset, self.row_offset + self.n_rows, dtype=torch.int64, device=device)
            self._keys = row_keys(self.seed, rows)
        return self._keys

    def check_rows(self, x: Tensor) -> None:
        if x.shape[0] != self.n_rows:
            raise ValueError(f"noise has {self.n_rows} rows but the state has {x.shape[0]}")

    def randn_like(self, x: Tensor) -> Tensor:
        """The next draw: N(0, I) of x's shape, dtype and device (row r's values depend on (seed, r, call))."""
        self.check_rows(x)
        stream = key_of(_STEPS, self.calls)
        self.calls += 1
        n = x[0].numel()
        return normals(self.keys(x.device), stream, n, x.dtype).reshape(x.shape)

    def rand(self, shape: Sequence[int], stream: int, dtype=torch.float64, device=None) -> Tensor:
        """U(0, 1) values of shape (n_rows, *shape) from stream number ``stream`` (a pure function of
        (seed, row, stream, position); does not advance the call counter)."""
        n = math.prod(shape)
        return uniforms(self.keys(device), key_of(_UNIFORM, stream), n, dtype).reshape(self.n_rows, *shape)

    def randn(self, shape: Sequence[int], stream: int, dtype=torch.float64, device=None) -> Tensor:
        """N(0, 1) values of shape (n_rows, *shape) from stream number ``stream`` (does not advance the counter)."""
        n = math.prod(shape)
        return normals(self.keys(device), key_of(_UNIFORM, stream, 1), n, dtype).reshape(self.n_rows, *shape)

    def path(self, T: float, rel_tol: float = 2.0**-12) -> "BrownianPath":
        """The rows' Brownian paths on [0, T] (one object per (T, rel_tol), kept)."""
        k = (float(T), float(rel_tol))
        if k not in self._paths:
            self._paths[k] = BrownianPath(self, T, rel_tol)
        return self._paths[k]

    # -- per-row torch.Generators (kept for callers that need other distributions row by row) ------------------
    @property
    def generators(self) -> Sequence[torch.Generator]:
        """One torch.Generator per row, seeded from (seed, row) (made lazily; slow for many rows: prefer
        ``randn_like``, ``randn`` and ``rand``)."""
        return _LazyGenerators(self.seed, self.rows)

    def draw(self, fn: Callable[[torch.Generator], Tensor]) -> Tensor:
        """Stack fn(generator_i) over the rows: (n_rows, *fn's shape). A Python loop over rows, on the CPU:
        prefer ``randn``/``rand``."""
        return torch.stack([fn(g) for g in self.generators])



from .brownian import BrownianPath, PathPlan  # noqa: E402  (the path is built on this module's Gaussians)
