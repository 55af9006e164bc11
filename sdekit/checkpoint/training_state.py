"""The training state's tensor layout in state.safetensors (what ``Trainer.resume`` needs), encoded and decoded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["TrainingState", "training_state_tensors", "read_training_state", "finite_floats"]


def finite_floats(values) -> list:
    """JSON refuses NaN/inf: map them to None."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]


@dataclass
class TrainingState:
    """What state.safetensors holds for a training run, decoded: ``optimizer`` {parameter index: {name:
    tensor}} (AdamW's moments and step), the trainer's and torch's RNG states, ``ranks`` the (noise, torch)
    RNG states of each rank of a distributed run ([] for one process) and the loss history."""

    optimizer: dict
    rng_trainer: torch.Tensor
    rng_torch: torch.Tensor
    ranks: list = field(default_factory=list)
    losses: list = field(default_factory=list)


def training_state_tensors(state: TrainingState) -> dict:
    """The flat {name: tensor} of state.safetensors for ``state`` (``read_training_state`` inverts it):
    optim.<i>.<name>, rng.trainer, rng.torch, rng.rank<r>.noise / .torch, losses (float64)."""
    tensors = {f"optim.{i}.{name}": torch.as_tensor(value)
               for i, st in state.optimizer.items() for name, value in st.items()}
    tensors["rng.trainer"], tensors["rng.torch"] = state.rng_trainer, state.rng_torch
    for r, (noise_state, torch_state) in enumerate(state.ranks):
        tensors[f"rng.rank{r}.noise"], tensors[f"rng.rank{r}.torch"] = noise_state, torch_state
    tensors["losses"] = torch.tensor(state.losses, dtype=torch.float64)
    return tensors


def read_training_state(tensors: dict, where) -> TrainingState:
    """Decode ``training_state_tensors``'s layout; ValueError naming ``where`` (the file) for a missing or
    malformed entry."""
    optimizer: dict[int, dict] = {}
    try:
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                optimizer.setdefault(int(i), {})[name] = value
        n_ranks = sum(1 for k in tensors if k.startswith("rng.rank") and k.endswith(".noise"))
        ranks = [(tensors[f"rng.rank{r}.noise"], tensors[f"rng.rank{r}.torch"]) for r in range(n_ranks)]
        return TrainingState(optimizer=optimizer, rng_trainer=tensors["rng.trainer"], rng_torch=tensors["rng.torch"],
                             ranks=ranks, losses=tensors["losses"].tolist() if "losses" in tensors else [])
    except (KeyError, ValueError) as e:
        raise ValueError(f"checkpoint file {where}: bad training state ({e})") from None
