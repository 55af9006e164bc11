"""Counter-based per-row noise and the per-row Brownian path: bit-exact hash, row invariance, Gaussian statistics
(bounds of 5 standard errors from the sample size) and consistency of the path across query grids."""
import math

import pytest
import torch

from sdekit.noise import BrownianPath, RowNoise, mix, mix_py, normals, row_keys

Z = 5.0  # standard errors allowed in every statistical check


def test_hash_matches_python_reference_bit_for_bit():
    vals = [0, 1, 2, 2**31, 2**62 + 12345, 2**63 - 1, -1, -(2**63), -987654321987]
    assert mix(torch.tensor(vals, dtype=torch.int64)).tolist() == [mix_py(v) for v in vals]
    # known SplitMix64 output: state 0 advanced once (gamma) then mixed -> 0xe220a8397b1dcdaf
    assert mix_py(0x9E3779B97F4A7C15) & (2**64 - 1) == 0xE220A8397B1DCDAF


def test_rows_do_not_depend_on_batch_or_offset():
    x = torch.zeros(12, 3, 5)
    full = RowNoise(7, 12)
    part = RowNoise(7, 4, row_offset=5)
    a, b = full.randn_like(x), part.randn_like(x[5:9])
    assert torch.equal(a[5:9], b)
    assert not torch.equal(full.randn_like(x), a)  # the next call is a new draw
    assert not torch.equal(RowNoise(8, 12).randn_like(x), a)


def test_float64_and_float32_shapes_and_devices():
    for dtype in (torch.float32, torch.float64):
        z = RowNoise(0, 3).randn_like(torch.zeros(3, 7, dtype=dtype))
        assert z.dtype == dtype and z.shape == (3, 7) and z.device.type == "cpu"
    with pytest.raises(ValueError, match="rows"):
        RowNoise(0, 3).randn_like(torch.zeros(4, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_moments_quantiles_and_independence(dtype):
    n_rows, d = 4000, 50
    z = RowNoise(3, n_rows).randn_like(torch.zeros(n_rows, d, dtype=dtype)).double()
    n = z.numel()
    assert abs(float(z.mean())) < Z / math.sqrt(n)
    assert abs(float(z.var()) - 1) < Z * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < Z * math.sqrt(96 / n)
    for q in (0.01, 0.1, 0.5, 0.9, 0.99):
        frac = float((z < math.sqrt(2) * torch.special.erfinv(torch.tensor(2 * q - 1.0))).double().mean())
        assert abs(frac - q) < Z * math.sqrt(q * (1 - q) / n)
    # neighbours along a row (the cos/sin pair and across words) and across rows are uncorrelated
    for a, b in ((z[:, :-1], z[:, 1:]), (z[:-1], z[1:])):
        r = float((a * b).mean())
        assert abs(r) < Z / math.sqrt(a.numel())


def test_rand_and_randn_streams_are_pure_functions():
    rn = RowNoise(1, 5)
    u = rn.rand((3,), stream=2)
    assert torch.equal(u, RowNoise(1, 5).rand((3,), stream=2)) and bool(((u > 0) & (u < 1)).all())
    assert torch.equal(rn.randn((2, 2), stream=4)[2:], RowNoise(1, 3, row_offset=2).randn((2, 2), stream=4))


# -- the Brownian path ------------------------------------------------------------------------------------
def _times(k, seed, T=1.0):
    g = torch.Generator().manual_seed(seed)
    return sorted(set((torch.rand(k, generator=g, dtype=torch.float64) * T).tolist()), reverse=True)


def test_coarse_grid_values_equal_the_fine_grids_exactly():
    x = torch.zeros(64, 3, dtype=torch.float64)
    coarse = [1.0] + _times(9, 0) + [1e-3]
    fine = sorted(set(coarse) | set(_times(400, 1)) | {0.5, 0.25}, reverse=True)
    w_fine = RowNoise(11, 64).path(1.0)(x, fine)
    w_coarse = RowNoise(11, 64).path(1.0)(x, coarse)
    idx = [fine.index(t) for t in coarse]
    assert torch.equal(w_coarse, w_fine[idx])
    # one row at a time, and queried in another order, gives the same values
    w_row = RowNoise(11, 1, row_offset=17).path(1.0)(x[:1], coarse[::-1])
    assert torch.equal(w_row.flip(0)[:, 0], w_coarse[:, 17])
    assert torch.equal(RowNoise(11, 64).path(1.0)(x, 0.5), w_fine[fine.index(0.5)])


def _increment_stats(inc: torch.Tensor, dt: torch.Tensor):
    """Standardised increments: per-interval variance ratios and the largest correlation between intervals."""
    zz = inc / dt.sqrt()[:, None]
    var = zz.var(dim=1)
    c = torch.corrcoef(zz)
    return var, (c - torch.eye(len(c), dtype=c.dtype)).abs().max()


def test_increments_have_variance_dt_and_are_independent_like_torchsde():
    n = 6000
    times = [1.0, 0.9, 0.55, 0.5, 0.2, 0.1001, 0.1, 0.01, 1e-3]
    x = torch.zeros(n, 1, dtype=torch.float64)
    W = RowNoise(5, n).path(1.0)(x, times)[:, :, 0]
    inc = W[:-1] - W[1:]
    dt = torch.tensor(times[:-1], dtype=torch.float64) - torch.tensor(times[1:], dtype=torch.float64)
    var, corr = _increment_stats(inc, dt)
    assert float((var - 1).abs().max()) < Z * math.sqrt(2 / n)
    assert float(corr) < Z / math.sqrt(n)
    torchsde = pytest.importorskip("torchsde")
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(n, 1), dtype=torch.float64, entropy=5)
    ref = torch.stack([bm(times[i + 1], times[i])[:, 0] for i in range(len(times) - 1)])
    var_ref, corr_ref = _increment_stats(ref, dt)
    assert float((var_ref - 1).abs().max()) < Z * math.sqrt(2 / n)  # the same bounds hold for the reference
    assert float(corr_ref) < Z / math.sqrt(n)


def test_bridge_law_between_queried_times():
    """W(m) given W(a), W(b): mean the linear interpolation, variance (m - a)(b - m)/(b - a), for dyadic and
    non-dyadic times alike (spaced above the leaf width rel_tol * t)."""
    n = 6000
    x = torch.zeros(n, 1, dtype=torch.float64)
    for a, m, b in ((0.25, 0.375, 0.5), (0.123, 0.2001, 0.31), (0.01, 0.01003, 0.01009)):
        W = RowNoise(9, n).path(1.0)(x, [a, m, b])[:, :, 0]
        lam = (m - a) / (b - a)
        resid = W[1] - ((1 - lam) * W[0] + lam * W[2])
        v = (m - a) * (b - m) / (b - a)
        assert abs(float(resid.mean())) < Z * math.sqrt(v / n)
        assert abs(float(resid.var()) / v - 1) < Z * math.sqrt(2 / n)
        assert abs(float(torch.corrcoef(torch.stack([resid, W[0]]))[0, 1])) < Z / math.sqrt(n)


def test_path_checks_its_inputs():
    with pytest.raises(ValueError, match="T"):
        BrownianPath(RowNoise(0, 2), 0.0)
    with pytest.raises(ValueError, match="lives on"):
        RowNoise(0, 2).path(1.0)(torch.zeros(2, 1), 1.5)


def test_normals_shape_for_many_streams():
    keys = row_keys(0, torch.arange(4))
    out = normals(keys, [1, 2, 3], 5, torch.float64)
    assert out.shape == (4, 3, 5)
    assert torch.equal(out[:, 1], normals(keys, 2, 5, torch.float64))


def test_generator_argument_is_checked_not_truncated():
    for bad in ("abc", 1.5, 2.0, True, [1]):
        with pytest.raises(TypeError, match="generator"):
            RowNoise(bad, 2)
    with pytest.raises(ValueError, match="64 bits"):
        RowNoise(2**64, 2)
    assert RowNoise(torch.tensor(5), 2).seed == 5 and RowNoise(-3, 2).seed == -3
    g = torch.Generator().manual_seed(0)
    assert RowNoise(g, 2).seed == RowNoise(torch.Generator().manual_seed(0), 2).seed
    import sdekit
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), 1.0)
    with pytest.raises(TypeError, match="generator"):
        sdekit.sample(gm.model(sde), torch.zeros(2, 2), "euler_maruyama", steps=2, generator="abc")


def test_every_field_of_a_word_is_uniform():
    """The inversion reads fixed bit fields: each entry position (even/odd half of a word, float32 and float64) must
    be N(0, 1) on its own, with the tails where they belong."""
    for dtype in (torch.float32, torch.float64):
        z = normals(row_keys(2, torch.arange(20000)), 77, 4, dtype).double()
        n = z.shape[0]
        for col in z.T:
            assert abs(float(col.mean())) < Z / math.sqrt(n)
            assert abs(float(col.var()) - 1) < Z * math.sqrt(2 / n)
            tail = float((col.abs() > 3).double().mean())
            p = 0.0026998
            assert abs(tail - p) < Z * math.sqrt(p / n)


# -- vectorised increments: a whole grid's (or a block's) in one call, identical to one step at a time ----------
def _pairs_of(times, mids=()):
    """Consecutive steps of a decreasing grid, with a (t, m) stage pair first where a midpoint m is given."""
    pairs = []
    for i in range(len(times) - 1):
        if i < len(mids):
            pairs.append((times[i], mids[i]))
        pairs.append((times[i], times[i + 1]))
    return pairs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7, 3), (5, 2, 3), (300, 64)])
def test_planned_increments_equal_per_step_bit_for_bit(dtype, shape, monkeypatch):
    """The increments of a plan (one vectorised call per block, summed level by level over all times for small rows
    and time by time for large ones, any block size) equal those of one ``standard`` call per step, exactly."""
    x = torch.zeros(shape, dtype=dtype)
    times = [1.0] + _times(12, 3) + [0.5, 2.0**-7, 1e-3, 0.0]
    times = sorted(set(times), reverse=True)
    mids = [0.5 * (a + b) for a, b in zip(times[:6], times[1:7])]
    pairs = _pairs_of(times, mids) + [(times[2], times[2])]  # a zero-length step gives zeros
    one_by_one = RowNoise(4, shape[0]).path(1.0)
    ref = torch.stack([one_by_one.standard(x, t, s) for t, s in pairs])
    assert ref.dtype == dtype and torch.equal(ref[-1], torch.zeros_like(x))
    for small, plan_bytes in ((BrownianPath.SMALL, BrownianPath.PLAN_BYTES), (0, BrownianPath.PLAN_BYTES), (1 << 30, 1)):
        monkeypatch.setattr(BrownianPath, "SMALL", small)
        monkeypatch.setattr(BrownianPath, "PLAN_BYTES", plan_bytes)
        path = RowNoise(4, shape[0]).path(1.0)
        assert torch.equal(path.increments(x, pairs), ref)
        plan = RowNoise(4, shape[0]).path(1.0).plan(x, pairs)
        assert torch.equal(torch.stack([plan.get(x, t, s) for t, s in pairs]), ref)
        assert plan.get(x, 0.7, 0.6) is None and plan.get(x[:, :1], *pairs[0]) is None  # not planned: ask the path


def test_planned_increments_see_the_finer_grids_path_and_rows_alone():
    """A coarse grid's planned increments are those of the path sampled on a finer grid (same W at shared times),
    and a shard of rows planned alone gets the full batch's values."""
    x = torch.zeros(40, 3)
    coarse = [1.0] + _times(6, 7) + [1e-3]
    fine = sorted(set(coarse) | set(_times(200, 8)), reverse=True)
    W = RowNoise(2, 40).path(1.0)(x, fine)
    pairs = _pairs_of(coarse)
    planned = RowNoise(2, 40).path(1.0).plan(x, pairs)
    for t, s in pairs:
        scale = torch.tensor(1.0 / math.sqrt(t - s), dtype=torch.float64).float()
        expect = (W[fine.index(t)] - W[fine.index(s)]) * scale
        assert torch.equal(planned.get(x, t, s), expect)
    shard = RowNoise(2, 9, row_offset=13).path(1.0).increments(x[13:22], pairs)
    assert torch.equal(shard, RowNoise(2, 40).path(1.0).increments(x, pairs)[:, 13:22])


def test_every_path_noise_sampler_plans_its_noise_and_gives_the_per_step_values(monkeypatch):
    """Walk the registry: each stochastic sampler gives the same sample whether its path increments are planned
    (drawn a block at a time) or drawn one step at a time; one that plans asks the path for nothing it did not
    plan (no per-step fallback)."""
    import sdekit
    from sdekit.solvers import available, base
    from sdekit.solvers.registry import get

    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.2)
    model = gm.model(sde)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    calls = {"standard": 0}
    standard = BrownianPath.standard

    def counting(self, *a):
        calls["standard"] += 1
        return standard(self, *a)

    monkeypatch.setattr(BrownianPath, "standard", counting)
    planners = []
    for name in available():
        if not get(name).stochastic or name == "torchsde":
            continue
        calls["standard"] = 0
        planned = sdekit.sample(model, x, name, 5, generator=3).x
        fallback = calls["standard"]
        with monkeypatch.context() as m:
            m.setattr(base.Evaluator, "plan_path_noise", lambda self, x, pairs: None)
            calls["standard"] = 0
            per_step = sdekit.sample(model, x, name, 5, generator=3).x
        assert torch.equal(planned, per_step), name
        if calls["standard"]:  # the sampler follows the path: the plan must have served every step
            planners.append(name)
            assert fallback == 0, (name, fallback)
    assert {"euler_ancestral", "dpmpp_sde", "dpmpp_3m_sde", "sa_solver", "er_sde_3", "seeds_3",
            "euler_maruyama"} <= set(planners)
