"""Row-wise adaptive quadrature on a shared dyadic grid: integrals of expensive per-row integrands.

For a batch of integrands h_r(s), r = 0..R-1, known only through ``evaluate(node, row)`` at the points
s_j = s_0 + j h (j = 0..M) of one uniform grid, estimate I_r = int_{s_0}^{s_M} h_r(s) ds row by row,
evaluating each row only where that row needs it.

Each row starts with ``panels`` equal panels. A panel [a, a + w] (w a multiple of 4 grid steps) is
integrated by Boole's rule (the 5-point closed Newton-Cotes rule: exact for degree <= 5, error
-8 (w/4)^7 h^(6)(xi) / 945)

    B = w / 90 (7 f_0 + 32 f_1 + 12 f_2 + 32 f_3 + 7 f_4),     f_i = h(a + i w / 4),

and by Simpson's rule on f_0, f_2, f_4, S = w / 6 (f_0 + 4 f_2 + f_4). |B - S| estimates Simpson's error,
an upper bound (by a factor that grows as w shrinks) on Boole's. A panel is accepted when
|B - S| <= tol * w / (s_M - s_0); otherwise it is halved, and the halves reuse three of its five points.
Panels of four grid steps are accepted as they are (the grid's resolution). Like any adaptive rule it
sees the integrand only at its nodes: a feature narrower than the first level's node spacing,
(s_M - s_0) / (4 panels), can fall between them unseen. Other information about where the integrand
varies fast can force panels to be halved before they are evaluated (``must_split``): sdekit's
likelihood uses the probability-flow trajectory itself, which is known on the whole grid for free.
This is the classical adaptive Newton-Cotes scheme (e.g. Gander and Gautschi 2000, "Adaptive
quadrature -- revisited", BIT 40), with the nodes confined to a precomputed grid so that the
integrand's arguments (here a probability-flow trajectory) can be produced once, by one dense ODE
solve, before any panel is refined.

All rows' panels of one refinement level are evaluated in one call of ``evaluate`` (a batch of
(node, row) pairs), so the expensive integrand is batched and no row waits on another's refinement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

Tensor = torch.Tensor

__all__ = ["adaptive_boole", "boole", "QuadratureResult", "grid_size"]


@dataclass
class QuadratureResult:
    """integral: (R,) estimates; error: (R,) sum of |B - S| over each row's accepted panels (a conservative
    error estimate); evals: (R,) integrand evaluations per row; unresolved: (R,) bool, True where a panel
    reached the grid's resolution without meeting its tolerance and the row's error estimate exceeds tol."""

    integral: Tensor
    error: Tensor
    evals: Tensor
    unresolved: Tensor


def boole(f: Tensor, w) -> Tensor:
    """Boole's rule over a panel of width w from values f[:, 0..4] at its 5 equally spaced nodes
    (f: (P, 5, ...) -> (P, ...))."""
    return w / 90 * (7 * f[:, 0] + 32 * f[:, 1] + 12 * f[:, 2] + 32 * f[:, 3] + 7 * f[:, 4])


def grid_size(panels: int, depth: int) -> int:
    """Number of grid steps M = 4 * panels * 2^depth: panels can be halved ``depth`` times."""
    if int(panels) < 1 or int(depth) < 0:
        raise ValueError(f"need panels >= 1 and depth >= 0; got panels={panels}, depth={depth}")
    return 4 * int(panels) * 2 ** int(depth)


def adaptive_boole(evaluate: Callable[[Tensor, Tensor], Tensor], rows: int, step: float, panels: int,
                   depth: int, tol: float, dtype=torch.float64, device=None,
                   must_split: Optional[Callable[[Tensor, Tensor, int], Tensor]] = None) -> QuadratureResult:
    """Adaptive Boole quadrature of ``rows`` integrands on the grid s_j = s_0 + j * step, j = 0..M,
    M = grid_size(panels, depth) (``step`` may be negative: the integral then runs downwards).

    evaluate(node, row): (n,) long grid indices and (n,) long row indices -> (n,) values h_row(s_node).
    Each (node, row) pair is asked for at most once. tol: absolute tolerance on the sum over a row's
    panels of |Boole - Simpson| (see the module docstring). must_split(row, start, width): optional
    (P,) bool, True for panels (row, first grid index, width in grid steps) known from other
    information to be too wide; they are halved before the integrand is evaluated on them.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive; got {tol}")
    M = grid_size(panels, depth)
    R = int(rows)
    values = torch.full((M + 1, R), float("nan"), dtype=dtype, device=device)
    known = torch.zeros((M + 1, R), dtype=torch.bool, device=device)
    total = torch.zeros(R, dtype=dtype, device=device)
    error = torch.zeros(R, dtype=dtype, device=device)
    unresolved = torch.zeros(R, dtype=torch.bool, device=device)
    width = M // int(panels)  # grid steps per panel at this level
    row = torch.arange(R, device=device).repeat_interleave(int(panels))
    start = torch.arange(int(panels), device=device).repeat(R) * width
    while row.numel():
        split = torch.zeros_like(row, dtype=torch.bool)
        if must_split is not None and width > 4:
            split = must_split(row, start, width).to(device=row.device, dtype=torch.bool)
        node = start[~split, None] + torch.arange(5, device=device) * (width // 4)  # (P, 5)
        rr = row[~split, None].expand_as(node)
        missing = ~known[node, rr]
        if bool(missing.any()):
            key = torch.unique(node[missing] * R + rr[missing])  # each pair once
            n_idx, r_idx = key // R, key % R
            values[n_idx, r_idx] = evaluate(n_idx, r_idx).to(dtype)
            known[n_idx, r_idx] = True
        f = values[node, rr]
        w = width * step
        simpson = w / 6 * (f[:, 0] + 4 * f[:, 2] + f[:, 4])
        panel = boole(f, w)
        est = (panel - simpson).abs()
        finest = width == 4
        ok = est <= tol * width / M
        take = ok | finest
        total.index_add_(0, rr[take, 0], panel[take])
        error.index_add_(0, rr[take, 0], est[take])
        if finest:
            unresolved[rr[~ok, 0]] = True
            break
        # halve the rejected panels and those split beforehand: [a, a + w/2] and [a + w/2, a + w]
        halve_row = torch.cat([row[split], rr[~take, 0]])
        halve_start = torch.cat([start[split], node[~take, 0]])
        width //= 2
        row = halve_row.repeat_interleave(2)
        start = halve_start.repeat_interleave(2) + torch.tensor([0, width], device=device).repeat(halve_row.numel())
    return QuadratureResult(integral=total, error=error, evals=known.sum(0), unresolved=unresolved & (error > tol))
