"""Per-row random streams: a row's noise depends on the seed and its row index, never on the batch."""
from __future__ import annotations

import hashlib
from typing import Callable, Union

import torch

Tensor = torch.Tensor

__all__ = ["RowNoise"]


def _row_seed(base: int, row: int) -> int:
    digest = hashlib.blake2b(f"{base}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class RowNoise:
    """Gaussian noise with one independent stream per row.

    Row i's stream is seeded from (seed, row_offset + i) alone, so a row's noise, and hence its
    sample, does not depend on the batch size or on which other rows are solved beside it (and a
    shard of rows [a, b) can be reproduced by ``row_offset=a``).
    """

    def __init__(self, seed: Union[int, torch.Generator, None], n_rows: int, row_offset: int = 0, device=None):
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=seed))
        elif seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.seed = int(seed)
        self.device = device
        self.rows = range(row_offset, row_offset + n_rows)
        self.generators = [torch.Generator(device="cpu").manual_seed(_row_seed(self.seed, r)) for r in self.rows]

    def draw(self, fn: Callable[[torch.Generator], Tensor]) -> Tensor:
        """Stack fn(generator_i) over the rows: (n_rows, *fn's shape)."""
        return torch.stack([fn(g) for g in self.generators])

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"noise has {len(self.generators)} rows but the state has {x.shape[0]}")
        shape = tuple(x.shape[1:])
        out = self.draw(lambda g: torch.randn(shape, generator=g, dtype=torch.float64))
        return out.to(device=x.device, dtype=x.dtype)
