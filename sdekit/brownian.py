"""The Brownian path (``BrownianPath``) is the Levy-Ciesielski construction of Brownian motion on [0, T] driven by these
Gaussians: its value at any time depends only on (seed, row, the dyadic tree nodes above that time), so a solve on a
finer grid sees the same path, refined.
"""
from __future__ import annotations

import functools
import math
import struct
from collections import OrderedDict
from typing import Optional, Union

import torch

from .noise import LEAF_DOMAIN, NODE_DOMAIN, RowNoise, key_of, keyed_normals, work_dtype

Tensor = torch.Tensor

__all__ = ["BrownianPath", "PathPlan"]


@functools.lru_cache(maxsize=1 << 16)
def _node_key(heap: int) -> int:
    return key_of(NODE_DOMAIN, heap)


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
            keys.append(key_of(LEAF_DOMAIN, (1 << k) + i, _float_bits(t)))
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
        self.noise.check_rows(x)
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
        n, work, tag, dev = x[0].numel(), work_dtype(x.dtype), (x.shape[1:], x.dtype, x.device), x.device
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
        self.noise.check_rows(x)
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
        per_pair = 16 * x.numel() * torch.finfo(work_dtype(x.dtype)).bits // 8
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
