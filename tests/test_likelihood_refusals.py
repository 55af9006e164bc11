"""Likelihood entry points refuse, by name and before any network call, what they would integrate wrongly:
a ``ThresholdedModel`` (clipped x0: a sampling heuristic, not a density; issue 21 item 1) and a fixed-grid
method without a step size (torchdiffeq would take one step per interval)."""
import pytest
import torch

import sdekit
from sdekit.likelihood import score_dataset
from sdekit.likelihood import ADAPTIVE_METHODS, LikelihoodConfig, log_likelihood, sample_log_prob
from sdekit.parameterization import ScoreModel, ThresholdedModel
from sdekit.solvers import sample
from sdekit.solvers.integrate import EXTERNAL_METHODS, TABLEAUS


def _counted(calls):
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=2)

    def net(x, t):
        calls.append(1)
        return gm.score(x, t, sde)

    return ScoreModel(net, sde, "score"), gm


ENTRY_POINTS = {
    "log_likelihood": lambda m, x: log_likelihood(m, x, rtol=1e-3, atol=1e-3),
    "score_dataset": lambda m, x: score_dataset(m, x),
    "sample_log_prob": lambda m, x: sample_log_prob(m, x, rtol=1e-3, atol=1e-3),
    "sample(log_prob=True)": lambda m, x: sample(m, x, "dopri5", log_prob=True, likelihood={"rtol": 1e-3}),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("ratio", [None, 0.995])
def test_thresholded_model_refused_by_name_before_any_call(entry, ratio):
    calls: list = []
    model, gm = _counted(calls)
    x = gm.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"ThresholdedModel(.|\n)*model\.model(.|\n)*threshold=False"):
        ENTRY_POINTS[entry](ThresholdedModel(model, ratio=ratio), x)
    assert calls == [], f"{entry} called the network {len(calls)} times before refusing"
    # the fix the message names works: the wrapped model is scored
    ENTRY_POINTS[entry](ThresholdedModel(model, ratio=ratio).model, x)
    assert calls


def test_thresholding_changes_the_field_it_would_integrate():
    """Why the refusal: on the mixture (values up to ~2.5 > max_value 1) the clipped model's drift differs from
    the exact one, so its likelihood would not be the model's."""
    calls: list = []
    model, gm = _counted(calls)
    x = gm.sample(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    clipped = ThresholdedModel(model, ratio=None).score(x, t)
    assert (clipped - model.score(x, t)).abs().max() > 0.1


@pytest.mark.parametrize("method", sorted(set(TABLEAUS) | set(EXTERNAL_METHODS)))
def test_every_method_either_adapts_or_needs_a_step_size(method):
    """The registry walk: an adaptive method runs without step_size; any other is refused without one, by name
    (torchdiffeq's fixed-grid heun3 / adams would otherwise step once per interval, silently)."""
    if method in ADAPTIVE_METHODS:
        LikelihoodConfig(method=method)
        return
    with pytest.raises(ValueError, match=rf"{method}.*step_size"):
        LikelihoodConfig(method=method)
    LikelihoodConfig(method=method, step_size=0.01)


def test_fixed_torchdiffeq_method_would_be_one_step_per_interval():
    """What the refusal of heun3 without step_size prevents: torchdiffeq's fixed-grid solvers take the output
    times as their grid, so the solve is one step long."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    nfe = [0]

    def f(t, y):
        nfe[0] += 1
        return -y

    torchdiffeq.odeint(f, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
                       method="heun3")
    assert nfe[0] <= 3
