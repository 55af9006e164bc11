"""A data set's bits/dim through the probability-flow ODE, fast and with honest error bars: ``score_dataset``.

Every image i gets an estimate b_i of its bits/dim (``sdekit.likelihood``: the augmented ODE, all rows in one
solve with a per-row step controller, so a row is held to its own tolerance whatever its batch mates do).
The reported value is the mean over the n images, bpd = mean_i b_i, and its standard error has two parts:

    SE^2 = s^2 / n,   s^2 the sample variance of the b_i                       (total; honest in any case)
    SE_est^2 = mean_i v_i / n,   v_i the estimator's variance of b_i given image i
    SE_data^2 = max(0, SE^2 - SE_est^2)                                        (the data's sampling error)

because Var(b_i) = Var_data(E[b_i | i]) + E[Var(b_i | i)]: the spread over images contains both the data's
spread and the estimator's noise (Hutchinson probes, dequantisation draws). v_i is measured within image i:
with R >= 2 dequantisation draws (each with its own probes) the draw means a_ir are independent given the
image, v_i = var_r(a_ir) / R; with one draw and K >= 2 Hutchinson probes, v_i is the probes' spread / K (the
dequantisation part is then not separable and stays in SE_data); the exact trace on undequantised data has
v_i = 0. Otherwise the split is unknown (NaN) and only SE is reported.

Choosing the divergence when the user does not (``choose_divergence``). Per network evaluation the exact
trace needs D vector-Jacobian products (one per coordinate) and K-probe Hutchinson K of them, on top of one
forward pass; a vectorised backward pass over m cotangents of a batch of B rows costs about m B row-passes of
work. On a CPU, time is work: the exact trace is chosen when D <= 2 K (at most about twice Hutchinson's work,
with no estimator noise), Hutchinson otherwise. On an accelerator a vectorised pass costs about the same until
it fills the device: the exact trace is chosen when its whole (D, B, D) cotangent block fits in one pass
(``sdekit.likelihood.MAX_BLOCK_ELEMENTS`` elements), and by the CPU rule otherwise. Digits (D = 64) on a CPU take
Hutchinson; a 2-D toy set takes the exact trace.

Defaults (measured on digits U-Nets trained for 300, 800 and 2500 steps against a tight exact float64 solve,
benchmarks/likelihood_digits.py): dopri5 in the config's time variable (t for a VP SDE: on these nets the
log-SNR variable needed about as many steps for 3-5x the bias at the same tolerance) at rtol = atol =
``DATASET_TOL``, all rows in one solve, Rademacher probes; with dequantisation R = 2 draws of one probe each
(the within-image spread then covers both noises), without it K = 2 probes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..validate import integer
from .api import log_likelihood
from .bpd import bits_per_dim
from .config import LikelihoodConfig
from .divergence import MAX_BLOCK_ELEMENTS
from .inputs import check_model, check_x

Tensor = torch.Tensor

__all__ = ["score_dataset", "DatasetScore", "choose_divergence", "DATASET_TOL"]

# rtol = atol of the dataset solve when the user gives none: chosen for a bias well under 0.005 bits/dim
# (measured, module docstring), not for one checkpoint.
DATASET_TOL = 1e-3


@dataclass
class DatasetScore:
    """What ``score_dataset`` returns. Bits/dim figures are floats; per-image values are float64 tensors.

    bpd, bpd_se: the mean bits/dim over the n images and its standard error (spread over images / sqrt n);
    se_data, se_estimator: the two parts of bpd_se (module docstring; NaN when not separable);
    per_image: (n,) bits/dim per image (mean over draws and probes); per_image_se: (n,) the estimator's
    standard error of each (NaN when not measurable); per_image_log_prob: (n,) model-space log p in nats;
    nfe: network evaluations over all solves; solves; seconds: wall time (cpu_seconds: this process's CPU
    time, less sensitive to other load on a shared machine); divergence, probes, repeats, rtol,
    atol, time_variable: the settings used; reason: why this divergence; stats: the last solve's numbers.
    """

    bpd: float
    bpd_se: float
    se_data: float
    se_estimator: float
    n: int
    seconds: float
    per_image: Tensor
    per_image_se: Tensor
    per_image_log_prob: Tensor
    nfe: int
    solves: int
    divergence: str
    probes: int
    repeats: int
    rtol: float
    atol: float
    time_variable: str
    reason: str = ""
    cpu_seconds: float = math.nan
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """{"bpd", "bpd_se", "se_data", "se_estimator", "n", "seconds", "per_image": [...], ...} (JSON-able)."""
        def num(v: float):
            return None if not math.isfinite(v) else v

        return {"bpd": num(self.bpd), "bpd_se": num(self.bpd_se), "se_data": num(self.se_data),
                "se_estimator": num(self.se_estimator), "n": self.n, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds,
                "per_image": [num(v) for v in self.per_image.tolist()],
                "per_image_se": [num(v) for v in self.per_image_se.tolist()],
                "per_image_log_prob": [num(v) for v in self.per_image_log_prob.tolist()],
                "nfe": self.nfe, "solves": self.solves, "divergence": self.divergence, "probes": self.probes,
                "repeats": self.repeats, "rtol": self.rtol, "atol": self.atol, "time_variable": self.time_variable,
                "reason": self.reason}


def choose_divergence(dim: int, batch: int, probes: int, device=None) -> tuple[str, str]:
    """("exact" or "hutchinson", the reason) by cost for D = ``dim`` coordinates, ``batch`` rows per solve and
    K = ``probes`` Hutchinson probes (module docstring)."""
    accelerated = torch.device(device).type != "cpu" if device is not None else False
    if accelerated and batch * dim * dim <= MAX_BLOCK_ELEMENTS:
        return "exact", (f"exact trace: its {dim} x {batch} x {dim} cotangent block fits one vectorised pass on "
                         f"{torch.device(device).type}")
    if dim <= 2 * probes:
        return "exact", f"exact trace: D = {dim} <= 2 K = {2 * probes} vector-Jacobian products per evaluation"
    return "hutchinson", (f"Hutchinson: {probes} vector-Jacobian product(s) per evaluation instead of D = {dim} "
                          "for the exact trace")


def score_dataset(model, x: Tensor, config: Optional[LikelihoodConfig] = None, *, divergence: str = "auto",
                  probes: Optional[int] = None, repeats: Optional[int] = None, rtol: Optional[float] = None,
                  atol: Optional[float] = None, time_variable: Optional[str] = None, batch: Optional[int] = None,
                  progress: bool = False, **settings) -> DatasetScore:
    """Bits/dim of every row of x (n, ...) and their mean with its standard error split into the data's
    sampling error and the estimator's (module docstring).

    config / settings: the ``LikelihoodConfig`` (bits, data_scale, dequantize, seed, method, max_nfe, ...);
    the arguments named here default as documented above when None / "auto": divergence by
    ``choose_divergence``, probes and repeats by dequantisation, rtol = atol = ``DATASET_TOL``,
    time_variable the config's. batch: rows per solve (default: all n in one solve);
    row i always draws its probes and dequantisation from (seed, i), whatever the batching.
    """
    check_model(model)  # before any work (a ThresholdedModel is refused by name)
    x = check_x(x)
    base = LikelihoodConfig.make(config, **settings)
    n = x.shape[0]  # >= 1 (check_x)
    batch = n if batch is None else integer("batch", batch, 1)
    batch = min(batch, n)
    if repeats is None:
        repeats = 2 if base.dequantize else 1
    hutch_probes = probes if probes is not None else (1 if repeats >= 2 else 2)
    D = math.prod(x.shape[1:])
    reason = f"{divergence} (given)"
    if divergence == "auto" and base.integrate == "quadrature":
        divergence, reason = "exact", "exact trace: integrate='quadrature' evaluates it only where needed"
    elif divergence == "auto":
        divergence, reason = choose_divergence(D, batch * repeats, hutch_probes, x.device)
    time_variable = base.time_variable if time_variable is None else time_variable
    tol_r = DATASET_TOL if rtol is None else rtol
    tol_a = DATASET_TOL if atol is None else atol
    cfg = LikelihoodConfig.make(base, divergence=divergence, probes=hutch_probes if divergence == "hutchinson" else 1,
                                repeats=repeats, rtol=tol_r, atol=tol_a, time_variable=time_variable)
    draws = torch.empty(repeats, n, dtype=torch.float64)
    probe_se = torch.full((n,), math.nan, dtype=torch.float64)
    nfe, solves, stats = 0, 0, {}
    start, cpu = time.perf_counter(), time.process_time()
    for a in range(0, n, batch):
        res = log_likelihood(model, x[a:a + batch], cfg, row_offset=a, progress=progress)
        draws[:, a:a + batch] = res.per_draw.detach().double().cpu()  # type: ignore[union-attr]
        if res.stderr is not None:
            probe_se[a:a + batch] = res.stderr.detach().double().cpu()
        nfe, solves, stats = nfe + res.nfe, solves + 1, res.stats
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    log_prob = draws.mean(0)
    to_bpd = dict(bits=cfg.bits, data_range=cfg.data_range, data_scale=cfg.data_scale, warn=False)
    per_image = bits_per_dim(log_prob, D, **to_bpd).double()  # type: ignore[arg-type]
    var_est = _estimator_variance(draws, probe_se, cfg, D)
    bpd_se = float(per_image.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    se_est = float((var_est.mean() / n).sqrt())
    se_data = math.sqrt(max(0.0, bpd_se**2 - se_est**2)) if math.isfinite(se_est) else math.nan
    return DatasetScore(bpd=float(per_image.mean()), bpd_se=bpd_se, se_data=se_data, se_estimator=se_est, n=n,
                        seconds=seconds, per_image=per_image, per_image_se=var_est.sqrt(),
                        per_image_log_prob=log_prob, nfe=nfe, solves=solves, divergence=divergence,
                        probes=cfg.probes if divergence == "hutchinson" else 0, repeats=repeats, rtol=tol_r,
                        atol=tol_a, time_variable=stats.get("time_variable", time_variable), reason=reason,
                        cpu_seconds=cpu, stats=stats)


def _estimator_variance(draws: Tensor, probe_se: Tensor, cfg: LikelihoodConfig, D: int) -> Tensor:
    """v_i, the estimator's variance of each image's bits/dim (module docstring): from the R >= 2 draw means,
    else from the Hutchinson probes' spread, 0 for the exact trace on undequantised data, NaN when unknown."""
    n = draws.shape[1]
    nats_per_bit = D * math.log(2)
    if cfg.repeats >= 2:
        return draws.var(0, unbiased=True) / cfg.repeats / nats_per_bit**2
    if cfg.divergence == "hutchinson":
        return probe_se.pow(2) / nats_per_bit**2  # NaN for one probe
    if not cfg.dequantize:
        return torch.zeros(n, dtype=torch.float64)
    return torch.full((n,), math.nan, dtype=torch.float64)
