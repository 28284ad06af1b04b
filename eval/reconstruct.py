"""Reconstruct one CT from two X-rays with a trained x2ct model (and score it against a CT).

    python eval/reconstruct.py --model DIR --ap AP.png --lateral LAT.png --out OUT
    python eval/reconstruct.py --model DIR --ct CT.nii.gz --out OUT

- ``--ap/--lateral``: X-ray images (``x2ct.data.load_xray``: 16-bit PNG of drr / DRR_SCALE,
  TIFF, .npy line integrals or DICOM), resized with a warning when their size is not the
  model's detector. A ``geometry.json`` beside the AP image (as ``python -m x2ct.projector``
  writes) or ``--geometry`` declares their geometry; one that is not the model's is
  refused unless ``--allow-geometry-mismatch``.
- ``--ct``: a NIfTI CT, resampled to the model's spacing and cropped/padded to its shape
  with the spine's bone centroid where the training CTs had theirs (the config's
  ``spine_position``; ``x2ct.data.preprocess``); its X-rays are simulated with the model's
  geometry and the reconstruction is scored against it (PSNR, SSIM over the HU window,
  MAE in HU, projection error: ``x2ct.eval.metrics``).

Options:

- ``--pc-strength S [--pc-steps K --pc-inner N]``, ``--no-pc``: projection-consistent
  sampling (``x2ct.diffusion.ProjectionGuidance``; default: the model's setting, on for
  ``models/ldm-tiny``): the last K sampler steps' clean-latent estimates
  get N gradient steps of latent RMS S toward DRRs that match the X-rays; the plain result
  is computed too and the better of the two kept (never a worse projection error). Costs
  K extra network calls, K * (N + 1) decoder and projector passes with gradients, and a
  second final decode and DRR rendering.
- ``--pose-rounds R [--pose-iters I --pose-lr LR]``: pose refinement for real radiographs
  (``x2ct.diffusion.PoseRefinement``): reconstruct, fit each view's angle and detector
  offset to the reconstruction's DRRs, reconstruct again with the refined pose; R rounds.

Writes into OUT: ``ct.nii.gz`` (HU, the model's spacing), ``std.nii.gz`` (per-voxel
standard deviation over ``--num-samples`` > 1, an uncertainty map), ``reconstruction.png``,
with ``--ct`` ``metrics.json``, and with ``--pc-*`` or ``--pose-*`` ``reconstruction.json``
(the options, projection errors before and after guidance, the fitted pose). The options
are in metrics.json too.

Outputs for clinicians (x2ct.eval.export, x2ct.eval.report):

- ``--format dicom`` (or ``nifti dicom``): the CT as a DICOM series in ``OUT/dicom/`` (CT
  Image Storage, one file a slice, described as a synthetic reconstruction not for
  diagnosis), which 3D Slicer and PACS viewers load;
- ``--mesh bone.stl``: the bone surface (HU >= 250) as an STL mesh in LPS millimetres;
  with ``--ct`` and ``--labels SEG.nii.gz`` (VerSe labels of that CT) also one mesh per
  vertebra (``bone_L1.stl``, ...); a relative path is taken inside OUT;
- ``--report``: ``OUT/report.html``, one self-contained page with scrollable slices in
  three planes, the input X-rays beside the reconstruction's DRRs, the uncertainty map
  and the metrics.

Other jobs have their own scripts:

- held-out test sets (phantoms from seed 90000 or CT folders) scored with baselines and
  the autoencoder ceiling: ``python eval/evaluate.py``;
- seconds and peak memory per reconstruction for each sampler and step count:
  ``python eval/benchmark.py reconstruct``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from x2ct.clihelp import HelpFormatter
from x2ct.eval.figures import reconstruction_figure, save_figure
from x2ct.eval.metrics import ct_metrics, projection_error
from x2ct.fileio import atomic_path
from x2ct.models import model_path


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


def prepare_ct(path: str | os.PathLike, spacing, shape, window, spine_position=None,
               labels: str | os.PathLike | None = None):
    """A NIfTI CT as HU (1, 1, X, Y, Z) at ``spacing``, cropped/padded to ``shape`` with
    its spine's bone centroid on voxel ``spine_position`` (a model's config: where its
    training CTs had theirs; None: the middle), HU clipped to ``window`` (what training
    sees). With ``labels`` (a label NIfTI of the CT): (HU, labels (X, Y, Z) on the same
    grid, nearest neighbour; the crop is the CT's alone)."""
    from x2ct.data import hu_to_unit, preprocess, unit_to_hu
    from x2ct.eval.export import resample_labels

    pipeline = preprocess(spacing, shape, window, normalise=False, spine_position=spine_position)
    d = pipeline({"image": str(path), "label": None})
    hu = torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32)  # (1, X, Y, Z)
    hu = unit_to_hu(hu_to_unit(hu, window), window)[None]
    if labels is None:
        return hu
    return hu, resample_labels(labels, np.asarray(d["image"].affine), hu.shape[2:])


# --------------------------------------------------------------------------- options
def add_guidance_arguments(
    p: argparse.ArgumentParser, pc_strength: float | None = None, pose_rounds: int = 0
) -> None:
    """The ``--pc-*`` (projection-consistent sampling) and ``--pose-*`` (pose refinement)
    flags, shared with eval/evaluate.py. Here projection guidance defaults to the model's
    (``projection_guidance`` in its config) and pose refinement is off; evaluate.py passes
    the defaults its ``--pc-model``/``--pose-model`` rows use."""
    off = pc_strength is None
    p.add_argument(
        "--pc-strength",
        type=float,
        default=pc_strength,
        help="projection-consistent sampling: latent RMS of each correction step "
        + ("(default: the model's setting)" if off else f"(default {pc_strength})"),
    )
    if off:
        p.add_argument(
            "--no-pc",
            action="store_true",
            help="no projection-consistent sampling, even where the model uses it by default",
        )
    p.add_argument("--pc-steps", type=int, default=5, help="last sampler steps corrected")
    p.add_argument("--pc-inner", type=int, default=3, help="gradient steps per correction")
    p.add_argument(
        "--pose-rounds",
        type=int,
        default=pose_rounds,
        help="pose refinement rounds: fit view angles and detector offsets, reconstruct again "
        + ("(default 0: off)" if pose_rounds == 0 else f"(default {pose_rounds})"),
    )
    p.add_argument("--pose-iters", type=int, default=60, help="Adam iterations per pose fit")
    p.add_argument("--pose-lr", type=float, default=0.3, help="pose fit step, degrees and mm")


def check_guidance_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.pc_strength is not None and not (
        args.pc_strength > 0 and args.pc_steps >= 1 and args.pc_inner >= 1
    ):
        p.error("--pc-strength must be > 0, --pc-steps and --pc-inner >= 1")
    if getattr(args, "no_pc", False) and args.pc_strength is not None:
        p.error("--no-pc and --pc-strength contradict each other")
    if args.pose_rounds < 0 or args.pose_iters < 1 or not args.pose_lr > 0:
        p.error("--pose-rounds must be >= 0, --pose-iters >= 1 and --pose-lr > 0")


# --------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, type=model_path,
                   help="a model's name (ldm-tiny; `x2ct models` lists them) or folder (RUN/model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="NIfTI CT: simulate its X-rays, reconstruct and score")
    src.add_argument("--ap", help="AP X-ray image (with --lateral)")
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
    add_guidance_arguments(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    out = p.add_argument_group("outputs for clinicians")
    out.add_argument("--format", nargs="+", choices=("nifti", "dicom"), default=["nifti"],
                     help="CT file formats: nifti (ct.nii.gz), dicom (a series in OUT/dicom/)")
    out.add_argument("--mesh", metavar="STL", help="write the bone surface as an STL mesh "
                     "(relative: inside OUT), one per vertebra as well with --labels")
    out.add_argument("--labels", help="VerSe label NIfTI of --ct: per-vertebra meshes")
    out.add_argument("--report", action="store_true",
                     help="write OUT/report.html: slices, X-rays and DRRs, uncertainty, metrics")
    args = p.parse_args(argv)
    if args.labels is not None and (args.ct is None or args.mesh is None):
        p.error("--labels goes with --ct (the CT they label) and --mesh")
    if args.ap is not None and args.lateral is None:
        p.error("--ap needs --lateral: the model reconstructs from both views")
    if args.lateral is not None and args.ap is None:
        p.error("--lateral needs --ap: the model reconstructs from both views")
    if args.num_samples < 1:
        p.error("--num-samples must be >= 1")
    check_guidance_arguments(p, args)
    return args


def options(args: argparse.Namespace):
    """(projection guidance, PoseRefinement or None) from the flags; the guidance is a
    ProjectionGuidance, False (``--no-pc``) or None (the model's default)."""
    from x2ct.diffusion import PoseRefinement, ProjectionGuidance

    guidance = False if getattr(args, "no_pc", False) else None
    if args.pc_strength is not None:
        guidance = ProjectionGuidance(args.pc_strength, args.pc_steps, args.pc_inner)
    pose = None
    if args.pose_rounds > 0:
        pose = PoseRefinement(args.pose_rounds, args.pose_iters, args.pose_lr)
    return guidance, pose


def sampling_summary(objective: str, sampler: str, steps: int, guidance_scale: float,
                     num_samples: int, projection_guidance=None, pose=None) -> str:
    """One line saying how a reconstruction was sampled (progress output, figure title)."""
    parts = (["regression (one pass)"] if objective == "regression"
             else [f"{sampler} {steps} steps", f"guidance {guidance_scale:g}"])
    if projection_guidance is None:
        parts.append("projection-consistent sampling off")
    else:
        g = projection_guidance
        parts.append(f"projection-consistent sampling {g.strength:g}/{g.steps}/{g.inner}")
    if pose is not None:
        parts.append(f"pose refinement {pose.rounds} round(s)")
    parts.append(f"{num_samples} sample{'s' if num_samples > 1 else ''}")
    return ", ".join(parts)


def require_export_libraries(formats, mesh) -> None:
    """An ImportError naming the extra to install, before any compute."""
    import importlib.util

    if "dicom" in formats and importlib.util.find_spec("pydicom") is None:
        raise ImportError("--format dicom needs pydicom: pip install 'x2ct[dicom]'")
    if mesh is not None and importlib.util.find_spec("skimage") is None:
        raise ImportError("--mesh needs scikit-image: pip install 'x2ct[mesh]'")


def write_exports(args, out_dir: Path, out, recon, xrays, drr, gt_hu, labels, metrics: dict,
                  settings: dict, written: list[str]) -> list[str]:
    """--format dicom, --mesh and --report (x2ct.eval.export, x2ct.eval.report); returns
    the names written (relative to ``out_dir`` where inside it)."""
    from x2ct.data import centred_affine
    from x2ct.eval.export import write_bone_meshes, write_dicom_series
    from x2ct.eval.report import write_report

    hu = out.hu[0, 0].cpu().numpy()
    affine = centred_affine(hu.shape, recon.spacing)  # where save_ct(spacing=) puts ct.nii.gz
    names = []
    shown = lambda p: str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p)
    if "dicom" in args.format:
        files = write_dicom_series(out_dir / "dicom", hu, affine)
        names.append(f"dicom/ ({len(files)} slices)")
    if args.mesh is not None:
        mesh = Path(args.mesh)
        mesh = mesh if mesh.is_absolute() else out_dir / mesh
        names += [shown(p) for p in write_bone_meshes(mesh, hu, affine, labels)]
    if args.report:
        std = None if out.std is None else out.std[0, 0].cpu().numpy()
        truth = None if gt_hu is None else gt_hu[0, 0].numpy()
        scores = {k: v for k, v in metrics.items() if isinstance(v, float) and k != "seconds"}
        write_report(out_dir / "report.html", hu, recon.spacing, xrays=xrays[0],
                     drrs=drr[0].cpu(), view_names=_view_names(recon.geometry.angles), std=std,
                     truth=truth, metrics=scores, settings=settings,
                     title=f"x2ct reconstruction: {Path(args.ct or args.ap).name}",
                     window=recon.autoencoder.config.hu_window, files=[*written, *names])
        names.append("report.html")
    return names


def _view_names(angles) -> list[str]:
    names = {0.0: "AP", 90.0: "lateral"}
    return [names.get(float(a) % 360.0, f"{float(a):g} deg") for a in angles]


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
        require_export_libraries(args.format, args.mesh)
        for path in (args.ct, args.ap, args.lateral, args.geometry, args.labels):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
    except (FileNotFoundError, json.JSONDecodeError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    det = tuple(config["geometry"]["detector_shape"])
    spacing = tuple(ae_config["spacing"])
    ct_shape = tuple(n * config["downsample_factor"] for n in config["latent_size"])
    window = tuple(ae_config["hu_window"])
    gt_hu = xrays = declared = labels = None
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
            print(f"reading {args.ct}", flush=True)
            gt_hu = prepare_ct(args.ct, spacing, ct_shape, window, config.get("spine_position"),
                               labels=args.labels)
            if args.labels is not None:
                gt_hu, labels = gt_hu
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {e}") from e

    guidance, pose = options(args)
    print(f"loading {args.model}", flush=True)
    recon = Reconstructor.from_pretrained(args.model, device=args.device)
    effective = recon.projection_guidance_for(guidance)
    if gt_hu is not None:
        print("simulating the CT's X-rays in the model's geometry", flush=True)
        xrays = recon.simulate_xrays(gt_hu.to(recon.device)).cpu()
    summary = sampling_summary(
        recon.config.objective, args.sampler or recon.config.sampler,
        args.steps or recon.config.sampler_steps,
        recon.config.guidance_scale if args.guidance is None else args.guidance,
        args.num_samples, effective, pose,
    )
    print(f"reconstructing: {summary}", flush=True)
    t0 = time.perf_counter()
    out = recon(
        xrays,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance,
        num_samples=args.num_samples,
        generator=torch.Generator().manual_seed(args.seed),
        batch_size=args.batch_size,
        projection_guidance=guidance,
        pose_refinement=pose,
        progress=True,
    )
    seconds = time.perf_counter() - t0
    record = {
        "objective": recon.config.objective,
        "sampler": args.sampler or recon.config.sampler,
        "steps": args.steps or recon.config.sampler_steps,
        "guidance_scale": recon.config.guidance_scale if args.guidance is None else args.guidance,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "projection_guidance": None if effective is None else effective.to_dict(),
        "pose_refinement": None if pose is None else pose.to_dict(),
    }
    if out.projection is not None:  # per sample, (S,) for the one case
        record["projection_guidance_errors"] = {
            k: out.projection[k][0].tolist() for k in ("before", "after", "final", "guided")
        }
        before, final = out.projection["before"][0], out.projection["final"][0]
        print(
            f"projection-consistent sampling: projection error {before.mean():.4f} -> "
            f"{final.mean():.4f} (guided sample kept for "
            f"{int(out.projection['guided'].sum())} of {args.num_samples})"
        )
    if out.pose is not None:
        record["pose"] = {
            "columns": ["d_angle_deg", "d_u_mm", "d_v_mm"],
            "views": out.pose[0].tolist(),
        }
        print(f"refined pose (d_angle deg, d_u mm, d_v mm) per view: {out.pose[0].tolist()}")
    written = []
    if "nifti" in args.format:
        save_ct(out_dir / "ct.nii.gz", out.hu[0, 0].cpu().numpy(), spacing=recon.spacing)
        written.append("ct.nii.gz")
        if out.std is not None:
            save_ct(out_dir / "std.nii.gz", out.std[0, 0].cpu().numpy(), spacing=recon.spacing)
            written.append("std.nii.gz")
    drr = recon.simulate_xrays(out.hu.to(recon.device))
    result = {"seconds": seconds, "options": record}
    if effective is not None or pose is not None:
        _write_json(out_dir / "reconstruction.json", {"seconds": seconds, **record})
        written.append("reconstruction.json")
    title = f"{summary}; {seconds:.1f} s"
    if gt_hu is not None:
        pred_hu = out.hu.cpu()
        result.update(ct_metrics(pred_hu, gt_hu, window))
        result["projection_error"], _ = projection_error(
            pred_hu, xrays, recon.geometry, recon.spacing, recon.config.xray_scale, window
        )
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
    save_figure(fig, out_dir / "reconstruction.png", dpi=90)
    written.append("reconstruction.png")
    written += write_exports(args, out_dir, out, recon, xrays, drr, gt_hu, labels,
                             result, record, written)
    print(f"wrote {', '.join(written)} to {out_dir} ({seconds:.1f} s)")
    return result


if __name__ == "__main__":
    main()
