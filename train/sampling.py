"""Data order and random crops as pure functions of (seed, step, rank).

Nothing here keeps state between steps, so a resumed run sees exactly the batches an
uninterrupted run would have seen. Sample position p (counting every sample drawn by
every process, in order) belongs to epoch p // n; each epoch is a permutation of the n
training items seeded by (seed, epoch).
"""

from __future__ import annotations

import torch


def make_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded by a tuple of ints (e.g. seed, step, rank)."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h * 6364136223846793005 + int(k) + 1442695040888963407) % (1 << 63)
    return torch.Generator().manual_seed(h)


def batch_indices(
    n: int, batch_size: int, seed: int, micro_step: int, rank: int = 0, world_size: int = 1
) -> list[int]:
    """Dataset indices of one process's batch at a micro-step (optimiser step * accum + k)."""
    first = (micro_step * world_size + rank) * batch_size
    out, perms = [], {}
    for p in range(first, first + batch_size):
        epoch = p // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=make_generator(seed, epoch))
        out.append(int(perms[epoch][p % n]))
    return out


def random_crop(x: torch.Tensor, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """Random size^3 crops of x (B, C, X, Y, Z), one origin per sample; None or a size at
    least as large as the volume returns x."""
    if size is None or all(size >= n for n in x.shape[2:]):
        return x
    crops = []
    for b in range(x.shape[0]):
        origin = [
            int(torch.randint(0, max(n - size, 0) + 1, (1,), generator=generator))
            for n in x.shape[2:]
        ]
        sl = tuple(slice(o, o + size) for o in origin)
        crops.append(x[(slice(b, b + 1), slice(None), *sl)])
    return torch.cat(crops)
