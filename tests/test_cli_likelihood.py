"""`sdekit likelihood --checkpoint` on tiny checkpoints trained in tmp_path."""
import json
import math
import re

import pytest

import sdekit
from sdekit.cli import main
from sdekit.data import load_digits


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    ck = tmp_path_factory.mktemp("digits") / "ck"
    assert main(["train", "--data", "digits", "--steps", "5", "--batch-size", "8", "--channels", "8",
                 "--out", str(ck), "--no-progress", "--threads", "1"]) == 0
    return ck


def _number(pattern, text):
    m = re.search(pattern, text)
    assert m, text
    return float(m.group(1))


def test_digits_bits_per_dim_dequantized(digits_ckpt, capsys):
    args = ["likelihood", "--checkpoint", str(digits_ckpt), "--split", "test", "--n", "3", "--dtype", "float32",
            "--rtol", "1e-1", "--atol", "1e-1", "--dequantize", "--repeats", "2", "--batch", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    bpd = _number(r"bits/dim (\S+) \+- ", out)
    se = _number(r"bits/dim \S+ \+- (\S+)", out)
    # an untrained net: a finite, positive code length, well above 0 and not absurd (uniform on the
    # 17-level cube is log2(17) ~ 4.09; a near-prior model sits a few bits from that)
    assert 0.5 < bpd < 20 and se >= 0
    assert "3 of 299 rows" in out and "2 draw(s)" in out
    assert _number(r"NFE (\d+)", out) > 0 and "(1 solve(s) of up to 3 rows x 2 draw(s))" in out and "time" in out


def test_digits_train_split_and_errors(digits_ckpt, capsys):
    assert main(["likelihood", "--checkpoint", str(digits_ckpt), "--split", "train", "--n", "3", "--dtype", "float32",
                 "--rtol", "1e-2", "--atol", "1e-2", "--divergence", "hutchinson", "--probes", "2"]) == 0
    out = capsys.readouterr().out
    assert "digits train: 3 of 1498 rows" in out and "not a bound" in out
    # the printed mean is the digits convention applied to sdekit.log_likelihood on rows 0, 499, 998
    model, _ = sdekit.load_model(digits_ckpt)
    x = load_digits("train").x[[0, 499, 998]]
    res = sdekit.log_likelihood(model, x, divergence="hutchinson", probes=2, seed=0, rtol=1e-2, atol=1e-2)
    assert "[data " in out and " estimator " in out  # 2 probes: the estimator's error is measured
    bpd = -(res.log_prob.double() + 64 * math.log(1 / 8)) / (64 * math.log(2))
    assert _number(r"bits/dim (\S+) \+- ", out) == pytest.approx(bpd.mean().item(), abs=2e-4)
    assert main(["likelihood", "--checkpoint", str(digits_ckpt), "--repeats", "2"]) == 2
    assert "--repeats > 1 needs --dequantize" in capsys.readouterr().err
    assert main(["likelihood", "--checkpoint", str(digits_ckpt), "--n", "2", "--max-nfe", "10"]) == 2
    assert "budget of 10 network evaluations" in capsys.readouterr().err  # a SolverError: exit 2, no traceback


def test_toy_checkpoint_prints_nats(tmp_path, capsys):
    ck = tmp_path / "moons"
    assert main(["train", "--data", "moons", "--steps", "5", "--batch-size", "16", "--n-points", "200",
                 "--out", str(ck), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["likelihood", "--checkpoint", str(ck), "--n", "3", "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "nats per point" in out and "moons test: 3 of 200 rows" in out
    assert main(["likelihood", "--checkpoint", str(ck), "--n", "3", "--dequantize"]) == 2
    assert "applies to digits" in capsys.readouterr().err


def test_whole_split_by_default_with_json_and_split_error_bars(digits_ckpt, capsys, tmp_path):
    """issue 16 item 3: the whole test split by default (every row, in one batched solve); bits/dim with its
    standard error split into the data's and the estimator's; --json writes the per-image values. (The
    solve itself runs here on 30 rows, the whole split being slow for a test on a shared CPU.)"""
    import torch

    from sdekit.cli.likelihood import checkpoint_data

    x, desc, digits = checkpoint_data({"data": {"name": "digits"}}, "test", None, torch.float32)
    assert x.shape[0] == 299 and desc.startswith("digits test: 299 of 299 rows") and digits
    path = tmp_path / "bpd.json"
    assert main(["likelihood", "--checkpoint", str(digits_ckpt), "--split", "test", "--n", "30", "--dequantize",
                 "--rtol", "1e-1", "--atol", "1e-1", "--no-progress", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "30 of 299 rows" in out and "(1 solve(s) of up to 30 rows x 2 draw(s))" in out
    assert "divergence=hutchinson (probes=1) [Hutchinson: 1 vector-Jacobian product(s)" in out  # D = 64 > 2 K
    js = json.loads(path.read_text())
    assert js["n"] == 30 and len(js["per_image"]) == 30 and js["seconds"] > 0
    assert js["bpd"] == pytest.approx(sum(js["per_image"]) / 30, rel=1e-12)
    se = math.sqrt(sum((v - js["bpd"]) ** 2 for v in js["per_image"]) / 29 / 30)
    assert js["bpd_se"] == pytest.approx(se, rel=1e-9)
    assert js["se_estimator"] > 0 and js["bpd_se"] ** 2 == pytest.approx(js["se_data"] ** 2 + js["se_estimator"] ** 2)
    assert _number(r"bits/dim (\S+) \+- ", out) == pytest.approx(js["bpd"], abs=1e-4)
    assert _number(r"estimator (\S+) bits/dim", out) == pytest.approx(js["se_estimator"], abs=1e-4)
