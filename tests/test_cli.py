"""The ``x2ct`` command (x2ct/command.py) and models by name (x2ct/models.py)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from x2ct import command as cli  # the `x2ct` console script
from x2ct.models import (
    MODELS_ENV,
    list_models,
    model_kind,
    model_path,
    model_spec,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]


def _fake_model(folder: Path, pipeline: bool) -> Path:
    for d in [folder, folder / "autoencoder"] if pipeline else [folder]:
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    return folder


def test_shipped_models_by_name_and_kind():
    models = list_models()
    assert models["ldm-tiny"] == REPO / "models" / "ldm-tiny"
    assert model_kind(models["ldm-tiny"]) == "pipeline"
    assert model_kind(models["ae-kl-tiny"]) == "autoencoder"
    assert resolve_model("ldm-tiny", "pipeline") == REPO / "models" / "ldm-tiny"
    sub = resolve_model("ldm-tiny/autoencoder", "autoencoder")
    assert sub == REPO / "models" / "ldm-tiny" / "autoencoder"
    # a pipeline where an autoencoder is due
    with pytest.raises(ValueError, match="its autoencoder: .*ldm-tiny/autoencoder"):
        resolve_model("ldm-tiny", "autoencoder")
    with pytest.raises(FileNotFoundError, match="ldm-tiny") as e:
        resolve_model("ldm-tyni")
    assert MODELS_ENV in str(e.value)


def test_a_folder_wins_over_a_name_and_the_env_var_adds_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = _fake_model(tmp_path / "ldm-tiny", pipeline=True)
    assert resolve_model("ldm-tiny").resolve() == local
    assert model_path("ldm-tiny") == "ldm-tiny"  # the local folder, as given
    zoo = tmp_path / "zoo"
    _fake_model(zoo / "my-ae", pipeline=False)
    _fake_model(zoo / "ae-kl-tiny", pipeline=False)  # the env var comes first
    monkeypatch.setenv(MODELS_ENV, str(zoo))
    assert list_models()["my-ae"] == zoo / "my-ae"
    assert list_models()["ae-kl-tiny"] == zoo / "ae-kl-tiny"
    assert resolve_model("my-ae", "autoencoder") == zoo / "my-ae"
    assert model_spec("mine=my-ae") == f"mine={zoo / 'my-ae'}"
    assert model_spec("nothing-here") == "nothing-here"  # left to the caller's checks


def test_dispatcher_lists_every_job_and_forwards_help(capsys):
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    for name in [*cli.JOBS, "train", "models"]:
        assert f"\n  {name} " in usage
    for name, job in cli.JOBS.items():
        assert callable(importlib.import_module(job.module).main)
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert "usage:" in capsys.readouterr().out
    assert cli.main(["reconstrct"]) == 2
    assert "did you mean 'reconstruct'" in capsys.readouterr().err


def test_train_prints_the_accelerate_launch(capsys):
    assert cli.main(["train", "--print", "--max-minutes", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("accelerate launch ")
    assert line.endswith("--module x2ct.train.latent --max-minutes 1")
    command = cli.train_command("autoencoder", ["--run-dir", "r"], processes=2)
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert command[-3:] == ["x2ct.train.autoencoder", "--run-dir", "r"]
    assert cli.main(["train", "--processes", "zero"]) == 2


def test_python_dash_m_from_another_folder(tmp_path):
    """`python -m x2ct models` finds the shipped models by name outside the checkout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(MODELS_ENV, None)
    out = subprocess.run([sys.executable, "-m", "x2ct", "models"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "ldm-tiny " in out and "pipeline" in out and str(REPO / "models") in out


def test_help_shows_defaults_and_phantom_says_what_it_wrote(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["drr", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "detector size in pixels (square) (default: 256)" in text
    assert "--backend {auto,torch,triton} (default: auto)" in text
    cli.main(["phantom", "--n", "1", "--shape", "16", "--spacing", "8", "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("wrote 1 phantom(s) phantom_90000 ") and str(tmp_path) in last
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "phantom_90000_ct.nii.gz", "phantom_90000_seg-vert_msk.nii.gz"]
