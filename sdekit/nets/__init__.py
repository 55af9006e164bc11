"""Networks called as ``net(x, t)`` (or ``net(x, t, y)`` with class labels), t a (batch,) tensor of
continuous times. One U-Net for images and one MLP for vectors; what they predict (score, eps, v or
x0) is decided by the ``sdekit.ScoreModel`` adapter, not by the network.

Every net keeps a JSON-serialisable ``config`` dict (with a ``"type"`` key) from which
``build_net(config)`` rebuilds it, so checkpoints never need pickled code.
"""
from __future__ import annotations

from .common import TimeEmbedding
from .mlp import MLP
from .unet import UNet

NETS = {"UNet": UNet, "MLP": MLP}

__all__ = ["UNet", "MLP", "TimeEmbedding", "NETS", "build_net"]


def build_net(config: dict):
    """Rebuild a network from its ``config`` dict (``config["type"]`` names the class)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"a net config must be a dict with a 'type' key; got {config!r}")
    kind = config["type"]
    if kind not in NETS:
        raise ValueError(f"unknown net type {kind!r}; accepted: {', '.join(NETS)}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    try:
        return NETS[kind](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for {kind}: {e}") from None
