"""The accuracy-vs-NFE harness (sdekit.compare) and the `sdekit compare` command, on tiny settings."""
import csv
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdekit
from sdekit.cli import main
from sdekit.compare import fitted as fitted_module
from sdekit.compare import harness as harness_module
from sdekit.compare import (TUNE_SEED_OFFSET, CompareResults, CompareRow, compare, default_solvers, endpoint_error,
                            error_summary, flipped_fraction, per_row_error, sliced_w2)
from sdekit.solvers.grids import make_grid

TINY = dict(n=32, dim=2, seed=0, progress=False, ref_steps=400)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)  # a module fixture runs before the autouse one_thread fixture
    return compare(solvers=["euler", "heun", "rk4"], nfe=(8, 16, 32), grids=("logsnr", "uniform"), **TINY)


def _x_T(n=32, seed=0):
    """The x_T that compare draws for the built-in mixture with this n and seed."""
    sde, gm = sdekit.VPSDE(), sdekit.GaussianMixture.default(dim=2)
    return gm.sample_t(n, sde.T, sde, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- rows and statistics ----------------------------------------------------------------------------------
def test_rows_for_every_solver_and_grid(tiny):
    expected = {(s, g) for s in ("euler", "heun", "rk4") for g in ("logsnr", "uniform")}
    assert {(r.solver, r.grid) for r in tiny} == expected
    for r in tiny:
        assert r.metric == "endpoint_rmse"
        assert math.isfinite(r.error) and r.error > 0 and r.time_s >= 0
        assert r.nfe >= 1 and r.nfe <= 32
        assert 0 <= r.flipped <= 1 and r.tune_nfe is None


def test_statistics_are_ordered(tiny):
    for r in tiny:
        assert 0 <= r.median <= r.p90 <= r.max
        assert r.rms == r.error <= r.max


def test_statistics_are_those_of_the_per_row_errors():
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=3)
    model = gm.model(sde)
    x_T = torch.randn(24, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sdekit.solvers.sample(model, x_T, "rk4", 300).x
    res = compare(model, x_T, solvers="euler", steps=(6,), grids=("logsnr",), reference=ref, progress=False)
    x = sdekit.solvers.sample(model, x_T, "euler", 6, grid="logsnr").x
    e = ((x - ref) ** 2).sum(1).sqrt() / math.sqrt(3)  # |x_i - x_ref,i| / sqrt(dim), by hand
    s = sorted(e.tolist())
    r = res[0]
    assert r.median == pytest.approx((s[11] + s[12]) / 2, rel=1e-12)  # 24 rows: the mean of the middle two
    assert r.p90 == pytest.approx(s[20] + 0.7 * (s[21] - s[20]), rel=1e-12)  # position 0.9 * 23 = 20.7
    assert r.max == pytest.approx(s[-1], rel=1e-12)
    assert r.error ** 2 == pytest.approx(sum(v * v for v in s) / 24, rel=1e-12)
    assert r.error == pytest.approx(endpoint_error(x, ref), rel=1e-12)
    assert r.flipped is None  # no ground truth named: no component to compare


@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-100, 1e3)), min_size=1, max_size=60))  # e^2 stays normal
def test_error_summary_properties(values):
    e = torch.tensor(values, dtype=torch.float64)
    s = error_summary(e)
    lo, hi = min(values), max(values)
    assert lo <= s["median"] <= s["p90"] <= s["max"] == hi
    assert lo * (1 - 1e-12) <= s["rms"] <= hi * (1 + 1e-12)
    assert s["rms"] ** 2 * len(values) == pytest.approx(sum(v * v for v in values), rel=1e-9, abs=1e-300)


def test_per_row_error_any_shape():
    x = torch.zeros(3, 1, 2, 2)
    y = torch.ones(3, 1, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    assert per_row_error(x, y).tolist() == [1.0, 2.0, 3.0]


def test_steps_follow_nfe_per_step(tiny):
    rk4 = sorted(r.steps for r in tiny if r.solver == "rk4" and r.grid == "logsnr")
    assert rk4 == [2, 4, 8]  # 4 calls per step: budgets 8, 16, 32
    assert sorted(r.nfe for r in tiny if r.solver == "rk4" and r.grid == "logsnr") == [8, 16, 32]


def test_error_decreases_with_steps_for_convergent_solver(tiny):
    for solver in ("euler", "rk4"):
        rows = sorted((r for r in tiny if r.solver == solver and r.grid == "logsnr"), key=lambda r: r.steps)
        errs = [r.error for r in rows]
        assert all(b < a for a, b in zip(errs, errs[1:])), (solver, errs)


def test_reference_error_below_smallest_error(tiny):
    ref = tiny.meta["reference"]
    assert ref["error_estimate"] < min(r.error for r in tiny) / 10
    assert ref["below_smallest_error"] is True


# -- mixture components ---------------------------------------------------------------------------------
def test_component_is_the_argmax_responsibility():
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=2)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    t = 0.3
    a, s = float(sde.alpha(torch.tensor(t))), float(sde.sigma(torch.tensor(t)))
    normal = torch.distributions.Normal
    logp = torch.stack([math.log(w) + normal(a * mu, (a**2 * sd**2 + s**2).sqrt()).log_prob(x).sum(1)
                        for w, mu, sd in zip(gm.weights.tolist(), gm.means, gm.stds)], dim=1)
    assert torch.equal(gm.component(x, t, sde), logp.argmax(1))


def test_perturbed_reference_flips_a_known_fraction():
    """Move m of n reference endpoints onto another component's centre: exactly m / n rows flip."""
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=2)
    model, n, m = gm.model(sde), 40, 7
    x_T = _x_T(n, seed=3)
    x_ref = sdekit.solvers.sample(model, x_T, "rk4", 400, grid="logsnr").x
    centres = float(sde.alpha(torch.tensor(sde.eps))) * gm.means
    assert torch.equal(gm.component(centres, sde.eps, sde), torch.arange(4))  # each centre in its own component
    moved = x_ref.clone()
    own = gm.component(x_ref, sde.eps, sde)
    for i in range(m):
        moved[i] = centres[(own[i] + 1) % 4]
    assert flipped_fraction(gm, x_ref, moved, sde.eps, sde) == m / n
    kw = dict(solvers="rk4", steps=(100,), grids=("logsnr",), mixture=gm, progress=False)
    assert compare(model, x_T, reference=x_ref, **kw)[0].flipped == 0.0
    assert compare(model, x_T, reference=moved, **kw)[0].flipped == m / n


# -- leaderboard ----------------------------------------------------------------------------------------
_stat = st.one_of(st.floats(1e-6, 10), st.just(float("nan")))


@st.composite
def _rows(draw):
    rows = []
    for i in range(draw(st.integers(0, 25))):
        median, p90, rms = draw(_stat), draw(_stat), draw(_stat)
        grid = draw(st.sampled_from(["logsnr", "quadratic", "tuned"]))
        rows.append(CompareRow(f"s{i}", grid, 1, draw(st.integers(1, 30)), rms, 0.0, median=median, p90=p90,
                               max=rms, tune_nfe=100 if grid == "tuned" else None))
    return rows


@given(_rows(), st.lists(st.integers(1, 35), min_size=1, max_size=5), st.sampled_from(["median", "p90", "rms"]))
def test_leaderboard_picks_the_minimum_within_budget(rows, budgets, statistic):
    board = CompareResults(rows).leaderboard(budgets=budgets, statistic=statistic)
    kinds = ["untuned"] + (["tuned"] if any(r.grid == "tuned" for r in rows) else [])
    assert [(e.budget, e.kind) for e in board] == [(b, k) for b in sorted(set(budgets)) for k in kinds]
    for e in board:
        pool = [r.statistic(statistic) for r in rows if r.nfe <= e.budget and (r.grid == "tuned") == (e.kind == "tuned")
                and math.isfinite(r.statistic(statistic))]
        if not pool:
            assert e.row is None
        else:
            assert e.row.nfe <= e.budget and e.row.tuned == (e.kind == "tuned")
            assert e.row.statistic(statistic) == min(pool)
    assert "NFE <=" in board.table()


def test_leaderboard_on_a_run(tiny):
    board = tiny.leaderboard(budgets=(8, 16), statistic="median")
    assert [e.budget for e in board] == [8, 16] and {e.kind for e in board} == {"untuned"}
    for e in board:
        assert e.row.median == min(r.median for r in tiny if r.nfe <= e.budget)
    text = board.table()
    assert "median*" in text and "flipped" in text and "tuning NFE" not in text
    assert [e.budget for e in tiny.leaderboard()] == [8, 16, 32]  # the run's budgets by default
    with pytest.raises(ValueError, match="accepted: median, p90, rms"):
        tiny.leaderboard(statistic="mean")


def test_table_and_best(tiny):
    text = tiny.table()
    assert "solver" in text and "NFE" in text and "rk4" in text and "median" in text and "p90" in text
    best = tiny.best(16)
    assert best is not None and best.nfe <= 16
    assert best.error == min(r.error for r in tiny if r.nfe <= 16)
    assert tiny.best(16, statistic="median").median == min(r.median for r in tiny if r.nfe <= 16)


# -- files ----------------------------------------------------------------------------------------------
def test_json_and_csv_round_trip(tiny, tmp_path):
    paths = tiny.save(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["results.json", "results.csv", "error_vs_nfe.png"]
    back = CompareResults.from_json(tmp_path / "results.json")
    assert [vars(r) for r in back] == [vars(r) for r in tiny]
    assert back.meta["reference"]["error_estimate"] == tiny.meta["reference"]["error_estimate"]
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["solver"] == tiny[0].solver
    assert [vars(r) for r in CompareResults.from_csv(tmp_path / "results.csv")] == [vars(r) for r in tiny]
    with open(tmp_path / "results.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == len(tiny) and {"median", "p90", "error", "flipped", "tune_nfe"} <= set(lines[0])
    assert float(lines[0]["median"]) == tiny[0].median and lines[0]["tune_nfe"] == ""


def test_csv_keeps_none_and_nan(tmp_path):
    rows = CompareResults([CompareRow("dopri5", "adaptive", None, 40, 1e-5, 0.1, tol=1e-4, median=2e-6),
                           CompareRow("euler", "tuned", 3, 0, float("nan"), 0.0, median=float("nan"), tune_nfe=77)])
    rows.to_csv(tmp_path / "r.csv")
    back = CompareResults.from_csv(tmp_path / "r.csv")
    assert vars(back[0]) == vars(rows[0])
    assert back[1].steps == 3 and back[1].tune_nfe == 77 and math.isnan(back[1].error) and back[1].flipped is None


def test_plot_writes_png(tiny, tmp_path):
    path = tmp_path / "p.png"
    tiny.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- tuned grids ----------------------------------------------------------------------------------------
def test_tuned_rows_use_the_tuned_grid_from_independent_draws(monkeypatch):
    """A stand-in tuner returning the quadratic grid: the tuned rows must then equal the quadratic rows,
    carry the tuning cost, and the tuner must see draws of its own seed, none of them a compared x_T."""
    calls = []

    def fake_tune(model, solver, steps, *, shape, n, generator, **options):
        draws = model.sde.prior_sample((n, *shape), generator=torch.Generator().manual_seed(generator),
                                       dtype=torch.float64)
        calls.append(SimpleNamespace(solver=solver, steps=steps, n=n, generator=generator, draws=draws))
        return SimpleNamespace(ts=make_grid(model.sde, steps, "quadratic"), nfe=1000 + steps)

    monkeypatch.setattr(fitted_module, "tune", fake_tune)
    x_T = _x_T(32, seed=0)
    res = compare(x_T=x_T, solvers="euler,heun", steps=(1, 3, 4), grids=("quadratic", "tuned"), tune_n=16, **TINY)
    tuned = [r for r in res if r.tuned]
    assert sorted((r.solver, r.steps) for r in tuned) == [("euler", 3), ("euler", 4), ("heun", 3), ("heun", 4)]
    for r in tuned:  # one step has no grid to tune
        twin = next(q for q in res if q.grid == "quadratic" and (q.solver, q.steps) == (r.solver, r.steps))
        assert (r.median, r.p90, r.error, r.nfe) == (twin.median, twin.p90, twin.error, twin.nfe)
        assert r.tune_nfe == 1000 + r.steps
    assert {c.n for c in calls} == {16} and {c.generator for c in calls} == {TUNE_SEED_OFFSET}
    assert res.meta["tuning"]["seed"] == TUNE_SEED_OFFSET
    for c in calls:
        assert torch.cdist(c.draws, x_T).min() > 0  # no calibration row is a compared row
    board = res.leaderboard(budgets=(4, 8))
    assert [(e.budget, e.kind) for e in board] == [(4, "untuned"), (4, "tuned"), (8, "untuned"), (8, "tuned")]
    assert all(e.row.tuned for e in board if e.kind == "tuned")
    assert not any(e.row.tuned for e in board if e.kind == "untuned")
    assert "tuning NFE" in board.table() and "1004" in board.table()


def test_tuned_with_the_real_tuner():
    res = compare(solvers="euler", steps=(3,), grids=("tuned",), tune_n=16,
                  tune_options={"max_evals": 4, "ref_steps": 100}, **TINY)
    (row,) = res
    assert row.tuned and row.steps == 3 and row.nfe == 3 and math.isfinite(row.median)
    assert row.tune_nfe is None or row.tune_nfe > 0


# -- searched grids (gits, ays) and kl_optimal ------------------------------------------------------------
SEARCH = {"gits": {"n": 16, "fine": 12, "substeps": 2}, "ays": {"n": 16, "fine": 24}}


def test_every_searched_grid_runs_with_its_one_time_cost():
    """Each searched grid (the loop walks SEARCHED) is built per (solver, steps) from draws of its own seed, with the
    options given; its rows equal a solve on the builder's own grid, carry its network calls and seconds, rank as
    their own leaderboard kind and print their cost; kl_optimal is a free named grid in the defaults."""
    from sdekit.compare import DEFAULT_GRIDS, SEARCHED
    from sdekit.solvers import ays, schedules

    builders = {"gits": lambda m, s, k, **kw: schedules.gits_schedule(m, s, k, **kw),
                "ays": lambda m, s, k, **kw: ays.ays_schedule(m, k, solver=s, **kw)}
    assert set(builders) == set(SEARCHED) and "kl_optimal" in DEFAULT_GRIDS
    x_T = _x_T(32, seed=0)
    res = compare(x_T=x_T, solvers="dpmpp_2m,ddim", steps=(1, 4), grids=("kl_optimal", *SEARCHED),
                  search_options=SEARCH, **TINY)
    model = sdekit.GaussianMixture.default(dim=2).model(sdekit.VPSDE())
    ref = sdekit.solvers.sample(model, x_T, "rk4", TINY["ref_steps"], grid="logsnr").x  # compare's reference
    for grid in SEARCHED:
        rows = [r for r in res if r.grid == grid]
        assert sorted((r.solver, r.steps) for r in rows) == [("ddim", 4), ("dpmpp_2m", 4)]  # one step: not searched
        assert res.meta[grid]["seed"] == TUNE_SEED_OFFSET and res.meta[grid]["n"] == 16
        for r in rows:
            built = builders[grid](model, r.solver, 4, shape=(2,), generator=TUNE_SEED_OFFSET, **SEARCH[grid])
            e = per_row_error(sdekit.solvers.sample(model, x_T, r.solver, ts=built.ts).x, ref)
            assert r.median == pytest.approx(error_summary(e)["median"], rel=1e-9)
            assert r.tune_nfe == built.nfe > 0 and r.learn_s > 0 and r.kind == grid
    assert all(r.tune_nfe is None and r.learn_s is None for r in res if r.grid == "kl_optimal")
    board = res.leaderboard(budgets=(4,))
    assert [e.kind for e in board] == ["untuned", "gits", "ays"]
    assert all(e.row.grid == e.kind for e in board[1:]) and board[0].row.grid == "kl_optimal"
    table = board.table()
    assert "tuning NFE" in table and "learn s" in table and str(board[1].row.tune_nfe) in table
    assert "(search " in res.table()


def test_searched_grid_options_are_checked():
    for bad in ({"tune": {}}, {"gits": 3}):
        with pytest.raises(ValueError, match="search_options"):
            compare(solvers="euler", steps=(4,), grids=("gits",), search_options=bad, **TINY)


# -- other inputs ---------------------------------------------------------------------------------------
def test_reproducible():
    a = compare(solvers=["euler"], steps=(4,), grids=("logsnr",), **TINY)
    b = compare(solvers=["euler"], steps=(4,), grids=("logsnr",), **TINY)
    assert vars(a[0]) | {"time_s": 0} == vars(b[0]) | {"time_s": 0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(solvers=["no_such_solver"]), "available:.*euler"),
    (dict(solvers=[]), "no solver given"),
    (dict(solvers=["euler"], grids=("wobbly",)), "accepted:.*logsnr.*tuned"),
    (dict(solvers=["euler"], grids=()), "no time grid"),
    (dict(solvers=["euler"], nfe=(0, 5)), "positive integers"),
    (dict(solvers=["euler"], nfe=()), "give NFE budgets"),
    (dict(solvers=["euler"], steps=(2, -1)), "positive integers"),
    (dict(solvers=["euler"], steps=(1,), grids=("tuned",)), "nothing to run"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare(**{**TINY, **kwargs})


def test_default_set_is_deterministic_fixed_step():
    names = default_solvers()
    assert {"euler", "heun", "rk4"} <= set(names)
    for name in names:
        info = sdekit.solvers.get(name)
        assert not info.adaptive
        assert not info.stochastic or info.options.get("eta") == 0


def test_user_model_and_reference_given():
    sde = sdekit.VPSDE()
    gm = sdekit.GaussianMixture.default(dim=3)
    model = gm.model(sde)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sdekit.solvers.sample(model, x_T, "rk4", 300).x
    res = compare(model, x_T, solvers="euler,rk4", steps=(10, 20), grids=("logsnr",), reference=ref, progress=False)
    assert len(res) == 4 and res.meta["reference"]["method"] == "given by the caller"
    assert res.meta["dim"] == 3


def test_stochastic_solver_uses_sliced_w2():
    res = compare(solvers=["euler_maruyama"], steps=(20,), grids=("logsnr",), **TINY)
    assert res[0].metric == "sliced_w2" and math.isfinite(res[0].error) and res[0].median is None
    assert res.meta["sliced_w2_floor"] > 0
    assert res.leaderboard(budgets=(20,))[0].row is None  # a distribution distance is not ranked with endpoints


def test_metrics():
    x = torch.zeros(4, 3)
    y = torch.ones(4, 3) * 2
    assert endpoint_error(x, y) == pytest.approx(2.0)
    assert sliced_w2(x, x) == 0.0
    assert sliced_w2(x, x + 1) > 0


# -- the command ----------------------------------------------------------------------------------------
def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--solvers", "euler,heun", "--nfe", "4,8", "--grids", "quadratic", "--n", "16",
               "--ref-steps", "200", "--sde", "subvp", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    for statistic in ("median*", "p90*", "rms*"):
        assert statistic in text
    assert "NFE <=" in text and "flipped" in text and "endpoint_rmse" not in text  # a leaderboard, not the dump
    back = CompareResults.from_json(out / "results.json")
    assert {r.solver for r in back} == {"euler", "heun"}
    assert [vars(r) for r in CompareResults.from_csv(out / "results.csv")] == [vars(r) for r in back]
    assert (out / "error_vs_nfe.png").stat().st_size > 1000
    best = back.leaderboard(budgets=(8,))[0].row  # by the median
    median_board = text.split("median*")[1].split("\n\n")[0]
    line = next(v for v in median_board.splitlines() if v.split()[:2] == ["8", "untuned"])
    assert line.split()[2:4] == [best.solver, best.grid]
    assert main(["compare", "--solvers", "euler", "--steps", "2", "--grids", "logsnr", "--n", "8",
                 "--ref-steps", "100", "--out", str(out), "--no-progress", "--full"]) == 0
    assert "endpoint_rmse" in capsys.readouterr().out  # --full adds every row


def test_cli_free_and_searched_grids(tmp_path, capsys):
    """--grids takes kl_optimal, gits and ays; the leaderboard shows each searched grid's kind and one-time cost."""
    assert main(["compare", "--solvers", "dpmpp_2m", "--steps", "3", "--grids", "kl_optimal,gits,ays", "--n", "16",
                 "--search-n", "8", "--ref-steps", "100", "--out", str(tmp_path), "--no-progress"]) == 0
    board = capsys.readouterr().out.split("median*")[1].split("\n\n")[0]
    kinds = {v.split()[1]: v.split() for v in board.splitlines()[2:]}
    assert set(kinds) == {"untuned", "gits", "ays"} and kinds["untuned"][3] == "kl_optimal"
    back = CompareResults.from_json(tmp_path / "results.json")
    for grid in ("gits", "ays"):
        row = next(r for r in back if r.grid == grid)
        assert row.tune_nfe > 0 and row.learn_s > 0 and back.meta[grid]["n"] == 8
        assert kinds[grid][3] == grid and str(row.tune_nfe) in kinds[grid]


@pytest.mark.parametrize("argv, message", [
    (["--nfe", "0"], "argument --nfe"),
    (["--steps", "3,x"], "argument --steps"),
    (["--dim", "0"], "argument --dim"),
    (["--n", "0"], "argument --n"),
    (["--grids", ""], "argument --grids"),
    (["--grids", "logsnr,wobbly"], "unknown grid 'wobbly'; accepted: "),
    (["--solvers", "bogus"], "unknown solver 'bogus'; available: "),
    (["--nfe", "5", "--steps", "3"], "not both"),
])
def test_cli_bad_input_is_a_usage_error(argv, message, tmp_path, capsys):
    try:  # argparse's own checks exit; the library's ValueErrors are returned as 2 by main
        code = main(["compare", *argv, "--out", str(tmp_path), "--no-progress"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    captured = capsys.readouterr()
    assert "sdekit compare: error: " in captured.err and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "results.json").exists()


def test_cli_bad_input_in_a_shell(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdekit.cli", "compare", "--solvers", "euler,bogus",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "sdekit compare: error: unknown solver 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_exits_nonzero_when_every_solve_fails(tmp_path, capsys, monkeypatch):
    real = sdekit.solvers.sample

    def failing(model, x_T, solver, *args, **kwargs):
        if solver == "euler":
            raise sdekit.solvers.NonFiniteError("NaN at step 1 (stand-in)")
        return real(model, x_T, solver, *args, **kwargs)

    monkeypatch.setattr(harness_module, "sample", failing)  # the harness's solves, not the reference's
    with pytest.warns(UserWarning, match="stand-in"):
        rc = main(["compare", "--solvers", "euler", "--steps", "2", "--grids", "logsnr", "--n", "8",
                   "--ref-steps", "50", "--out", str(tmp_path), "--no-progress"])
    assert rc == 1
    assert "no run gave a finite error" in capsys.readouterr().err


def test_cli_on_a_checkpoint(tmp_path, capsys):
    ck = tmp_path / "moons"
    assert main(["train", "--data", "moons", "--steps", "5", "--batch-size", "16", "--n-points", "200",
                 "--out", str(ck), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", "--checkpoint", str(ck), "--solvers", "euler,dpmpp_2m", "--nfe", "3,6", "--grids",
                 "logsnr,quadratic", "--n", "16", "--ref-tol", "1e-5", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert str(ck) in text and "dopri5" in text and "median*" in text and "flipped" not in text
    res = CompareResults.from_json(out / "results.json")
    assert res.meta["dim"] == 2 and res.meta["n"] == 16 and "dopri5" in res.meta["reference"]["method"]
    assert len(res) == 8 and all(math.isfinite(r.median) and r.flipped is None for r in res)
    assert main(["compare", "--checkpoint", str(ck), "--dim", "3", "--out", str(out), "--no-progress"]) == 2
    assert "come from the checkpoint" in capsys.readouterr().err


def test_compare_on_a_flow_path_skips_the_solvers_that_cannot_start_at_pure_noise():
    """The default solver set on a flow path (alpha(T) = 0): the noise-form solvers refuse the grid before any work
    and are reported in meta["skipped"] with their reason, by name; the others are measured (compare used to abort)."""
    with pytest.warns(UserWarning, match="skipped"):
        res = compare(sde=sdekit.RectifiedFlow(), n=16, nfe=(8,), grids=("logsnr",), ref_steps=100, progress=False)
    skipped = res.meta["skipped"]
    ran = {r.solver for r in res}
    assert {"dpm_solver_1", "ipndm", "heun"} <= {k.split()[0] for k in skipped}
    assert all(k.split()[0] in why for k, why in skipped.items())
    assert {"ddim", "dpmpp_2m", "unipc_3", "euler", "rk4"} <= ran
    assert ran | {k.split()[0] for k in skipped} == set(default_solvers())
    assert all(math.isfinite(r.error) and r.error < 1.0 for r in res)
    with pytest.raises(ValueError, match="every run was refused"):
        compare(sde=sdekit.RectifiedFlow(), solvers="dpm_solver_1", n=8, nfe=(8,), grids=("logsnr",), ref_steps=20,
                progress=False)


def test_settings_groups_and_keywords_are_one_call():
    """compare(problem=, plan=, references=) equals the same settings as keywords; a keyword beside its group
    replaces that field; an unknown keyword or a wrong group type is a TypeError before any solve."""
    from sdekit.compare import Plan, Problem, References

    kw = dict(solvers="euler", steps=(4,), grids=("logsnr",), n=16, seed=3, ref_steps=50)
    a = compare(progress=False, **kw)
    b = compare(problem=Problem(n=16, seed=3), plan=Plan(solvers="euler", steps=(4,), grids="logsnr"),
                references=References(ref_steps=50), progress=False)
    c = compare(problem=Problem(n=16, seed=99), plan=Plan(solvers="euler", steps=(4,), grids="logsnr"),
                references=References(ref_steps=50), seed=3, progress=False)
    assert [(r.solver, r.steps, r.median) for r in a] == [(r.solver, r.steps, r.median) for r in b] \
        == [(r.solver, r.steps, r.median) for r in c]
    with pytest.raises(TypeError, match="unexpected keyword"):
        compare(solver="euler", progress=False)
    with pytest.raises(TypeError, match="Plan"):
        compare(plan={"solvers": "euler"}, progress=False)
    with pytest.raises(ValueError, match="unknown grid"):
        Plan(grids="nope")
