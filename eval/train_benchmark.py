"""Training speed and memory: samples per second and peak memory of one optimiser step of
each stage, with and without the projection loss (rendered by the torch projector, and by
the Triton kernels where CUDA is present).

Stages, as train/autoencoder.py and train/latent.py run them (no Accelerate wrapper,
fp32):

- ``autoencoder``: forward, L1 reconstruction + KL (or VQ) loss, [+ L1 between the DRRs of
  input and reconstruction, ``x2ct.autoencoder.losses.ProjectionLoss``], backward, AdamW.
- ``latent``: ``DiffusionLoss`` on clean latents and X-rays (the denoiser, the frozen
  autoencoder's decoder under checkpointing for the projection loss), backward, AdamW.

The projector backend is chosen through ``X2CT_PROJECTOR_BACKEND`` (``torch`` forces the
reference; unset, CUDA tensors take Triton), as every user of ``project`` would see it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from x2ct.eval.memory import PeakMemory

__all__ = ["STAGES", "TrainCase", "markdown_table", "projection_backends", "run_train_benchmark"]

STAGES = ("autoencoder", "latent")


@dataclass
class TrainCase:
    stage: str  # "autoencoder" or "latent"
    projection: str  # "off", or the projector backend of the projection loss
    batch: int
    step_s: float  # median seconds of one optimiser step
    peak_mb: float  # CUDA: max allocated (weights, optimiser state included); CPU: RSS growth

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.step_s

    def row(self) -> dict:
        return {**asdict(self), "samples_per_s": self.samples_per_s}


def projection_backends(device: torch.device | str) -> list[str]:
    """Projection-loss variants to time: off and torch everywhere, triton on CUDA."""
    from x2ct import kernels

    out = ["off", "torch"]
    if torch.device(device).type == "cuda" and kernels.HAS_TRITON:
        out.append("triton")
    return out


@contextlib.contextmanager
def _projector_backend(name: str) -> Iterator[None]:
    """Force the projector backend for the block ("torch"), or leave "auto" ("triton")."""
    from x2ct.projector.project import BACKEND_ENV

    old = os.environ.get(BACKEND_ENV)
    if name == "torch":
        os.environ[BACKEND_ENV] = "torch"
    else:
        os.environ.pop(BACKEND_ENV, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = old


def _autoencoder_step(ae_config, shape, batch, device, projection: bool, detector_shape):
    from x2ct.autoencoder import CTAutoencoder
    from x2ct.autoencoder.losses import ProjectionLoss, kl_loss, reconstruction_loss

    model = CTAutoencoder(ae_config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    proj = ProjectionLoss(ae_config.spacing, ae_config.hu_window, detector_shape) \
        if projection else None
    x = torch.rand(batch, 1, *shape, device=device) * 2 - 1

    def step():
        out = model(x)
        x_hat = out["reconstruction"].float()
        loss = reconstruction_loss(x_hat, x)
        if ae_config.kind == "kl":
            loss = loss + 1e-6 * kl_loss(out["z_mu"], out["z_sigma"])
        else:
            loss = loss + out["quantization_loss"].float()
        if proj is not None:
            loss = loss + 0.1 * proj(x_hat, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _latent_step(ld_config, autoencoder, batch, device, projection: bool):
    from x2ct.diffusion import DiffusionLoss, LatentDenoiser, ProjectionLoss

    c = ld_config.replace(projection_weight=ld_config.projection_weight or 0.1) if projection \
        else ld_config.replace(projection_weight=0.0)
    model = LatentDenoiser(c).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ae = autoencoder.to(device).eval().requires_grad_(False)
    proj = ProjectionLoss(ae, c.geometry_obj, c.ct_shape, c.xray_scale, c.projection_step,
                          c.projection_weighting) if projection else None
    loss_fn = DiffusionLoss(c, proj)
    z0 = torch.randn(batch, c.latent_channels, *c.latent_size, device=device)
    xrays = torch.rand(batch, c.num_views, *c.xray_shape, device=device) * 0.5

    def step():
        DiffusionLoss.total(loss_fn(model, z0, xrays)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _measure(step, device: torch.device, reps: int) -> tuple[float, float]:
    step()  # warm-up: kernels, allocator, optimiser state
    times, peaks = [], []
    for _ in range(reps):
        with PeakMemory(device) as mem:
            step()
        times.append(mem.seconds)
        peaks.append(mem.mb)
    return float(np.median(times)), float(max(peaks))


def run_train_benchmark(
    recon,
    batch_sizes: Sequence[int] = (1,),
    stages: Sequence[str] = STAGES,
    backends: Sequence[str] | None = None,
    reps: int = 3,
    seed: int = 0,
) -> list[TrainCase]:
    """Time one training step of each stage for each batch size and projection variant,
    with the networks (configs) of ``recon`` (a Reconstructor, trained or not) on its
    device. The denoiser and autoencoder are rebuilt from their configs for training."""
    device = recon.device
    backends = projection_backends(device) if backends is None else list(backends)
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {s!r}")
    cases = []
    for stage in stages:
        for batch in batch_sizes:
            for backend in backends:
                torch.manual_seed(seed)
                with _projector_backend(backend):
                    if stage == "autoencoder":
                        step = _autoencoder_step(recon.autoencoder.config, recon.shape, batch,
                                                 device, backend != "off",
                                                 recon.config.xray_shape)
                    else:
                        step = _latent_step(recon.config, recon.autoencoder, batch, device,
                                            backend != "off")
                    seconds, peak = _measure(step, device, reps)
                del step
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                cases.append(TrainCase(stage, backend, int(batch), seconds, peak))
    return cases


def markdown_table(cases: Sequence[TrainCase], title: str) -> str:
    lines = [title, "", "| stage | projection loss | batch | samples / s | s / step | peak MB |",
             "|---|---|---:|---:|---:|---:|"]
    for c in cases:
        lines.append(f"| {c.stage} | {c.projection} | {c.batch} | {c.samples_per_s:.3g} | "
                     f"{c.step_s:.3g} | {c.peak_mb:.0f} |")
    return "\n".join(lines)
