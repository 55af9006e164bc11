"""The likelihood's entry points: ``log_likelihood`` (data -> log-density) and ``sample_log_prob`` (prior
draws -> samples with their log-density), both by the augmented probability-flow ODE (``sdekit.likelihood``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from ..noise import RowNoise
from .bpd import bits_per_dim, dequantize, warn_negative
from .config import LikelihoodConfig
from .inputs import check_model, check_network, check_times, check_x
from .solve import solve_augmented, solve_by_quadrature
from .terms import AugmentedTerm, Drift, LogSNRMap, use_log_snr

Tensor = torch.Tensor

__all__ = ["log_likelihood", "sample_log_prob", "LikelihoodResult"]


@dataclass
class LikelihoodResult:
    """What ``log_likelihood`` returns.

    log_prob: (batch,) log p_{t_data}(x) in nats, the model-space density (averaged over the
        dequantisation draws when ``dequantize=True``); equals prior + delta.
    bpd:      (batch,) bits per dimension under the data convention given (see ``bits_per_dim``).
    nfe:      drift evaluations (network calls) made by the solve.
    prior:    (batch,) log p_{t_prior}(z), the prior term (averaged over dequantisation draws).
    delta:    (batch,) int_{t_data}^{t_prior} div F dt (Hutchinson: mean over probes; averaged over draws).
    z:        latent x_{t_prior}; shape (batch, ...) or (repeats, batch, ...) when repeats > 1.
    stderr:   (batch,) Hutchinson standard error of delta across probes (NaN for one probe);
              None for the exact divergence.
    per_draw: (repeats, batch) log p of each dequantisation draw (probes averaged); log_prob is its mean
              over draws. With repeats >= 2 its spread over draws gives the estimator's error per row.
    stats:    the solve's numbers (steps, accepted, rejected, method, times, ...), as ``Solution.stats``.
    """

    log_prob: Tensor
    bpd: Tensor
    nfe: int
    prior: Tensor
    delta: Tensor
    z: Tensor
    stderr: Optional[Tensor] = None
    divergence: str = "exact"
    probes: int = 0
    backend: str = ""
    stats: dict = field(default_factory=dict)
    per_draw: Optional[Tensor] = None


def _probes(cfg: LikelihoodConfig, rows: RowNoise, N: int, event: tuple, like: Tensor) -> Optional[Tensor]:
    """Hutchinson probes (K, N, *event) matching the (repeat, row) order of the solved points; per row
    (seed, row_offset + i), so a row's estimate does not depend on its batch beyond the shared steps."""
    if cfg.divergence != "hutchinson":
        return None
    per_row = (N // rows.n_rows, cfg.probes, *event)  # (repeats, probes, ...) for each data row
    if cfg.noise == "rademacher":
        def draw(g):
            return torch.randint(0, 2, per_row, generator=g).to(torch.float64) * 2 - 1
    else:
        def draw(g):
            return torch.randn(per_row, generator=g, dtype=torch.float64)
    probes = rows.draw(draw).permute(2, 1, 0, *range(3, 3 + len(event))).reshape(cfg.probes, N, *event)
    return probes.to(device=like.device, dtype=like.dtype)


def _build(model, xs: Tensor, cfg: LikelihoodConfig, rows: RowNoise, t0: float, t1: float):
    """(the augmented term, the quadrature's log-SNR map or None, the solve's interval in its variable)."""
    sde = model.sde
    use_lambda = use_log_snr(cfg.time_variable, sde, t0, t1)
    time_map = LogSNRMap(sde, t0, t1) if use_lambda else None
    # the divergence along a trajectory is a sum of sigmoids in lambda (one per data scale): quadrature is done
    # in lambda whenever the SDE has it, whatever variable the trajectory is solved in
    quad_map = None
    if cfg.integrate == "quadrature" and use_log_snr("auto", sde, t0, t1, prefer_lambda=True):
        quad_map = time_map or LogSNRMap(sde, t0, t1)
    term = AugmentedTerm(Drift(model), xs.shape, cfg.divergence, _probes(cfg, rows, xs.shape[0], tuple(xs.shape[1:]), xs),
                         cfg.jacobian, cfg.chunk_size, (t0, t1), time_map=time_map)
    s_bounds = list(time_map.log_snr_bounds) if time_map is not None else [t0, t1]
    return term, quad_map, s_bounds


class _Progress:
    """A tqdm bar of the solve's position in [t_data, t_prior] (thousandths, never moving back) with its NFE."""

    def __init__(self, term: AugmentedTerm, cfg: LikelihoodConfig, show: bool, reverse: bool = False):
        self.term, self.show, self.reverse = term, show, reverse
        what = "trajectory" if cfg.integrate == "quadrature" else cfg.divergence
        self.bar = tqdm(total=1000, desc=f"log-likelihood ({what})", disable=not show, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def __call__(self, s: float, nfe: int, stats: dict) -> None:
        t = float(self.term.time(torch.tensor(s, dtype=torch.float64))[0])
        lo, hi = self.term.t_lo, self.term.t_hi
        done = int(1000 * min(max((hi - t if self.reverse else t - lo) / (hi - lo), 0.0), 1.0))
        if done > self.bar.n:
            self.bar.set_postfix_str(f"t={t:.4g} NFE {self.term.drift.nfe}", refresh=False)
            self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if self.show and kind is None:  # the final state, whatever tqdm's display interval let through
            end = self.term.t_lo if self.reverse else self.term.t_hi
            self.bar.set_postfix_str(f"t={end:.4g} NFE {self.term.drift.nfe}", refresh=False)
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.refresh()
        self.bar.close()


def _reduce(cfg: LikelihoodConfig, B: int, z: Tensor, acc: Tensor, prior_fn, dtype) -> dict:
    """Prior + divergence integral per solved point, averaged over the R dequantisation draws of each row."""
    N = z.shape[0]
    prior = prior_fn(z)
    if not isinstance(prior, Tensor) or prior.shape != (N,):
        raise ValueError(f"prior_log_prob must return a (batch,) = ({N},) tensor; "
                         f"got {getattr(prior, 'shape', type(prior).__name__)}")
    R = N // B
    stderr = None
    per_draw = prior.to(dtype) + (acc.mean(1) if acc.ndim == 2 else acc)
    if cfg.divergence == "hutchinson":  # acc: (N, K)
        stderr = acc.std(1, unbiased=True) / math.sqrt(cfg.probes) if cfg.probes > 1 else \
            torch.full_like(acc[:, 0], float("nan"))
        stderr = stderr.reshape(R, B).pow(2).sum(0).sqrt() / R
        acc = acc.mean(1)
    prior, delta = prior.to(dtype).reshape(R, B), acc.reshape(R, B)
    z = z.reshape(R, B, *z.shape[1:])
    return dict(log_prob=(prior + delta).mean(0), prior=prior.mean(0), delta=delta.mean(0),
                z=z[0] if R == 1 else z, stderr=stderr, per_draw=per_draw.reshape(R, B))


def _prepare(model, x, cfg: LikelihoodConfig, prior_log_prob, row_offset: int):
    """The checks shared by ``log_likelihood`` and ``sample_log_prob``: (x, t_data, t_prior, prior, per-row noise)."""
    check_model(model)
    x = check_x(x)
    if not cfg.create_graph:
        x = x.detach()
    t0, t1 = check_times(model.sde, cfg.t_data, cfg.t_prior)
    prior_fn = model.sde.prior_log_prob if prior_log_prob is None else prior_log_prob
    if not callable(prior_fn):
        raise TypeError("prior_log_prob must be a callable z -> (batch,) log-density")
    return x, t0, t1, prior_fn, RowNoise(cfg.seed, x.shape[0], row_offset)


def log_likelihood(model, x: Tensor, config: Optional[LikelihoodConfig] = None, *,
                   prior_log_prob: Optional[Callable[[Tensor], Tensor]] = None, row_offset: int = 0,
                   progress: bool = False, **settings) -> LikelihoodResult:
    """log p_{t_data}(x) = log p_{t_prior}(x_{t_prior}) + int_{t_data}^{t_prior} div F dt by the probability-flow ODE.

    model: a ``ScoreModel`` (or any object with ``.sde`` and ``.score(x, t)``); F(x, t) =
        ``model.sde.probability_flow_drift(x, t, model.score(x, t))``, so a general ``SDE`` works too.
    x: (batch, ...) float32 or float64 data in model space; the solve stays on x's device and dtype.
    config: a ``LikelihoodConfig``; ``settings`` (its field names as keywords) replace its fields.
    prior_log_prob: z -> (batch,) log-density of x_{t_prior}; default ``model.sde.prior_log_prob`` (only
        approximately p_T: pass the exact p_T when comparing against ground truth).
    row_offset: row i draws its probes and dequantisation offsets from (seed, row_offset + i), so a shard of
        rows [a, b) reproduces with ``row_offset=a`` (see ``sdekit.distributed``).
    progress: a progress bar of the solve's position with its NFE (and, for quadrature, a counter of the
        divergence evaluations per row).

    Errors of the solve are ``SolverError``s (``StepBudgetError`` past max_nfe, ``NonFiniteError`` for a
    drift or divergence that is not finite).

    Gradients: by default none flows back to x or the model. With ``create_graph=True`` the solve is
    recorded by autograd (every stage of every accepted and rejected step, and the vector-Jacobian products
    of the divergence with create_graph), so ``log_prob`` (and ``bpd``) can be differentiated with respect
    to x and to the network's parameters: the exact derivative of the computed value, step sizes held
    fixed (discretise-then-differentiate). Memory grows with the number of steps; use small batches.
    """
    cfg = LikelihoodConfig.make(config, **settings)
    x, t0, t1, prior_fn, rows = _prepare(model, x, cfg, prior_log_prob, row_offset)
    xs = dequantize(x, cfg, rows)
    check_network(model, xs, t0)
    term, quad_map, s_bounds = _build(model, xs, cfg, rows, t0, t1)
    with _Progress(term, cfg, progress) as bar:
        if cfg.integrate == "quadrature":
            z, acc, stats = solve_by_quadrature(term, xs, cfg, s_bounds, quad_map, bar, progress)
        else:
            z, acc, stats = solve_augmented(term, xs, cfg, s_bounds, bar)
    out = _reduce(cfg, x.shape[0], z, acc, prior_fn, x.dtype)
    D = math.prod(x.shape[1:])
    bpd = bits_per_dim(out["log_prob"], D, bits=cfg.bits, data_range=cfg.data_range, data_scale=cfg.data_scale,
                       warn=False)
    if cfg.bits is not None or cfg.dequantize:
        warn_negative(bpd, f"{cfg.bits}-bit data" if cfg.bits else "discrete data", cfg.dequantize)
    stats.update(t_data=t0, t_prior=t1, rtol=cfg.rtol, atol=cfg.atol, repeats=xs.shape[0] // x.shape[0],
                 time_variable="log_snr" if term.time_map is not None else "t",
                 scale=cfg.bin_width)
    return LikelihoodResult(bpd=bpd, nfe=term.drift.nfe, divergence=cfg.divergence, backend=term.backend,
                            probes=cfg.probes if cfg.divergence == "hutchinson" else 0, stats=stats, **out)


def sample_log_prob(model, x_T: Tensor, config: Optional[LikelihoodConfig] = None, *,
                    prior_log_prob: Optional[Callable[[Tensor], Tensor]] = None, row_offset: int = 0,
                    progress: bool = False, **settings) -> tuple[Tensor, Tensor, dict]:
    """Generate by the probability-flow ODE and return each sample's log-density from the same solve.

    The augmented ODE d/ds [x, a] = [F, div F] dt/ds runs backwards, from x_T at t_prior to t_data with
    a(t_prior) = 0 (s = t or the log-SNR, as in ``log_likelihood``), so a(t_data) = -int_{t_data}^{t_prior}
    div F dt and, by the instantaneous change of variables (Chen et al. 2018),

        log p_{t_data}(x_{t_data}) = log p_{t_prior}(x_T) - a(t_data).

    Returns (x_0, log_prob, stats): x_0 = x_{t_data} (batch, ...), log_prob (batch,) in nats under the
    prior ``prior_log_prob`` (default ``model.sde.prior_log_prob``: pass the exact p_T of a ground-truth
    model), stats the solve's numbers plus nfe, prior (batch,), delta = int div F dt (batch,) and stderr
    (Hutchinson's per-row standard error, or None). The settings are ``LikelihoodConfig``'s (divergence,
    probes, method, rtol, atol, time_variable, create_graph, ...); dequantisation and bits do not apply.
    ``sdekit.sample(..., log_prob=True)`` calls this.
    """
    cfg = LikelihoodConfig.make(config, **settings)
    if cfg.dequantize or cfg.integrate != "augmented":
        raise ValueError("sample_log_prob solves the augmented ODE of generated samples: dequantize and "
                         "integrate='quadrature' do not apply")
    x_T, t0, t1, prior_fn, rows = _prepare(model, x_T, cfg, prior_log_prob, row_offset)
    check_network(model, x_T, t1)
    term, _, s_bounds = _build(model, x_T, cfg, rows, t0, t1)
    with _Progress(term, cfg, progress, reverse=True) as bar:
        x0, acc, stats = solve_augmented(term, x_T, cfg, s_bounds[::-1], bar)
    out = _reduce(cfg, x_T.shape[0], x_T, -acc, prior_fn, x_T.dtype)
    stats.update(nfe=term.drift.nfe, prior=out["prior"], delta=out["delta"], stderr=out["stderr"], t_data=t0,
                 t_prior=t1, time_variable="log_snr" if term.time_map is not None else "t")
    return x0, out["log_prob"], stats
