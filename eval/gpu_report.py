"""The GPU check's one markdown table, from the parts ``eval/gpu_check.sh`` wrote.

    python eval/gpu_report.py runs/gpu_check [--mode gpu|cpu] [--gpus N] > table.md

Reads ``status.txt`` (one line per part: name, exit status or "skipped", seconds), the
parts' JSON (``eval/benchmark.py --json``) and the tests' log, and writes one table: a row
per measurement with its setting, result, peak memory, the issue's target and whether it
was met (targets are judged on a GPU only). A part that failed, timed out or was skipped
is a row saying so, with its log's name.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

__all__ = ["report"]

PARTS = ("tests", "projector", "recon_base", "train_base", "recon_tiny", "train_2gpu")
TIMEOUT = (124, 137)  # timeout(1): limit reached, killed


def _status(out: Path) -> dict[str, tuple[str, int]]:
    rows = {}
    path = out / "status.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds = (line.split() + ["", "", "0"])[:3]
        rows[name] = (rc, int(seconds) if seconds.isdigit() else 0)
    return rows


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _why(name: str, rc: str, seconds: int) -> str:
    """What became of a part that did not exit 0."""
    if rc == "skipped":
        return "skipped: the time budget was spent"
    why = "timed out" if rc.isdigit() and int(rc) in TIMEOUT else f"failed (exit {rc})"
    return f"{why} after {seconds} s, see {name}.log"


def _failed(name: str, rc: str, seconds: int) -> str:
    return f"| {name} | - | {_why(name, rc, seconds)} | - | - | - |"


def _met(ok: bool | None, judge: bool) -> str:
    if not judge or ok is None:
        return "-"
    return "yes" if ok else "**no**"


def _tests_row(out: Path, rc: str, seconds: int, judge: bool) -> str:
    log = out / "tests.log"
    text = log.read_text() if log.is_file() else ""
    summaries = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?) in [\d.]+s", text,
                           flags=re.M)
    result = "; ".join(summaries) if summaries else "no pytest summary"
    ok = rc == "0" and bool(summaries) and not re.search(r"failed|error", result)
    if rc != "0":
        result += f"; {_why('tests', rc, seconds)}"
    return (f"| tests | `-m gpu`, tests/test_kernels*.py | {result} ({seconds} s) | - | "
            f"all pass | {_met(ok, judge)} |")


def _projector_rows(p: dict, judge: bool) -> list[str]:
    cases = {(c["method"], c["dtype"]): c for c in p["cases"]}
    setting = f"2 x {p['detector']}^2 rays, {p['size']}^3, step {p['step']}"
    rows = []
    for (method, dtype), c in cases.items():
        fb = c.get("forward_backward_ms")
        rows.append(f"| projector | {method}, {dtype}, {setting} | fwd {c['forward_ms']:.2f} ms, "
                    f"fwd+bwd {fb:.2f} ms, {c['msamples_per_s']:.0f} Msamples/s, "
                    f"max rel diff {c['max_rel_diff']:.1e} | {c['peak_mb']:.0f} | - | - |")
    ours = cases.get(("x2ct triton", "float32"))
    peer = cases.get(("nanodrr triton", "float32"))
    if ours and peer:
        ratio = ours["forward_ms"] / peer["forward_ms"]
        rows.append(f"| projector target | x2ct triton / nanodrr triton forward, float32 | "
                    f"{ratio:.2f}x | - | <= 1 | {_met(ratio <= 1.0, judge)} |")
    if ours:
        ratio = ours["forward_backward_ms"] / ours["forward_ms"]
        rows.append(f"| projector target | x2ct triton (fwd+bwd) / fwd, float32 | {ratio:.2f}x | "
                    f"- | <= 3 | {_met(ratio <= 3.0, judge)} |")
    bf16 = cases.get(("x2ct triton", "bfloat16"))
    if ours and bf16:
        ratio = bf16["forward_ms"] / ours["forward_ms"]
        rows.append(f"| projector target | x2ct triton forward bf16 / fp32 | {ratio:.2f}x | - | "
                    f"<= 1 | {_met(ratio <= 1.0, judge)} |")
    return rows


def _recon_rows(name: str, r: dict, judge: bool, target: tuple[float, float] | None) -> list[str]:
    grid = "x".join(map(str, r["ct_shape"]))
    spacing = r["spacing"][0]
    rows = []
    for c in r["cases"]:
        setting = (f"{r['config']} + {r['ae_config']}, {grid} at {spacing:g} mm, "
                   f"{c['sampler']} {c['steps']}, batch {c['batch']}, {c['precision']}")
        result = (f"{c['total_s']:.3f} s / volume (encode {c['encode_s']:.3f}, sample "
                  f"{c['sample_s']:.3f}, decode {c['decode_s']:.3f})")
        goal, ok = "-", None
        if target is not None and c["steps"] == 25:
            goal = f"< {target[0]:g} s, < {target[1] / 1024:g} GB"
            ok = c["total_s"] < target[0] and c["peak_mb"] < target[1]
        rows.append(f"| {name} | {setting} | {result} | {c['peak_mb']:.0f} | {goal} | "
                    f"{_met(ok, judge)} |")
    return rows


def _train_rows(name: str, t: dict, judge: bool) -> list[str]:
    from x2ct.eval.train_benchmark import (
        TrainCase,
        memory_per_sample,
        per_sample_text,
        volume_text,
    )

    rows, cases = [], [TrainCase.from_row(c) for c in t["cases"]]
    for c in cases:
        batch = f"{c.batch} x {c.processes} processes" if c.processes > 1 else f"{c.batch}"
        goal, ok = "-", None
        if c.stage == "latent" and c.batch == 2 and c.volume == (128, 128, 128):
            goal, ok = "< 40 GB at batch 2", c.peak_mb < 40 * 1024
        rows.append(f"| {name} | {t['config']}, {c.stage} on {volume_text(c.volume)}, "
                    f"projection {c.projection}, {c.precision}, batch {batch} | "
                    f"{c.samples_per_s:.3g} samples/s ({c.step_s:.3f} s / step) | "
                    f"{c.peak_mb:.0f} | {goal} | {_met(ok, judge)} |")
    for (stage, proj, prec, volume), mb in memory_per_sample(cases).items():
        rows.append(f"| {name} | {stage} on {volume_text(volume)}, projection {proj}, {prec}: "
                    f"memory per further sample | {per_sample_text(mb)} | - | - | - |")
    return rows


def report(out: Path, mode: str = "gpu", gpus: int = 1) -> str:
    """The markdown table of the check in ``out``."""
    out = Path(out)
    status = _status(out)
    judge = mode == "gpu"
    data = {p: _load(out, p) for p in PARTS[1:]}  # read once
    machine = next((d["machine"] for d in data.values() if d), "unknown")
    torch_version = next((d["torch"] for d in data.values() if d), "?")
    lines = [f"GPU check ({mode}) on {machine}, {gpus} GPU(s) listed, torch {torch_version}; "
             "peak MB: torch.cuda.max_memory_allocated on a GPU (weights included), "
             "resident-set growth on a CPU" + ("" if judge else "; targets not judged on a CPU"),
             "", "| part | setting | result | peak MB | target | met |",
             "|---|---|---|---:|---|---|"]
    for name in PARTS:
        if name not in status:
            continue
        rc, seconds = status[name]
        if name == "tests":  # its row says "no" and where the log is when they failed
            lines.append(_tests_row(out, rc, seconds, judge))
            continue
        part = data.get(name)
        if rc != "0" or part is None:
            lines.append(_failed(name, rc, seconds))
            continue
        if name == "projector":
            lines += _projector_rows(part, judge)
        elif name.startswith("recon"):
            lines += _recon_rows(name, part, judge, (2.0, 4096.0) if name == "recon_base" else None)
        else:
            lines += _train_rows(name, part, judge)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the check's folder (eval/gpu_check.sh's OUT)")
    p.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--gpus", type=int, default=1)
    args = p.parse_args(argv)
    print(report(args.out, args.mode, args.gpus), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
