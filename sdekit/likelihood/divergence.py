"""div F of the probability-flow drift: the exact trace of dF/dx or Hutchinson's estimator, by vector-Jacobian products.

The exact divergence is tr(dF/dx) = sum_i e_i^T (dF/dx) e_i: one vector-Jacobian product per coordinate,
computed in chunks of basis vectors, each chunk one backward pass vectorised over its cotangents.
Hutchinson's estimator (Hutchinson 1989; Grathwohl et al. 2019, "FFJORD") is E_v[v^T (dF/dx) v] for
probes v with E[v v^T] = I (Rademacher or Gaussian): K probes give K unbiased estimates of the trace.

The products are batched by one of three backends: "autograd" (``torch.autograd.grad`` with
``is_grads_batched=True``), "func" (``torch.func.vjp`` + ``vmap``) or "loop" (one backward pass per
cotangent; any autograd-capable net); "auto" takes the first that works on the net.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..solvers.base import SolverError

Tensor = torch.Tensor

__all__ = ["Divergence", "vjp_chunks", "MAX_BLOCK_ELEMENTS", "OutOfMemory"]

# Elements of the (chunk, batch, D) cotangent block built per vectorised pass in exact mode.
MAX_BLOCK_ELEMENTS = 2**25
OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_AUTO_ORDER = ("autograd", "func", "loop")


def _chunks(K: int, chunk: int):
    for a in range(0, K, chunk):
        yield a, min(a + chunk, K)


def _grads(backend: str, out: Tensor, xr: Tensor, cot: Tensor, last: bool, create_graph: bool) -> Tensor:
    """cot[k]^T dF/dx for each cotangent of one chunk, (m, *x.shape), by ``backend`` ("autograd" or "loop")."""
    m = cot.shape[0]
    keep = create_graph or not last
    if backend == "loop":
        return torch.stack([torch.autograd.grad(out, xr, cot[k], retain_graph=keep or k < m - 1,
                                                create_graph=create_graph)[0] for k in range(m)])
    if m == 1:  # a plain backward pass, no vmap machinery
        return torch.autograd.grad(out, xr, cot[0], retain_graph=keep, create_graph=create_graph)[0].unsqueeze(0)
    return torch.autograd.grad(out, xr, cot, retain_graph=keep, create_graph=create_graph, is_grads_batched=True)[0]


def vjp_chunks(backend: str, drift: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, K: int, chunk: int,
               make_cot, reduce, create_graph: bool = False):
    """F(x, t) and [reduce(a, b, cot, g) for each chunk [a, b) of the K cotangents], where cot = make_cot(a, b)
    has shape (b - a, *x.shape) and g[k] = cot[k]^T dF/dx. One forward pass; each chunk is one
    vectorised backward pass, so at most ``chunk`` cotangents (and their products) exist at a time.
    ``create_graph``: F and the products stay in the autograd graph (of x, when x carries one, and of the
    network's parameters), so a result built from them can be differentiated again ("func" runs as "autograd")."""
    if backend == "func" and not create_graph:
        out, vjp_fn = torch.func.vjp(lambda y: drift(y, t), x)  # type: ignore[misc]
        results = []
        for a, b in _chunks(K, chunk):
            cot = make_cot(a, b)
            results.append(reduce(a, b, cot, torch.func.vmap(vjp_fn)(cot)[0]))
        return out, results
    backend = "autograd" if backend == "func" else backend
    results = []
    with torch.enable_grad():
        xr = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
        out = drift(xr, t)
        for a, b in _chunks(K, chunk):
            cot = make_cot(a, b)
            g = _grads(backend, out, xr, cot, b == K, create_graph)
            results.append(reduce(a, b, cot, g if create_graph else g.detach()))
    return (out if create_graph else out.detach()), results


class Divergence:
    """div F at (x, t), exact (``kind="exact"``) or by Hutchinson with ``probes`` (K, *x_shape), for rows of
    D = ``dim`` coordinates; ``backend`` one of "auto", "autograd", "func", "loop" (resolved on first use);
    ``chunk_size``: cotangents per vectorised pass (default: a (chunk, batch, D) block of at most
    ``MAX_BLOCK_ELEMENTS``). ``create_graph``: keep F and div F differentiable."""

    def __init__(self, kind: str, probes: Optional[Tensor], backend: str, chunk_size: Optional[int], dim: int):
        if kind == "hutchinson" and probes is None:
            raise ValueError("the Hutchinson divergence needs probes of shape (K, *x.shape)")
        self.kind, self.probes, self.backend, self.chunk_size, self.D = kind, probes, backend, chunk_size, dim
        self.K = dim if kind == "exact" else (0 if probes is None else probes.shape[0])
        self.create_graph = False
        self._basis: Any = None

    def chunk(self, B: int) -> int:
        """Cotangents per vectorised pass for a batch of B rows."""
        chunk = self.chunk_size
        if chunk is None:
            chunk = max(1, MAX_BLOCK_ELEMENTS // max(1, B * self.D))
        return max(1, min(int(chunk), self.K))

    def basis(self, x: Tensor, a: int, b: int) -> Tensor:
        """Rows a..b-1 of the identity as cotangents, shape (b - a, *x.shape): e_i in every batch row."""
        B = x.shape[0]
        if self._basis is not None and self._basis[0] == (a, b, B):
            return self._basis[1]
        cot = torch.zeros(b - a, B, self.D, dtype=x.dtype, device=x.device)
        idx = torch.arange(b - a, device=x.device)
        cot[idx, :, a + idx] = 1  # contiguous on purpose: stride-0 cotangents slow the vmapped backward
        cot = cot.reshape(b - a, *x.shape)
        if b - a == self.D:  # one chunk covers the basis: keep it for the next evaluation
            self._basis = ((a, b, B), cot)
        return cot

    def evaluate(self, backend: str, drift, x: Tensor, t: Tensor):
        """F(x, t) and div F by ``backend``: (batch,) exact, (K, batch) Hutchinson."""
        B, D = x.shape[0], self.D
        if self.kind == "exact":
            def trace_part(a, b, cot, g):  # sum_{i in [a, b)} (e_i^T dF/dx)_i, per row
                return torch.diagonal(g.reshape(b - a, B, D)[:, :, a:b], dim1=0, dim2=2).sum(-1)

            out, parts = vjp_chunks(backend, drift, x, t, D, self.chunk(B), lambda a, b: self.basis(x, a, b),
                                    trace_part, self.create_graph)
            return out, torch.stack(parts).sum(0)

        def quad_form(a, b, cot, g):  # v_k^T (dF/dx) v_k, per probe and row
            return (g * cot).reshape(b - a, B, D).sum(-1)

        probes = self.probes
        assert probes is not None  # checked on creation
        out, parts = vjp_chunks(backend, drift, x, t, self.K, self.chunk(B), lambda a, b: probes[a:b], quad_form,
                                self.create_graph)
        return out, torch.cat(parts)

    def __call__(self, drift, x: Tensor, t: Tensor):
        """``evaluate`` by this divergence's backend, picking it on the first call when it is "auto": a backend
        that cannot transform the net raises RuntimeError or NotImplementedError; out-of-memory and solver errors
        do not count as that and propagate. ``drift.nfe`` (a call counter) is not charged for a failed try."""
        if self.backend != "auto":
            return self.evaluate(self.backend, drift, x, t)
        nfe = drift.nfe
        for candidate in _AUTO_ORDER:
            try:
                out, div = self.evaluate(candidate, drift, x, t)
            except (OutOfMemory, SolverError):
                raise
            except (RuntimeError, NotImplementedError):
                if candidate == _AUTO_ORDER[-1]:
                    raise
                drift.nfe = nfe  # the failed attempt is retried, not a new evaluation
                continue
            self.backend = candidate
            return out, div
        raise AssertionError("unreachable")

