"""The deterministic baseline: the diffusion model's networks trained to predict the
latent in one pass (``LatentDiffusionConfig.objective == "regression"``).

The same X-ray encoder, geometry-aware back-projected conditioning and UNet are used; the
UNet's noisy-latent input is all zeros and its timestep input fixed at T - 1 (the noise
level a sampler starts from), so the network is a plain conditional regressor

    z_hat = net(0, T - 1, xrays)
    L     = mean (z_hat - x0)^2 + projection_weight * ProjectionLoss(z_hat, xrays, abar=1)

(no condition dropout: there is no classifier-free guidance to train). ``Reconstructor``
calls :func:`predict_latent` instead of a sampler for such a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from x2ct.diffusion.config import LatentDiffusionConfig
from x2ct.diffusion.projection_loss import ProjectionLoss

__all__ = ["RegressionLoss", "predict_latent", "regression_inputs"]


def regression_inputs(config: LatentDiffusionConfig, batch: int, device, dtype=torch.float32):
    """The fixed UNet inputs of the regression objective: zeros (B, C, x, y, z) and
    timesteps (B,) all T - 1."""
    x = torch.zeros(batch, config.latent_channels, *config.latent_size, device=device, dtype=dtype)
    t = torch.full((batch,), config.num_train_timesteps - 1, device=device, dtype=torch.long)
    return x, t


def predict_latent(net, cond) -> torch.Tensor:
    """One-pass latent (B, C, x, y, z) from a precomputed condition."""
    x, t = regression_inputs(net.config, cond.context.shape[0], cond.context.device)
    return net(x, t, cond=cond).float()


class RegressionLoss:
    """Loss terms of the regression objective: "regression" (MSE to the latent), and
    "projection" (weighted) with "projection_l1" (detached) when the projection loss is on."""

    def __init__(self, config: LatentDiffusionConfig, projection: ProjectionLoss | None = None):
        if config.objective != "regression":
            raise ValueError(
                f"RegressionLoss needs objective='regression', got {config.objective!r}"
            )
        self.config = config
        self.projection = projection if config.projection_weight > 0 else None

    def __call__(
        self,
        net,
        x0: torch.Tensor,
        xrays: torch.Tensor,
        views: torch.Tensor | None = None,
        drr: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms; ``views`` and ``drr`` as for ``DiffusionLoss``."""
        x, t = regression_inputs(self.config, x0.shape[0], x0.device, x0.dtype)
        # drop all False: nothing is dropped, but the null context stays in the graph (with
        # zero gradient), as DistributedDataParallel needs every parameter used
        keep_all = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
        z_hat = net(x, t, xrays, drop=keep_all, views=views).float()
        terms = {"regression": F.mse_loss(z_hat, x0.float())}
        if self.projection is not None:
            ones = torch.ones(x0.shape[0], device=x0.device)
            target = xrays if drr is None else drr
            loss, err = self.projection(z_hat, target, ones, views)
            terms["projection"] = self.config.projection_weight * loss
            terms["projection_l1"] = err.mean()
        return terms

    @staticmethod
    def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(v for k, v in terms.items() if k in ("regression", "projection"))
