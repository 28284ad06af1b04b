"""Reconstruct a CT from two X-rays with a trained x2ct model; score it; evaluate phantoms.

    python eval/reconstruct.py --model DIR --ap AP.png --lateral LAT.png --out OUT
    python eval/reconstruct.py --model DIR --ct CT.nii.gz --out OUT
    python eval/reconstruct.py --model DIR --phantoms 20 --out OUT
    python eval/reconstruct.py --model DIR --benchmark 10 25 50 --out OUT

- ``--ap/--lateral``: X-ray images (``x2ct.data.load_xray``: 16-bit PNG of drr / DRR_SCALE,
  TIFF, .npy line integrals or DICOM), resized with a warning when their size is not the
  model's detector. A ``geometry.json`` beside the AP image (as ``python -m x2ct.projector``
  writes) or ``--geometry`` declares their geometry; one that is not the model's is
  refused unless ``--allow-geometry-mismatch``.
- ``--ct``: a NIfTI CT, resampled to the model's spacing and cropped/padded around the
  spine to its shape (``x2ct.data.preprocess``); its X-rays are simulated with the model's
  geometry and the reconstruction is scored against it (PSNR, SSIM over the HU window,
  MAE in HU, projection error).
- ``--phantoms N``: N held-out phantoms (seeds ``--phantom-seed`` + i, default 20000 +,
  never used by training), scored with two references: the mean training CT (what a model
  that ignores the X-rays could reach) and the autoencoder round trip (the ceiling a
  latent model can reach). Writes ``metrics.json``.
- ``--benchmark STEPS..``: seconds and peak memory per reconstruction for each sampler
  and step count (CUDA: peak allocated; CPU: the process's peak resident set, reset
  before each run). Writes ``benchmark.json``.

Writes into OUT: ``ct.nii.gz`` (HU, the model's spacing), ``std.nii.gz`` (per-voxel
standard deviation over ``--num-samples`` > 1, an uncertainty map), ``reconstruction.png``
and, with ``--ct``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from x2ct.eval.metrics import ct_metrics  # noqa: E402
from x2ct.fileio import atomic_path  # noqa: E402

DEFAULT_PHANTOM_SEED = 20_000  # evaluation phantoms: disjoint from training (0..) and val (10000..)


# --------------------------------------------------------------------------- scoring
def score(recon, pred_hu: torch.Tensor, gt_hu: torch.Tensor, xrays: torch.Tensor) -> dict:
    """One case: PSNR and SSIM over the model's HU window, MAE in HU, and the projection
    error (mean |DRR(pred) - X-ray| in the normalised X-ray domain, drr / xray_scale).

    pred_hu, gt_hu (1, X, Y, Z) or (1, 1, X, Y, Z); xrays (V, H, W) or (1, V, H, W)."""
    window = tuple(recon.autoencoder.config.hu_window)
    pred = pred_hu.reshape(1, 1, *pred_hu.shape[-3:]).float().cpu()
    gt = gt_hu.reshape(1, 1, *gt_hu.shape[-3:]).float().cpu()
    out = ct_metrics(pred, gt, window)
    drr = recon.simulate_xrays(pred.to(recon.device)).cpu()
    out["projection_error"] = float((drr - xrays.reshape(drr.shape).cpu()).abs().mean())
    return out


def mean_scores(rows: Sequence[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


# --------------------------------------------------------------------------- figure
def _planes(v: np.ndarray) -> list[np.ndarray]:
    """Axial (Z/2), coronal (Y/2), sagittal (X/2) of (X, Y, Z), superior/anterior up."""
    x, y, z = (n // 2 for n in v.shape)
    return [v[:, :, z].T[::-1], v[:, y, :].T[::-1], v[x, :, :].T[::-1]]


def reconstruction_figure(
    xrays: torch.Tensor,
    pred_hu: torch.Tensor,
    drr_pred: torch.Tensor,
    gt_hu: torch.Tensor | None = None,
    std_hu: torch.Tensor | None = None,
    window: Sequence[float] = (-1000.0, 2000.0),
    title: str = "",
    angles: Sequence[float] = (0.0, 90.0),
):
    """Row 1: input X-rays and the DRRs of the reconstruction. Then the CT's axial,
    coronal and sagittal planes: ground truth (when known), reconstruction, |error|
    (when known) and the uncertainty map (when given)."""
    as_np = lambda t: t.detach().float().cpu().numpy()
    xr = as_np(xrays).reshape(-1, *xrays.shape[-2:])  # (V, H, W)
    dp = as_np(drr_pred).reshape(-1, *drr_pred.shape[-2:])
    vol = lambda t: as_np(t).reshape(t.shape[-3:])
    rows = []
    if gt_hu is not None:
        rows.append(("ground truth", vol(gt_hu), "gray", window))
    rows.append(("reconstruction", vol(pred_hu), "gray", window))
    if gt_hu is not None:
        rows.append(("|error| HU", np.abs(vol(pred_hu) - vol(gt_hu)), "magma", (0, 500)))
    if std_hu is not None:
        rows.append(("std HU", vol(std_hu), "viridis", (0, max(float(std_hu.max()), 1e-6))))
    n_views = xr.shape[0]
    cols = max(3, 2 * n_views)
    fig, axes = plt.subplots(1 + len(rows), cols, figsize=(2.6 * cols, 2.6 * (1 + len(rows))))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    hi = max(float(xr.max()), float(dp.max()), 1e-6)
    names = {0.0: "AP", 90.0: "lateral"}
    for v in range(n_views):
        name = names.get(float(angles[v]), f"{float(angles[v]):g} deg") if v < len(angles) else v
        axes[0, v].imshow(xr[v], cmap="gray", vmin=0, vmax=hi)
        axes[0, v].set_title(f"input {name}", fontsize=9)
        axes[0, n_views + v].imshow(dp[v], cmap="gray", vmin=0, vmax=hi)
        axes[0, n_views + v].set_title(f"{name} DRR of reconstruction", fontsize=9)
    for r, (name, data, cmap, (lo, top)) in enumerate(rows, start=1):
        for c, (plane, img) in enumerate(zip(("axial", "coronal", "sagittal"), _planes(data))):
            axes[r, c].imshow(img, cmap=cmap, vmin=lo, vmax=top)
            axes[r, c].set_frame_on(True)
            if r == 1:
                axes[r, c].set_title(plane, fontsize=9)
            if c == 0:
                axes[r, c].set_ylabel(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write a figure atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- inputs
def read_geometry_json(path: str | os.PathLike) -> dict:
    """A Geometry dict from a JSON file: a plain Geometry.to_dict() or the projector
    command line's {"geometry": {...}, ...}."""
    d = json.loads(Path(path).read_text())
    return d["geometry"] if "geometry" in d else d


def load_xray_pair(ap: str | os.PathLike, lateral: str | os.PathLike, shape) -> torch.Tensor:
    """(1, 2, H, W) normalised X-rays from two image files, resized to ``shape`` with a
    warning when needed."""
    from x2ct.data import load_xray

    views = [load_xray(p, shape=shape) for p in (ap, lateral)]
    return torch.from_numpy(np.stack(views))[None]


def prepare_ct(path: str | os.PathLike, spacing, shape, window) -> torch.Tensor:
    """A NIfTI CT as HU (1, 1, X, Y, Z) at ``spacing``, cropped/padded around the spine to
    ``shape``, HU clipped to ``window`` (what training sees)."""
    from x2ct.data import hu_to_unit, preprocess, unit_to_hu

    d = preprocess(spacing, shape, window, normalise=False)({"image": str(path), "label": None})
    hu = torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32)  # (1, X, Y, Z)
    return unit_to_hu(hu_to_unit(hu, window), window)[None]


# --------------------------------------------------------------------------- phantoms
def evaluate_phantoms(
    recon,
    n: int = 20,
    seed: int = DEFAULT_PHANTOM_SEED,
    region: str = "lumbar",
    n_train_mean: int = 32,
    train_seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    num_samples: int = 1,
    sample_seed: int = 0,
    batch_size: int | None = None,
    figures: str | os.PathLike | None = None,
    n_figures: int = 4,
    progress: bool = True,
) -> dict:
    """Score the model on ``n`` phantoms (seeds seed..seed+n-1) against two references:

    - ``mean_training_ct``: the voxel-wise mean of ``n_train_mean`` training phantoms
      (seeds train_seed..), the same prediction for every case;
    - ``autoencoder_roundtrip``: decode(encode(ground truth)), the ceiling of a latent model.

    Returns {"cases": [...], "mean": {...}, "baselines": {...}, "settings": {...}}.
    """
    from tqdm.auto import tqdm

    from x2ct.data import PhantomDataset, unit_to_hu

    window = tuple(recon.autoencoder.config.hu_window)
    kw = dict(
        shape=recon.shape,
        spacing=recon.spacing,
        geometry=recon.geometry,
        region=region,
        xray_scale=recon.config.xray_scale,
        window=window,
        cache_size=0,
    )
    data = PhantomDataset(n, seed=seed, **kw)
    train = PhantomDataset(n_train_mean, seed=train_seed, **kw)
    mean_ct = torch.stack([train[i]["ct"] for i in range(len(train))]).mean(0)  # (1, X, Y, Z)
    mean_hu = unit_to_hu(mean_ct, window)
    generator = torch.Generator().manual_seed(sample_seed)
    rows, base_mean, base_ae = [], [], []
    for i in tqdm(range(len(data)), desc="phantoms", disable=not progress):
        item = data[i]
        gt_hu = unit_to_hu(item["ct"], window)[None]  # (1, 1, X, Y, Z)
        xrays = item["xrays"][None]
        t0 = time.perf_counter()
        out = recon(
            xrays,
            sampler=sampler,
            steps=steps,
            guidance_scale=guidance_scale,
            num_samples=num_samples,
            generator=generator,
            batch_size=batch_size,
        )
        seconds = time.perf_counter() - t0
        row = {"id": item["id"], **score(recon, out.hu, gt_hu, xrays), "seconds": seconds}
        rows.append(row)
        base_mean.append(score(recon, mean_hu, gt_hu, xrays))
        with torch.no_grad():
            ae = recon.autoencoder
            rt = ae.output_to_hu(ae.reconstruct(item["ct"][None].to(recon.device)))
        base_ae.append(score(recon, rt, gt_hu, xrays))
        if figures is not None and i < n_figures:
            fig = reconstruction_figure(
                xrays,
                out.hu,
                recon.simulate_xrays(out.hu.to(recon.device)),
                gt_hu,
                out.std,
                window,
                f"{item['id']}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}",
                recon.geometry.angles,
            )
            save_png(fig, Path(figures) / f"{item['id']}.png")
    return {
        "cases": rows,
        "mean": mean_scores(rows),
        "baselines": {
            "mean_training_ct": mean_scores(base_mean),
            "autoencoder_roundtrip": mean_scores(base_ae),
        },
        "settings": {
            "n": n,
            "seed": seed,
            "region": region,
            "n_train_mean": n_train_mean,
            "sampler": sampler or recon.config.sampler,
            "steps": steps or recon.config.sampler_steps,
            "guidance_scale": recon.config.guidance_scale
            if guidance_scale is None
            else guidance_scale,
            "num_samples": num_samples,
            "device": str(recon.device),
        },
    }


# --------------------------------------------------------------------------- benchmark
def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or on Linux the process's peak
    resident set (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 resets the process's peak resident set (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory since the last reset in MiB: allocated by torch on CUDA, the process's
    peak resident set on a Linux CPU; None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def benchmark(
    recon,
    steps_list: Sequence[int],
    samplers: Sequence[str] = ("ddim", "rflow"),
    batch: int = 1,
    repeats: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Seconds and peak memory per reconstruction of ``batch`` cases, for each sampler and
    step count (after one warm-up call). CUDA: peak allocated by torch; CPU: the process's
    peak resident set."""
    xrays = (
        torch.rand(
            batch,
            recon.config.num_views,
            *recon.config.xray_shape,
            generator=torch.Generator().manual_seed(seed),
        )
        * 0.5
    )
    device = recon.device
    recon(xrays, steps=2)  # warm-up (kernels, allocator)
    rows = []
    for sampler in samplers:
        for steps in steps_list:
            times = []
            reset_peak_memory(device)
            for _ in range(repeats):
                t0 = time.perf_counter()
                recon(
                    xrays,
                    sampler=sampler,
                    steps=steps,
                    generator=torch.Generator().manual_seed(seed),
                )
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            rows.append(
                {
                    "sampler": sampler,
                    "steps": steps,
                    "batch": batch,
                    "seconds_per_volume": float(np.median(times)) / batch,
                    "peak_memory_mb": peak_memory_mb(device),
                    "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else f"cpu ({torch.get_num_threads()} threads)",
                }
            )
    return rows


# --------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="folder written by train/latent.py (RUN/model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="NIfTI CT: simulate its X-rays, reconstruct and score")
    src.add_argument("--ap", help="AP X-ray image (with --lateral)")
    src.add_argument("--phantoms", type=int, help="evaluate on this many held-out phantoms")
    src.add_argument(
        "--benchmark",
        type=int,
        nargs="+",
        metavar="STEPS",
        help="time reconstructions for these sampler step counts",
    )
    p.add_argument("--lateral", help="lateral X-ray image (with --ap)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--geometry",
        help="JSON of the X-rays' geometry (default: geometry.json beside --ap, if any)",
    )
    p.add_argument(
        "--allow-geometry-mismatch",
        action="store_true",
        help="reconstruct X-rays declared with another geometry than the model's",
    )
    p.add_argument("--sampler", choices=("ddim", "ddpm", "rflow"), default=None)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--num-samples", type=int, default=1, help="samples; >1 writes std.nii.gz")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--phantom-seed", type=int, default=DEFAULT_PHANTOM_SEED)
    p.add_argument("--region", default="lumbar", help="phantom region (--phantoms)")
    p.add_argument(
        "--n-train-mean",
        type=int,
        default=32,
        help="training phantoms averaged for the mean-CT baseline (--phantoms)",
    )
    p.add_argument("--benchmark-samplers", nargs="+", default=["ddim", "rflow"])
    p.add_argument("--benchmark-batch", type=int, default=1)
    args = p.parse_args(argv)
    if args.ap is not None and args.lateral is None:
        p.error("--ap needs --lateral: the model reconstructs from both views")
    if args.lateral is not None and args.ap is None:
        p.error("--lateral needs --ap: the model reconstructs from both views")
    if args.num_samples < 1:
        p.error("--num-samples must be >= 1")
    return args


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


def main(argv=None) -> dict:
    from x2ct.data import save_ct
    from x2ct.diffusion import Reconstructor
    from x2ct.diffusion.pipeline import check_pipeline_dir
    from x2ct.projector import Geometry

    args = parse_args(argv)
    out_dir = Path(args.out)
    # ---- every check that can fail before any compute
    try:
        check_pipeline_dir(args.model)
        config = json.loads((Path(args.model) / "config.json").read_text())
        ae_config = json.loads((Path(args.model) / "autoencoder" / "config.json").read_text())
        for path in (args.ct, args.ap, args.lateral, args.geometry):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {e}") from e
    det = tuple(config["geometry"]["detector_shape"])
    spacing = tuple(ae_config["spacing"])
    ct_shape = tuple(n * config["downsample_factor"] for n in config["latent_size"])
    window = tuple(ae_config["hu_window"])
    gt_hu = xrays = declared = None
    try:
        if args.ap is not None:
            if tuple(config["geometry"]["angles"]) != (0.0, 90.0):
                raise ValueError(
                    f"the model's views are {config['geometry']['angles']} degrees, "
                    "not AP (0) and lateral (90)"
                )
            xrays = load_xray_pair(args.ap, args.lateral, det)
            beside = Path(args.ap).parent / "geometry.json"
            geometry_file = args.geometry or (beside if beside.is_file() else None)
            if geometry_file is not None:
                declared = Geometry.from_dict(read_geometry_json(geometry_file))
                trained = Geometry.from_dict(config["geometry"])
                if declared != trained and not args.allow_geometry_mismatch:
                    raise ValueError(
                        f"{geometry_file} declares geometry {declared.to_dict()}, but the model "
                        f"was trained for {trained.to_dict()}; pass --allow-geometry-mismatch "
                        "to reconstruct anyway (expect worse results)"
                    )
                print(
                    f"X-ray geometry declared by {geometry_file}"
                    + ("" if declared == trained else " (differs from the model's)")
                )
        elif args.ct is not None:
            gt_hu = prepare_ct(args.ct, spacing, ct_shape, window)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {e}") from e

    recon = Reconstructor.from_pretrained(args.model, device=args.device)
    generator = torch.Generator().manual_seed(args.seed)
    common = dict(
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
    )

    if args.phantoms is not None:
        result = evaluate_phantoms(
            recon,
            args.phantoms,
            args.phantom_seed,
            args.region,
            args.n_train_mean,
            sample_seed=args.seed,
            figures=out_dir / "figures",
            **common,
        )
        _write_json(out_dir / "metrics.json", result)
        print(format_table(result))
        return result
    if args.benchmark is not None:
        rows = benchmark(
            recon, args.benchmark, args.benchmark_samplers, args.benchmark_batch, seed=args.seed
        )
        _write_json(out_dir / "benchmark.json", {"rows": rows})
        print("| sampler | steps | s / volume | peak MB | device |\n|---|---|---|---|---|")
        for r in rows:
            mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
            print(
                f"| {r['sampler']} | {r['steps']} | {r['seconds_per_volume']:.2f} | {mem} | "
                f"{r['device']} |"
            )
        return {"rows": rows}

    if gt_hu is not None:
        xrays = recon.simulate_xrays(gt_hu.to(recon.device)).cpu()
    t0 = time.perf_counter()
    out = recon(xrays, generator=generator, **common)
    seconds = time.perf_counter() - t0
    save_ct(out_dir / "ct.nii.gz", out.hu[0, 0].cpu().numpy(), spacing=recon.spacing)
    written = ["ct.nii.gz"]
    if out.std is not None:
        save_ct(out_dir / "std.nii.gz", out.std[0, 0].cpu().numpy(), spacing=recon.spacing)
        written.append("std.nii.gz")
    drr = recon.simulate_xrays(out.hu.to(recon.device))
    result = {"seconds": seconds}
    title = f"{args.sampler or recon.config.sampler}, {seconds:.1f} s"
    if gt_hu is not None:
        result.update(score(recon, out.hu, gt_hu, xrays))
        title += f": PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f}"
        _write_json(out_dir / "metrics.json", result)
        written.append("metrics.json")
        print(
            f"PSNR {result['psnr']:.2f} dB  SSIM {result['ssim']:.4f}  "
            f"MAE {result['mae_hu']:.1f} HU  projection error {result['projection_error']:.4f}"
        )
    fig = reconstruction_figure(
        xrays, out.hu, drr, gt_hu, out.std, window, title, recon.geometry.angles
    )
    save_png(fig, out_dir / "reconstruction.png")
    written.append("reconstruction.png")
    print(f"wrote {', '.join(written)} to {out_dir} ({seconds:.1f} s)")
    return result


def format_table(result: dict) -> str:
    """Markdown table of a phantom evaluation: the model and its two references."""
    lines = ["| | PSNR dB | SSIM | MAE HU | projection error |", "|---|---|---|---|---|"]
    named = [("model", result["mean"]), *result["baselines"].items()]
    for name, m in named:
        lines.append(
            f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['mae_hu']:.1f} | "
            f"{m['projection_error']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
