"""Pictures of samples: a grid of images, or a scatter of 2-D points (over exact density contours)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

Tensor = torch.Tensor

__all__ = ["save_samples", "image_grid", "scatter", "save_figure", "figure_module"]


def figure_module():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 100, rect=None) -> Path:
    """Lay out, write and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def image_grid(x: Tensor, path, value_range=(-1.0, 1.0), title: str = "", ncol: Optional[int] = None) -> Path:
    """(N, C, H, W) images in ``value_range`` as one PNG grid (grey for C = 1, RGB for C = 3)."""
    plt = figure_module()
    n = x.shape[0]
    ncol = ncol or int(n**0.5 + 0.999)
    nrow = (n + ncol - 1) // ncol
    lo, hi = value_range
    imgs = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.9, nrow * 0.9 + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = imgs[k]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def scatter(x: Tensor, path, density=None, title: str = "") -> Path:
    """(N, 2) points; ``density`` (callable (M, 2) float64 -> (M,) log-density) draws log-density contours beneath."""
    plt = figure_module()
    pts = x.detach().double().cpu()
    fig, ax = plt.subplots(figsize=(5, 5))
    lo = pts.min(0).values - 0.5
    hi = pts.max(0).values + 0.5
    if density is not None:
        gx = torch.linspace(float(lo[0]), float(hi[0]), 200, dtype=torch.float64)
        gy = torch.linspace(float(lo[1]), float(hi[1]), 200, dtype=torch.float64)
        X, Y = torch.meshgrid(gx, gy, indexing="xy")
        logp = density(torch.stack([X.reshape(-1), Y.reshape(-1)], 1)).reshape(X.shape)
        top = float(logp.max())
        levels = torch.linspace(top - 10, top, 11).tolist()  # log-density contours: sharp and broad modes alike
        ax.contour(X.numpy(), Y.numpy(), logp.numpy(), levels=levels, cmap="Blues", linewidths=0.7)
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=3, c="tab:red", alpha=0.6)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def save_samples(x: Tensor, path, density=None, title: str = "") -> Path:
    """A scatter plot for (N, 2) samples, an image grid for (N, C, H, W), else an error."""
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter(x, path, density=density, title=title)
    if x.ndim == 4:
        return image_grid(x, path, title=title)
    raise ValueError(f"can plot (N, 2) points or (N, C, H, W) images; got shape {tuple(x.shape)}")
