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

The Brownian path (``BrownianPath``) is the Levy-Ciesielski construction of Brownian motion on [0, T] driven by these
Gaussians: its value at any time depends only on (seed, row, the dyadic tree nodes above that time), so a solve on a
finer grid sees the same path, refined.
"""
from __future__ import annotations

import functools
import hashlib
import math
import operator
import struct
import sys
from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

import torch

Tensor = torch.Tensor

__all__ = ["RowNoise", "BrownianPath", "PathPlan", "mix", "mix_py", "row_keys", "normals", "uniforms", "key_of", "check_seed"]

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
    work = _work_dtype(dtype)
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
    frac = torch.bitwise_right_shift(z, 64 - bits).bitwise_and_((1 << bits) - 1).to(_work_dtype(dtype))
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


@functools.lru_cache(maxsize=1 << 16)
def _node_key(heap: int) -> int:
    return key_of(_NODE, heap)


def _float_bits(t: float) -> int:
    return struct.unpack("<q", struct.pack("<d", t))[0]


@functools.lru_cache(maxsize=1 << 14)
def _path_terms(T: float, rel_tol: float, t: float, max_depth: int) -> tuple:
    """(stream keys, coefficients) of W(t)'s Levy-Ciesielski sum on [0, T] (``BrownianPath``; memoised: a grid's
    times recur from solve to solve)."""
    keys, coefs = [_node_key(0)], [t / math.sqrt(T)]
    if t <= 0.0 or t >= T:
        return tuple(keys), tuple(coefs)
    a, b, i, k = 0.0, T, 0, 0  # node (k, i), heap index 2^k + i
    while True:
        w = b - a
        if w <= rel_tol * a or k >= max_depth:  # a leaf: the bridge from a, b to t
            keys.append(key_of(_LEAF, (1 << k) + i, _float_bits(t)))
            coefs.append(math.sqrt(max((t - a) * (b - t) / w, 0.0)))
            return tuple(keys), tuple(coefs)
        m = a + 0.5 * w
        keys.append(_node_key((1 << k) + i))
        coefs.append(math.sqrt(w / 4) * (1.0 - abs(2 * t - a - b) / w))
        if t == m:
            return tuple(keys), tuple(coefs)
        a, b, i = (a, m, 2 * i) if t < m else (m, b, 2 * i + 1)
        k += 1


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

    Evaluation. Every value is the same sequence of rounded operations whatever else is asked for with it: the
    root term c_0 xi_0, then + (c_k xi_k) level by level (one product and one sum per term, each rounded once in the
    working precision), so W(t) does not depend on the batch, the cache, the other times of a call or on whether
    the times were planned. ``increments`` gives standardised increments (W(t) - W(s)) * (1/sqrt|t - s|) of many
    pairs in one vectorised call: the union of the pairs' tree nodes is drawn once (``keyed_normals``) and the
    terms are summed for all times at once, a level at a time. ``plan`` declares the pairs a solve will ask for, in
    order, so that they are computed a block at a time (at most ``PLAN_BYTES`` of tree nodes per block).

    Cost: a query at t draws about log2(T / (rel_tol t)) Gaussians per entry; times of one call, and the last time
    of the previous call, share the top of their paths, so a grid of N times costs about N (log2(1/rel_tol) -
    log2(t / spacing)) Gaussians per entry (about 11 per time on a 20-step grid at the default rel_tol).
    """

    MAX_DEPTH = 48
    CACHE = 8  # values kept from the last queries
    PLAN_BYTES = 1 << 22  # tree-node memory of one planned block (at least one pair): it stays in cache
    SMALL = 1 << 18  # bytes of the values of one call below which its sums run a level at a time over all times

    def __init__(self, noise: RowNoise, T: float, rel_tol: float = 2.0**-12):
        if not (T > 0 and math.isfinite(T)):
            raise ValueError(f"a Brownian path needs a finite T > 0; got {T}")
        if not (0 < rel_tol < 1):
            raise ValueError(f"rel_tol must lie in (0, 1); got {rel_tol}")
        self.noise, self.T, self.rel_tol = noise, float(T), float(rel_tol)
        self._cache: OrderedDict = OrderedDict()  # (t, tag) -> W(t) as a (rows * n,) working-dtype row
        self._kept: Optional[tuple] = None  # (tag, node key -> row): the nodes of the last time computed

    def _check_times(self, times) -> None:
        for t in times:
            if not (0.0 <= t <= self.T * (1 + 1e-12)):
                raise ValueError(f"the Brownian path lives on [0, T = {self.T}]; asked for W at t = {t}")

    def __call__(self, x: Tensor, ts: Union[float, list[float], tuple[float, ...]]) -> Tensor:
        """W at time(s) ts for rows like x: shape x.shape for one time, (len(ts), *x.shape) for several."""
        single = not isinstance(ts, (list, tuple))
        times = [float(t) for t in ts] if isinstance(ts, (list, tuple)) else [float(ts)]
        self._check_times(times)
        self.noise._check_rows(x)
        values = self._values(x, times)
        out = torch.stack([values[t] for t in times]).reshape((len(times),) + tuple(x.shape)).to(x.dtype)
        return out[0] if single else out

    def _values(self, x: Tensor, times: list) -> dict:
        """time -> W(time) as a (rows * n,) working-dtype row, for every time asked for: cached values and those
        computed now (``_compute``); the last ``CACHE`` times asked for stay cached."""
        tag = (x.shape[1:], x.dtype, x.device)
        distinct = list(dict.fromkeys(times))
        values = {t: self._cache[(t, tag)] for t in distinct if (t, tag) in self._cache}
        missing = [t for t in distinct if t not in values]
        if missing:
            values.update(zip(missing, self._compute(x, missing).unbind(0)))
        for t in distinct[-self.CACHE:]:
            self._cache[(t, tag)] = values[t]
            self._cache.move_to_end((t, tag))
        while len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return values

    def _compute(self, x: Tensor, times: list) -> Tensor:
        """W at ``times`` (distinct), a (len(times), rows * n) working-dtype tensor in that order.

        The union of the times' tree nodes is drawn in one ``keyed_normals`` call (the nodes of the last time of
        the previous call are kept: neighbouring query times share the top of their paths); each time's terms are
        summed root first as W <- W + (c xi), c rounded to the working dtype (the class docstring: the same rounded
        operations for every time), for small rows a level at a time over all times (``_sum_by_level``), for large
        rows a time at a time."""
        terms = [_path_terms(self.T, self.rel_tol, t, self.MAX_DEPTH) for t in times]
        n, work, tag, dev = x[0].numel(), _work_dtype(x.dtype), (x.shape[1:], x.dtype, x.device), x.device
        kept_table, kept = self._kept[1:] if self._kept is not None and self._kept[0] == tag else (None, {})
        need = list(dict.fromkeys(k for ks, _ in terms for k in ks))
        new = [k for k in need if k not in kept]
        old = [k for k in need if k in kept]
        width = self.noise.n_rows * n
        table = torch.empty(len(need), width, dtype=work, device=dev)
        if new:
            base = torch.tensor(new, dtype=torch.int64, device=dev)[:, None] ^ self.noise.keys(dev)
            keyed_normals(base.reshape(-1), n, work, out=table[: len(new)])
        if old:
            rows = torch.tensor([kept[k] for k in old], dtype=torch.int64, device=dev)
            torch.index_select(kept_table, 0, rows, out=table[len(new):])
        slot = {k: i for i, k in enumerate(new + old)}
        if len(times) > 1 and len(times) * width * table.element_size() <= self.SMALL:
            w = _sum_by_level(terms, table, slot)
        else:  # large rows: one time at a time, its sum staying in cache
            w = torch.empty(len(times), width, dtype=work, device=dev)
            tmp = torch.empty(width, dtype=work, device=dev)
            for j, (ks, cs) in enumerate(terms):
                coef = torch.tensor(cs, dtype=torch.float64).to(work).tolist()  # rounded to the working dtype
                wj = torch.mul(table[slot[ks[0]]], coef[0], out=w[j])
                for k, c in zip(ks[1:], coef[1:]):
                    wj.add_(torch.mul(table[slot[k]], c, out=tmp))
        self._kept = (tag, table, {k: slot[k] for k in terms[-1][0]})
        return w

    def increments(self, x: Tensor, pairs) -> Tensor:
        """(W(t) - W(s)) * (1/sqrt|t - s|) for each (t, s) of ``pairs``, rows like x: shape (len(pairs), *x.shape),
        zeros where s = t. One vectorised call for all of them (the class docstring), with the same values as one
        pair at a time."""
        pairs = [(float(t), float(s)) for t, s in pairs]
        self._check_times([u for p in pairs for u in p])
        self.noise._check_rows(x)
        values = self._values(x, [u for p in pairs for u in p])
        work = next(iter(values.values())).dtype
        scale = torch.tensor([1.0 / math.sqrt(abs(t - s)) if t != s else 0.0 for t, s in pairs],
                             dtype=torch.float64).to(work)
        if len(pairs) == 1:
            (t, s), = pairs
            z = torch.sub(values[t], values[s]).mul_(scale.item())[None]
        else:
            wt = torch.stack([values[t] for t, _ in pairs])
            z = wt.sub_(torch.stack([values[s] for _, s in pairs])).mul_(scale.to(wt.device)[:, None])
        return z.reshape((len(pairs),) + tuple(x.shape)).to(x.dtype)

    def increment(self, x: Tensor, t: float, s: float) -> Tensor:
        """W(t) - W(s) for rows like x."""
        both = self(x, [float(t), float(s)])
        return both[0] - both[1]

    def standard(self, x: Tensor, t: float, s: float) -> Tensor:
        """(W(t) - W(s)) / sqrt(|t - s|): an N(0, I) draw for the step between s and t (zeros when s = t); computed
        as ``increments`` of the one pair."""
        return self.increments(x, [(t, s)])[0]

    def plan(self, x: Tensor, pairs) -> "PathPlan":
        """The increments of ``pairs`` (in the order a solve asks for them) for rows like x, computed a block of
        pairs at a time when first asked for (``PathPlan``)."""
        return PathPlan(self, x, pairs)


def _sum_by_level(terms: list, table: Tensor, slot: dict) -> Tensor:
    """``BrownianPath._compute``'s sums for small rows: every term's product c_d xi_d at once (one gather, one
    product over all times and levels), then W_j = c_0 xi_0 and W_j <- W_j + (c_d xi_d) level by level for every
    time j at least d + 1 terms deep (the times sorted deepest first, so those form a prefix)."""
    dev, work = table.device, table.dtype
    order = sorted(range(len(terms)), key=lambda j: -len(terms[j][0]))
    depth = len(terms[order[0]][0])
    counts = [sum(1 for j in order if len(terms[j][0]) > d) for d in range(depth)]
    idx = [slot[terms[j][0][d]] for d in range(depth) for j in order[: counts[d]]]
    coef = [terms[j][1][d] for d in range(depth) for j in order[: counts[d]]]
    prod = table.index_select(0, torch.tensor(idx, dtype=torch.int64, device=dev))
    prod.mul_(torch.tensor(coef, dtype=torch.float64).to(device=dev, dtype=work)[:, None])
    w, start = prod[: counts[0]], counts[0]
    for a in counts[1:]:
        w[:a].add_(prod[start: start + a])
        start += a
    if order == list(range(len(terms))):
        return w
    back = torch.empty(len(terms), dtype=torch.int64)
    back[torch.tensor(order)] = torch.arange(len(terms))
    return w.index_select(0, back.to(dev))


class PathPlan:
    """Standardised increments of a ``BrownianPath`` for (t, s) pairs known up front, in the order they will be
    asked for: ``get`` of a planned pair computes the block of pairs from it on in one ``increments`` call (as
    many pairs as fit ``BrownianPath.PLAN_BYTES`` of tree nodes, about 16 state-sized rows per pair) and returns
    views of it; the values equal ``BrownianPath.standard``'s of each pair. A pair not planned, or rows of another
    shape, dtype or device, give None (ask the path itself)."""

    def __init__(self, path: BrownianPath, x: Tensor, pairs):
        self.path = path
        self.pairs = [(float(t), float(s)) for t, s in pairs]
        path._check_times([u for p in self.pairs for u in p])
        self.tag = (tuple(x.shape), x.dtype, x.device)
        per_pair = 16 * x.numel() * torch.finfo(_work_dtype(x.dtype)).bits // 8
        self.block = max(1, path.PLAN_BYTES // max(per_pair, 1))
        self._first: dict = {}  # pair -> its first position in the plan
        for i, p in enumerate(self.pairs):
            self._first.setdefault(p, i)
        self._ready: dict = {}  # pair -> its increment, for the block computed last

    def get(self, x: Tensor, t: float, s: float) -> Optional[Tensor]:
        """The increment of (t, s) if planned (and x is like the plan's rows), else None."""
        z = self._ready.get((t, s))
        if z is not None and (tuple(x.shape), x.dtype, x.device) == self.tag:
            return z
        i = self._first.get((t, s))
        if i is None or (tuple(x.shape), x.dtype, x.device) != self.tag:
            return None
        block = list(dict.fromkeys(self.pairs[i: i + self.block]))
        self._ready = {}
        zs = self.path.increments(x, block)
        self._ready = dict(zip(block, zs.unbind(0)))
        return self._ready[(t, s)]
