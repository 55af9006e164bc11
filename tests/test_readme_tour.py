"""The README's tour runs as written: its Python block is executed against the installed package."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    text = README.read_text()
    start = text.index("## A tour in Python")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, "the README's tour has no python block"
    return block.group(1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_readme_tour_runs(tmp_path, monkeypatch):
    """Every call of the tour as written; tuning is capped (fewer rows and solves: the same code path) to keep
    the suite fast."""
    import sdekit

    real_tune = sdekit.tune
    monkeypatch.setattr(sdekit, "tune", lambda *a, **k: real_tune(*a, **{**k, "n": 32, "max_evals": 6}))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"print": lambda *a, **k: None}
    exec(compile(_tour(), str(README), "exec"), namespace)
    sol, res = namespace["sol"], namespace["res"]
    assert sol.nfe > 0 and bool(sol.x.isfinite().all())
    # the tour's likelihood estimate against the analytic value it prints beside it
    gm, sde, x = namespace["gm"], namespace["sde"], namespace["x"]
    assert float((res.log_prob - gm.log_prob(x, sde.eps, sde)).abs().median()) < 5e-3
    assert namespace["tuned"].ts.shape == (7,)
