"""A fingerprint of what a model computes, so caches (``tune``) and saved objects tied to a model (learned solvers)
notice when its weights or settings change."""
from __future__ import annotations

import hashlib
import numbers
from typing import Optional

import torch

from .parameterization import ScoreModel

Tensor = torch.Tensor

__all__ = ["model_fingerprint"]


def model_fingerprint(model: ScoreModel) -> Optional[str]:
    """A hash of what the model computes: the network's parameters and buffers, the tensors and numbers held
    by its modules and by the objects they hold (a mixture, a schedule), the SDE's, and the prediction type;
    None for a network that is not an ``nn.Module``."""
    if not isinstance(model.net, torch.nn.Module):
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((type(model).__name__, model.prediction, getattr(model, "ratio", None),
                   getattr(model, "max_value", None))).encode())
    for name, t in model.net.state_dict(keep_vars=True).items():
        _hash_tensor(h, name, t)
    for mod in model.net.modules():
        _hash_fields(h, mod, depth=1)
    _hash_fields(h, model.sde, depth=1)
    return h.hexdigest()


def _hash_fields(h, obj, depth: int) -> None:
    """Hash the tensors among ``obj``'s attributes, its numbers too unless it is a module (whose counters and
    flags are not what it computes), and (``depth`` levels down) those of the plain objects it holds (a mixture,
    a schedule); modules' parameters and buffers are in the state dict, submodules are walked apart."""
    h.update(type(obj).__name__.encode())
    module = isinstance(obj, torch.nn.Module)
    for name, v in sorted(vars(obj).items()):
        if isinstance(v, Tensor):
            _hash_tensor(h, name, v)
        elif isinstance(v, (numbers.Number, str, type(None))):
            if not module:
                h.update(repr((name, v)).encode())
        elif isinstance(v, (list, tuple)) and all(isinstance(u, (numbers.Number, str)) for u in v):
            if not module:
                h.update(repr((name, v)).encode())
        elif depth > 0 and hasattr(v, "__dict__") and not isinstance(v, (torch.nn.Module, type)) \
                and not callable(v):
            _hash_fields(h, v, depth - 1)


def _hash_tensor(h, name: str, t: Tensor) -> None:
    t = t.detach()
    h.update(repr((name, str(t.dtype), tuple(t.shape))).encode())
    h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
