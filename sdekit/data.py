"""Data: 2-D toy sets generated from a seed, and scikit-learn's bundled 8x8 digits.

Toy sets (``toy_data(name, n, seed)``), all roughly zero-mean with coordinates in about [-3, 3]:
    moons         two interleaved half circles (label: which moon), Gaussian noise ``noise``;
    checkerboard  uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2 (label: square 0..7);
    swissroll     r = theta / (1.5 pi) over theta in [1.5 pi, 4.5 pi], (r cos theta, r sin theta) + noise
                  (label: which of 3 equal arcs of theta);
    rings         a Gaussian mixture: 8 modes on a circle of radius 2 and 4 on radius 1, std 0.08
                  (label: the mode); ``rings_mixture()`` is the exact ``GaussianMixture``, so trained
                  models can be scored against ground truth.

Digits (``load_digits(split)``): the 1797 8x8 images of scikit-learn (no download: they ship with
the package). Pixels are integer levels k in {0, ..., 16} (17 grey levels), mapped to model space by
    x = k / 8 - 1        (``DIGITS_SCALE`` = 1/8, ``DIGITS_OFFSET`` = -1; k = 0 -> -1, k = 16 -> +1),
so one level is a bin of width 1/8 in model space. For bits/dim of a continuous density p over
D = 64 pixels, the discrete probability of a bin is about p(x) (1/8)^D, hence
    bpd = (-log p(x) / D + log 8) / log 2,
and uniform dequantization adds u ~ U(-1/16, 1/16) per pixel (``dequantize``), which makes that
bound exact in expectation (Theis et al. 2016). That is sdekit's one dequantisation convention: a value
stands for the bin of its width centred on it (``sdekit.likelihood`` and the CLI use the same function).
``Dataset.meta`` carries these numbers.
The train/test split is fixed and RNG-free: image i is in the test split iff i % 6 == 5
(1498 train, 299 test).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .validate import INT64, integer

Tensor = torch.Tensor

__all__ = ["TOY_SETS", "toy_data", "rings_mixture", "load_digits", "load_dataset", "dequantize", "Dataset",
           "DIGITS_LEVELS", "DIGITS_SCALE", "DIGITS_OFFSET"]

TOY_SETS = ("moons", "checkerboard", "swissroll", "rings")
DIGITS_LEVELS = 17
DIGITS_SCALE = 1.0 / 8.0
DIGITS_OFFSET = -1.0


@dataclass
class Dataset:
    """x: (N, *event_shape) float32; y: (N,) int64 labels or None; num_classes; meta: a JSON-able dict."""
    x: Tensor
    y: Optional[Tensor]
    num_classes: Optional[int]
    name: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x.shape[0]


def _moons(n, gen, noise):
    n1 = n // 2
    n2 = n - n1
    a1 = torch.rand(n1, generator=gen, dtype=torch.float64) * math.pi
    a2 = torch.rand(n2, generator=gen, dtype=torch.float64) * math.pi
    m1 = torch.stack([torch.cos(a1), torch.sin(a1)], 1)
    m2 = torch.stack([1 - torch.cos(a2), 0.5 - torch.sin(a2)], 1)
    x = torch.cat([m1, m2]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = 1.5 * (x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64))
    y = torch.cat([torch.zeros(n1, dtype=torch.long), torch.ones(n2, dtype=torch.long)])
    perm = torch.randperm(n, generator=gen)
    return x[perm], y[perm]


def _checkerboard(n, gen):
    # 8 dark squares of a 4x4 board of unit squares on [-2, 2]^2: (i + j) even
    squares = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)
    y = torch.randint(0, 8, (n,), generator=gen)
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    return squares[y] + u - 2.0, y


def _swissroll(n, gen, noise):
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    theta = 1.5 * math.pi * (1 + 2 * u)
    r = theta / (1.5 * math.pi)
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = (u * 3).floor().long().clamp(max=2)
    return x, y


def rings_mixture():
    """The exact ``GaussianMixture`` behind the ``rings`` toy set (12 equal-weight modes)."""
    from .ground_truth import GaussianMixture

    outer = [(2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8)) for k in range(8)]
    inner = [(math.cos(2 * math.pi * (k + 0.5) / 4), math.sin(2 * math.pi * (k + 0.5) / 4)) for k in range(4)]
    means = torch.tensor(outer + inner, dtype=torch.float64)
    return GaussianMixture(torch.ones(12), means, 0.08)


def _rings(n, gen):
    gm = rings_mixture()
    y = torch.multinomial(gm.weights, n, replacement=True, generator=gen)
    x = gm.means[y] + gm.stds[y] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x, y


MAX_TOY_POINTS = 10_000_000  # 160 MB of float64 points: a bound on what a typo in n can allocate
_NUM_CLASSES = {"moons": 2, "checkerboard": 8, "swissroll": 3, "rings": 12}


def toy_data(name: str, n: int, seed: int = 0, labels: bool = False, noise: float = 0.05,
             dtype=torch.float32):
    """n points of a 2-D toy set, shape (n, 2); with ``labels=True`` returns (x, y), y (n,) int64.

    The same (name, n, seed, noise) always gives the same points.
    """
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy set {name!r}; accepted: {', '.join(TOY_SETS)}")
    n = integer("n", n, 1, MAX_TOY_POINTS)
    gen = torch.Generator().manual_seed(integer("seed", seed, *INT64))
    if name == "moons":
        x, y = _moons(n, gen, noise)
    elif name == "checkerboard":
        x, y = _checkerboard(n, gen)
    elif name == "swissroll":
        x, y = _swissroll(n, gen, noise)
    else:
        x, y = _rings(n, gen)
    x = x.to(dtype)
    return (x, y) if labels else x


def load_digits(split: str = "train", dtype=torch.float32) -> Dataset:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) tensors in [-1, 1] with labels 0..9.

    split: "train" (1498 images), "test" (299) or "all" (1797); see the module docstring for the
    level-to-model-space map and the bits/dim conversion stored in ``meta``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; accepted: train, test, all")
    from sklearn.datasets import load_digits as _sk_load

    d = _sk_load()
    levels = torch.as_tensor(d.images, dtype=torch.float64)  # (1797, 8, 8), integers 0..16
    labels = torch.as_tensor(d.target, dtype=torch.long)
    idx = torch.arange(levels.shape[0])
    if split == "train":
        keep = idx % 6 != 5
    elif split == "test":
        keep = idx % 6 == 5
    else:
        keep = torch.ones_like(idx, dtype=torch.bool)
    x = (levels[keep] * DIGITS_SCALE + DIGITS_OFFSET).unsqueeze(1).to(dtype)
    meta = {
        "levels": DIGITS_LEVELS, "scale": DIGITS_SCALE, "offset": DIGITS_OFFSET, "bin_width": DIGITS_SCALE,
        "dim": 64, "split": split,
        "bpd_note": "bpd = (-log p(x)/dim + log(1/bin_width)) / log 2; x = scale * level + offset",
    }
    return Dataset(x=x, y=labels[keep], num_classes=10, name="digits", meta=meta)


def dequantize(x: Tensor, bin_width: float = DIGITS_SCALE, generator: Optional[torch.Generator] = None, *,
               offsets: Optional[Tensor] = None) -> Tensor:
    """Uniform dequantization, sdekit's one convention: a value x stands for the bin [x - w/2, x + w/2) of
    width w = ``bin_width`` centred on it, and v = x + w (delta - 1/2) with delta ~ U[0, 1) per entry, drawn
    from ``generator`` or given as ``offsets`` (any tensor broadcasting against x, values in [0, 1))."""
    if offsets is None:
        offsets = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + bin_width * (offsets - 0.5)


def load_dataset(name: str, n: int = 20000, seed: int = 0, split: str = "train") -> Dataset:
    """A ``Dataset`` by name: a toy set (n points from ``seed``) or "digits" (``split``)."""
    if name == "digits":
        return load_digits(split)
    if name not in TOY_SETS:
        raise ValueError(f"unknown data set {name!r}; accepted: {', '.join(TOY_SETS + ('digits',))}")
    x, y = toy_data(name, n, seed=seed, labels=True)
    return Dataset(x=x, y=y, num_classes=_NUM_CLASSES[name], name=name, meta={"dim": 2, "n": n, "seed": seed})
