"""Network outputs as predictions: score, eps, v and x0, and the conversions among them.

With x = alpha x0 + sigma eps (VP, VE and custom linear SDEs alike):
    score = -eps / sigma
    v     = alpha eps - sigma x0                      (Salimans & Ho 2022)
    x0    = (x - sigma eps) / alpha = (alpha x - sigma v) / (alpha^2 + sigma^2)
    eps   = (x - alpha x0) / sigma  = (sigma x + alpha v) / (alpha^2 + sigma^2)
Each conversion computes only what its target needs (eps for score, both eps and x0 for v).
"""
from __future__ import annotations

from typing import Callable

import torch

from .sde import LinearSDE, _is_scalar, broadcast_to

Tensor = torch.Tensor

PREDICTIONS = ("score", "eps", "v", "x0")

__all__ = ["PREDICTIONS", "convert", "ScoreModel", "ClassifierFreeGuidance"]


def _check_prediction(name: str) -> str:
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction {name!r}; accepted: {', '.join(PREDICTIONS)}")
    return name


def _coefficients(sde: LinearSDE, t, x: Tensor):
    """alpha and sigma at t, as Python floats for a scalar time, else shaped to broadcast against x."""
    if _is_scalar(t):
        a, s, _, _ = sde.schedule(t)
        return a, s
    t = sde.check_time(t)
    return broadcast_to(torch.exp(sde._log_alpha(t)), x), broadcast_to(sde._sigma(t), x)


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


def convert(value: Tensor, src: str, dst: str, x: Tensor, t, sde: LinearSDE) -> Tensor:
    """Convert a prediction ``value`` of kind ``src`` at (x, t) into kind ``dst``.

    ``t`` is a scalar or a (batch,) tensor; ``value`` and ``x`` must have the same shape.
    """
    _check_prediction(src)
    _check_prediction(dst)
    if value.shape != x.shape:
        raise ValueError(f"prediction shape {tuple(value.shape)} must equal x shape {tuple(x.shape)}")
    if src == dst:
        return value
    a, s = _coefficients(sde, t, x)
    return _convert(value, src, dst, x, a, s)


class ScoreModel:
    """Adapter from a network ``net(x, t) -> tensor`` to every prediction kind.

    ``prediction`` names what the network outputs ("score", "eps", "v" or "x0"). ``t`` reaches the
    network as a (batch,) tensor in x's dtype. Solvers ask for what they need (score, eps or x0) and
    never see the network or its prediction type.
    """

    _t_cache = (None, None)  # ((time, batch, dtype, device), (batch,) time tensor for the network)

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE, prediction: str = "eps"):
        self.net = net
        self.sde = sde
        self.prediction = _check_prediction(prediction)

    def _time_batch(self, x: Tensor, t):
        """(validated time for the conversion, (batch,) times in x's dtype for the network)."""
        if _is_scalar(t):
            v = self.sde._check_scalar(t)
            key = (v, x.shape[0], x.dtype, x.device)
            if self._t_cache[0] != key:  # solvers ask several predictions at one time: build it once
                self._t_cache = (key, torch.full((x.shape[0],), v, dtype=x.dtype, device=x.device))
            return v, self._t_cache[1]
        t = self.sde.check_time(t)
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},); got {tuple(t.shape)}")
        return t, t.to(device=x.device, dtype=x.dtype)

    def predict(self, x: Tensor, t, kind: str) -> Tensor:
        """The network's output at (x, t) expressed as ``kind``."""
        _check_prediction(kind)
        t, t_net = self._time_batch(x, t)
        out = self.net(x, t_net)
        if out.shape != x.shape:
            raise ValueError(f"network returned shape {tuple(out.shape)}; expected x's shape {tuple(x.shape)}")
        return convert(out, self.prediction, kind, x, t, self.sde)

    def score(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "score")

    def eps(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "eps")

    def v(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "v")

    def x0(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t, "x0")

    def __repr__(self) -> str:
        return f"ScoreModel(net={type(self.net).__name__}, sde={self.sde!r}, prediction={self.prediction!r})"


class ClassifierFreeGuidance(torch.nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) as a network ``net(x, t)``.

    out = (1 + w) net(x, t, cond) - w net(x, t, null_cond), with both halves in one batched call.
    Every conversion is affine in the network output with the same coefficients, so guiding in eps,
    score, v or x0 space gives the same result: wrap the raw network and hand it to ``ScoreModel``.
    ``cond`` is a (batch, ...) tensor; ``null_cond`` a tensor broadcastable to it (e.g. the null class).
    """

    def __init__(self, net: Callable, cond: Tensor, null_cond, weight: float):
        super().__init__()
        self.net = net
        self.cond = cond
        self.null_cond = torch.as_tensor(null_cond, dtype=cond.dtype, device=cond.device).expand_as(cond)
        self.weight = float(weight)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond has batch {self.cond.shape[0]} but x has batch {x.shape[0]}")
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.cond, self.null_cond]))
        cond_out, uncond_out = out.chunk(2)
        return (1 + self.weight) * cond_out - self.weight * uncond_out
