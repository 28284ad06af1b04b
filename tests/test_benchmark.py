"""The benchmark scripts run end to end at tiny sizes (timings are printed, never asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch
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
    assert ("| sampler | steps | batch | precision | s / volume | encode s | sample s | "
            "decode s |") in table
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
    assert "| stage | volume | projection loss | precision | batch | samples / s |" in \
        capsys.readouterr().out
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


# --------------------------------------------------------------------------- the 1 mm base recipe


def test_train_benchmark_of_the_base_recipe_writes_its_rows(tmp_path, capsys):
    """The base networks (kl-base-1mm, base) on a small field: autoencoder rows on crops,
    latent rows on the field, two batch sizes and the memory each further sample adds."""
    out = tmp_path / "train.json"
    assert benchmark.main(["train", "--config", "base", "--ae-config", "kl-base-1mm",
                           "--shape", "32", "--crop", "16", "--batch-sizes", "1", "2",
                           "--projections", "off", "--reps", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "Peak memory per further sample of a batch" in table
    payload = json.loads(out.read_text())
    assert payload["config"] == "base" and payload["ae_config"] == "kl-base-1mm"
    assert payload["spacing"] == [1.0, 1.0, 1.0] and payload["latent_size"] == [8, 8, 8]
    assert payload["crop"] == 16 and payload["precision"] == "fp32"
    rows = {(c["stage"], c["batch"]): c for c in payload["cases"]}
    assert set(rows) == {(s, b) for s in ("autoencoder", "latent") for b in (1, 2)}
    for (stage, _), c in rows.items():
        assert c["volume"] == ([16] * 3 if stage == "autoencoder" else [32] * 3)
        assert c["projection"] == "off" and c["processes"] == 1
        assert _finite(c["step_s"]) and c["step_s"] > 0 and _finite(c["peak_mb"])


def test_reconstruct_benchmark_of_the_base_recipe(tmp_path):
    out = tmp_path / "r.json"
    assert benchmark.main(["reconstruct", "--config", "base", "--ae-config", "kl-base-1mm",
                           "--shape", "32", "--detector", "48", "--samplers", "ddim",
                           "--steps", "1", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["xray_shape"] == [48, 48] and payload["ct_shape"] == [32, 32, 32]
    (case,) = payload["cases"]
    assert case["precision"] == "fp32" and case["total_s"] > 0


def test_reconstruct_benchmark_under_bf16_autocast(tiny_model, tmp_path):
    """--precision bf16 runs the call under autocast (bf16 3-D convolutions are slow on a
    CPU: a tiny model here; the GPU check times the base one)."""
    out = tmp_path / "r.json"
    assert benchmark.main(["reconstruct", "--model", str(tiny_model), "--samplers", "ddim",
                           "--steps", "1", "--precision", "fp32", "bf16",
                           "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["precision"] == ["fp32", "bf16"]
    assert [c["precision"] for c in payload["cases"]] == ["fp32", "bf16"]
    assert all(c["total_s"] > 0 for c in payload["cases"])


def test_autocast_precisions():
    from x2ct.eval.memory import autocast

    a = torch.ones(2, 2)
    with autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "int8")


def test_train_benchmark_through_accelerate(tiny_model, tmp_path, fresh_accelerator_state):
    """--accelerate steps as the training scripts do (prepared model, its backward), one
    process here; the JSON says so."""
    out = tmp_path / "t.json"
    assert benchmark.main(["train", "--model", str(tiny_model), "--stages", "latent",
                           "--projections", "off", "torch", "--reps", "1", "--accelerate",
                           "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["accelerate"] is True
    assert [(c["projection"], c["processes"]) for c in payload["cases"]] == [
        ("off", 1), ("torch", 1)]
    with pytest.raises(InputError, match="crop"):
        benchmark.main(["train", "--model", str(tiny_model), "--crop", "6"])


def test_train_benchmark_lets_each_case_go_from_the_accelerator(fresh_accelerator_state):
    """Accelerate keeps every prepared model and optimiser: without releasing them, each
    case's peak would hold all earlier cases' networks."""
    from accelerate import Accelerator

    from x2ct.eval.train_benchmark import run_train_benchmark

    accelerator = Accelerator(cpu=True)
    held, prepare = [], accelerator.prepare

    def spy(*objects):
        out = prepare(*objects)
        held.append(len(accelerator._models))
        return out

    accelerator.prepare = spy
    cases = run_train_benchmark(tiny_reconstructor(seed=0), batch_sizes=(1, 2), stages=["latent"],
                                backends=["off"], reps=1, accelerator=accelerator)
    assert [c.batch for c in cases] == [1, 2]
    assert held == [1, 1]


def test_train_benchmark_refuses_a_precision_its_accelerator_does_not_run(
    fresh_accelerator_state,
):
    """Through an Accelerator the step runs the accelerator's autocast: a table row labelled
    bf16 must not have been timed in fp32."""
    from accelerate import Accelerator

    from x2ct.eval.train_benchmark import run_train_benchmark

    accelerator = Accelerator(cpu=True)  # mixed precision "no": fp32
    prepared = []
    accelerator.prepare = lambda *objects: prepared.append(objects) or objects
    with pytest.raises(ValueError, match="precision 'bf16', but the accelerator runs .*'no'"):
        run_train_benchmark(tiny_reconstructor(seed=0), stages=["latent"], backends=["off"],
                            reps=1, precision="bf16", accelerator=accelerator)
    assert prepared == []  # refused before any network was built


def test_memory_per_sample_is_the_slope_over_batch_sizes():
    from x2ct.eval.train_benchmark import TrainCase, memory_per_sample

    cases = [TrainCase("latent", "off", b, 1.0, 300.0 + 120.0 * b, "bf16", (8, 8, 8))
             for b in (1, 2, 4)]
    cases.append(TrainCase("autoencoder", "off", 1, 1.0, 50.0))  # one batch size: no slope
    assert memory_per_sample(cases) == {
        ("latent", "off", "bf16", (8, 8, 8)): pytest.approx(120.0)}


def test_a_falling_peak_is_not_reported_as_memory_per_sample():
    from x2ct.eval.train_benchmark import TrainCase, memory_per_sample, per_sample_text

    # the CPU's resident-set growth: the first batch grew the heap, later ones reused it
    cases = [TrainCase("latent", "off", b, 1.0, mb) for b, mb in ((1, 90.0), (2, 20.0))]
    (slope,) = memory_per_sample(cases).values()
    assert slope < 0
    assert "not measurable" in per_sample_text(slope)
    assert per_sample_text(120.4) == "120 MB"
