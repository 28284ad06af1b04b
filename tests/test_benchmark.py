"""The benchmark scripts run end to end at tiny sizes (timings are printed, never asserted)."""

from __future__ import annotations

import json
import math

import pytest
from latent_helpers import tiny_reconstructor

from x2ct.cli import InputError
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


# DiffDRR 0.6 needs torchvision (whose PyPI wheel pins another, CUDA, torch), pyvista[all]
# (VTK, Jupyter, trame) and timm: it is not in the test extra, and its check runs only
# where it is installed. nanodrr installs over the pinned CPU torch and is in the extra.
PEERS = {
    "nanodrr torch": "nanodrr",
    "diffdrr trilinear": "diffdrr",
}


@pytest.mark.parametrize("method", sorted(PEERS))
def test_projector_benchmark_peers_render_the_same_drr(method, tmp_path):
    """Each peer renders the benchmark's volume through the same rays: its DRR is within 1%
    of x2ct's torch path (about 1e-3 at this size on a CPU: x2ct marches 0.5-voxel steps
    of each clipped ray, the peers a fixed count per ray), and not equal to it (a peer row
    that were x2ct's own image would read 0)."""
    pytest.importorskip(PEERS[method], reason=f"{PEERS[method]} is not installed")
    out = tmp_path / "projector.json"
    assert benchmark.main(["projector", "--size", "16", "--detector", "8", "--reps", "1",
                           "--json", str(out)]) == 0
    cases = {c["method"]: c for c in json.loads(out.read_text())["cases"]}
    assert method in cases, sorted(cases)
    assert 0.0 < cases[method]["max_rel_diff"] < 1e-2, cases[method]
    assert cases[method]["samples"] > 0 and math.isfinite(cases[method]["forward_ms"])


# --------------------------------------------------------------------------- reconstruct, train


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_reconstructor(seed=0).save_pretrained(tmp_path_factory.mktemp("m") / "model")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_reconstruct_benchmark_times_every_sampler_step_and_batch(tiny_model, tmp_path, capsys):
    out, plot = tmp_path / "reconstruct.json", tmp_path / "reconstruct.png"
    assert benchmark.main(["reconstruct", "--model", str(tiny_model), "--samplers", "ddim",
                           "rflow", "--steps", "1", "--batch-sizes", "1", "2",
                           "--json", str(out), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "| sampler | steps | batch | s / volume | encode s | sample s | decode s |" in table
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "reconstruct" and payload["ct_shape"] == [16, 16, 16]
    for key in ("machine", "device", "torch", "memory", "denoiser_parameters"):
        assert key in payload
    combos = {(c["sampler"], c["steps"], c["batch"]) for c in payload["cases"]}
    assert combos == {(s, 1, b) for s in ("ddim", "rflow") for b in (1, 2)}
    for c in payload["cases"]:
        for key in ("encode_s", "sample_s", "decode_s", "total_s", "peak_mb"):
            assert _finite(c[key]) and c[key] >= 0, key
        assert c["total_s"] > 0 and c["sample_s"] > 0
    assert plot.stat().st_size > 0


def test_reconstruct_benchmark_of_a_random_named_pipeline(tmp_path):
    out = tmp_path / "r.json"
    assert benchmark.main(["reconstruct", "--config", "tiny", "--ae-config", "kl-tiny",
                           "--shape", "16", "--samplers", "ddim", "--steps", "1", "2",
                           "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["model"] is None and payload["config"] == "tiny"
    assert payload["latent_size"] == [4, 4, 4]
    assert [c["steps"] for c in payload["cases"]] == [1, 2]
    with pytest.raises(InputError, match="config.json"):
        benchmark.main(["reconstruct", "--model", str(tmp_path)])


def test_train_benchmark_with_and_without_projection_loss(tiny_model, tmp_path, capsys):
    out, plot = tmp_path / "train.json", tmp_path / "train.png"
    assert benchmark.main(["train", "--model", str(tiny_model), "--batch-sizes", "2",
                           "--reps", "1", "--json", str(out), "--plot", str(plot)]) == 0
    assert "| stage | projection loss | batch | samples / s |" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "train"
    combos = {(c["stage"], c["projection"], c["batch"]) for c in payload["cases"]}
    # on a CPU the projection loss runs on the torch projector only
    assert combos == {(s, p, 2) for s in ("autoencoder", "latent") for p in ("off", "torch")}
    for c in payload["cases"]:
        assert _finite(c["samples_per_s"]) and c["samples_per_s"] > 0
        assert c["samples_per_s"] == pytest.approx(c["batch"] / c["step_s"])
        assert _finite(c["peak_mb"])
    assert plot.stat().st_size > 0


def test_projector_benchmark_over_sizes_with_a_plot(tmp_path):
    out, plot = tmp_path / "p.json", tmp_path / "p.png"
    assert benchmark.main(["projector", "--size", "8", "12", "--detector", "8", "--reps", "1",
                           "--no-peers", "--json", str(out), "--plot", str(plot)]) == 0
    payload = json.loads(out.read_text())
    assert payload["size"] == [8, 12]
    assert sorted(c["size"] for c in payload["cases"]) == [8, 12]
    assert plot.stat().st_size > 0
