"""The ``sdekit`` command.

Each subcommand is a pair of functions here: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` does the work by calling the library (imports are local so that ``sdekit --help``
stays fast). Register a new command by adding its pair to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys

from .sde import PATH_NAMES, SDE_NAMES, LinearSDE, path_from_name, sde_from_name


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
    p.add_argument("--shift", type=float, default=None, help="with --path: SD3 time shift of the path (TimeShift)")
    p.add_argument("--weighting", default=None,
                   choices=("simple", "likelihood", "min_snr", "native", "flow_matching"),
                   help="default simple (flow_matching with --path)")
    p.add_argument("--time-sampling", default=None, choices=("uniform", "logit_normal"),
                   help="training times: uniform (default) or SD3's logit-normal")
    p.add_argument("--steps", type=int, default=2000, help="total optimisation steps (including resumed ones)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 2e-3 toys, 1e-3 digits)")
    p.add_argument("--ema-decay", type=float, default=None, help="default 0.999")
    p.add_argument("--grad-clip", type=float, default=None, help="default 1.0")
    p.add_argument("--warmup", type=int, default=None, help="default 100")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--out", required=True, help="checkpoint directory (config.json, *.safetensors, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out if there is one")
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in --out (a new run)")
    p.add_argument("--channels", type=int, default=None, help="U-Net base width (32) / MLP width (128)")
    p.add_argument("--conditional", action="store_true", help="class-conditional net (null class for guidance)")
    p.add_argument("--sigma-max", type=float, default=None, help="VE only (default 10 toys, 20 digits)")
    p.add_argument("--n-points", type=int, default=20000, help="size of a toy training set")
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 for toys)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(usage_error=p.error)


_TRAIN_DEFAULTS = {"batch_size": 128, "weighting": "simple", "ema_decay": 0.999, "grad_clip": 1.0, "warmup": 100}


def _check_resume_data(args) -> bool:
    """Whether this run resumes a checkpoint; a resume on other data is a usage error."""
    from .checkpoint import checkpoint_id, read_config

    if not (args.resume and checkpoint_id(args.out) is not None):
        return False
    try:
        stored = (read_config(args.out).get("data") or {}).get("name")
    except (OSError, ValueError, AttributeError):
        stored = None  # load_model / Trainer.resume report a corrupt file precisely
    if stored is not None and stored != args.data:
        args.usage_error(f"{args.out} was trained on {stored!r}, not {args.data!r}; use another --out or the same --data")
    return True


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
        ve_kwargs = {"sigma_min": 0.01, "sigma_max": args.sigma_max or (20.0 if digits else 10.0)}
        sde = sde_from_name(name, **(ve_kwargs if name == "ve" else {}))
    if not resuming or args.channels is not None or args.conditional:
        num_classes = ds.num_classes if args.conditional else None
        torch.manual_seed(seed)
        if digits:
            net = UNet(in_channels=1, base_channels=args.channels or 32, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attn_levels=(1,), num_classes=num_classes)
        else:
            net = MLP(dim=2, width=args.channels or 128, depth=3, num_classes=num_classes)
    return net, sde


def _run_train(args) -> int:
    import torch

    from sdekit.data import load_dataset
    from sdekit.distributed import init_process_group
    from sdekit.train import train

    digits = args.data == "digits"
    resuming = _check_resume_data(args)
    threads = args.threads if args.threads is not None else (None if digits else 1)
    if threads:
        torch.set_num_threads(threads)
    rank, world = init_process_group()  # under torchrun: DistributedDataParallel over the ranks
    seed = 0 if args.seed is None else args.seed
    ds = load_dataset(args.data, n=args.n_points, seed=seed)
    hparams = {k: getattr(args, k) for k in (*_TRAIN_DEFAULTS, "lr", "seed", "time_sampling")
               if getattr(args, k) is not None}
    net, sde = _train_model(args, resuming, ds, seed, hparams)
    if not resuming:
        hparams = {**_TRAIN_DEFAULTS, "lr": 1e-3 if digits else 2e-3, "seed": 0, **hparams}
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


# -- likelihood --------------------------------------------------------------------------------


def _add_likelihood(sub):
    p = sub.add_parser(
        "likelihood",
        help="log-likelihood through the probability-flow ODE (default: a built-in Gaussian mixture, vs the exact value)",
    )
    p.add_argument("--sde", default="vp", choices=tuple(SDE_NAMES))
    p.add_argument("--dim", type=int, default=2, help="mixture dimension (GaussianMixture.default(dim))")
    p.add_argument("--n", type=int, default=8, help="number of exact samples to score")
    p.add_argument("--divergence", default="exact", choices=("exact", "hutchinson"))
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes (carried in one solve)")
    p.add_argument("--noise", default="rademacher", choices=("rademacher", "gaussian"))
    p.add_argument("--method", default="dopri5")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--max-nfe", type=int, default=100_000, help="budget in network calls per solve")
    p.add_argument("--integrate", default="augmented", choices=("augmented", "quadrature"),
                   help="quadrature (exact divergence): solve the trajectory alone, then integrate each row's "
                        "divergence by adaptive quadrature (fewer trace evaluations)")
    p.add_argument("--quad-tol", type=float, default=0.1, help="with --integrate quadrature: tolerance (nats)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--prior", default="exact", choices=("exact", "sde"),
                   help="exact: the mixture's p_T as the prior; sde: the SDE's N(0, s^2 I), reporting the prior gap")
    p.add_argument("--dtype", default=None, choices=("float64", "float32"),
                   help="default: float64 for the built-in mixture, float32 (the weights' own) for --checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (small solves run best on one)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="score a trained checkpoint on its data set instead of the built-in mixture")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="with --checkpoint: digits split; for a 2-D toy set, train = the training points, "
                        "test = a fresh draw (seed + 1)")
    p.add_argument("--dequantize", action="store_true",
                   help="digits: add u ~ U(-1/16, 1/16) per pixel (bits/dim is then an upper bound on the code length)")
    p.add_argument("--repeats", type=int, default=1, help="dequantization draws per image (with --dequantize)")
    p.add_argument("--batch", type=int, default=8, help="with --checkpoint: rows per ODE solve")


def _likelihood_problem(args):
    """(model, x, exact log p_{t_start} or None, exact p_T or None) for the likelihood command.

    The built-in problem is GaussianMixture.default(dim) under the chosen SDE, scored on exact samples.
    A checkpoint option would build (model, x) here from a trained network and data, with no exact value.
    """
    import torch

    import sdekit

    sde = sde_from_name(args.sde)
    gm = sdekit.GaussianMixture.default(dim=args.dim, seed=args.seed)
    dtype = getattr(torch, args.dtype or "float64")
    x = gm.sample(args.n, generator=torch.Generator().manual_seed(args.seed + 1), dtype=dtype)
    return gm.model(sde), x, (lambda y: gm.log_prob(y, sde.eps, sde)), (lambda z: gm.log_prob(z, sde.T, sde))


def _likelihood_config(args, **data):
    """The one ``LikelihoodConfig`` of a likelihood command (``data``: the checkpoint's bits/dim settings).
    Raises ValueError on a bad setting."""
    from .likelihood import LikelihoodConfig

    return LikelihoodConfig(divergence=args.divergence, probes=args.probes, noise=args.noise, seed=args.seed,
                            method=args.method, rtol=args.rtol, atol=args.atol, max_nfe=args.max_nfe,
                            integrate=args.integrate, quad_tol=args.quad_tol, **data)


def _run_likelihood(args) -> int:
    import time

    import torch

    import sdekit
    from .solvers import SolverError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dim < 1 or args.n < 1:
        print("error: --dim and --n must be positive", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        return _run_likelihood_checkpoint(args)
    if args.dequantize or args.repeats != 1:
        print("error: --dequantize / --repeats apply to --checkpoint on digits", file=sys.stderr)
        return 2
    model, x, exact_fn, exact_prior = _likelihood_problem(args)
    sde = model.sde
    prior = exact_prior if (args.prior == "exact" and exact_prior is not None) else None
    start = time.perf_counter()
    try:
        res = sdekit.log_likelihood(model, x, _likelihood_config(args), prior_log_prob=prior,
                                    progress=not args.no_progress)
    except (ValueError, SolverError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    D = x[0].numel()
    print(f"{sde!r}  D={D}  n={x.shape[0]}  divergence={args.divergence}"
          + (f" (probes={args.probes}, {args.noise})" if args.divergence == "hutchinson" else "")
          + f"  {args.method} rtol={args.rtol} atol={args.atol}  prior={'exact p_T' if prior else 'SDE N(0, s^2 I)'}"
          + (f"  quadrature (quad_tol={args.quad_tol})" if args.integrate == "quadrature" else ""))
    exact = exact_fn(x).double() if exact_fn is not None else None
    gap = None
    if exact_prior is not None and prior is None:
        gap = (sde.prior_log_prob(res.z) - exact_prior(res.z)).double()
    cols = [("estimate", 13, ".6f", res.log_prob)]  # (header, width, format, per-row values)
    if res.stderr is not None:
        cols.append(("stderr", 10, ".4g", res.stderr))
    if exact is not None:
        cols += [("exact", 13, ".6f", exact), ("error", 10, ".2e", res.log_prob.double() - exact)]
    if gap is not None:
        cols.append(("prior gap", 10, ".4g", gap))
    cols.append(("bpd", 9, ".4f", res.bpd))
    print(f"{'row':>4} " + " ".join(f"{name:>{width}}" for name, width, _, _ in cols))
    for i in range(x.shape[0]):
        print(f"{i:>4} " + " ".join(f"{float(v[i]):>{width}{fmt}}" for _, width, fmt, v in cols))
    if exact is not None:
        abs_err = (res.log_prob.double() - exact).abs()
        print(f"mean |error| {abs_err.mean().item():.3e} nats  max {abs_err.max().item():.3e} nats", end="")
        if gap is not None:
            print(f"  (includes the prior gap log N(z) - log p_T(z), mean {gap.mean().item():.3e})", end="")
        print()
    extra = ""
    if res.stats.get("integrate") == "quadrature":
        extra = f"  divergence evaluations per row {res.stats['divergence_evals_per_row']:.1f}"
    print(f"NFE {res.nfe}  time {elapsed:.3f} s  divergence backend {res.backend}{extra}")
    return 0


def _checkpoint_data(config: dict, split: str, n: int, dtype):
    """(x, description, digits?) : n rows of a checkpoint's data set, evenly spread over the split
    (rows 0, s, 2s, ... with s = len // n, so a given n always picks the same rows)."""
    import torch

    from .data import load_digits, toy_data

    data = config.get("data") or {}
    name = data.get("name")
    if name == "digits":
        x = load_digits(split).x
    elif name in ("moons", "checkerboard", "swissroll", "rings"):
        seed = int(data.get("seed", 0)) + (1 if split == "test" else 0)
        x = toy_data(name, int(data.get("n", 20000)), seed=seed)
    else:
        raise SystemExit(f"sdekit likelihood: the checkpoint's data set {name!r} is unknown (digits or a 2-D toy set)")
    stride = max(1, x.shape[0] // n)
    idx = torch.arange(0, x.shape[0], stride)[:n]
    return x[idx].to(dtype), f"{name} {split}: {len(idx)} of {x.shape[0]} rows (stride {stride})", name == "digits"


def _run_likelihood_checkpoint(args) -> int:
    """Mean log-likelihood of a checkpoint on its data: bits/dim for digits (17 levels, x = k/8 - 1, bin
    width 1/8: bpd = -(log p(x) + 64 log(1/8)) / (64 log 2)), nats for 2-D toy sets."""
    import math
    import time

    import torch

    from tqdm.auto import tqdm

    import sdekit
    from .checkpoint import load_model
    from .data import DIGITS_SCALE
    from .solvers import SolverError

    if args.repeats < 1 or args.batch < 1:
        print("error: --repeats and --batch must be positive", file=sys.stderr)
        return 2
    if args.repeats > 1 and not args.dequantize:
        print("error: --repeats > 1 needs --dequantize", file=sys.stderr)
        return 2
    model, config = load_model(args.checkpoint)
    args.dtype = args.dtype or "float32"
    dtype = getattr(torch, args.dtype)
    model.net.to(dtype)  # type: ignore[attr-defined]  # a checkpoint's net is a torch module
    x, desc, digits = _checkpoint_data(config, args.split, args.n, dtype)
    if args.dequantize and not digits:
        print("error: --dequantize applies to digits (discrete levels), not to a continuous 2-D toy set",
              file=sys.stderr)
        return 2
    per_row = torch.zeros(x.shape[0], dtype=torch.float64)
    nfe, solves, start = 0, 0, time.perf_counter()
    try:  # dequantisation (args.repeats draws per image) happens inside, in sdekit's one convention
        cfg = _likelihood_config(args, data_scale=DIGITS_SCALE if digits else None, dequantize=args.dequantize,
                                 repeats=args.repeats)
        with tqdm(total=x.shape[0], desc="rows", disable=args.no_progress) as bar:
            for a in range(0, x.shape[0], args.batch):
                res = sdekit.log_likelihood(model, x[a:a + args.batch], cfg, row_offset=a,
                                            progress=not args.no_progress)
                value = res.bpd if digits else res.log_prob
                per_row[a:a + args.batch] = value.double()
                nfe, solves = nfe + res.nfe, solves + 1
                bar.update(value.shape[0])
    except (ValueError, SolverError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    n = x.shape[0]
    se = float(per_row.std() / math.sqrt(n)) if n > 1 else float("nan")
    print(f"{args.checkpoint} ({config.get('prediction')} prediction, step {config.get('step')})  {desc}")
    print(f"divergence={args.divergence}" + (f" (probes={args.probes})" if args.divergence == "hutchinson" else "")
          + f"  {args.method} rtol={args.rtol} atol={args.atol}  {args.dtype}"
          + (f"  dequantized, {args.repeats} draw(s) per image" if args.dequantize else "")
          + (f"  quadrature (quad_tol={args.quad_tol})" if args.integrate == "quadrature" else ""))
    if digits:
        note = "" if args.dequantize else "  (on the level grid, no dequantization: not a bound on the code length)"
        print(f"bits/dim {per_row.mean().item():.4f} +- {se:.4f} (standard error over {n} images){note}")
    else:
        print(f"log-likelihood {per_row.mean().item():.4f} +- {se:.4f} nats per point (standard error over {n} points)")
    print(f"NFE {nfe} ({solves} solve(s) of up to {args.batch} rows x {args.repeats} draw(s))  time {elapsed:.2f} s")
    return 0


# -- compare -----------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    """Comma-separated positive integers (NFE budgets, step counts)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 5,10,20; got {text!r}")
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
                   help="comma-separated solver names (default: every deterministic fixed-step solver)")
    p.add_argument("--nfe", type=_int_list, default=None,
                   help="NFE budgets, turned into per-solver step counts (default 5,10,15,20,30,50,100)")
    p.add_argument("--steps", type=_int_list, default=None, help="raw step counts for every solver (instead of --nfe)")
    p.add_argument("--grids", type=_name_list, default="logsnr,quadratic,uniform,karras",
                   help="comma-separated time grids (uniform, quadratic, logsnr, karras; tuned: a grid tuned to the "
                   "model for each solver and step count, on prior draws independent of x_T)")
    p.add_argument("--dim", type=_positive_int, default=None, help="dimension of the built-in Gaussian mixture (2)")
    p.add_argument("--n", type=_positive_int, default=512, help="number of starting points x_T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sde", default=None, choices=tuple(SDE_NAMES), help="SDE of the built-in mixture (vp)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="compare on a trained checkpoint (x_T from its prior) against a dopri5 reference of it")
    p.add_argument("--ref-steps", type=_positive_int, default=2000, help="RK4 steps of the float64 mixture reference")
    p.add_argument("--ref-tol", type=float, default=1e-10, help="dopri5 rtol = atol of the --checkpoint reference")
    p.add_argument("--tune-n", type=_positive_int, default=256,
                   help="with --grids ...,tuned: prior rows per tuning draw")
    p.add_argument("--tune-evals", type=int, default=None, help="with --grids ...,tuned: optimiser solves per grid")
    p.add_argument("--out", default="sdekit-compare", help="output directory (default ./sdekit-compare)")
    p.add_argument("--full", "--verbose", dest="full", action="store_true", help="also print every row")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small tensors)")
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

    from sdekit.compare import DEFAULT_NFE, compare

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nfe is not None and args.steps is not None:
        args.usage_error("give --nfe or --steps, not both")
    tune_options = {} if args.tune_evals is None else {"max_evals": args.tune_evals}
    try:
        model, x_T, source = _compare_problem(args)
        res = compare(model, x_T, solvers=args.solvers, nfe=args.nfe or DEFAULT_NFE, steps=args.steps,
                      grids=args.grids, seed=args.seed, n=args.n, dim=args.dim or 2, sde=args.sde or "vp",
                      progress=not args.no_progress, ref_steps=args.ref_steps, ref_tol=args.ref_tol,
                      tune_n=args.tune_n, tune_options=tune_options)
    except ValueError as err:
        args.usage_error(str(err))
    paths = res.save(args.out)
    meta = res.meta
    print(f"{source}; {meta['n']} rows x_T (seed {meta['seed']}), {meta['dtype']}")
    if args.full:
        print(res.table())  # ends with the reference line
    else:
        print(f"reference: {meta['reference']['method']}; its own error estimate "
              f"{meta['reference'].get('error_estimate', float('nan')):.2e}")
    for statistic in ("median", "p90", "rms"):
        print()
        print(res.leaderboard(statistic=statistic).table())
    if meta.get("flipped"):
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
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--grid", default="logsnr", help="uniform | quadratic | logsnr | karras")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=None, help="class to sample (class-conditional checkpoints)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w (with --label)")
    p.add_argument("--denoise", action="store_true", help="finish with the jump to t = 0")
    p.add_argument("--out", default="samples.png", help="PNG to write (a grid for images, a scatter for 2-D)")
    p.add_argument("--save", default=None, help="also write the samples to this .safetensors file")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small tensors)")


def _event_shape(config: dict, where) -> tuple:
    """The shape of one sample, from what a checkpoint records about its data and net."""
    data, net = config.get("data") or {}, config["net"]
    if "shape" in data:
        return tuple(data["shape"])
    if net.get("type") == "MLP":
        return (int(net["dim"]),)
    if data.get("name") == "digits":
        return (1, 8, 8)
    raise SystemExit(f"checkpoint {where} does not record the shape of its data")


def _run_sample(args) -> int:
    import time

    import torch

    from . import GaussianMixture, VPSDE
    from .parameterization import ClassifierFreeGuidance, ScoreModel
    from .plotting import save_samples
    from .solvers import sample

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
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
                raise SystemExit("--label needs a class-conditional checkpoint")
            if not 0 <= args.label < num_classes:
                raise SystemExit(f"--label must lie in [0, {num_classes - 1}]")
            labels = torch.full((args.n,), args.label, dtype=torch.long)
            net = ClassifierFreeGuidance(model.net, labels, num_classes, weight=args.guidance)
            model = ScoreModel(net, model.sde, model.prediction)
            title += f", class {args.label}, w = {args.guidance}"
    x_T = model.sde.prior_sample((args.n, *shape), generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        sol = sample(model, x_T, args.solver, args.steps, grid=args.grid, generator=args.seed,
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
