"""Train a 3-D CT autoencoder (stage one of x2ct).

    accelerate launch train/autoencoder.py --config kl-tiny --run-dir runs/ae --max-steps 5000
    python train/autoencoder.py --config kl-tiny --run-dir runs/ae --max-minutes 60

Data: synthetic spine phantoms (training seeds [seed, seed + n_train), validation seeds
10_000 + i, never overlapping) or a folder of CTs (--data). Each step draws a batch whose
order and random crops are functions of (seed, step, rank) only (train/sampling.py), so
rerunning the same command resumes from RUN/checkpoints exactly where it stopped.
At the end: fit the latent scaling on training volumes and save the EMA weights to RUN/model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from x2ct.autoencoder import AUTOENCODER_CONFIGS, CTAutoencoder, get_config
from x2ct.autoencoder.losses import (
    PerceptualLoss,
    ProjectionLoss,
    discriminator_loss,
    edge_loss,
    generator_adversarial_loss,
    kl_loss,
    make_discriminator,
    reconstruction_loss,
)
from x2ct.cli import InputError, run_main
from x2ct.clihelp import HelpFormatter
from x2ct.data.transforms import hu_to_unit
from x2ct.eval.metrics import unit_metrics
from x2ct.train.checkpoint import resume_latest
from x2ct.train.ema import EMA
from x2ct.train.figures import reconstruction_figure, save_figure
from x2ct.train.loop import (
    add_optimisation_args,
    add_run_args,
    add_terms,
    args_record,
    build_optimizer,
    end_of_step,
    finish_run,
    run_accelerator,
    save_last_checkpoint,
    val_seeds,
    write_checksums,
)
from x2ct.train.progress import BudgetBar, budget_line
from x2ct.train.run import Deadline, RunDir, StepCounter, save_args
from x2ct.train.sampling import batch_indices, make_generator, random_crop


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--config", default="kl-tiny", choices=sorted(AUTOENCODER_CONFIGS))
    p.add_argument("--latent-channels", type=int, default=None, help="override the config's")
    p.add_argument("--run-dir", required=True)
    p.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="start from this trained autoencoder's weights (a folder with config.json and "
        "model.safetensors, e.g. models/ae-kl-tiny): fine-tuning on new data. Its config "
        "must match --config; a resumed run ignores it",
    )
    p.add_argument(
        "--data",
        default=None,
        help="folder of CTs: split train to train, val to validate (default: phantoms)",
    )
    p.add_argument("--n-train", type=int, default=64, help="number of training phantoms")
    p.add_argument("--n-val", type=int, default=4, help="number of validation phantoms")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), help="phantom voxels")
    p.add_argument(
        "--regions",
        nargs="+",
        default=["lumbar"],
        help="phantom regions, assigned to seeds in turn (seed %% len)",
    )
    p.add_argument("--crop", type=int, default=32, help="random crop size (0: full volumes)")
    p.add_argument(
        "--full-from",
        type=int,
        default=None,
        help="from this step on, train on full volumes with --full-batch-size",
    )
    p.add_argument("--full-batch-size", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    add_optimisation_args(p, lr=5e-4, schedule="cosine", ema_decay=0.998)
    add_run_args(p, max_steps=1000, max_minutes=None, save_every=500, val_every=500)
    p.add_argument("--l2-weight", type=float, default=0.0)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--vq-weight", type=float, default=1.0)
    p.add_argument("--adv-weight", type=float, default=0.0)
    p.add_argument("--adv-start", type=int, default=0, help="step the adversarial loss starts")
    p.add_argument("--edge-weight", type=float, default=1.0)
    p.add_argument("--perceptual-weight", type=float, default=0.0)
    p.add_argument("--projection-weight", type=float, default=0.0)
    p.add_argument(
        "--scaling-volumes",
        type=int,
        default=16,
        help="training volumes encoded to fit the latent scaling",
    )
    return p.parse_args(argv)


def init_from(model: CTAutoencoder, directory: str) -> None:
    """Load a trained autoencoder's weights (``--init-from``); its networks must have the
    same shapes as ``model``'s."""
    from x2ct.autoencoder.model import check_model_dir
    from x2ct.state import read_safetensors

    try:
        _, weights = check_model_dir(directory)
        state = read_safetensors(weights)[0]
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--init-from: {e}") from e
    mine = model.state_dict()
    wrong = sorted(k for k in set(mine) | set(state)
                   if k not in mine or k not in state or mine[k].shape != state[k].shape)
    if wrong:
        raise InputError(f"--init-from {directory}: its networks differ from --config's "
                         f"({len(wrong)} tensors, e.g. {wrong[:3]})")
    model.load_state_dict(state)


def load_volumes(args, seeds: list[int], config) -> torch.Tensor:
    """Phantoms for `seeds` as (N, 1, X, Y, Z) in [-1, 1] over the config's HU window."""
    from x2ct.data.phantom import spine_phantom

    vols = []
    for s in seeds:
        region = args.regions[s % len(args.regions)]
        hu = spine_phantom(
            shape=tuple(args.shape), spacing=config.spacing, seed=s, region=region
        ).hu
        vols.append(hu_to_unit(torch.as_tensor(hu, dtype=torch.float32), config.hu_window)[None])
    return torch.stack(vols)


def load_folder(args, config, split: str, limit: int | None = None) -> torch.Tensor | None:
    """CTs of --data's `split` at the model's spacing and --shape, as (N, 1, X, Y, Z) in
    [-1, 1] (CTFolderDataset: RAS, resampled, cropped or padded around the spine); None
    for an empty validation split."""
    from x2ct.data import CTFolderDataset

    dataset = CTFolderDataset(
        args.data,
        spacing=config.spacing,
        shape=tuple(args.shape),
        split=split,
        window=config.hu_window,
        with_labels=False,
    )
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0 and split == "val":
        print(f"{args.data}: the val split is empty; no validation")
        return None
    if n == 0:
        raise ValueError(f"{args.data}: no CT in split {split!r}")
    return torch.stack([torch.as_tensor(dataset[i]["ct"], dtype=torch.float32) for i in range(n)])


@torch.no_grad()
def validate(model: CTAutoencoder, volumes: torch.Tensor, device) -> tuple[dict, torch.Tensor]:
    """Mean PSNR / SSIM / MAE (HU) of the round trip, and the first reconstruction."""
    scores, first = [], None
    for v in volumes:
        x = v[None].to(device)
        x_hat = model.reconstruct(x).clamp(-1, 1)
        scores.append(unit_metrics(x_hat, x))
        first = x_hat if first is None else first
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}, first


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = RunDir(Path(args.run_dir))
    accelerator = run_accelerator(run, args, "autoencoder")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        save_args(run, args_record(args, argv))

    # ---- model, EMA, losses, optimisers
    overrides = {} if args.latent_channels is None else {"latent_channels": args.latent_channels}
    config = get_config(args.config, **overrides)
    model = CTAutoencoder(config)
    if args.init_from is not None:
        init_from(model, args.init_from)
    ema = EMA(model, args.ema_decay)
    perceptual = PerceptualLoss().to(device) if args.perceptual_weight > 0 else None  # errors here
    projection = (
        ProjectionLoss(config.spacing, config.hu_window) if args.projection_weight > 0 else None
    )
    optimizer, scheduler = build_optimizer(model, args)
    counter = StepCounter()
    if args.adv_weight > 0:
        disc = make_discriminator()
        d_optimizer = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.99))
        model, optimizer, disc, d_optimizer = accelerator.prepare(
            model, optimizer, disc, d_optimizer
        )
    else:
        disc = d_optimizer = None
        model, optimizer = accelerator.prepare(model, optimizer)
    ema.model.to(device)
    # The scheduler is not prepared: prepared, it would step once per process per step
    # and the LR schedule would depend on the number of processes.
    state = dict(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, step=counter)
    if disc is not None:
        state.update(discriminator=disc, d_optimizer=d_optimizer)
    resumed = resume_latest(accelerator, run.checkpoints, state)
    if resumed is not None:
        accelerator.print(f"resumed from {resumed} at step {counter.step}")

    # ---- data (all in memory: phantoms are small)
    if args.data:
        train_volumes = load_folder(args, config, "train")
        val_volumes = load_folder(args, config, "val", args.n_val) if args.n_val > 0 else None
    else:
        train_seeds = list(range(args.seed, args.seed + args.n_train))
        train_volumes = load_volumes(args, train_seeds, config)
        val_volumes = (
            load_volumes(args, val_seeds(args.seed, args.n_val), config) if args.n_val > 0 else None
        )
    n_train = len(train_volumes)

    tb = None
    if accelerator.is_main_process and not args.no_tensorboard:
        tb = accelerator.get_tracker("tensorboard", unwrap=True)

    # ---- loop
    accelerator.print(budget_line(counter.step, args.max_steps, args.max_minutes,
                                  args.init_from))
    deadline = Deadline(args.max_minutes)
    bar = BudgetBar("autoencoder", counter.step, args.max_steps, deadline.end,
                    disable=not accelerator.is_local_main_process)
    steps_this_run = 0
    model.train()
    while counter.step < args.max_steps and not deadline.passed():
        step = counter.step
        full = args.full_from is not None and step >= args.full_from
        logs = {}
        for k in range(args.grad_accum):
            micro = step * args.grad_accum + k
            bs = args.full_batch_size if full else args.batch_size
            idx = batch_indices(n_train, bs, args.seed, micro, rank, world)
            gen = make_generator(args.seed, micro, rank)
            x = random_crop(train_volumes[idx], None if full or args.crop <= 0 else args.crop, gen)
            x = x.to(device)
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # sampling noise
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = model(x)
                x_hat = out["reconstruction"].float()
                terms = {"rec": reconstruction_loss(x_hat, x, args.l2_weight)}
                if args.edge_weight > 0:
                    terms["edge"] = args.edge_weight * edge_loss(x_hat, x)
                if config.kind == "kl":
                    terms["kl"] = args.kl_weight * kl_loss(out["z_mu"], out["z_sigma"])
                else:
                    terms["vq"] = args.vq_weight * out["quantization_loss"].float()
                if perceptual is not None:
                    terms["perceptual"] = args.perceptual_weight * perceptual(x_hat, x)
                if projection is not None:
                    terms["projection"] = args.projection_weight * projection(x_hat, x)
                use_adv = disc is not None and step >= args.adv_start
                if use_adv:
                    d = accelerator.unwrap_model(disc).requires_grad_(False)
                    terms["adv"] = args.adv_weight * generator_adversarial_loss(d, x_hat)
                    d.requires_grad_(True)
                loss = sum(terms.values())
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if use_adv:
                with accelerator.accumulate(disc):
                    d_loss = discriminator_loss(disc, x, x_hat)
                    accelerator.backward(d_loss)
                    d_optimizer.step()
                    d_optimizer.zero_grad(set_to_none=True)
                terms["disc"] = d_loss.detach()
            add_terms(logs, terms, args.grad_accum)
        scheduler.step()
        counter.step += 1
        steps_this_run += 1
        ema.update(accelerator.unwrap_model(model))
        bar.update(1)
        step = counter.step

        if step % args.log_every == 0 or step == 1:
            logs["train/loss"] = sum(v for k, v in logs.items() if k != "train/disc")
            logs["train/lr"] = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{logs['train/loss']:.4f}", rec=f"{logs['train/rec']:.4f}")
            accelerator.log(logs, step=step)
        if val_volumes is not None and (step % args.val_every == 0 or step == args.max_steps):
            if accelerator.is_main_process:
                scores, first = validate(ema.model, val_volumes, device)
                accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=step)
                accelerator.print(
                    f"step {step}: val psnr {scores['psnr']:.2f} dB, "
                    f"ssim {scores['ssim']:.4f}, mae {scores['mae_hu']:.1f} HU"
                )
                fig = reconstruction_figure(val_volumes[0], first[0], f"step {step} (EMA)")
                save_figure(fig, run.figures / f"val_step_{step:07d}.png", tb, "val/planes", step)
            accelerator.wait_for_everyone()
        if end_of_step(accelerator, run, step, steps_this_run, args, bar, state):
            return run.root  # as if killed here: no final checkpoint, no final model
    bar.close()
    save_last_checkpoint(accelerator, run, counter.step, args, state)

    # ---- final model: EMA weights with the latent scaling fitted on training volumes
    final = ema.model
    with torch.no_grad():
        n_fit = min(args.scaling_volumes, n_train)
        latents = [
            final.encode(train_volumes[i : i + 1].to(device), scale=False) for i in range(n_fit)
        ]
    shift, factor = final.fit_scaling(latents)
    write_checksums(accelerator, run, model, final)  # replicas must agree
    if accelerator.is_main_process:
        final.save_pretrained(run.model)
        accelerator.print(
            f"step {counter.step}: latent shift {shift:.4f}, scaling {factor:.4f}; "
            f"saved {run.model}\nTensorBoard: tensorboard --logdir {run.logs}"
        )
    accelerator.wait_for_everyone()
    finish_run(accelerator, run)
    return run.model


if __name__ == "__main__":
    run_main(main)
