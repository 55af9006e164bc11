"""Checkpoints: safetensors weights + a JSON config, no pickle anywhere.

A checkpoint is a directory holding
    config.json          format version, net config, SDE spec, prediction, step, training settings,
                         and the sha256 of each tensor file below;
    model.safetensors    the network's weights (state_dict);
    ema.safetensors      the exponential moving average of the weights (same keys), if any;
    state.safetensors    what resuming needs: AdamW moments and step counts ("optim.<i>.<name>"),
                         the trainer's and torch's RNG states ("rng.*") and the loss history.
Every file is written to a temporary name in the same directory and moved into place with
``os.replace`` (atomic on POSIX); config.json goes last, so a crash leaves either the old
checkpoint or a checksum mismatch that loading reports, never a silently mixed one.

Loading reads only JSON and safetensors (which parses a JSON header plus raw buffers), checks the
format version and every checksum on the very bytes it then parses, and raises ``ValueError``
naming the file and the problem for a missing, truncated, corrupt, tampered or mismatched file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .parameterization import PREDICTIONS, ScoreModel
from .sde import VESDE, VPSDE, CosineVPSDE, DiscreteVPSDE, LinearSDE, SubVPSDE

Tensor = torch.Tensor

FORMAT = "sdekit-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "state": "state.safetensors"}

__all__ = ["FORMAT_VERSION", "sde_to_spec", "sde_from_spec", "save_checkpoint", "read_checkpoint",
           "load_model"]


# -- SDE specs -------------------------------------------------------------------------------------
def sde_to_spec(sde: LinearSDE) -> dict:
    """A JSON-able {"name": ..., "kwargs": {...}} rebuilding a built-in SDE exactly."""
    base = {"T": sde.T, "eps": sde.eps}
    if type(sde) in (VPSDE, SubVPSDE):
        kw = {"beta_min": sde.beta_min, "beta_max": sde.beta_max, **base}
    elif type(sde) is VESDE:
        kw = {"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max, **base}
    elif type(sde) is CosineVPSDE:
        kw = {"s": sde.s, **base}
    elif type(sde) is DiscreteVPSDE:
        kw = {"betas": [float(b) for b in sde.betas], "eps": sde.eps}
    else:
        from .interop import EDMSDE  # the one non-core SDE sdekit ships

        if type(sde) is EDMSDE:
            kw = dict(base)
        else:
            raise ValueError(
                f"cannot serialise {type(sde).__name__}: checkpoints store only the built-in SDEs "
                f"({', '.join(_sde_classes())}); rebuild a custom SDE yourself and pass it to load_model(sde=...)")
    return {"name": type(sde).__name__, "kwargs": kw}


def _sde_classes() -> dict:
    from .interop import EDMSDE

    return {c.__name__: c for c in (VPSDE, SubVPSDE, VESDE, CosineVPSDE, DiscreteVPSDE, EDMSDE)}


def sde_from_spec(spec: dict) -> LinearSDE:
    """Inverse of ``sde_to_spec``."""
    classes = _sde_classes()
    if not isinstance(spec, dict) or spec.get("name") not in classes or not isinstance(spec.get("kwargs"), dict):
        raise ValueError(f"bad SDE spec {spec!r}: need {{'name': one of {', '.join(classes)}, 'kwargs': {{...}}}}")
    try:
        return classes[spec["name"]](**spec["kwargs"])
    except TypeError as e:
        raise ValueError(f"bad SDE spec {spec!r}: {e}") from None


# -- writing -----------------------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tensors_bytes(tensors: dict) -> bytes:
    return _st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def save_checkpoint(path, net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int = 0,
                    ema: Optional[dict] = None, state: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    """Write a checkpoint directory (created if needed). ``net`` must have a ``config`` dict;
    ``ema`` and ``state`` are optional dicts of tensors; ``extra`` is merged into config.json
    (JSON-able values: training settings, optimizer hyper-parameters, ...)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")
    net_config = getattr(net, "config", None)
    if not isinstance(net_config, dict) or "type" not in net_config:
        raise ValueError("the net needs a `config` dict with a 'type' key (sdekit.nets.UNet / MLP have one)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    files = {"model": net.state_dict()}
    if ema is not None:
        files["ema"] = ema
    if state is not None:
        files["state"] = state
    checksums = {}
    for kind, tensors in files.items():
        data = _tensors_bytes(tensors)
        checksums[WEIGHT_FILES[kind]] = hashlib.sha256(data).hexdigest()
        _atomic_write(path / WEIGHT_FILES[kind], data)
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "net": net_config, "sde": sde_to_spec(sde),
        "prediction": prediction, "step": int(step), "sha256": checksums, **(extra or {}),
    }
    _atomic_write(path / CONFIG_NAME, json.dumps(config, indent=1, allow_nan=False).encode())
    return path


# -- reading -----------------------------------------------------------------------------------------
def _read_config(path: Path) -> dict:
    cfg_path = path / CONFIG_NAME
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory (expected {CONFIG_NAME} + *.safetensors inside)")
    if not cfg_path.is_file():
        raise ValueError(f"checkpoint file {cfg_path} is missing")
    try:
        config = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint file {cfg_path} is not valid JSON ({e}); the file is corrupt or truncated") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"checkpoint file {cfg_path} is not an sdekit checkpoint config (no format={FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint file {cfg_path} has format_version {config.get('format_version')!r}; "
                         f"this sdekit reads version {FORMAT_VERSION}")
    for key in ("net", "sde", "prediction", "step", "sha256"):
        if key not in config:
            raise ValueError(f"checkpoint file {cfg_path} lacks the {key!r} entry")
    if config["prediction"] not in PREDICTIONS:
        raise ValueError(f"checkpoint file {cfg_path}: unknown prediction {config['prediction']!r}; "
                         f"accepted: {', '.join(PREDICTIONS)}")
    return config


def _read_tensors(path: Path, config: dict, kind: str) -> Optional[dict]:
    name = WEIGHT_FILES[kind]
    expected = config["sha256"].get(name)
    file = path / name
    if expected is None:
        if kind == "model":
            raise ValueError(f"checkpoint file {path / CONFIG_NAME} records no checksum for {name}")
        return None
    if not file.is_file():
        raise ValueError(f"checkpoint file {file} is missing (config.json lists it)")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ValueError(f"checkpoint file {file} fails its sha256 check (expected {expected[:12]}..., "
                         f"got {digest[:12]}...): it was modified, truncated or is from another checkpoint")
    try:
        return _st_load(data)
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"checkpoint file {file} is not a valid safetensors file: {e}") from None


def read_checkpoint(path) -> tuple[dict, dict, Optional[dict], Optional[dict]]:
    """(config, model tensors, ema tensors or None, state tensors or None), all verified."""
    path = Path(path)
    config = _read_config(path)
    return (config, _read_tensors(path, config, "model"), _read_tensors(path, config, "ema"),
            _read_tensors(path, config, "state"))


def load_state_strict(module: torch.nn.Module, tensors: dict, file) -> None:
    """Load tensors into module, raising ValueError (naming ``file``) on any key/shape/dtype mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [f"{k}: file {tuple(tensors[k].shape)} {tensors[k].dtype} vs net {tuple(own[k].shape)} {own[k].dtype}"
           for k in own if k in tensors and (tensors[k].shape != own[k].shape or tensors[k].dtype != own[k].dtype)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if bad:
            parts.append(f"mismatched {bad[:3]}{' ...' if len(bad) > 3 else ''}")
        raise ValueError(f"checkpoint file {file} does not match the network its config describes: " + "; ".join(parts))
    module.load_state_dict(tensors)


def load_model(path, use_ema: bool = True, device=None, sde: Optional[LinearSDE] = None) -> tuple[ScoreModel, dict]:
    """Rebuild (ScoreModel, config) from a checkpoint directory; the net is in eval mode.

    use_ema: load the EMA weights when the checkpoint has them (what one samples from), else the raw
    weights. sde: override the stored SDE (needed only for a custom SDE, which is not serialised).
    """
    from .nets import build_net

    path = Path(path)
    config, model_t, ema_t, _ = read_checkpoint(path)
    try:
        net = build_net(config["net"])
    except ValueError as e:
        raise ValueError(f"checkpoint file {path / CONFIG_NAME}: {e}") from None
    if use_ema and ema_t is not None:
        load_state_strict(net, ema_t, path / WEIGHT_FILES["ema"])
    else:
        load_state_strict(net, model_t, path / WEIGHT_FILES["model"])
    if sde is None:
        try:
            sde = sde_from_spec(config["sde"])
        except ValueError as e:
            raise ValueError(f"checkpoint file {path / CONFIG_NAME}: {e}") from None
    if device is not None:
        net = net.to(device)
    net.eval()
    return ScoreModel(net, sde, prediction=config["prediction"]), config


def finite_floats(values) -> list:
    """JSON refuses NaN/inf: map them to None."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]
