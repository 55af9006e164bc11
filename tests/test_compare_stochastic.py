"""``compare`` for stochastic samplers, on exact ground truth: the sliced W2 over its floor with a calibrated standard
error, the mode-weight error, the pathwise (strong) error against the same solver's fine solve of the same Brownian
path, and how the results are tabled, ranked, saved and printed."""
import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.cli import main
from sdekit.compare import SLICED, CompareResults, LawReference, compare, exact_law, pathwise_applies
from sdekit.solvers import sample

SDE = sdekit.VPSDE()


def _gauss():
    """One Gaussian: the exact score is linear, no row can switch modes, so the strong error is pure discretisation
    error (as in test_sde_samplers)."""
    return sdekit.GaussianMixture(torch.tensor([1.0]), torch.tensor([[1.0, -1.0]], dtype=torch.float64), 0.5)


def _rows(res, solver):
    return sorted((r for r in res if r.solver == solver), key=lambda r: r.nfe)


@pytest.fixture(scope="module")
def small():
    torch.set_num_threads(1)  # a module fixture runs before the autouse one_thread fixture
    with pytest.warns(UserWarning, match="same-path reference of euler_maruyama .* raise ref_steps"):
        return compare(solvers="euler_maruyama,pc", steps=(4, 16), grids=("logsnr",), n=256, ref_steps=64,
                       progress=False)


# -- the law: excess over the floor, its standard error, mode weights -------------------------------------------
@pytest.mark.parametrize("source", ["exact", "euler_maruyama"])
def test_excess_se_is_calibrated_over_seeds(source):
    """Over 20 seeds (fresh exact sets, fresh samples) the spread of the excess is of the order of the reported SE:
    exact samples fed in as the solver's output (the SE is conservative there by up to 1.22, module docstring)
    and 5-step Euler-Maruyama samples, whose law is far from p_0. Exact samples' excess is ~0 within its SE."""
    gm, n = sdekit.GaussianMixture.default(dim=2), 1000
    excess, se = [], []
    for s in range(20):
        law = exact_law(gm, SDE.eps, SDE, n, 1000 + 7 * s)
        if source == "exact":
            x = gm.sample_t(n, SDE.eps, SDE, generator=torch.Generator().manual_seed(50_000 + s), dtype=torch.float64)
        else:
            x_T = gm.sample_t(n, SDE.T, SDE, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            x = sample(gm.model(SDE), x_T, "euler_maruyama", steps=5, generator=s).x
        m = law.metrics(x)
        excess.append(m["excess"])
        se.append(m["excess_se"])
    ratio = statistics.stdev(excess) / statistics.mean(se)
    assert 0.5 < ratio < 1.6, (ratio, excess, se)
    if source == "exact":
        assert all(abs(e) < 3.5 * s for e, s in zip(excess, se)), (excess, se)
        assert abs(statistics.mean(excess)) < 3 * statistics.mean(se) / math.sqrt(len(se))
    else:
        assert min(e / s for e, s in zip(excess, se)) > 3  # far from p_0, and resolved


def test_excess_and_mode_error_shrink_with_steps():
    res = compare(solvers="euler_maruyama,dpmpp_2m_sde", steps=(3, 40), grids=("logsnr",), n=2000, pathwise=False,
                  progress=False)
    floor = res.meta["law"]["mode_err_floor"]
    for solver in ("euler_maruyama", "dpmpp_2m_sde"):
        coarse, fine = _rows(res, solver)
        assert coarse.metric == fine.metric == SLICED and coarse.median is None
        assert coarse.excess - fine.excess > 3 * math.hypot(coarse.excess_se, fine.excess_se), (coarse, fine)
        assert abs(fine.excess) < 3 * fine.excess_se, fine
        assert fine.error == pytest.approx(fine.excess + res.meta["sliced_w2_floor"], abs=1e-12)
        assert coarse.mode_err > 3 * floor and fine.mode_err < 3 * floor + 0.01, (coarse.mode_err, fine.mode_err)
        assert fine.path_median is None  # pathwise=False
    assert res.meta["pathwise"] == "not measured (pathwise=False)"
    law = res.meta["law"]
    assert law["floor_pairs"] == 3 and len(law["floor_values"]) == 3 and law["reference_sets"] == 8
    assert law["floor"] == statistics.median(law["floor_values"]) == res.meta["sliced_w2_floor"]
    assert sum(law["mode_target"]) == pytest.approx(1.0)
    assert max(abs(a - b) for a, b in zip(law["mode_target"], law["weights"])) < 0.01  # the default's modes are apart


def _sets(seed, count, n, dim):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=torch.float64) * (1 + 0.1 * k) for k in range(count)]


@given(seed=st.integers(0, 2**31), n=st.integers(3, 40), dim=st.integers(1, 4), scale=st.floats(0.1, 10.0),
       shift=st.floats(-5.0, 5.0))
def test_law_metrics_ignore_row_order_and_follow_scale_and_shift(seed, n, dim, scale, shift):
    """sw2, floor, excess and SE are functions of the sets as multisets (any row order) and are equivariant
    under x -> scale x + shift applied to every set (sliced W2 is a distance between laws)."""
    refs, floors, x = _sets(seed, 4, n, dim), _sets(seed + 1, 4, n, dim), _sets(seed + 2, 1, n, dim)[0] + 0.3
    law = LawReference.from_sets(refs, floors)
    g = torch.Generator().manual_seed(seed + 3)

    def perm(t):
        return t[torch.randperm(t.shape[0], generator=g)]

    shuffled = LawReference.from_sets([perm(r) for r in refs], [perm(f) for f in floors])
    assert shuffled.floor == pytest.approx(law.floor, rel=1e-12, abs=1e-15)
    assert shuffled.floor_se == pytest.approx(law.floor_se, rel=1e-9, abs=1e-15)
    a, b = law.metrics(x), shuffled.metrics(perm(x))
    for key in ("sw2", "excess", "excess_se"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    moved = LawReference.from_sets([scale * r + shift for r in refs], [scale * f + shift for f in floors])
    c = moved.metrics(scale * x + shift)
    for key in ("sw2", "excess", "excess_se"):
        assert c[key] == pytest.approx(scale * a[key], rel=1e-6, abs=1e-9 * scale * (1 + abs(shift))), key
    assert a["excess_se"] >= law.floor_se > 0 and a["mode_err"] is None


def test_law_reference_checks_its_sets():
    sets = _sets(0, 4, 5, 2)
    with pytest.raises(ValueError, match="at least 2 reference sets"):
        LawReference.from_sets(sets[:1], sets[:2])
    with pytest.raises(ValueError, match="even number"):
        LawReference.from_sets(sets[:2], sets[:3])
    with pytest.raises(ValueError, match="sets of 5 rows of 2 numbers; got shape"):
        LawReference.from_sets(sets[:2], sets[2:]).metrics(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sets of 5 rows of 2 numbers; got shape"):
        LawReference.from_sets(sets[:2], [sets[2], torch.zeros(5, 3)])
    with pytest.raises(ValueError, match="got 0"):
        LawReference.from_sets([], sets)


# -- the pathwise error -------------------------------------------------------------------------------------
def test_pathwise_error_of_euler_maruyama_is_first_order():
    """Additive noise: strong order 1 against the same solver's 1024-step solve of the same paths (as
    test_sde_samplers asserts for its own reference), at 32..128 steps; the reference's own error estimate lies
    far below; and a solve with as many steps as the reference is the reference itself (same path, error 0)."""
    with pytest.warns(UserWarning, match="not ten times below"):  # order 1: the 512-step check is only 8x finer
        res = compare(mixture=_gauss(), solvers="euler_maruyama", steps=(32, 64, 128, 1024), grids=("logsnr",), n=64,
                      ref_steps=1024, progress=False)
    rows = _rows(res, "euler_maruyama")
    errs = [r.path_rms for r in rows[:3]]
    slope = math.log(errs[0] / errs[-1]) / math.log(4)
    assert 0.85 < slope < 1.25, (errs, slope)
    meds = [r.path_median for r in rows[:3]]
    assert all(1.5 < a / b < 2.7 for a, b in zip(meds, meds[1:])), meds  # the median halves per doubling too
    assert rows[-1].path_max == 0.0
    info = res.meta["pathwise"]["euler_maruyama"]
    assert info["applies"] and "Brownian paths" in info["noise"] and info["below_smallest_error"]
    assert info["error_estimate"]["rms"] < errs[-1] / 4
    assert "reference" in res.meta and res.meta["reference"]["method"].startswith("none")  # no ODE reference needed


@pytest.mark.parametrize("solver, applies", [
    ("euler_maruyama", True), ("dpmpp_2m_sde", True), ("euler_ancestral", True), ("sa_solver", True),
    ("restart", True), ("pc", False), ("heun_churn", False), ("ddpm", False),
])
def test_which_solvers_have_a_same_path_reference(solver, applies):
    """Path noise qualifies; so do Restart's jumps (the same draws at every step count); pc's corrector, heun_churn's
    churn and ddpm draw fresh noise per step, so a finer solve is not a finer solve of the same noise."""
    gm = sdekit.GaussianMixture.default(dim=2)
    x = gm.sample_t(2, SDE.T, SDE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ok, why = pathwise_applies(gm.model(SDE), solver, x)
    assert ok == applies, why
    assert ("fresh per-call draws" in why) == (not applies)


def test_fresh_noise_rows_have_no_pathwise_error(small):
    pc = _rows(small, "pc")
    assert all(r.path_median is None and r.path_rms is None and math.isfinite(r.excess) for r in pc)
    assert "fresh per-call draws" in small.meta["pathwise"]["pc"]["reason"]
    em = _rows(small, "euler_maruyama")
    assert all(r.path_median is not None for r in em) and em[0].path_median > em[1].path_median


def test_restart_converges_to_its_own_fine_solve():
    res = compare(solvers="restart", steps=(5, 10, 20), grids=("logsnr",), n=64, ref_steps=256, progress=False)
    meds = [r.path_median for r in _rows(res, "restart")]
    assert meds[0] > meds[1] > meds[2] > 0, meds
    assert "the same at every step count" in res.meta["pathwise"]["restart"]["noise"]


# -- tables, leaderboards, files, the command ------------------------------------------------------------------
def test_stochastic_leaderboard_ranks_by_excess(small):
    board = small.leaderboard(budgets=(4, 40), statistic="excess")
    assert [e.kind for e in board] == ["sde", "sde"]
    for entry in board:
        pool = [r for r in small if r.metric == SLICED and r.nfe <= entry.budget]
        assert entry.row is min(pool, key=lambda r: (r.excess, r.nfe))
    text = board.table()
    assert "excess*" in text and "path_med" in text and "+-SE" in text and "sw2 floor" in text
    assert small.leaderboard(budgets=(40,))[0].row is None  # endpoint boards hold no stochastic rows
    assert small.leaderboard(budgets=(40,), statistic="path_median")[0].row.solver == "euler_maruyama"


def test_table_files_and_plot_keep_the_new_fields(small, tmp_path):
    text = small.table()
    assert "excess" in text and "mode_err" in text and "path_*: none for pc" in text and "endpoint_rmse" not in text
    paths = small.save(tmp_path)
    for back in (CompareResults.from_json(paths[0]), CompareResults.from_csv(paths[1])):
        assert [vars(r) for r in back] == [vars(r) for r in small]
    assert CompareResults.from_json(paths[0]).meta["law"]["floor"] == small.meta["sliced_w2_floor"]
    assert (tmp_path / "error_vs_nfe.png").stat().st_size > 1000


def test_cli_shows_the_stochastic_columns(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--solvers", "dpmpp_2m_sde,euler_ancestral", "--steps", "4,8", "--grids", "logsnr", "--n", "64",
            "--ref-steps", "64", "--out", str(out), "--no-progress"]
    with pytest.warns(UserWarning, match="raise ref_steps"):
        assert main(argv) == 0
    text = capsys.readouterr().out
    for column in ("excess*", "+-SE", "mode_err", "path_med", "path_p90", "sw2 floor", "path_*: euler_ancestral"):
        assert column in text, column
    assert "median*" not in text  # no endpoint leaderboard without a deterministic solver
    back = CompareResults.from_json(out / "results.json")
    assert {r.solver for r in back} == {"dpmpp_2m_sde", "euler_ancestral"} and all(r.path_median for r in back)
    assert main(argv + ["--no-pathwise"]) == 0
    assert "path_*: not measured (pathwise=False)" in capsys.readouterr().out
    assert all(r.path_median is None for r in CompareResults.from_json(out / "results.json"))
