"""Reconstruct one CT from two X-rays with a trained x2ct model (and score it against a CT).

    python eval/reconstruct.py --model DIR --ap AP.png --lateral LAT.png --out OUT
    python eval/reconstruct.py --model DIR --ct CT.nii.gz --out OUT

- ``--ap/--lateral``: two radiographs (PNG 8/16-bit, TIFF, DICOM, or .npy line integrals)
  of any pixel count and pixel size. Their geometry comes from DICOM tags
  (DistanceSourceToDetector, DistanceSourceToPatient, ImagerPixelSpacing or PixelSpacing,
  ViewPosition, PatientOrientation), from a ``geometry.json`` beside them or ``--geometry``
  (as ``python -m x2ct.projector`` writes), or from ``--pixel-spacing --sid --sod``; what
  none gives is assumed, with a warning. Each image is resampled by millimetres onto the
  model's detector (``x2ct.data.prepare_radiographs``: cropped or padded, never
  squeezed); PA and right-lateral views are mirrored into the model's AP and lateral (and
  the reconstruction back). Radiographs with an unknown display curve need a model trained
  with ``--xray-input rank``; x2ct's own DRR PNGs and .npy line integrals are read as line
  integrals. Distances or angles outside what the model was trained for are refused with
  the range named (``--allow-geometry-mismatch`` reconstructs anyway); blank or constant
  images are refused and views that look swapped are flagged.
- ``--ct``: a NIfTI CT, or a folder holding a DICOM CT series (a file per slice, read
  with pydicom: ``x2ct.data.load_dicom_series``; ``--series`` picks one by its number or
  UID where the folder holds several); a whole patient CT, any size and
  spacing. Made into a case as evaluation and training make theirs (``x2ct.data.ct_case``):
  the spine is located (``--labels`` vertebra labels, else ``x2ct.data.localise``), the
  model's field is cut around it (moved by ``--shift/--turn/--tilt``, at height ``--z``),
  and its X-rays are rendered through the whole CT along the model's views, as a
  radiograph sees the patient. The reconstruction is scored against the field (PSNR, SSIM
  over the HU window, MAE in HU, projection error against the field's own DRRs:
  ``x2ct.eval.metrics``) and saved with an affine that puts it where the field lies in the
  CT. A CT cut at the skin or reconstructed on a small field gives X-rays through what it
  holds: a warning says so.
- ``--out``: a folder; one holding outputs of an earlier run is refused unless
  ``--overwrite`` (which removes them all first). It is checked to be writable before
  the work starts.

Options:

- ``--pc-strength S [--pc-steps K --pc-inner N]``, ``--no-pc``: projection-consistent
  sampling (``x2ct.diffusion.ProjectionGuidance``; default: the model's setting, off for
  ``models/ldm-tiny``): the last K sampler steps' clean-latent estimates get N gradient
  steps of latent RMS S toward DRRs that match the X-rays; the plain result is computed
  too and the better of the two kept (never a worse projection error). Costs K extra
  network calls, K * (N + 1) decoder and projector passes with gradients, and a second
  final decode and DRR rendering.
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
import time
from pathlib import Path

import torch

from x2ct.cli import InputError, run_main
from x2ct.clihelp import HelpFormatter
from x2ct.data.cases import truncation_message
from x2ct.eval.figures import reconstruction_figure, save_figure
from x2ct.eval.metrics import ct_metrics
from x2ct.fileio import atomic_path, prepare_out_dir
from x2ct.models import model_path

OUTPUTS = ("ct.nii.gz", "std.nii.gz", "reconstruction.png", "metrics.json", "reconstruction.json")
"""Every file this command may write into --out (refused there without --overwrite)."""


# --------------------------------------------------------------------------- inputs
def ct_inputs(path, config: dict, ae_config: dict, args) -> tuple:
    """The ``--ct`` case, made exactly as evaluation and training make theirs
    (``x2ct.data.ct_case``): the field around the located spine (moved by ``--shift``,
    ``--turn``, ``--tilt``, at height ``--z``), X-rays through the whole CT along the
    model's views. Returns (case, truth HU (1, 1, X, Y, Z) clipped to the window, X-rays
    (1, V, H, W) normalised, the field's own DRRs (1, V, H, W) normalised)."""
    from x2ct.data import ct_case, load_ct
    from x2ct.projector import DRR_SCALE, Geometry

    spacing = tuple(ae_config["spacing"])
    window = tuple(ae_config["hu_window"])
    shape = tuple(n * config["downsample_factor"] for n in config["latent_size"])
    scale = float(config.get("xray_scale", DRR_SCALE))
    ct = path if args.series is None else load_ct(path, series=args.series)  # of a folder
    case = ct_case(
        ct, shape, spacing, Geometry.from_dict(config["geometry"]), mask=args.labels,
        case_id=str(path),
        shift_mm=tuple(args.shift), turn_deg=args.turn, tilt_deg=tuple(args.tilt),
        z_mm=args.z, window=window,
    )
    truth = case.hu.clamp(*window)[None, None]
    return case, truth, case.drr[None] / scale, case.drr_field[None] / scale


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
    src.add_argument("--ct", help="NIfTI CT or DICOM series folder: simulate its X-rays, "
                     "reconstruct and score")
    p.add_argument("--series", default=None,
                   help="--ct FOLDER holding several DICOM CT series: the one to read, by its "
                   "SeriesNumber or SeriesInstanceUID")
    src.add_argument("--ap", help="AP X-ray image (with --lateral)")
    p.add_argument("--lateral", help="lateral X-ray image (with --ap)")
    p.add_argument("--shift", type=float, nargs=3, default=(0.0, 0.0, 0.0),
                   metavar=("X", "Y", "Z"),
                   help="--ct: move the field from the located spine by these mm (RAS)")
    p.add_argument("--turn", type=float, default=0.0,
                   help="--ct: turn the field about the body axis by this many degrees")
    p.add_argument("--tilt", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                   help="--ct: tilt the field about the X and Y axes (degrees)")
    p.add_argument("--z", type=float, default=None,
                   help="--ct: height (mm, the CT's centred frame) of the field's centre; "
                   "default the middle of the spine found")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this command's outputs in --out (all of them: none of an earlier run "
        "is left beside the new ones); without it such a folder is refused",
    )
    p.add_argument(
        "--geometry",
        help="geometry.json of the radiographs (x2ct-radiographs/1, as python -m "
        "x2ct.projector writes; default: a geometry.json beside the images, if any)",
    )
    p.add_argument("--pixel-spacing", type=float, default=None,
                   help="radiographs: detector pixel size in mm (overrides the files)")
    p.add_argument("--sid", type=float, default=None,
                   help="radiographs: source-to-image (detector) distance in mm")
    p.add_argument("--sod", type=float, default=None,
                   help="radiographs: source-to-isocentre (patient) distance in mm")
    p.add_argument(
        "--allow-geometry-mismatch",
        action="store_true",
        help="reconstruct radiographs taken outside the acquisitions the model was trained "
        "for (expect worse results)",
    )
    p.add_argument("--sampler", choices=("ddim", "ddpm", "rflow"), default=None)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples averaged (default: model's); >1 writes std.nii.gz")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    add_guidance_arguments(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    out = p.add_argument_group("outputs for clinicians")
    out.add_argument("--format", nargs="+", choices=("nifti", "dicom"), default=["nifti"],
                     help="CT file formats: nifti (ct.nii.gz), dicom (a series in OUT/dicom/)")
    out.add_argument("--mesh", metavar="STL", help="write the bone surface as an STL mesh "
                     "(relative: inside OUT), one per vertebra as well with --labels")
    out.add_argument("--labels", help="VerSe label NIfTI of --ct: locates its spine, scores "
                     "per vertebra and, with --mesh, one mesh per vertebra")
    out.add_argument("--report", action="store_true",
                     help="write OUT/report.html: slices, X-rays and DRRs, uncertainty, metrics")
    args = p.parse_args(argv)
    if args.labels is not None and args.ct is None:
        p.error("--labels goes with --ct (the CT they label)")
    if args.ap is not None and args.lateral is None:
        p.error("--ap needs --lateral: the model reconstructs from both views")
    if args.lateral is not None and args.ap is None:
        p.error("--lateral needs --ap: the model reconstructs from both views")
    if args.num_samples is not None and args.num_samples < 1:
        p.error("--num-samples must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    if args.guidance is not None and not 0 <= args.guidance < float("inf"):
        p.error(f"--guidance must be a finite number >= 0, got {args.guidance}")
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


def write_exports(args, out_dir: Path, out, recon, xrays, drr, gt_hu, labels, affine,
                  metrics: dict, settings: dict, written: list[str]) -> list[str]:
    """--format dicom, --mesh and --report (x2ct.eval.export, x2ct.eval.report), placed by
    ``affine`` (the reconstruction's voxels in world mm, as ct.nii.gz); returns the names
    written (relative to ``out_dir`` where inside it)."""
    from x2ct.eval.export import write_bone_meshes, write_dicom_series
    from x2ct.eval.report import write_report

    hu = out.hu[0, 0].cpu().numpy()
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


def spine_check(hu, spacing) -> str | None:
    """A warning when the reconstruction shows no vertebral column
    (``x2ct.data.locate_spine`` fails or is unsure): the images probably do not show a
    spine, or not as AP and lateral views; None when a column is found."""
    from x2ct.data import CONFIDENCE_WARN, locate_spine

    try:
        found = locate_spine(hu, spacing)
    except ValueError as e:
        reason = str(e)
    else:
        if found.confidence >= CONFIDENCE_WARN:
            return None
        reason = f"confidence {found.confidence:.2f}"
    return (f"the reconstruction shows no clear vertebral column ({reason}): check that the "
            "images are an AP and a lateral radiograph of the spine")


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


def main(argv=None) -> dict:
    from x2ct.autoencoder import AutoencoderConfig
    from x2ct.data import save_ct
    from x2ct.diffusion import LatentDiffusionConfig, Reconstructor
    from x2ct.diffusion.pipeline import check_pipeline_dir

    args = parse_args(argv)
    out_dir = Path(args.out)
    # ---- every check that can fail before any compute
    try:
        check_pipeline_dir(args.model)
        config = LatentDiffusionConfig.from_file(Path(args.model) / "config.json").to_dict()
        ae_config = AutoencoderConfig.from_file(
            Path(args.model) / "autoencoder" / "config.json"
        ).to_dict()
        require_export_libraries(args.format, args.mesh)
        if args.ct is not None and not Path(args.ct).exists():
            raise FileNotFoundError(f"{args.ct}: no such CT file or DICOM folder")
        if args.series is not None and not (args.ct is not None and Path(args.ct).is_dir()):
            raise ValueError("--series chooses a DICOM series of a --ct folder")
        for path in (args.ap, args.lateral, args.geometry, args.labels):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise InputError(str(e)) from e
    window = tuple(ae_config["hu_window"])
    print(f"loading {args.model}", flush=True)  # a broken model is named before any input work
    try:
        recon = Reconstructor.from_pretrained(args.model, device=args.device)
    except (ValueError, OSError) as e:
        raise InputError(str(e)) from e
    settings = recon.sampling_settings(args.sampler, args.steps, args.guidance, args.num_samples)
    gt_hu = xrays = case = field_drr = radiographs = None
    intensity, geometries, mirror = "line_integral", None, (False, False)
    try:
        if args.ap is not None:
            from x2ct.data import prepare_radiographs

            model_config = LatentDiffusionConfig.from_dict(config)
            nominal = model_config.geometry_obj
            if tuple(nominal.angles) != (0.0, 90.0):
                raise ValueError(
                    f"the model's views are {nominal.angles} degrees, not AP (0) and lateral (90)"
                )
            spacing_flag = None if args.pixel_spacing is None else (args.pixel_spacing,) * 2
            radiographs = prepare_radiographs(
                [args.ap, args.lateral], nominal, geometry_json=args.geometry,
                pixel_spacing=spacing_flag, sid_mm=args.sid, sod_mm=args.sod,
                xray_scale=model_config.xray_scale,
            )
            xrays, intensity = torch.from_numpy(radiographs.xrays), radiographs.intensity
            geometries, mirror = radiographs.geometries, radiographs.mirror
            for view, source in zip(("AP", "lateral"), radiographs.sources):
                said = ", ".join(f"{k} from {v}" for k, v in sorted(source.items()))
                print(f"{view}: {said}")
            for note in radiographs.warnings:
                print(f"warning: {note}")
            if intensity == "display" and model_config.xray_input != "rank":
                raise ValueError(
                    f"{args.model} reads calibrated DRRs only (xray_input "
                    f"{model_config.xray_input!r}); radiographs need a model trained with "
                    "--xray-input rank"
                )
        elif args.ct is not None:
            print(f"reading {args.ct}", flush=True)
            case, gt_hu, xrays, field_drr = ct_inputs(args.ct, config, ae_config, args)
            spine = case.info["spine"]
            print(
                f"spine located at {', '.join(f'{c:.0f}' for c in spine['centre_mm'])} mm "
                f"({spine['method']}, confidence {spine['confidence']:.2f}); X-rays through "
                f"the whole CT ({' x '.join(map(str, case.info['ct_shape']))} voxels)"
            )
            message = truncation_message(case)
            if message:
                print(f"warning: {message}")
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise InputError(str(e)) from e

    guidance, pose = options(args)
    if geometries is not None:  # the radiographs' acquisition against the model's range
        try:
            recon.acquisition_views(geometries, args.allow_geometry_mismatch)
        except ValueError as e:
            raise InputError(str(e).replace("pass allow_geometry_mismatch=True",
                                            "pass --allow-geometry-mismatch")) from e
    prepare_out_dir(out_dir, OUTPUTS, args.overwrite)  # before the work, not after
    effective = recon.projection_guidance_for(guidance)
    from x2ct.data import centred_affine

    summary = sampling_summary(recon.config.objective, **settings,
                               projection_guidance=effective, pose=pose)
    print(f"reconstructing: {summary}", flush=True)
    t0 = time.perf_counter()
    out = recon(
        xrays,
        **settings,
        generator=torch.Generator().manual_seed(args.seed),
        batch_size=args.batch_size,
        projection_guidance=guidance,
        pose_refinement=pose,
        geometry=geometries,
        allow_geometry_mismatch=args.allow_geometry_mismatch,
        intensity=intensity,
        progress=True,
    )
    if any(mirror):  # PA or right-lateral views were mirrored into the model's
        from x2ct.data import unmirror

        out = out._replace(hu=unmirror(out.hu, mirror),
                           std=None if out.std is None else unmirror(out.std, mirror))
    seconds = time.perf_counter() - t0
    spine_note = spine_check(out.hu[0, 0].cpu().numpy(), recon.spacing)
    if spine_note is not None:
        print(f"warning: {spine_note}")
    record = {
        "objective": recon.config.objective,
        **settings,
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
            f"{int(out.projection['guided'].sum())} of {settings['num_samples']})"
        )
    if out.pose is not None:
        record["pose"] = {
            "columns": ["d_angle_deg", "d_u_mm", "d_v_mm"],
            "views": out.pose[0].tolist(),
        }
        print(f"refined pose (d_angle deg, d_u mm, d_v mm) per view: {out.pose[0].tolist()}")
    # with --ct the field lands where it lies in the patient (the CT file's world frame)
    affine = case.affine if case is not None else centred_affine(recon.shape, recon.spacing)
    written = []
    if "nifti" in args.format:
        save_ct(out_dir / "ct.nii.gz", out.hu[0, 0].cpu().numpy(), affine=affine)
        written.append("ct.nii.gz")
        if out.std is not None:
            save_ct(out_dir / "std.nii.gz", out.std[0, 0].cpu().numpy(), affine=affine)
            written.append("std.nii.gz")
    drr = recon.simulate_xrays(out.hu.to(recon.device))
    result = {"seconds": seconds, "options": record, "spine_found": spine_note is None}
    if effective is not None or pose is not None:
        _write_json(out_dir / "reconstruction.json", {"seconds": seconds, **record})
        written.append("reconstruction.json")
    title = f"{summary}; {seconds:.1f} s"
    if gt_hu is not None:
        pred_hu = out.hu.cpu()
        result.update(ct_metrics(pred_hu, gt_hu, window))
        # against the field's own DRRs: the X-rays cross the rest of the body too
        result["projection_error"] = float(recon.projection_errors(pred_hu, field_drr)[0])
        result["case"] = case.info
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
    labels = None if case is None or case.labels is None else case.labels.numpy()
    written += write_exports(args, out_dir, out, recon, xrays, drr, gt_hu, labels, affine,
                             result, record, written)
    print(f"wrote {', '.join(written)} to {out_dir} ({seconds:.1f} s)")
    return result


if __name__ == "__main__":
    run_main(main)
