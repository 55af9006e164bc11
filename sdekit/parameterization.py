"""Network outputs as predictions: score, eps, v and x0, and the conversions among them.

With x = alpha x0 + sigma eps (VP, VE and custom linear SDEs alike):
    score = -eps / sigma
    v     = alpha eps - sigma x0                      (Salimans & Ho 2022)
    x0    = (x - sigma eps) / alpha = (alpha x - sigma v) / (alpha^2 + sigma^2)
    eps   = (x - alpha x0) / sigma  = (sigma x + alpha v) / (alpha^2 + sigma^2)
Each conversion computes only what its target needs (eps for score, both eps and x0 for v).

Two wrappers change what a network predicts without touching the solvers: ``ClassifierFreeGuidance``
(a guided network) and ``ThresholdedModel`` (x0 clipped or dynamically thresholded, every other
prediction derived from that x0).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .sde import LinearSDE, broadcast_to, is_scalar_time

Tensor = torch.Tensor

PREDICTIONS = ("score", "eps", "v", "x0", "velocity")

__all__ = ["PREDICTIONS", "convert", "ScoreModel", "ClassifierFreeGuidance", "ThresholdedModel", "threshold_x0",
           "expand_batch", "map_tensors"]


def check_prediction(name: str) -> str:
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction {name!r}; accepted: {', '.join(PREDICTIONS)}")
    return name


def _coefficients(sde: LinearSDE, t, x: Tensor):
    """alpha and sigma at t, as Python floats for a scalar time, else shaped to broadcast against x."""
    if is_scalar_time(t):
        return sde.schedule(t)[:2]
    alpha, sigma = sde.alpha_sigma(t)
    return broadcast_to(alpha, x), broadcast_to(sigma, x)


def _eps(value: Tensor, src: str, x: Tensor, a, s) -> Tensor:
    if src == "eps":
        return value
    if src == "score":
        return -s * value
    if src == "x0":
        return (x - a * value) / s
    return (s * x + a * value) / (a**2 + s**2)  # v


def _x0(value: Tensor, src: str, x: Tensor, a, s) -> Tensor:
    if src == "x0":
        return value
    if src == "eps":
        return (x - s * value) / a
    if src == "score":
        return (x + s**2 * value) / a
    return (a * x - s * value) / (a**2 + s**2)  # v


def _convert(value: Tensor, src: str, dst: str, x: Tensor, a, s) -> Tensor:
    """The formulas of the module docstring, computing only what ``dst`` needs."""
    if src == dst:
        return value
    if dst == "eps":
        return _eps(value, src, x, a, s)
    if dst == "score":
        return -value / s if src == "eps" else -_eps(value, src, x, a, s) / s
    if dst == "x0":
        return _x0(value, src, x, a, s)
    return a * _eps(value, src, x, a, s) - s * _x0(value, src, x, a, s)  # v


def _rates(sde: LinearSDE, t, x: Tensor):
    """alpha'(t) and sigma'(t), as Python floats for a scalar time, else shaped to broadcast against x."""
    if is_scalar_time(t):
        return sde.rates(t)
    return broadcast_to(sde.d_alpha(t), x), broadcast_to(sde.d_sigma(t), x)


def _from_velocity(u: Tensor, dst: str, x: Tensor, a, s, da, ds) -> Tensor:
    """Solve [x; u] = [[alpha, sigma], [alpha', sigma']] [x0; eps] (det = alpha sigma' - sigma alpha' > 0, since
    alpha/sigma decreases): x0 = (sigma' x - sigma u)/det, eps = (alpha u - alpha' x)/det. Finite at alpha = 0
    (flow paths at t = T: x0 = x - u, eps = x on the rectified flow) and at sigma = 0."""
    det = a * ds - s * da
    if dst in ("eps", "score"):
        eps = (a * u - da * x) / det
        return eps if dst == "eps" else -eps / s
    x0 = (ds * x - s * u) / det
    if dst == "x0":
        return x0
    return a * ((a * u - da * x) / det) - s * x0  # v


def _to_velocity(value: Tensor, src: str, x: Tensor, a, s, da, ds) -> Tensor:
    """u = alpha' x0 + sigma' eps, the probability-flow drift, from (x, value) with value x0 or v (eps and score
    go through ``_velocity_from_score``; they are undefined at alpha = 0, where eps = x/sigma carries nothing of
    the model): from x0 u = (sigma'/sigma) x + (alpha' - alpha sigma'/sigma) x0 (undefined at sigma = 0);
    from v both x0 and eps, valid everywhere."""
    if src == "x0":
        return (ds / s) * x + (da - a * ds / s) * value
    return da * _x0(value, src, x, a, s) + ds * _eps(value, src, x, a, s)  # v


def _velocity_from_score(value: Tensor, src: str, x: Tensor, t, sde: LinearSDE, s) -> Tensor:
    """u = f x - (g^2 / 2) score (g^2 / 2 = sigma (sigma' - f sigma)): the same u as ``_to_velocity``'s, in the
    form that stays finite at sigma = 0 (t = 0), where sigma' is infinite on VP paths but g is not."""
    f: Union[float, Tensor]
    g: Union[float, Tensor]
    if is_scalar_time(t):
        _, _, f, g = sde.schedule(t)
    else:
        t = sde.check_time(t)
        f, g = broadcast_to(sde.f(t), x), broadcast_to(sde.g(t), x)
    score = value if src == "score" else -value / s
    return f * x - (0.5 * g * g) * score


def convert(value: Tensor, src: str, dst: str, x: Tensor, t, sde: LinearSDE) -> Tensor:
    """Convert a prediction ``value`` of kind ``src`` at (x, t) into kind ``dst``.

    ``t`` is a scalar or a (batch,) tensor; ``value`` and ``x`` must have the same shape.
    "velocity" is u = alpha' x0 + sigma' eps = dx_t/dt along the path, i.e. the probability-flow drift
    f x - g^2 score / 2 (flow matching's target; eps - x0 on the rectified flow).
    """
    check_prediction(src)
    check_prediction(dst)
    if value.shape != x.shape:
        raise ValueError(f"prediction shape {tuple(value.shape)} must equal x shape {tuple(x.shape)}")
    return _converted(value, src, dst, x, t, sde)


def _converted(value, src: str, dst: str, x, t, sde: LinearSDE):
    """``convert`` without its checks; value and x may also be Python floats (with a scalar t): the same
    arithmetic, in float64."""
    if src == dst:
        return value
    a, s = _coefficients(sde, t, x)
    if src == "velocity":
        return _from_velocity(value, dst, x, a, s, *_rates(sde, t, x))
    if dst == "velocity" and src in ("eps", "score"):
        return _velocity_from_score(value, src, x, t, sde, s)
    if dst == "velocity":
        return _to_velocity(value, src, x, a, s, *_rates(sde, t, x))
    return _convert(value, src, dst, x, a, s)


def _version(x: Tensor) -> Optional[int]:
    """x's in-place modification counter (None for inference-mode tensors, which have none)."""
    try:
        return x._version
    except RuntimeError:
        return None


class ScoreModel:
    """Adapter from a network ``net(x, t) -> tensor`` to every prediction kind.

    ``prediction`` names what the network outputs ("score", "eps", "v", "x0" or the flow-matching
    "velocity" u = alpha' x0 + sigma' eps). ``t`` reaches the
    network as a (batch,) tensor in x's dtype, a fresh one per call: a network may edit it in place
    (``t *= 999``, a common "to timesteps" idiom) without touching sdekit's state or a later call; an in-place
    edit of x is refused (x is the solver's state). Solvers ask for what they need (score, eps or x0) and
    never see the network or its prediction type.

    Where a conversion is undefined. Each conversion is affine in (x, output) with coefficients in alpha, sigma,
    alpha', sigma' (and f, g); ``undefined(kind, t)`` says where one is not finite, and the solvers refuse such a
    time before any network call (``sdekit.solvers.base.NotApplicableError``) instead of returning NaN. The cases:
    x0, eps, score or v from a velocity network need det = alpha sigma' - sigma alpha' != 0, which fails at t = T
    on ``PolynomialPath`` with n > 1 (alpha'(T) = sigma'(T) = 0: u(x, T) = 0 for every x, so the network's output
    there carries nothing of x0; the limit t -> T of the conversion needs the network below T, not at T). Such a
    solve starts below T (x_T ~ N(0, I) is then still exact to within alpha(t_start)) or uses a solver that
    integrates the velocity itself (euler, heun_t, rk4, dopri5). x0 from eps or score needs alpha > 0 (any
    flow path at T), and the velocity from eps or score needs finite f and g (not at alpha = 0).
    """

    def __init__(self, net: Callable[..., Tensor], sde: LinearSDE, prediction: str = "eps"):
        self.net = net
        self.sde = sde
        self.prediction = check_prediction(prediction)

    def _time_batch(self, x: Tensor, t):
        """(validated time for the conversion, (batch,) times in x's dtype for the network)."""
        if is_scalar_time(t):
            v = self.sde.check_scalar_time(t)
            # a new tensor per call (about a microsecond): nothing the network does to it can reach a later call
            return v, torch.full((x.shape[0],), v, dtype=x.dtype, device=x.device)
        t = self.sde.check_time(t)
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},); got {tuple(t.shape)}")
        return t, t.to(device=x.device, dtype=x.dtype, copy=True)  # never the caller's tensor

    def undefined(self, kind: str, t: float) -> Optional[str]:
        """None if this model's ``kind`` is defined at the scalar time t, else why not (class docstring). Exact
        and free of network calls: the conversion is affine in (x, output), so it is defined iff converting
        x = output = 1 gives a finite number."""
        check_prediction(kind)
        if kind == self.prediction:
            return None
        # Python floats, not tensors: the same float64 arithmetic without a tensor per operation (this runs once per
        # step and kind); a division by zero or an overflow, which a float raises, is what gives inf or NaN in a tensor
        try:
            out = _converted(1.0, self.prediction, kind, 1.0, float(self.sde.check_scalar_time(t)), self.sde)
            finite = math.isfinite(out)
        except (ZeroDivisionError, OverflowError):
            finite = False
        if finite:
            return None
        if self.prediction == "velocity":
            return (f"which a 'velocity' network cannot give on {self.sde!r}: alpha sigma' - sigma alpha' = 0 there "
                    "(the velocity is 0 for every x); start below that time (t_start < it) or use a solver that "
                    "integrates the velocity itself (euler, heun_t, rk4, dopri5)")
        return (f"which a {self.prediction!r} network cannot give on {self.sde!r} (alpha = 0, or f and g infinite, "
                "there); start below that time (t_start < it)")

    def predict(self, x: Tensor, t, kind: str) -> Tensor:
        """The network's output at (x, t) expressed as ``kind``."""
        check_prediction(kind)
        t, t_net = self._time_batch(x, t)
        version = _version(x)
        out = self.net(x, t_net)
        if version is not None and _version(x) != version:
            raise ValueError("the network modified its input x in place (which would change the caller's x_T and "
                             "the solver's state); work on a copy inside the network (x = x.clone())")
        if not isinstance(out, Tensor):
            raise TypeError(f"the network must return a tensor of x's shape {tuple(x.shape)}; got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(out.shape)}; expected x's shape {tuple(x.shape)}")
        if out.dtype != x.dtype:  # the state keeps its dtype whatever the network computes in
            if not out.is_floating_point():
                raise TypeError(f"the network must return a floating-point tensor; got {out.dtype}")
            out = out.to(x.dtype)
        return _converted(out, self.prediction, kind, x, t, self.sde)  # kinds and shapes checked above

    def score(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "score")

    def eps(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "eps")

    def v(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "v")

    def net_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        """(dtype, device) of the network's first parameter, what inputs to it should be made of; float64 on the
        CPU for a plain function or a network without parameters."""
        params = self.net.parameters() if isinstance(self.net, torch.nn.Module) else iter(())
        first = next(params, None)
        return (first.dtype, first.device) if first is not None else (torch.float64, torch.device("cpu"))

    def x0(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "x0")

    def __repr__(self) -> str:
        return f"ScoreModel(net={type(self.net).__name__}, sde={self.sde!r}, prediction={self.prediction!r})"


def map_tensors(fn, tree):
    """Apply ``fn`` to every tensor in a tensor, or a dict / list / tuple of them (other leaves kept)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree


def _zip_tensors(fn, a, b, where: str = "cond"):
    """``fn(a_leaf, b_leaf)`` over two trees of the same structure (non-tensor leaves taken from ``a``)."""
    if isinstance(a, Tensor):
        return fn(a, b)
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            raise ValueError(f"{where}: the unconditional counterpart must have the same keys {sorted(a)}; "
                             f"got {sorted(b) if isinstance(b, dict) else type(b).__name__}")
        return {k: _zip_tensors(fn, a[k], b[k], f"{where}[{k!r}]") for k in a}
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            raise ValueError(f"{where}: the unconditional counterpart must have {len(a)} entries")
        return type(a)(_zip_tensors(fn, u, v, f"{where}[{i}]") for i, (u, v) in enumerate(zip(a, b)))
    return a


def expand_batch(tree, batch: int, where: str = "cond"):
    """Every tensor of ``tree`` with a leading dimension 1 repeated to ``batch`` rows (views, no copy);
    a tensor whose leading dimension is neither 1 nor ``batch`` raises ValueError. 0-d tensors are kept."""

    def one(v: Tensor) -> Tensor:
        if v.ndim == 0 or v.shape[0] == batch:
            return v
        if v.shape[0] == 1:
            return v.expand(batch, *v.shape[1:])
        raise ValueError(f"{where} has batch {v.shape[0]} but x has batch {batch} (1 is broadcast)")

    return map_tensors(one, tree)


class ClassifierFreeGuidance(torch.nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) as a network ``net(x, t)``.

    out = (1 + w) net(x, t, cond) - w net(x, t, null_cond), with both halves in one batched call.
    Every conversion is affine in the network output with the same coefficients, so guiding in eps,
    score, v or x0 space gives the same result: wrap the raw network and hand it to ``ScoreModel``.
    In diffusers' convention out = uncond + s (cond - uncond): w = s - 1 (``from_scale``).

    ``cond`` is a (batch, ...) tensor, or a dict / list / tuple of them (e.g. a U-Net's
    ``encoder_hidden_states`` and ``added_cond_kwargs``: the net then receives the batched structure);
    tensors with batch 1 are broadcast to x's batch. ``null_cond`` has the same structure, each tensor
    broadcastable to its conditional counterpart (e.g. the null class, or a negative prompt's embedding).
    """

    def __init__(self, net: Callable, cond, null_cond, weight: float):
        super().__init__()
        self.net = net
        self.cond = cond
        self.null_cond = _zip_tensors(
            lambda c, n: torch.as_tensor(n, dtype=c.dtype, device=c.device).expand_as(c), cond, null_cond)
        self.weight = float(weight)

    @classmethod
    def from_scale(cls, net: Callable, cond, null_cond, guidance_scale: float) -> "ClassifierFreeGuidance":
        """diffusers' ``guidance_scale`` s: out = uncond + s (cond - uncond), i.e. weight w = s - 1."""
        return cls(net, cond, null_cond, float(guidance_scale) - 1.0)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        both = _zip_tensors(lambda c, u: torch.cat([c, u]), expand_batch(self.cond, n),
                            expand_batch(self.null_cond, n))
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), both)
        cond_out, uncond_out = out.chunk(2)
        return (1 + self.weight) * cond_out - self.weight * uncond_out


def threshold_x0(x0: Tensor, ratio: Optional[float] = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding of an x0 prediction (Saharia et al. 2022, "Imagen", Sec. 2.3), per row:

        s = clamp(quantile_ratio(|x0|), 1, max_value),   x0 <- clamp(x0, -s, s) / s,

    the quantile taken over all of a row's entries (s = 1 is static clipping to [-1, 1]); ``ratio`` lies in
    [0, 1] as in diffusers' ``dynamic_thresholding_ratio`` (0: the row's smallest |x0|, so s = 1 unless every entry
    exceeds 1: in effect static clipping to [-1, 1]).
    ``ratio=None`` is static clipping to [-max_value, max_value] (diffusers' ``clip_sample``).
    Half-precision inputs are thresholded in float32 and returned in their dtype."""
    if ratio is None:
        return x0.clamp(-max_value, max_value)
    work = x0 if x0.dtype in (torch.float32, torch.float64) else x0.float()
    flat = work.reshape(work.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)
    s = broadcast_to(s, work)
    return (torch.maximum(torch.minimum(work, s), -s) / s).to(x0.dtype)


class ThresholdedModel(ScoreModel):
    """A ScoreModel whose x0 prediction is thresholded (``threshold_x0``) and whose eps, score and v are
    derived from that thresholded x0 at (x, t): eps = (x - alpha x0)/sigma, and so on. So every solver,
    whatever it asks for, steps with the same thresholded data prediction (for DDIM that is diffusers'
    ``use_clipped_model_output=True``).

    ``ratio`` and ``max_value`` as in ``threshold_x0`` (diffusers' ``dynamic_thresholding_ratio`` and
    ``sample_max_value``); ``ratio=None`` clips statically to [-max_value, max_value] (``clip_sample`` with
    ``clip_sample_range``). Thresholding makes x0 a non-smooth function of x: it is a sampling heuristic for
    pixel-space models whose data lie in [-1, 1], not a model of the density (keep it off for likelihoods).
    """

    def __init__(self, model: ScoreModel, ratio: Optional[float] = 0.995, max_value: float = 1.0):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"ThresholdedModel wraps a ScoreModel; got {type(model).__name__}")
        if ratio is not None and not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"ratio must lie in [0, 1] (or be None for static clipping); got {ratio!r}")
        if not float(max_value) > 0.0:
            raise ValueError(f"max_value must be positive; got {max_value!r}")
        super().__init__(model.net, model.sde, model.prediction)
        self.model = model
        self.ratio = None if ratio is None else float(ratio)
        self.max_value = float(max_value)

    def undefined(self, kind: str, t: float) -> Optional[str]:
        """The wrapped model's x0, then x0 -> ``kind`` (``ScoreModel.undefined``)."""
        why = self.model.undefined("x0", t)
        if why is None and kind != "x0":
            why = ScoreModel(self.net, self.sde, "x0").undefined(kind, t)
        return why

    def predict(self, x: Tensor, t, kind: str) -> Tensor:
        check_prediction(kind)
        x0 = threshold_x0(self.model.predict(x, t, "x0"), self.ratio, self.max_value)
        return convert(x0, "x0", kind, x, t, self.sde)

    def __repr__(self) -> str:
        how = f"clip to +-{self.max_value}" if self.ratio is None else f"ratio={self.ratio}, max_value={self.max_value}"
        return f"ThresholdedModel({self.model!r}, {how})"
