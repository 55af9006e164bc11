"""Hypothesis fuzz of `sdekit` argument lists: whatever the arguments, exit code 0 or 2, never a traceback.

Each example is an argument list drawn from a grammar of one subcommand's real flags, each with valid,
boundary and garbage values, with now and then a random token inserted. It runs in-process through
``sdekit.cli.main`` on real work kept tiny (a few rows, steps and training steps), in fresh temporary
directories. Issue 13's goal is no traceback in 500 examples: SDEKIT_CLI_FUZZ_EXAMPLES=500 runs that many
(the default, ``EXAMPLES``, keeps the suite's budget).
"""
import contextlib
import io
import os
import tempfile
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.cli import main

EXAMPLES = int(os.environ.get("SDEKIT_CLI_FUZZ_EXAMPLES", "60"))

GARBAGE = st.sampled_from(["", " ", "x", "nan", "inf", "-inf", "1e3", "0x10", "1.5", "-1", "0", "--", "é", "1,,2",
                           "9" * 30, "-9" * 20, ",", "None"])


def mostly(good, bad):
    """``good`` four times in five, else ``bad`` (so that most argument lists get past argparse to real work)."""
    return st.integers(0, 9).flatmap(lambda k: good if k >= 2 else bad)


def values(*good):
    """A flag's value: one of its valid ones, or garbage."""
    return mostly(st.sampled_from(good), GARBAGE)


def ints(lo, hi, huge=10**9):
    """Small valid integers, or the boundary below them, far above any limit (refused quickly), or garbage."""
    return mostly(st.integers(lo, hi).map(str), st.one_of(st.sampled_from([str(lo - 1), "-1", str(huge)]), GARBAGE))


def floats(*good):
    return mostly(st.sampled_from([str(v) for v in good]), st.one_of(st.floats(allow_nan=True).map(repr), GARBAGE))


SOLVERS = ("euler", "heun", "ddim", "dpmpp_2m", "euler_ancestral", "dpmpp_sde", "unipc_3", "dopri5", "ddpm", "nope")
GRIDS = ("uniform", "quadratic", "logsnr", "karras", "table", "diffusers", "nope")

FLAGS = {
    "sample": {
        "--checkpoint": values("{ckpt}", "{tmp}/missing", "{tmp}"),
        "--solver": values(*SOLVERS),
        "--steps": ints(1, 4, 10**6),
        "--grid": values(*GRIDS),
        "--n": ints(1, 6, 10**8),
        "--seed": ints(0, 3, 2**64),
        "--label": ints(0, 2),
        "--guidance": floats(0.0, 1.5),
        "--denoise": None,
        "--out": values("{tmp}/s.png", "{tmp}/s.svg", "{tmp}/s.txt", "{tmp}/no/dir/s.png", "{tmp}", "{tmp}/s"),
        "--save": values("{tmp}/s.safetensors", "{tmp}/no/dir/s.safetensors", "{tmp}"),
        "--threads": ints(1, 1, 10**6),
    },
    "compare": {
        "--solvers": values("euler", "heun,ddim", "dpmpp_2m", "euler_ancestral", "dpm_adaptive_12", "nope", "euler,,"),
        "--nfe": values("2", "2,3", "4", "0", "3,x", "1000000"),
        "--steps": values("1", "2", "1,2", "0", "200000"),
        "--grids": values("uniform", "logsnr,karras", "quadratic", "table", "nope", ""),
        "--dim": ints(1, 3, 10**5),
        "--n": ints(1, 6, 10**8),
        "--seed": ints(0, 3, 2**64),
        "--sde": values("vp", "ve", "subvp", "cosine"),
        "--checkpoint": values("{ckpt}", "{tmp}/missing"),
        "--ref-steps": ints(1, 20, 10**6),
        "--ref-tol": floats(1e-3, 1e-2),
        "--tune-n": ints(1, 4),
        "--tune-evals": ints(1, 2),
        "--out": values("{tmp}/cmp", "{tmp}/file", "{tmp}/file/x"),
        "--full": None,
        "--threads": ints(1, 1, 10**6),
        "--no-progress": None,
    },
    "train": {
        "--data": values("moons", "rings", "swissroll", "checkerboard", "cifar"),
        "--prediction": values("eps", "score", "v", "x0", "velocity"),
        "--sde": values("vp", "ve", "subvp", "cosine"),
        "--path": values("rectified_flow", "cosine"),
        "--shift": floats(1.0, 3.0),
        "--weighting": values("simple", "likelihood", "min_snr", "native", "flow_matching"),
        "--time-sampling": values("uniform", "logit_normal"),
        "--steps": ints(0, 3, 10**12),
        "--batch-size": ints(1, 8, 10**12),
        "--lr": floats(1e-3, 0.1),
        "--ema-decay": floats(0.0, 0.5, 1.0),
        "--grad-clip": floats(0.0, 1.0),
        "--warmup": ints(0, 3),
        "--seed": ints(0, 3, 2**70),
        "--out": values("{tmp}/run", "{tmp}/file", "{tmp}/file/run", "{ckpt}"),
        "--resume": None,
        "--force": None,
        "--channels": ints(1, 8, 10**6),
        "--conditional": None,
        "--sigma-max": floats(0.5, 5.0),
        "--n-points": ints(1, 32, 10**12),
        "--ckpt-every": ints(1, 2),
        "--threads": ints(1, 1, 10**6),
        "--no-progress": None,
    },
    "info": {},
}
REQUIRED = {"train": ("--data", "--out")}  # dropped only now and then
TOKENS = st.one_of(GARBAGE, st.sampled_from([f for flags in FLAGS.values() for f in flags] + ["train", "-h"]),
                   st.text(max_size=8))


@st.composite
def argv(draw):
    cmd = draw(st.sampled_from(sorted(FLAGS)))
    flags = FLAGS[cmd]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=6, unique=True)) if flags else []
    keep_required = draw(st.integers(0, 9)) > 0
    for flag in REQUIRED.get(cmd, ()):
        if keep_required and flag not in chosen:
            chosen.append(flag)
    out = [cmd]
    for flag in chosen:
        out.append(flag)
        if flags[flag] is not None:
            out.append(draw(flags[flag]))
    if draw(st.integers(0, 19)) == 0:  # a stray token somewhere
        out.insert(draw(st.integers(1, len(out))), draw(TOKENS))
    # tiny work: a cap on what makes an example slow unless the flag is there with its own value
    defaults = {"sample": ["--n", "4", "--steps", "3"],
                "compare": ["--n", "4", "--ref-steps", "10"] + ([] if "--steps" in out else ["--nfe", "3"]),
                "train": ["--steps", "2", "--n-points", "32", "--batch-size", "8", "--no-progress"]}.get(cmd, [])
    for flag, value in zip(defaults[::2], defaults[1::2]):
        if flag not in out:
            out += [flag, value]
    if cmd == "compare" and "--no-progress" not in out:
        out.append("--no-progress")
    if cmd == "compare" and "--solvers" not in out:
        out += ["--solvers", "euler"]
    if cmd == "compare" and "--grids" not in out:
        out += ["--grids", "uniform"]
    if cmd == "sample" and "--out" not in out:
        out += ["--out", "{tmp}/default.png"]
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny class-conditional checkpoint for --checkpoint (and a --resume target's source)."""
    path = tmp_path_factory.mktemp("fuzz") / "ck"
    assert main(["train", "--data", "moons", "--steps", "2", "--batch-size", "8", "--n-points", "32",
                 "--channels", "8", "--conditional", "--no-progress", "--out", str(path)]) == 0
    return path


def run_cli(args: list) -> tuple:
    """(exit code, stderr, the uncaught exception's traceback or None) of main(args)."""
    err, out = io.StringIO(), io.StringIO()
    code, tb = None, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: BLE001 -- anything else is the failure this test looks for
            tb = traceback.format_exc()
    return code, err.getvalue(), tb


@settings(max_examples=EXAMPLES, deadline=None)
@given(args=argv())
def test_cli_never_gives_a_traceback(ckpt, args):
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        (open(os.path.join(tmp, "file"), "w")).close()
        if "{ckpt}" in " ".join(args) and "train" == args[0]:  # a train run must not replace the shared one
            shutil.copytree(ckpt, os.path.join(tmp, "ck"))
            ck = os.path.join(tmp, "ck")
        else:
            ck = str(ckpt)
        concrete = [a.replace("{tmp}", tmp).replace("{ckpt}", ck) for a in args]
        here = os.getcwd()
        os.chdir(tmp)  # a garbage relative --out ("None", "inf") lands in the temporary directory, not the checkout
        try:
            code, err, tb = run_cli(concrete)
        finally:
            os.chdir(here)
    assert tb is None, f"sdekit {' '.join(concrete)}\n{tb}"
    assert code in (0, 2), f"sdekit {' '.join(concrete)} -> exit {code}\n{err}"
    assert "Traceback" not in err, f"sdekit {' '.join(concrete)}\n{err}"
    if code == 2:
        assert "error:" in err, f"sdekit {' '.join(concrete)}: exit 2 without an error line\n{err}"
