"""The command refuses bad input before any work (issue 21 items 2, 9, 10, 12): every numeric flag of every
subcommand is range-checked, every output path is probed first, one ``--out`` is claimed by one training run,
and ``train --resume`` continues on the checkpoint's own data."""
import argparse
import contextlib
import importlib
import io
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import sdekit.checkpoint as checkpoint
from sdekit.checkpoint import DirectoryClaimed, claim, load_model
from sdekit.cli import COMMANDS, build_parser, main
from sdekit.data import load_dataset, toy_data
from sdekit.train import Trainer

EXTREMES = ("nan", "inf", "-inf", "1e30", "-1e30", str(10**30), str(-10**30))
TINY = ["--data", "moons", "--batch-size", "8", "--channels", "8", "--no-progress"]


def _subparsers():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _accepts(action, text: str) -> bool:
    try:
        action.type(text)
        return True
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def run(argv) -> tuple:
    """(exit code, stderr) of the command, in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


# -- item 9: range checks -----------------------------------------------------------------------------------
def test_every_numeric_flag_of_every_subcommand_is_range_checked():
    """Walk the parser: a flag whose type takes a number is a checked type (never bare int/float, which take
    -1, 10^30, nan) and refuses the extremes, so no flag can reach the work with an absurd value."""
    parsers = _subparsers()
    assert set(parsers) == set(COMMANDS)
    numeric = []
    for name, parser in parsers.items():
        for action in parser._actions:
            if action.type is None:
                continue
            assert action.type not in (int, float), f"sdekit {name} {action.option_strings}: unchecked {action.type}"
            if _accepts(action, "1") and not _accepts(action, "x"):
                numeric.append((name, action.option_strings[0]))
                taken = [v for v in EXTREMES if _accepts(action, v)]
                assert not taken, f"sdekit {name} {action.option_strings[0]} accepts {taken}"
    assert {n for n, _ in numeric} >= {"sample", "likelihood", "train", "compare"}
    assert ("likelihood", "--threads") in numeric and ("likelihood", "--probes") in numeric


@pytest.mark.parametrize("argv, words", [
    (["--threads", "-1"], "--threads"),
    (["--threads", "100000"], "--threads"),
    (["--probes", "0"], "--probes"),
    (["--method", "euler"], "'euler' is not an adaptive method"),
    (["--method", "heun3"], "'heun3' is not an adaptive method"),
    (["--rtol", "0"], "--rtol"),
    (["--max-nfe", "0"], "--max-nfe"),
    (["--repeats", "0"], "--repeats"),
    (["--batch", "-3"], "--batch"),
    (["--n", "0"], "--n"),
])
def test_likelihood_flags_refused_with_their_name(argv, words):
    code, err = run(["likelihood", "--no-progress", *argv])
    assert code == 2 and words in err, err


# -- item 12: output paths before work, one run per --out ----------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("guards") / "ck"
    assert run(["train", *TINY, "--steps", "2", "--n-points", "32", "--out", path])[0] == 0
    return path


def _forbid(monkeypatch, target: str):
    """Make the function that does a command's work fail the test if it is reached."""
    module, name = target.rsplit(".", 1)

    def reached(*a, **k):
        raise AssertionError(f"{target} ran before the output path was checked")

    monkeypatch.setattr(importlib.import_module(module), name, reached)


OUTPUTS = [  # (argv with {tmp}, {ckpt}; the work it must not reach)
    (["likelihood", "--checkpoint", "{ckpt}", "--json", "{tmp}/no/dir/r.json"], "sdekit.likelihood.dataset.score_dataset"),
    (["likelihood", "--checkpoint", "{ckpt}", "--json", "{tmp}/file/r.json"], "sdekit.likelihood.dataset.score_dataset"),
    (["likelihood", "--checkpoint", "{ckpt}", "--json", "{tmp}"], "sdekit.likelihood.dataset.score_dataset"),
    (["sample", "--out", "{tmp}/no/dir/s.png"], "sdekit.solvers.sample"),
    (["sample", "--out", "{tmp}/s.png", "--save", "{tmp}/file/s.safetensors"], "sdekit.solvers.sample"),
    (["compare", "--out", "{tmp}/file/cmp", "--solvers", "euler", "--nfe", "2"], "sdekit.compare.compare"),
    (["train", *TINY, "--out", "{tmp}/file/run"], "sdekit.train.train"),
    (["train", *TINY, "--out", "{tmp}/file"], "sdekit.train.train"),
]


@pytest.mark.parametrize("argv, work", OUTPUTS, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(OUTPUTS)])
def test_every_output_path_is_checked_before_the_work(tmp_path, ckpt, monkeypatch, argv, work):
    (tmp_path / "file").write_text("")
    _forbid(monkeypatch, work)
    code, err = run([a.replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(ckpt)) for a in argv])
    assert code == 2 and "error:" in err, err


def test_output_flags_are_all_covered():
    """Every path-valued output flag of every subcommand appears in OUTPUTS."""
    outputs = {(name, a.option_strings[0]) for name, p in _subparsers().items() for a in p._actions
               if a.option_strings and a.option_strings[0] in ("--out", "--save", "--json", "--csv", "--plot")}
    covered = {(argv[0], flag) for argv, _ in OUTPUTS for flag in argv if flag.startswith("--")}
    assert outputs <= covered, outputs - covered


def _claim_file(out) -> str:
    out = os.path.realpath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.claim")


def test_a_second_run_into_one_out_is_refused_at_start(tmp_path, monkeypatch):
    """A live process holding the claim (here a sleeping child) -> refused before any work; once it is gone
    (SIGKILL: its claim file stays, stale) the next run takes the claim over and trains."""
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(_claim_file(out), "w") as fh:
            fh.write(f"{child.pid} {socket.gethostname()}\n")
        with monkeypatch.context() as m:
            _forbid(m, "sdekit.train.train")
            code, err = run(["train", *TINY, "--steps", "1", "--n-points", "16", "--out", out])
        assert code == 2 and "in use by another run" in err and str(child.pid) in err, err
    finally:
        child.kill()
        child.wait()
    assert os.path.exists(_claim_file(out))  # the killed owner left it
    code, err = run(["train", *TINY, "--steps", "1", "--n-points", "16", "--out", out])
    assert code == 0, err
    assert not os.path.exists(_claim_file(out)), "the claim is released when the run ends"


def test_two_live_processes_one_out(tmp_path):
    """Two real processes: while one trains into --out, another is refused with exit 2 (claim held by pid)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, "-m", "sdekit.cli", "train", *TINY, "--steps", str(10**8),
                              "--n-points", "16", "--out", str(out)], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if os.path.exists(_claim_file(out)) or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert first.poll() is None and os.path.exists(_claim_file(out))
        code, err = run(["train", *TINY, "--steps", "1", "--n-points", "16", "--out", out, "--resume"])
        assert code == 2 and str(first.pid) in err, err
    finally:
        first.terminate()  # SIGTERM: the run saves and releases its claim
        first.wait(60)
    assert first.returncode == 143
    assert not os.path.exists(_claim_file(out))


def test_claim_is_reentrant_and_released_on_error(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(RuntimeError):
        with claim(out):
            with claim(out):  # the CLI claims, then Trainer.run claims again in the same process
                assert os.path.exists(_claim_file(out))
            assert os.path.exists(_claim_file(out))
            raise RuntimeError
    assert not os.path.exists(_claim_file(out)) and not checkpoint.held_claims()
    with open(_claim_file(out), "w") as fh:  # a claim of another host cannot be checked: refused, file named
        fh.write("1 some-other-host\n")
    with pytest.raises(DirectoryClaimed, match="some-other-host"):
        with claim(out):
            pass


# -- item 2: resume on the checkpoint's data ----------------------------------------------------------------
def _weights(path) -> dict:
    return load_file(os.path.join(path, "model.safetensors"))


def test_resume_without_seed_reproduces_a_straight_run(tmp_path):
    """train 4 steps == train 2, resume to 4, with the data flags (--seed 5, --n-points 48) given only at the
    start: the resume rebuilds the data from the checkpoint, not from the defaults (seed 0, 20000 points)."""
    flags = [*TINY, "--conditional", "--warmup", "2"]
    assert run(["train", *flags, "--steps", "4", "--seed", "5", "--n-points", "48", "--out", tmp_path / "a"])[0] == 0
    assert run(["train", *flags, "--steps", "2", "--seed", "5", "--n-points", "48", "--out", tmp_path / "b"])[0] == 0
    code, err = run(["train", "--data", "moons", "--steps", "4", "--resume", "--no-progress", "--out", tmp_path / "b"])
    assert code == 0, err
    straight, resumed = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("flag, value", [("--seed", "6"), ("--n-points", "49")])
def test_resume_with_conflicting_data_flag_is_refused(tmp_path, flag, value):
    out = tmp_path / "r"
    assert run(["train", *TINY, "--steps", "1", "--seed", "5", "--n-points", "48", "--out", out])[0] == 0
    before = _weights(out)
    code, err = run(["train", "--data", "moons", "--steps", "2", "--resume", "--no-progress", flag, value,
                     "--out", out])
    assert code == 2 and flag in err and "resume" in err, err
    after = _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_library_resume_on_other_data_is_refused(tmp_path):
    """Trainer.resume compares the data's fingerprint recorded in the checkpoint; check_data=False opts out."""
    from sdekit.nets import MLP
    from sdekit.sde import VPSDE
    from sdekit.train import train

    data = toy_data("moons", 40, seed=1)
    train(MLP(dim=2, width=8, depth=2), VPSDE(), data, steps=1, out_dir=tmp_path / "t", batch_size=4,
          progress=False)
    with pytest.raises(ValueError, match="differ from its training set"):
        Trainer.resume(tmp_path / "t", toy_data("moons", 40, seed=2))
    with pytest.raises(ValueError, match="differ from its training set"):
        train(None, None, toy_data("moons", 41, seed=1), steps=2, out_dir=tmp_path / "t", resume=True,
              progress=False)
    assert Trainer.resume(tmp_path / "t", toy_data("moons", 40, seed=2), check_data=False).step_count == 1
    assert Trainer.resume(tmp_path / "t", data.clone()).step_count == 1
    # labels count for a class-conditional net only
    x, y = toy_data("moons", 40, seed=1, labels=True)
    train(MLP(dim=2, width=8, depth=2, num_classes=2), VPSDE(), x, y=y, steps=1, out_dir=tmp_path / "c",
          batch_size=4, progress=False)
    with pytest.raises(ValueError, match="labels that differ"):
        Trainer.resume(tmp_path / "c", x, 1 - y)
    with pytest.raises(ValueError, match="labels that differ"):
        Trainer.resume(tmp_path / "c", x)
    assert Trainer.resume(tmp_path / "c", x, y.clone()).step_count == 1
    assert Trainer.resume(tmp_path / "t", data, y).step_count == 1  # unconditional: labels are not used


# -- load_model is for inference -----------------------------------------------------------------------------
def test_load_model_returns_an_inference_model_and_resume_still_trains(ckpt):
    model, _ = load_model(ckpt)
    assert not model.net.training
    assert not any(p.requires_grad for p in model.net.parameters())
    x = torch.randn(3, 2, requires_grad=True)  # gradients with respect to x still flow
    model.score(x, torch.tensor(0.5)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    ds = load_dataset("moons", n=32, seed=0)  # the checkpoint's training set, labels included
    trainer = Trainer.resume(ckpt, ds.x, ds.y)
    assert all(p.requires_grad for p in trainer.net.parameters())
    before = [p.detach().clone() for p in trainer.net.parameters()]
    trainer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.net.parameters()))
