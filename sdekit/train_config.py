"""The training settings, each named once: ``TrainConfig`` (type, default and check of every setting)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .checkpoint import LIMITS
from .losses import TIME_SAMPLINGS, WEIGHTINGS
from .validate import INT64, choice, fraction, integer, real

__all__ = ["TrainConfig", "TRAIN_SETTINGS"]


@dataclass(frozen=True)
class TrainConfig:
    """The training settings, each named once: type, default and check (``__post_init__``, before anything is
    built; ValueError naming the setting). A checkpoint stores ``to_dict()``; ``Trainer`` takes a config and/or
    these names as keywords.

    batch_size in [1, LIMITS['batch_size']]; lr > 0 (AdamW, warmed up linearly over ``warmup`` >= 0 steps);
    weight_decay >= 0; betas two numbers in [0, 1); grad_clip >= 0 (0: no clipping); ema_decay in [0, 1];
    weighting and time_sampling of the loss (``sdekit.losses``: ``importance`` None/True/False, ``gamma`` > 0
    of min-SNR); p_uncond in [0, 1], the label dropout for classifier-free guidance; seed an int64. All finite.
    """

    batch_size: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    warmup: int = 0
    weighting: str = "simple"
    importance: Optional[bool] = None
    gamma: float = 5.0
    p_uncond: float = 0.1
    seed: int = 0
    time_sampling: str = "uniform"

    def __post_init__(self):
        checked = dict(batch_size=integer("batch_size", self.batch_size, 1, LIMITS["batch_size"]),
                       lr=real("lr", self.lr, 0.0, lo_open=True), weight_decay=real("weight_decay", self.weight_decay, 0.0),
                       betas=_betas(self.betas), grad_clip=real("grad_clip", self.grad_clip, 0.0),
                       ema_decay=fraction("ema_decay", self.ema_decay), warmup=integer("warmup", self.warmup, 0),
                       gamma=real("gamma", self.gamma, 0.0, lo_open=True), p_uncond=fraction("p_uncond", self.p_uncond),
                       seed=integer("seed", self.seed, *INT64))
        choice("weighting", self.weighting, WEIGHTINGS)
        choice("time_sampling", self.time_sampling, TIME_SAMPLINGS)
        if self.importance is not None and not isinstance(self.importance, bool):
            raise ValueError(f"importance must be None, True or False; got {self.importance!r}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """The settings as a checkpoint's config stores them (JSON: betas a list)."""
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def make(cls, config: Optional["TrainConfig"] = None, **settings) -> "TrainConfig":
        """``config`` (or the defaults) with ``settings`` replaced; unknown names are refused with the valid ones."""
        unknown = sorted(set(settings) - set(TRAIN_SETTINGS))
        if unknown:
            raise ValueError(f"unknown hyper-parameters {unknown}; accepted: {', '.join(TRAIN_SETTINGS)}")
        return dataclasses.replace(config or cls(), **settings)

    @classmethod
    def from_stored(cls, stored: dict) -> "TrainConfig":
        """The config a checkpoint recorded (its 'train' section); settings added after the first checkpoints
        (time_sampling) take their defaults when absent, any other missing one is a KeyError."""
        later = {"time_sampling"}
        return cls(**{k: stored[k] for k in TRAIN_SETTINGS if k in stored or k not in later})


TRAIN_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _betas(betas) -> tuple:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be two numbers in [0, 1); got {betas!r}")
    return tuple(real(f"betas[{i}]", b, 0.0, 1.0, hi_open=True) for i, b in enumerate(betas))
