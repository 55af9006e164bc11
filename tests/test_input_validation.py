"""Issue 13 items 7-9: every bad input gives a clear error (or a correct result), in the API and the CLI alike."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import sdekit
from sdekit import VPSDE, GaussianMixture, ScoreModel, sample
from sdekit.checkpoint import checkpoint_id, load_model
from sdekit.cli import main
from sdekit.data import toy_data
from sdekit.distributed import log_likelihood_sharded, map_chunks, sample_sharded
from sdekit.nets import MLP
from sdekit.solvers.grids import MAX_STEPS, make_grid
from sdekit.train import Trainer, train
from sdekit.validate import fraction, integer, real

SDE = VPSDE()
GM = GaussianMixture.default(dim=2)
MODEL = GM.model(SDE)


def x_T(n=6, seed=0):
    return SDE.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed))


# -- the shared checks ------------------------------------------------------------------------------
def test_integer_and_real_refuse_what_they_would_otherwise_truncate_or_propagate():
    assert integer("k", 3.0, 1) == 3 and integer("k", 5, 1, 5) == 5
    for bad in (1.5, True, "3", float("nan"), float("inf"), 0, 6, None):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]; got "):
            integer("k", bad, 1, 5)
    assert real("x", 0.5, 0.0, 1.0, hi_open=True) == 0.5
    for bad in (float("nan"), float("inf"), 1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"x must be a finite number in \[0.0, 1.0\); got "):
            real("x", bad, 0.0, 1.0, hi_open=True)
    assert real("x", float("inf"), 0.0, finite=False) == math.inf
    with pytest.raises(ValueError, match="ema must be a finite number in"):
        fraction("ema", 2)


# -- item 7: unhelpful errors -----------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0, -1.0, float("nan"), float("inf")])
def test_karras_rho_must_be_positive_and_finite(rho):
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        sample(MODEL, x_T(), "dpmpp_2m", 5, grid="karras", grid_options={"rho": rho})


def test_absurd_step_counts_fail_fast_and_explicit_grids_still_work():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"over sdekit.solvers.grids.MAX_STEPS = {MAX_STEPS}"):
        sample(MODEL, x_T(), "ddim", 10**7)
    assert time.perf_counter() - start < 5
    assert len(make_grid(SDE, MAX_STEPS, "uniform")) == MAX_STEPS + 1


@pytest.mark.parametrize("out, error, message", [
    (lambda x: [x], TypeError, "must return a tensor of x's shape .* got list"),
    (lambda x: (x * 2).long(), TypeError, "floating-point tensor; got torch.int64"),
])
def test_a_network_returning_a_non_tensor_or_integers_is_named(out, error, message):
    with pytest.raises(error, match=message):
        sample(ScoreModel(lambda x, t: out(x), SDE), x_T(), "ddim", 3)


# -- item 8: nonsense accepted --------------------------------------------------------------------
def test_two_dimensional_ts_is_refused_not_flattened():
    with pytest.raises(ValueError, match=r"1-D sequence of times; got shape \(2, 2\)"):
        sample(MODEL, x_T(), "ddim", ts=torch.tensor([[1.0, 0.5], [0.2, 0.01]]))


def test_unknown_grid_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"grid 'karras' got unknown option\(s\) \['rhoo'\]; accepted: rho"):
        sample(MODEL, x_T(), "ddim", 3, grid="karras", grid_options={"rhoo": 3})
    with pytest.raises(ValueError, match=r"got unknown option\(s\) \['rho'\]; accepted: none"):
        sample(MODEL, x_T(), "ddim", 3, grid="logsnr", grid_options={"rho": 3})
    with pytest.raises(ValueError, match="apply to a named grid, not to explicit ts="):
        sample(MODEL, x_T(), "ddim", ts=[1.0, 0.5, 0.01], grid_options={"rho": 3})
    ts = sample(MODEL, x_T(), "ddim", 3, grid="karras", grid_options={"rho": 3.0}).ts  # a real option still works
    assert len(ts) == 4


def test_a_float64_network_keeps_a_float32_state_and_its_answer():
    """A network computing in float64 for a float32 state: the state stays float32 and equals the
    float64 solve rounded (the exact mixture score is the network here)."""
    exact = GM.model(SDE)
    wide = ScoreModel(lambda x, t: exact.net(x.double(), t.double()), SDE, exact.prediction)
    x = x_T(64)
    sol = sample(wide, x, "dpmpp_2m", 8)
    ref = sample(exact, x.double(), "dpmpp_2m", 8)
    assert sol.x.dtype == torch.float32
    torch.testing.assert_close(sol.x.double(), ref.x, atol=1e-4, rtol=1e-4)


def test_a_network_that_mutates_its_input_is_refused_and_x_T_is_kept():
    def mutating(x, t):
        x.mul_(0.5)
        return x.clone()

    x = x_T()
    before = x.clone()
    with pytest.raises(ValueError, match="modified its input x in place"):
        sample(ScoreModel(mutating, SDE), x, "ddim", 3)
    assert torch.equal(x, before)


@pytest.mark.parametrize("chunk_size", [0, -3, 1.5, True])
def test_chunk_size_must_be_a_positive_integer(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        sample_sharded(MODEL, x_T(), "ddim", chunk_size=chunk_size, steps=3)


@pytest.mark.parametrize("bad, message", [
    (dict(ema_decay=2.0), r"ema_decay must be a finite number in \[0.0, 1.0\]"),
    (dict(grad_clip=-1.0), "grad_clip must be a finite number >= 0.0"),
    (dict(lr=0.0), "lr must be a finite number > 0.0"),
    (dict(batch_size=0), "batch_size must be an integer in"),
    (dict(warmup=-1), "warmup must be an integer >= 0"),
    (dict(p_uncond=1.5), "p_uncond must be"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\] must be"),
    (dict(seed=2**70), "seed must be an integer in"),
])
def test_trainer_refuses_out_of_range_hyperparameters(bad, message):
    with pytest.raises(ValueError, match=message):
        Trainer(MLP(dim=2, width=8, depth=1), SDE, toy_data("moons", 32), "eps", **bad)


@pytest.mark.parametrize("kw, message", [(dict(steps=-3), "steps must be an integer >= 0"),
                                         (dict(steps=2.5), "steps must be an integer >= 0"),
                                         (dict(steps=2, ckpt_every=0), "ckpt_every must be an integer >= 1"),
                                         (dict(steps=2, ckpt_every=-1), "ckpt_every must be an integer >= 1")])
def test_train_refuses_bad_step_counts_before_writing(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        train(MLP(dim=2, width=8, depth=1), SDE, toy_data("moons", 32), out_dir=tmp_path / "ck", batch_size=8,
              progress=False, **kw)
    assert checkpoint_id(tmp_path / "ck") is None


# -- item 9: minor --------------------------------------------------------------------------------
def test_sharded_functions_on_empty_input_say_so():
    for fn in (lambda: sample_sharded(MODEL, x_T()[:0], "ddim", steps=3),
               lambda: log_likelihood_sharded(MODEL, x_T()[:0]),
               lambda: map_chunks(lambda rows, offset: {}, torch.zeros(0, 2), 4)):
        with pytest.raises(ValueError, match="at least one row"):
            fn()


@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler_ancestral"])
def test_cli_sample_rows_do_not_depend_on_n(tmp_path, solver):
    """`sdekit sample --n 9` is the first 9 rows of `--n 64` (x_T and the solver's noise are drawn per row)."""
    got = {}
    for n in (9, 64):
        st = tmp_path / f"{n}.safetensors"
        assert main(["sample", "--n", str(n), "--steps", "4", "--solver", solver, "--seed", "5",
                     "--out", str(tmp_path / f"{n}.png"), "--save", str(st)]) == 0
        got[n] = load_file(str(st))["samples"]
    assert got[9].shape == (9, 2)
    torch.testing.assert_close(got[9], got[64][:9], rtol=1e-6, atol=1e-6)
    # and the draws are the prior's: 64 rows of N(0, I) pushed through the solver land near the mixture
    assert torch.isfinite(got[64]).all() and float(GM.log_prob(got[64].double(), 0.0, SDE).mean()) > -6


# -- the CLI: one error line, exit code 2, never a traceback ---------------------------------------
_TRAIN = ["train", "--data", "moons", "--n-points", "64", "--batch-size", "8", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["compare", "--nfe", "0"], "argument --nfe"),
    (["compare", "--dim", "0"], "argument --dim: must be an integer in [1, 4096]; got 0"),
    (["compare", "--grids", ""], "argument --grids"),
    (["compare", "--ref-tol", "nan"], "argument --ref-tol: must be a finite number"),
    (_TRAIN + ["--steps", "-3"], "argument --steps: must be an integer in [0, 1000000000]; got -3"),
    (_TRAIN + ["--channels", "0"], "argument --channels: must be an integer in [1, 1024]; got 0"),
    (_TRAIN + ["--ema-decay", "2"], "argument --ema-decay: must be a finite number in [0.0, 1.0]; got 2.0"),
    (_TRAIN + ["--ckpt-every", "-1"], "argument --ckpt-every: must be an integer in [1, 1000000000]; got -1"),
    (_TRAIN + ["--lr", "inf"], "argument --lr: must be a finite number in (0.0, 10.0]; got inf"),
    (_TRAIN + ["--threads", "0"], "argument --threads"),
    (_TRAIN + ["--n-points", "0"], "argument --n-points"),
    (["sample", "--steps", "0"], "argument --steps: must be an integer in [1, 100000]; got 0"),
    (["sample", "--n", "-1"], "argument --n"),
    (["sample", "--steps", "1.5"], "argument --steps: expected an integer; got '1.5'"),
    (["sample", "--guidance", "nan"], "argument --guidance"),
])
def test_cli_argument_checks(argv, message, tmp_path, capsys):
    argv = argv + ["--out", str(tmp_path / ("o.png" if argv[0] == "sample" else "o"))]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err
    assert f"sdekit {argv[0]}: error: " in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["sample", "--solver", "nope"], "unknown solver 'nope'; available: "),
    (["sample", "--grid", "nope"], "unknown grid 'nope'"),
    (["sample", "--checkpoint", "{tmp}/missing"], "is not a directory"),
    (["sample", "--label", "1"], "--label needs a class-conditional --checkpoint"),
    (["sample", "--guidance", "2"], "--guidance applies to a class"),
    (["sample", "--out", "{tmp}/no/such/dir/s.png"], "does not exist"),
    (["sample", "--out", "{tmp}/s.txt"], "cannot write .txt files"),
    (["sample", "--grid", "table"], "DiscreteVPSDE"),
    (["compare", "--out", "{tmp}/file", "--n", "4", "--nfe", "3"], "is a file"),
    (_TRAIN + ["--out", "{tmp}/file/ck"], ""),
])
def test_cli_errors_from_the_library_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "s.png")]
    try:
        rc = main(argv + ["--steps", "2"] if argv[0] == "sample" and "--steps" not in argv else argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert f"sdekit {argv[0]}: error: " in err and message in err, err


def test_sigterm_ends_training_cleanly_with_a_consistent_checkpoint(tmp_path):
    """SIGTERM mid-training: exit code 128 + 15, one line (no KeyboardInterrupt traceback), and the checkpoint
    left behind loads at the step the message names."""
    out = tmp_path / "ck"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sdekit.cli", *_TRAIN, "--steps", "100000", "--ckpt-every", "5",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while checkpoint_id(out) is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert checkpoint_id(out) is not None, proc.communicate(timeout=30)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "sdekit train: training interrupted by SIGTERM after step" in stderr
    step = int(stderr.split("after step ")[1].split(";")[0])
    _, cfg = load_model(out)
    assert cfg["step"] == step >= 5
    resumed = Trainer.resume(out, toy_data("moons", 64))
    assert resumed.step_count == step and len(resumed.losses) == step


def test_custom_sde_with_a_huge_drift_is_named_or_computed_in_log_space():
    class Const(sdekit.LinearSDE):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def f(self, t):
            return torch.full_like(t, self.c)

        def g(self, t):
            return torch.ones_like(t)

    with pytest.raises(ValueError, match="overflows float64"):
        Const(2000.0).sigma(1.0)
    # f = c, g = 1: sigma(t)^2 = (1 - exp(2 c t)) / (-2 c); at c = -2000, t = 1: 1 / 4000
    assert float(Const(-2000.0).sigma(1.0)) == pytest.approx(math.sqrt(1 / 4000), rel=1e-6)
