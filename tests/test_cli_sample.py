"""`sdekit sample` and `sdekit info` end to end on tiny settings."""
import pytest
import torch
from safetensors.torch import load_file

from sdekit.cli import main


def test_info_lists_solvers(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m" in out and "VPSDE" in out


def test_sample_builtin_mixture(tmp_path):
    png, st = tmp_path / "s.png", tmp_path / "s.safetensors"
    assert main(["sample", "--n", "50", "--steps", "8", "--out", str(png), "--save", str(st)]) == 0
    assert png.stat().st_size > 1000
    x = load_file(str(st))["samples"]
    assert x.shape == (50, 2) and torch.isfinite(x).all()


def test_sample_noise_kinds(tmp_path):
    """--noise step: per-row fresh step noise (rows do not depend on --n), not the Brownian path's increments."""
    out = {}
    for noise, n in (("path", 12), ("step", 12), ("step", 5)):
        st = tmp_path / f"{noise}{n}.safetensors"
        assert main(["sample", "--solver", "euler_ancestral", "--n", str(n), "--steps", "6", "--noise", noise,
                     "--out", str(tmp_path / "s.png"), "--save", str(st)]) == 0
        out[noise, n] = load_file(str(st))["samples"]
    assert torch.equal(out["step", 12][:5], out["step", 5])
    assert not torch.allclose(out["step", 12], out["path", 12])
    with pytest.raises(SystemExit) as bad:  # argparse's choices: usage error, exit 2
        main(["sample", "--noise", "fresh", "--out", str(tmp_path / "bad.png")])
    assert bad.value.code == 2


def test_sample_from_a_trained_checkpoint_with_guidance(tmp_path, capsys):
    ck = tmp_path / "ck"
    assert main(["train", "--data", "moons", "--steps", "5", "--batch-size", "16", "--out", str(ck),
                 "--conditional", "--no-progress"]) == 0
    png = tmp_path / "g.png"
    assert main(["sample", "--checkpoint", str(ck), "--n", "16", "--steps", "4", "--solver", "heun",
                 "--label", "1", "--guidance", "2.0", "--out", str(png)]) == 0
    assert png.exists()
    for extra, says in [(["--label", "7"], r"--label must be an integer in [0, 1]; got 7"),
                        (["--solver", "nope"], "unknown solver 'nope'; available: ")]:
        capsys.readouterr()
        assert main(["sample", "--checkpoint", str(ck), *extra, "--out", str(tmp_path / "bad.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sdekit sample: error: ") and says in err and "Traceback" not in err
        assert not (tmp_path / "bad.png").exists()
