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
