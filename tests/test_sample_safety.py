"""``sample`` and ``tune`` with what users bring: half-precision states, networks with trainable weights,
changing weights under a cache, and grids edited after they were returned."""
import pytest
import torch

import sdekit
from sdekit.solvers.tune import _CACHE


def _mixture():
    return sdekit.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.0], [1.0, 0.5]], stds=[0.2, 0.3])


class _Calls(torch.nn.Module):
    """The exact mixture score behind a trainable scale (1 at start), counting calls and recording grad mode."""

    def __init__(self, gm, sde):
        super().__init__()
        self.exact = gm.model(sde).net
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.calls = 0
        self.grad_modes: list[bool] = []

    def forward(self, x, t):
        self.calls += 1
        self.grad_modes.append(torch.is_grad_enabled())
        return self.scale.to(x.dtype) * self.exact(x, t)


@pytest.fixture
def counted():
    sde = sdekit.VPSDE()
    net = _Calls(_mixture(), sde)
    return sdekit.ScoreModel(net, sde, prediction="score"), net


# --- autograd ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "euler_ancestral"])
def test_sampling_records_no_graph_by_default(counted, solver):
    model, net = counted
    x_T = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    sol = sdekit.sample(model, x_T, solver, steps=4, generator=0)
    assert not sol.x.requires_grad and sol.x.grad_fn is None
    assert net.grad_modes and not any(net.grad_modes)


def test_grad_true_keeps_the_graph_to_the_weights_and_the_start(counted):
    model, net = counted
    x_T = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    sol = sdekit.sample(model, x_T, "dpmpp_2m", steps=4, grad=True)
    sol.x.pow(2).sum().backward()
    assert net.scale.grad is not None and torch.isfinite(net.scale.grad) and float(net.scale.grad) != 0.0
    assert x_T.grad is not None and bool(torch.isfinite(x_T.grad).all())
    # the graph is the same computation: grad=True changes nothing in the values
    assert torch.equal(sol.x.detach(), sdekit.sample(model, x_T.detach(), "dpmpp_2m", steps=4).x)


def test_grad_must_be_a_bool(counted):
    model, _ = counted
    with pytest.raises(TypeError, match="grad"):
        sdekit.sample(model, torch.randn(4, 2), "heun", steps=2, grad="yes")


def test_tuning_records_no_graph(counted):
    model, net = counted
    # derivative-free tuning records nothing; method="gradient" (auto's pick for a differentiable net) back-propagates
    # through the solver by design, and only inside its own updates
    sdekit.tune(model, "dpmpp_2m", steps=3, shape=(2,), n=16, max_evals=2, ref_steps=20, cache=False, method="powell")
    assert net.calls > 0 and not any(net.grad_modes)


# --- dtypes ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "unipc_3"])
def test_half_precision_start_is_solved_in_float32(dtype, solver):
    sde = sdekit.VPSDE()
    model = _mixture().model(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(3)).to(dtype)
    sol = sdekit.sample(model, x_T, solver, steps=10)
    ref = sdekit.sample(model, x_T.float(), solver, steps=10)
    assert sol.x.dtype == torch.float32
    torch.testing.assert_close(sol.x, ref.x, rtol=0, atol=0)


def test_integer_start_is_refused_by_name():
    sde = sdekit.VPSDE()
    with pytest.raises(ValueError, match="floating-point"):
        sdekit.sample(_mixture().model(sde), torch.zeros(4, 2, dtype=torch.int64), "heun", steps=2)


# --- tune's cache and its inputs ---------------------------------------------------------------------------------

_TUNE = dict(steps=3, shape=(2,), n=16, max_evals=4, ref_steps=20, generator=0)


def test_tune_is_recomputed_after_the_weights_change(counted):
    model, net = counted
    first = sdekit.tune(model, "dpmpp_2m", **_TUNE)
    calls = net.calls
    again = sdekit.tune(model, "dpmpp_2m", **_TUNE)
    assert net.calls == calls and torch.equal(again.ts, first.ts)  # same content: cached
    with torch.no_grad():
        net.scale.data.mul_(0.5)  # an edit through .data bumps no version counter
    sdekit.tune(model, "dpmpp_2m", **_TUNE)
    assert net.calls > calls  # new content: tuned anew
    assert len(_CACHE[model]) == 1  # the stale entry is dropped


def test_editing_a_returned_grid_leaves_the_cache_intact(counted):
    model, _ = counted
    first = sdekit.tune(model, "dpmpp_2m", **_TUNE)
    kept = first.ts.clone()
    first.ts[1] = 5.0  # the caller's copy, not the cache's
    first.validation["tuned"]["median"] = -1.0
    again = sdekit.tune(model, "dpmpp_2m", **_TUNE)
    assert torch.equal(again.ts, kept) and bool((again.ts[1:] < again.ts[:-1]).all())
    assert again.validation["tuned"]["median"] >= 0


def test_a_function_network_is_never_cached():
    sde = sdekit.VPSDE()
    exact = _mixture().model(sde).net
    calls = [0]

    def net(x, t):
        calls[0] += 1
        return exact(x, t)

    model = sdekit.ScoreModel(net, sde, prediction="score")
    sdekit.tune(model, "dpmpp_2m", **_TUNE)
    before = calls[0]
    sdekit.tune(model, "dpmpp_2m", **_TUNE)
    assert calls[0] == 2 * before


def test_generator_none_draws_a_seed_and_reports_it(counted):
    model, _ = counted
    torch.manual_seed(11)
    a = sdekit.tune(model, "dpmpp_2m", **{**_TUNE, "generator": None})
    torch.manual_seed(11)
    b = sdekit.tune(model, "dpmpp_2m", **{**_TUNE, "generator": None})
    assert isinstance(a.seed, int) and a.seed == b.seed
    c = sdekit.tune(model, "dpmpp_2m", **{**_TUNE, "generator": a.seed})
    assert torch.equal(c.ts, a.ts)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"start_grids": ()}, ValueError, "start_grids"),
    ({"start_grids": "logsnr"}, ValueError, "start_grids"),
    ({"start_grids": ("nope",)}, ValueError, "unknown start grid"),
    ({"ref_steps": 0}, ValueError, "ref_steps"),
    ({"ref_steps": 2.5}, ValueError, "ref_steps"),
    ({"generator": "seed"}, TypeError, "generator"),
    ({"dtype": torch.float16}, ValueError, "dtype"),
])
def test_tune_refuses_bad_settings_by_name(counted, kwargs, error, match):
    model, net = counted
    with pytest.raises(error, match=match):
        sdekit.tune(model, "dpmpp_2m", **{**_TUNE, **kwargs})
    assert net.calls == 0


# --- the Brownian path's resolution ------------------------------------------------------------------------------

def test_a_grid_finer_than_the_brownian_path_warns_and_step_noise_does_not():
    sde = sdekit.VPSDE()
    model = _mixture().model(sde)
    x_T = torch.randn(2, 2, dtype=torch.float64)
    ts = torch.tensor([1.0, 0.5, 0.5 - 2.0**-15, 0.1], dtype=torch.float64)  # one step of 2^-15 at t = 0.5
    with pytest.warns(UserWarning, match="Brownian path's resolution"):
        sdekit.sample(model, x_T, "euler_maruyama", ts=ts, generator=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdekit.sample(model, x_T, "euler_maruyama", ts=ts, generator=0, noise="step")
        sdekit.sample(model, x_T, "euler_maruyama", steps=500, generator=0)  # coarse: no warning
        sdekit.sample(model, x_T, "heun", ts=ts)  # deterministic: no path


def test_tune_tells_apart_two_mixtures_of_the_same_shape():
    """The fingerprint sees what a network module holds (the mixture behind the exact score), not only its
    parameters: two same-shape mixtures must not share a cached grid."""
    from sdekit.solvers.tune import model_fingerprint

    sde = sdekit.VPSDE()
    a = sdekit.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.0], [1.0, 0.5]], stds=[0.2, 0.3])
    b = sdekit.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.0], [1.0, 0.6]], stds=[0.2, 0.3])
    assert model_fingerprint(a.model(sde)) != model_fingerprint(b.model(sde))
    assert model_fingerprint(a.model(sde)) == model_fingerprint(a.model(sde))
    assert model_fingerprint(a.model(sde)) != model_fingerprint(a.model(sdekit.VESDE()))
