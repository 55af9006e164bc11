import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.parameterization import PREDICTIONS, convert
from tests.sdes import builtin_sdes

SDES = builtin_sdes()
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@pytest.mark.parametrize("src,dst", list(itertools.permutations(PREDICTIONS, 2)))
@given(name=st.sampled_from(sorted(SDES)), u=st.floats(0.01, 1.0), shape=shapes, seed=st.integers(0, 2**16))
def test_conversions_round_trip(src, dst, name, u, shape, seed):
    sde = SDES[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    t = torch.rand(shape[0], generator=gen, dtype=torch.float64) * (sde.T - 0.01) * u + 0.01
    value = torch.randn(*shape, generator=gen, dtype=torch.float64)
    back = convert(convert(value, src, dst, x, t, sde), dst, src, x, t, sde)
    torch.testing.assert_close(back, value, rtol=1e-7, atol=1e-7 * float(value.abs().max()))


@given(name=st.sampled_from(sorted(SDES)), u=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_conversions_agree_with_definitions(name, u, seed):
    """Build x from a known (x0, eps) and check every prediction against its definition."""
    sde = SDES[name]
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    t = 0.01 + (sde.T - 0.01) * u
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    x = a * x0 + s * eps
    da, ds = (float(r) for r in sde.rates(t))
    truth = {"eps": eps, "x0": x0, "score": -eps / s, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}
    for src, dst in itertools.product(PREDICTIONS, PREDICTIONS):
        got = convert(truth[src], src, dst, x, t, sde)
        scale = float(truth[dst].abs().max())
        torch.testing.assert_close(got, truth[dst], rtol=1e-6, atol=1e-8 * max(1.0, scale) * (1 + 1 / a))


def test_score_model_exposes_every_prediction():
    sde = sdekit.VPSDE()
    net = lambda x, t: torch.tanh(x) * t[:, None]  # noqa: E731
    m = sdekit.ScoreModel(net, sde, prediction="v")
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    v = net(x, t)
    for kind in PREDICTIONS:
        torch.testing.assert_close(m.predict(x, t, kind), convert(v, "v", kind, x, t, sde))
    torch.testing.assert_close(m.eps(x, 0.4), m.eps(x, t))


def test_classifier_free_guidance_is_the_same_in_every_space():
    sde = sdekit.VPSDE()

    def net(x, t, c):
        return x * c[:, None] + t[:, None]

    cond = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    w = 2.5
    guided = sdekit.ClassifierFreeGuidance(net, cond, 0.0, weight=w)
    out = guided(x, t)
    torch.testing.assert_close(out, (1 + w) * net(x, t, cond) - w * net(x, t, torch.zeros(3, dtype=torch.float64)))
    for pred in PREDICTIONS:
        m_cond = sdekit.ScoreModel(lambda x, t: net(x, t, cond), sde, pred)
        m_unc = sdekit.ScoreModel(lambda x, t: net(x, t, torch.zeros_like(cond)), sde, pred)
        m_guided = sdekit.ScoreModel(guided, sde, pred)
        torch.testing.assert_close(m_guided.score(x, t), (1 + w) * m_cond.score(x, t) - w * m_unc.score(x, t))


def test_bad_prediction_names_and_shapes():
    sde = sdekit.VPSDE()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="accepted: score, eps, v, x0"):
        convert(x, "noise", "eps", x, 0.5, sde)
    with pytest.raises(ValueError, match="accepted"):
        sdekit.ScoreModel(lambda x, t: x, sde, prediction="epsilon")
    with pytest.raises(ValueError, match="must equal x shape"):
        convert(torch.zeros(2, 2), "eps", "x0", x, 0.5, sde)
    bad = sdekit.ScoreModel(lambda x, t: x[:, :1], sde, prediction="eps")
    with pytest.raises(ValueError, match="network returned shape"):
        bad.score(x, 0.5)
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        sdekit.ScoreModel(lambda x, t: x, sde).score(x, 2.0)


# -- a network never reaches sdekit's state through a tensor it is handed (issue 21, item 3) ---------------------------
class _Timesteps(torch.nn.Module):
    """An exact eps network that turns t into "timesteps", in place (``t *= 999``) or not."""

    def __init__(self, model, in_place):
        super().__init__()
        self.model, self.in_place = model, in_place

    def forward(self, x, t):
        if self.in_place:
            t *= 999
        else:
            t = t * 999
        return self.model.eps(x, t / 999)


@pytest.mark.parametrize("solver", ["heun", "rk4", "dpmpp_2m", "unipc_3"])
def test_a_network_editing_t_in_place_changes_nothing(solver):
    """Each call hands the network its own time tensor: an in-place ``t *= 999`` cannot reach a later call (the
    cached tensor made heun and rk4 end 22-30 away from the same network written without it)."""
    sde = sdekit.VPSDE()
    exact = sdekit.GaussianMixture.default(2).model(sde)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ends = [sdekit.sample(sdekit.ScoreModel(_Timesteps(exact, p), sde, "eps"), x, solver, 12).x for p in (True, False)]
    assert torch.equal(ends[0], ends[1])


def test_per_row_times_reach_the_network_as_a_copy():
    sde = sdekit.VPSDE()
    model = sdekit.ScoreModel(lambda x, t: x * t.mul_(2)[:, None], sde, "eps")
    t = torch.full((3,), 0.25, dtype=torch.float64)
    x = torch.ones(3, 2, dtype=torch.float64)
    first, again = model.eps(x, t), model.eps(x, t)
    assert torch.equal(t, torch.full((3,), 0.25, dtype=torch.float64)) and torch.equal(first, again)


def test_guidance_hands_the_network_fresh_condition_tensors():
    """ClassifierFreeGuidance's cond reaches the network inside a new batched tensor: a network that edits its
    condition in place changes neither the stored cond nor a later call."""
    cond = torch.tensor([[1.0], [2.0]], dtype=torch.float64)

    def net(x, t, c):
        out = x * c + t[:, None]
        c.mul_(-5.0)
        t.mul_(7.0)
        return out

    guided = sdekit.ClassifierFreeGuidance(net, cond, torch.zeros(1, 1, dtype=torch.float64), 1.5)
    model = sdekit.ScoreModel(guided, sdekit.VPSDE(), "eps")
    x = torch.ones(2, 1, dtype=torch.float64)
    first, again = model.eps(x, 0.5), model.eps(x, 0.5)
    assert torch.equal(first, again) and torch.equal(cond, torch.tensor([[1.0], [2.0]], dtype=torch.float64))


def test_where_a_conversion_is_undefined_is_said_without_a_network_call():
    """``undefined(kind, t)``: x0/eps/score from a velocity network at t = T on PolynomialPath (alpha' = sigma' = 0),
    x0 from an eps network at alpha = 0; defined everywhere else."""
    calls = []

    def net(x, t):
        calls.append(1)
        return x

    poly = sdekit.ScoreModel(net, sdekit.PolynomialPath(), "velocity")
    for kind in ("x0", "eps", "score", "v"):
        assert "PolynomialPath" in poly.undefined(kind, 1.0) and poly.undefined(kind, 0.5) is None
    assert poly.undefined("velocity", 1.0) is None
    rf = sdekit.ScoreModel(net, sdekit.RectifiedFlow(), "velocity")
    assert all(rf.undefined(k, 1.0) is None for k in PREDICTIONS)
    eps_rf = sdekit.ScoreModel(net, sdekit.RectifiedFlow(), "eps")
    assert eps_rf.undefined("x0", 1.0) is not None and eps_rf.undefined("x0", 0.9) is None
    vp = sdekit.ScoreModel(net, sdekit.VPSDE(), "score")
    assert all(vp.undefined(k, t) is None for k in PREDICTIONS for t in (1e-3, 0.5, 1.0))
    assert not calls


@pytest.mark.parametrize("weighting", ["likelihood", "flow_matching"])
def test_a_network_editing_t_in_place_does_not_change_the_training_loss(weighting):
    """dsm_loss hands the network a copy of its times (it handed the tensor it then converts with)."""
    sde = sdekit.RectifiedFlow() if weighting == "flow_matching" else sdekit.VPSDE()
    exact = sdekit.GaussianMixture.default(2).model(sde, "velocity" if weighting == "flow_matching" else "score")

    def net(in_place):
        def fn(x, t):
            if in_place:
                t *= 999
                return exact.net(x, t / 999)
            return exact.net(x, t)
        return fn

    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    noise = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    losses = [sdekit.dsm_loss(sdekit.ScoreModel(net(p), sde, exact.prediction), x0, t=t.clone(), noise=noise,
                              weighting=weighting) for p in (True, False)]
    assert torch.equal(losses[0], losses[1])
