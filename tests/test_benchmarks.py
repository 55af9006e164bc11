"""The likelihood benchmarks run end to end on a tiny problem (peers are optional: without k-diffusion its
rows are skipped) and write their JSON and plot."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script, args, name", [
    ("likelihood.py", ["--dims", "2", "--n", "8", "--repeats", "1", "--exact", "dopri5:1e-4"], "likelihood"),
    ("likelihood_floor.py", ["--dim", "4", "--n", "8", "--points", "201", "--row-solves", "2"], "likelihood_floor"),
])
def test_likelihood_benchmarks_run_and_write_their_reports(tmp_path, script, args, name):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", script), *args, "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    if name == "likelihood":
        quad = [r for r in report["rows"] if "quadrature" in r["method"]]
        assert quad and all(r["divergence_evals_per_row"] >= 33 for r in quad)
        exact = [r for r in report["rows"] if r["method"].startswith("sdekit exact (")]
        assert exact and all(r["mae_nats"] < 1e-2 for r in exact)
    else:
        assert report["fine_grid_mae_vs_analytic"] < 1e-6
        assert report["rules"]["adaptive_boole"][-1]["mae"] < report["rules"]["adaptive_boole"][0]["mae"]


def test_accuracy_vs_nfe_runs_and_checks_its_goal(tmp_path):
    """A tiny end-to-end run of the side-by-side accuracy benchmark. Peers are optional: without
    k-diffusion or diffusers their part is skipped; with them, they run on the same tiny problem."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "accuracy_vs_nfe.py"), "--n", "24", "--dims", "2",
           "--seeds", "8101", "--nfe", "4,6", "--ref-steps", "200", "--tune", "top", "--tune-max-pairs", "1",
           "--tune-evals", "2", "--n-tune", "16", "--fresh", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "accuracy_vs_nfe.json").read_text())
    assert (tmp_path / "accuracy_vs_nfe.png").stat().st_size > 0
    assert {(u["problem"], u["dim"]) for u in report["units"]} == {("vp", 2), ("ddpm", 2)}
    for u in report["units"]:
        assert u["reference"]["error_estimate"]["median"] < 1e-4
        sdekit_rows = [r for r in u["rows"] if r["library"] == "sdekit" and r["grid"] != "tuned"]
        assert sdekit_rows and all(r["nfe"] <= 6 and r["median"] <= r["p90"] for r in sdekit_rows)
        for b in ("4", "6"):
            assert set(u["ratios"][b]) == {"median", "p90", "rms"}
    summary = report["summary"]["vp"]["2"]["6"]["median"]["untuned"]
    assert "goal_met_median_over_seeds" in summary  # NFE <= 6 is a goal budget: checked, never assumed
    assert "ratios sdekit_best / peer_best" in done.stdout


def test_strong_order_benchmark_measures_order_one_on_a_gaussian(tmp_path):
    """A small run of benchmarks/strong_order.py: on the one-Gaussian problem (linear score, no mode to switch)
    Euler-Maruyama and the DPM-Solver++(2M) SDE converge pathwise at order about 1, torchsde's Euler-Maruyama
    beside them; the fine solves of all samplers are one strong solution."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "strong_order.py"), "--seeds", "9501", "--rows", "16",
           "--ref-steps", "512", "--problems", "gaussian", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "strong_order.json").read_text())
    assert (tmp_path / "strong_order.png").stat().st_size > 0
    summary = report["summary"]
    for key in ("Gaussian 2-D sdekit euler_maruyama", "Gaussian 2-D sdekit dpmpp_2m_sde", "Gaussian 2-D torchsde euler"):
        assert 0.75 < summary[key]["median"] < 1.35, (key, summary[key])
    gauss = [u for u in report["units"] if u["problem"] == "Gaussian 2-D"][0]
    assert gauss["fine"]["max_distance_between_fine_solves"] < 0.01
