"""What the networks see of an X-ray: the input contract of a model (config ``xray_input``).

- ``"drr"``: the normalised line integral ``drr / xray_scale``, as x2ct's DRRs give it.
  Only calibrated inputs (x2ct's own DRRs, or line integrals) suit such a model.
- ``"rank"``: each view is replaced by the normalised rank of each pixel among the view's
  pixels (its empirical CDF, ties given their mean rank), in [0, 1]:

      r(p) = (#{q : x_q < x_p} + (#{q : x_q = x_p} - 1) / 2) / (N - 1)

  A radiograph is an unknown monotone function f of its line integrals (log, window and
  level, gamma, LUT, bit depth); the ranks of f(x) are the ranks of x for any increasing
  f, so the network input does not depend on the display curve at all, and training need
  not guess the curves of every X-ray room. What is lost is the absolute scale (bone
  density in absolute terms), which an uncalibrated radiograph does not carry anyway.
  Quantisation (8-bit) merges neighbouring values into ties, which mean ranks keep
  order-consistent. Non-monotone processing (scatter, noise, blur, unsharp masking) is
  left to training augmentation (x2ct.projector.radiograph).
"""

from __future__ import annotations

import torch

__all__ = ["XRAY_INPUTS", "network_input", "rank_normalise"]

XRAY_INPUTS = ("drr", "rank")


def rank_normalise(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., H, W) normalised mean ranks in [0, 1] per image (float32)."""
    shape = x.shape
    flat = x.detach().float().flatten(-2)  # (..., N)
    n = flat.shape[-1]
    if n < 2:
        return torch.full(shape, 0.5, dtype=torch.float32, device=x.device)
    rows = flat.reshape(-1, n)
    ordered = rows.sort(dim=-1).values
    below = torch.searchsorted(ordered, rows.contiguous(), side="left")  # values < x
    upto = torch.searchsorted(ordered, rows.contiguous(), side="right")  # values <= x
    rank = (below + upto - 1).float() * 0.5  # mean 0-based rank of the tie group
    return (rank / (n - 1)).reshape(shape)


def network_input(xrays: torch.Tensor, mode: str) -> torch.Tensor:
    """The X-rays (B, V, H, W) as a model with ``xray_input=mode`` sees them."""
    if mode == "drr":
        return xrays
    if mode == "rank":
        return rank_normalise(xrays).to(xrays.dtype if xrays.is_floating_point() else torch.float32)
    raise ValueError(f"xray_input must be one of {XRAY_INPUTS}, got {mode!r}")
