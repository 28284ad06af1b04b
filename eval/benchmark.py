"""Benchmarks, written as scripts (never timed assertions in tests).

    python eval/benchmark.py projector [--size 128] [--detector 128] [--device cpu|cuda]
                                       [--dtypes float32 bfloat16] [--json PATH]

prints a markdown table and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from x2ct.eval.projector_benchmark import (
    describe_setting,
    markdown_table,
    run_projector_benchmark,
)
from x2ct.fileio import atomic_path


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


def projector(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    cases = run_projector_benchmark(
        size=args.size, detector=args.detector, device=args.device, step=args.step,
        reps=args.reps, dtypes=tuple(args.dtypes), peers=not args.no_peers,
    )
    title = f"Projector on {machine()}: " + describe_setting(args.size, args.detector, args.step)
    print(markdown_table(cases, title))
    if args.json:
        _write_json(args.json, {
            "benchmark": "projector", "machine": machine(), "size": args.size,
            "detector": args.detector, "step": args.step, "torch": torch.__version__,
            "cases": [c.row() for c in cases],
        })
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python eval/benchmark.py")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("projector", help="DRR rendering speed and memory against peers")
    p.add_argument("--size", type=int, default=128, help="volume size N (N^3 voxels)")
    p.add_argument("--detector", type=int, default=128, help="detector size D (D^2 pixels)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--step", type=float, default=0.5, help="sample spacing in voxels")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["float32"],
                   choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-peers", action="store_true", help="skip nanodrr and DiffDRR")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.set_defaults(fn=projector)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
