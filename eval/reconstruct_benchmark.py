"""Reconstruction speed and memory: seconds and peak memory per volume for each sampler,
step count and batch size, split into X-ray encoding, sampling and decoding.

The split is the pipeline's own (``Reconstructor.__call__(..., timings=dict)``):

    encode:  X-ray encoder and back-projection of the features
    sample:  starting noise and the sampler's loop
    decode:  autoencoder decoding to HU

and the whole call ``recon(xrays, ...)`` is timed around it (``total``), with its peak
memory (CUDA: max allocated, weights included; CPU: resident-set growth during the call).
Weights do not change the cost, so a randomly initialised pipeline of a named size
(:func:`build_pipeline`) answers "does it fit my GPU, how long per volume" before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from x2ct.eval.memory import PeakMemory

__all__ = ["ReconstructCase", "build_pipeline", "markdown_table", "run_reconstruct_benchmark"]


@dataclass
class ReconstructCase:
    sampler: str
    steps: int
    batch: int  # cases per call
    guidance_scale: float
    num_samples: int  # samples per case
    encode_s: float  # seconds per volume, X-ray encoding
    sample_s: float  # seconds per volume, the sampler's loop
    decode_s: float  # seconds per volume, autoencoder decoding
    total_s: float  # seconds per volume, the Reconstructor call end to end
    peak_mb: float  # of the whole call (see the module docstring)
    precision: str = "fp32"  # "fp32", or the autocast dtype the call ran under ("bf16")

    def row(self) -> dict:
        return asdict(self)


def build_pipeline(config: str = "tiny", ae_config: str = "kl-tiny",
                   shape: Sequence[int] = (64, 64, 64), spacing: Sequence[float] | None = None,
                   seed: int = 0, detector: Sequence[int] | None = None):
    """A randomly initialised Reconstructor of the named sizes for a CT ``shape`` (the
    datasets' default AP + lateral geometry; ``detector`` (H, W) pixels, default the
    field's)."""
    from x2ct.autoencoder import CTAutoencoder
    from x2ct.autoencoder import get_config as get_ae_config
    from x2ct.data import default_geometry
    from x2ct.diffusion import LatentDenoiser, Reconstructor, get_config

    torch.manual_seed(seed)
    ae_cfg = get_ae_config(ae_config) if spacing is None else get_ae_config(
        ae_config, spacing=tuple(float(s) for s in spacing))
    shape = tuple(int(n) for n in shape)
    f = ae_cfg.downsample_factor
    if any(n % f for n in shape):
        raise ValueError(f"shape {shape} must be divisible by the autoencoder's {f}")
    cfg = get_config(config, latent_channels=ae_cfg.latent_channels,
                     latent_size=tuple(n // f for n in shape), ct_spacing=ae_cfg.spacing,
                     downsample_factor=f,
                     geometry=default_geometry(shape, ae_cfg.spacing, detector).to_dict())
    return Reconstructor(LatentDenoiser(cfg), CTAutoencoder(ae_cfg))


def run_reconstruct_benchmark(
    recon,
    samplers: Sequence[str] = ("ddim", "ddpm", "rflow"),
    steps_list: Sequence[int] = (10, 25, 50),
    batch_sizes: Sequence[int] = (1,),
    guidance_scale: float | None = None,
    num_samples: int = 1,
    reps: int = 1,
    seed: int = 0,
    precision: str = "fp32",
) -> list[ReconstructCase]:
    """Time every (sampler, steps, batch size) after one warm-up call per batch size;
    medians over ``reps``. ``precision`` "bf16" or "fp16" runs the calls under
    ``torch.autocast`` of that dtype (the weights stay float32)."""
    from x2ct.eval.memory import autocast

    scale = recon.config.guidance_scale if guidance_scale is None else float(guidance_scale)
    device = recon.device
    cases = []
    for batch in batch_sizes:
        xrays = torch.rand(batch, recon.config.num_views, *recon.config.xray_shape,
                           generator=torch.Generator().manual_seed(seed)) * 0.5
        with autocast(device, precision):
            recon(xrays, sampler="ddim", steps=1, guidance_scale=scale,
                  projection_guidance=False, num_samples=num_samples)  # warm-up
        for sampler in samplers:
            for steps in steps_list:
                parts, totals, peaks = [], [], []
                for _ in range(reps):
                    gen = torch.Generator().manual_seed(seed)
                    timings: dict[str, float] = {}
                    with PeakMemory(device) as mem, autocast(device, precision):
                        recon(xrays, sampler=sampler, steps=steps, guidance_scale=scale,
                              num_samples=num_samples, generator=gen, timings=timings,
                              projection_guidance=False)  # the sampler alone
                    totals.append(mem.seconds)
                    peaks.append(mem.mb)
                    parts.append(timings)
                enc, smp, dec = (float(np.median([p[k] for p in parts])) / batch
                                 for k in ("encode", "sample", "decode"))
                cases.append(ReconstructCase(sampler, int(steps), int(batch), scale,
                                             int(num_samples), enc, smp, dec,
                                             float(np.median(totals)) / batch, float(max(peaks)),
                                             precision))
    return cases


def markdown_table(cases: Sequence[ReconstructCase], title: str) -> str:
    lines = [title, "",
             "| sampler | steps | batch | precision | s / volume | encode s | sample s | "
             "decode s | peak MB |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for c in cases:
        lines.append(f"| {c.sampler} | {c.steps} | {c.batch} | {c.precision} | "
                     f"{c.total_s:.3g} | {c.encode_s:.3g} | {c.sample_s:.3g} | "
                     f"{c.decode_s:.3g} | {c.peak_mb:.0f} |")
    return "\n".join(lines)
