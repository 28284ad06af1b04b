"""The noise process the denoiser is trained on (MONAI ``DDPMScheduler``) and its algebra.

Variance-preserving diffusion over T training timesteps (Ho et al. 2020):

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,       abar_t = prod_{s<=t} (1 - beta_s)

The network predicts, by the config's ``prediction_type``,

    epsilon:       eps
    sample:        x0
    v_prediction:  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0    (Salimans & Ho 2022)

and every sampler needs the pair (x0, eps) back from an output: :meth:`to_x0_eps`.
Timesteps may be fractional (the rectified-flow sampler asks for noise levels between
the integers): abar is then interpolated linearly in log-SNR.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler

from x2ct.diffusion.config import LatentDiffusionConfig

__all__ = ["NoiseSchedule", "append_dims"]


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton axes to a (B,) tensor until it has ``ndim`` dims."""
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))


class NoiseSchedule:
    def __init__(self, config: LatentDiffusionConfig):
        self.num_train_timesteps = config.num_train_timesteps
        self.prediction_type = config.prediction_type
        self.schedule_args = dict(
            num_train_timesteps=config.num_train_timesteps,
            schedule=config.beta_schedule,
            **(
                {}
                if config.beta_schedule == "cosine"
                else {"beta_start": config.beta_start, "beta_end": config.beta_end}
            ),
        )
        # training: noise is added here; clip_sample=False because scaled latents exceed [-1, 1]
        self.scheduler = DDPMScheduler(
            prediction_type=config.prediction_type, clip_sample=False, **self.schedule_args
        )
        ab = self.scheduler.alphas_cumprod.double()
        self.alphas_cumprod = ab  # (T,) float64
        self.log_snr = torch.log(ab) - torch.log1p(-ab)  # (T,), decreasing in t

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Uniform integer timesteps in [0, T), (B,) int64."""
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        return t.to(device)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t for (B,) timesteps (integer or fractional), float32 on t's device."""
        device = t.device
        t = t.detach().double().cpu().clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        w = t - lo.double()
        lam = (1 - w) * self.log_snr[lo] + w * self.log_snr[hi]  # log-SNR, linear in between
        return torch.sigmoid(lam).float().to(device)  # abar = SNR / (1 + SNR)

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor):
        ab = self.alpha_bar(t).to(like.device, like.dtype)
        return append_dims(ab.sqrt(), like.ndim), append_dims((1 - ab).sqrt(), like.ndim)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(t, x0)
        return a * x0 + s * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at (x_t, t)."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        a, s = self._coefficients(t, x0)
        return a * eps - s * x0

    def to_x0_eps(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor):
        """(x0, eps) implied by a network output at (x_t, t)."""
        a, s = self._coefficients(t, x_t)
        if self.prediction_type == "epsilon":
            eps = output
            x0 = (x_t - s * eps) / a
        elif self.prediction_type == "sample":
            x0 = output
            eps = (x_t - a * x0) / s
        else:  # v: x0 = a x_t - s v, eps = s x_t + a v (since a^2 + s^2 = 1)
            x0 = a * x_t - s * output
            eps = s * x_t + a * output
        return x0, eps

    def from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output that implies (x0, eps) at timestep t."""
        return self.target(x0, eps, t)

    # ------------------------------------------------------------------ noise levels
    def timestep_for_alpha_bar(self, ab: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose abar equals ``ab`` (clamped to [0, T-1]), float64 (B,)."""
        lam = (torch.log(ab.double()) - torch.log1p(-ab.double())).cpu()
        # log_snr decreases with t: search in the reversed (increasing) table
        table = self.log_snr.flip(0)
        idx = torch.searchsorted(table, lam).clamp(1, len(table) - 1)
        lo_v, hi_v = table[idx - 1], table[idx]
        w = ((lam - lo_v) / (hi_v - lo_v)).clamp(0, 1)
        pos = (idx - 1).double() + w  # position in the reversed table
        return ((self.num_train_timesteps - 1) - pos).clamp(0, self.num_train_timesteps - 1)
