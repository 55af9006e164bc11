"""Sharding sampling and likelihood evaluation over torch.distributed ranks.

Rows are cut into fixed chunks of ``chunk_size`` rows; chunk k goes to rank k mod world_size and is
solved on its own with noise seeded per row (``row_offset`` = its first row). A chunk's numbers
therefore depend only on its rows and the seed, never on the world size: 1, 2 or 8 processes give
the same result as one process with the same ``chunk_size`` (adaptive solvers choose their steps per
chunk, so this holds for them too). Results are gathered on rank 0 in row order; other ranks get None.
Ranks never synchronise inside a solve, so adaptive solves that take different step counts cannot
hang each other; the only collective is the final gather.

Launch with ``torchrun --nproc_per_node N your_script.py`` (gloo on CPUs, NCCL on GPUs) after
``init_process_group()``; without an initialised process group everything runs in one process.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from .parameterization import ScoreModel
from .solvers import Solution, sample
from .validate import integer

Tensor = torch.Tensor

__all__ = ["init_process_group", "world", "map_chunks", "sample_sharded", "log_likelihood_sharded"]


def init_process_group(backend: Optional[str] = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
    backend defaults to NCCL when CUDA is available, else gloo. Returns (rank, world_size)."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            return 0, 1
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return world()


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def map_chunks(fn: Callable[[Tensor, int], dict], x: Tensor, chunk_size: int) -> Optional[list]:
    """Apply ``fn(rows, row_offset) -> dict`` to this rank's chunks of x; gather every chunk's dict on
    rank 0 in row order (a list, one entry per chunk). Other ranks return None."""
    chunk_size = integer("chunk_size", chunk_size, 1)
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"the input must be a tensor with at least one row (batch first); got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    rank, size = world()
    starts = list(range(0, x.shape[0], chunk_size))
    mine = {k: fn(x[s:s + chunk_size], s) for k, s in enumerate(starts) if k % size == rank}
    if size == 1:
        return [mine[k] for k in range(len(starts))]
    cpu = {k: {n: v.cpu() if isinstance(v, Tensor) else v for n, v in d.items()} for k, d in mine.items()}
    gathered: Optional[list[Any]] = [None] * size if rank == 0 else None
    dist.gather_object(cpu, gathered, dst=0)
    if rank != 0:
        return None
    assert gathered is not None  # rank 0 allocated it and gather_object filled it
    merged: dict = {}
    for part in gathered:
        merged.update(part)
    return [merged[k] for k in range(len(starts))]


def sample_sharded(model: ScoreModel, x_T: Tensor, solver: str = "dpmpp_2m", *, chunk_size: int = 256,
                   generator: int = 0, **options) -> Optional[Solution]:
    """``sdekit.sample`` over all ranks: every rank passes the same x_T (e.g. drawn from the same
    seed); rank 0 gets the full Solution (x in row order, nfe summed over chunks), others None."""
    if not isinstance(generator, int) or isinstance(generator, bool):
        raise TypeError("sample_sharded needs an integer seed as generator (the same on every rank)")

    def run(rows, offset):
        sol = sample(model, rows, solver, generator=generator, row_offset=offset, **options)
        return {"x": sol.x, "nfe": sol.nfe, "ts": sol.ts}

    parts = map_chunks(run, x_T, chunk_size)
    if parts is None:
        return None
    x = torch.cat([p["x"] for p in parts]).to(x_T.device)
    return Solution(x=x, nfe=sum(p["nfe"] for p in parts), ts=parts[0]["ts"],
                    stats={"chunks": len(parts), "world_size": world()[1]})


def log_likelihood_sharded(model: ScoreModel, x: Tensor, *, chunk_size: int = 256, **options) -> Optional[dict]:
    """``sdekit.log_likelihood`` over all ranks, chunk by chunk (probe and dequantisation noise seeded
    per row). Rank 0 gets a dict of (batch,) tensors log_prob, bpd, prior, delta (and stderr) plus the
    total nfe; other ranks None."""
    from .likelihood import log_likelihood

    def run(rows, offset):
        res = log_likelihood(model, rows, row_offset=offset, **options)
        out = {"log_prob": res.log_prob, "bpd": res.bpd, "prior": res.prior, "delta": res.delta, "nfe": res.nfe}
        if res.stderr is not None:
            out["stderr"] = res.stderr
        return out

    parts = map_chunks(run, x, chunk_size)
    if parts is None:
        return None
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "nfe"}
    out["nfe"] = sum(p["nfe"] for p in parts)
    return out
