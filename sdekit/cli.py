"""The ``sdekit`` command.

Each subcommand is a pair of functions here: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` does the work by calling the library (imports are local so that ``sdekit --help``
stays fast). Register a new command by adding its pair to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Optional

from .checkpoint import LIMITS
from .cli_likelihood import _add_likelihood, _run_likelihood
from .data import MAX_TOY_POINTS
from .sde import PATH_NAMES, SDE_NAMES, LinearSDE, path_from_name, sde_from_name
from .solvers.base import SolverError
from .solvers.grids import MAX_STEPS
from .validate import INT64, ROWS, THREADS, arg, fraction, integer, real, writable_dir, writable_file

# user-input errors of any subcommand: one "sdekit <cmd>: error: ..." line and exit code 2, never a traceback
USER_ERRORS = (ValueError, SolverError, OSError)
MAX_ROWS = ROWS[1]  # --n of sample and compare
MAX_SAMPLE_NUMEL = 1 << 28  # sample: --n times the numbers in one sample (1 GiB of float32)
MAX_CHANNELS = 1024
_VE_SIGMA_MIN = 0.01  # sdekit train --sde ve
_TOY_N_POINTS = 20000  # sdekit train --n-points
# upper ends of the flags that have no natural one: far beyond any useful value, small enough that a typo is
# refused at once instead of running for years (train --steps 10^12) or overflowing (1e300)
MAX_TRAIN_STEPS = 10**9
MAX_SCALE = 1e3  # --guidance (both signs), --shift
MAX_SIGMA = 1e5  # --sigma-max of a VE SDE
MAX_LR = 10.0
MAX_GRAD_CLIP = 1e6
MAX_TUNE_EVALS = 100_000


def _int(name: str, lo=None, hi=None):
    return arg(integer, name, int, lo=lo, hi=hi)


def _real(name: str, lo=None, hi=None, **kw):
    return arg(real, name, float, lo=lo, hi=hi, **kw)


_SEED = _int("--seed", *INT64)
_THREADS = _int("--threads", *THREADS)


# -- info --------------------------------------------------------------------------------------
def _add_info(sub):
    sub.add_parser("info", help="versions, the built-in SDEs and the registered solvers")


def _run_info(args) -> int:
    import torch

    import sdekit

    print(f"sdekit {sdekit.__version__}  torch {torch.__version__}")
    print("SDEs: VPSDE, SubVPSDE, VESDE, CosineVPSDE, DiscreteVPSDE, or subclass LinearSDE with f(t), g(t)")
    try:
        from sdekit import solvers

        print("solvers:", ", ".join(solvers.available()))
    except ImportError:
        pass
    return 0


# -- train -------------------------------------------------------------------------------------


def _add_train(sub):
    p = sub.add_parser("train", help="train a score model by denoising score matching (checkpoint + loss plot)")
    p.add_argument("--data", required=True, choices=("moons", "checkerboard", "swissroll", "rings", "digits"))
    # settings default to None: a resumed run takes them from its checkpoint, and any given one that
    # differs is refused; a new run fills in the defaults named in the help
    p.add_argument("--prediction", default=None, choices=("eps", "score", "v", "x0", "velocity"),
                   help="default eps (velocity with --path)")
    p.add_argument("--sde", default=None, choices=tuple(SDE_NAMES), help="default vp")
    p.add_argument("--path", default=None, choices=tuple(PATH_NAMES),
                   help="a flow-matching path instead of an SDE (alpha(1) = 0), e.g. rectified_flow")
    p.add_argument("--shift", type=_real("--shift", 0.0, MAX_SCALE, lo_open=True), default=None,
                   help="with --path: SD3 time shift of the path (TimeShift)")
    p.add_argument("--weighting", default=None,
                   choices=("simple", "likelihood", "min_snr", "native", "flow_matching"),
                   help="default simple (flow_matching with --path)")
    p.add_argument("--time-sampling", default=None, choices=("uniform", "logit_normal"),
                   help="training times: uniform (default) or SD3's logit-normal")
    p.add_argument("--steps", type=_int("--steps", 0, MAX_TRAIN_STEPS), default=2000,
                   help="total optimisation steps (including resumed ones)")
    p.add_argument("--batch-size", type=_int("--batch-size", 1, LIMITS["batch_size"]), default=None, help="default 128")
    p.add_argument("--lr", type=_real("--lr", 0.0, MAX_LR, lo_open=True), default=None,
                   help="AdamW learning rate (default 2e-3 toys, 1e-3 digits)")
    p.add_argument("--ema-decay", type=arg(fraction, "--ema-decay"), default=None, help="in [0, 1]; default 0.999")
    p.add_argument("--grad-clip", type=_real("--grad-clip", 0.0, MAX_GRAD_CLIP), default=None, help="0: no clipping; default 1.0")
    p.add_argument("--warmup", type=_int("--warmup", 0, MAX_TRAIN_STEPS), default=None, help="default 100")
    p.add_argument("--seed", type=_SEED, default=None,
                   help="data and training seed (default 0; a resume takes the checkpoint's)")
    p.add_argument("--out", required=True, help="checkpoint directory (config.json, *.safetensors, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out if there is one")
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in --out (a new run)")
    p.add_argument("--channels", type=_int("--channels", 1, MAX_CHANNELS), default=None,
                   help="U-Net base width (32, even) / MLP width (128)")
    p.add_argument("--conditional", action="store_true", help="class-conditional net (null class for guidance)")
    p.add_argument("--sigma-max", type=_real("--sigma-max", _VE_SIGMA_MIN, MAX_SIGMA, lo_open=True), default=None,
                   help="VE only (default 10 toys, 20 digits)")
    p.add_argument("--n-points", type=_int("--n-points", 1, MAX_TOY_POINTS), default=None,
                   help=f"size of a toy training set (default {_TOY_N_POINTS}; a resume takes the checkpoint's)")
    p.add_argument("--ckpt-every", type=_int("--ckpt-every", 1, MAX_TRAIN_STEPS), default=None,
                   help="also checkpoint every N steps")
    p.add_argument("--threads", type=_THREADS, default=None, help="torch threads (default 1 for toys)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(usage_error=p.error)


_TRAIN_DEFAULTS = {"batch_size": 128, "weighting": "simple", "ema_decay": 0.999, "grad_clip": 1.0, "warmup": 100}


def _resumed_data(args) -> Optional[dict]:
    """The data description recorded by the checkpoint this run resumes, or None for a new run. A resume
    on another data set is a usage error."""
    from .checkpoint import checkpoint_id, read_config

    if not (args.resume and checkpoint_id(args.out) is not None):
        return None
    try:
        stored = read_config(args.out).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return {}  # load_model / Trainer.resume report a corrupt file precisely
    if not isinstance(stored, dict):
        return {}
    if stored.get("name") is not None and stored.get("name") != args.data:
        args.usage_error(f"{args.out} was trained on {stored['name']!r}, not {args.data!r}; use another --out or the "
                         "same --data")
    return stored


def _train_data(args, stored: Optional[dict]):
    """(data set, seed) of the run. A new run takes --n-points and --seed (defaults 20000 and 0); a resume
    rebuilds the checkpoint's own training set from what its config records, and refuses a given flag
    that differs from it (the data would differ from the one the optimizer state was trained on)."""
    from sdekit.data import load_dataset

    n, seed = args.n_points, args.seed
    if args.data == "digits" and n is not None:
        args.usage_error("--n-points sets the size of a toy set; the digits are a fixed set")
    if stored is not None:
        for flag, given, key in (("--n-points", n, "n"), ("--seed", seed, "seed")):
            recorded = stored.get(key)
            if given is not None and recorded is not None and given != recorded:
                args.usage_error(f"{flag} {given} differs from the {key} = {recorded} that {args.out} was trained "
                                 f"with; a resume continues on the checkpoint's own data: drop {flag} (or give "
                                 f"{recorded}), or start a new run (another --out, or --force)")
        n = stored.get("n") if n is None else n
        seed = stored.get("seed") if seed is None else seed
        if args.data != "digits" and (n is None or seed is None):
            args.usage_error(f"{args.out} does not record the size and seed of its training set; give --n-points "
                             "and --seed as in the original run")
    n = _TOY_N_POINTS if n is None else n
    seed = 0 if seed is None else seed
    try:
        n, seed = integer("--n-points", n, 1, MAX_TOY_POINTS), integer("--seed", seed, *INT64)
    except ValueError as err:  # a recorded value out of range: the config was edited
        args.usage_error(f"{args.out}: {err}")
    return load_dataset(args.data, n=n, seed=seed), seed


def _train_model(args, resuming: bool, ds, seed: int, hparams: dict):
    """(net, sde) for the run: built from the flags for a new run; for a resume, only what a flag names
    (None otherwise: train takes it from the checkpoint and refuses a given one that differs)."""
    import torch

    from sdekit.nets import MLP, UNet

    digits = args.data == "digits"
    net: torch.nn.Module | None = None
    sde: LinearSDE | None = None
    if args.path is not None and args.sde is not None:
        args.usage_error("give --sde or --path, not both")
    if args.shift is not None and args.path is None:
        args.usage_error("--shift applies to a --path")
    if args.path is not None:
        sde = path_from_name(args.path, shift=args.shift)
        if not resuming:
            args.prediction = args.prediction or "velocity"
            hparams.setdefault("weighting", "flow_matching")
    elif not resuming or args.sde is not None or args.sigma_max is not None:
        name = args.sde or "vp"
        ve_kwargs = {"sigma_min": _VE_SIGMA_MIN, "sigma_max": args.sigma_max or (20.0 if digits else 10.0)}
        sde = sde_from_name(name, **(ve_kwargs if name == "ve" else {}))
    if not resuming or args.channels is not None or args.conditional:
        if digits and args.channels is not None and args.channels % 2:
            args.usage_error(f"argument --channels: the U-Net's base width must be even; got {args.channels}")
        num_classes = ds.num_classes if args.conditional else None
        torch.manual_seed(seed)
        if digits:
            net = UNet(in_channels=1, base_channels=args.channels or 32, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attn_levels=(1,), num_classes=num_classes)
        else:
            net = MLP(dim=2, width=args.channels or 128, depth=3, num_classes=num_classes)
    return net, sde


def _run_train(args) -> int:
    import contextlib

    from sdekit.checkpoint import claim
    from sdekit.distributed import init_process_group

    writable_dir(args.out, "--out", whole=True)
    rank, world = init_process_group()  # under torchrun: DistributedDataParallel over the ranks
    # one run per --out, claimed before any work (rank 0 writes the checkpoints, so rank 0 claims)
    with claim(args.out) if rank == 0 else contextlib.nullcontext():
        return _train_claimed(args, rank, world)


def _train_claimed(args, rank: int, world: int) -> int:
    import torch

    from sdekit.train import train

    digits = args.data == "digits"
    stored = _resumed_data(args)
    resuming = stored is not None
    threads = args.threads if args.threads is not None else (None if digits else 1)
    if threads:
        torch.set_num_threads(threads)
    ds, seed = _train_data(args, stored)
    hparams = {k: getattr(args, k) for k in (*_TRAIN_DEFAULTS, "lr", "seed", "time_sampling")
               if getattr(args, k) is not None}
    net, sde = _train_model(args, resuming, ds, seed, hparams)
    if not resuming:
        hparams = {**_TRAIN_DEFAULTS, "lr": 1e-3 if digits else 2e-3, "seed": seed, **hparams}
    try:
        trainer = train(net, sde, ds.x, args.prediction, steps=args.steps, out_dir=args.out, resume=args.resume,
                        y=ds.y, progress=not args.no_progress, ckpt_every=args.ckpt_every, overwrite=args.force,
                        meta={"name": ds.name, **ds.meta}, **hparams)
    except ValueError as err:  # bad settings, a checkpoint in the way, a resume that conflicts
        args.usage_error(str(err))
    recent = trainer.losses[-100:]
    mean = sum(recent) / len(recent) if recent else float("nan")
    if rank == 0:
        print(f"step {trainer.step_count}: mean loss of the last {len(recent)} steps {mean:.4f}; "
              f"{trainer.seconds:.1f} s of training; checkpoint in {args.out}"
              + (f" ({world} ranks, DistributedDataParallel)" if world > 1 else ""))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


# -- compare -----------------------------------------------------------------------------------
def _positive_int(text: str, hi: int = MAX_ROWS) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if not 1 <= value <= hi:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {hi}; got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    """Comma-separated positive integers (NFE budgets, step counts), each at most MAX_STEPS."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers up to {MAX_STEPS}, e.g. "
                                         f"5,10,20; got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names; got {text!r}")
    return names


def _add_compare(sub):
    p = sub.add_parser("compare", help="solver accuracy against NFE on an exact Gaussian-mixture score or a checkpoint "
                       "(leaderboard; results.json, results.csv, error_vs_nfe.png)")
    p.add_argument("--solvers", type=_name_list, default=None,
                   help="comma-separated solver names (default: every deterministic fixed-step solver; stochastic "
                   "ones, e.g. dpmpp_2m_sde,euler_ancestral, are measured by their law and pathwise error)")
    p.add_argument("--nfe", type=_int_list, default=None,
                   help="NFE budgets, turned into per-solver step counts (default 5,10,15,20,30,50,100)")
    p.add_argument("--steps", type=_int_list, default=None, help="raw step counts for every solver (instead of --nfe)")
    p.add_argument("--grids", type=_name_list, default="logsnr,quadratic,uniform,karras",
                   help="comma-separated time grids (uniform, quadratic, logsnr, karras; tuned: a grid tuned to the "
                   "model for each solver and step count, on prior draws independent of x_T)")
    p.add_argument("--dim", type=_int("--dim", 1, 4096), default=None, help="dimension of the built-in Gaussian mixture (2)")
    p.add_argument("--n", type=_positive_int, default=512, help="number of starting points x_T")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--sde", default=None, choices=tuple(SDE_NAMES), help="SDE of the built-in mixture (vp)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="compare on a trained checkpoint (x_T from its prior) against a dopri5 reference of it")
    p.add_argument("--ref-steps", type=_int("--ref-steps", 1, MAX_STEPS), default=2000,
                   help="RK4 steps of the float64 mixture reference, and steps of each stochastic solver's "
                   "same-path reference")
    p.add_argument("--no-pathwise", action="store_true",
                   help="stochastic solvers: skip the pathwise error (and its fine same-path reference solves)")
    p.add_argument("--ref-tol", type=_real("--ref-tol", 0.0, 1.0, lo_open=True), default=1e-10,
                   help="dopri5 rtol = atol of the --checkpoint reference")
    p.add_argument("--tune-n", type=_positive_int, default=256,
                   help="with --grids ...,tuned: prior rows per tuning draw")
    p.add_argument("--tune-evals", type=_int("--tune-evals", 1, MAX_TUNE_EVALS), default=None,
                   help="with --grids ...,tuned: optimiser solves per grid")
    p.add_argument("--out", default="sdekit-compare", help="output directory (default ./sdekit-compare)")
    p.add_argument("--full", "--verbose", dest="full", action="store_true", help="also print every row")
    p.add_argument("--threads", type=_THREADS, default=1, help="torch threads (default 1: small tensors)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(usage_error=p.error)  # bad input: "sdekit compare: error: ...", exit 2


def _compare_problem(args):
    """(model, x_T, description): a checkpoint in float64 with seeded x_T from its prior, or (None, None,
    ...) for the built-in mixture, which ``compare`` builds itself."""
    import torch

    if args.checkpoint is None:
        return None, None, f"GaussianMixture.default(dim={args.dim or 2}) exact score, {args.sde or 'vp'} SDE"
    if args.dim is not None or args.sde is not None:
        args.usage_error("--dim and --sde come from the checkpoint; drop them with --checkpoint")
    from .checkpoint import load_model

    model, config = load_model(args.checkpoint)
    model.net.to(torch.float64)  # the reference and the compared solves run in float64
    shape = _event_shape(config, args.checkpoint)
    x_T = model.sde.prior_sample((args.n, *shape), generator=torch.Generator().manual_seed(args.seed),
                                 dtype=torch.float64)
    return model, x_T, f"{args.checkpoint} ({config.get('prediction')} prediction, step {config.get('step')})"


def _run_compare(args) -> int:
    import math

    import torch

    from sdekit.compare import DEFAULT_NFE, SLICED, compare

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nfe is not None and args.steps is not None:
        args.usage_error("give --nfe or --steps, not both")
    try:
        writable_dir(args.out, "--out")  # before the work, not after it
    except ValueError as err:
        args.usage_error(str(err))
    tune_options = {} if args.tune_evals is None else {"max_evals": args.tune_evals}
    try:
        model, x_T, source = _compare_problem(args)
        res = compare(model, x_T, solvers=args.solvers, nfe=args.nfe or DEFAULT_NFE, steps=args.steps,
                      grids=args.grids, seed=args.seed, n=args.n, dim=args.dim or 2, sde=args.sde or "vp",
                      progress=not args.no_progress, ref_steps=args.ref_steps, ref_tol=args.ref_tol,
                      tune_n=args.tune_n, tune_options=tune_options, pathwise=not args.no_pathwise)
    except ValueError as err:
        args.usage_error(str(err))
    paths = res.save(args.out)
    meta = res.meta
    endpoint = any(r.metric != SLICED for r in res)
    law = any(r.metric == SLICED for r in res)
    print(f"{source}; {meta['n']} rows x_T (seed {meta['seed']}), {meta['dtype']}")
    if args.full:
        print(res.table())  # ends with the reference line and the stochastic rows' notes
    elif endpoint:
        print(f"reference: {meta['reference']['method']}; its own error estimate "
              f"{meta['reference'].get('error_estimate', float('nan')):.2e}")
    for statistic in ("median", "p90", "rms") if endpoint else ():
        print()
        print(res.leaderboard(statistic=statistic).table())
    if law:
        print()
        print(res.leaderboard(statistic="excess").table())
        if not args.full:
            print("\n".join(res.law_notes()))
    if meta.get("flipped") and endpoint:
        print("\nflipped: fraction of rows that end in another mixture component than the reference")
    print(f"\nwrote {', '.join(paths)}" + ("" if args.full else " (every row: --full)"))
    if not any(math.isfinite(r.error) for r in res):
        print("sdekit compare: error: no run gave a finite error (see the warnings above); nothing to rank",
              file=sys.stderr)
        return 1
    return 0


# -- sample ------------------------------------------------------------------------------------
def _add_sample(sub):
    p = sub.add_parser("sample", help="draw samples from a checkpoint (or the built-in mixture) and plot them")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory from `sdekit train`; default: the built-in 2-D Gaussian mixture with exact score")
    p.add_argument("--solver", default="dpmpp_2m", help="a name from `sdekit info` (default dpmpp_2m)")
    p.add_argument("--steps", type=_int("--steps", 1, MAX_STEPS), default=20)
    p.add_argument("--grid", default="logsnr", help="uniform | quadratic | logsnr | karras")
    p.add_argument("--n", type=_int("--n", 1, MAX_ROWS), default=64,
                   help="number of samples (row i is the same for any --n > i)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--label", type=_int("--label", 0, LIMITS["classes"] - 1), default=None,
                   help="class to sample (class-conditional checkpoints)")
    p.add_argument("--guidance", type=_real("--guidance", -MAX_SCALE, MAX_SCALE), default=0.0,
                   help="classifier-free guidance weight w (with --label)")
    p.add_argument("--denoise", action="store_true", help="finish with the jump to t = 0")
    p.add_argument("--noise", choices=("path", "step"), default="path",
                   help="stochastic solvers: the rows' Brownian-path increments (default; more steps refine the "
                        "same path) or a fresh Gaussian per step (faster)")
    p.add_argument("--out", default="samples.png", help="PNG to write (a grid for images, a scatter for 2-D)")
    p.add_argument("--save", default=None, help="also write the samples to this .safetensors file")
    p.add_argument("--threads", type=_THREADS, default=1, help="torch threads (default 1: small tensors)")


_X_T_STREAM = 0  # RowNoise.randn stream of sample's x_T (the solver's noise uses randn_like: other streams)


def _event_shape(config: dict, where) -> tuple:
    """The shape of one sample, from what a checkpoint records about its data and net."""
    data, net = config.get("data") or {}, config["net"]
    if "shape" in data:
        return tuple(data["shape"])
    if net.get("type") == "MLP":
        return (int(net["dim"]),)
    if data.get("name") == "digits":
        return (1, 8, 8)
    raise ValueError(f"checkpoint {where} does not record the shape of its data")


def _image_formats() -> set:
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def _run_sample(args) -> int:
    import math
    import time

    import torch

    from . import GaussianMixture, VPSDE
    from .noise import RowNoise
    from .parameterization import ClassifierFreeGuidance, ScoreModel
    from .plotting import save_samples
    from .solvers import sample

    torch.set_num_threads(args.threads)
    if args.guidance and args.label is None:
        raise ValueError("--guidance applies to a class: give --label too")
    if args.checkpoint is None and args.label is not None:
        raise ValueError("--label needs a class-conditional --checkpoint (the built-in mixture has no classes)")
    writable_file(args.out, "--out", _image_formats())
    if args.save:
        writable_file(args.save, "--save")
    density = None
    if args.checkpoint is None:
        sde = VPSDE()
        gm = GaussianMixture.default(dim=2)
        model, shape, title = gm.model(sde), (2,), "built-in mixture (exact score)"
        density = gm.log_prob
    else:
        from .checkpoint import load_model

        model, config = load_model(args.checkpoint)
        shape = _event_shape(config, args.checkpoint)
        title = f"{args.checkpoint}"
        num_classes = config["net"].get("num_classes")
        if args.label is not None:
            if num_classes is None:
                raise ValueError("--label needs a class-conditional checkpoint")
            if not 0 <= args.label < num_classes:
                raise ValueError(f"--label must lie in [0, {num_classes - 1}]; got {args.label}")
            labels = torch.full((args.n,), args.label, dtype=torch.long)
            net = ClassifierFreeGuidance(model.net, labels, num_classes, weight=args.guidance)
            model = ScoreModel(net, model.sde, model.prediction)
            title += f", class {args.label}, w = {args.guidance}"
    if args.n * math.prod(shape) > MAX_SAMPLE_NUMEL:
        raise ValueError(f"--n {args.n} samples of shape {shape} are over {MAX_SAMPLE_NUMEL} numbers; lower --n")
    # x_T per row, as sample's noise: row i depends on (seed, i) only, so --n 9 gives the first 9 rows of --n 64
    x_T = RowNoise(args.seed, args.n).randn(shape, _X_T_STREAM, dtype=torch.float32) * model.sde.prior_std()
    start = time.perf_counter()
    with torch.no_grad():
        sol = sample(model, x_T, args.solver, args.steps, grid=args.grid, generator=args.seed, noise=args.noise,
                     denoise=args.denoise, progress=True)
    elapsed = time.perf_counter() - start
    title += f"\n{args.solver}, {args.grid} grid, {args.steps} steps, NFE {sol.nfe}"
    path = save_samples(sol.x, args.out, density=density, title=title)
    print(f"{args.n} samples with {args.solver} ({sol.nfe} NFE) in {elapsed:.2f} s -> {path}")
    if args.save:
        from safetensors.torch import save_file

        save_file({"samples": sol.x.contiguous().float()}, args.save)
        print(f"samples written to {args.save}")
    return 0


COMMANDS = {
    "info": (_add_info, _run_info),
    "sample": (_add_sample, _run_sample),
    "likelihood": (_add_likelihood, _run_likelihood),
    "train": (_add_train, _run_train),
    "compare": (_add_compare, _run_compare),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside training's own handler: unwinds like Ctrl-C, so claims and temporary files are released."""

    signum = signal.SIGTERM


def _on_sigterm(signum, frame):
    raise _Terminated("terminated by SIGTERM")


def main(argv=None) -> int:
    """Run one subcommand. Bad input of any kind ends in "sdekit <cmd>: error: ..." on stderr and exit code 2
    (argparse's own errors exit 2 as well); SIGINT / SIGTERM end the command cleanly with 128 + the signal
    (training finishes its step and saves first)."""
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command][1](args)
    except USER_ERRORS as err:
        print(f"sdekit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"sdekit {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
