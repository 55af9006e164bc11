"""The accuracy-vs-NFE harness (sdekit.compare) and the `sdekit compare` command, on tiny settings."""
import json
import math

import pytest
import torch

import sdekit
from sdekit.cli import main
from sdekit.compare import CompareResults, compare, default_solvers, endpoint_error, sliced_w2

TINY = dict(n=32, dim=2, seed=0, progress=False, ref_steps=400)


@pytest.fixture(scope="module")
def tiny():
    return compare(solvers=["euler", "heun", "rk4"], nfe=(8, 16, 32), grids=("logsnr", "uniform"), **TINY)


def test_rows_for_every_solver_and_grid(tiny):
    assert {(r.solver, r.grid) for r in tiny} == {(s, g) for s in ("euler", "heun", "rk4") for g in ("logsnr", "uniform")}
    for r in tiny:
        assert r.metric == "endpoint_rmse"
        assert math.isfinite(r.error) and r.error > 0 and r.time_s >= 0
        assert r.nfe >= 1 and r.nfe <= 32


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


def test_json_round_trip(tiny, tmp_path):
    path = tmp_path / "r.json"
    tiny.to_json(path)
    back = CompareResults.from_json(path)
    assert [vars(r) for r in back] == [vars(r) for r in tiny]
    assert back.meta["reference"]["error_estimate"] == tiny.meta["reference"]["error_estimate"]
    assert json.loads(path.read_text())["rows"][0]["solver"] == tiny[0].solver


def test_plot_writes_png(tiny, tmp_path):
    path = tmp_path / "p.png"
    tiny.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_and_best(tiny):
    text = tiny.table()
    assert "solver" in text and "NFE" in text and "rk4" in text
    best = tiny.best(16)
    assert best is not None and best.nfe <= 16
    assert best.error == min(r.error for r in tiny if r.nfe <= 16)


def test_reproducible():
    a = compare(solvers=["euler"], steps=(4,), grids=("logsnr",), **TINY)
    b = compare(solvers=["euler"], steps=(4,), grids=("logsnr",), **TINY)
    assert a[0].error == b[0].error


def test_unknown_solver_lists_valid_names():
    with pytest.raises(ValueError, match="available:.*euler"):
        compare(solvers=["no_such_solver"], **TINY)


def test_unknown_grid_lists_valid_names():
    with pytest.raises(ValueError, match="accepted:.*logsnr"):
        compare(solvers=["euler"], grids=("wobbly",), **TINY)


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
    assert res[0].metric == "sliced_w2" and math.isfinite(res[0].error)
    assert res.meta["sliced_w2_floor"] > 0


def test_metrics():
    x = torch.zeros(4, 3)
    y = torch.ones(4, 3) * 2
    assert endpoint_error(x, y) == pytest.approx(2.0)
    assert sliced_w2(x, x) == 0.0
    assert sliced_w2(x, x + 1) > 0


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--solvers", "euler,heun", "--nfe", "4,8", "--grids", "logsnr", "--n", "16",
               "--ref-steps", "200", "--sde", "cosine", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "euler" in text and "heun" in text and "NFE" in text
    back = CompareResults.from_json(out / "results.json")
    assert {r.solver for r in back} == {"euler", "heun"}
    assert (out / "error_vs_nfe.png").stat().st_size > 1000


def test_cli_unknown_solver(tmp_path, capsys):
    rc = main(["compare", "--solvers", "bogus", "--out", str(tmp_path), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "euler" in err and "rk4" in err
