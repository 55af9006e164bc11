"""The likelihood's two solves on sdekit's integration core (``sdekit.solvers.integrate``).

``solve_augmented``: [x, acc] as one ODE, d/ds [x, acc] = [F, div F] dt/ds, every row held to rtol/atol.
``solve_by_quadrature``: x alone, saved on a uniform grid, then each row's exact divergence integrated along
it by adaptive Boole quadrature (``sdekit.likelihood.quadrature``), evaluated only where that row needs it.
"""
from __future__ import annotations

import warnings

import torch
from tqdm.auto import tqdm

from ..solvers.integrate import integrate
from .config import LikelihoodConfig
from .quadrature import adaptive_boole, boole, grid_size
from .terms import AugmentedTerm, check_finite

Tensor = torch.Tensor

__all__ = ["solve_augmented", "solve_by_quadrature", "quadrature_grid", "TRAJECTORY_SPLIT_TOL"]

# integrate="quadrature": a panel is halved before any divergence evaluation when Boole's rule on the
# trajectory's own velocity misses its displacement by more than this fraction of its path length.
TRAJECTORY_SPLIT_TOL = 3e-3


def solve_augmented(term: AugmentedTerm, xs: Tensor, cfg: LikelihoodConfig, s_bounds: list, progress):
    """[x, acc] from s_bounds[0] to s_bounds[1] by the core. Returns (z, acc, stats)."""
    N = xs.shape[0]
    acc0 = xs.new_zeros((N,) if cfg.divergence == "exact" else (N, cfg.probes))
    term.create_graph = cfg.create_graph
    with torch.enable_grad() if cfg.create_graph else torch.no_grad(), warnings.catch_warnings():
        # the core reads its error norm with float() (a step-size decision, not differentiated), which torch
        # flags for a tensor in a graph
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
        sol = integrate(term, (xs, acc0), s_bounds, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                        max_nfe=cfg.max_nfe, step_size=cfg.step_size, progress=progress)
    z, acc = sol.x
    return z, acc, {"integrate": "augmented", **sol.stats}


def quadrature_grid(term: AugmentedTerm, quad_map, M: int, s_bounds: list):
    """(grid in the quadrature variable, t on it, dt/d(quadrature variable), the save times in the solve's)."""
    t_lo, t_hi = term.t_lo, term.t_hi
    if quad_map is None:  # quadrature in t
        grid = torch.linspace(t_lo, t_hi, M + 1, dtype=torch.float64)
        t_grid, dtds = grid.clone(), torch.ones_like(grid)
    else:  # in lambda = log-SNR: the divergence is a sum of sigmoids there (one per data scale)
        lam_lo_t, lam_hi_t = quad_map.log_snr_bounds
        grid = torch.linspace(lam_lo_t, lam_hi_t, M + 1, dtype=torch.float64)
        t_grid, dtds = quad_map(grid)
    t_grid = t_grid.clamp(t_lo, t_hi)
    t_grid[0], t_grid[-1] = t_lo, t_hi
    save = (t_grid if term.time_map is None else grid).clone()  # a solve in lambda implies quadrature in lambda
    save[0], save[-1] = s_bounds[0], s_bounds[1]
    return grid, t_grid, dtds, save


def _trajectory(term: AugmentedTerm, xs: Tensor, cfg: LikelihoodConfig, s_bounds: list, save: Tensor, progress):
    """x alone from s_bounds[0] to s_bounds[1], saved at ``save``: ((M + 1, N, ...) trajectory, stats)."""
    path = AugmentedTerm(term.drift, xs.shape, None, None, term.backend, None, (term.t_lo, term.t_hi),
                         time_map=term.time_map)
    with torch.no_grad():
        sol = integrate(path, xs, s_bounds, save_ts=save, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                        max_nfe=cfg.max_nfe, step_size=cfg.step_size, progress=progress)
    return torch.stack(sol.trajectory or []), sol.stats


def _divergence_on_grid(term: AugmentedTerm, traj: Tensor, t_grid: Tensor, dtds: Tensor, bar):
    """evaluate(node, row) for ``adaptive_boole``: div F dt/ds at the saved trajectory's (node, row) pairs,
    in passes of at most N rows (the caller's batch size bounds the memory of one pass)."""
    N = traj.shape[1]
    device = traj.device

    def evaluate(node: Tensor, row: Tensor) -> Tensor:
        node_c, row_c = node.cpu(), row.to(device)
        bar.update(node.numel() / N)
        out = []
        for a in range(0, node.numel(), N):
            n_sl, r_sl = node_c[a:a + N], row_c[a:a + N]
            t = t_grid[n_sl]
            _, div = term.divergence_at(traj[n_sl.to(device), r_sl], t)
            check_finite(div, None, t)
            out.append(div * dtds[n_sl].to(device=div.device, dtype=div.dtype))
        return torch.cat(out)

    return evaluate


def solve_by_quadrature(term: AugmentedTerm, xs: Tensor, cfg: LikelihoodConfig, s_bounds: list, quad_map, progress,
                        show: bool):
    """Solve dx/ds = F dt/ds alone (no divergence; s is ``term``'s time variable, t or lambda) saved at the
    M + 1 points of a uniform grid in the quadrature variable (lambda when ``quad_map`` is given, else t),
    then integrate div F along it row by row with ``adaptive_boole``. Returns (z, delta, stats).

    The exact divergence costs D vector-Jacobian products per evaluation and the drift one forward pass,
    so the trajectory takes as many cheap steps as its tolerance needs, while each row's divergence is
    evaluated only at the grid points its own integrand needs (smooth rows: the 4 * panels + 1 coarsest
    points; rows with sharp features: more, where the features are). The grid points come from the core's
    dense output (dopri5: 4th-order interpolation inside accepted steps). The trajectory on the grid also
    tells where the divergence may change fast: a panel whose 5 nodes do not resolve the trajectory's
    velocity is halved before any divergence evaluation (``must_split``). Holds the (M + 1, batch, ...)
    trajectory in memory.
    """
    M = grid_size(cfg.quad_panels, cfg.quad_depth)
    grid, t_grid, dtds, save = quadrature_grid(term, quad_map, M, s_bounds)
    traj, stats = _trajectory(term, xs, cfg, s_bounds, save, progress)
    N = xs.shape[0]
    bar = tqdm(desc="divergence evaluations per row", unit="eval", disable=not show, leave=False,
               bar_format="{desc}: {n:.1f} [{elapsed}]")
    step = float(grid[1] - grid[0])
    with torch.no_grad(), bar:
        q = adaptive_boole(_divergence_on_grid(term, traj, t_grid, dtds, bar), N, step, cfg.quad_panels,
                           cfg.quad_depth, cfg.quad_tol, dtype=xs.dtype, device=xs.device,
                           must_split=must_split(traj.reshape(M + 1, N, -1), step))
        bar.refresh()
    unresolved = int(q.unresolved.sum())
    if unresolved:
        warnings.warn(
            f"{unresolved} of {N} rows reached the quadrature grid's resolution (quad_depth={cfg.quad_depth}) "
            f"without meeting quad_tol={cfg.quad_tol}; raise quad_depth or quad_panels for them", RuntimeWarning,
            stacklevel=3,
        )
    stats = {**stats, "integrate": "quadrature", "grid_points": M + 1, "quad_tol": cfg.quad_tol,
             "quadrature_variable": "t" if quad_map is None else "log_snr",
             "divergence_evals_per_row": float(q.evals.double().mean()),
             "quadrature_error_estimate": q.error, "unresolved_rows": unresolved}
    return traj[-1], q.integral, stats


def must_split(flat: Tensor, step: float):
    """Panels on which the trajectory flat (M + 1, N, D) itself is not resolved: Boole's rule on the velocity
    at the panel's 5 nodes (central differences on the grid) misses the displacement x(b) - x(a) by more
    than TRAJECTORY_SPLIT_TOL of the panel's path-length scale. Costs no model evaluation."""
    M = flat.shape[0] - 1
    five = torch.arange(5, device=flat.device)

    def split(row: Tensor, start: Tensor, width: int) -> Tensor:
        node = start[:, None].to(flat.device) + five * (width // 4)  # (P, 5)
        r = row[:, None].to(flat.device)
        lo, hi = (node - 1).clamp(0, M), (node + 1).clamp(0, M)
        v = (flat[hi, r] - flat[lo, r]) / ((hi - lo) * step).unsqueeze(-1).to(flat.dtype)  # (P, 5, D)
        w = width * step
        dx = flat[node[:, 4], row.to(flat.device)] - flat[node[:, 0], row.to(flat.device)]
        scale = abs(w) * v.norm(dim=-1).amax(1)
        return ((boole(v, w) - dx).norm(dim=-1) > TRAJECTORY_SPLIT_TOL * scale).cpu()

    return split
