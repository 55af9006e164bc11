"""Hypothesis fuzz of `sdekit` argument lists: whatever the arguments, no traceback, and exit code 0, 2
(bad input), 130 or 143 (interrupted).

Each example is an argument list drawn from a grammar of one subcommand's real flags, each with valid,
boundary and garbage values, with now and then a random token inserted. It runs in-process through
``sdekit.cli.main`` on real work kept tiny (a few rows, steps and training steps, loose tolerances), in fresh
temporary directories. Every subcommand of ``sdekit.cli.COMMANDS`` has a grammar here (checked) and its own
test with a share of ``EXAMPLES`` (500 in all, issue 21; SDEKIT_CLI_FUZZ_EXAMPLES=N runs N instead).
"""
import contextlib
import io
import os
import tempfile
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdekit.cli import COMMANDS, main

EXAMPLES = int(os.environ.get("SDEKIT_CLI_FUZZ_EXAMPLES", "500"))
EXIT_CODES = (0, 2, 130, 143)

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
        "--steps": ints(0, 3, 10**12),  # 10^12 is refused (it would train for years)
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
    "likelihood": {
        "--sde": values("vp", "ve", "subvp", "cosine", "nope"),
        "--dim": ints(1, 3, 10**5),
        "--n": ints(1, 4, 10**8),
        "--divergence": values("auto", "exact", "hutchinson"),
        "--probes": ints(1, 3, 10**6),
        "--noise": values("rademacher", "gaussian"),
        "--method": values("dopri5", "bosh3", "adaptive_heun", "euler", "rk4", "heun3", "nope"),
        "--rtol": floats(1e-2, 1e-3),
        "--atol": floats(1e-2, 1e-3),
        "--time-variable": values("auto", "t", "log_snr"),
        "--max-nfe": ints(1, 3000, 10**12),
        "--integrate": values("augmented", "quadrature"),
        "--quad-tol": floats(0.1, 1.0),
        "--prior": values("exact", "sde"),
        "--dtype": values("float64", "float32"),
        "--seed": ints(0, 3, 2**64),
        "--threads": ints(1, 1, 10**6),
        "--checkpoint": values("{ckpt}", "{tmp}/missing", "{tmp}", "{tmp}/file"),
        "--split": values("test", "train"),
        "--dequantize": None,
        "--repeats": ints(1, 3, 10**6),
        "--batch": ints(1, 4, 10**8),
        "--json": values("{tmp}/r.json", "{tmp}/no/dir/r.json", "{tmp}", "{tmp}/file"),
        "--no-progress": None,
    },
    "info": {},
}
# each subcommand's share of EXAMPLES (info has no flags: a few examples of stray tokens)
SHARES = {"info": 0.04, "sample": 0.26, "compare": 0.16, "likelihood": 0.28, "train": 0.26}
REQUIRED = {"train": ("--data", "--out")}  # dropped only now and then
TOKENS = st.one_of(GARBAGE, st.sampled_from([f for flags in FLAGS.values() for f in flags] + ["train", "-h"]),
                   st.text(max_size=8))


@st.composite
def argv(draw, cmd):
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
                "compare": ["--n", "4", "--ref-steps", "10", "--ref-tol", "1e-3"]
                + ([] if "--steps" in out else ["--nfe", "3"]),
                "train": ["--steps", "2", "--n-points", "32", "--batch-size", "8", "--no-progress"],
                "likelihood": ["--n", "3", "--rtol", "1e-2", "--atol", "1e-2", "--max-nfe", "3000",
                               "--no-progress"]}.get(cmd, [])
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


def check(ckpt, args: list) -> None:
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
    assert code in EXIT_CODES, f"sdekit {' '.join(concrete)} -> exit {code}\n{err}"
    assert "Traceback" not in err, f"sdekit {' '.join(concrete)}\n{err}"
    if code == 2:
        assert "error:" in err, f"sdekit {' '.join(concrete)}: exit 2 without an error line\n{err}"


def test_every_subcommand_is_fuzzed():
    assert set(FLAGS) == set(COMMANDS) == set(SHARES)
    assert sum(max(1, round(EXAMPLES * share)) for share in SHARES.values()) >= EXAMPLES


def _fuzz(cmd: str):
    @settings(max_examples=max(1, round(EXAMPLES * SHARES[cmd])), deadline=None)
    @given(args=argv(cmd))
    def test(ckpt, args):
        check(ckpt, args)

    test.__name__ = f"test_cli_{cmd}_never_gives_a_traceback"
    test.__doc__ = f"sdekit {cmd}: {round(EXAMPLES * SHARES[cmd])} fuzzed argument lists"
    return test


for _cmd in SHARES:
    globals()[f"test_cli_{_cmd}_never_gives_a_traceback"] = _fuzz(_cmd)
