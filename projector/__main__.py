"""Render the biplanar DRRs of a CT: ``python -m x2ct.projector CT.nii.gz --out DIR``.

Writes, for each view, ``<name>.png`` (16-bit, the normalised X-ray ``drr / DRR_SCALE``
over the full 16-bit range; ``x2ct.data.load_xray`` reads it back), ``drr.npy`` with the
raw line integrals (V, H, W), ``geometry.json`` and ``preview.png`` (auto-windowed, for
people). Views at 0 and 90 degrees are named ``ap`` and ``lateral``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from x2ct.clihelp import HelpFormatter
from x2ct.fileio import atomic_path
from x2ct.projector.attenuation import DRR_SCALE, hu_to_mu
from x2ct.projector.geometry import Geometry
from x2ct.projector.project import BACKENDS, project, resolve_backend

VIEW_NAMES = {0.0: "ap", 90.0: "lateral"}


def view_name(angle: float) -> str:
    return VIEW_NAMES.get(float(angle) % 360.0, f"view_{angle:g}deg")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m x2ct.projector", description="Render the DRRs of a CT (NIfTI, HU).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("ct", type=Path, help="CT volume in HU (.nii or .nii.gz, any orientation)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--angles", type=float, nargs="+", default=[0.0, 90.0],
                   help="gantry angles in degrees (default: 0 90, AP and lateral)")
    p.add_argument("--size", type=int, default=256, help="detector size in pixels (square)")
    p.add_argument("--step", type=float, default=0.5,
                   help="sample spacing in units of the smallest voxel spacing")
    p.add_argument("--sad", type=float, default=Geometry.sad, help="source-isocentre mm")
    p.add_argument("--sdd", type=float, default=Geometry.sdd, help="source-detector mm")
    p.add_argument("--parallel", action="store_true", help="parallel beam instead of cone")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def _preview(path: Path, drr: np.ndarray, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
    vmax = float(np.percentile(drr, 99.5)) or 1.0
    for ax, img, name in zip(axes[0], drr, names):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.size < 1:
        raise SystemExit(f"--size must be a positive number of pixels, got {args.size}")
    # The command line sits above the library layers: it may read NIfTI through x2ct.data.
    from x2ct.data import load_ct, save_xray_png

    ct = load_ct(args.ct)  # reoriented to RAS; raises a clear error for a bad file
    hu = torch.from_numpy(np.ascontiguousarray(ct.hu, dtype=np.float32))
    spacing = tuple(float(s) for s in ct.spacing)
    geometry = Geometry.fit(
        tuple(hu.shape), spacing, (args.size, args.size), angles=tuple(args.angles),
        sad=args.sad, sdd=args.sdd, parallel=args.parallel,
    )
    mu = hu_to_mu(hu)[None, None].to(args.device)
    backend = resolve_backend(args.backend, mu)
    print(f"{args.ct}: {tuple(hu.shape)} voxels of {spacing} mm; {backend} backend on "
          f"{mu.device.type}")
    with torch.no_grad():
        drr = project(mu, geometry, spacing, step=args.step, backend=backend)[0].cpu().numpy()

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


if __name__ == "__main__":
    sys.exit(main())
