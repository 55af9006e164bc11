"""Checkpoints: safetensors weights + a JSON config, no pickle anywhere, committed as a whole.

One job a module:
    format          the files of a checkpoint, format versions, ``LIMITS``, config.json built and checked in memory;
    specs           the JSON spec of a built-in SDE (``sde_to_spec`` / ``sde_from_spec``);
    storage         the commit protocol: a directory replaced as a whole under a lock, with crash recovery;
    claim           one run per checkpoint directory (``claim``, ``DirectoryClaimed``);
    write / read    a whole checkpoint built in memory and committed / read back verified;
    loading         ``load_model``: the network and its ScoreModel from a checkpoint;
    training_state  the tensor layout of state.safetensors (``TrainingState``), for ``Trainer.resume``.
Every name below is importable from ``sdekit.checkpoint``.
"""
from .claim import DirectoryClaimed, claim, held_claims
from .format import (CHECKPOINT_FILES, CONFIG_NAME, FORMAT, FORMAT_VERSION, LIMITS, LOSS_PLOT_NAME, MANIFEST_NAME,
                     READ_VERSIONS, WEIGHT_FILES, check_config_serialisable)
from .loading import load_model, load_state_strict
from .read import read_checkpoint, read_config
from .specs import sde_from_spec, sde_to_spec
from .storage import ANY, CheckpointConflict, check_replaces, checkpoint_id
from .training_state import TrainingState, finite_floats, read_training_state, training_state_tensors
from .write import build_checkpoint, commit_checkpoint, save_checkpoint

__all__ = ["FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "CONFIG_NAME", "MANIFEST_NAME", "LOSS_PLOT_NAME", "WEIGHT_FILES",
           "CHECKPOINT_FILES", "LIMITS", "ANY", "CheckpointConflict", "DirectoryClaimed", "sde_to_spec", "sde_from_spec",
           "check_config_serialisable", "save_checkpoint", "build_checkpoint", "commit_checkpoint", "check_replaces",
           "checkpoint_id", "read_config", "read_checkpoint", "load_state_strict", "load_model", "claim", "held_claims",
           "TrainingState", "training_state_tensors", "read_training_state", "finite_floats"]
