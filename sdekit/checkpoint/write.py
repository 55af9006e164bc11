"""Building a checkpoint in memory (every file as bytes, validated, manifest last) and committing it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save as st_save

from ..sde import LinearSDE
from .format import (CHECKPOINT_FILES, CONFIG_NAME, FORMAT, FORMAT_VERSION, MANIFEST_NAME, WEIGHT_FILES, check_limits,
                     config_dict, json_bytes)
from .storage import ANY, commit

__all__ = ["build_checkpoint", "commit_checkpoint", "save_checkpoint"]


def _tensors_bytes(tensors: dict) -> bytes:
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _payload(net, sde, prediction, step, ema, state, extra, files) -> dict:
    """{file name: bytes} of a whole checkpoint, manifest last; raises before any file is touched."""
    config = config_dict(net, sde, prediction, step, extra)
    config_bytes = json_bytes(config, CONFIG_NAME)
    check_limits(config, Path(CONFIG_NAME))
    payload = {}
    for name, data in (files or {}).items():
        if name in CHECKPOINT_FILES[:2] or name in WEIGHT_FILES.values() or name != os.path.basename(name) \
                or name.startswith(".") or not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"files: {name!r} must be a plain file name (not hidden, not one of config.json, "
                             "manifest.json, *.safetensors) mapped to bytes")
        payload[name] = bytes(data)
    for kind, tensors in (("model", net.state_dict()), ("ema", ema), ("state", state)):
        if tensors is not None:
            payload[WEIGHT_FILES[kind]] = _tensors_bytes(tensors)
    payload[CONFIG_NAME] = config_bytes
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in payload.items()}}
    payload[MANIFEST_NAME] = json.dumps(manifest, indent=1).encode()
    return payload


def build_checkpoint(net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int = 0,
                     ema: Optional[dict] = None, state: Optional[dict] = None, extra: Optional[dict] = None,
                     files: Optional[dict] = None) -> dict:
    """{file name: bytes} of a whole checkpoint (arguments as for ``save_checkpoint``), validated in
    memory: raises ValueError before the file system is touched."""
    return _payload(net, sde, prediction, step, ema, state, extra, files)


def commit_checkpoint(path, payload: dict, replaces=ANY) -> str:
    """Write ``build_checkpoint``'s payload to ``path`` as a whole (protocol in ``sdekit.checkpoint.storage``);
    returns the new checkpoint's id (see ``save_checkpoint`` for ``replaces``)."""
    if MANIFEST_NAME not in payload or CONFIG_NAME not in payload:
        raise ValueError("commit_checkpoint needs the payload of build_checkpoint (config.json and manifest.json)")
    commit(Path(os.path.realpath(path)), payload, replaces)
    return hashlib.sha256(payload[MANIFEST_NAME]).hexdigest()


def save_checkpoint(path, net: torch.nn.Module, sde: LinearSDE, prediction: str, step: int = 0,
                    ema: Optional[dict] = None, state: Optional[dict] = None, extra: Optional[dict] = None,
                    files: Optional[dict] = None, replaces=ANY) -> Path:
    """Write a checkpoint directory as a whole (protocol in ``sdekit.checkpoint.storage``). ``net`` must have a
    ``config`` dict; ``ema`` and ``state`` are optional dicts of tensors; ``extra`` is merged into
    config.json (JSON-able values: training settings, optimizer hyper-parameters, ...); ``files`` maps
    further file names (loss.png) to their bytes.

    replaces: ``ANY`` (default) replaces whatever checkpoint is in ``path``; None writes only if there
    is none; a checkpoint id (``checkpoint_id``) writes only if the checkpoint there is still that one.
    Otherwise ``CheckpointConflict`` (a ValueError) is raised and nothing is changed."""
    commit_checkpoint(path, build_checkpoint(net, sde, prediction, step, ema, state, extra, files), replaces)
    return Path(path)
