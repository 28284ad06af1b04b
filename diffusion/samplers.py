"""Samplers: plain functions of a denoiser callable (k-diffusion style), MONAI steps inside.

Every sampler takes

    model_fn(x_t, t) -> network output (v, eps or x0, as the schedule's prediction_type)

with x_t (B, C, x, y, z) and t a (B,) tensor of (possibly fractional) training timesteps,
the starting noise, the :class:`NoiseSchedule` the model was trained on and a step count,
and returns the clean latent x0. Guidance, conditioning and batching live in model_fn.

An optional ``x0_hook(x0, i, steps) -> x0`` corrects step i's clean-latent estimate
(projection-consistent sampling, diffusion/guidance.py): the step then goes on from the
corrected x0 and the same eps (the "decomposed" update of DDS, Chung et al. 2024), i.e.
x_t is replaced by sqrt(abar_t) x0' + sqrt(1 - abar_t) eps before the scheduler's step.

- ``ddim``: deterministic DDIM (Song et al. 2021, eq. 12) with MONAI ``DDIMScheduler``.
  Two MONAI defaults are wrong for latents: ``clip_sample`` clamps the x0 estimate to
  [-1, 1] (scaled latents exceed it), so it is off; and its step assumes timesteps
  spaced by T // steps, so they are set here to T-1, T-1-T//steps, ... ("trailing"
  spacing: the chain starts at the last training timestep, pure noise).
- ``ddpm``: ancestral sampling, the DDPM posterior q(x_t' | x_t, x0) on the same strided
  chain (DDIM with eta = 1; MONAI's ``DDPMScheduler.step`` assumes t' = t - 1).
- ``rflow``: Euler steps of the rectified-flow ODE with MONAI ``RFlowScheduler``: the
  VP model is queried at the timestep of equal signal-to-noise ratio, its (x0, eps)
  turned into the flow velocity v = x0 - eps of x_s = (1 - s) x0 + s eps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler
from tqdm.auto import tqdm

from x2ct.diffusion.schedule import NoiseSchedule

__all__ = ["SAMPLERS", "ddim_timesteps", "sample", "sample_ddim", "sample_ddpm", "sample_rflow"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
X0Hook = Callable[[torch.Tensor, int, int], torch.Tensor]


def _corrected(schedule: NoiseSchedule, x0_hook, i: int, steps: int, x, out, t):
    """(x_t, output) re-synthesised from the hook's corrected x0 and the same eps."""
    x0, eps = schedule.to_x0_eps(x, out.to(x.dtype), t)
    x0_new = x0_hook(x0, i, steps)
    if x0_new is x0:
        return x, out
    return schedule.add_noise(x0_new, eps, t), schedule.from_x0_eps(x0_new, eps, t)


def _check_steps(steps: int, schedule: NoiseSchedule) -> int:
    steps = int(steps)
    if not 1 <= steps <= schedule.num_train_timesteps:
        raise ValueError(f"steps must be in [1, {schedule.num_train_timesteps}], got {steps}")
    return steps


def ddim_timesteps(steps: int, num_train_timesteps: int) -> torch.Tensor:
    """T-1, T-1-k, ..., with k = T // steps: the spacing ``DDIMScheduler.step`` assumes."""
    k = num_train_timesteps // steps
    return (num_train_timesteps - 1) - k * torch.arange(steps, dtype=torch.long)


def _device_generator(generator: torch.Generator | None, device) -> torch.Generator | None:
    """A generator on ``device`` seeded from ``generator`` (MONAI draws noise on the
    model output's device); None stays None."""
    if generator is None:
        return None
    if torch.device(generator.device).type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x0_hook: X0Hook | None = None,
) -> torch.Tensor:
    steps = _check_steps(steps, schedule)
    scheduler = DDIMScheduler(
        prediction_type=schedule.prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        **schedule.schedule_args,
    )
    scheduler.set_timesteps(steps)
    scheduler.timesteps = ddim_timesteps(steps, schedule.num_train_timesteps)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(noise.device)
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(noise.device)
    gen = _device_generator(generator, noise.device) if eta > 0 else None
    x, x0 = noise, noise
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="ddim", leave=False)):
        t_b = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = model_fn(x, t_b)
        if x0_hook is not None:
            x, out = _corrected(schedule, x0_hook, i, steps, x, out, t_b)
        x, x0 = scheduler.step(out, t, x, eta=eta, generator=gen)
    # The last step lands on abar = 1 (x = x0) when T is a multiple of steps; otherwise
    # a little noise is left at t = T-1-(steps-1)k - k >= 0, and x0 is the better answer.
    return x0


def sample_ddpm(
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x0_hook: X0Hook | None = None,
) -> torch.Tensor:
    return sample_ddim(
        model_fn, noise, schedule, steps, eta=1.0, generator=generator, progress=progress,
        x0_hook=x0_hook,
    )


@torch.no_grad()
def sample_rflow(
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x0_hook: X0Hook | None = None,
) -> torch.Tensor:
    steps = _check_steps(steps, schedule)
    T = schedule.num_train_timesteps
    scheduler = RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=True)
    scheduler.set_timesteps(steps)  # integer t from T down to about T / steps; s = t / T
    times = [int(t) for t in scheduler.timesteps.tolist()] + [0]
    x = noise
    pairs = list(zip(times[:-1], times[1:]))
    for i, (t, t_next) in enumerate(tqdm(pairs, disable=not progress, desc="rflow", leave=False)):
        s = t / T  # x_s = (1 - s) x0 + s eps
        snr = ((1 - s) / s) ** 2
        ab = torch.tensor([snr / (1 + snr)], dtype=torch.float64)
        t_vp = schedule.timestep_for_alpha_bar(ab.clamp(1e-12, 1 - 1e-12))  # (1,)
        ab_vp = schedule.alpha_bar(t_vp).double()
        # the VP state with the same noise: x_vp = sqrt(1 - abar) / s * x_s
        k = float((1 - ab_vp).sqrt() / s)
        t_b = t_vp.to(x.device, torch.float32).expand(x.shape[0])
        x0, eps = schedule.to_x0_eps(k * x, model_fn(k * x, t_b), t_b)
        if x0_hook is not None:
            x0 = x0_hook(x0, i, len(pairs))
        v = x0 - eps  # d x_s / d(-s)
        x, _ = scheduler.step(v, t, x, t_next)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "rflow": sample_rflow,
}


def sample(
    name: str,
    model_fn: ModelFn,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x0_hook: X0Hook | None = None,
) -> torch.Tensor:
    """Run the sampler called ``name`` ("ddim", "ddpm" or "rflow")."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](
        model_fn, noise, schedule, steps, generator=generator, progress=progress, x0_hook=x0_hook
    )
