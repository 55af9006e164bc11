"""SDE specs: the JSON-able {"name": ..., "kwargs": {...}} a checkpoint stores to rebuild its built-in SDE exactly.
"""
from __future__ import annotations

from ..sde import PATH_NAMES, VESDE, VPSDE, AffinePath, CosineVPSDE, DiscreteVPSDE, LinearSDE, SubVPSDE, TimeShift

__all__ = ["sde_to_spec", "sde_from_spec"]


def sde_to_spec(sde: LinearSDE) -> dict:
    """A JSON-able {"name": ..., "kwargs": {...}} rebuilding a built-in SDE exactly."""
    base = {"T": sde.T, "eps": sde.eps}
    if type(sde) in (VPSDE, SubVPSDE):
        kw = {"beta_min": getattr(sde, "beta_min"), "beta_max": getattr(sde, "beta_max"), **base}  # noqa: B009
    elif type(sde) is VESDE:
        kw = {"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max, **base}
    elif type(sde) is CosineVPSDE:
        kw = {"s": sde.s, **base}
    elif type(sde) is DiscreteVPSDE:
        kw = {"betas": [float(b) for b in sde.betas], "eps": sde.eps}
    elif type(sde) is TimeShift:
        kw = {"base": sde_to_spec(sde.base), "shift": sde.shift, "eps": sde.eps}
    elif type(sde) in PATH_NAMES.values():
        assert isinstance(sde, AffinePath)  # every named path is one
        kw = sde.config()
    else:
        from ..interop import EDMSDE  # the one non-core SDE sdekit ships

        if type(sde) is EDMSDE:
            kw = dict(base)
        else:
            raise ValueError(
                f"cannot serialise {type(sde).__name__}: checkpoints store only the built-in SDEs "
                f"({', '.join(_sde_classes())}); rebuild a custom SDE yourself and pass it to load_model(sde=...)")
    return {"name": type(sde).__name__, "kwargs": kw}


def _sde_classes() -> dict:
    from ..interop import EDMSDE

    return {c.__name__: c for c in (VPSDE, SubVPSDE, VESDE, CosineVPSDE, DiscreteVPSDE, EDMSDE, TimeShift,
                                    *PATH_NAMES.values())}


def sde_from_spec(spec: object) -> LinearSDE:
    """Inverse of ``sde_to_spec``."""
    classes = _sde_classes()
    if not isinstance(spec, dict) or spec.get("name") not in classes or not isinstance(spec.get("kwargs"), dict):
        raise ValueError(f"bad SDE spec {spec!r}: need {{'name': one of {', '.join(classes)}, 'kwargs': {{...}}}}")
    kwargs = dict(spec["kwargs"])
    if spec["name"] == "TimeShift":  # a shifted path nests its base path's spec
        kwargs["base"] = sde_from_spec(kwargs.get("base"))
    try:
        return classes[spec["name"]](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad SDE spec {spec!r}: {e}") from None
