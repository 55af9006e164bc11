"""The ``sdekit`` command.

Each subcommand is a pair of functions here: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args)`` does the work by calling the library (imports are local so that ``sdekit --help``
stays fast). Register a new command by adding its pair to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys


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
_TRAIN_SDES = ("vp", "subvp", "ve", "cosine")


def _add_train(sub):
    p = sub.add_parser("train", help="train a score model by denoising score matching (checkpoint + loss plot)")
    p.add_argument("--data", required=True, choices=("moons", "checkerboard", "swissroll", "rings", "digits"))
    p.add_argument("--prediction", default="eps", choices=("eps", "score", "v", "x0"))
    p.add_argument("--sde", default="vp", choices=_TRAIN_SDES)
    p.add_argument("--weighting", default="simple", choices=("simple", "likelihood", "min_snr", "native"))
    p.add_argument("--steps", type=int, default=2000, help="total optimisation steps (including resumed ones)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 2e-3 toys, 1e-3 digits)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint directory (config.json, *.safetensors, loss.png)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out if there is one")
    p.add_argument("--channels", type=int, default=None, help="U-Net base width (32) / MLP width (128)")
    p.add_argument("--conditional", action="store_true", help="class-conditional net (null class for guidance)")
    p.add_argument("--sigma-max", type=float, default=None, help="VE only (default 10 toys, 20 digits)")
    p.add_argument("--n-points", type=int, default=20000, help="size of a toy training set")
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 for toys)")
    p.add_argument("--no-progress", action="store_true")


def _run_train(args) -> int:
    import torch

    import sdekit
    from sdekit.data import load_dataset
    from sdekit.nets import MLP, UNet
    from sdekit.train import train

    digits = args.data == "digits"
    threads = args.threads if args.threads is not None else (None if digits else 1)
    if threads:
        torch.set_num_threads(threads)
    ds = load_dataset(args.data, n=args.n_points, seed=args.seed)
    if args.sde == "vp":
        sde = sdekit.VPSDE()
    elif args.sde == "subvp":
        sde = sdekit.SubVPSDE()
    elif args.sde == "cosine":
        sde = sdekit.CosineVPSDE()
    else:
        sde = sdekit.VESDE(sigma_min=0.01, sigma_max=args.sigma_max or (20.0 if digits else 10.0))
    num_classes = ds.num_classes if args.conditional else None
    torch.manual_seed(args.seed)
    if digits:
        net = UNet(in_channels=1, base_channels=args.channels or 32, channel_mult=(1, 2, 2), num_res_blocks=1,
                   attn_levels=(1,), num_classes=num_classes)
    else:
        net = MLP(dim=2, width=args.channels or 128, depth=3, num_classes=num_classes)
    lr = args.lr if args.lr is not None else (1e-3 if digits else 2e-3)
    trainer = train(net, sde, ds.x, args.prediction, steps=args.steps, out_dir=args.out, resume=args.resume,
                    y=ds.y, progress=not args.no_progress, ckpt_every=args.ckpt_every,
                    batch_size=args.batch_size, lr=lr, weighting=args.weighting, ema_decay=args.ema_decay,
                    grad_clip=args.grad_clip, warmup=args.warmup, seed=args.seed,
                    meta={"name": ds.name, **ds.meta})
    recent = trainer.losses[-100:]
    mean = sum(recent) / len(recent) if recent else float("nan")
    print(f"step {trainer.step_count}: mean loss of the last {len(recent)} steps {mean:.4f}; "
          f"{trainer.seconds:.1f} s of training; checkpoint in {args.out}")
    return 0


COMMANDS = {
    "info": (_add_info, _run_info),
    "train": (_add_train, _run_train),
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
