"""``sample``: the one front door to every registered solver.

It builds the time grid, the evaluator and the per-row noise, runs the solver's generator with a
progress bar and callbacks, checks every state for NaN/Inf, and returns a ``Solution``.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from tqdm.auto import tqdm

from ..parameterization import ScoreModel
from ..sde import LinearSDE
from .base import Evaluator, NonFiniteError, RowNoise, Solution
from .grids import make_grid
from .registry import get

Tensor = torch.Tensor

__all__ = ["sample"]


def sample(
    model: ScoreModel,
    x_T: Tensor,
    solver: str = "dpmpp_2m",
    steps: Optional[int] = None,
    *,
    ts=None,
    grid: str = "logsnr",
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    generator: Union[int, torch.Generator, None] = None,
    row_offset: int = 0,
    denoise: bool = False,
    progress: bool = False,
    callback: Optional[Callable[[int, float, Tensor], None]] = None,
    trajectory: bool = False,
    grid_options: Optional[dict] = None,
    check_states: bool = False,
    **options,
) -> Solution:
    """Solve the reverse-time SDE or probability-flow ODE of ``model.sde`` from x_T at t_start to t_end.

    model: a ``ScoreModel`` (any network and prediction type) on a ``LinearSDE``.
    x_T: the starting state, batch first, any shape, float32 or float64.
    solver: a name from ``sdekit.solvers.available()``; options go to the solver as keywords.
    steps / ts: number of intervals of the named ``grid`` (uniform, quadratic, logsnr, karras) between
      t_start (default sde.T) and t_end (default sde.eps), or an explicit decreasing tensor of times.
      Adaptive solvers need neither (they default to one output interval).
    generator: an int seed or a torch.Generator; noise is drawn per row, so a row's sample depends on
      the seed and its row index (plus ``row_offset``), never on the batch size.
    denoise: finish with the jump x <- x0(x, t_end) to t = 0 (one more network call).
    callback: called as callback(i, t, x) after each step; trajectory=True keeps every state.
    check_states: also check the state for NaN/Inf after every step (network outputs are always
      checked, with the step and time named; the final state is always checked).
    """
    info = get(solver)
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdekit.ScoreModel; got {type(model).__name__}")
    sde = model.sde
    if not isinstance(sde, LinearSDE):
        raise TypeError("sample needs a LinearSDE; use solvers.backends for a general SDE")
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError("x_T must be a tensor with a leading batch dimension")
    if not x_T.is_floating_point():
        raise ValueError(f"x_T must be float32 or float64; got {x_T.dtype}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN or Inf")
    unknown = set(options) - set(info.options)
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in info.options.items()) or "none"
        raise ValueError(f"solver {solver!r} got unknown option(s) {sorted(unknown)}; accepted: {accepted}")
    if info.adaptive and steps is None and ts is None:
        steps = 1
    grid_ts = make_grid(sde, steps, grid, t_start, t_end, ts, **(grid_options or {}))

    noise = RowNoise(generator, x_T.shape[0], row_offset) if (info.stochastic or generator is not None) else None
    ev = Evaluator(model, noise)
    x = x_T
    states = [x] if trajectory else None
    n = len(grid_ts) - 1
    with tqdm(total=n, desc=solver, disable=not progress, leave=False) as bar:
        run = info.fn(ev, x, grid_ts, **options)
        times = grid_ts.tolist()  # python floats once, not a tensor->float conversion per step
        for i in range(n):
            ev.step = i
            try:
                x = next(run)
            except StopIteration as stop:
                raise RuntimeError(f"solver {solver!r} stopped after {i} of {n} steps") from stop
            t = times[i + 1]
            if check_states and not bool(torch.isfinite(x).all()):
                raise NonFiniteError(f"the state became NaN or Inf at step {i} (t = {t:.6g}) with solver {solver!r}")
            if states is not None:
                states.append(x)
            if callback is not None:
                callback(i, t, x)
            if progress:  # a disabled tqdm still formats its postfix: skip the work
                bar.update(1)
                bar.set_postfix(nfe=ev.nfe, t=f"{t:.4g}", refresh=False)
        run.close()
    if not bool(torch.isfinite(x).all()):  # network outputs are checked per call; the state once more here
        raise NonFiniteError(f"the state became NaN or Inf during the solve with solver {solver!r}; "
                             "pass check_states=True to find the step")
    if denoise:
        ev.step = n
        x = ev.x0(x, grid_ts[-1])
        grid_ts = torch.cat([grid_ts, grid_ts.new_zeros(1)])
        if states is not None:
            states.append(x)
    return Solution(x=x, nfe=ev.nfe, ts=grid_ts, trajectory=states, stats=dict(ev.stats))

