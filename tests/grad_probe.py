"""Run a training script for one optimiser step and save the gradient it stepped with.

    python tests/grad_probe.py {autoencoder,latent} OUT_DIR ARGS...
    accelerate launch --multi_gpu --num_processes 2 tests/grad_probe.py latent OUT_DIR ARGS...

writes OUT_DIR/grad_rank<r>.safetensors: every parameter's ``.grad`` as the optimiser's
first ``step()`` sees it, i.e. after ``accelerator.backward`` and DistributedDataParallel's
all-reduce across processes (and after the script's clipping: pass --grad-clip 0).

Whole runs cannot tell a mean of the ranks' gradients from their sum: AdamW's update is
invariant to the gradient's scale. The gradient itself can: two processes at batch B
each must step with the gradient one process computes at batch 2B, because the ranks'
batches are the two halves of the single process's batch (train/sampling.py: sample
position p = (step * world + rank) * B + k) and every loss term is a mean over samples.

Only the randomness of a step is changed here (test-only), from per batch to per sample,
so that a sample gets the same noise whichever process draws it: the scripts seed the
global generator per (seed, step, rank) and draw a whole batch at once.
- autoencoder: the KL posterior is used at its mean (MONAI ``AutoencoderKL.sampling``
  returns z_mu): no sampling noise (--crop 0 and no adversarial loss, the defaults of the
  test, leave no other randomness).
- latent: each sample's timestep, noise and condition drop are drawn from a generator
  seeded by that sample's latent, and handed to ``DiffusionLoss`` in place of its batch
  draws; its arithmetic is unchanged (--projection-weight 0: the projection loss renders
  only the heaviest-weighted sample of each batch, which is not a per-sample mean).
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file


def _seed_of(x: torch.Tensor) -> int:
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _per_sample_diffusion_loss(base):
    """A ``DiffusionLoss`` subclass drawing (t, eps, drop) per sample (module docstring)."""
    import x2ct.diffusion.loss as loss_module

    class PerSampleDraws(base):
        def __call__(self, net, x0, xrays, **kwargs):  # views, drr: as the loss takes
            t, eps, u = [], [], []
            for row in x0:
                g = torch.Generator().manual_seed(_seed_of(row))
                t.append(self.schedule.sample_timesteps(1, generator=g))
                eps.append(torch.randn(row.shape, generator=g, dtype=row.dtype))
                u.append(torch.rand(1, generator=g))
            t, eps, u = torch.cat(t), torch.stack(eps), torch.cat(u)
            draws = types.SimpleNamespace(
                randn_like=lambda x: eps.to(x),
                rand=lambda n, device=None: u.to(device),
            )
            proxy = types.SimpleNamespace(**{**vars(torch), **vars(draws)})
            saved_torch, saved_t = loss_module.torch, self.schedule.sample_timesteps
            loss_module.torch = proxy
            self.schedule.sample_timesteps = lambda b, generator=None, device=None: t.to(device)
            try:
                return super().__call__(net, x0, xrays, **kwargs)
            finally:
                loss_module.torch = saved_torch
                self.schedule.sample_timesteps = saved_t

    return PerSampleDraws


def install(kind: str, out_dir: Path, setattr_=setattr):
    """Patch the training script ``kind`` (module ``x2ct.train.<kind>``) as the module
    docstring says, with ``setattr_`` (pytest's ``monkeypatch.setattr`` in a test, undone
    after it); returns the script module."""
    import importlib

    script = importlib.import_module(f"x2ct.train.{kind}")
    if kind == "autoencoder":
        from monai.networks.nets import AutoencoderKL

        setattr_(AutoencoderKL, "sampling", lambda self, z_mu, z_sigma: z_mu)
    else:
        setattr_(script, "DiffusionLoss", _per_sample_diffusion_loss(script.DiffusionLoss))
    build_optimizer = script.build_optimizer

    def probing_build_optimizer(model, args):
        optimizer, scheduler = build_optimizer(model, args)
        names = {p: n for n, p in model.named_parameters()}

        def save_grads(opt, *_):
            path = out_dir / f"grad_rank{_rank()}.safetensors"
            if path.exists():
                return
            grads = {names[p]: p.grad.detach().cpu().contiguous()
                     for group in opt.param_groups for p in group["params"]
                     if p.grad is not None}
            save_file(grads, str(path))

        optimizer.register_step_pre_hook(save_grads)
        return optimizer, scheduler

    setattr_(script, "build_optimizer", probing_build_optimizer)
    return script


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    install(kind, out).main(sys.argv[3:])
