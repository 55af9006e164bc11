"""The checkpoint format: file names, format versions, size limits, and config.json built and checked in memory.

A checkpoint is a directory holding
    config.json          format version, net config, SDE spec, prediction, step, training settings;
    model.safetensors    the network's weights (state_dict);
    ema.safetensors      the exponential moving average of the weights (same keys), if any;
    state.safetensors    what resuming needs: AdamW moments and step counts ("optim.<i>.<name>"),
                         the trainer's and torch's RNG states ("rng.*") and the loss history;
    loss.png             (from training) the loss curve;
    manifest.json        the sha256 of every file above, config.json included.
Format version 1 (no manifest.json, the weights' sha256 inside config.json, config.json itself
unchecked) is still read.

Everything here is pure (no file system): ``config_dict`` builds config.json, ``json_bytes`` serialises it
(refusing what JSON cannot store), ``check_limits`` bounds the sizes a config asks loading to allocate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch

from ..parameterization import PREDICTIONS
from ..sde import LinearSDE
from .specs import sde_to_spec


FORMAT = "sdekit-checkpoint"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
LOSS_PLOT_NAME = "loss.png"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors", "state": "state.safetensors"}
CHECKPOINT_FILES = (CONFIG_NAME, MANIFEST_NAME, LOSS_PLOT_NAME, *WEIGHT_FILES.values())

# Generous but finite bounds checked on a config before anything is built from it (a crafted
# config.json must not make loading allocate without limit). Estimated parameter count <= 2e9
# (8 GB of float32 weights), one sample <= 2^27 numbers (512 MiB in float32).
LIMITS = {
    "config_bytes": 64 << 20, "params": 2_000_000_000, "width": 1 << 16, "depth": 10_000, "channels": 1 << 14,
    "levels": 16, "channel_mult": 1024, "res_blocks": 1000, "heads": 4096, "classes": 1_000_000,
    "event_numel": 1 << 27, "batch_size": 1 << 24,
}

__all__ = ["FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "CONFIG_NAME", "MANIFEST_NAME", "LOSS_PLOT_NAME", "WEIGHT_FILES",
           "CHECKPOINT_FILES", "LIMITS", "config_dict", "json_bytes", "check_config_serialisable", "estimate_params",
           "check_limits", "check_sha_table"]


def _bad_json_value(obj, where: str):
    """(path, value) of the first value JSON with allow_nan=False cannot store, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{where}[{k!r}]", k
            bad = _bad_json_value(v, f"{where}.{k}" if where else k)
            if bad:
                return bad
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = _bad_json_value(v, f"{where}[{i}]")
            if bad:
                return bad
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return None
    return where, obj


def json_bytes(obj: dict, what: str) -> bytes:
    bad = _bad_json_value(obj, "")
    if bad is not None:
        where, value = bad
        kind = "NaN or infinity" if isinstance(value, float) else f"a {type(value).__name__}"
        raise ValueError(f"{what}: {where} = {value!r} cannot be stored in a checkpoint (JSON has no "
                         f"{kind}); fix that setting before training or saving")
    return json.dumps(obj, indent=1, allow_nan=False).encode()


def config_dict(net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int, extra: Optional[dict]) -> dict:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")
    net_config = getattr(net, "config", None)
    if not isinstance(net_config, dict) or "type" not in net_config:
        raise ValueError("the net needs a `config` dict with a 'type' key (sdekit.nets.UNet / MLP have one)")
    reserved = {"format", "format_version", "net", "sde", "prediction", "step"} & set(extra or {})
    if reserved:
        raise ValueError(f"extra must not set the reserved config entries {sorted(reserved)}")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "net": net_config, "sde": sde_to_spec(sde),
            "prediction": prediction, "step": int(step), **(extra or {})}


def check_config_serialisable(net: torch.nn.Module, sde: LinearSDE, prediction: str, extra: Optional[dict] = None) -> None:
    """Raise ValueError now if ``save_checkpoint`` with these arguments would fail on its config
    (a NaN hyper-parameter, a custom SDE, a value over ``LIMITS``): call it before training."""
    config = config_dict(net, sde, prediction, 0, extra)
    json_bytes(config, CONFIG_NAME)
    check_limits(config, Path(CONFIG_NAME))


def _int_in(value, lo: int, hi: int, what: str, cfg_path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"checkpoint file {cfg_path}: {what} must be an integer in [{lo}, {hi}]; got {value!r}")
    return value


def estimate_params(net: dict, cfg_path) -> int:
    """An upper estimate of the parameter count a net config builds (after bounding each field)."""
    L = LIMITS
    nc = net.get("num_classes")
    nc = 0 if nc is None else _int_in(nc, 1, L["classes"], "net.num_classes", cfg_path)
    if net.get("type") == "MLP":
        dim = _int_in(net.get("dim", 2), 1, L["event_numel"], "net.dim", cfg_path)
        w = _int_in(net.get("width", 128), 1, L["width"], "net.width", cfg_path)
        depth = _int_in(net.get("depth", 3), 0, L["depth"], "net.depth", cfg_path)
        emb = _int_in(net.get("emb_dim", 64), 1, L["width"], "net.emb_dim", cfg_path)
        return 2 * (dim + 1) * w + depth * (3 * w * w + 8 * w) + (emb + w + 2) * w + (nc + 1) * w + 4 * w
    if net.get("type") == "UNet":
        cin = _int_in(net.get("in_channels", 1), 1, L["channels"], "net.in_channels", cfg_path)
        oc = net.get("out_channels")
        cout = cin if oc is None else _int_in(oc, 1, L["channels"], "net.out_channels", cfg_path)
        base = _int_in(net.get("base_channels", 64), 1, L["channels"], "net.base_channels", cfg_path)
        mult = net.get("channel_mult", [1, 2, 2])
        if not isinstance(mult, list) or not 1 <= len(mult) <= L["levels"]:
            raise ValueError(f"checkpoint file {cfg_path}: net.channel_mult must be a list of 1 to {L['levels']} "
                             f"integers; got {mult!r}")
        mult = [_int_in(m, 1, L["channel_mult"], "net.channel_mult[i]", cfg_path) for m in mult]
        attn = net.get("attn_levels", [1])
        if not isinstance(attn, list) or len(attn) > L["levels"]:
            raise ValueError(f"checkpoint file {cfg_path}: net.attn_levels must be a list of at most "
                             f"{L['levels']} level indices; got {attn!r}")
        nrb = _int_in(net.get("num_res_blocks", 2), 0, L["res_blocks"], "net.num_res_blocks", cfg_path)
        _int_in(net.get("heads", 1), 1, L["heads"], "net.heads", cfg_path)
        emb = 4 * base
        c_max = base * max(mult)
        per_block = 9 * 2 * c_max * c_max + 9 * c_max * c_max + 2 * c_max * c_max + 2 * emb * c_max + 4 * c_max * c_max
        return (len(mult) * (2 * nrb + 2) + 3) * per_block + (base + emb) * emb + (nc + 1) * emb \
            + 9 * (cin + cout) * base
    return 0  # an unknown type is refused by build_net


def check_limits(config: dict, cfg_path) -> None:
    """Refuse a config whose sizes would make loading allocate beyond ``LIMITS`` (before building)."""
    net = config.get("net")
    if not isinstance(net, dict):
        raise ValueError(f"checkpoint file {cfg_path}: 'net' must be a dict with a 'type' key; got {net!r}")
    params = estimate_params(net, cfg_path)
    if params > LIMITS["params"]:
        raise ValueError(f"checkpoint file {cfg_path}: the net config describes about {params:.3g} parameters, over "
                         f"the limit of {LIMITS['params']:.3g} (sdekit.checkpoint.LIMITS['params']); refusing to build it")
    _int_in(config.get("step", 0), 0, 2**62, "step", cfg_path)
    data = config.get("data")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"checkpoint file {cfg_path}: 'data' must be a dict; got {type(data).__name__}")
    data = data or {}
    if "shape" in data:
        shape = data["shape"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
            raise ValueError(f"checkpoint file {cfg_path}: data.shape must be a list of 1 to 8 integers; got {shape!r}")
        shape = [_int_in(n, 1, LIMITS["event_numel"], "data.shape[i]", cfg_path) for n in shape]
        if math.prod(shape) > LIMITS["event_numel"]:
            raise ValueError(f"checkpoint file {cfg_path}: data.shape {shape} has {math.prod(shape):.3g} numbers per "
                             f"sample, over the limit of {LIMITS['event_numel']} (sdekit.checkpoint.LIMITS['event_numel'])")
    if "dim" in data:
        _int_in(data["dim"], 1, LIMITS["event_numel"], "data.dim", cfg_path)
    train = config.get("train")
    if train is not None:
        if not isinstance(train, dict):
            raise ValueError(f"checkpoint file {cfg_path}: 'train' must be a dict; got {type(train).__name__}")
        if "batch_size" in train:
            _int_in(train["batch_size"], 1, LIMITS["batch_size"], "train.batch_size", cfg_path)


def check_sha_table(table, where) -> dict:
    if not isinstance(table, dict):
        raise ValueError(f"checkpoint file {where}: 'sha256' must be a dict mapping file names to hex digests; "
                         f"got {type(table).__name__}")
    for name, digest in table.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ValueError(f"checkpoint file {where}: the sha256 of {name!r} is not a 64-digit hex string: {digest!r}")
    return table
