"""The training-loss figure: per-step loss (light) and its running mean, as PNG bytes or an atomically written file."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

__all__ = ["loss_plot_png", "plot_losses"]


def _loss_figure(losses, smooth: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    y = torch.tensor(losses, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(y) + 1), y.numpy(), lw=0.5, alpha=0.35, label="loss")
    k = max(1, min(smooth, len(y)))
    if len(y) >= 2:
        run = torch.nn.functional.avg_pool1d(y[None, None], k, stride=1).flatten()
        ax.plot(range(k, len(y) + 1), run.numpy(), lw=1.5, label=f"mean of {k}")
    if len(y) and float(y.min()) > 0 and float(y.max()) / float(y.min()) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss")
    ax.legend()
    fig.tight_layout()
    return fig, plt


def loss_plot_png(losses, smooth: int = 50) -> bytes:
    """The PNG bytes of ``plot_losses``'s figure (a checkpoint stores it as loss.png)."""
    fig, plt = _loss_figure(losses, smooth)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()


def plot_losses(losses, path, smooth: int = 50) -> Path:
    """Write a PNG of the per-step loss (light) and its running mean over ``smooth`` steps
    (atomically: a uniquely named temporary file beside it, then a rename)."""
    import tempfile

    path = Path(path)
    data = loss_plot_png(losses, smooth)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
