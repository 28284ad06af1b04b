"""Training speed and memory: samples per second and peak memory of one optimiser step of
each stage, with and without the projection loss (rendered by the torch projector, and by
the Triton kernels where CUDA is present).

Stages, as train/autoencoder.py and train/latent.py run them (the configs' activation
checkpointing; float32, or autocast to ``precision``):

- ``autoencoder``: forward, L1 reconstruction + KL (or VQ) loss, [+ L1 between the DRRs of
  input and reconstruction, ``x2ct.autoencoder.losses.ProjectionLoss``], backward, AdamW;
  on ``crop``^3 volumes when given (train/autoencoder.py --crop), else the whole field.
- ``latent``: ``DiffusionLoss`` on clean latents and X-rays (the denoiser, the frozen
  autoencoder's decoder under checkpointing for the projection loss, rendered for
  ``projection_samples`` samples of the batch as train/latent.py does), backward, AdamW.

With an ``accelerate.Accelerator`` (``python eval/benchmark.py train --accelerate``, or
under ``accelerate launch``) the step runs as the training scripts run it: the model and
optimiser prepared (DistributedDataParallel over the processes), ``accelerator.autocast``
and ``accelerator.backward``; samples per second then count every process's batch.

The projector backend is chosen through ``X2CT_PROJECTOR_BACKEND`` (``torch`` forces the
reference; unset, CUDA tensors take Triton), as every user of ``project`` would see it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from x2ct.eval.memory import PeakMemory

__all__ = ["STAGES", "TrainCase", "markdown_table", "memory_per_sample", "per_sample_text",
           "projection_backends",
           "run_train_benchmark", "volume_text"]

STAGES = ("autoencoder", "latent")


@dataclass
class TrainCase:
    stage: str  # "autoencoder" or "latent"
    projection: str  # "off", or the projector backend of the projection loss
    batch: int  # per process
    step_s: float  # median seconds of one optimiser step
    peak_mb: float  # CUDA: max allocated (weights, optimiser state included); CPU: RSS growth
    precision: str = "fp32"  # or the autocast dtype ("bf16")
    volume: tuple[int, int, int] | None = None  # CT voxels a sample holds (crop or field)
    processes: int = 1  # data-parallel processes, each stepping ``batch`` samples

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.processes / self.step_s

    def row(self) -> dict:
        return {**asdict(self), "samples_per_s": self.samples_per_s}

    @classmethod
    def from_row(cls, row: dict) -> TrainCase:
        """The case a :meth:`row` was made from (read back from the benchmark's JSON)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in row.items() if k in names}
        if kwargs.get("volume") is not None:
            kwargs["volume"] = tuple(kwargs["volume"])
        return cls(**kwargs)


def volume_text(volume: Sequence[int] | None) -> str:
    """"128x128x128", or "-" where no volume was recorded."""
    return "x".join(map(str, volume)) if volume else "-"


def memory_per_sample(cases: Sequence[TrainCase]) -> dict[tuple, float]:
    """Peak MB each further sample of a batch adds, per (stage, projection, precision,
    volume): the slope of peak memory over the batch sizes measured (least squares; the
    intercept is the weights, optimiser state and workspace)."""
    groups: dict[tuple, list[TrainCase]] = {}
    for c in cases:
        groups.setdefault((c.stage, c.projection, c.precision, c.volume), []).append(c)
    out = {}
    for key, cs in groups.items():
        if len({c.batch for c in cs}) > 1:
            out[key] = float(np.polyfit([c.batch for c in cs], [c.peak_mb for c in cs], 1)[0])
    return out


def per_sample_text(mb: float) -> str:
    """A slope of :func:`memory_per_sample` as a table cell. A negative slope is not a
    measurement: on a CPU the peak is the resident set's growth during the call, and the
    allocator hands the first (smallest) batch's freed memory to the later ones."""
    if mb < 0:
        return "not measurable (peak fell with the batch: allocator reuse)"
    return f"{mb:.0f} MB"


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


class _Runner:
    """How a step runs: plainly (``torch.autocast`` to ``precision``, ``loss.backward()``)
    or through an Accelerator (prepared model and optimiser, its autocast and backward)."""

    def __init__(self, device, precision: str, accelerator=None):
        self.device, self.precision, self.accelerator = device, precision, accelerator

    def prepare(self, model, opt):
        return (model, opt) if self.accelerator is None else self.accelerator.prepare(model, opt)

    def autocast(self):
        from x2ct.eval.memory import autocast

        if self.accelerator is not None:
            return self.accelerator.autocast()
        return autocast(self.device, self.precision)

    def backward(self, loss):
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)


def _autoencoder_step(ae_config, shape, batch, runner: _Runner, projection: bool,
                      detector_shape):
    from x2ct.autoencoder import CTAutoencoder
    from x2ct.autoencoder.losses import ProjectionLoss, kl_loss, reconstruction_loss

    device = runner.device
    model = CTAutoencoder(ae_config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, opt = runner.prepare(model, opt)
    proj = ProjectionLoss(ae_config.spacing, ae_config.hu_window, detector_shape) \
        if projection else None
    x = torch.rand(batch, 1, *shape, device=device) * 2 - 1

    def step():
        with runner.autocast():
            out = model(x)
        x_hat = out["reconstruction"].float()
        loss = reconstruction_loss(x_hat, x)
        if ae_config.kind == "kl":
            loss = loss + 1e-6 * kl_loss(out["z_mu"].float(), out["z_sigma"].float())
        else:
            loss = loss + out["quantization_loss"].float()
        if proj is not None:
            loss = loss + 0.1 * proj(x_hat, x)
        runner.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _latent_step(ld_config, autoencoder, batch, runner: _Runner, projection: bool,
                 projection_samples: int):
    from x2ct.diffusion import DiffusionLoss, LatentDenoiser, ProjectionLoss

    device = runner.device
    c = ld_config.replace(projection_weight=ld_config.projection_weight or 0.1) if projection \
        else ld_config.replace(projection_weight=0.0)
    model = LatentDenoiser(c).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, opt = runner.prepare(model, opt)
    ae = autoencoder.to(device).eval().requires_grad_(False)
    proj = ProjectionLoss(ae, c.geometry_obj, c.ct_shape, c.xray_scale, c.projection_step,
                          c.projection_weighting) if projection else None
    loss_fn = DiffusionLoss(c, proj, projection_samples)
    z0 = torch.randn(batch, c.latent_channels, *c.latent_size, device=device)
    xrays = torch.rand(batch, c.num_views, *c.xray_shape, device=device) * 0.5

    def step():
        with runner.autocast():
            terms = loss_fn(model, z0, xrays)
        runner.backward(DiffusionLoss.total(terms))
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
    precision: str = "fp32",
    crop: int | None = None,
    projection_samples: int = 1,
    accelerator=None,
) -> list[TrainCase]:
    """Time one training step of each stage for each batch size and projection variant,
    with the networks (configs) of ``recon`` (a Reconstructor, trained or not) on its
    device (the accelerator's, when given). The denoiser and autoencoder are rebuilt from
    their configs for training; ``crop`` sets the autoencoder's training volume
    (``crop``^3, train/autoencoder.py --crop), default the whole field."""
    from x2ct.eval.memory import accelerate_precision

    wanted = accelerate_precision(precision)  # a precision it does not know is refused
    if accelerator is not None:  # its autocast runs: the label must say what it runs
        mixed = str(accelerator.mixed_precision)
        if mixed != wanted:
            raise ValueError(
                f"precision {precision!r}, but the accelerator runs mixed precision {mixed!r}: "
                f"pass the precision it runs, or an Accelerator(mixed_precision=...) to match")
    device = recon.device if accelerator is None else accelerator.device
    recon = recon.to(device)
    backends = projection_backends(device) if backends is None else list(backends)
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {s!r}")
    if crop is not None and (crop < 1 or crop % recon.autoencoder.config.divisibility):
        raise ValueError(f"crop {crop} must be a positive multiple of "
                         f"{recon.autoencoder.config.divisibility}")
    runner = _Runner(device, precision, accelerator)
    processes = 1 if accelerator is None else accelerator.num_processes
    cases = []
    for stage in stages:
        volume = tuple(recon.shape) if stage == "latent" or crop is None else (crop,) * 3
        for batch in batch_sizes:
            for backend in backends:
                torch.manual_seed(seed)
                with _projector_backend(backend):
                    if stage == "autoencoder":
                        step = _autoencoder_step(recon.autoencoder.config, volume, batch,
                                                 runner, backend != "off",
                                                 recon.config.xray_shape)
                    else:
                        step = _latent_step(recon.config, recon.autoencoder, batch, runner,
                                            backend != "off", projection_samples)
                    seconds, peak = _measure(step, device, reps)
                del step
                if accelerator is not None:  # prepare() keeps every model and optimiser
                    accelerator.free_memory()  # (and empties the CUDA cache)
                elif device.type == "cuda":
                    torch.cuda.empty_cache()
                cases.append(TrainCase(stage, backend, int(batch), seconds, peak, precision,
                                       volume, processes))
    return cases


def markdown_table(cases: Sequence[TrainCase], title: str) -> str:
    lines = [title, "", "| stage | volume | projection loss | precision | batch | samples / s | "
             "s / step | peak MB |", "|---|---|---|---|---:|---:|---:|---:|"]
    for c in cases:
        batch = f"{c.batch} x {c.processes}" if c.processes > 1 else f"{c.batch}"
        lines.append(f"| {c.stage} | {volume_text(c.volume)} | {c.projection} | {c.precision} "
                     f"| {batch} | {c.samples_per_s:.3g} | {c.step_s:.3g} | {c.peak_mb:.0f} |")
    slopes = memory_per_sample(cases)
    if slopes:
        lines += ["", "Peak memory per further sample of a batch (slope over the batch sizes):", ""]
        for (stage, proj, prec, volume), mb in slopes.items():
            lines.append(f"- {stage}, {volume_text(volume)}, projection {proj}, {prec}: "
                         f"{per_sample_text(mb)}")
    return "\n".join(lines)
