"""Paired comparisons between parts of ``eval/results.sh``: the same phantoms scored two ways.

The radiograph part (8-bit PNG files read back), the dicom part (12-bit DX DICOM files
read back, the geometry from their tags), the move part (the field 14 mm and 8
degrees off the spine) and the crop part (each CT cut to 136 mm around its spine) use the
first phantoms of the lumbar part (ideal DRRs through the whole body, field in place).
Their targets are differences on the same cases, so this module matches the rows of two
``cases.csv`` files by method and case and reports both means and their difference:

    python -m x2ct.eval.paired runs/results            # radiograph, dicom, move, crop vs lumbar
    python -m x2ct.eval.paired runs/results --parts radiograph --metric ssim_3d --digits 3
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["PairedRow", "paired_rows", "paired_table", "read_cases"]

PARTS = ("radiograph", "dicom", "move", "crop")


class PairedRow(NamedTuple):
    """One part and method: the mean of a metric over the part's cases and over the same
    cases of the reference part."""

    part: str
    method: str
    n: int
    part_mean: float
    reference_mean: float

    @property
    def difference(self) -> float:
        """part - reference."""
        return self.part_mean - self.reference_mean


def read_cases(path: str | os.PathLike, metric: str) -> dict[tuple[str, str], float]:
    """{(method, case): value of ``metric``} from an evaluate.py ``cases.csv``; refuses a
    file without the ``method``, ``case`` or ``metric`` column, or a repeated row."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("method", "case", metric) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (columns: "
                             f"{', '.join(reader.fieldnames or [])})")
        out: dict[tuple[str, str], float] = {}
        for line, row in enumerate(reader, start=2):
            key = (row["method"], row["case"])
            if key in out:
                raise ValueError(f"{path}, line {line}: case {key[1]} of {key[0]} repeated")
            value = row[metric]
            out[key] = float(value) if value not in ("", None) else math.nan
    return out


def paired_rows(out_dir: str | os.PathLike, parts: Sequence[str] = PARTS,
                reference: str = "lumbar", metric: str = "psnr_3d") -> list[PairedRow]:
    """One row per part and method: the mean of ``metric`` over the part's cases and over
    the same (method, case) rows of the reference part. A part whose folder is absent is
    skipped; a part with a case the reference lacks is refused (the pair would not be one)."""
    out_dir = Path(out_dir)
    ref_file = out_dir / reference / "cases.csv"
    if not ref_file.is_file():
        raise FileNotFoundError(f"{ref_file}: the reference part's cases (run its part first)")
    ref = read_cases(ref_file, metric)
    rows = []
    for part in parts:
        part_file = out_dir / part / "cases.csv"
        if not part_file.is_file():
            continue
        values = read_cases(part_file, metric)
        lacking = sorted(k[1] for k in values if k not in ref)
        if lacking:
            raise ValueError(f"{part_file}: case(s) {', '.join(lacking[:5])} not in {ref_file}")
        for method in dict.fromkeys(k[0] for k in values):
            keys = [k for k in values if k[0] == method and not math.isnan(values[k])
                    and not math.isnan(ref[k])]
            if not keys:
                continue
            rows.append(PairedRow(part, method, len(keys),
                                  sum(values[k] for k in keys) / len(keys),
                                  sum(ref[k] for k in keys) / len(keys)))
    return rows


def paired_table(rows: Sequence[PairedRow], reference: str = "lumbar",
                 metric: str = "psnr_3d", digits: int = 2) -> str:
    """A markdown table of :func:`paired_rows`, values to ``digits`` decimals."""
    lines = [f"| part | method | n | {metric} | {metric} in {reference}, same cases | difference |",
             "|---|---|---:|---:|---:|---:|"]
    d = digits
    lines += [f"| {r.part} | {r.method} | {r.n} | {r.part_mean:.{d}f} "
              f"| {r.reference_mean:.{d}f} | {r.difference:+.{d}f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m x2ct.eval.paired", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="eval/results.sh's output folder")
    p.add_argument("--parts", nargs="+", default=list(PARTS))
    p.add_argument("--reference", default="lumbar")
    p.add_argument("--metric", default="psnr_3d", help="a column of cases.csv")
    p.add_argument("--digits", type=int, default=2, help="decimals in the table")
    args = p.parse_args(argv)
    try:
        rows = paired_rows(args.out, args.parts, args.reference, args.metric)
    except (OSError, ValueError) as e:
        p.exit(2, f"error: {e}\n")
    print(paired_table(rows, args.reference, args.metric, args.digits))


if __name__ == "__main__":
    main()
