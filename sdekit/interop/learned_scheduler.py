"""``LearnedScheduler``: a solver learned for a diffusers U-Net (``sdekit.learn_solver``) inside its unmodified
pipeline, one network call per step::

    model = from_diffusers(pipe.unet, pipe.scheduler)
    learned = sdekit.learn_solver(model, 5, shape=(4, 64, 64))
    pipe.scheduler = LearnedScheduler.from_learned(learned, pipe.unet, pipe.scheduler)

The pipeline then takes the steps ``sdekit.sample(model, x_T, solver=learned)`` takes: the learned grid's timesteps
(t N - 1, fractional where the grid is), and at each the learned combination x_{i+1} = a_i x_i + sum_j b_ij x0_j of
the state and the data predictions so far (``LearnedSolver``). The solver is tied to its model: ``from_learned``
checks the U-Net and the scheduler's table against the solver's fingerprint. A saved config names the solver
"learned" and its grid; reloading it needs the solver again (``LearnedSolver.load`` and ``from_learned``): the
coefficients are not in the config.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..solvers.learned import LearnedSolver
from ..solvers.registry import get
from .diffusers_config import read_config
from .diffusers_models import from_diffusers
from .diffusers_scheduler import SdekitScheduler

__all__ = ["LearnedScheduler"]

LEARNED = "learned"  # the config's solver name
CARRIER = "dpmpp_2m"  # the machinery's solver (grid, thresholded x0, final jump; not ddim, whose clip differs)


class LearnedScheduler(SdekitScheduler):
    """A ``SdekitScheduler`` stepping a ``LearnedSolver`` on its own grid (module docstring). Build it with
    ``from_learned``; run the pipeline with ``num_inference_steps`` = the solver's steps (``set_timesteps`` refuses
    another count by name: the grid is ``grid_ts``, the learned one)."""

    _learned: Optional[LearnedSolver] = None

    @classmethod
    def from_learned(cls, learned: LearnedSolver, unet, scheduler, **conditioning) -> "LearnedScheduler":
        """The scheduler of ``scheduler``'s config (a diffusers scheduler or its config) that steps ``learned``.
        ``WrongModelError`` unless ``learned`` was learned for ``from_diffusers(unet, scheduler, **conditioning)``."""
        if not isinstance(learned, LearnedSolver):
            raise TypeError(f"from_learned takes a LearnedSolver (sdekit.learn_solver); got {type(learned).__name__}")
        if learned.fingerprint is None:
            raise ValueError(f"{learned.name} has no fingerprint (learned on a plain-function network): it cannot be "
                             "checked against this U-Net; learn it on from_diffusers(unet, scheduler)")
        learned.check_model(from_diffusers(unet, scheduler, **conditioning))
        # every field as the scheduler holds it (diffusers' from_config would give fields left at the old class's
        # defaults this class's defaults, e.g. DDPMScheduler's clip_sample=True): the model from_diffusers builds
        cfg = {k: v for k, v in read_config(scheduler).items() if k != "_use_default_values"}
        sched = cls.from_config(cfg, solver=CARRIER, grid_ts=learned.ts.tolist())
        sched._learned = learned
        sched.register_to_config(solver=LEARNED)
        return sched

    def _check_solver(self, solver: str, options: dict):  # type: ignore[override]
        if solver == LEARNED:  # a reloaded config: refused at the first step, which needs the coefficients
            return get(CARRIER)
        return super()._check_solver(solver, options)

    def _start(self, timestep, sample: Tensor, eta: Optional[float], clipped: Optional[bool]) -> int:
        if self._learned is None:
            raise ValueError("this scheduler's config names a learned solver, whose coefficients are not in the "
                             "config: rebuild it with LearnedScheduler.from_learned(LearnedSolver.load(path, model), "
                             "unet, scheduler)")
        if eta:
            raise ValueError(f"a learned solver is deterministic; got eta={eta}")
        index = super()._start(timestep, sample, eta, clipped)
        if index != 0:
            raise ValueError(f"{self._learned.name} steps its whole grid from its first time; got a start at step "
                             f"{index} (set_begin_index / image-to-image): its coefficients hold only for the full "
                             "solve")
        gen, net, ev, noise = self._run
        assert self.ts is not None
        run_ts = self.ts[:-1] if self._learned.denoise else self.ts
        if gen is not None:
            gen.close()
        ev.solver = self._learned.name
        self._run = (self._learned.step_states(ev, self._x, run_ts) if len(run_ts) > 1 else None, net, ev, noise)
        return index
