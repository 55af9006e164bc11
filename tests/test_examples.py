"""Each example runs end to end with --quick, exits 0 and writes its PNG (run in-process via runpy)."""
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name, png", [
    ("custom_sde", "custom_sde.png"),
    ("likelihood_mixture", "likelihood_mixture.png"),
    ("cfg_2d", "cfg_2d.png"),
    ("tune_grid", "tune_grid.png"),
])
def test_example_quick(name, png, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--quick", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert (tmp_path / png).stat().st_size > 5000
    assert f"wrote {tmp_path / png}" in capsys.readouterr().out


def test_likelihood_example_matches_the_analytic_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["likelihood_mixture.py", "--quick", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        runpy.run_path(str(EXAMPLES / "likelihood_mixture.py"), run_name="__main__")
    line = next(s for s in capsys.readouterr().out.splitlines() if s.strip().startswith("exact divergence, exact p_T"))
    mean_abs_error = float(line.split()[5])
    assert mean_abs_error < 1e-2  # rtol = atol = 1e-4 in quick mode
