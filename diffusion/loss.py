"""The training loss of the conditional latent denoiser (EDM-style: a small class that
calls the network, so a DistributedDataParallel wrapper's forward runs).

For clean latents x0 (B, C, x, y, z) and their X-rays (B, V, H, W):

    t ~ U{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    drop ~ Bernoulli(cond_drop_prob)                     (classifier-free guidance)
    out = net(x_t, t, xrays, drop)
    L_diff = mean (out - target(x0, eps, t))^2           (v, eps or x0: prediction_type)
    L_proj = projection_weight * ProjectionLoss(x0_hat(x_t, out), xrays, abar_t)
             (optionally on only the k samples of largest weight w(t): projection_samples)

Randomness comes from the global torch generator (the training script seeds it per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from x2ct.diffusion.config import LatentDiffusionConfig
from x2ct.diffusion.projection_loss import ProjectionLoss, timestep_weight
from x2ct.diffusion.schedule import NoiseSchedule

__all__ = ["DiffusionLoss", "denoising_prediction"]


def denoising_prediction(
    net,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    xrays: torch.Tensor,
    views: torch.Tensor | None = None,
    drop: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the denoiser is asked, in one place: x_t = add_noise(x0, eps, t), the network's
    output at (x_t, t) given the X-rays (float) and the schedule's target for it. Returns
    (x_t, output, target); DiffusionLoss draws t, eps and drop, train/gap.py fixes them."""
    x_t = schedule.add_noise(x0, eps, t)
    out = net(x_t, t, xrays, drop=drop, views=views).float()
    return x_t, out, schedule.target(x0, eps, t)


class DiffusionLoss:
    def __init__(
        self,
        config: LatentDiffusionConfig,
        projection: ProjectionLoss | None = None,
        projection_samples: int = 0,
    ):
        """``projection_samples``: render only the k samples of each batch whose timestep
        weight w(t) is largest (decoding and ray marching dominate a CPU step, and a sample
        with w(t) near 0 adds nothing); 0 renders all. The loss stays a mean over the
        rendered samples."""
        self.config = config
        self.schedule = NoiseSchedule(config)
        self.projection = projection if config.projection_weight > 0 else None
        self.projection_samples = int(projection_samples)

    def __call__(
        self,
        net,
        x0: torch.Tensor,
        xrays: torch.Tensor,
        views: torch.Tensor | None = None,
        drr: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms (scalars): "diffusion", and "projection" when enabled (already
        weighted; the total is their sum), plus "projection_l1" (unweighted mean error,
        detached, for logging). ``views`` (B, V, 15): each case's acquisition (default the
        config's); ``drr``: the normalised line integrals the projection loss compares
        with, when ``xrays`` (the network's input) are not those (e.g. radiograph-styled)."""
        b = x0.shape[0]
        t = self.schedule.sample_timesteps(b, device=x0.device)
        eps = torch.randn_like(x0)
        drop = torch.rand(b, device=x0.device) < self.config.cond_drop_prob
        x_t, out, target = denoising_prediction(
            net, self.schedule, x0, eps, t, xrays, views=views, drop=drop
        )
        terms = {"diffusion": F.mse_loss(out, target)}
        if self.projection is not None:
            ab = self.schedule.alpha_bar(t)
            k = b if self.projection_samples <= 0 else min(b, self.projection_samples)
            idx = torch.arange(b, device=x0.device)
            if k < b:  # the k most heavily weighted samples
                idx = torch.topk(timestep_weight(ab, self.projection.weighting), k).indices
            z0_hat, _ = self.schedule.to_x0_eps(x_t[idx], out[idx], t[idx])
            line_integrals = xrays if drr is None else drr
            loss, err = self.projection(
                z0_hat, line_integrals[idx], ab[idx], None if views is None else views[idx]
            )
            terms["projection"] = self.config.projection_weight * loss
            terms["projection_l1"] = err.mean()
        return terms

    @staticmethod
    def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(v for k, v in terms.items() if k in ("diffusion", "projection"))
