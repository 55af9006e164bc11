"""Train a small U-Net on scikit-learn's 8x8 digits on CPU, then sample from it.

    python examples/train_digits.py --steps 1500 --out runs/digits

Writes the checkpoint (config.json + safetensors) and loss.png to --out, a grid of samples
(samples.png), and prints: training time, the last training losses, the held-out DSM loss of the
EMA model on the fixed test split, and a sanity measure for the samples: their mean distance to
the nearest training image, next to the same for real test digits (a good model comes close to
that figure; noise is far away; a memorising model would fall well below it).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sdekit
from sdekit.data import load_digits
from sdekit.losses import dsm_loss
from sdekit.nets import UNet
from sdekit.train import train


def heldout_loss(model, x, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(dsm_loss(model, x, generator=gen))


def nn_distance(x, ref):
    """Mean L2 distance (model space, 64 pixels in [-1, 1]) from each row of x to its nearest row of ref."""
    return float(torch.cdist(x.reshape(x.shape[0], -1), ref).min(1).values.mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default="runs/digits")
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a small shared CPU")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_set, test_set = load_digits("train"), load_digits("test")
    torch.manual_seed(args.seed)
    net = UNet(in_channels=1, base_channels=args.channels, channel_mult=(1, 2), num_res_blocks=1,
               attn_levels=(1,), dropout=0.0)
    sde = sdekit.VPSDE()
    t0 = time.perf_counter()
    trainer = train(net, sde, train_set.x, "eps", steps=args.steps, out_dir=args.out, resume=True,
                    batch_size=args.batch_size, lr=args.lr, warmup=100, ema_decay=0.995, seed=args.seed,
                    ckpt_every=500, meta={"name": "digits", **train_set.meta})
    wall = time.perf_counter() - t0
    last = trainer.losses[-100:]
    print(f"{trainer.step_count} steps, {sum(p.numel() for p in net.parameters()):,} parameters, "
          f"{wall:.0f} s wall this run ({trainer.seconds:.0f} s of training in total)")
    print(f"train loss (mean of last {len(last)} steps): {sum(last) / len(last):.4f}")
    ema = trainer.ema_model()
    untrained = sdekit.ScoreModel(UNet(**{k: v for k, v in net.config.items() if k != 'type'}).eval(), sde)
    print(f"held-out DSM loss (eps-MSE, t ~ U[eps, T]): EMA model {heldout_loss(ema, test_set.x):.4f}; "
          f"untrained net {heldout_loss(untrained, test_set.x):.4f}")

    sample = getattr(sdekit, "sample", None)
    if sample is None:
        try:
            from sdekit.solvers import sample
        except ImportError:
            print("sdekit.sample is not available yet: skipping sampling")
            return 0
    gen = torch.Generator().manual_seed(args.seed)
    x_T = sde.prior_sample((args.samples, 1, 8, 8), generator=gen)
    t0 = time.perf_counter()
    with torch.no_grad():
        sol = sample(ema, x_T, solver="dpmpp_2m", steps=25, denoise=True)
    x = sol.x.clamp(-1, 1)
    print(f"sampled {args.samples} digits with dpmpp_2m in {time.perf_counter() - t0:.1f} s ({sol.nfe} NFE)")

    ref = train_set.x.reshape(len(train_set), -1)
    print(f"mean distance to the nearest training image: samples {nn_distance(x, ref):.2f}, "
          f"real test digits {nn_distance(test_set.x, ref):.2f}, "
          f"prior noise clamped to [-1, 1] {nn_distance(x_T.clamp(-1, 1), ref):.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(args.samples**0.5)
    tiles = torch.nn.functional.pad(x[: n * n, 0], (1, 1, 1, 1), value=-1.0)  # 1-pixel blank border
    grid = tiles.reshape(n, n, 10, 10).permute(0, 2, 1, 3).reshape(n * 10, n * 10)
    grid = grid.repeat_interleave(6, 0).repeat_interleave(6, 1)  # upscale for viewing
    plt.imsave(Path(args.out) / "samples.png", grid.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    print(f"wrote {Path(args.out) / 'samples.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
