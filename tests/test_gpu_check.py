"""eval/gpu_check.sh: its CPU rehearsal runs every part (so the GPU run cannot fail on a
flag or a path), and its report judges the issue's targets from the parts' numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from x2ct.eval.gpu_report import report

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils timeout")
def test_cpu_rehearsal_runs_every_part_into_one_table(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out),
           "OMP_NUM_THREADS": "1", "GPU_CHECK_BUDGET": "1500"}
    done = subprocess.run(["bash", "eval/gpu_check.sh", "--cpu"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    status = dict(line.split()[:2] for line in (out / "status.txt").read_text().splitlines())
    assert status == {p: "0" for p in ("tests", "projector", "recon_base", "train_base",
                                       "recon_tiny", "train_2gpu")}, status
    table = (out / "table.md").read_text()
    assert table in done.stdout  # printed too
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| part | setting | result | peak MB | target | met |")
    assert not any("failed" in r or "timed out" in r for r in rows), table
    for part in ("tests", "projector", "recon_base", "train_base", "recon_tiny", "train_2gpu"):
        assert any(r.startswith(f"| {part} |") for r in rows), part
    base = json.loads((out / "train_base.json").read_text())
    assert base["config"] == "base" and base["ae_config"] == "kl-base-1mm"
    assert base["accelerate"] is True and base["crop"] == 16
    assert {(c["stage"], c["batch"]) for c in base["cases"]} == {
        ("autoencoder", 1), ("latent", 1)}
    recon = json.loads((out / "recon_base.json").read_text())
    assert recon["spacing"] == [1.0, 1.0, 1.0] and recon["latent_size"] == [8, 8, 8]


def test_the_script_refuses_unknown_arguments():
    done = subprocess.run(["bash", "eval/gpu_check.sh", "--fast"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr


# --------------------------------------------------------------------------- the report


def _write(out: Path, name: str, payload: dict) -> None:
    (out / f"{name}.json").write_text(json.dumps(payload))


def _projector(fwd: dict, fb: dict) -> dict:
    cases = [{"method": m, "dtype": d, "forward_ms": fwd[m, d], "forward_backward_ms": fb[m, d],
              "msamples_per_s": 1.0, "peak_mb": 10.0, "max_rel_diff": 1e-4} for m, d in fwd]
    return {"machine": "NVIDIA H200", "torch": "2.x", "size": 256, "detector": 256,
            "step": 0.5, "cases": cases}


def _recon(seconds: float, mb: float) -> dict:
    return {"machine": "NVIDIA H200", "torch": "2.x", "config": "base",
            "ae_config": "kl-base-1mm", "ct_shape": [128] * 3, "spacing": [1.0] * 3,
            "cases": [{"sampler": "ddim", "steps": 25, "batch": 1, "precision": "fp32",
                       "total_s": seconds, "encode_s": 0.0, "sample_s": seconds,
                       "decode_s": 0.0, "peak_mb": mb}]}


def _train(peaks: dict) -> dict:
    return {"machine": "NVIDIA H200", "torch": "2.x", "config": "base",
            "cases": [{"stage": "latent", "projection": "triton", "batch": b, "step_s": 0.5,
                       "peak_mb": mb, "precision": "bf16", "volume": [128] * 3,
                       "processes": 1} for b, mb in peaks.items()]}


@pytest.mark.parametrize("good", [True, False])
def test_report_judges_the_targets(tmp_path, good):
    """Numbers on each side of every target give "yes" or "**no**" in its row."""
    x = 1.0 if good else 2.0  # how far from the targets
    fwd = {("x2ct triton", "float32"): 1.0 * x, ("nanodrr triton", "float32"): 1.5,
           ("x2ct triton", "bfloat16"): 0.9 * x ** 2}
    fb = {k: (2.5 if good else 7.0) * fwd[("x2ct triton", "float32")] for k in fwd}
    _write(tmp_path, "projector", _projector(fwd, fb))
    _write(tmp_path, "recon_base", _recon(1.5 if good else 2.5, 3000.0))
    _write(tmp_path, "train_base", _train({1: 10000.0, 2: 30000.0 if good else 45000.0,
                                           4: 70000.0}))
    (tmp_path / "tests.log").write_text("..\n3 passed, 1 skipped in 12.3s\n" if good else
                                        "F.\n1 failed, 2 passed in 10.0s\n")
    (tmp_path / "status.txt").write_text(
        f"tests {0 if good else 1} 12\nprojector 0 30\nrecon_base 0 20\ntrain_base 0 60\n"
        "recon_tiny 124 40\n")
    table = report(tmp_path, "gpu", 1)
    want = "yes" if good else "**no**"
    targets = [r for r in table.splitlines() if r.startswith("| ") and ("<" in r.split("|")[5])]
    assert len(targets) == 5, table  # 3 projector, reconstruction, training at batch 2
    assert all(r.rstrip().endswith(f"| {want} |") for r in targets), table
    tests_rows = [r for r in table.splitlines() if r.startswith("| tests |")]
    assert len(tests_rows) == 1  # failed tests: one row, naming the log
    assert tests_rows[0].rstrip().endswith(f"| {'yes' if good else '**no**'} |")
    assert ("failed (exit 1) after 12 s, see tests.log" in tests_rows[0]) == (not good)
    assert "recon_tiny | - | timed out after 40 s" in table  # a part that ran out of time
    assert "NVIDIA H200" in table.splitlines()[0]
    if good:  # peaks 10, 30, 70 GB at batch 1, 2, 4: each further sample adds 20 GB
        slope = next(r for r in table.splitlines() if "memory per further sample" in r)
        assert "| 20000 MB |" in slope, slope


def test_report_on_a_cpu_does_not_judge(tmp_path):
    _write(tmp_path, "recon_base", _recon(100.0, 9000.0))
    (tmp_path / "status.txt").write_text("recon_base 0 200\nprojector skipped 0\n")
    table = report(tmp_path, "cpu", 0)
    row = next(r for r in table.splitlines() if r.startswith("| recon_base |"))
    assert row.rstrip().endswith("| - |") and "targets not judged" in table
    assert "| projector | - | skipped: the time budget was spent |" in table
