"""``sdekit likelihood``: log-likelihood of a built-in mixture (against its exact value) or of a checkpoint on
its data set (bits/dim for digits). Imports of torch and the library are local so ``sdekit --help`` stays fast."""
from __future__ import annotations

import argparse

from ..likelihood.config import ADAPTIVE_METHODS
from ..sde import SDE_NAMES, sde_from_name
from ..validate import INT64, ROWS, writable_file
from .common import THREADS_ARG, int_arg, real_arg

__all__ = ["add_parser", "run", "checkpoint_data"]

MAX_DIM = 4096  # --dim of the built-in mixture (as compare's)
MAX_PROBES = 4096
MAX_REPEATS = 1024
MAX_NFE = 10**9
MAX_QUAD_TOL = 1e3  # nats


def _method(text: str) -> str:
    """--method: an adaptive method (the command has no step size to give a fixed-step one)."""
    if text not in ADAPTIVE_METHODS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an adaptive method; the command chooses its steps by rtol/atol and has no step size "
            f"for a fixed-step one (use sdekit.log_likelihood(..., method=..., step_size=h) for that). "
            f"Choose from {', '.join(ADAPTIVE_METHODS)}")
    return text


def add_parser(sub) -> None:
    p = sub.add_parser(
        "likelihood",
        help="log-likelihood through the probability-flow ODE (default: a built-in Gaussian mixture, vs the exact value)",
    )
    p.add_argument("--sde", default="vp", choices=tuple(SDE_NAMES))
    p.add_argument("--dim", type=int_arg("--dim", 1, MAX_DIM), default=2, help="mixture dimension (GaussianMixture.default(dim))")
    p.add_argument("--n", type=int_arg("--n", *ROWS), default=None,
                   help="rows to score: default 8 exact samples of the mixture, or the whole split of --checkpoint")
    p.add_argument("--divergence", default="auto", choices=("auto", "exact", "hutchinson"),
                   help="auto: exact for the mixture; for --checkpoint by cost (D <= 2 K: exact, else K-probe "
                        "Hutchinson; see sdekit.likelihood.choose_divergence)")
    p.add_argument("--probes", type=int_arg("--probes", 1, MAX_PROBES), default=None,
                   help="Hutchinson probes carried in one solve (default 1; with --checkpoint 1 per draw with "
                        "--dequantize, else 2)")
    p.add_argument("--noise", default="rademacher", choices=("rademacher", "gaussian"))
    p.add_argument("--method", type=_method, default="dopri5",
                   help=f"adaptive ODE method: {', '.join(ADAPTIVE_METHODS)}")
    p.add_argument("--rtol", type=real_arg("--rtol", 0.0, 1.0, lo_open=True), default=None,
                   help="default 1e-5 for the mixture, sdekit.likelihood.DATASET_TOL (1e-3) for --checkpoint")
    p.add_argument("--atol", type=real_arg("--atol", 0.0, 1.0, lo_open=True), default=None, help="as --rtol")
    p.add_argument("--time-variable", default=None, choices=("auto", "t", "log_snr"),
                   help="integration variable (default auto: log-SNR for a DDPM table, t otherwise)")
    p.add_argument("--max-nfe", type=int_arg("--max-nfe", 1, MAX_NFE), default=100_000, help="budget in network calls per solve")
    p.add_argument("--integrate", default="augmented", choices=("augmented", "quadrature"),
                   help="quadrature (exact divergence): solve the trajectory alone, then integrate each row's "
                        "divergence by adaptive quadrature (fewer trace evaluations)")
    p.add_argument("--quad-tol", type=real_arg("--quad-tol", 0.0, MAX_QUAD_TOL, lo_open=True), default=0.1,
                   help="with --integrate quadrature: tolerance (nats)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--prior", default="exact", choices=("exact", "sde"),
                   help="exact: the mixture's p_T as the prior; sde: the SDE's N(0, s^2 I), reporting the prior gap")
    p.add_argument("--dtype", default=None, choices=("float64", "float32"),
                   help="default: float64 for the built-in mixture, float32 (the weights' own) for --checkpoint")
    p.add_argument("--seed", type=int_arg("--seed", 0, INT64[1] - 1), default=0,
                   help="seeds the mixture, its samples (seed + 1), probes and dequantisation")
    p.add_argument("--threads", type=THREADS_ARG, default=1, help="torch threads (small solves run best on one)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="score a trained checkpoint on its data set instead of the built-in mixture")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="with --checkpoint: digits split; for a 2-D toy set, train = the training points, "
                        "test = a fresh draw (seed + 1)")
    p.add_argument("--dequantize", action="store_true",
                   help="digits: add u ~ U(-1/16, 1/16) per pixel (bits/dim is then an upper bound on the code length)")
    p.add_argument("--repeats", type=int_arg("--repeats", 1, MAX_REPEATS), default=None,
                   help="dequantization draws per image (with --dequantize; default 2, so the estimator's error "
                        "can be measured within each image)")
    p.add_argument("--batch", type=int_arg("--batch", *ROWS), default=None,
                   help="with --checkpoint: rows per ODE solve (default: all in one solve; the per-row step "
                        "controller holds every row to its own tolerance)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="with --checkpoint: write {bpd, bpd_se, se_data, se_estimator, n, seconds, per_image, ...}")


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
    """The one ``LikelihoodConfig`` of the mixture command. Raises ValueError on a bad setting."""
    from ..likelihood import LikelihoodConfig

    divergence = "exact" if args.divergence == "auto" else args.divergence
    return LikelihoodConfig(divergence=divergence, probes=args.probes or 1, noise=args.noise, seed=args.seed,
                            method=args.method, rtol=1e-5 if args.rtol is None else args.rtol,
                            atol=1e-5 if args.atol is None else args.atol, max_nfe=args.max_nfe,
                            time_variable=args.time_variable or "auto", integrate=args.integrate,
                            quad_tol=args.quad_tol, **data)


def run(args) -> int:
    import time

    import torch

    import sdekit

    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        return _run_likelihood_checkpoint(args)
    args.n = 8 if args.n is None else args.n
    if args.json is not None or args.batch is not None:
        raise ValueError("--json and --batch apply to --checkpoint")
    if args.dequantize or args.repeats not in (None, 1):
        raise ValueError("--dequantize / --repeats apply to --checkpoint on digits")
    model, x, exact_fn, exact_prior = _likelihood_problem(args)
    sde = model.sde
    prior = exact_prior if (args.prior == "exact" and exact_prior is not None) else None
    start = time.perf_counter()
    res = sdekit.log_likelihood(model, x, _likelihood_config(args), prior_log_prob=prior,
                                progress=not args.no_progress)  # input errors: sdekit.cli.main reports them
    elapsed = time.perf_counter() - start
    D = x[0].numel()
    cfg = res.stats
    print(f"{sde!r}  D={D}  n={x.shape[0]}  divergence={res.divergence}"
          + (f" (probes={res.probes}, {args.noise})" if res.divergence == "hutchinson" else "")
          + f"  {args.method} rtol={cfg['rtol']} atol={cfg['atol']}  prior={'exact p_T' if prior else 'SDE N(0, s^2 I)'}"
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


def checkpoint_data(config: dict, split: str, n, dtype):
    """(x, description, digits?) : n rows of a checkpoint's data set (all of them when n is None), evenly
    spread over the split (rows 0, s, 2s, ... with s = len // n, so a given n always picks the same rows)."""
    import torch

    from ..data import load_digits, toy_data

    data = config.get("data") or {}
    name = data.get("name")
    if name == "digits":
        x = load_digits(split).x
    elif name in ("moons", "checkerboard", "swissroll", "rings"):
        seed = int(data.get("seed", 0)) + (1 if split == "test" else 0)
        x = toy_data(name, int(data.get("n", 20000)), seed=seed)
    else:
        raise ValueError(f"the checkpoint's data set {name!r} is unknown (digits or a 2-D toy set)")
    n = x.shape[0] if n is None else n
    stride = max(1, x.shape[0] // n)
    idx = torch.arange(0, x.shape[0], stride)[:n]
    return x[idx].to(dtype), f"{name} {split}: {len(idx)} of {x.shape[0]} rows (stride {stride})", name == "digits"


def _run_likelihood_checkpoint(args) -> int:
    """Mean log-likelihood of a checkpoint on its data (``sdekit.likelihood.score_dataset``): bits/dim for digits
    (17 levels, x = k/8 - 1, bin width 1/8: bpd = -(log p(x) + 64 log(1/8)) / (64 log 2)), nats for 2-D toy
    sets, with the standard error split into the data's sampling error and the estimator's."""
    import json

    import torch

    from ..likelihood.dataset import score_dataset
    from ..checkpoint import load_model
    from ..data import DIGITS_SCALE
    from ..likelihood import LikelihoodConfig

    if args.json is not None:
        writable_file(args.json, "--json")  # now, not after the solve
    if args.repeats is not None and args.repeats > 1 and not args.dequantize:
        raise ValueError("--repeats > 1 needs --dequantize")
    model, config = load_model(args.checkpoint)
    args.dtype = args.dtype or "float32"
    dtype = getattr(torch, args.dtype)
    model.net.to(dtype)  # type: ignore[attr-defined]  # a checkpoint's net is a torch module
    x, desc, digits = checkpoint_data(config, args.split, args.n, dtype)
    if args.dequantize and not digits:
        raise ValueError("--dequantize applies to digits (discrete levels), not to a continuous 2-D toy set")
    # dequantisation (repeats draws per image) happens inside, in sdekit's one convention
    cfg = LikelihoodConfig(noise=args.noise, seed=args.seed, method=args.method, max_nfe=args.max_nfe,
                           integrate=args.integrate, quad_tol=args.quad_tol,
                           data_scale=DIGITS_SCALE if digits else None, dequantize=args.dequantize)
    score = score_dataset(model, x, cfg, divergence=args.divergence, probes=args.probes, repeats=args.repeats,
                          rtol=args.rtol, atol=args.atol, time_variable=args.time_variable, batch=args.batch,
                          progress=not args.no_progress)
    print(f"{args.checkpoint} ({config.get('prediction')} prediction, step {config.get('step')})  {desc}")
    print(f"divergence={score.divergence}" + (f" (probes={score.probes})" if score.divergence == "hutchinson" else "")
          + f" [{score.reason}]  {args.method} rtol={score.rtol} atol={score.atol} in {score.time_variable}"
          + f"  {args.dtype}"
          + (f"  dequantized, {score.repeats} draw(s) per image" if args.dequantize else "")
          + (f"  quadrature (quad_tol={args.quad_tol})" if args.integrate == "quadrature" else ""))

    _print_mean(args, score, digits, x[0].numel())
    print(f"NFE {score.nfe} ({score.solves} solve(s) of up to {args.batch or score.n} rows x {score.repeats} draw(s))  "
          f"time {score.seconds:.2f} s")
    if args.json is not None:
        out = {**score.to_json(), "checkpoint": str(args.checkpoint), "split": args.split, "data": desc,
               "dtype": args.dtype, "dequantize": args.dequantize, "method": args.method, "seed": args.seed}
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def _print_mean(args, score, digits: bool, D: int) -> None:
    """The data set's mean (bits/dim for digits, nats per point for a 2-D toy set) with its standard error
    and that error's split into the data's and the estimator's parts."""
    import math

    n = score.n
    def split(scale: float, unit: str) -> str:
        if not math.isfinite(score.se_estimator):
            return ("  [data vs estimator split not measurable with one draw and one probe: use --repeats >= 2 "
                    "or --probes >= 2]")
        return (f"  [data {score.se_data * scale:.4f}, estimator {score.se_estimator * scale:.4f} {unit}]")

    if digits:
        note = "" if args.dequantize else "  (on the level grid, no dequantization: not a bound on the code length)"
        print(f"bits/dim {score.bpd:.4f} +- {score.bpd_se:.4f} (standard error over {n} images){note}")
        print("standard error" + split(1.0, "bits/dim"))
    else:
        nats = D * math.log(2)  # bits/dim -> nats per point (continuous data: bpd = -log p / (D log 2))
        mean = float(score.per_image_log_prob.mean())
        print(f"log-likelihood {mean:.4f} +- {score.bpd_se * nats:.4f} nats per point (standard error over {n} "
              "points)")
        print("standard error" + split(nats, "nats"))
