"""Log-likelihoods through the probability-flow ODE, with exact or Hutchinson divergence, and bits/dim.

The probability-flow ODE dx/dt = F(x, t) = drift(x, t) - g(t)^2 score(x, t) / 2 carries p_t into p_s.
Along a trajectory the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", thm. 1)
gives d/dt log p_t(x_t) = -div F(x_t, t), hence

    log p_{t_data}(x) = log p_{t_prior}(x_{t_prior}) + int_{t_data}^{t_prior} div F(x_t, t) dt,   x_{t_data} = x.

This package brings the terms; the solve is sdekit's one integration core (``sdekit.solvers.integrate``:
tableau, per-row step control, budget in network calls, exact landing on t_prior, save times, the
``SolverError`` family). ``integrate="augmented"`` solves d/ds [x, a] = [F, div F] dt/ds forward from
t_data to t_prior (Song et al. 2021, "Score-Based Generative Modeling through SDEs", appendix D.2), s = t
or the log-SNR lambda; every row's x and accumulators are held to rtol/atol, as if solved alone. div F is
either the exact trace of dF/dx (one vector-Jacobian product per coordinate, all in one vmap-vectorised
backward pass) or Hutchinson's estimator E_v[v^T (dF/dx) v] with K probes v (Rademacher or Gaussian)
drawn once per solve; the K probes ride in one solve as K accumulators, so the spread across probes
gives a per-row standard error. ``integrate="quadrature"`` solves the trajectory alone with values
saved on a uniform log-SNR grid, then integrates each row's exact divergence along it by adaptive
quadrature (``sdekit.likelihood.quadrature``), evaluated only where that row's integrand needs it.

Settings travel as one frozen ``LikelihoodConfig`` (checked once, on creation); ``log_likelihood(model, x,
config)`` or ``log_likelihood(model, x, rtol=..., ...)`` with its field names as keywords.

Modules, one job each: ``config`` (``LikelihoodConfig`` and its checks), ``inputs`` (the model, x and interval
checks), ``divergence`` (exact trace and Hutchinson by vector-Jacobian products), ``terms`` (the drift and the
augmented term), ``solve`` (the augmented and the quadrature solve), ``quadrature`` (row-wise adaptive Boole),
``api`` (``log_likelihood``, ``sample_log_prob``), ``bpd`` (bits/dim and dequantisation) and ``dataset``
(``score_dataset``: a data set's bits/dim with its error bars). This package re-exports their public names.
"""
from __future__ import annotations

from .api import LikelihoodResult, log_likelihood, sample_log_prob
from .bpd import NegativeBPDWarning, bits_per_dim, dequantize
from .config import (ADAPTIVE_METHODS, DIVERGENCES, INTEGRATORS, JACOBIAN_BACKENDS, NOISES, TIME_VARIABLES,
                     LikelihoodConfig)
from .dataset import DATASET_TOL, DatasetScore, choose_divergence, score_dataset
from .divergence import MAX_BLOCK_ELEMENTS
from .quadrature import QuadratureResult, adaptive_boole, boole, grid_size
from .terms import AugmentedTerm, Drift, LogSNRMap

__all__ = [
    "log_likelihood",
    "sample_log_prob",
    "LikelihoodConfig",
    "LikelihoodResult",
    "bits_per_dim",
    "dequantize",
    "score_dataset",
    "DatasetScore",
    "choose_divergence",
    "DATASET_TOL",
    "AugmentedTerm",
    "Drift",
    "LogSNRMap",
    "NegativeBPDWarning",
    "DIVERGENCES",
    "INTEGRATORS",
    "NOISES",
    "JACOBIAN_BACKENDS",
    "TIME_VARIABLES",
    "MAX_BLOCK_ELEMENTS",
    "ADAPTIVE_METHODS",
    "adaptive_boole",
    "boole",
    "grid_size",
    "QuadratureResult",
]
