"""Models and samplers from other libraries in sdekit, and sdekit solvers in theirs (imported lazily: neither
diffusers nor k-diffusion is a dependency).

diffusers
  ``from_diffusers(unet, scheduler, **conditioning)``  a UNet2DModel / UNet2DConditionModel as a ScoreModel on
      the scheduler's beta table (text conditioning, classifier-free guidance, learned variance, thresholding);
      with a FlowMatchEuler/HeunDiscreteScheduler, a velocity network on the rectified-flow path (shift included)
  ``diffusers_equivalent(scheduler, steps)``  ``sdekit.sample`` keywords for the same algorithm on the same grid
  ``SdekitScheduler``  an sdekit solver as a diffusers scheduler: ``pipe.scheduler = SdekitScheduler.from_config(
      pipe.scheduler.config, solver="unipc_3")`` (needs diffusers at import; loaded on first use)
  ``LearnedScheduler.from_learned(learned, unet, scheduler)``  a solver learned for the U-Net (``learn_solver``)
      as its pipeline's scheduler
  ``check_config``  which scheduler-config fields take effect and which are refused (``diffusers_config``)
k-diffusion / EDM
  ``from_denoiser(D, sde)``, ``EDMSDE``  a denoiser D(x, sigma) as an x0-prediction ScoreModel
"""
from .denoisers import EDMSDE, DenoiserNet, from_denoiser
from .diffusers_config import DiffusersSpec, FlowSpec, check_config, check_flow_config, read_config
from .diffusers_models import (DiffusersFlowNet, DiffusersUNet, diffusers_equivalent, flow_path_from_scheduler,
                               from_diffusers, sde_from_scheduler, times_from_sigmas)

__all__ = ["EDMSDE", "DenoiserNet", "from_denoiser", "DiffusersUNet", "DiffusersFlowNet", "sde_from_scheduler",
           "flow_path_from_scheduler", "from_diffusers", "diffusers_equivalent", "times_from_sigmas", "check_config",
           "check_flow_config", "read_config", "DiffusersSpec", "FlowSpec",
           "SdekitScheduler", "eligible_solvers", "LearnedScheduler"]


def __getattr__(name):
    if name in ("SdekitScheduler", "eligible_solvers"):
        from . import diffusers_scheduler

        return getattr(diffusers_scheduler, name)
    if name == "LearnedScheduler":
        from .learned_scheduler import LearnedScheduler

        return LearnedScheduler
    raise AttributeError(f"module 'sdekit.interop' has no attribute {name!r}")
