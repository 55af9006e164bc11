"""Solvers learned per model: a non-stationary multistep family in data-prediction form, fitted from prior draws.

At 4-6 network calls a fixed solver's error is mostly truncation error that no placement of its steps removes;
a solver whose every coefficient is fitted to one model removes much of it (Bespoke Solvers, Shaul et al. 2024;
BNS, "Bespoke Non-Stationary Solvers", Shaul et al. 2024; S4S, Frankel et al. 2025; LD3, Tong et al. 2024, for
the grid by back-propagation through the solver). ``learn_solver`` fits the family

    m_j = x0(x_j, t_j)                                          (the model's data prediction, 1 call per step)
    x_{i+1} = a_i x_i + sum_{j<=i} b_ij m_j,   i = 0..N-1     (x_0 = x_T at t_0 = T, x_N at t_N = sde.eps)

with N = ``nfe`` network calls, scalar a_i and b_ij shared by every entry of every row, and the times t_1 > ... >
t_{N-1} learned too: N + N(N+1)/2 + (N - 1) parameters (24 at N = 5). Every linear solver that calls the model once
per step, at its state and grid time, is a point of this family, since x_T = (x_i - sum_j B_ij m_j)/A_i below:
DDIM/DPM-Solver++(1) (a_i = sigma_{i+1}/sigma_i, b_ii = alpha_{i+1}(1 - e^{-h_i})), DPM-Solver++(2M/3M), UniPC (its
corrector folds in), DEIS, iPNDM, Euler in t (eps = (x - alpha x0)/sigma folds into a_i and b_ij). The starting
point is such a solver, read off exactly: ``_probe`` runs the registered solver on coefficient rows over [x_T, m_0,
..., m_{N-1}] (a model call returns the next basis row), so x_{i+1} = A_{i+1} x_T + sum_j B_{i+1,j} m_j and a_i =
A_{i+1}/A_i, b_ij = B_{i+1,j} - a_i B_ij. Learning starts there: the learned solver before its first update
reproduces the init on its grid to rounding.

Parametrisation (what Adam moves; all zero-centred at the init): a_i = a_i^0 (1 + u_i); b_ij = b_ij^0 +
c_i v_ij with c_i = max_j |b_ij^0| (the step's own scale); the times by softmax increments in normalised log-SNR,
z_k = sum_{j<k} w_j / sum_j w_j, w = exp(theta), lambda(t_k) = lambda(T) + z_k (lambda(eps) - lambda(T)) (every
theta a strictly decreasing grid with fixed ends; ``tune``'s parametrisation), theta^0 the init grid's. The
gradient reaches the times through the network's time input (t = t(lambda), d t/d lambda = 1/lambda'(t)).

Objective (no data; ``tune``'s draws): x_T^(1..n) from the prior, x_ref = a converged solve of the same
probability-flow ODE (rk4, ``ref_steps`` log-SNR steps), e_r = |x_N^(r) - x_ref^(r)| / sqrt(dim), and

    L = (mean_r log e_r + log mean{e_r : q80(e) <= e_r <= q95(e)}) / 2,

the log of the geometric mean (the body) plus the log of the upper tail that p90 sees, with the top 5% left out:
not ruled by the few rows near a boundary between basins that dominate an RMS (measured on a 16-D mixture at
NFE 5: the geometric mean alone lowers the median 3x but raises p90 over the init's). Full-batch Adam for
``steps`` updates at ``lr`` (cosine decay); the iterate with the lowest L is kept.

Generalisation. A second, independent prior draw (with its own reference) scores the learned solver against its
init; the learned one is returned only if it wins there on tune's balanced objective (log q50(e) + log q90(e))/2
and is no worse on the median nor on p90, else the init is (``LearnedSolver.improved`` says which), so it is never
worse than its init on fresh draws (up to that draw's noise). The cost is counted in forward network calls (each a
batch of ``n`` rows, references included; every training update also back-propagates through its N calls) and
seconds.

Identity. A ``LearnedSolver`` carries the fingerprint of its model (``fingerprint.model_fingerprint``: a hash of the network's
tensors, the SDE and the prediction type, plus the tensors of plain objects its modules hold: ``model_identity``);
``sample`` and ``LearnedSolver.load`` refuse another model with ``WrongModelError``. It saves as a small
safetensors file (ts, a, b and the facts as metadata).

Ends of the grid. The grid starts at sde.T. On the flow-matching paths (RectifiedFlow, CondOT, CosinePath, a
zero-SNR table: alpha(T) = 0, lambda(T) = -inf) the first step starts at pure noise, where the data-form step is
exact (x_1 = sigma_1 x_T + alpha_1 m_0 for DDIM/DPM-Solver++: ``exponential.py``), so any init that runs from
alpha = 0 (dpmpp_2m, dpmpp_3m, unipc_*, ddim, euler) is read off as above and the family contains it; an init that
refuses alpha = 0 (ipndm, deis_*) is refused by name, and a path on which the network at T determines nothing
(PolynomialPath, alpha'(T) = sigma'(T) = 0) is refused with the solvers' own error. Where a grid end has an infinite
log-SNR, the times are parametrised as above in phi = sigmoid(-lambda/2) = sigma/(alpha + sigma) (in [0, 1], = t
on the rectified flow) instead of lambda. ``denoise=True`` ends at t = 0 (sigma = 0) as ``sample(...,
denoise=True)`` and ``grid="table"`` do: the last of the ``nfe`` calls is the driver's data-prediction jump
x_N = alpha(0) x0(x_{N-1}, t_{N-1}) from t_{N-1} = sde.eps, fixed (not learned); the N - 1 steps before it are the
family above (its reference: rk4 down to eps/1000, then the jump). An SDE with sigma(0) > 0 (VE) has no zero-noise
end and is refused by name there.

The first call's time. With ``free_start=True`` the first model call's time is a parameter too (x_T stays the
prior draw): z_0 = s >= 0 in the normalised log-SNR coordinate (projected to [0, 0.5] after each update) and the
interior z_k = s + (1 - s) z_k', so s = 0 is the init exactly; s > 0 evaluates the network at (x_T, t_0 < T), the
lever of diffusers' "leading" spacing (issue 24: its UniPC/DEIS leading runs were the peers' best at NFE <= 6). It
needs a finite log-SNR at T (alpha(T) > 0) and is refused by name elsewhere. One more parameter.

Scope: probability-flow ODE (deterministic). ``sample(..., log_prob=True)`` integrates the augmented ODE with an
adaptive solver and cannot take a learned solver: refused by name (``LearnedSolver.check_log_prob``).
"""
from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..parameterization import ScoreModel
from .base import Evaluator, NotApplicableError
from .registry import SolverInfo
from ..fingerprint import model_fingerprint

Tensor = torch.Tensor

__all__ = ["LearnedSolver", "learn_solver", "WrongModelError", "model_identity", "solve_learned"]

FORMAT = "sdekit.learned_solver/1"


class WrongModelError(NotApplicableError):
    """A learned solver was handed a model other than the one it was learned for (another fingerprint)."""


def model_identity(model: ScoreModel) -> Optional[str]:
    """``sdekit.fingerprint.model_fingerprint`` plus the tensors and numbers of the plain objects the network's modules hold (a
    mixture, a schedule), which that hash does not see today (two mixtures of one shape hash alike there)."""
    base = model_fingerprint(model)
    if base is None:
        return None
    h = hashlib.blake2b(base.encode(), digest_size=16)
    assert isinstance(model.net, torch.nn.Module)  # a fingerprint means a module
    for mod in model.net.modules():
        for name, held in sorted(vars(mod).items()):
            if name.startswith("_") or not hasattr(held, "__dict__") or callable(held) \
                    or isinstance(held, (torch.nn.Module, type)):
                continue
            for key, v in sorted(vars(held).items()):
                if isinstance(v, Tensor):
                    v = v.detach().cpu().contiguous()
                    h.update(repr((name, key, str(v.dtype), tuple(v.shape))).encode())
                    h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
                elif isinstance(v, (numbers.Number, str, tuple)):
                    h.update(repr((name, key, v)).encode())
    return h.hexdigest()


@dataclass(eq=False)
class LearnedSolver:
    """A solver of the family in the module docstring, tied to one model. Run it as
    ``sdekit.sample(model, x_T, solver=learned)`` (on its own grid ``ts``; any batch size and row shape).

    ts: float64 times t_0 = T > ... > t_N = eps; a: (N,) and b: (N, N) lower-triangular float64 coefficients;
    init: the registered solver it started from, start_grid: that solver's grid; improved: whether learning won on
    the validation draw (else a, b, ts are the init's); fingerprint: the model's (None: a plain-function network,
    which cannot be checked or saved); cost: {"nfe": forward network calls, "backward": calls back-propagated,
    "seconds": wall time, "steps": Adam updates}; calibration / validation: per-row error quantiles of the
    learned solver and its init on each draw; denoise: the grid ends at t = 0 (ts[-1] = 0, sigma = 0) and the last
    call is the driver's data-prediction jump from ts[-2] (a, b hold the N - 1 steps before it)."""

    ts: Tensor
    a: Tensor
    b: Tensor
    init: str
    start_grid: str
    improved: bool
    fingerprint: Optional[str]
    cost: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    seed: Optional[int] = None
    denoise: bool = False
    free_start: bool = False

    @property
    def nfe(self) -> int:
        """Network calls per solve (= steps; with denoise, the final jump included)."""
        return int(self.a.numel()) + int(self.denoise)

    @property
    def num_parameters(self) -> int:
        """Learned numbers: M a's, M(M+1)/2 b's and M - 1 interior times, M = len(a) (nfe, or nfe - 1 before the
        fixed final jump of a denoising solver)."""
        n = int(self.a.numel())
        return n + n * (n + 1) // 2 + n - 1 + int(self.free_start)

    @property
    def name(self) -> str:
        return f"learned[{self.init}, nfe={self.nfe}]"

    def __repr__(self) -> str:
        return (f"LearnedSolver(init={self.init!r}, start_grid={self.start_grid!r}, nfe={self.nfe}, "
                f"parameters={self.num_parameters}, improved={self.improved}"
                f"{', denoise=True' if self.denoise else ''})")

    # -- running ----------------------------------------------------------------------------------
    def entry(self, steps=None, ts=None, t_start=None, t_end=None) -> tuple[SolverInfo, Tensor]:
        """(registry-like entry, time grid) for ``sample``: the solver runs on its own grid only."""
        if steps is not None and steps != self.nfe:
            raise ValueError(f"{self.name} takes its {self.nfe} steps on its own grid; got steps={steps!r}")
        if ts is not None or t_start is not None or t_end is not None:
            raise ValueError(f"{self.name} runs on its own learned grid (LearnedSolver.ts): drop ts=, t_start=, t_end=")
        info = SolverInfo(self.name, self._run, stochastic=False, order=1, nfe_per_step=1, adaptive=False,
                          family="learned", options={})
        return info, self.ts.clone()

    def _run(self, ev: Evaluator, x: Tensor, ts: Tensor):
        ev.solver = self.name
        self.check_model(ev.model)
        return self.step_states(ev, x, ts)  # the driver takes a zero end's jump

    def step_states(self, ev: Evaluator, x: Tensor, ts: Tensor):
        """The states of a solve from x at ts[0] on ts, this solver's own grid (without a denoising end), yielded one
        per step; the model is not checked here (``check_model``: a pipeline's network is checked where it is built,
        ``sdekit.interop.LearnedScheduler``)."""
        if not torch.equal(ts, self.ts[:-1] if self.denoise else self.ts):
            raise NotApplicableError(f"solver {self.name!r} runs on its own grid LearnedSolver.ts; got another grid")
        return _steps(ev, x, ts, self.a.tolist(), self.b.tolist())

    def check_log_prob(self) -> None:
        """``sample(..., log_prob=True)`` integrates the augmented probability-flow ODE adaptively: a learned
        solver cannot run it (its coefficients are fitted to the endpoint, not to the divergence integral)."""
        raise ValueError(f"log_prob=True solves the augmented ODE with an adaptive solver (dopri5, bosh3, ...); the "
                         f"learned solver {self.name} cannot: sample with it, then score the samples with "
                         "sdekit.likelihood (e.g. log_prob(model, x))")

    def check_model(self, model) -> None:
        """``WrongModelError`` unless ``model`` has this solver's fingerprint (not checked when it has none)."""
        if self.fingerprint is None:
            return
        got = model_identity(model) if isinstance(model, ScoreModel) else None
        if got != self.fingerprint:
            raise WrongModelError(f"{self.name} was learned for the model with fingerprint {self.fingerprint}; "
                                  f"this model's is {got} (another network, weights, SDE or prediction type): "
                                  "learn a solver for it with sdekit.learn_solver")

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write a safetensors file: ts, a, b (float64) and the facts (fingerprint, init, cost, errors) as metadata."""
        from safetensors.torch import save_file

        if self.fingerprint is None:
            raise ValueError("this learned solver's model is a plain function, which has no fingerprint: saving it "
                             "could not tie it to its model (wrap the network in a torch.nn.Module)")
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "init": self.init, "start_grid": self.start_grid,
                "improved": json.dumps(self.improved), "seed": json.dumps(self.seed),
                "denoise": json.dumps(self.denoise), "free_start": json.dumps(self.free_start),
                "cost": json.dumps(self.cost), "calibration": json.dumps(self.calibration),
                "validation": json.dumps(self.validation)}
        save_file({"ts": self.ts.contiguous(), "a": self.a.contiguous(), "b": self.b.contiguous()}, path,
                  metadata=meta)

    @classmethod
    def load(cls, path: str, model: ScoreModel) -> "LearnedSolver":
        """Read a file written by ``save``; ``WrongModelError`` if ``model`` is not the one it was learned for."""
        from safetensors import safe_open

        try:
            fh = safe_open(path, framework="pt")
        except Exception as err:  # safetensors' own error types differ across versions
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
        with fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a sdekit learned solver (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r})")
            tensors = {k: fh.get_tensor(k) for k in ("ts", "a", "b")}
        solver = cls(tensors["ts"], tensors["a"], tensors["b"], meta["init"], meta["start_grid"],
                     json.loads(meta["improved"]), meta["fingerprint"], json.loads(meta["cost"]),
                     json.loads(meta["calibration"]), json.loads(meta["validation"]), json.loads(meta["seed"]),
                     json.loads(meta.get("denoise", "false")), json.loads(meta.get("free_start", "false")))
        solver.check_model(model)
        return solver


def _steps(ev, x: Tensor, ts: Tensor, a: Sequence[float], b: Sequence[Sequence[float]]):
    """x_{i+1} = a_i x_i + sum_{j<=i} b_ij x0(x_j, t_j), yielding each state."""
    hist = []
    for i in range(len(a)):
        hist.append(ev.x0(x, ts[i]))
        x = x * a[i]
        for j in range(i + 1):
            x = x.add(hist[j], alpha=b[i][j])
        yield x


def solve_learned(ev, x: Tensor, ts: Tensor, a, b, denoise: bool) -> Tensor:
    """The endpoint of ``_steps`` on the run grid, then (denoise) the driver's jump x = alpha(0) x0(x, ts[-2])."""
    run_ts = ts[:-1] if denoise else ts
    for state in _steps(ev, x, run_ts, a.tolist(), b.tolist()):
        x = state
    if denoise:
        x = float(ev.sde.alpha(ts[-1])) * ev.x0(x, run_ts[-1])
    return x


# -- the init, read off a registered solver -----------------------------------------------------------


from .learned_fit import learn_solver  # noqa: E402  (learning builds the LearnedSolver defined above)
