"""Render the biplanar DRRs of a CT: ``python -m x2ct.projector CT.nii.gz --out DIR``.

Writes, for each view, ``<name>.png`` (16-bit, the normalised X-ray ``drr / DRR_SCALE``
over the full 16-bit range; ``x2ct.data.load_xray`` reads it back), ``drr.npy`` with the
raw line integrals (V, H, W), ``geometry.json`` and ``preview.png`` (auto-windowed, for
people). Views at 0 and 90 degrees are named ``ap`` and ``lateral``.

With ``--radiograph`` it simulates the radiographs an X-ray room would store instead
(``x2ct.projector.radiograph``): a flat-panel detector of ``--detector-mm`` at
``--pixel-spacing``, tube voltage and exposure, scatter, noise, blur and a display curve,
written as PNG and/or DICOM with an ``x2ct-radiographs/1`` ``geometry.json``, the
effective line integrals ``line_integral.npy`` and a ``preview.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from x2ct.cli import InputError, run_main
from x2ct.clihelp import HelpFormatter
from x2ct.fileio import atomic_path
from x2ct.projector.attenuation import DRR_SCALE, hu_to_mu
from x2ct.projector.geometry import Geometry, transform_views, view_vectors
from x2ct.projector.project import BACKENDS, project_views, resolve_backend

VIEW_NAMES = {0.0: "ap", 90.0: "lateral"}
STYLES = ("ideal", "default", "random")
FORMATS = ("png", "dicom", "both")


def view_name(angle: float) -> str:
    return VIEW_NAMES.get(float(angle) % 360.0, f"view_{angle:g}deg")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m x2ct.projector",
        description="Render the DRRs of a CT (NIfTI or a DICOM series, HU), or with "
                    "--radiograph simulate the radiographs an X-ray room or C-arm would store.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("ct", type=Path, help="CT volume in HU (.nii or .nii.gz, any orientation, "
                   "or a folder holding one DICOM CT series)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--angles", type=float, nargs="+", default=[0.0, 90.0],
                   help="gantry angles in degrees (0 AP, 90 lateral with the source at the "
                        "patient's left)")
    p.add_argument("--step", type=float, default=0.5,
                   help="sample spacing in units of the smallest voxel spacing")
    p.add_argument("--isocentre", choices=("volume", "spine"), default="volume",
                   help="where the views' isocentre lies: the CT volume's centre, or its spine "
                   "(x2ct.data.locate_spine; what an x2ct model reconstructs around)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    drr = p.add_argument_group("DRRs (without --radiograph)")
    drr.add_argument("--size", type=int, default=256, help="detector size in pixels (square)")
    drr.add_argument("--sad", type=float, default=Geometry.sad, help="source-isocentre mm")
    drr.add_argument("--sdd", type=float, default=Geometry.sdd, help="source-detector mm")
    drr.add_argument("--parallel", action="store_true", help="parallel beam instead of cone")
    rad = p.add_argument_group("simulated radiographs")
    rad.add_argument("--radiograph", action="store_true",
                     help="simulate stored radiographs (physics and display) instead of DRRs")
    rad.add_argument("--style", choices=STYLES, default="default",
                     help="ideal: monochromatic, noiseless, linear (the DRR); default: the "
                          "technique below with a grid's scatter, quantum noise, CsI blur "
                          "and a percentile window; random: every view drawn from "
                          "RadiographStyle.sample (kV, dose, scatter, display curve, bits, "
                          "MONOCHROME1, collimation, markers), ignoring the technique flags")
    rad.add_argument("--kvp", type=float, default=90.0, help="tube voltage, kV")
    rad.add_argument("--mas", type=float, default=10.0,
                     help="tube current-time product, mAs (sets the quantum noise)")
    rad.add_argument("--filtration-al", type=float, default=3.0,
                     help="total aluminium filtration, mm")
    rad.add_argument("--filtration-cu", type=float, default=0.0, help="added copper, mm")
    rad.add_argument("--bits", type=int, choices=(8, 12, 16), default=12,
                     help="stored bit depth (12-bit PNGs use a 16-bit container)")
    rad.add_argument("--format", choices=FORMATS, default="png",
                     help="file format: PNG with geometry.json, DICOM (DX), or both")
    rad.add_argument("--pixel-spacing", type=float, default=0.2,
                     help="detector pixel size, mm (flat panels: 0.1-0.2; C-arms 0.15-0.4)")
    rad.add_argument("--detector-mm", type=float, nargs=2, default=[430.0, 430.0],
                     metavar=("H", "W"), help="detector height and width, mm (43 x 43 cm "
                                              "is a common flat panel)")
    rad.add_argument("--sid", type=float, default=1000.0, help="source-detector distance, mm")
    rad.add_argument("--sod", type=float, default=700.0,
                     help="source-isocentre (patient) distance, mm")
    rad.add_argument("--render-mm", type=float, default=1.0,
                     help="pixel size of the internal grid the CT is ray-traced on; the "
                          "material paths are then interpolated onto the detector before "
                          "noise, blur and display (a 2150 x 2150 detector at 0.2 mm is 4.6 "
                          "M rays per view; at 1 mm, 185 k)")
    rad.add_argument("--seed", type=int, default=0, help="seed of the noise and random styles")
    return p


def _preview(path: Path, images: np.ndarray, names: list[str], vmax: float | None = None,
             vmin: float = 0.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    top = vmax if vmax is not None else float(np.percentile(images, 99.5)) or 1.0
    for ax, img, name in zip(axes[0], images, names):
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=top)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _load(args) -> tuple[torch.Tensor, tuple[float, float, float]]:
    # The command line sits above the library layers: it may read NIfTI through x2ct.data.
    from x2ct.data import load_ct

    ct = load_ct(args.ct)  # reoriented to RAS; raises a clear error for a bad file
    hu = torch.from_numpy(np.ascontiguousarray(ct.hu, dtype=np.float32))
    return hu, tuple(float(s) for s in ct.spacing)


def _views(args, geometry: Geometry, hu: torch.Tensor, spacing) -> torch.Tensor:
    """The geometry's view vectors, moved so that the isocentre is the CT's centre
    (``--isocentre volume``) or its spine (``--isocentre spine``)."""
    views = view_vectors(geometry, torch.float32)
    if args.isocentre == "volume":
        return views
    from x2ct.data import locate_spine

    centre = locate_spine(hu.numpy(), spacing).centre
    print(f"isocentre on the spine at {', '.join(f'{c:.0f}' for c in centre)} mm "
          "(from the volume's centre)")
    return transform_views(views, torch.eye(3), torch.as_tensor(centre, dtype=torch.float32))


def _drrs(args) -> int:
    from x2ct.data import save_xray_png

    hu, spacing = _load(args)
    geometry = Geometry.fit(
        tuple(hu.shape), spacing, (args.size, args.size), angles=tuple(args.angles),
        sad=args.sad, sdd=args.sdd, parallel=args.parallel,
    )
    mu = hu_to_mu(hu)[None, None].to(args.device)
    backend = resolve_backend(args.backend, mu)
    print(f"{args.ct}: {tuple(hu.shape)} voxels of {spacing} mm; {backend} backend on "
          f"{mu.device.type}")
    with torch.no_grad():
        views = _views(args, geometry, hu, spacing)
        drr = project_views(mu, views.to(mu.device), geometry.detector_shape, spacing,
                            args.step, geometry.parallel, backend)[0].cpu().numpy()

    args.out.mkdir(parents=True, exist_ok=True)
    names = [view_name(a) for a in geometry.angles]
    for img, name in zip(drr, names):
        save_xray_png(args.out / f"{name}.png", img / DRR_SCALE)
    with atomic_path(args.out / "drr.npy") as tmp:
        np.save(tmp, drr.astype(np.float32))
    with atomic_path(args.out / "geometry.json") as tmp:
        tmp.write_text(json.dumps(
            {"geometry": geometry.to_dict(), "spacing": list(spacing), "step": args.step,
             "drr_scale": DRR_SCALE, "views": names}, indent=2))
    _preview(args.out / "preview.png", drr, names)
    print(f"wrote {', '.join(n + '.png' for n in names)}, drr.npy, geometry.json and "
          f"preview.png to {args.out}")
    return 0


def _check_radiograph_args(args) -> None:
    for name in ("pixel_spacing", "render_mm", "sid", "sod", "mas"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if min(args.detector_mm) <= 0:
        raise InputError(f"--detector-mm must be positive, got {args.detector_mm}")
    if args.sid <= args.sod:
        raise InputError(f"--sid ({args.sid} mm) must exceed --sod ({args.sod} mm)")
    if args.render_mm < args.pixel_spacing:
        raise InputError(f"--render-mm ({args.render_mm}) must be at least --pixel-spacing "
                         f"({args.pixel_spacing})")


def _styles(args, names: list[str]):
    from x2ct.projector.spectra import spectrum
    from x2ct.projector.style import RadiographStyle

    if args.style == "ideal":
        return [RadiographStyle.ideal(bits=args.bits)] * len(names)
    if args.style == "random":
        g = torch.Generator().manual_seed(args.seed)
        return [RadiographStyle.sample(g, "lateral" if n == "lateral" else "ap")
                for n in names]
    # Photons per mm^2 at the detector: the spectrum's fluence per mAs at 1 m, by the
    # inverse square law to the detector.
    _, fluence = spectrum(args.kvp, args.filtration_al, args.filtration_cu)
    photons = float(fluence.sum()) * args.mas * (1000.0 / args.sid) ** 2
    style = RadiographStyle(kvp=args.kvp, filtration_mm_al=args.filtration_al,
                            filtration_mm_cu=args.filtration_cu, photons_per_mm2=photons,
                            bits=args.bits)
    return [style] * len(names)


def _radiographs(args) -> int:
    from x2ct.data import (
        RadiographView,
        write_geometry_json,
        write_radiograph_dicom,
        write_radiograph_png,
    )
    from x2ct.projector.radiograph import material_paths, simulate_radiograph

    _check_radiograph_args(args)
    hu, spacing = _load(args)
    height, width = (max(1, round(mm / args.pixel_spacing)) for mm in args.detector_mm)
    detector = Geometry(sad=args.sod, sdd=args.sid, detector_shape=(height, width),
                        pixel_spacing=(args.pixel_spacing, args.pixel_spacing),
                        angles=tuple(args.angles))
    # The coarse grid covers the same detector: its pixels are a little off --render-mm
    # so that a whole number of them fits.
    h, w = (max(2, round(n * args.pixel_spacing / args.render_mm)) for n in (height, width))
    coarse = dataclasses.replace(detector, detector_shape=(h, w),
                                 pixel_spacing=(height * args.pixel_spacing / h,
                                                width * args.pixel_spacing / w))
    volume = hu[None, None].to(args.device)
    backend = resolve_backend(args.backend, volume)
    print(f"{args.ct}: {tuple(hu.shape)} voxels of {spacing} mm; {backend} backend on "
          f"{volume.device.type}; rays traced on {h} x {w} ({coarse.pixel_spacing[0]:.3g} mm), "
          f"detector {height} x {width} ({args.pixel_spacing:g} mm)")
    names = [view_name(a) for a in detector.angles]
    styles = _styles(args, names)
    start = time.perf_counter()
    with torch.no_grad():
        paths = material_paths(volume, _views(args, coarse, hu, spacing), (h, w), spacing,
                               args.step,
                               backend).cpu()
        if (h, w) != (height, width):
            paths = torch.nn.functional.interpolate(
                paths.flatten(1, 2), size=(height, width), mode="bilinear",
                align_corners=False,
            ).unflatten(1, (3, len(names)))
        result = simulate_radiograph(paths, detector.pixel_spacing, [styles],
                                     torch.Generator().manual_seed(args.seed))
    print(f"simulated {len(names)} views in {time.perf_counter() - start:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    entries, written = [], []
    for k, (name, style, g) in enumerate(zip(names, styles, detector.split())):
        display = result.display[0, k].numpy()
        photometric = "MONOCHROME1" if style.invert else "MONOCHROME2"
        linear = style.window is None and style.bits == 16 and not style.invert
        intensity = "normalised_drr" if linear and style.kvp is None else "display"
        if args.format in ("png", "both"):
            write_radiograph_png(args.out / f"{name}.png", display, style.bits)
            entries.append(RadiographView(name, f"{name}.png", g, intensity, style.bits,
                                          photometric, _orientation(g)))
            written.append(f"{name}.png")
        if args.format in ("dicom", "both"):
            write_radiograph_dicom(
                args.out / f"{name}.dcm", display, g, style.bits, photometric,
                kvp=style.kvp, mas=args.mas if args.style == "default" else None,
                series_description=f"Simulated radiograph (x2ct, {args.style} style)",
            )
            entries.append(RadiographView(f"{name}_dicom", f"{name}.dcm", g, intensity,
                                          style.bits, photometric, _orientation(g)))
            written.append(f"{name}.dcm")
    write_geometry_json(args.out / "geometry.json", entries)
    with atomic_path(args.out / "line_integral.npy") as tmp:
        np.save(tmp, result.line_integral[0].numpy().astype(np.float32))
    shown = np.stack([
        (s.max_value - d if s.invert else d) / s.max_value
        for s, d in zip(styles, result.display[0].numpy())
    ])
    _preview(args.out / "preview.png", shown, names, vmax=1.0)
    print(f"wrote {', '.join(written)}, geometry.json, line_integral.npy and preview.png to "
          f"{args.out}")
    return 0


def _orientation(geometry: Geometry) -> tuple[str, str]:
    from x2ct.data import x2ct_orientation

    return x2ct_orientation(geometry.angles[0])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.radiograph:
        return _radiographs(args)
    if args.size < 1:
        raise InputError(f"--size must be a positive number of pixels, got {args.size}")
    return _drrs(args)


if __name__ == "__main__":
    run_main(main)
