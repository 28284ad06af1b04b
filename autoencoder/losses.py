"""Autoencoder losses, one small function or class each.

All take volumes (B, 1, X, Y, Z) in the model's [-1, 1] intensity scale.

- `reconstruction_loss`: L1 (+ optional L2).
- `kl_loss`: KL(N(mu, sigma^2) || N(0, 1)), averaged over latent elements.
- the VQ term is MONAI's (`CTAutoencoder.forward()["quantization_loss"]`).
- `edge_loss`: L1 between finite-difference gradients (thin cortical bone).
- `make_discriminator`, `generator_adversarial_loss`, `discriminator_loss`: MONAI
  PatchDiscriminator + PatchAdversarialLoss (least squares).
- `PerceptualLoss`: LPIPS on 2-D slices of the three planes; `lpips_status()` says
  whether it can run here.
- `ProjectionLoss`: L1 between biplanar DRRs of input and reconstruction.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn


def reconstruction_loss(
    x_hat: torch.Tensor, x: torch.Tensor, l2_weight: float = 0.0
) -> torch.Tensor:
    """mean|x_hat - x| + l2_weight * mean (x_hat - x)^2."""
    loss = F.l1_loss(x_hat, x)
    if l2_weight > 0:
        loss = loss + l2_weight * F.mse_loss(x_hat, x)
    return loss


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - log sigma^2 - 1), element mean.

    An element mean rather than MONAI tutorials' per-sample sum, so the weight does not
    depend on crop size.
    """
    var = z_sigma.float().pow(2)
    return 0.5 * (z_mu.float().pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0).mean()


def spatial_gradients(x: torch.Tensor) -> list[torch.Tensor]:
    """Forward differences along X, Y, Z of (B, C, X, Y, Z)."""
    return [torch.diff(x, dim=d) for d in (2, 3, 4)]


def edge_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over the three axes of L1(grad x_hat, grad x)."""
    pairs = zip(spatial_gradients(x_hat), spatial_gradients(x))
    return sum(F.l1_loss(a, b) for a, b in pairs) / 3.0


# ------------------------------------------------------------------- adversarial
def make_discriminator(channels: int = 32, num_layers: int = 3) -> PatchDiscriminator:
    """A 3-D PatchGAN discriminator (MONAI), for volumes in [-1, 1]."""
    return PatchDiscriminator(
        spatial_dims=3, num_layers_d=num_layers, channels=channels, in_channels=1, out_channels=1
    )


_ADV = PatchAdversarialLoss(criterion="least_squares")


def generator_adversarial_loss(discriminator: nn.Module, x_hat: torch.Tensor) -> torch.Tensor:
    """The autoencoder's term: make the discriminator call the reconstruction real."""
    logits = discriminator(x_hat.contiguous().float())[-1]
    return _ADV(logits, target_is_real=True, for_discriminator=False)


def discriminator_loss(
    discriminator: nn.Module, x: torch.Tensor, x_hat: torch.Tensor
) -> torch.Tensor:
    """The discriminator's term: real as real, detached reconstruction as fake."""
    fake = discriminator(x_hat.detach().contiguous().float())[-1]
    real = discriminator(x.contiguous().float())[-1]
    loss_fake = _ADV(fake, target_is_real=False, for_discriminator=True)
    loss_real = _ADV(real, target_is_real=True, for_discriminator=True)
    return 0.5 * (loss_fake + loss_real)


# ------------------------------------------------------------------- perceptual
@functools.cache
def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """(available, reason): can LPIPS with its pretrained backbone be built here?

    Needs the `lpips` package and the torchvision backbone weights (downloaded on first
    use, so offline machines without a cache cannot run it).
    """
    try:
        import lpips  # noqa: F401
    except Exception as e:  # ImportError, or a broken torchvision underneath
        return False, f"the `lpips` package cannot be imported ({e}); pip install lpips"
    try:
        _build_lpips(net)
    except Exception as e:
        return False, f"LPIPS backbone weights for {net!r} cannot be loaded ({e})"
    return True, "ok"


def _build_lpips(net: str) -> nn.Module:
    import lpips

    return lpips.LPIPS(net=net, verbose=False)


class PerceptualLoss(nn.Module):
    """LPIPS on 2-D slices of the three planes.

    Up to `max_slices` evenly spaced slices of (B, 1, X, Y, Z) along each of X, Y and Z
    become (N, 3, H, W) images in [-1, 1]; the loss is the mean LPIPS over the three planes.
    Raises RuntimeError at construction when LPIPS is unavailable (see lpips_status).
    """

    def __init__(self, net: str = "alex", max_slices: int = 8):
        super().__init__()
        ok, reason = lpips_status(net)
        if not ok:
            raise RuntimeError(f"perceptual loss requested but unavailable: {reason}")
        self.lpips = _build_lpips(net).eval().requires_grad_(False)
        self.max_slices = max_slices

    def _slices(self, v: torch.Tensor, axis: int) -> torch.Tensor:
        n = v.shape[axis]
        idx = torch.linspace(0, n - 1, min(n, self.max_slices)).round().long().to(v.device)
        s = v.index_select(axis, idx).movedim(axis, 1)  # (B, k, 1, A, B')
        s = s.reshape(-1, 1, *s.shape[-2:])
        return s.expand(-1, 3, -1, -1)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        losses = [
            self.lpips(self._slices(x_hat, a).float(), self._slices(x, a).float()).mean()
            for a in (2, 3, 4)
        ]
        return sum(losses) / 3.0


# ------------------------------------------------------------------- projection
class ProjectionLoss(nn.Module):
    """L1 between DRRs of input and reconstruction, over the projector's default views.

    DRR = project(hu_to_mu(hu), geometry) / DRR_SCALE, with hu from the [-1, 1] volume
    over `hu_window`; the geometry is fitted to each volume size (cached).
    """

    def __init__(
        self,
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        hu_window: Sequence[float] = (-1000.0, 2000.0),
        detector_shape: tuple[int, int] = (64, 64),
        step: float = 1.0,
    ):
        super().__init__()
        self.spacing = tuple(float(s) for s in spacing)
        self.hu_window = tuple(float(h) for h in hu_window)
        self.detector_shape = tuple(detector_shape)
        self.step = step
        self._geometries: dict = {}

    def drr(self, x: torch.Tensor) -> torch.Tensor:
        from x2ct.projector import DRR_SCALE, Geometry, hu_to_mu, project

        shape = tuple(x.shape[2:])
        if shape not in self._geometries:
            self._geometries[shape] = Geometry.fit(shape, self.spacing, self.detector_shape)
        lo, hi = self.hu_window
        hu = (x.float().clamp(-1, 1) + 1.0) / 2.0 * (hi - lo) + lo
        return (
            project(hu_to_mu(hu), self._geometries[shape], self.spacing, step=self.step) / DRR_SCALE
        )

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.drr(x)
        return F.l1_loss(self.drr(x_hat), target)
