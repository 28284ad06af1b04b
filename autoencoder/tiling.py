"""Tiled application of a volume-to-volume network with overlap blending.

`tiled_apply(fn, x, tile, overlap, scale, align)` runs `fn` on overlapping tiles of
x (B, C, X, Y, Z) and blends the outputs, so memory depends on the tile, not the volume.
`fn` may change the resolution by a fixed `scale` (1/4 for an encoder, 4 for a decoder):
a tile starting at voxel s of the input lands at s * scale of the output.

Blending: each output tile is weighted by a separable window that is 1 in the middle
and ramps linearly down to a small positive value across the overlap, so every output
voxel is a convex combination of the tiles that cover it and seams are feathered.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import torch


def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size), all multiples of `align`.

    Neighbouring tiles share about `overlap * tile` voxels; the last tile ends at `size`
    (size and tile must be multiples of align).
    """
    if size <= tile:
        return [0]
    stride = max(align, int(tile * (1.0 - overlap)) // align * align)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, fade: int, device, dtype) -> torch.Tensor:
    """1-D window: linear ramp over `fade` voxels at each end, 1 in between."""
    w = torch.ones(length, device=device, dtype=dtype)
    if fade > 0:
        r = (torch.arange(fade, device=device, dtype=dtype) + 1) / (fade + 1)  # (0, 1)
        w[:fade] = r
        w[length - fade :] = r.flip(0)
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: float,
    scale: float = 1.0,
    align: int = 1,
) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of x (B, C, X, Y, Z) and blend the outputs.

    A single tile covering the volume calls fn(x) directly (exact).
    """
    spatial = x.shape[2:]
    starts = [tile_starts(n, tile, overlap, align) for n in spatial]
    if all(len(s) == 1 for s in starts):
        return fn(x)
    sizes = [min(tile, n) for n in spatial]  # tile extent per axis (input voxels)
    out_sizes = [round(s * scale) for s in sizes]
    out_spatial = [round(n * scale) for n in spatial]
    out = weight = None
    # Per-axis windows in output voxels; fade covers the overlap with the neighbour.
    fades = [
        round((s - (st[1] - st[0])) * scale) if len(st) > 1 else 0 for s, st in zip(sizes, starts)
    ]
    for corner in product(*starts):
        sl = tuple(slice(c, c + s) for c, s in zip(corner, sizes))
        y = fn(x[(slice(None), slice(None), *sl)])  # (B, C', *out_sizes)
        if out is None:
            out = y.new_zeros((y.shape[0], y.shape[1], *out_spatial))
            weight = y.new_zeros((1, 1, *out_spatial))
            windows = [_ramp(n, f, y.device, y.dtype) for n, f in zip(out_sizes, fades)]
            w = windows[0][:, None, None] * windows[1][None, :, None] * windows[2][None, None, :]
        osl = tuple(
            slice(round(c * scale), round(c * scale) + n) for c, n in zip(corner, out_sizes)
        )
        out[(slice(None), slice(None), *osl)] += y * w
        weight[(slice(None), slice(None), *osl)] += w
    return out / weight
