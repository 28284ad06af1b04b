"""Command line of the CT autoencoder.

    python -m x2ct.autoencoder encode CT.nii.gz LATENT.safetensors --model DIR
    python -m x2ct.autoencoder decode LATENT.safetensors CT.nii.gz --model DIR
    python -m x2ct.autoencoder roundtrip CT.nii.gz --model DIR --out RECON.nii.gz
    python -m x2ct.autoencoder evaluate --model DIR --phantoms 20 --seed 90000

encode/roundtrip load the CT (reoriented to RAS), resample it to the model's spacing and
map the model's HU window to [-1, 1]. A latent file holds the scaled latent
(1, C, x, y, z) under "latent" and, as metadata, the volume shape, spacing and affine
needed to decode it back onto the same grid. evaluate scores the round trip on held-out
synthetic phantoms (PSNR / SSIM over the HU window mapped to [0, 1], MAE in HU).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from x2ct.autoencoder.model import CTAutoencoder, check_model_dir
from x2ct.cli import run_main
from x2ct.clihelp import HelpFormatter
from x2ct.models import model_path


def resample_to_spacing(hu: np.ndarray, spacing, affine: np.ndarray | None, target):
    """Trilinear resampling of an (X, Y, Z) HU volume to about `target` mm per voxel.

    The field of view is kept: n' = round(n * s / t) voxels of exact size n * s / n'.
    Returns (hu', spacing', affine') with the affine's voxel axes rescaled so that the new
    voxel centres sit where they are in world space.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    shape = np.asarray(hu.shape)
    new_shape = np.maximum(np.round(shape * spacing / target).astype(int), 1)
    new_spacing = shape * spacing / new_shape
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    ratio = new_spacing / spacing  # old voxels per new voxel
    new_affine = np.array(affine, dtype=np.float64)
    new_affine[:3, :3] = affine[:3, :3] * ratio[None, :]
    # new voxel 0 centre in old voxel coordinates: -0.5 + 0.5 * ratio
    new_affine[:3, 3] = affine[:3, :3] @ (-0.5 + 0.5 * ratio) + affine[:3, 3]
    if np.array_equal(new_shape, shape):
        return hu.astype(np.float32), tuple(spacing), np.array(affine, dtype=np.float64)
    t = torch.as_tensor(np.ascontiguousarray(hu), dtype=torch.float32)[None, None]
    out = F.interpolate(
        t, size=tuple(int(n) for n in new_shape), mode="trilinear", align_corners=False
    )[0, 0].numpy()
    return out, tuple(float(s) for s in new_spacing), new_affine


def _save(save_ct, path, hu, spacing, affine) -> None:
    """The affine, when known, carries the spacing (its column norms)."""
    if affine is not None:
        save_ct(path, hu, affine=affine)
    else:
        save_ct(path, hu, spacing=spacing)


def _load_model(args) -> CTAutoencoder:
    return CTAutoencoder.from_pretrained(args.model, device=args.device)


def _tiling(args) -> dict:
    t = {}
    if args.tile_threshold is not None:
        t["tile_threshold"] = args.tile_threshold
    if args.tile_size is not None:
        t["tile_size"] = args.tile_size
    return t


def _load_input(model: CTAutoencoder, path: str):
    from x2ct.data import load_ct

    ct = load_ct(path)
    hu, spacing, affine = resample_to_spacing(
        np.asarray(ct.hu, dtype=np.float32), ct.spacing, np.asarray(ct.affine), model.config.spacing
    )
    return hu, spacing, affine


@torch.no_grad()
def cmd_encode(args) -> None:
    from safetensors.torch import save_file

    model = _load_model(args)
    hu, spacing, affine = _load_input(model, args.ct)
    x = model.hu_to_input(torch.as_tensor(hu)[None, None].to(args.device))
    z = model.encode(x, **_tiling(args))
    meta = {
        "shape": json.dumps(list(hu.shape)),
        "spacing": json.dumps(list(spacing)),
        "affine": json.dumps(np.asarray(affine).tolist()),
        "model_config": model.config.to_json(),
    }
    Path(args.latent).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(args.latent) + ".tmp")
    save_file({"latent": z.cpu().contiguous()}, str(tmp), metadata=meta)
    tmp.replace(args.latent)
    print(
        f"{args.ct}: {tuple(hu.shape)} at {tuple(round(s, 3) for s in spacing)} mm -> "
        f"latent {tuple(z.shape)} -> {args.latent}"
    )


@torch.no_grad()
def cmd_decode(args) -> None:
    from safetensors import safe_open

    from x2ct.data import save_ct

    model = _load_model(args)
    with safe_open(args.latent, framework="pt") as f:
        meta = f.metadata() or {}
        z = f.get_tensor("latent")
    shape = tuple(json.loads(meta["shape"])) if "shape" in meta else None
    spacing = tuple(json.loads(meta["spacing"])) if "spacing" in meta else model.config.spacing
    affine = np.array(json.loads(meta["affine"])) if "affine" in meta else None
    x = model.decode(z.to(args.device), shape=shape, **_tiling(args))
    hu = model.output_to_hu(x)[0, 0].cpu().numpy()
    _save(save_ct, args.ct, hu, spacing, affine)
    print(f"{args.latent}: latent {tuple(z.shape)} -> {tuple(hu.shape)} -> {args.ct}")


@torch.no_grad()
def cmd_roundtrip(args) -> None:
    from x2ct.data import save_ct
    from x2ct.eval.metrics import ct_metrics

    model = _load_model(args)
    hu, spacing, affine = _load_input(model, args.ct)
    x = model.hu_to_input(torch.as_tensor(hu)[None, None].to(args.device))
    rec = model.output_to_hu(model.reconstruct(x, **_tiling(args)))[0, 0].cpu().numpy()
    if args.out:
        _save(save_ct, args.out, rec, spacing, affine)
    m = ct_metrics(rec, hu, model.config.hu_window)
    lo, hi = model.config.hu_window
    print(f"{args.ct}: {tuple(hu.shape)} at {tuple(round(s, 3) for s in spacing)} mm")
    print(
        f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  MAE {m['mae_hu']:.1f} HU "
        f"(window [{lo:g}, {hi:g}] HU)" + (f" -> {args.out}" if args.out else "")
    )


@torch.no_grad()
def evaluate_phantoms(
    model: CTAutoencoder, n: int, seed: int, shape=(64, 64, 64), region: str | None = None
) -> list[dict]:
    """Round-trip metrics on phantoms seed .. seed + n - 1 (HU window of the model)."""
    from x2ct.data.phantom import spine_phantom
    from x2ct.eval.metrics import ct_metrics

    device = next(model.parameters()).device
    rows = []
    for s in range(seed, seed + n):
        kw = {} if region is None else {"region": region}
        hu = spine_phantom(shape=tuple(shape), spacing=model.config.spacing, seed=s, **kw).hu
        hu = torch.as_tensor(np.asarray(hu), dtype=torch.float32)
        x = model.hu_to_input(hu)[None, None].to(device)
        rec = model.output_to_hu(model.reconstruct(x))[0, 0].cpu()
        rows.append({"seed": s, **ct_metrics(rec, hu, model.config.hu_window)})
    return rows


def cmd_evaluate(args) -> None:
    model = _load_model(args)
    rows = evaluate_phantoms(model, args.phantoms, args.seed, args.shape, args.region)
    for r in rows:
        print(
            f"seed {r['seed']}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  "
            f"MAE {r['mae_hu']:.1f} HU"
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "mae_hu")}
    std = {k: float(np.std([r[k] for r in rows])) for k in ("psnr", "ssim", "mae_hu")}
    print(
        f"mean over {len(rows)} phantoms (seeds {args.seed}-{args.seed + args.phantoms - 1}): "
        f"PSNR {mean['psnr']:.2f} +- {std['psnr']:.2f} dB  SSIM {mean['ssim']:.4f} +- "
        f"{std['ssim']:.4f}  MAE {mean['mae_hu']:.1f} +- {std['mae_hu']:.1f} HU"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"mean": mean, "std": std, "per_seed": rows}, indent=2)
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m x2ct.autoencoder",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=partial(
        argparse.ArgumentParser, formatter_class=HelpFormatter))

    def common(sp):
        sp.add_argument(
            "--model", required=True, type=model_path,
            help="a model's name (ae-kl-tiny) or folder with config.json + model.safetensors"
        )
        sp.add_argument("--device", default="cpu")
        sp.add_argument(
            "--tile-threshold", type=int, default=None, help="voxels above which to tile"
        )
        sp.add_argument("--tile-size", type=int, default=None, help="tile side in voxels")

    sp = sub.add_parser("encode", help="CT file -> latent .safetensors")
    sp.add_argument("ct")
    sp.add_argument("latent")
    common(sp)
    sp = sub.add_parser("decode", help="latent .safetensors -> CT file")
    sp.add_argument("latent")
    sp.add_argument("ct")
    common(sp)
    sp = sub.add_parser("roundtrip", help="CT -> latent -> CT, with PSNR / SSIM / MAE")
    sp.add_argument("ct")
    sp.add_argument("--out", default=None, help="write the reconstruction here")
    common(sp)
    sp = sub.add_parser("evaluate", help="round-trip metrics on held-out phantoms")
    sp.add_argument("--phantoms", type=int, default=20)
    sp.add_argument("--seed", type=int, default=90000, help="first phantom seed")
    sp.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64))
    sp.add_argument("--region", default=None, help="phantom region (default: the phantom's)")
    sp.add_argument("--json", default=None, help="also write the numbers here")
    common(sp)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Clear errors before any compute.
    try:
        check_model_dir(args.model)
    except FileNotFoundError as e:
        parser.error(str(e))
    inputs = {
        "encode": [args.__dict__.get("ct")],
        "roundtrip": [args.__dict__.get("ct")],
        "decode": [args.__dict__.get("latent")],
    }.get(args.command, [])
    for path in inputs:
        if not Path(path).is_file():
            parser.error(f"input file not found: {path}")
    {
        "encode": cmd_encode,
        "decode": cmd_decode,
        "roundtrip": cmd_roundtrip,
        "evaluate": cmd_evaluate,
    }[args.command](args)
    return 0


if __name__ == "__main__":
    run_main(main)
