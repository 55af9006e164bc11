"""``sdekit train``: train a score model by denoising score matching (checkpoint + loss plot).

Settings default to None: a resumed run takes them from its checkpoint and refuses a given one that
differs; a new run fills in the defaults named in the help. Bad input raises ValueError (``sdekit.cli.main``
reports it as one "sdekit train: error: ..." line, exit code 2).
"""
from __future__ import annotations

from typing import Optional

from ..checkpoint import LIMITS
from ..data import MAX_TOY_POINTS
from ..sde import PATH_NAMES, SDE_NAMES, LinearSDE, path_from_name, sde_from_name
from ..validate import INT64, arg, fraction, integer, writable_dir
from .common import MAX_SCALE, SEED, THREADS_ARG, int_arg, real_arg

__all__ = ["add_parser", "run"]

_VE_SIGMA_MIN = 0.01  # sdekit train --sde ve
_TOY_N_POINTS = 20000  # sdekit train --n-points
# upper ends of the flags that have no natural one: far beyond any useful value, small enough that a typo is
# refused at once instead of running for years (train --steps 10^12) or overflowing (1e300)
MAX_TRAIN_STEPS = 10**9
MAX_SIGMA = 1e5  # --sigma-max of a VE SDE
MAX_LR = 10.0
MAX_GRAD_CLIP = 1e6
MAX_CHANNELS = 1024


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a score model by denoising score matching (checkpoint + loss plot)")
    p.add_argument("--data", required=True, choices=("moons", "checkerboard", "swissroll", "rings", "digits"))
    # settings default to None: a resumed run takes them from its checkpoint, and any given one that
    # differs is refused; a new run fills in the defaults named in the help
    p.add_argument("--prediction", default=None, choices=("eps", "score", "v", "x0", "velocity"),
                   help="default eps (velocity with --path)")
    p.add_argument("--sde", default=None, choices=tuple(SDE_NAMES), help="default vp")
    p.add_argument("--path", default=None, choices=tuple(PATH_NAMES),
                   help="a flow-matching path instead of an SDE (alpha(1) = 0), e.g. rectified_flow")
    p.add_argument("--shift", type=real_arg("--shift", 0.0, MAX_SCALE, lo_open=True), default=None,
                   help="with --path: SD3 time shift of the path (TimeShift)")
    p.add_argument("--weighting", default=None,
                   choices=("simple", "likelihood", "min_snr", "native", "flow_matching"),
                   help="default simple (flow_matching with --path)")
    p.add_argument("--time-sampling", default=None, choices=("uniform", "logit_normal"),
                   help="training times: uniform (default) or SD3's logit-normal")
    p.add_argument("--steps", type=int_arg("--steps", 0, MAX_TRAIN_STEPS), default=2000,
                   help="total optimisation steps (including resumed ones)")
    p.add_argument("--batch-size", type=int_arg("--batch-size", 1, LIMITS["batch_size"]), default=None, help="default 128")
    p.add_argument("--lr", type=real_arg("--lr", 0.0, MAX_LR, lo_open=True), default=None,
                   help="AdamW learning rate (default 2e-3 toys, 1e-3 digits)")
    p.add_argument("--ema-decay", type=arg(fraction, "--ema-decay"), default=None, help="in [0, 1]; default 0.999")
    p.add_argument("--grad-clip", type=real_arg("--grad-clip", 0.0, MAX_GRAD_CLIP), default=None,
                   help="0: no clipping; default 1.0")
    p.add_argument("--warmup", type=int_arg("--warmup", 0, MAX_TRAIN_STEPS), default=None, help="default 100")
    p.add_argument("--seed", type=SEED, default=None,
                   help="data and training seed (default 0; a resume takes the checkpoint's)")
    p.add_argument("--out", required=True, help="checkpoint directory (config.json, *.safetensors, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out if there is one")
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in --out (a new run)")
    p.add_argument("--channels", type=int_arg("--channels", 1, MAX_CHANNELS), default=None,
                   help="U-Net base width (32, even) / MLP width (128)")
    p.add_argument("--conditional", action="store_true", help="class-conditional net (null class for guidance)")
    p.add_argument("--sigma-max", type=real_arg("--sigma-max", _VE_SIGMA_MIN, MAX_SIGMA, lo_open=True), default=None,
                   help="VE only (default 10 toys, 20 digits)")
    p.add_argument("--n-points", type=int_arg("--n-points", 1, MAX_TOY_POINTS), default=None,
                   help=f"size of a toy training set (default {_TOY_N_POINTS}; a resume takes the checkpoint's)")
    p.add_argument("--ckpt-every", type=int_arg("--ckpt-every", 1, MAX_TRAIN_STEPS), default=None,
                   help="also checkpoint every N steps")
    p.add_argument("--threads", type=THREADS_ARG, default=None, help="torch threads (default 1 for toys)")
    p.add_argument("--no-progress", action="store_true")


_TRAIN_DEFAULTS = {"batch_size": 128, "weighting": "simple", "ema_decay": 0.999, "grad_clip": 1.0, "warmup": 100}


def _resumed_data(args) -> Optional[dict]:
    """The data description recorded by the checkpoint this run resumes, or None for a new run. A resume
    on another data set is a usage error."""
    from ..checkpoint import checkpoint_id, read_config

    if not (args.resume and checkpoint_id(args.out) is not None):
        return None
    try:
        stored = read_config(args.out).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return {}  # load_model / Trainer.resume report a corrupt file precisely
    if not isinstance(stored, dict):
        return {}
    if stored.get("name") is not None and stored.get("name") != args.data:
        raise ValueError(f"{args.out} was trained on {stored['name']!r}, not {args.data!r}; use another --out or the "
                         "same --data")
    return stored


def _train_data(args, stored: Optional[dict]):
    """(data set, seed) of the run. A new run takes --n-points and --seed (defaults 20000 and 0); a resume
    rebuilds the checkpoint's own training set from what its config records, and refuses a given flag
    that differs from it (the data would differ from the one the optimizer state was trained on)."""
    from ..data import load_dataset

    n, seed = args.n_points, args.seed
    if args.data == "digits" and n is not None:
        raise ValueError("--n-points sets the size of a toy set; the digits are a fixed set")
    if stored is not None:
        for flag, given, key in (("--n-points", n, "n"), ("--seed", seed, "seed")):
            recorded = stored.get(key)
            if given is not None and recorded is not None and given != recorded:
                raise ValueError(f"{flag} {given} differs from the {key} = {recorded} that {args.out} was trained "
                                 f"with; a resume continues on the checkpoint's own data: drop {flag} (or give "
                                 f"{recorded}), or start a new run (another --out, or --force)")
        n = stored.get("n") if n is None else n
        seed = stored.get("seed") if seed is None else seed
        if args.data != "digits" and (n is None or seed is None):
            raise ValueError(f"{args.out} does not record the size and seed of its training set; give --n-points "
                             "and --seed as in the original run")
    n = _TOY_N_POINTS if n is None else n
    seed = 0 if seed is None else seed
    try:
        n, seed = integer("--n-points", n, 1, MAX_TOY_POINTS), integer("--seed", seed, *INT64)
    except ValueError as err:  # a recorded value out of range: the config was edited
        raise ValueError(f"{args.out}: {err}") from None
    return load_dataset(args.data, n=n, seed=seed), seed


def _train_model(args, resuming: bool, ds, seed: int, hparams: dict):
    """(net, sde) for the run: built from the flags for a new run; for a resume, only what a flag names
    (None otherwise: train takes it from the checkpoint and refuses a given one that differs)."""
    import torch

    from ..nets import MLP, UNet

    digits = args.data == "digits"
    net: torch.nn.Module | None = None
    sde: LinearSDE | None = None
    if args.path is not None and args.sde is not None:
        raise ValueError("give --sde or --path, not both")
    if args.shift is not None and args.path is None:
        raise ValueError("--shift applies to a --path")
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
            raise ValueError(f"argument --channels: the U-Net's base width must be even; got {args.channels}")
        num_classes = ds.num_classes if args.conditional else None
        torch.manual_seed(seed)
        if digits:
            net = UNet(in_channels=1, base_channels=args.channels or 32, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attn_levels=(1,), num_classes=num_classes)
        else:
            net = MLP(dim=2, width=args.channels or 128, depth=3, num_classes=num_classes)
    return net, sde


def run(args) -> int:
    import contextlib

    from ..checkpoint import claim
    from ..distributed import init_process_group

    writable_dir(args.out, "--out", whole=True)
    rank, world = init_process_group()  # under torchrun: DistributedDataParallel over the ranks
    # one run per --out, claimed before any work (rank 0 writes the checkpoints, so rank 0 claims)
    with claim(args.out) if rank == 0 else contextlib.nullcontext():
        return _train_claimed(args, rank, world)


def _train_claimed(args, rank: int, world: int) -> int:
    import torch

    from ..train import train

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
    # bad settings, a checkpoint in the way, a resume that conflicts: ValueError, reported by sdekit.cli.main
    trainer = train(net, sde, ds.x, args.prediction, steps=args.steps, out_dir=args.out, resume=args.resume,
                    y=ds.y, progress=not args.no_progress, ckpt_every=args.ckpt_every, overwrite=args.force,
                    meta={"name": ds.name, **ds.meta}, **hparams)
    recent = trainer.losses[-100:]
    mean = sum(recent) / len(recent) if recent else float("nan")
    if rank == 0:
        print(f"step {trainer.step_count}: mean loss of the last {len(recent)} steps {mean:.4f}; "
              f"{trainer.seconds:.1f} s of training; checkpoint in {args.out}"
              + (f" ({world} ranks, DistributedDataParallel)" if world > 1 else ""))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0
