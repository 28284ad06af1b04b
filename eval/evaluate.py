"""Evaluate reconstruction methods on a test set: one table row per method.

    python eval/evaluate.py --model runs/ldm/model --phantoms 20 --out runs/eval
    python eval/evaluate.py --model full=runs/a/model --model no-proj=runs/b/model \\
        --data /data/verse --baseline mean-ct --autoencoder runs/a/model/autoencoder \\
        --out runs/eval --sampler ddim --steps 25

Rows (each is scored on the same test cases, at the first model's CT grid):

- ``--model [NAME=]DIR`` (repeatable, for ablations): a saved pipeline (train/latent.py
  writes RUN/model) reconstructs every case from its simulated X-rays, ``--batch-size``
  cases per call, with ``--sampler/--steps/--guidance/--num-samples`` and projection-
  consistent sampling as the model's config says unless given.
- ``--pc-model [NAME=]DIR``: the same with projection-consistent sampling
  (``x2ct.diffusion.ProjectionGuidance`` from ``--pc-strength/--pc-steps/--pc-inner``);
  ``--no-pc-model [NAME=]DIR``: the same without it (the ablation of a model that uses it
  by default).
- ``--pose-model [NAME=]DIR``: the same with pose refinement
  (``x2ct.diffusion.PoseRefinement`` from ``--pose-rounds/--pose-iters/--pose-lr``).
- ``--autoencoder [NAME=]DIR`` (repeatable): the autoencoder round trip decode(encode(truth)),
  the ceiling any latent model built on it can reach (a model's own is DIR/autoencoder).
- ``--baseline mean-ct``: the voxel-wise mean of training CTs, the same for every case
  (what a method ignoring the X-rays reaches). Phantoms: seeds ``--train-seed``.. (disjoint
  from the test seeds ``--phantom-seed``.., 90000 by default); a folder: its training split,
  or ``--train-data DIR``.

Test cases: ``--phantoms N`` procedural spine phantoms with vertebra labels, or
``--data DIR`` CTs (VerSe, CTSpine1K or plain NIfTI; ``x2ct.data.find_ct_cases``), its
``--split`` (default test, the same hash split training uses; ``all`` for a held-out folder).
``--crop-mm MM`` cuts each CT to MM x MM mm around its spine first (its whole height
kept; ``ct_case(crop_mm=)``), as spine CT crops are cut, and keeps the field
where it lay in the whole CT: the truth is the same, the X-rays see only the crop (as
``reconstruct.py --ct`` renders a cropped CT's).
``--pose-jitter DEG MM`` renders every case's X-rays with its own random view poses, as
real radiographs are taken (each view's angle off by up to DEG degrees, its detector
shifted by up to MM mm in both directions; ``x2ct.projector.project_posed``, drawn from
``--seed``); model rows then also report the pose error (the fitted pose's with
``--pose-model``, the nominal views' otherwise).

Metrics per case (``x2ct.eval.metrics.case_metrics``): MAE in HU, PSNR and SSIM (3-D and
the X2CT-GAN slice-wise 2-D mean) over the HU window mapped to [0, 1], the same inside the
spine region, bone and per-vertebra Dice, projection error against the input X-rays,
LPIPS over slices when the ``lpips`` package and weights are at hand; FID over slices of
all cases per row with ``--fid-net`` (left out, with the reason, when its weights cannot
be loaded). Seconds and peak memory per reconstruction call go into the table too.

Writes into OUT: ``cases.csv`` (one line per method and case), ``summary.json`` (settings,
git commit, device, seed, per-row mean/std/n of every metric), ``table.md`` (mean ± std per
metric) and ``figures/<row>.png`` (best, median and worst case by spine-region PSNR).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from x2ct.cli import InputError, key_values, run_main
from x2ct.clihelp import HelpFormatter
from x2ct.diffusion.guidance import ProjectionGuidance
from x2ct.eval.figures import CasePlanes, case_grid, central_planes, save_figure
from x2ct.eval.memory import PeakMemory, device_name, memory_note
from x2ct.eval.metrics import (
    BONE_HU,
    SPINE_MARGIN_MM,
    SliceFID,
    case_metrics,
    load_feature_network,
    load_lpips,
    to_unit_window,
)
from x2ct.eval.radiograph_cases import FILE_FORMATS, radiograph_case
from x2ct.eval.reconstruct import add_guidance_arguments, check_guidance_arguments, options
from x2ct.fileio import atomic_path
from x2ct.models import model_spec

__all__ = ["DEFAULT_PHANTOM_SEED", "TABLE_COLUMNS", "main", "markdown_table", "summarise"]

DEFAULT_PHANTOM_SEED = 90_000  # test phantoms: disjoint from training (0..) and validation
BASELINES = ("mean-ct",)

# (metric key, column title, format) of the markdown table, in order; absent keys are skipped
TABLE_COLUMNS = [
    ("mae_hu", "MAE HU", ".1f"),
    ("psnr_3d", "PSNR 3D dB", ".2f"),
    ("ssim_3d", "SSIM 3D", ".4f"),
    ("psnr_2d_mean", "PSNR 2D dB", ".2f"),
    ("ssim_2d_mean", "SSIM 2D", ".4f"),
    ("mae_hu_spine", "MAE spine HU", ".1f"),
    ("psnr_3d_spine", "PSNR spine dB", ".2f"),
    ("ssim_3d_spine", "SSIM spine", ".4f"),
    ("dice_bone", "Dice bone", ".3f"),
    ("dice_vertebra_mean", "Dice vertebra", ".3f"),
    ("projection_error", "proj. error", ".4f"),
    ("projection_error_rel", "proj. error rel", ".3f"),
    ("pose_error_deg", "pose err deg", ".2f"),
    ("pose_error_mm", "pose err mm", ".2f"),
    ("lpips", "LPIPS", ".4f"),
]


# --------------------------------------------------------------------------- rows
@dataclass
class Row:
    name: str
    kind: str  # "model", "autoencoder" or "mean-ct"
    path: str | None = None
    settings: dict = field(default_factory=dict)
    mode: str = "plain"  # model rows: "plain", "pc"/"nopc" (projection guidance on/off), "pose"


def _named(spec: str) -> tuple[str | None, str]:
    """``NAME=DIR`` -> (NAME, DIR); a plain DIR -> (None, DIR)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if name and "/" not in name and os.sep not in name:
            return name, path
    return None, spec


MODE_SUFFIX = {"plain": "", "pc": " + pc", "nopc": " - pc", "pose": " + pose"}


def _default_name(path: str, kind: str) -> str:
    """runs/ldm/model -> "ldm"; runs/ldm/model/autoencoder -> "ldm autoencoder"."""
    p = Path(path).resolve()
    if kind == "autoencoder" and p.parent.name == "model" and p.parent.parent.name:
        return f"{p.parent.parent.name} autoencoder"
    if p.name == "model" and p.parent.name:
        return p.parent.name
    return p.name


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


# --------------------------------------------------------------------------- provenance
def git_commit() -> dict:
    """The commit of the x2ct checkout this runs from, and whether it has local changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                                capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _jsonable(x):
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no such numbers)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# --------------------------------------------------------------------------- statistics
def summarise(rows: Sequence[dict]) -> dict[str, dict]:
    """Per numeric key: mean and sample std over the cases where it is not nan, and n.
    An infinite value (a perfect PSNR) makes the mean infinite."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if isinstance(v, (int, float)) and k not in keys]
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows if k in r and not math.isnan(r[k])], dtype=np.float64)
        if len(v) == 0:
            out[k] = {"mean": float("nan"), "std": float("nan"), "n": 0}
            continue
        with np.errstate(invalid="ignore"):
            std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        out[k] = {"mean": float(np.mean(v)), "std": std, "n": int(len(v))}
    return out


def _cell(stat: dict | None, fmt: str) -> str:
    if stat is None or stat["n"] == 0:
        return "-"
    mean, std = stat["mean"], stat["std"]
    if not math.isfinite(mean):
        return str(mean)
    if stat["n"] == 1 or not math.isfinite(std):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def markdown_table(summary: dict) -> str:
    """The summary's rows as a markdown table: mean ± std per metric, FID, seconds and peak
    memory per volume. Metrics no row has are left out."""
    rows = summary["rows"]
    present = [c for c in TABLE_COLUMNS if any(c[0] in r["metrics"] for r in rows)]
    has_fid = any(r.get("fid") is not None for r in rows)
    head = ["method", "n"] + [c[1] for c in present] + (["FID"] if has_fid else []) + [
        "s / volume", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["name"], str(r["cases"])]
        cells += [_cell(r["metrics"].get(k), fmt) for k, _, fmt in present]
        if has_fid:
            cells.append("-" if r.get("fid") is None else f"{r['fid']:.2f}")
        cells.append(f"{r['seconds_per_volume']:.3g}")
        cells.append("-" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = list(summary.get("unavailable", {}).values())
    few = [r["name"] for r in rows if r.get("fid") is not None
           and r["fid_slices"] <= r["fid_features"]]
    if few:
        notes.append(f"FID of {', '.join(few)} rests on no more slices than features: its "
                     "covariances are singular and the value is biased; evaluate more cases.")
    s = summary["settings"]
    lines.append("")
    lines.append(f"{s['cases']} test cases ({s['data']['kind']}), HU window {s['hu_window']}, "
                 f"spine region = vertebra mask (or bone >= {s['bone_hu']} HU) dilated by "
                 f"{s['spine_margin_mm']} mm; {summary['device']}; s / volume: median over "
                 f"reconstruction calls of {s['batch_size']} case(s) of seconds / cases; "
                 f"{summary['memory']}.")
    lines += notes
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python eval/evaluate.py", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", action="append", dest="models", default=[], metavar="[NAME=]DIR",
                   type=lambda spec: ("plain", model_spec(spec)),
                   help="saved pipeline folder (repeat for one row each)")
    p.add_argument("--pc-model", action="append", dest="models", metavar="[NAME=]DIR",
                   type=lambda spec: ("pc", model_spec(spec)),
                   help="a pipeline row with projection-consistent sampling (--pc-*)")
    p.add_argument("--no-pc-model", action="append", dest="models", metavar="[NAME=]DIR",
                   type=lambda spec: ("nopc", model_spec(spec)),
                   help="a pipeline row without projection-consistent sampling")
    p.add_argument("--pose-model", action="append", dest="models", metavar="[NAME=]DIR",
                   type=lambda spec: ("pose", model_spec(spec)),
                   help="a pipeline row with pose refinement (--pose-*)")
    p.add_argument("--autoencoder", action="append", default=[], metavar="[NAME=]DIR",
                   type=model_spec,
                   help="autoencoder folder: the round-trip ceiling row (repeatable)")
    p.add_argument("--baseline", action="append", default=[], choices=BASELINES,
                   help="trivial baseline row(s): mean-ct, the mean training CT")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="folder of CT volumes (NIfTI; masks used when present)")
    src.add_argument("--phantoms", type=int, help="evaluate on this many test phantoms")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="test", choices=("all", "train", "val", "test"),
                   help="which hash split of --data to evaluate (default test)")
    p.add_argument("--train-data", help="folder whose CTs make the mean-ct baseline "
                   "(default: the training split of --data)")
    p.add_argument("--cache-dir", help="preprocessing cache for --data (default ~/.cache/x2ct)")
    p.add_argument("--phantom-seed", type=int, default=DEFAULT_PHANTOM_SEED,
                   help="seed of the first test phantom")
    p.add_argument("--region", default="lumbar", choices=("lumbar", "thoracic"))
    p.add_argument("--phantom-option", action="append", default=[], metavar="KEY=VALUE",
                   help="force a feature of the test phantoms (x2ct.data.PhantomOptions; VALUE "
                   "in JSON), e.g. metal=true, fracture=true, contrast='\"arterial\"'")
    p.add_argument("--xray-style", choices=("ideal", "radiograph"), default="ideal",
                   help="test X-rays: 'ideal' DRRs through the whole body, or 'radiograph': "
                   "x2ct's radiograph simulator (random tube voltage, scatter, noise, blur, "
                   "display curve, 8-bit PNG at 0.15-1 mm pixels, distances within the "
                   "model's range) written as files and read back as a user's files are")
    p.add_argument("--radiograph-format", choices=tuple(FILE_FORMATS), default="png",
                   help="with --xray-style radiograph: 8-bit PNG files with a geometry.json, "
                   "or 12-bit DX DICOM files whose tags carry the geometry")
    p.add_argument("--move", type=float, nargs=2, default=None, metavar=("MM", "DEG"),
                   help="move each case's field off its located spine by MM mm (a random "
                   "direction per case) and turn it by DEG degrees about the body axis (a "
                   "random sign): patients placed otherwise than the training default")
    p.add_argument("--crop-mm", type=float, default=None, metavar="MM",
                   help="cut each test CT to MM x MM mm (left-right x front-back) around its "
                   "spine, the whole height kept, before its case is made: a CT "
                   "reconstructed on a small field around the spine, as spine CT crops are; "
                   "its X-rays then see only what the crop holds")
    p.add_argument("--locate-by", choices=("image", "labels"), default="image",
                   help="how each case's spine is found before its field is cut: 'image' "
                   "(x2ct.data.locate_spine, as reconstruct.py does for a CT given alone) or "
                   "'labels' (the phantom's or the folder's vertebra labels, as with "
                   "reconstruct.py --labels; the localiser needs CTs of 3 mm voxels or finer)")
    p.add_argument("--train-seed", type=int, default=0, help="first training phantom seed")
    p.add_argument("--n-train-mean", type=int, default=16,
                   help="training CTs averaged for mean-ct (phantoms; a folder: at most this)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="CT grid when no --model gives it (default 64 64 64)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                   help="voxel size (mm) when no model or autoencoder gives it (default 2 2 2)")
    p.add_argument("--sampler", choices=("ddim", "ddpm", "rflow"), default=None)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (model's)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples averaged per case (default: each model's)")
    p.add_argument("--batch-size", type=int, default=4, help="cases per reconstruction call")
    p.add_argument("--seed", type=int, default=0, help="sampling noise (and pose jitter) seed")
    add_guidance_arguments(p, pc_strength=ProjectionGuidance.strength, pose_rounds=1)
    p.add_argument("--pose-jitter", type=float, nargs=2, default=None, metavar=("DEG", "MM"),
                   help="render the test X-rays with random view poses: angles off by up to "
                   "DEG degrees, detectors shifted by up to MM mm")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bone-hu", type=float, default=BONE_HU)
    p.add_argument("--spine-margin-mm", type=float, default=SPINE_MARGIN_MM)
    p.add_argument("--no-lpips", action="store_true", help="do not try LPIPS")
    p.add_argument("--lpips-slices", type=int, default=16, help="slices per plane for LPIPS")
    p.add_argument("--fid-net", default="inception",
                   help="FID feature network: 'inception', 'none', or a TorchScript file; "
                   "TorchScript is code and runs when loaded: give only a file you trust")
    p.add_argument("--fid-slices", type=int, default=16, help="slices per plane and case, FID")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not (args.models or args.autoencoder or args.baseline):
        p.error("nothing to evaluate: give --model, --autoencoder and/or --baseline")
    check_guidance_arguments(p, args)
    if args.pose_rounds < 1 and any(mode == "pose" for mode, _ in args.models):
        p.error("--pose-model rows need --pose-rounds >= 1")
    if args.pose_jitter is not None and not all(v >= 0 for v in args.pose_jitter):
        p.error("--pose-jitter DEG MM must be >= 0")
    if args.phantoms is not None and args.phantoms < 1:
        p.error("--phantoms must be >= 1")
    if (args.num_samples is not None and args.num_samples < 1) or args.batch_size < 1:
        p.error("--num-samples and --batch-size must be >= 1")
    try:
        args.options = phantom_options(args.phantom_option)
    except ValueError as e:
        p.error(str(e))
    if args.options is not None and args.phantoms is None:
        p.error("--phantom-option applies to --phantoms")
    if args.move is not None and not all(v >= 0 for v in args.move):
        p.error("--move MM DEG must be >= 0")
    if args.crop_mm is not None and not (math.isfinite(args.crop_mm) and args.crop_mm > 0):
        p.error("--crop-mm must be a positive width in mm")
    return args


def phantom_options(items: Sequence[str]):
    """PhantomOptions from ``KEY=VALUE`` strings (VALUE in JSON), or None for none."""
    if not items:
        return None
    from x2ct.data import PhantomOptions

    fields = key_values(items, "--phantom-option")
    try:
        return PhantomOptions(**fields)
    except TypeError as e:
        raise ValueError(f"--phantom-option: {e}") from e


def _fail(message: str):
    raise InputError(message)


# --------------------------------------------------------------------------- setup
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        _fail(f"{path}: not a readable JSON config ({e})")


def _check_inputs(args) -> dict:
    """Every check that can fail before any compute: model and autoencoder folders, the CT
    grid they share, the data folder. Returns rows and the grid."""
    from x2ct.autoencoder.model import check_model_dir
    from x2ct.diffusion.pipeline import check_pipeline_dir

    rows, grids = [], []
    for mode, spec in args.models:
        name, path = _named(spec)
        try:
            check_pipeline_dir(path)
        except FileNotFoundError as e:
            _fail(str(e))
        cfg = _read_json(Path(path) / "config.json")
        ae = _read_json(Path(path) / "autoencoder" / "config.json")
        try:
            shape = tuple(int(n) * int(cfg["downsample_factor"]) for n in cfg["latent_size"])
            grids.append((path, shape, tuple(float(s) for s in ae["spacing"]),
                          tuple(float(w) for w in ae["hu_window"])))
        except (KeyError, TypeError, ValueError) as e:
            _fail(f"{path}/config.json: not an x2ct pipeline config ({e})")
        if args.xray_style == "radiograph" and cfg.get("xray_input", "drr") != "rank":
            _fail(f"{path} reads calibrated DRRs only (xray_input "
                  f"{cfg.get('xray_input', 'drr')!r}): --xray-style radiograph needs models "
                  "trained with --xray-input rank")
        rows.append(Row(name or _default_name(path, "model") + MODE_SUFFIX[mode], "model", path,
                        mode=mode))
    for spec in args.autoencoder:
        name, path = _named(spec)
        try:
            check_model_dir(path)
        except FileNotFoundError as e:
            _fail(str(e))
        ae = _read_json(Path(path) / "config.json")
        try:
            grids.append((path, None, tuple(float(s) for s in ae["spacing"]),
                          tuple(float(w) for w in ae["hu_window"])))
        except (KeyError, TypeError, ValueError) as e:
            _fail(f"{path}/config.json: not an x2ct autoencoder config ({e})")
        rows.append(Row(name or _default_name(path, "autoencoder"), "autoencoder", path))
    for b in dict.fromkeys(args.baseline):
        rows.append(Row(b, b))
    for row, name in zip(rows, _unique([r.name for r in rows])):
        row.name = name

    shapes = [g[1] for g in grids if g[1] is not None]
    shape = shapes[0] if shapes else tuple(args.shape or (64, 64, 64))
    if args.shape is not None and shapes and tuple(args.shape) != shape:
        _fail(f"--shape {tuple(args.shape)} differs from the model's CT grid {shape}")
    spacing = grids[0][2] if grids else tuple(args.spacing or (2.0, 2.0, 2.0))
    window = grids[0][3] if grids else (-1000.0, 2000.0)
    for path, s, sp, _ in grids:
        if (s is not None and s != shape) or sp != spacing:
            _fail(f"{path} works on CT {s or 'any shape'} at {sp} mm, the first row on {shape} at "
                  f"{spacing} mm: every row must share one CT grid")
    if args.spacing is not None and grids and tuple(args.spacing) != spacing:
        _fail(f"--spacing {tuple(args.spacing)} differs from the models' spacing {spacing}")
    if args.data is not None:
        from x2ct.data import find_ct_cases, split_of

        try:
            cases = find_ct_cases(args.data)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
        if args.split != "all" and not any(split_of(c.id) == args.split for c in cases):
            _fail(f"{args.data}: none of its {len(cases)} CTs falls in the {args.split!r} split; "
                  "pass --split all to evaluate every CT of a held-out folder")
        if "mean-ct" in args.baseline:
            if args.train_data is None and args.split in ("all", "train"):
                _fail("--baseline mean-ct with --split all/train would average test CTs: "
                      "pass --train-data DIR")
            if args.train_data is not None:
                try:
                    find_ct_cases(args.train_data)
                except (FileNotFoundError, ValueError) as e:
                    _fail(str(e))
            elif not any(split_of(c.id) == "train" for c in cases):
                _fail(f"{args.data} has no CT in its training split for --baseline mean-ct; "
                      "pass --train-data DIR")
    elif "mean-ct" in args.baseline:
        test = set(range(args.phantom_seed, args.phantom_seed + args.phantoms))
        train = set(range(args.train_seed, args.train_seed + args.n_train_mean))
        if test & train:
            last = args.train_seed + args.n_train_mean - 1
            _fail(f"training phantom seeds {args.train_seed}..{last} overlap the test seeds "
                  f"{args.phantom_seed}..; change --train-seed or --phantom-seed")
    return {"rows": rows, "shape": shape, "spacing": spacing, "window": window}


def _reference_acquisitions(rows: list[Row]):
    """The first model's accepted acquisitions (``LatentDiffusionConfig.acquisitions``)."""
    from x2ct.diffusion.config import LatentDiffusionConfig

    for r in rows:
        if r.kind == "model":
            cfg = LatentDiffusionConfig.from_json((Path(r.path) / "config.json").read_text())
            return cfg.acquisitions
    return None


def _reference_views(args, rows: list[Row], shape, spacing):
    """Geometry and X-ray scale of the test X-rays: the first model's, else the datasets'
    default for the grid."""
    from x2ct.data import default_geometry
    from x2ct.projector import DRR_SCALE, Geometry

    for r in rows:
        if r.kind == "model":
            cfg = json.loads((Path(r.path) / "config.json").read_text())
            return Geometry.from_dict(cfg["geometry"]), float(cfg.get("xray_scale", DRR_SCALE))
    return default_geometry(shape, spacing), DRR_SCALE


def case_moves(n: int, shift_mm: float, turn_deg: float, seed: int) -> list[tuple]:
    """(shift (3,) mm, turn degrees) per case: a shift of length ``shift_mm`` in a random
    direction and a turn of +-``turn_deg`` (random sign), drawn from ``seed``."""
    rng = np.random.default_rng([int(seed), 0x30FE])
    out = []
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        out.append((tuple(float(v) for v in shift_mm * d), float(turn_deg * rng.choice([-1, 1]))))
    return out


def _test_cases(args, shape, spacing, window, geometry, xray_scale, acquisitions=None,
                out_dir: Path | None = None) -> list[dict]:
    """The test cases, each made as ``reconstruct.py --ct`` makes its case
    (``x2ct.data.ct_case``: the spine located in the image, the field cut around it and
    moved by ``--move``, X-rays through the whole body, along views moved by a random pose
    with ``--pose-jitter``); the truth's vertebra labels are cut with the same placement.
    With ``--xray-style radiograph`` the X-rays are simulated X-ray-room radiographs written
    as 8-bit PNG files with their geometry and read back as a user's files are
    (eval/radiograph_cases.py), into ``out_dir``/radiographs."""
    from tqdm.auto import tqdm

    from x2ct.data import ct_case, ct_to_drr, find_ct_cases, hu_to_unit, phantom_case, split_of
    from x2ct.projector import pose_views, view_vectors

    if args.phantoms is not None:
        sources = [("phantom", args.phantom_seed + i) for i in range(args.phantoms)]
    else:
        found = find_ct_cases(args.data)
        sources = [("ct", c) for c in found if args.split == "all" or split_of(c.id) == args.split]
    moves = case_moves(len(sources), *(args.move or (0.0, 0.0)), seed=args.seed)
    poses = None
    if args.pose_jitter is not None:
        poses = draw_poses(len(sources), geometry.num_views, *args.pose_jitter, seed=args.seed)
    nominal = view_vectors(geometry)
    out = []
    for i, (kind, src) in enumerate(tqdm(sources, desc="test cases", disable=args.no_progress)):
        kw = dict(shift_mm=moves[i][0], turn_deg=moves[i][1], window=window,
                  crop_mm=args.crop_mm,
                  locate_by="mask" if args.locate_by == "labels" else "image",
                  keep_body=args.xray_style == "radiograph")
        if poses is not None:
            kw["views"] = pose_views(nominal, poses[i].double())
        if kind == "phantom":
            case = phantom_case(src, args.region, shape, spacing, geometry,
                                options=args.options, **kw)
        else:
            case = ct_case(src.image, shape, spacing, geometry, mask=src.label, case_id=src.id,
                           **kw)
        truth = case.hu.clamp(*window)[None].float()  # (1, X, Y, Z)
        with torch.no_grad():  # the truth's DRRs along the nominal views (projection error)
            field = ct_to_drr(hu_to_unit(truth, window), geometry, spacing, window)
        item = {
            "id": case.id, "hu": truth, "labels": case.labels,
            "xrays": case.drr / xray_scale, "field_xrays": field / xray_scale,
            "pose": None if poses is None else poses[i], "info": case.info,
            "views": None, "intensity": "line_integral",
        }
        if args.xray_style == "radiograph":
            from x2ct.projector import stack_views

            folder = out_dir / "radiographs" / case.id.replace("/", "__")
            rc = radiograph_case(case, geometry, acquisitions, folder, seed=args.seed * 7919 + i,
                                 file_format=args.radiograph_format)
            if any(rc.mirror):
                _fail(f"{case.id}: the simulated views needed mirroring; evaluate at 0 and 90")
            item.update(xrays=rc.xrays[0], views=stack_views(rc.geometries, torch.float32),
                        intensity="display", radiograph=rc.settings)
        out.append(item)
    return out


def _mean_ct(args, shape, spacing, window, geometry) -> tuple[torch.Tensor, dict]:
    """The mean training field in HU (1, 1, X, Y, Z) and what it was averaged over: training
    phantoms (or the training CTs) made into centred cases as the test cases are."""
    from x2ct.data import ct_case, find_ct_cases, phantom_case, split_of

    fields = []
    if args.phantoms is not None:
        seeds = range(args.train_seed, args.train_seed + args.n_train_mean)
        for s in seeds:
            fields.append(phantom_case(s, args.region, shape, spacing, geometry).hu)
        info = {"phantom_seeds": [seeds.start, seeds.stop - 1], "region": args.region}
    else:
        root = args.train_data or args.data
        found = [c for c in find_ct_cases(root)
                 if args.train_data is not None or split_of(c.id) == "train"]
        found = found[: args.n_train_mean]
        for c in found:
            fields.append(ct_case(c.image, shape, spacing, geometry, mask=c.label).hu)
        info = {"folder": str(root), "cases": [c.id for c in found]}
    mean = torch.stack([f.clamp(*window).double() for f in fields]).mean(0).float()
    return mean.reshape(1, 1, *shape), info


# --------------------------------------------------------------------------- predictors
def draw_poses(n: int, num_views: int, max_deg: float, max_mm: float, seed: int) -> torch.Tensor:
    """(n, V, 3) view poses, each offset uniform in [-max, max] (degrees; mm, mm)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([max_deg, max_mm, max_mm], dtype=torch.float64)
    return ((torch.rand(n, num_views, 3, generator=g, dtype=torch.float64) * 2 - 1) * scale).float()


def pose_errors(fitted: torch.Tensor, truth: torch.Tensor) -> dict:
    """Mean over views of |angle error| (degrees) and of the detector shift error's length
    (mm) for one case's poses (V, 3)."""
    d = fitted.float() - truth.float()
    return {"pose_error_deg": float(d[:, 0].abs().mean()),
            "pose_error_mm": float(d[:, 1:].norm(dim=1).mean())}


def _predictor(row: Row, args, device, mean_hu, ref_geometry, ref_scale, spacing, window):
    """(predict(gt_hu (B,1,X,Y,Z), xrays (B,V,H,W)) -> (pred_hu, extras per case),
    xrays_for(gt_hu, ref_xrays, poses), geometry, xray_scale, settings)."""
    if row.kind == "model":
        from x2ct.diffusion import Reconstructor

        recon = Reconstructor.from_pretrained(row.path, device=device)
        c = recon.config
        guidance, pose = options(args)
        guidance = {"pc": guidance, "nopc": False}.get(row.mode)  # None: the model's default
        pose = pose if row.mode == "pose" else None
        settings = recon.sampling_settings(args.sampler, args.steps, args.guidance,
                                           args.num_samples)
        if c.objective != "diffusion":
            settings["objective"] = c.objective
        effective = recon.projection_guidance_for(guidance)
        if effective is not None:
            settings["projection_guidance"] = effective.to_dict()
        if pose is not None:
            settings["pose_refinement"] = pose.to_dict()
        generator = torch.Generator().manual_seed(args.seed)
        if recon.geometry != ref_geometry or c.xray_scale != ref_scale:
            _fail(f"{row.path} was trained for other views ({recon.geometry.to_dict()}, X-ray "
                  f"scale {c.xray_scale}) than the first model's: evaluate them separately")

        def xrays_for(gt, ref_xrays, poses):
            return ref_xrays

        def predict(gt, xrays, views=None, intensity="line_integral"):
            out = recon(xrays.to(device), sampler=settings["sampler"], steps=settings["steps"],
                        guidance_scale=settings["guidance_scale"],
                        num_samples=settings["num_samples"], generator=generator,
                        projection_guidance=guidance, pose_refinement=pose, views=views,
                        intensity=intensity)
            extras = [{} for _ in range(gt.shape[0])]
            for i, e in enumerate(extras):
                if out.pose is not None:
                    e["pose"] = out.pose[i].cpu()
                if out.projection is not None:  # share of samples whose guided result was kept
                    e["guided"] = float(out.projection["guided"][i].float().mean())
            return out.hu.float().cpu(), extras

        return predict, xrays_for, recon.geometry, c.xray_scale, settings
    keep = lambda gt, ref_xrays, poses: ref_xrays
    none = lambda gt: [{} for _ in range(gt.shape[0])]
    if row.kind == "autoencoder":
        from x2ct.autoencoder import CTAutoencoder

        ae = CTAutoencoder.from_pretrained(row.path, device=device)

        def predict(gt, xrays, views=None, intensity=None):
            with torch.no_grad():
                x = ae.hu_to_input(gt.to(device))
                return ae.output_to_hu(ae.reconstruct(x)).float().cpu(), none(gt)

        return predict, keep, ref_geometry, ref_scale, {"kind": ae.config.kind}
    if row.kind == "mean-ct":
        return (lambda gt, xrays, views=None, intensity=None: (
                    mean_hu.expand(gt.shape[0], -1, -1, -1, -1).clone(), none(gt)),
                keep, ref_geometry, ref_scale, {})
    raise ValueError(f"unknown row kind {row.kind!r}")


# --------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    checked = _check_inputs(args)  # exits with a clear message before any compute
    rows: list[Row] = checked["rows"]
    shape, spacing, window = checked["shape"], checked["spacing"], checked["window"]
    out_dir = Path(args.out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda asked for, but CUDA is not available")
    unavailable = {}
    lpips_net = None
    if args.no_lpips:
        unavailable["lpips"] = "LPIPS left out: --no-lpips"
    else:
        lpips_net, reason = load_lpips(device=device)
        if lpips_net is None:
            unavailable["lpips"] = reason
            print(reason, file=sys.stderr)
    fid_net = None
    if args.fid_net == "none":
        unavailable["fid"] = "FID left out: --fid-net none"
    else:
        fid_net, reason = load_feature_network(args.fid_net, device)
        if fid_net is None:
            unavailable["fid"] = reason
            print(reason, file=sys.stderr)

    from tqdm.auto import tqdm


    geometry, xray_scale = _reference_views(args, rows, shape, spacing)
    acquisitions = _reference_acquisitions(rows)
    if args.radiograph_format != "png" and args.xray_style != "radiograph":
        _fail("--radiograph-format is for --xray-style radiograph")
    if args.xray_style == "radiograph" and acquisitions is None:
        _fail("--xray-style radiograph needs a --model row (its accepted acquisitions)")
    cases = _test_cases(args, shape, spacing, window, geometry, xray_scale, acquisitions,
                        out_dir)
    if len(cases) == 0:
        _fail("no test cases")
    mean_hu, mean_info = (_mean_ct(args, shape, spacing, window, geometry)
                          if "mean-ct" in args.baseline else (None, None))

    per_case: list[dict] = []
    row_summaries = []
    figures = {}
    bar = tqdm(total=len(rows) * len(cases), desc="evaluate", disable=args.no_progress)
    for row in rows:
        bar.set_postfix(method=row.name)
        predict, xrays_for, row_geometry, row_scale, settings = _predictor(
            row, args, device, mean_hu, geometry, xray_scale, spacing, window)
        row.settings = settings
        fid = SliceFID(fid_net, args.fid_slices, device=device) if fid_net is not None else None
        results, planes, seconds, peaks = [], [], [], []
        for start in range(0, len(cases), args.batch_size):
            batch = cases[start:start + args.batch_size]
            gt = torch.stack([c["hu"] for c in batch])  # (B, 1, X, Y, Z)
            poses = None if args.pose_jitter is None else torch.stack([c["pose"] for c in batch])
            xrays = xrays_for(gt, torch.stack([c["xrays"] for c in batch]), poses)
            field_xrays = torch.stack([c["field_xrays"] for c in batch])
            views = None
            if batch[0]["views"] is not None:
                views = torch.stack([c["views"] for c in batch])
            with PeakMemory(device) as mem:
                pred, extras = predict(gt, xrays, views, batch[0]["intensity"])
            seconds.append(mem.seconds / len(batch))
            peaks.append(mem.mb)
            for i, c in enumerate(batch):
                # projection error against the truth field's own DRRs (the X-rays also cross
                # the rest of the body, which no reconstruction of the field holds)
                m = case_metrics(pred[i], gt[i], spacing, labels=c["labels"],
                                 xrays=field_xrays[i],
                                 geometry=row_geometry, xray_scale=row_scale, hu_window=window,
                                 bone_hu=args.bone_hu, spine_margin_mm=args.spine_margin_mm,
                                 lpips_net=lpips_net, lpips_slices=args.lpips_slices)
                if c["pose"] is not None and row.kind == "model":  # nominal views unless fitted
                    m.update(pose_errors(extras[i].get("pose", torch.zeros_like(c["pose"])),
                                         c["pose"]))
                if "guided" in extras[i]:
                    m["guided"] = extras[i]["guided"]
                m["seconds"] = mem.seconds / len(batch)
                results.append(m)
                per_case.append({"method": row.name, "case": c["id"], **m})
                planes.append((c["id"], central_planes(gt[i]), central_planes(pred[i])))
                if fid is not None:
                    fid.update(to_unit_window(pred[i], window), to_unit_window(gt[i], window))
            bar.update(len(batch))
        del predict, xrays_for
        if device.type == "cuda":
            torch.cuda.empty_cache()
        stats = summarise(results)
        summary_row = {
            "name": row.name, "kind": row.kind, "path": row.path, "cases": len(results),
            "settings": settings, "metrics": stats,
            "seconds_per_volume": float(np.median(seconds)),
            "peak_memory_mb": float(max(peaks)),
        }
        if fid is not None:
            summary_row["fid"] = fid.compute()
            summary_row["fid_slices"] = len(fid)  # feature vectors per set
            summary_row["fid_features"] = fid.num_features
        if row.kind == "mean-ct":
            summary_row["averaged"] = mean_info
        row_summaries.append(summary_row)
        figures[row.name] = _best_median_worst(row, results, planes, window, out_dir)
    bar.close()

    summary = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv if argv is None else ["eval/evaluate.py", *argv],
        "git": git_commit(),
        "device": device_name(device),
        "memory": memory_note(device),
        "seed": args.seed,
        "settings": {
            "sampler": args.sampler, "steps": args.steps, "guidance_scale": args.guidance,
            "num_samples": args.num_samples, "batch_size": args.batch_size,
            "cases": len(cases), "shape": list(shape), "spacing": list(spacing),
            "hu_window": list(window), "bone_hu": args.bone_hu,
            "spine_margin_mm": args.spine_margin_mm, "geometry": geometry.to_dict(),
            "xray_scale": xray_scale, "fid_net": args.fid_net, "fid_slices": args.fid_slices,
            "lpips_slices": args.lpips_slices,
            "pose_jitter": None if args.pose_jitter is None else
            {"max_angle_deg": args.pose_jitter[0], "max_shift_mm": args.pose_jitter[1]},
            "xray_style": args.xray_style,
            "radiograph_format": args.radiograph_format if args.xray_style == "radiograph"
            else None,
            "move": None if args.move is None else
            {"shift_mm": args.move[0], "turn_deg": args.move[1]},
            "crop_mm": args.crop_mm,
            "data": ({"kind": "phantoms", "n": args.phantoms, "seed": args.phantom_seed,
                      "region": args.region, "options": args.phantom_option}
                     if args.phantoms is not None else
                     {"kind": "folder", "root": str(args.data), "split": args.split,
                      "ids": [c["id"] for c in cases]}),
        },
        "unavailable": unavailable,
        "rows": row_summaries,
        "figures": {k: str(v) for k, v in figures.items()},
    }
    _write_outputs(out_dir, summary, per_case)
    print(markdown_table(summary))
    print(f"wrote cases.csv, summary.json, table.md and figures/ to {out_dir}")
    return summary


def _best_median_worst(row: Row, results, planes, window, out_dir: Path) -> Path:
    """Figure of the best, median and worst case by spine-region PSNR (whole-volume PSNR
    where a case has no spine region)."""
    def key(i):
        v = results[i]["psnr_3d_spine"]
        return results[i]["psnr_3d"] if math.isnan(v) else v

    order = sorted(range(len(results)), key=key)
    picks = [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]
    grid = [CasePlanes(f"{tag}: {planes[i][0]}\nspine PSNR {key(i):.2f} dB", planes[i][1],
                       planes[i][2]) for tag, i in picks]
    fig = case_grid(grid, window, f"{row.name} ({row.kind})")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row.name)
    return save_figure(fig, out_dir / "figures" / f"{safe}.png")


def _write_outputs(out_dir: Path, summary: dict, per_case: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in per_case:
        columns += [k for k in r if k not in columns]
    with atomic_path(out_dir / "cases.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="")
            w.writeheader()
            for r in per_case:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(_jsonable(summary), indent=2, allow_nan=False))
    with atomic_path(out_dir / "table.md") as tmp:
        tmp.write_text(markdown_table(summary) + "\n")


if __name__ == "__main__":
    run_main(main)
