"""``python -m x2ct.data.phantom``: write phantoms as VerSe-style NIfTI pairs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from x2ct.data.phantom import REGIONS, PhantomOptions, phantom_id, spine_phantom, whole_body_grid
from x2ct.data.phantom.options import CONTRAST_PHASES

__all__ = ["main"]

_SWITCHES = ("metal", "fracture", "degeneration", "calcification", "table", "arms", "scoliosis")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m x2ct.data.phantom",
        description="Write procedural adult-trunk spine CT phantoms as <id>_ct.nii.gz (HU), "
        "<id>_seg-vert_msk.nii.gz (VerSe labels; discs 100) and, with metal, "
        "<id>_metal_msk.nii.gz. Case i uses seed + i. Features not switched on or off are "
        "drawn per seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n", type=int, required=True, help="number of phantoms")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=90000,
                   help="seed of the first phantom (train 0-9999, val 10000+, test 90000+)")
    p.add_argument("--region", choices=REGIONS, default="lumbar")
    p.add_argument("--shape", type=int, nargs="+", default=[64], help="voxels (1 or 3 ints)")
    p.add_argument("--spacing", type=float, nargs="+", default=[2.0], help="mm (1 or 3)")
    p.add_argument("--whole-body", action="store_true",
                   help="write the grid holding the whole trunk in x, y (ignores --shape; "
                   "isotropic --spacing) over --z-extent mm")
    p.add_argument("--z-extent", type=float, default=230.0, help="mm, with --whole-body")
    for name in _SWITCHES:
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"force {name} on or off (default: drawn per seed)")
    p.add_argument("--contrast", choices=CONTRAST_PHASES, default=None,
                   help="contrast phase (default: drawn per seed)")
    p.add_argument("--fracture-grade", type=int, choices=(1, 2, 3), default=None)
    p.add_argument("--bmd", type=float, default=None, help="trabecular BMD, mg/cm^3")
    p.add_argument("--noise-std", type=float, default=None, help="CT noise SD, HU at 2 mm")
    p.add_argument("--no-ct-noise", action="store_true", help="noiseless volumes")
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Write ``--n`` phantoms into ``--out`` and print one line per case."""
    from x2ct.data.io import save_ct

    parser = _parser()
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if len(args.shape) not in (1, 3) or len(args.spacing) not in (1, 3):
        parser.error("--shape and --spacing take 1 or 3 values")
    if args.whole_body and len(set(args.spacing)) != 1:
        parser.error("--whole-body takes one --spacing value")
    try:
        options = PhantomOptions(
            **{k: getattr(args, k) for k in _SWITCHES},
            contrast=args.contrast, fracture_grade=args.fracture_grade, bmd=args.bmd,
            noise_std=args.noise_std, ct_noise=not args.no_ct_noise,
        )  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    shape = args.shape * 3 if len(args.shape) == 1 else args.shape
    spacing = args.spacing * 3 if len(args.spacing) == 1 else args.spacing
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        seed = args.seed + i
        offset = (0.0, 0.0, 0.0)
        if args.whole_body:
            shape, offset = whole_body_grid(seed, args.region, spacing[0], args.z_extent,
                                            options=options)  # fmt: skip
        ph = spine_phantom(shape, spacing, seed=seed, region=args.region, offset_mm=offset,
                           options=options)  # fmt: skip
        case = phantom_id(seed)
        written = [
            save_ct(args.out / f"{case}_ct.nii.gz", ph.hu, spacing=ph.spacing),
            save_ct(args.out / f"{case}_seg-vert_msk.nii.gz", ph.labels, spacing=ph.spacing),
        ]
        if ph.metal.any():
            written.append(save_ct(args.out / f"{case}_metal_msk.nii.gz",
                                   ph.metal.astype(np.int16), spacing=ph.spacing))  # fmt: skip
        f = ph.info["features"]
        feats = [k for k in ("metal", "fracture", "degeneration", "calcification", "table",
                             "arms") if f[k]]  # fmt: skip
        if f["contrast"] != "none":
            feats.append(f"contrast={f['contrast']}")
        print(f"{case}: {tuple(shape)} at {tuple(spacing)} mm, body "
              f"{ph.info['body']['width_mm']:.0f}x{ph.info['body']['depth_mm']:.0f} mm, "
              f"BMD {ph.info['bmd']:.0f} mg/cm3, {', '.join(feats) or 'no extra features'} "
              f"-> {', '.join(p.name for p in written)}")  # fmt: skip
    ids = [phantom_id(args.seed + i) for i in range(args.n)]
    named = ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"
    print(f"wrote {args.n} phantom(s) {named} in {args.out}")
