"""Projection-consistent sampling: the sampler's clean-latent estimates are pulled toward
latents whose biplanar DRRs match the input X-rays.

Diffusion posterior sampling (DPS; Chung et al., "Diffusion Posterior Sampling for General
Noisy Inverse Problems", ICLR 2023, Alg. 1) moves each step's x_{t-1} by
-zeta_t grad_{x_t} ||y - A(x0_hat(x_t))||^2, with zeta_t = zeta' / ||y - A(x0_hat(x_t))||
in its experiments (a step normalised by the residual). Here the measurement operator is

    A(z) = project(hu_to_mu(hu(decode(z)))) / xray_scale        (frozen decoder, projector)

and, as in the decomposed variants of DPS (DDS, Chung et al. ICLR 2024; ReSample, Song et
al. ICLR 2024), the gradient is taken with respect to the clean estimate x0_hat itself
(through the decoder and the projector, not through the UNet): during the last
``steps`` sampler steps, x0_hat is replaced by a few (``inner``) normalised gradient steps

    g = d/dz mean |A(z) - y|                       (L1, as the training projection loss)
    z <- z - strength * g / rms(g)                 (a step of latent RMS ``strength``)

accepted per sample only when the L1 error falls (else that sample's step is halved): the
normalisation plays the role of DPS's 1 / ||residual|| and the acceptance test keeps an
inner loop from ever raising the error. The sampler then goes on from the corrected x0
with the same eps (diffusion/samplers.py, ``x0_hook``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from x2ct.diffusion.schedule import append_dims

__all__ = ["ProjectionGuidance", "correct_x0", "projection_hook"]

# (B, C, x, y, z) latents, (B, V, H, W) X-rays -> (B,) mean |A(z) - y|, differentiable
ErrorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProjectionGuidance:
    """Options of projection-consistent sampling (recorded in reconstruct.py's outputs)."""

    strength: float = 0.05  # latent RMS of one inner step (scaled latents have unit std)
    steps: int = 5  # the last ``steps`` sampler steps are corrected
    inner: int = 3  # gradient steps per corrected estimate

    def __post_init__(self) -> None:
        if not self.strength > 0:
            raise ValueError(f"projection guidance strength must be > 0, got {self.strength}")
        if self.steps < 1 or self.inner < 1:
            raise ValueError(
                f"projection guidance steps and inner must be >= 1, got {self.steps}, {self.inner}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def correct_x0(
    x0: torch.Tensor, xrays: torch.Tensor, error_fn: ErrorFn, strength: float, inner: int
) -> torch.Tensor:
    """``inner`` accepted-or-halved normalised gradient steps on mean |A(z) - y| from
    z = x0 (B, C, x, y, z), one step size per sample; returns the corrected z (detached)."""
    z = x0.detach().float()
    lr = torch.full((z.shape[0],), float(strength), device=z.device)  # (B,)
    with torch.enable_grad():
        z_req = z.requires_grad_(True)
        err = error_fn(z_req, xrays)  # (B,)
        (grad,) = torch.autograd.grad(err.sum(), z_req)
    z, err = z.detach(), err.detach()
    for _ in range(inner):
        rms = grad.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12)  # (B,)
        trial = z - append_dims(lr / rms, z.ndim) * grad
        with torch.enable_grad():
            t_req = trial.requires_grad_(True)
            t_err = error_fn(t_req, xrays)
            (t_grad,) = torch.autograd.grad(t_err.sum(), t_req)
        better = t_err.detach() < err  # (B,)
        keep = append_dims(better, z.ndim)
        z = torch.where(keep, trial.detach(), z)
        grad = torch.where(keep, t_grad, grad)
        err = torch.where(better, t_err.detach(), err)
        lr = torch.where(better, lr, 0.5 * lr)
    return z.to(x0.dtype)


def projection_hook(guidance: ProjectionGuidance, xrays: torch.Tensor, error_fn: ErrorFn):
    """``x0_hook(x0, i, steps)`` for a sampler: corrects the estimates of the last
    ``guidance.steps`` of its ``steps`` steps against ``xrays`` (one row per latent)."""

    def hook(x0: torch.Tensor, i: int, steps: int) -> torch.Tensor:
        if i < steps - guidance.steps:
            return x0
        return correct_x0(x0, xrays, error_fn, guidance.strength, guidance.inner)

    return hook
