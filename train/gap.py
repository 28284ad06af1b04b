"""The generalisation gap of the latent denoiser: its diffusion loss on training cases
against held-out cases, at fixed timesteps and with fixed noise.

A conditional denoiser trained on few cases can learn to recognise each training case's
X-rays and recall its latent rather than read the anatomy off them. Training loss alone
cannot tell: it falls either way. At a high noise level (t near T - 1, where the output
is the one-pass posterior mean that the sampler's first step and PSNR depend on) a model
that recalls scores far better on the cases it was trained on than on new ones. For
the 8200-step ``ldm-tiny`` (640 cases of 320 phantoms), on 24 of its training cases and 24
held-out cases drawn the same way: 0.30 against 0.46 at t = 999 and 0.28 against 0.42 at
t = 800, but 0.31 against 0.32 at t = 50. Four times the phantoms (``--n-train 1280``) and
2150 more steps: 0.32 against 0.42 at t = 999; twice again (2560) and 1800 steps: 0.35
against 0.40 (models/ldm-tiny/README.md).

Every case gets the same noise (``seed``) and the same timesteps on both sides, so the two
losses differ only by the cases. Held-out cases should be drawn as the training cases are
for the numbers to compare exactly; train/latent.py uses its validation cases (fields
centred on the spine, nominal views: easier than training's random placements), so there
the gap it prints is, if anything, an underestimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from x2ct.diffusion.loss import denoising_prediction

__all__ = ["GAP_TIMESTEPS", "loss_by_timestep"]

GAP_TIMESTEPS = (50, 500, 999)  # low, middle and the sampler's first noise level (T = 1000)


@torch.no_grad()
def loss_by_timestep(
    net,
    schedule,
    z0: torch.Tensor,
    xrays: torch.Tensor,
    views: torch.Tensor | None,
    timesteps: Sequence[int] = GAP_TIMESTEPS,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[int, float]:
    """Mean squared error of ``net``'s prediction against the schedule's target at each of
    ``timesteps``, over the cases ``z0`` (N, C, x, y, z) with X-rays (N, V, H, W) and views
    (N, V, 15) or None, all conditioned (no drop). The noise is drawn once from ``seed``
    (N, C, x, y, z) and shared by every timestep, so two calls with the same N see the
    same noise."""
    if len(z0) == 0 or len(z0) != len(xrays) or (views is not None and len(views) != len(z0)):
        raise ValueError(
            f"loss_by_timestep needs as many X-rays and views as latents, got {len(z0)} "
            f"latents, {len(xrays)} X-rays, {None if views is None else len(views)} views"
        )
    T = schedule.num_train_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < T]
    if bad:
        raise ValueError(f"timesteps must lie in [0, {T}), got {bad}")
    device = next(net.parameters()).device
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    out: dict[int, float] = {}
    for t in timesteps:
        total = 0.0
        for i in range(0, len(z0), batch_size):
            x0 = z0[i : i + batch_size].float().to(device)
            eps = noise[i : i + batch_size].to(device)
            tt = torch.full((len(x0),), int(t), dtype=torch.long, device=device)
            _, pred, target = denoising_prediction(
                net, schedule, x0, eps, tt, xrays[i : i + batch_size].to(device),
                views=None if views is None else views[i : i + batch_size].to(device),
            )  # no condition drop: the gap scores the conditioned model
            total += float(F.mse_loss(pred, target, reduction="sum"))
        out[int(t)] = total / z0.numel()
    return out
