"""A network and its ScoreModel rebuilt from a checkpoint, the tensors checked against the network first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..nets import build_net
from ..parameterization import ScoreModel
from ..sde import LinearSDE
from .format import CONFIG_NAME, WEIGHT_FILES
from .read import read_checkpoint
from .specs import sde_from_spec

__all__ = ["load_state_strict", "load_model"]


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
    """Rebuild (ScoreModel, config) from a checkpoint directory, for inference: the net is in eval mode
    (dropout off) and its parameters do not require grad, so sampling builds no autograd graph. To train or
    fine-tune it, call ``model.net.train().requires_grad_(True)`` (``Trainer.resume`` continues a run with
    its own net and optimizer and is not affected). Gradients with respect to x (likelihoods, guidance) flow
    as usual.

    use_ema: load the EMA weights when the checkpoint has them (what one samples from), else the raw
    weights. sde: override the stored SDE (needed only for a custom SDE, which is not serialised).
    """
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
    net.eval().requires_grad_(False)
    return ScoreModel(net, sde, prediction=config["prediction"]), config
