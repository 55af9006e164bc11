"""The likelihood's input checks, made before any work: the model, x, its network and the interval."""
from __future__ import annotations

import math

import torch

from ..parameterization import ThresholdedModel

Tensor = torch.Tensor

__all__ = ["check_model", "check_x", "check_network", "check_times"]


def check_model(model):
    """A model log_likelihood can integrate; a ``ThresholdedModel`` is refused by name (see below)."""
    if isinstance(model, ThresholdedModel):
        # clipping x0 makes the drift a non-smooth function of x whose divergence is not that of any density's
        # flow: ~170 nats per 8x8 image away from the unthresholded model's value, with no error raised
        raise ValueError(
            f"the model is a ThresholdedModel ({model!r}): its x0 prediction is clipped or thresholded, a sampling "
            "heuristic that is not a density model, so its likelihood would be silently wrong. Score the model it "
            "wraps instead: pass model.model, or build it with from_diffusers(unet, scheduler, threshold=False) "
            "(diffusers' schedulers clip by default: clip_sample=True)")
    if not (hasattr(model, "sde") and callable(getattr(model, "score", None))):
        raise TypeError(
            f"model must be a sdekit.ScoreModel (or any object with .sde and .score(x, t)); got {type(model).__name__}"
        )
    if not callable(getattr(model.sde, "probability_flow_drift", None)):
        raise TypeError("model.sde must be a sdekit.SDE (it needs probability_flow_drift(x, t, score))")


def check_x(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, ...); got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (float32 or float64); got dtype {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"x has dtype {x.dtype}; log_likelihood accepts float32 or float64 only: in half precision the ODE "
            "state, its error control and the divergence accumulate rounding errors (bfloat16 likelihoods come out "
            "~0.7 nats wrong). Pass x.float() and a float32 model (model.net.float()); autocast inside the network "
            "is fine as long as it returns float32"
        )
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(
            f"x must have shape (batch, *event_shape) with batch >= 1 and a non-empty event; got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten().tolist()
        more = "..." if len(bad) > 10 else ""
        raise ValueError(f"x contains NaN or Inf (rows {bad[:10]}{more}); only finite values are accepted")
    return x


def check_network(model, x: Tensor, t: float) -> None:
    """One forward and backward pass on x's first row at time t, before the solve: the score must be a
    float32/float64 tensor that depends on x through autograd. A network that detaches its output,
    runs under torch.no_grad or goes through numpy has a zero Jacobian as far as autograd can tell, so
    every divergence estimate (exact, Hutchinson, quadrature) would silently keep only the SDE's own
    linear drift and give a wrong likelihood."""
    x1 = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model.score(x1, torch.tensor(t, dtype=torch.float64))
        if not isinstance(out, Tensor):
            raise TypeError(f"model.score returned a {type(out).__name__}; it must return a tensor shaped like x")
        if out.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"the model returns {out.dtype} for {x.dtype} input; log_likelihood needs float32 or "
                             "float64 scores (half precision gives wrong likelihoods): run the network in float32")
        grad = None
        if out.requires_grad:
            grad = torch.autograd.grad(out, x1, torch.ones_like(out), allow_unused=True)[0]
    if grad is None:
        cause = "its output does not require grad" if not out.requires_grad else "its autograd graph does not reach x"
        raise ValueError(
            f"the model's output does not depend on x through autograd ({cause}), so the divergence of the "
            "probability-flow drift, and with it the likelihood, would be silently wrong. The network must compute "
            "its output from x with differentiable torch operations: no .detach(), no torch.no_grad() or "
            "inference_mode inside it, no round trip through numpy or .item()"
        )


def check_times(sde, t_data, t_prior) -> tuple[float, float]:
    t_data = sde.eps if t_data is None else t_data
    t_prior = sde.T if t_prior is None else t_prior
    try:
        t_data, t_prior = float(t_data), float(t_prior)
    except (TypeError, ValueError):
        raise ValueError(f"t_data and t_prior must be numbers; got {t_data!r}, {t_prior!r}") from None
    for name, v in (("t_data", t_data), ("t_prior", t_prior)):
        if not (math.isfinite(v) and 0.0 <= v <= sde.T):
            raise ValueError(f"{name} must lie in [0, T] = [0, {sde.T}] for {type(sde).__name__}; got {v}")
    if not t_data < t_prior:
        raise ValueError(f"t_data must be smaller than t_prior (the ODE runs forward from data to prior); "
                         f"got t_data={t_data}, t_prior={t_prior}")
    return t_data, t_prior
