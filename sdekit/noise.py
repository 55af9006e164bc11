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

Gaussians (Box-Muller).  Word z_j gives two uniforms from its bit fields, u = (top + 1/2) 2^-b and v = (low + 1/2)
2^-b (b = 24 bits for float32 and lower precision, 32 for float64), and the pair
sqrt(-2 log u) (cos 2 pi v, sin 2 pi v) of independent N(0, 1) values (the largest |value| is 5.9 in float32,
6.7 in float64: probabilities 4e-9 and 3e-11 lost in the tails).

The Brownian path (``BrownianPath``) is the Levy-Ciesielski construction of Brownian motion on [0, T] driven by these
Gaussians: its value at any time depends only on (seed, row, the dyadic tree nodes above that time), so a solve on a
finer grid sees the same path, refined.
"""
from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

import torch

Tensor = torch.Tensor

__all__ = ["RowNoise", "BrownianPath", "mix", "mix_py", "row_keys", "normals", "uniforms", "key_of"]

_M64 = (1 << 64) - 1
_C1, _C2, _G = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15


def _signed(v: int) -> int:
    """The int64 whose two's-complement bits are the unsigned word v."""
    v &= _M64
    return v - (1 << 64) if v >> 63 else v


_C1S, _C2S, _GS = _signed(_C1), _signed(_C2), _signed(_G)
_MASK = {k: (1 << (64 - k)) - 1 for k in (27, 30, 31)}
# stream domains (arbitrary distinct constants): per-call noise, tree nodes, leaf points, uniforms
_STEPS, _NODE, _LEAF, _UNIFORM = 0x5354455053, 0x4E4F4445, 0x4C454146, 0x554E4946


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


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def normals(keys: Tensor, stream: Union[int, Sequence[int], Tensor], n: int, dtype=torch.float32) -> Tensor:
    """N(0, 1) values of shape (*keys.shape, len(stream), n) (or (*keys.shape, n) for one int stream key):
    entry [..., s, i] depends only on (keys[...], stream[s], i)."""
    single = isinstance(stream, int)
    stream = torch.as_tensor([stream] if single else stream, dtype=torch.int64).to(keys.device)
    work = _work_dtype(dtype)
    bits = 32 if work == torch.float64 else 24
    z = _words(keys, stream, (n + 1) // 2)
    tmp = torch.bitwise_right_shift(z, 64 - bits).bitwise_and_((1 << bits) - 1)
    radius = tmp.to(work).add_(0.5).mul_(2.0 ** -bits).log_().mul_(-2.0).sqrt_()
    angle = z.bitwise_and_((1 << bits) - 1).to(work).add_(0.5).mul_(2 * math.pi * 2.0 ** -bits)
    out = torch.empty(*angle.shape, 2, dtype=work, device=keys.device)
    torch.cos(angle, out=out[..., 0])
    torch.sin(angle, out=out[..., 1])
    out = out.mul_(radius[..., None]).flatten(-2)
    out = out[..., :n] if out.shape[-1] != n else out
    out = out[..., 0, :] if single else out
    return out if out.dtype == dtype else out.to(dtype)


def uniforms(keys: Tensor, stream: int, n: int, dtype=torch.float64) -> Tensor:
    """U(0, 1) values (53-bit for float64, 24-bit otherwise) of shape (*keys.shape, n), a pure function of
    (key, stream, i), on an open interval (never 0 or 1)."""
    z = _words(keys, torch.tensor([stream], dtype=torch.int64, device=keys.device), n)[..., 0, :]
    bits = 53 if dtype == torch.float64 else 24
    frac = torch.bitwise_right_shift(z, 64 - bits).bitwise_and_((1 << bits) - 1).to(_work_dtype(dtype))
    return frac.add_(0.5).mul_(2.0 ** -bits).to(dtype)


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
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=seed))
        elif seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.seed = int(seed)
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

    def _check_rows(self, x: Tensor) -> None:
        if x.shape[0] != self.n_rows:
            raise ValueError(f"noise has {self.n_rows} rows but the state has {x.shape[0]}")

    def randn_like(self, x: Tensor) -> Tensor:
        """The next draw: N(0, I) of x's shape, dtype and device (row r's values depend on (seed, r, call))."""
        self._check_rows(x)
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


def _float_bits(t: float) -> int:
    return struct.unpack("<q", struct.pack("<d", t))[0]


class BrownianPath:
    """Brownian motion W on [0, T] for every row of a ``RowNoise``, consistent across any set of query times.

    Construction (Levy 1939; Ciesielski 1961). Dyadic intervals [a, b] = T [i 2^-k, (i + 1) 2^-k] form a binary
    tree; node (k, i) carries xi ~ N(0, 1) keyed by (seed, row, heap index 2^k + i), and W(T) = sqrt(T) xi_root.
    Then, exactly,

        W(t) = (t / T) W(T) + sum_k sqrt((b_k - a_k)/4) tent_k(t) xi_k + sqrt((t - a)(b - t)/(b - a)) xi_t,

    the sum over the nodes [a_k, b_k] that contain t (tent_k = 1 - |2t - a_k - b_k|/(b_k - a_k): the bridge of W at
    the midpoint, interpolated linearly) down to the leaf [a, b], and xi_t a Gaussian keyed by (leaf, t) for the
    bridge from the leaf's ends to t. A node is a leaf when b - a <= rel_tol * a (or at depth 48); a dyadic t stops
    where it is a node's end (its last term is then zero). W(t) is a function of (seed, row, t) alone, so W at a
    coarse grid equals W at those times of any finer grid, exactly; increments over disjoint intervals are
    independent with variance their length, provided no two query times share a leaf (spacing above rel_tol * t:
    a 5000-step log-SNR grid on the VP SDE, at the default 2^-12). Two query times in one leaf each have the exact
    marginal law but share the leaf's bridge noise.

    Cost: a query at t draws about log2(T / (rel_tol t)) Gaussians per entry, all in one vectorised call; the last
    few queried values are cached, so a solver stepping along a grid pays for each time once.
    """

    MAX_DEPTH = 48
    CACHE = 8  # values kept from the last queries

    def __init__(self, noise: RowNoise, T: float, rel_tol: float = 2.0**-12):
        if not (T > 0 and math.isfinite(T)):
            raise ValueError(f"a Brownian path needs a finite T > 0; got {T}")
        if not (0 < rel_tol < 1):
            raise ValueError(f"rel_tol must lie in (0, 1); got {rel_tol}")
        self.noise, self.T, self.rel_tol = noise, float(T), float(rel_tol)
        self._cache: OrderedDict = OrderedDict()

    def _terms(self, t: float):
        """(stream keys, coefficients) of W(t)'s Levy-Ciesielski sum."""
        T = self.T
        keys, coefs = [key_of(_NODE, 0)], [t / math.sqrt(T)]
        if t <= 0.0 or t >= T:
            return keys, coefs
        a, b, i, k = 0.0, T, 0, 0  # node (k, i), heap index 2^k + i
        while True:
            w = b - a
            if w <= self.rel_tol * a or k >= self.MAX_DEPTH:  # a leaf: the bridge from a, b to t
                keys.append(key_of(_LEAF, (1 << k) + i, _float_bits(t)))
                coefs.append(math.sqrt(max((t - a) * (b - t) / w, 0.0)))
                return keys, coefs
            m = a + 0.5 * w
            keys.append(key_of(_NODE, (1 << k) + i))
            coefs.append(math.sqrt(w / 4) * (1.0 - abs(2 * t - a - b) / w))
            if t == m:
                return keys, coefs
            a, b, i = (a, m, 2 * i) if t < m else (m, b, 2 * i + 1)
            k += 1

    def __call__(self, x: Tensor, ts: Union[float, list[float], tuple[float, ...]]) -> Tensor:
        """W at time(s) ts for rows like x: shape x.shape for one time, (len(ts), *x.shape) for several."""
        single = not isinstance(ts, (list, tuple))
        times = [float(t) for t in ts] if isinstance(ts, (list, tuple)) else [float(ts)]
        for t in times:
            if not (0.0 <= t <= self.T * (1 + 1e-12)):
                raise ValueError(f"the Brownian path lives on [0, T = {self.T}]; asked for W at t = {t}")
        self.noise._check_rows(x)
        tag = (x.shape[1:], x.dtype, x.device)
        values = {t: self._cache[(t, tag)] for t in times if (t, tag) in self._cache}
        missing = [t for t in dict.fromkeys(times) if t not in values]
        if missing:
            values.update(self._compute(x, missing))
            for t in missing[-self.CACHE:]:
                self._cache[(t, tag)] = values[t]
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
        out = torch.stack([values[t] for t in times])
        return out[0] if single else out

    def _compute(self, x: Tensor, times: list) -> dict:
        terms = [self._terms(t) for t in times]
        width = max(len(k) for k, _ in terms)
        keys = [k + [0] * (width - len(k)) for k, _ in terms]  # padding has coefficient 0
        work = _work_dtype(x.dtype)
        coef = torch.tensor([c + [0.0] * (width - len(c)) for _, c in terms], dtype=work)
        flat = [kk for row in keys for kk in row]
        n = x[0].numel()
        xi = normals(self.noise.keys(x.device), flat, n, work).reshape(x.shape[0], len(times), width, n)
        w = torch.einsum("rqkn,qk->qrn", xi, coef.to(x.device)).to(x.dtype)
        return {t: wt.reshape(x.shape) for t, wt in zip(times, w)}

    def increment(self, x: Tensor, t: float, s: float) -> Tensor:
        """W(t) - W(s) for rows like x."""
        both = self(x, [float(t), float(s)])
        return both[0] - both[1]

    def standard(self, x: Tensor, t: float, s: float) -> Tensor:
        """(W(t) - W(s)) / sqrt(|t - s|): an N(0, I) draw for the step between s and t (zeros when s = t)."""
        h = abs(float(t) - float(s))
        if h == 0.0:
            return torch.zeros_like(x)
        return self.increment(x, t, s) / math.sqrt(h)
