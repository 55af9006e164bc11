"""Reading a checkpoint: verified config and tensors.

Loading reads only JSON and safetensors (which parses a JSON header plus raw buffers), checks the
format version and every checksum on the very bytes it then parses, bounds every size in the config
before anything is allocated (``LIMITS``), and raises ``ValueError`` naming the file and the
problem for a missing, truncated, corrupt, tampered, oversized or mismatched file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from safetensors.torch import load as st_load

from ..parameterization import PREDICTIONS
from .format import CONFIG_NAME, FORMAT, LIMITS, MANIFEST_NAME, READ_VERSIONS, WEIGHT_FILES, check_limits, check_sha_table
from .storage import locked, readable_dir

__all__ = ["read_config", "read_checkpoint"]


def _read_json(file: Path, limit: int) -> tuple[bytes, dict]:
    if not file.is_file():
        raise ValueError(f"checkpoint file {file} is missing")
    if file.stat().st_size > limit:
        raise ValueError(f"checkpoint file {file} is {file.stat().st_size} bytes, over the limit of {limit} "
                         "(sdekit.checkpoint.LIMITS['config_bytes'])")
    raw = file.read_bytes()
    try:
        return raw, json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"checkpoint file {file} is not valid JSON ({e}); the file is corrupt or truncated") from None


def _read_config(path: Path) -> tuple[dict, dict]:
    """(config, sha256 table) of the checkpoint directory ``path``, verified and bounded."""
    cfg_path = path / CONFIG_NAME
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a directory (expected {CONFIG_NAME} + *.safetensors inside)")
    raw, config = _read_json(cfg_path, LIMITS["config_bytes"])
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"checkpoint file {cfg_path} is not an sdekit checkpoint config (no format={FORMAT!r})")
    version = config.get("format_version")
    if version not in READ_VERSIONS:
        raise ValueError(f"checkpoint file {cfg_path} has format_version {version!r}; "
                         f"this sdekit reads versions {', '.join(map(str, READ_VERSIONS))}")
    if version == 1:
        if "sha256" not in config:
            raise ValueError(f"checkpoint file {cfg_path} lacks the 'sha256' entry")
        table = check_sha_table(config["sha256"], cfg_path)
    else:
        man_path = path / MANIFEST_NAME
        _, manifest = _read_json(man_path, LIMITS["config_bytes"])
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "sha256" not in manifest:
            raise ValueError(f"checkpoint file {man_path} is not an sdekit manifest (format={FORMAT!r}, 'sha256')")
        table = check_sha_table(manifest["sha256"], man_path)
        expected = table.get(CONFIG_NAME)
        if expected is None:
            raise ValueError(f"checkpoint file {man_path} records no checksum for {CONFIG_NAME}")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected:
            raise ValueError(f"checkpoint file {cfg_path} fails its sha256 check (expected {expected[:12]}..., "
                             f"got {digest[:12]}...): it was modified, truncated or is from another checkpoint")
    for key in ("net", "sde", "prediction", "step"):
        if key not in config:
            raise ValueError(f"checkpoint file {cfg_path} lacks the {key!r} entry")
    if config["prediction"] not in PREDICTIONS:
        raise ValueError(f"checkpoint file {cfg_path}: unknown prediction {config['prediction']!r}; "
                         f"accepted: {', '.join(PREDICTIONS)}")
    needed = [WEIGHT_FILES["model"]] + ([WEIGHT_FILES["ema"], WEIGHT_FILES["state"]] if "train" in config else [])
    missing = [n for n in needed if n not in table]
    if missing:
        raise ValueError(f"checkpoint {path} records no checksum for {', '.join(missing)}"
                         + (" although it is a training checkpoint (config 'train')" if "train" in config else "")
                         + "; refusing a partial checkpoint")
    check_limits(config, cfg_path)
    return config, table


def _read_tensors(path: Path, table: dict, kind: str) -> Optional[dict]:
    name = WEIGHT_FILES[kind]
    expected = table.get(name)
    file = path / name
    if expected is None:
        return None
    if not file.is_file():
        raise ValueError(f"checkpoint file {file} is missing (the checkpoint lists it)")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ValueError(f"checkpoint file {file} fails its sha256 check (expected {expected[:12]}..., "
                         f"got {digest[:12]}...): it was modified, truncated or is from another checkpoint")
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"checkpoint file {file} is not a valid safetensors file: {e}") from None


def read_config(path) -> dict:
    """The verified config of the checkpoint at ``path`` (no tensors read): what other modules ask for instead
    of opening the format's files themselves."""
    target = Path(os.path.realpath(path))
    with locked(target, exclusive=False):
        where = readable_dir(target)
        return _read_config(Path(path) if where == target else where)[0]


def read_checkpoint(path) -> tuple[dict, dict, Optional[dict], Optional[dict]]:
    """(config, model tensors, ema tensors or None, state tensors or None), all verified (the model's are
    always there: a checkpoint without them is refused)."""
    target = Path(os.path.realpath(path))
    with locked(target, exclusive=False):
        where = readable_dir(target)
        if where == target:
            where = Path(path)  # errors name the path as given
        config, table = _read_config(where)
        model = _read_tensors(where, table, "model")
        if model is None:
            raise ValueError(f"checkpoint {where} has no model weights")
        return config, model, _read_tensors(where, table, "ema"), _read_tensors(where, table, "state")
