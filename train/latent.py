"""Train the conditional latent diffusion model (stage two of x2ct).

    accelerate launch train/latent.py                       # the default: minutes on a CPU
    accelerate launch train/latent.py --run-dir runs/ldm --n-train 256 --max-minutes 120
    # the 1 mm base recipe (README "Clinical resolution"): a 128^3 field, 256^2 X-rays
    accelerate launch train/latent.py --config base --autoencoder models/ae-kl-base-1mm \
        --shape 128 128 128 --detector 256 256 --batch-size 4 --mixed-precision bf16

``--objective regression`` trains the deterministic baseline instead: the same X-ray
encoder, conditioning and UNet predict the latent in one pass (diffusion/regression.py);
it is saved and loaded as the same Reconstructor (which then ignores the sampler).

With no arguments: synthetic spine phantoms, the repository's autoencoder
(models/ae-kl-tiny), the "tiny" model, 5 minutes of training, into runs/latent.

Data: training phantoms (seeds seed..seed+n_train-1) and validation phantoms (seeds
10_000 + seed + i) at the autoencoder's spacing, with their AP and lateral X-rays from
x2ct.data.PhantomDataset (its default geometry, recorded in the model). The frozen
autoencoder encodes the training CTs once; latents and X-rays are cached in
RUN/latent_cache.safetensors (rebuilt if the autoencoder or the data change). The cache is
made in parts of --cache-chunk-size cases shared among the launched processes, so

    accelerate launch --multi_gpu --num_processes 2 train/latent.py --prepare-only ...

makes it on two cores at once (two processes on a CPU: MULTI_CPU), and a killed build
resumes from the parts it wrote (train/cache.py).

Each step draws a batch whose order and noise are functions of (seed, step, rank) only
(train/sampling.py), so rerunning the same command resumes from RUN/checkpoints exactly
where it stopped (step, optimiser, EMA, LR schedule, RNG). Every --val-every steps the EMA
model reconstructs the validation cases from their X-rays: PSNR, SSIM, MAE (HU) and
projection error go to TensorBoard and the log, a figure to RUN/figures. At the end the
EMA pipeline is saved with save_pretrained to RUN/model (denoiser, X-ray encoder, geometry,
sampler defaults and a copy of the autoencoder) and RUN/metrics.json is written.

Run folder: args.json, latent_cache.safetensors (latent_cache.parts/ while it is made),
checkpoints/step_*/, logs/ (TensorBoard), figures/val_step_*.png, model/, metrics.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset
from tqdm.auto import tqdm

from x2ct.autoencoder import CTAutoencoder
from x2ct.cli import InputError, key_values, run_main
from x2ct.clihelp import HelpFormatter
from x2ct.data import (
    CTFolderDataset,
    PhantomDataset,
    default_geometry,
    spine_centre,
    unit_to_hu,
)
from x2ct.data.cases import CropRange, PlacementRange
from x2ct.data.datasets import case_code_version
from x2ct.diffusion import (
    LATENT_DIFFUSION_CONFIGS,
    DiffusionLoss,
    LatentDenoiser,
    LatentDiffusionConfig,
    ProjectionLoss,
    Reconstructor,
    RegressionLoss,
    get_config,
)
from x2ct.diffusion.config import OBJECTIVES
from x2ct.diffusion.xray_input import XRAY_INPUTS
from x2ct.eval.comparison import score_cases
from x2ct.eval.figures import reconstruction_figure, save_figure
from x2ct.eval.memory import peak_memory_mb
from x2ct.fileio import atomic_path
from x2ct.models import model_path
from x2ct.projector import DRR_SCALE, AcquisitionRange
from x2ct.train.cache import load_latent_cache
from x2ct.train.checkpoint import resume_latest
from x2ct.train.ema import EMA
from x2ct.train.gap import GAP_TIMESTEPS, loss_by_timestep
from x2ct.train.loop import (
    VAL_SEED_OFFSET,
    add_optimisation_args,
    add_run_args,
    add_terms,
    args_record,
    build_optimizer,
    end_of_step,
    finish_run,
    run_accelerator,
    save_last_checkpoint,
    weights_checksum,
    write_checksums,
)
from x2ct.train.progress import BudgetBar, budget_line
from x2ct.train.run import Deadline, RunDir, StepCounter, onednn_for_sampling, save_args
from x2ct.train.sampling import batch_indices, make_generator
from x2ct.train.summary import closing_comparison, mean_training_ct

# Arguments that may change between the runs of one run folder (the rest must not).
RESUMABLE = {
    "prepare_only",
    "cache_chunk_size",
    "max_steps",
    "max_minutes",
    "val_every",
    "save_every",
    "log_every",
    "keep",
    "stop_after_steps",
    "no_tensorboard",
    "val_steps",
    "argv",
    "run_dir",  # a run folder may be moved and resumed
}
# Flags added after runs were started: a run folder whose args.json lacks one ran with
# this value, so resuming it with today's default is the same run.
CROPS_OFF = list(dataclasses.astuple(CropRange()))  # --crops' default: no crops
ADDED_FLAGS = {"objective": "diffusion", "detector": None, "crops": CROPS_OFF}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--config", default="tiny", choices=sorted(LATENT_DIFFUSION_CONFIGS))
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override LatentDiffusionConfig fields, VALUE in JSON "
        "(e.g. unet_channels=[16,32] projection_weight=0)",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="diffusion",
        help="diffusion (sampled) or regression: the deterministic baseline, the same "
        "networks predicting the latent in one pass (diffusion/regression.py)",
    )
    p.add_argument(
        "--no-geometry-aware",
        action="store_true",
        help="ablation: cross-attention only, no back-projected features",
    )
    p.add_argument(
        "--projection-weight",
        type=float,
        default=0.0,
        help="projection loss weight (0: off; on a CPU it did not pay at equal time, README; "
        "0.1 is the ablation)",
    )
    p.add_argument(
        "--projection-samples",
        type=int,
        default=1,
        help="samples per batch rendered for the projection loss, those of largest timestep "
        "weight (0: all; rendering dominates a CPU step)",
    )
    p.add_argument(
        "--autoencoder",
        default="ae-kl-tiny",
        type=model_path,
        help="frozen autoencoder: a model's name or folder (CTAutoencoder.save_pretrained)",
    )
    p.add_argument("--run-dir", default="runs/latent")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="start from this trained model's weights (a folder with config.json and "
        "model.safetensors, e.g. models/ldm-tiny) instead of random ones: fine-tuning. Its "
        "architecture must match --config/--set; its sampler defaults (samples, steps) are "
        "kept unless --set gives them; a resumed run ignores its weights",
    )
    p.add_argument("--n-train", type=int, default=16, help="training phantoms")
    p.add_argument("--n-val", type=int, default=4, help="validation phantoms")
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="DIR",
        help="CT folders to train on as well (VerSe, CTSpine1K or plain NIfTI; their "
        "'train' split by hashed case id, as train/autoencoder.py --data); vertebra masks, "
        "when present, locate the spine",
    )
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), help="field voxels")
    p.add_argument(
        "--detector",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="detector pixels of the model's X-rays (default: the field's, Z x max(X, Y); "
        "e.g. 256 256 for a 128^3 field at 1 mm)",
    )
    p.add_argument(
        "--regions",
        nargs="+",
        default=["lumbar", "thoracic"],
        help="phantom regions, assigned to seeds in turn (seed %% len), as train/autoencoder.py",
    )
    p.add_argument(
        "--placements",
        type=int,
        default=2,
        help="fields per phantom or CT, each placed at random around its spine",
    )
    p.add_argument(
        "--placement",
        type=float,
        nargs=3,
        default=(20.0, 10.0, 5.0),
        metavar=("SHIFT_MM", "TURN_DEG", "TILT_DEG"),
        help="placement of the field around the spine: shifts up to SHIFT_MM per axis, "
        "turns up to TURN_DEG about the body axis, tilts up to TILT_DEG (0 0 0: centred)",
    )
    p.add_argument(
        "--crops",
        type=float,
        nargs=3,
        default=tuple(CROPS_OFF),
        metavar=("FRACTION", "MIN_MM", "MAX_MM"),
        help="cut FRACTION of the training CTs to a square of MIN_MM to MAX_MM (log-uniform) "
        "around the spine before their X-rays are rendered, as spine CT crops and small "
        "scan fields are (x2ct.data.CropRange; 0: every case sees the whole body)",
    )
    p.add_argument(
        "--sad-range",
        type=float,
        nargs=2,
        default=(450.0, 1500.0),
        metavar=("LOW", "HIGH"),
        help="source-to-isocentre distances (mm) drawn per view",
    )
    p.add_argument(
        "--magnification-range",
        type=float,
        nargs=2,
        default=(1.1, 1.9),
        metavar=("LOW", "HIGH"),
        help="source-to-detector over source-to-isocentre, drawn per view",
    )
    p.add_argument(
        "--angle-jitter", type=float, default=3.0, help="degrees each view may turn"
    )
    p.add_argument(
        "--xray-style",
        type=float,
        default=0.7,
        help="fraction of training X-rays shown as simulated radiographs (random tube "
        "voltage, scatter, noise, blur, heel effect, display curve, bit depth, collimation, "
        "markers: x2ct.projector.RadiographStyle.sample) instead of ideal DRRs (0: DRRs only)",
    )
    p.add_argument(
        "--xray-input",
        choices=XRAY_INPUTS,
        default="rank",
        help="what the X-ray encoder sees: 'rank' (per-view pixel ranks: radiographs with "
        "any display curve) or 'drr' (calibrated line integrals only)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    # a short warm-up: the default 5-minute CPU run makes about 200 steps
    add_optimisation_args(p, lr=3e-4, schedule="constant", ema_decay=0.999, warmup=20)
    add_run_args(
        p,
        max_steps=100_000,
        max_minutes=5.0,
        save_every=250,
        val_every=250,
        minutes_help="wall-clock budget of this invocation (0: none)",
    )
    p.add_argument("--val-steps", type=int, default=25, help="DDIM steps of validation samples")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="make the training cases and the latent cache, then stop (a later run with the "
        "same settings starts training at once); under accelerate launch every process makes "
        "its share",
    )
    p.add_argument(
        "--cache-chunk-size",
        type=int,
        default=32,
        metavar="N",
        help="cases per part of the latent cache: parts are dealt out to the processes, and a "
        "killed build resumes from the parts written (RUN/latent_cache.parts/) if rerun with "
        "the same N",
    )
    args = p.parse_args(argv)
    if args.detector is not None and min(args.detector) < 1:
        p.error(f"--detector H W must be positive, got {args.detector}")
    if args.cache_chunk_size < 1:
        p.error(f"--cache-chunk-size must be >= 1, got {args.cache_chunk_size}")
    if args.n_train < 0 or args.n_val < 0 or args.placements < 1:
        p.error("--n-train and --n-val must be >= 0 and --placements >= 1")
    if args.n_train == 0 and not args.data:
        p.error("nothing to train on: --n-train 0 and no --data")
    try:
        placement_range(args)
        crops = CropRange(*args.crops)
        acquisition_range(args)
    except ValueError as e:
        p.error(str(e))
    if crops.fraction == 0:  # no crops, whatever the widths: the run of the default
        args.crops = tuple(CROPS_OFF)
    if not 0.0 <= args.xray_style <= 1.0:
        p.error(f"--xray-style must be a fraction in [0, 1], got {args.xray_style}")
    if args.xray_style > 0 and args.xray_input != "rank":
        p.error("--xray-style needs --xray-input rank: a radiograph's display curve is unknown")
    if args.max_minutes is not None and args.max_minutes <= 0:
        args.max_minutes = None
    return args


def config_overrides(args) -> dict:
    """LatentDiffusionConfig fields from --set KEY=VALUE and the switches."""
    out = {"objective": args.objective, "xray_input": args.xray_input, "xrays_through": "body"}
    if args.no_geometry_aware:
        out["geometry_aware"] = False
    if args.projection_weight is not None:
        out["projection_weight"] = args.projection_weight
    out.update(key_values(args.set, "--set"))  # after the switches: an explicit --set wins
    return out


def check_resume_args(run: RunDir, args: dict) -> None:
    """A run folder continues only the run it was made for."""
    if not run.args_json.is_file():
        return
    before = json.loads(run.args_json.read_text())
    changed = {
        k: (before.get(k), v)
        for k, v in args.items()
        if k not in RESUMABLE
        and json.loads(json.dumps(v)) != before.get(k, ADDED_FLAGS.get(k))
    }
    if changed:
        detail = ", ".join(
            f"--{k.replace('_', '-')} {a!r} -> {b!r}" for k, (a, b) in changed.items()
        )
        raise InputError(
            f"{run.root} holds a run with other settings ({detail}); "
            "use another --run-dir, or the same settings to resume it"
        )


def placement_range(args) -> PlacementRange:
    return PlacementRange(*args.placement)


def crop_range(args) -> CropRange | None:
    """--crops as a CropRange, None when it cuts nothing."""
    crops = CropRange(*args.crops)
    return crops if crops.fraction > 0 else None


def acquisition_range(args) -> AcquisitionRange:
    return AcquisitionRange(tuple(args.sad_range), tuple(args.magnification_range),
                            args.angle_jitter)


def training_sets(args, geometry, spacing, window) -> list[Dataset]:
    """The training data: whole-body phantoms of ``--regions`` (``--placements`` random
    fields each) and the 'train' split of each ``--data`` folder, every case through
    x2ct.data.ct_case (X-rays through the whole body, random placement and acquisition)."""
    common = dict(
        shape=tuple(args.shape), spacing=spacing, geometry=geometry, window=window,
        xray_scale=DRR_SCALE, placement=placement_range(args),
        acquisitions=acquisition_range(args), placements=args.placements,
        materials=args.xray_style > 0, crops=crop_range(args),
    )
    parts: list[Dataset] = []
    if args.n_train > 0:
        parts.append(PhantomDataset(args.n_train, seed=args.seed, region=args.regions,
                                    cache_size=0, **common))
    for root in args.data:
        parts.append(CTFolderDataset(root, split="train", with_labels=False, **common))
    return parts


@torch.no_grad()
def encode_dataset(
    dataset, autoencoder, device, desc: str, show: bool, cases: range | None = None
) -> dict[str, torch.Tensor]:
    """Latents (N, C, x, y, z), line integrals ``drr`` through the whole body and
    ``drr_field`` of the field alone (N, V, H, W), view vectors ``views`` (N, V, 15) and
    spine centres (N, 3) (voxel bone centroid, ``x2ct.data.spine_centre``)
    of the cases ``cases`` (default: every case)."""
    window = autoencoder.config.hu_window
    latents, drrs, fields, views, centres, paths = [], [], [], [], [], []
    cases = range(len(dataset)) if cases is None else cases
    for i in tqdm(cases, desc=desc, disable=not show, leave=False):
        item = dataset[i]
        latents.append(autoencoder.encode(item["ct"][None].to(device)).cpu())
        drrs.append(item["drr"][None])
        fields.append(item["drr_field"][None])
        views.append(item["views"][None].double())
        if "paths" in item:
            paths.append(item["paths"][None])
        centres.append(torch.from_numpy(spine_centre(unit_to_hu(item["ct"], window).numpy())))
    out = {} if not paths else {"paths": torch.cat(paths).contiguous()}
    return out | {
        "latents": torch.cat(latents).contiguous(),
        "drr": torch.cat(drrs).contiguous(),
        "drr_field": torch.cat(fields).contiguous(),
        "views": torch.cat(views).contiguous(),
        "spine_centres": torch.stack(centres).double(),
    }


def network_xrays(
    drr: torch.Tensor,
    paths: torch.Tensor | None,
    views: torch.Tensor,
    probability: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The X-rays (B, V, H, W) a training batch shows the network: each case, with
    ``probability``, as a simulated radiograph of its material paths (a random
    ``RadiographStyle`` per view: its ``display`` values, which a "rank" model reads
    whatever their curve), else as its ideal DRR / DRR_SCALE."""
    x = drr.float() / DRR_SCALE
    if paths is None or probability <= 0:
        return x
    pick = (torch.rand(x.shape[0], generator=generator) < probability).nonzero()[:, 0]
    if len(pick) == 0:
        return x
    from x2ct.projector.radiograph import RadiographStyle, simulate_radiograph

    names = ["ap" if abs(((a + 180) % 360) - 180) < 45 else "lateral"
             for a in (0.0, 90.0)[: x.shape[1]]]
    styles = [[RadiographStyle.sample(generator, view=n) for n in names] for _ in pick]
    rows = views[pick].double().unflatten(-1, (5, 3))  # (B', V, 5, 3)
    spacing = torch.stack([rows[..., 3, :].norm(dim=-1), rows[..., 2, :].norm(dim=-1)], -1)
    shown = simulate_radiograph(paths[pick], spacing.numpy(), styles, generator).display
    x[pick] = shown.float()
    return x


@torch.no_grad()
def validate(recon: Reconstructor, val: list[dict], steps: int, seed: int):
    """Reconstruct the validation cases (DDIM, ``steps``, one sample per case whatever the
    model's ``num_samples``, along each case's views, no projection-consistent sampling):
    the same cheap measure for every model and step compared; mean scores and the first
    case's figure inputs. The projection error is against each field's own DRRs (the
    X-rays cross the rest of the body too)."""
    window = recon.autoencoder.config.hu_window
    xrays = torch.stack([v["xrays"] for v in val])
    views = torch.stack([v["views"] for v in val]) if "views" in val[0] else None
    with onednn_for_sampling():  # no backward here: oneDNN's bf16 fault cannot arise
        out = recon(xrays, sampler="ddim", steps=steps, num_samples=1,
                    generator=torch.Generator().manual_seed(seed), views=views,
                    projection_guidance=False)
    truth = [unit_to_hu(v["ct"], window) for v in val]
    references = [v.get("drr_field", v["drr"]) / recon.config.xray_scale for v in val]
    scores = score_cases(out.hu.cpu(), truth, references, recon.geometry, recon.spacing,
                         recon.config.xray_scale, window)
    return scores, (xrays[0], out.hu[0], truth[0])


SAMPLER_DEFAULTS = ("sampler", "sampler_steps", "guidance_scale", "num_samples",
                    "projection_guidance")
"""LatentDiffusionConfig fields that say how the model samples by default, not how it is
built or trained: a model fine-tuned with ``--init-from`` keeps its parent's."""


def sampler_defaults_of(directory: str) -> dict:
    """The sampler defaults (:data:`SAMPLER_DEFAULTS`) in a trained model's config.json
    (``--init-from``): a fine-tuned model is used as its parent was (the shipped ldm-tiny:
    the mean of 16 samples of DDIM 5), not with the training recipe's defaults (one sample
    of DDIM 50), unless ``--set`` gives them."""
    from x2ct.diffusion.pipeline import CONFIG_NAME, check_pipeline_dir

    try:
        config = LatentDiffusionConfig.from_file(check_pipeline_dir(directory) / CONFIG_NAME)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--init-from: {e}") from e
    return {k: getattr(config, k) for k in SAMPLER_DEFAULTS}


def init_from(model: LatentDenoiser, directory: str) -> None:
    """Load a trained model's denoiser weights (``--init-from``); its networks must have
    the same shapes as ``model``'s (a checkpoint of this run, when there is one, is loaded
    over them afterwards)."""
    from x2ct.diffusion.pipeline import WEIGHTS_NAME, check_pipeline_dir
    from x2ct.state import read_safetensors

    try:
        folder = check_pipeline_dir(directory)
        state = read_safetensors(folder / WEIGHTS_NAME)[0]
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--init-from: {e}") from e
    mine = model.state_dict()
    wrong = sorted(
        k for k in set(mine) | set(state)
        if k not in mine or k not in state or mine[k].shape != state[k].shape
    )
    if wrong:
        raise InputError(
            f"--init-from {directory}: its networks differ from this run's "
            f"({len(wrong)} tensors, e.g. {wrong[:3]}); use the same --config and --set"
        )
    model.load_state_dict(state)


def check_autoencoder(directory: str) -> None:
    """A clear error, before anything starts, when the autoencoder folder is not there."""
    ok = all((Path(directory) / name).is_file() for name in ("config.json", "model.safetensors"))
    if not ok:
        raise InputError(
            f"no trained autoencoder at {directory} (config.json + model.safetensors): train "
            "one first (python train/autoencoder.py --run-dir runs/ae, then use runs/ae/model) "
            "and pass --autoencoder DIR, or put it at models/ae-kl-tiny"
        )


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = RunDir(Path(args.run_dir))
    record = args_record(args, argv)
    check_resume_args(run, record)
    check_autoencoder(args.autoencoder)
    # --init-from is read before the cases are made (minutes to hours), not after
    inherited = {} if args.init_from is None else sampler_defaults_of(args.init_from)
    accelerator = run_accelerator(run, args, "latent")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_local_main_process:  # say which attention and projector backends ran
        log = logging.getLogger("x2ct")
        log.setLevel(logging.INFO)
        log.addHandler(logging.StreamHandler())
    if accelerator.is_main_process:
        save_args(run, record)

    # ---- frozen autoencoder: out of accelerator.prepare (DDP refuses a module with nothing
    # to train), on the device
    autoencoder = CTAutoencoder.from_pretrained(args.autoencoder).to(device).requires_grad_(False)
    ae_config = autoencoder.config

    # ---- data: whole-body phantoms (and CT folders) at the autoencoder's spacing, fields
    # placed at random, X-rays through the whole body along random acquisitions
    geometry = default_geometry(args.shape, ae_config.spacing, args.detector)
    train_sets = training_sets(args, geometry, ae_config.spacing, ae_config.hu_window)
    train_set = ConcatDataset(train_sets)
    val_set = PhantomDataset(
        args.n_val, seed=VAL_SEED_OFFSET + args.seed, region=args.regions,
        shape=tuple(args.shape), spacing=ae_config.spacing, geometry=geometry,
        window=ae_config.hu_window, xray_scale=DRR_SCALE, cache_size=0,
    )  # centred fields, nominal views: the headline condition
    crops = crop_range(args)
    cache_key = hashlib.sha256(
        json.dumps(
            {
                "autoencoder": weights_checksum(autoencoder),
                # checkpointing changes memory, not latents: caches keep their key
                "ae_config": {k: v for k, v in ae_config.to_dict().items()
                              if k != "gradient_checkpointing"},
                "ids": [i for d in train_sets for i in d.ids],
                "data": [str(a) for a in args.data],
                "settings": [args.regions, args.placements, list(args.placement),
                             list(args.sad_range), list(args.magnification_range),
                             args.angle_jitter, list(args.shape), args.xray_style > 0]
                # (a detector given, crops: caches made before the flags keep their key)
                + ([list(args.detector)] if args.detector is not None else [])
                + ([crops.to_dict()] if crops is not None else []),
                "cases": case_code_version(),
                "cache_format": 3,  # 3: whole-body cases with views
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    cache = load_latent_cache(
        accelerator,
        run.root / "latent_cache.safetensors",
        cache_key,
        len(train_set),
        lambda cases: encode_dataset(
            train_set, autoencoder, device,
            f"encoding training cases {cases.start}-{cases.stop - 1} of {len(train_set)}",
            accelerator.is_local_main_process, cases,
        ),
        chunk_size=args.cache_chunk_size,
    )
    latents, drrs, case_views = cache["latents"], cache["drr"], cache["views"].float()
    drr_fields = cache["drr_field"]
    material = cache.get("paths")
    val = [val_set[i] for i in range(len(val_set))]
    n_train = len(latents)
    if args.prepare_only:
        accelerator.print(f"prepared {n_train} training cases in {run.root}; rerun without "
                          "--prepare-only to train")
        finish_run(accelerator, run)
        return run.root

    # ---- model, EMA, loss, optimiser
    config = get_config(
        args.config,
        latent_channels=ae_config.latent_channels,
        latent_size=tuple(latents.shape[2:]),
        ct_spacing=ae_config.spacing,
        downsample_factor=ae_config.downsample_factor,
        geometry=geometry.to_dict(),
        xray_scale=DRR_SCALE,
        acquisition_range=acquisition_range(args).to_dict(),
        **{**inherited, **config_overrides(args)},  # an explicit --set wins
    )
    model = LatentDenoiser(config)
    if args.init_from is not None:
        init_from(model, args.init_from)
    ema = EMA(model, args.ema_decay)
    projection = ProjectionLoss(
        autoencoder,
        geometry,
        config.ct_shape,
        config.xray_scale,
        config.projection_step,
        config.projection_weighting,
    )
    if config.objective == "regression":
        loss_fn = RegressionLoss(config, projection)
    else:
        loss_fn = DiffusionLoss(config, projection, args.projection_samples)
    optimizer, scheduler = build_optimizer(model, args)
    counter = StepCounter()
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.model.to(device)
    # the scheduler is not prepared: prepared, it would step once per process
    state = dict(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, step=counter)
    resumed = resume_latest(accelerator, run.checkpoints, state)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    accelerator.print(
        f"latent diffusion '{args.config}': {n_params / 1e6:.2f} M parameters, latents "
        f"{tuple(latents.shape[1:])}, X-rays {tuple(drrs.shape[1:])}, {n_train} training cases, "
        f"geometry-aware {config.geometry_aware}, projection loss {config.projection_weight}, "
        f"objective {config.objective}"
        + (f"; resumed from {resumed.name} at step {counter.step}" if resumed else "")
    )

    tb = None
    if accelerator.is_main_process and not args.no_tensorboard:
        tb = accelerator.get_tracker("tensorboard", unwrap=True)

    gap_sets = None  # (training, validation) cases for the generalisation gap, made once
    latest_gap: dict = {}  # {"training": {t: loss}, "validation": {t: loss}}
    last_validation: tuple[int, dict] | None = None  # (step, scores), reused at the end

    def generalisation_gap(step: int) -> dict:
        """The EMA model's diffusion loss on as many training cases as validation cases
        (spread over the training set) and on the validation cases, at GAP_TIMESTEPS, the
        same noise for both (train/gap.py): logged and printed."""
        nonlocal gap_sets
        if gap_sets is None:
            idx = torch.linspace(0, n_train - 1, len(val)).round().long()
            with torch.no_grad():
                val_z = torch.cat([autoencoder.encode(v["ct"][None].to(device)).cpu()
                                   for v in val])
            gap_sets = {
                "training": (latents[idx], drrs[idx].float() / DRR_SCALE, case_views[idx]),
                "validation": (val_z, torch.stack([v["xrays"] for v in val]),
                               torch.stack([v["views"] for v in val]) if "views" in val[0]
                               else None),
            }
        gap = {name: loss_by_timestep(ema.model, loss_fn.schedule, *cases, seed=args.seed)
               for name, cases in gap_sets.items()}
        accelerator.log({f"gap/{name}_t{t}": v for name, losses in gap.items()
                         for t, v in losses.items()}, step=step)
        ts = " / ".join(str(t) for t in GAP_TIMESTEPS)
        accelerator.print(
            f"step {step}: diffusion loss at t = {ts}: "
            + ", ".join(f"{name} cases " + " / ".join(f"{v:.3f}" for v in losses.values())
                        for name, losses in gap.items())
            + " (a validation loss far above the training loss at large t says the model "
            "recalls its training cases: add distinct cases, --n-train)"
        )
        return gap

    def validation(step: int) -> dict:
        nonlocal last_validation
        recon = Reconstructor(ema.model, autoencoder)
        scores, (xr, pred_hu, gt_hu) = validate(recon, val, args.val_steps, args.seed)
        accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=step)
        accelerator.print(
            f"step {step}: val psnr {scores['psnr']:.2f} dB, "
            f"ssim {scores['ssim']:.4f}, mae {scores['mae_hu']:.1f} HU, "
            f"projection {scores['projection_error']:.4f}"
        )
        if config.objective != "regression":  # a regressor sees no noise: no timesteps
            latest_gap.update(generalisation_gap(step))
        fig = reconstruction_figure(
            xr,
            pred_hu,
            recon.simulate_xrays(pred_hu[None].to(device)),
            gt_hu,
            None,
            ae_config.hu_window,
            f"step {step} (EMA, DDIM {args.val_steps}): PSNR {scores['psnr']:.2f} dB",
            geometry.angles,
        )
        if tb is not None:
            tb.add_figure("val/reconstruction", fig, global_step=step, close=False)
        save_figure(fig, run.figures / f"val_step_{step:07d}.png", dpi=90)
        last_validation = (step, scores)
        return scores

    # ---- loop
    accelerator.print(budget_line(counter.step, args.max_steps, args.max_minutes,
                                  args.init_from))
    deadline = Deadline(args.max_minutes)
    bar = BudgetBar("latent diffusion", counter.step, args.max_steps, deadline.end,
                    disable=not accelerator.is_local_main_process)
    steps_this_run, skipped, t_start = 0, 0, time.monotonic()
    model.train()
    while counter.step < args.max_steps and not deadline.passed():
        step = counter.step
        logs = {}
        for k in range(args.grad_accum):
            micro = step * args.grad_accum + k
            idx = batch_indices(n_train, args.batch_size, args.seed, micro, rank, world)
            z0 = latents[idx].to(device)
            views = case_views[idx].to(device)
            gen = make_generator(args.seed, micro, rank)
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # t, noise, drop
            # the network's input: a radiograph of the case or its DRR (ranked for "rank")
            xr = network_xrays(drrs[idx], None if material is None else material[idx],
                               case_views[idx], args.xray_style, gen).to(device)
            target = drr_fields[idx].to(device) / DRR_SCALE  # what the field alone projects to
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    terms = loss_fn(model, z0, xr, views=views, drr=target)
                loss = loss_fn.total(terms)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = args.grad_clip if args.grad_clip > 0 else math.inf
                    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    if not torch.isfinite(norm):  # the same on every rank (reduced grads)
                        optimizer.zero_grad(set_to_none=True)  # skip this update
                        skipped += 1
                        if skipped == 1:
                            accelerator.print(
                                f"step {step + 1}: non-finite gradients, update skipped "
                                "(counted in train/skipped_updates)"
                            )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            add_terms(logs, terms, args.grad_accum)
        scheduler.step()
        counter.step += 1
        steps_this_run += 1
        ema.update(accelerator.unwrap_model(model))
        bar.update(1)
        step = counter.step

        if step % args.log_every == 0 or step == 1:
            main_term = logs.get("train/diffusion", logs.get("train/regression", 0.0))
            logs["train/loss"] = main_term + logs.get("train/projection", 0.0)
            logs["train/lr"] = scheduler.get_last_lr()[0]
            seen = steps_this_run * args.batch_size * args.grad_accum * world
            logs["train/samples_per_s"] = seen / max(time.monotonic() - t_start, 1e-9)
            logs["train/skipped_updates"] = skipped
            memory = peak_memory_mb(device)
            if memory is not None:
                logs["train/peak_memory_mb"] = memory
            bar.set_postfix(loss=f"{logs['train/loss']:.4f}", main=f"{main_term:.4f}")
            accelerator.log(logs, step=step)
        if args.n_val > 0 and step % args.val_every == 0:
            if accelerator.is_main_process:
                validation(step)
            accelerator.wait_for_everyone()
        if end_of_step(accelerator, run, step, steps_this_run, args, bar, state):
            return run.root  # as if killed here: no final checkpoint, no final model
    bar.close()
    save_last_checkpoint(accelerator, run, counter.step, args, state)

    # ---- final pipeline (EMA weights), final validation and metrics
    write_checksums(accelerator, run, model, ema.model)  # replicas must agree
    if accelerator.is_main_process:
        Reconstructor(ema.model, autoencoder).save_pretrained(run.model)
        metrics = {
            "step": counter.step,
            "seconds_this_run": time.monotonic() - t_start,
            "config": args.config,
            "objective": config.objective,
            "parameters": n_params,
        }
        use, closing = run.model, None
        if args.n_val > 0:
            # the loop validated the last step already when it fell on --val-every
            metrics["val"] = (last_validation[1] if last_validation is not None
                              and last_validation[0] == counter.step
                              else validation(counter.step))
            if latest_gap:  # json writes the integer timesteps as string keys
                metrics["generalisation_gap"] = latest_gap
            accelerator.print("scoring the mean training CT and the shipped model on the same "
                              "cases")
            mean_hu = mean_training_ct(train_set, ae_config.hu_window,
                                       run.root / "mean_ct.safetensors", cache_key)
            closing = closing_comparison(
                metrics["val"], Reconstructor(ema.model, autoencoder), val, mean_hu,
                lambda r: validate(r, val, args.val_steps, args.seed)[0], run.model,
                accelerator.print)
            metrics["comparison"] = {"rows": closing["rows"], "use": str(closing["use"])}
            use = closing["use"]
        with atomic_path(run.root / "metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
        if closing is not None:
            accelerator.print(f"\nvalidation, {args.n_val} held-out phantoms, DDIM "
                              f"{args.val_steps} steps:\n{closing['table']}\n{closing['why']}\n")
        accelerator.print(
            f"step {counter.step}: saved {run.model} and {run.root / 'metrics.json'}\n"
            f"reconstruct:  x2ct reconstruct --model {use} --ct CT.nii.gz --out OUT --report\n"
            f"evaluate:     x2ct evaluate --model {use} --phantoms 20 --baseline mean-ct "
            "--out OUT\n"
            f"TensorBoard:  tensorboard --logdir {run.logs}\n"
            "continue:     rerun the same command (resumes from the last checkpoint)"
        )
    accelerator.wait_for_everyone()
    finish_run(accelerator, run)
    return run.model


if __name__ == "__main__":
    run_main(main)
