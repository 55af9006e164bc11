"""sdekit: score-based diffusion in continuous time.

SDEs as objects (`sdekit.sde`), networks as prediction adapters (`sdekit.parameterization`), exact
ground truth (`sdekit.ground_truth`), samplers (`sdekit.solvers`), probability-flow likelihoods
(`sdekit.likelihood`) and an accuracy-vs-steps harness (`sdekit.compare`).
"""
from .compare import CompareResults, compare
from .ground_truth import GaussianMixture
from .likelihood import DatasetScore, LikelihoodConfig, LikelihoodResult, log_likelihood, sample_log_prob, score_dataset
from .parameterization import PREDICTIONS, ClassifierFreeGuidance, ScoreModel, convert
from .sde import (
    SDE,
    CosineVPSDE,
    DiscreteVPSDE,
    LinearSDE,
    SubVPSDE,
    VESDE,
    VPSDE,
    cosine_beta_schedule,
    linear_beta_schedule,
    rescale_zero_terminal_snr,
    AffinePath,
    RectifiedFlow,
    CondOT,
    PolynomialPath,
    CosinePath,
    TimeShift,
    time_shift,
)
from .checkpoint import load_model, save_checkpoint
from .losses import dsm_loss, flow_matching_loss
from .nets import MLP, UNet
from .train import Trainer
from . import solvers
from .solvers import Solution, sample
from .solvers.tune import TunedGrid, tune, tune_grid
from .solvers.learned import LearnedSolver, learn_solver

__version__ = "0.1.0"

__all__ = [
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE",
    "linear_beta_schedule", "cosine_beta_schedule", "rescale_zero_terminal_snr",
    "AffinePath", "RectifiedFlow", "CondOT", "PolynomialPath", "CosinePath", "TimeShift", "time_shift",
    "ScoreModel", "ClassifierFreeGuidance", "convert", "PREDICTIONS",
    "GaussianMixture",
    "compare", "CompareResults",
    "UNet", "MLP", "dsm_loss", "flow_matching_loss", "Trainer", "load_model", "save_checkpoint",
    "log_likelihood", "LikelihoodResult", "LikelihoodConfig", "sample_log_prob", "score_dataset", "DatasetScore",
    "solvers", "sample", "Solution", "tune", "tune_grid", "TunedGrid", "learn_solver", "LearnedSolver",
]
