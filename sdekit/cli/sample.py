"""``sdekit sample``: draw samples from a checkpoint (or the built-in mixture) and plot them."""
from __future__ import annotations

from ..checkpoint import LIMITS
from ..solvers.grids import MAX_STEPS
from ..validate import integer, writable_file
from .common import MAX_ROWS, MAX_SCALE, SEED, THREADS_ARG, event_shape, int_arg, real_arg

__all__ = ["add_parser", "run"]

MAX_SAMPLE_NUMEL = 1 << 28  # --n times the numbers in one sample (1 GiB of float32)


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a checkpoint (or the built-in mixture) and plot them")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory from `sdekit train`; default: the built-in 2-D Gaussian mixture with exact score")
    p.add_argument("--solver", default="dpmpp_2m", help="a name from `sdekit info` (default dpmpp_2m)")
    p.add_argument("--steps", type=int_arg("--steps", 1, MAX_STEPS), default=20)
    p.add_argument("--grid", default="logsnr", help="uniform | quadratic | logsnr | karras")
    p.add_argument("--n", type=int_arg("--n", 1, MAX_ROWS), default=64,
                   help="number of samples (row i is the same for any --n > i)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--label", type=int_arg("--label", 0, LIMITS["classes"] - 1), default=None,
                   help="class to sample (class-conditional checkpoints)")
    p.add_argument("--guidance", type=real_arg("--guidance", -MAX_SCALE, MAX_SCALE), default=0.0,
                   help="classifier-free guidance weight w (with --label)")
    p.add_argument("--denoise", action="store_true", help="finish with the jump to t = 0")
    p.add_argument("--noise", choices=("path", "step"), default="path",
                   help="stochastic solvers: the rows' Brownian-path increments (default; more steps refine the "
                        "same path) or a fresh Gaussian per step (faster)")
    p.add_argument("--out", default="samples.png", help="PNG to write (a grid for images, a scatter for 2-D)")
    p.add_argument("--save", default=None, help="also write the samples to this .safetensors file")
    p.add_argument("--threads", type=THREADS_ARG, default=1, help="torch threads (default 1: small tensors)")


_X_T_STREAM = 0  # RowNoise.randn stream of sample's x_T (the solver's noise uses randn_like: other streams)


def _image_formats() -> set:
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def run(args) -> int:
    import math
    import time

    import torch

    from .. import VPSDE, GaussianMixture
    from ..noise import RowNoise
    from ..parameterization import ClassifierFreeGuidance, ScoreModel
    from ..plotting import save_samples
    from ..solvers import sample

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
        from ..checkpoint import load_model

        model, config = load_model(args.checkpoint)
        shape = event_shape(config, args.checkpoint)
        title = f"{args.checkpoint}"
        num_classes = config["net"].get("num_classes")
        if args.label is not None:
            if num_classes is None:
                raise ValueError("--label needs a class-conditional checkpoint")
            integer("--label", args.label, 0, num_classes - 1)  # the checkpoint's classes
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
