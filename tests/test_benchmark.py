"""The benchmark scripts run end to end at tiny sizes (timings are printed, never asserted)."""

from __future__ import annotations

import json
import math

from x2ct.eval import benchmark


def test_projector_benchmark_writes_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "projector.json"
    assert benchmark.main(["projector", "--size", "16", "--detector", "8", "--reps", "1",
                           "--no-peers", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| x2ct torch | cpu | float32 |" in table
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "projector" and payload["size"] == 16
    (case,) = [c for c in payload["cases"] if c["method"] == "x2ct torch"]
    for key in ("forward_ms", "forward_backward_ms", "msamples_per_s", "peak_mb"):
        assert math.isfinite(case[key]) and case[key] >= 0
    assert case["samples"] > 0
    assert case["max_rel_diff"] == 0.0  # the torch path is its own reference
