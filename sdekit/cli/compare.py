"""``sdekit compare``: solver accuracy against NFE on an exact Gaussian-mixture score or a checkpoint
(leaderboard; results.json, results.csv, error_vs_nfe.png)."""
from __future__ import annotations

import sys

from ..sde import SDE_NAMES
from ..solvers.grids import MAX_STEPS
from ..validate import writable_dir
from .common import MAX_ROWS, SEED, THREADS_ARG, event_shape, int_arg, int_list, name_list, real_arg

__all__ = ["add_parser", "run"]

MAX_TUNE_EVALS = 100_000


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="solver accuracy against NFE on an exact Gaussian-mixture score or a checkpoint "
                       "(leaderboard; results.json, results.csv, error_vs_nfe.png)")
    p.add_argument("--solvers", type=name_list, default=None,
                   help="comma-separated solver names (default: every deterministic fixed-step solver; stochastic "
                   "ones, e.g. dpmpp_2m_sde,euler_ancestral, are measured by their law and pathwise error)")
    p.add_argument("--nfe", type=int_list, default=None,
                   help="NFE budgets, turned into per-solver step counts (default 5,10,15,20,30,50,100)")
    p.add_argument("--steps", type=int_list, default=None, help="raw step counts for every solver (instead of --nfe)")
    p.add_argument("--grids", type=name_list, default="logsnr,quadratic,uniform,karras,kl_optimal",
                   help="comma-separated time grids (uniform, quadratic, logsnr, karras, kl_optimal; fitted to the "
                   "model for each solver and step count, on prior draws independent of x_T, with their one-time "
                   "cost: tuned (sdekit.tune), gits (GITS), ays (Align Your Steps))")
    p.add_argument("--dim", type=int_arg("--dim", 1, 4096), default=None, help="dimension of the built-in Gaussian mixture (2)")
    p.add_argument("--n", type=int_arg("--n", 1, MAX_ROWS), default=512, help="number of starting points x_T")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--sde", default=None, choices=tuple(SDE_NAMES), help="SDE of the built-in mixture (vp)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="compare on a trained checkpoint (x_T from its prior) against a dopri5 reference of it")
    p.add_argument("--ref-steps", type=int_arg("--ref-steps", 1, MAX_STEPS), default=2000,
                   help="RK4 steps of the float64 mixture reference, and steps of each stochastic solver's "
                   "same-path reference")
    p.add_argument("--no-pathwise", action="store_true",
                   help="stochastic solvers: skip the pathwise error (and its fine same-path reference solves)")
    p.add_argument("--ref-tol", type=real_arg("--ref-tol", 0.0, 1.0, lo_open=True), default=1e-10,
                   help="dopri5 rtol = atol of the --checkpoint reference")
    p.add_argument("--tune-n", type=int_arg("--tune-n", 1, MAX_ROWS), default=256,
                   help="with --grids ...,tuned: prior rows per tuning draw")
    p.add_argument("--tune-evals", type=int_arg("--tune-evals", 1, MAX_TUNE_EVALS), default=None,
                   help="with --grids ...,tuned: optimiser solves per grid")
    p.add_argument("--search-n", type=int_arg("--search-n", 1, MAX_ROWS), default=None,
                   help="with --grids ...,gits or ays: prior rows of their teacher draw (default 64)")
    p.add_argument("--out", default="sdekit-compare", help="output directory (default ./sdekit-compare)")
    p.add_argument("--full", "--verbose", dest="full", action="store_true", help="also print every row")
    p.add_argument("--threads", type=THREADS_ARG, default=1, help="torch threads (default 1: small tensors)")
    p.add_argument("--no-progress", action="store_true")


def _compare_problem(args):
    """(model, x_T, description): a checkpoint in float64 with seeded x_T from its prior, or (None, None,
    ...) for the built-in mixture, which ``compare`` builds itself."""
    import torch

    if args.checkpoint is None:
        return None, None, f"GaussianMixture.default(dim={args.dim or 2}) exact score, {args.sde or 'vp'} SDE"
    if args.dim is not None or args.sde is not None:
        raise ValueError("--dim and --sde come from the checkpoint; drop them with --checkpoint")
    from ..checkpoint import load_model

    model, config = load_model(args.checkpoint)
    model.net.to(torch.float64)  # the reference and the compared solves run in float64
    shape = event_shape(config, args.checkpoint)
    x_T = model.sde.prior_sample((args.n, *shape), generator=torch.Generator().manual_seed(args.seed),
                                 dtype=torch.float64)
    return model, x_T, f"{args.checkpoint} ({config.get('prediction')} prediction, step {config.get('step')})"


def run(args) -> int:
    import math

    import torch

    from ..compare import DEFAULT_NFE, SLICED, compare

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nfe is not None and args.steps is not None:
        raise ValueError("give --nfe or --steps, not both")
    writable_dir(args.out, "--out")  # before the work, not after it
    tune_options = {} if args.tune_evals is None else {"max_evals": args.tune_evals}
    search = {} if args.search_n is None else {"n": args.search_n}
    model, x_T, source = _compare_problem(args)
    res = compare(model, x_T, solvers=args.solvers, nfe=args.nfe or DEFAULT_NFE, steps=args.steps,
                  grids=args.grids, seed=args.seed, n=args.n, dim=args.dim or 2, sde=args.sde or "vp",
                  progress=not args.no_progress, ref_steps=args.ref_steps, ref_tol=args.ref_tol,
                  tune_n=args.tune_n, tune_options=tune_options, pathwise=not args.no_pathwise,
                  search_options={"gits": search, "ays": search})
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
