"""Benchmarks, written as scripts (never timed assertions in tests).

    python eval/benchmark.py projector [--size 128 [256 ...]] [--detector 128]
                                       [--device cpu|cuda] [--dtypes float32 bfloat16]
    python eval/benchmark.py reconstruct [--model DIR | --config tiny --ae-config kl-tiny
                                         --shape 64 [--detector 64]] [--samplers ddim ddpm rflow]
                                         [--steps 10 25 50] [--batch-sizes 1 2 4]
                                         [--precision fp32 bf16]
    python eval/benchmark.py train [--model DIR | --config ... --shape 64]
                                   [--stages autoencoder latent] [--batch-sizes 1 2]
                                   [--crop 64] [--precision fp32|bf16] [--accelerate]
    # the 1 mm base recipe: --config base --ae-config kl-base-1mm --shape 128

Each prints a markdown table, writes JSON with ``--json PATH`` and draws seconds and peak
memory against size (projector), sampler steps (reconstruct) or batch size (train) with
``--plot PATH``. Peak memory: CUDA max allocated; CPU peak resident-set growth
(``x2ct.eval.memory``). Record the card with the numbers: the JSON holds ``machine``.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch

from x2ct.cli import InputError, run_main
from x2ct.clihelp import HelpFormatter
from x2ct.eval.memory import (
    PRECISIONS,
    accelerate_precision,
    device_name,
    memory_note,
    peak_memory_mb,
)
from x2ct.eval.projector_benchmark import (
    describe_setting,
    markdown_table,
    run_projector_benchmark,
)
from x2ct.fileio import atomic_path
from x2ct.models import model_path


def machine(device: str | None = None) -> str:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device_name(device)


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


def _plot(path: Path, series: dict, xlabel: str, title: str, log_x: bool = False) -> None:
    from x2ct.eval.figures import benchmark_plot, save_figure

    save_figure(benchmark_plot(series, xlabel, title, log_x), path)
    print(f"wrote {path}")


def _check_device(device: str) -> None:
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but CUDA is not available")


# --------------------------------------------------------------------------- projector
def projector(args) -> int:
    _check_device(args.device)
    all_cases = []
    for size in args.size:
        cases = run_projector_benchmark(
            size=size, detector=args.detector, device=args.device, step=args.step,
            reps=args.reps, dtypes=tuple(args.dtypes), peers=not args.no_peers,
        )
        title = f"Projector on {machine(args.device)}: " + describe_setting(
            size, args.detector, args.step)
        print(markdown_table(cases, title))
        all_cases += [(size, c) for c in cases]
    if args.json:
        _write_json(args.json, {
            "benchmark": "projector", "machine": machine(args.device),
            "size": args.size[0] if len(args.size) == 1 else args.size,
            "detector": args.detector, "step": args.step, "torch": torch.__version__,
            "cases": [{**c.row(), "size": size} for size, c in all_cases],
        })
    if args.plot:
        series: dict = {}
        for size, c in all_cases:
            series.setdefault(f"{c.method} {c.dtype} fwd", []).append(
                (size, c.forward_ms / 1e3, c.peak_mb))
        _plot(args.plot, series, "volume size N (N^3 voxels)",
              f"Projector, {args.detector}^2 detector, {machine(args.device)}", log_x=True)
    return 0


# --------------------------------------------------------------------------- pipelines
def _pipeline(args):
    """The Reconstructor to time: a saved one (--model) or a random one of named sizes."""
    from x2ct.eval.reconstruct_benchmark import build_pipeline

    device = args.device
    _check_device(device)
    if args.model is not None:
        from x2ct.diffusion import Reconstructor
        from x2ct.diffusion.pipeline import check_pipeline_dir

        try:
            check_pipeline_dir(args.model)
        except FileNotFoundError as e:
            raise InputError(str(e)) from e
        recon = Reconstructor.from_pretrained(args.model, device=device)
        described = f"model {args.model}"
    else:
        try:
            detector = None if args.detector is None else (args.detector,) * 2
            recon = build_pipeline(args.config, args.ae_config, (args.shape,) * 3,
                                   seed=args.seed, detector=detector).to(device)
        except ValueError as e:
            raise InputError(str(e)) from e
        described = f"random '{args.config}' denoiser + '{args.ae_config}' autoencoder"
    n_params = sum(p.numel() for p in recon.denoiser.parameters())
    n_ae = sum(p.numel() for p in recon.autoencoder.parameters())
    setting = {"precision": args.precision,
               "model": args.model, "config": None if args.model else args.config,
               "ae_config": None if args.model else args.ae_config,
               "ct_shape": list(recon.shape), "spacing": list(recon.spacing),
               "latent_size": list(recon.config.latent_size),
               "xray_shape": list(recon.config.xray_shape),
               "denoiser_parameters": n_params, "autoencoder_parameters": n_ae}
    described += (f": CT {'x'.join(map(str, recon.shape))}, latent "
                  f"{recon.config.latent_channels}x{'x'.join(map(str, recon.config.latent_size))}"
                  f", {n_params / 1e6:.2f} M denoiser + {n_ae / 1e6:.2f} M autoencoder params")
    return recon, described, setting


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    from x2ct.autoencoder import AUTOENCODER_CONFIGS
    from x2ct.diffusion import LATENT_DIFFUSION_CONFIGS

    p.add_argument("--model", type=model_path,
                   help="a model's name or folder (default: a random pipeline of "
                   "--config/--ae-config at --shape: weights do not change the cost)")
    p.add_argument("--config", default="tiny", choices=list(LATENT_DIFFUSION_CONFIGS))
    p.add_argument("--ae-config", default="kl-tiny", choices=list(AUTOENCODER_CONFIGS))
    p.add_argument("--shape", type=int, default=64, help="CT size N (N^3 voxels), random model")
    p.add_argument("--detector", type=int, default=None,
                   help="detector D (D^2 pixels), random model (default: the field's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--plot", type=Path, help="also draw seconds and memory (PNG, PDF, SVG)")


def _report_pipeline(args, name: str, cases, table_md: str, setting: dict, series_of,
                     xlabel: str, plot_title: str) -> int:
    """Print the markdown table; with --json and --plot write the cases (as benchmark
    ``name``) and their plot. ``series_of(case)`` -> (series name, (x, seconds, peak MB))."""
    device = str(args.device)
    print(table_md)
    if args.json:
        if torch.device(device).type == "cuda":  # each case reset CUDA's peak: the largest
            process_peak = max((c.peak_mb for c in cases), default=None)
        else:  # VmHWM: the whole process's, weights and all
            process_peak = peak_memory_mb(device)
        _write_json(args.json, {
            "benchmark": name, "machine": machine(device), "device": device,
            "torch": torch.__version__, "memory": memory_note(device), **setting,
            "process_peak_mb": process_peak,
            "cases": [c.row() for c in cases],
        })
    if args.plot:
        series: dict = {}
        for c in cases:
            key, point = series_of(c)
            series.setdefault(key, []).append(point)
        _plot(args.plot, series, xlabel, plot_title)
    return 0


# --------------------------------------------------------------------------- reconstruct
def reconstruct(args) -> int:
    from x2ct.eval.reconstruct_benchmark import markdown_table as table
    from x2ct.eval.reconstruct_benchmark import run_reconstruct_benchmark

    recon, described, setting = _pipeline(args)
    cases = []
    with torch.no_grad():
        for precision in args.precision:
            cases += run_reconstruct_benchmark(recon, args.samplers, args.steps,
                                               args.batch_sizes, args.guidance,
                                               args.num_samples, args.reps, args.seed, precision)
    title = (f"Reconstruction on {machine(args.device)}, {described}; seconds per volume "
             f"(median of {args.reps}), {memory_note(args.device)}")
    return _report_pipeline(
        args, "reconstruct", cases, table(cases, title), setting,
        lambda c: (f"{c.sampler}, batch {c.batch}", (c.steps, c.total_s, c.peak_mb)),
        "sampler steps", f"Reconstruction per volume, {machine(args.device)}")


# --------------------------------------------------------------------------- train
def train(args) -> int:
    from x2ct.eval.train_benchmark import markdown_table as table
    from x2ct.eval.train_benchmark import run_train_benchmark

    accelerator = None
    if args.accelerate:  # as the training scripts run: prepared, its autocast and backward
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision=accelerate_precision(args.precision),
                                  cpu=torch.device(args.device).type == "cpu")
        args.device = str(accelerator.device)  # this process's device (one per GPU)
    device = args.device
    recon, described, setting = _pipeline(args)
    try:
        cases = run_train_benchmark(recon, args.batch_sizes, args.stages, args.projections,
                                    args.reps, args.seed, args.precision, args.crop,
                                    args.projection_samples, accelerator)
    except ValueError as e:
        raise InputError(str(e)) from e
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    if accelerator is not None:
        described += f", {accelerator.num_processes} process(es) through Accelerate"
    setting.update(crop=args.crop, projection_samples=args.projection_samples,
                   accelerate=args.accelerate)
    title = (f"Training steps on {machine(device)}, {described}; median of {args.reps} "
             f"steps, {memory_note(device)}")
    return _report_pipeline(
        args, "train", cases, table(cases, title), setting,
        lambda c: (f"{c.stage}, projection {c.projection}", (c.batch, c.step_s, c.peak_mb)),
        "batch size", f"One training step, {machine(device)}")


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python eval/benchmark.py", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True, parser_class=partial(
        argparse.ArgumentParser, formatter_class=HelpFormatter))
    p = sub.add_parser("projector", help="DRR rendering speed and memory against peers")
    p.add_argument("--size", type=int, nargs="+", default=[128],
                   help="volume size(s) N (N^3 voxels)")
    p.add_argument("--detector", type=int, default=128, help="detector size D (D^2 pixels)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--step", type=float, default=0.5, help="sample spacing in voxels")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["float32"],
                   choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-peers", action="store_true", help="skip nanodrr and DiffDRR")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--plot", type=Path, help="also draw forward time and memory against size")
    p.set_defaults(fn=projector)

    from x2ct.diffusion import SAMPLERS

    r = sub.add_parser("reconstruct", help="seconds and memory per volume for each sampler "
                       "and step count, split into encoding, sampling and decoding")
    _pipeline_args(r)
    r.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    r.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    r.add_argument("--guidance", type=float, default=None, help="guidance scale (model's)")
    r.add_argument("--num-samples", type=int, default=1, help="samples per case")
    r.add_argument("--reps", type=int, default=1)
    r.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS),
                   help="fp32 and/or autocast to bf16/fp16 (the weights stay float32)")
    r.set_defaults(fn=reconstruct)

    from x2ct.eval.train_benchmark import STAGES

    t = sub.add_parser("train", help="samples/s and memory of one training step per stage, "
                       "with and without the projection loss")
    _pipeline_args(t)
    t.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    t.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32, or autocast to bf16/fp16 (with --accelerate: its mixed "
                   "precision); the weights stay float32")
    t.add_argument("--crop", type=int, default=None,
                   help="autoencoder stage on crop^3 volumes (train/autoencoder.py --crop); "
                   "default the whole field")
    t.add_argument("--projections", nargs="+", default=None, choices=["off", "torch", "triton"],
                   help="projection-loss variants (default: off, torch, and triton on CUDA)")
    t.add_argument("--projection-samples", type=int, default=1,
                   help="samples per batch rendered for the latent stage's projection loss "
                   "(train/latent.py's default 1; 0: all)")
    t.add_argument("--accelerate", action="store_true",
                   help="step through an accelerate.Accelerator (run under `accelerate launch "
                   "--num_processes N` for data parallelism)")
    t.set_defaults(fn=train)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    run_main(main)
