"""eval/reconstruct.py with projection-consistent sampling and pose refinement: the
options reach the pipeline and are recorded in the outputs."""

import json

import pytest
from latent_helpers import one_thread, tiny_reconstructor  # noqa: F401

from x2ct.data import save_ct, spine_phantom
from x2ct.eval.reconstruct import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_reconstructor().save_pretrained(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    ph = spine_phantom((16, 16, 16), (8.0, 8.0, 8.0), seed=3)
    return save_ct(tmp_path_factory.mktemp("ct") / "ct.nii.gz", ph.hu, spacing=ph.spacing)


def test_guidance_and_pose_options_are_recorded(tmp_path, model_dir, ct_path, capsys):
    out = tmp_path / "out"
    base = ["--model", str(model_dir), "--ct", str(ct_path), "--steps", "3"]
    result = main(
        [
            *base,
            "--out",
            str(out),
            "--pc-strength",
            "0.2",
            "--pc-steps",
            "2",
            "--pc-inner",
            "2",
            "--pose-rounds",
            "1",
            "--pose-iters",
            "3",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "ct.nii.gz",
        "metrics.json",
        "reconstruction.json",
        "reconstruction.png",
    ]
    record = json.loads((out / "reconstruction.json").read_text())
    assert record["projection_guidance"] == {"strength": 0.2, "steps": 2, "inner": 2}
    assert record["pose_refinement"] == {"rounds": 1, "iters": 3, "lr": 0.3}
    errors = record["projection_guidance_errors"]
    assert errors["final"][0] == min(errors["before"][0], errors["after"][0])
    assert len(record["pose"]["views"]) == 2 and len(record["pose"]["views"][0]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["projection_guidance"]["strength"] == 0.2
    assert metrics["projection_error"] == pytest.approx(result["projection_error"])
    assert "projection-consistent sampling" in capsys.readouterr().out
    # without the options nothing extra is written, and the record says they were off
    plain = main([*base, "--out", str(tmp_path / "plain")])
    assert plain["options"]["projection_guidance"] is None
    assert not (tmp_path / "plain" / "reconstruction.json").exists()


def test_bad_option_values_are_refused(tmp_path, model_dir, ct_path):
    base = ["--model", str(model_dir), "--ct", str(ct_path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        main([*base, "--pc-strength", "0"])
    with pytest.raises(SystemExit):
        main([*base, "--pose-rounds", "-1"])
    with pytest.raises(SystemExit):
        main([*base, "--no-pc", "--pc-strength", "0.1"])
    assert not (tmp_path / "o").exists()


def test_no_pc_turns_off_a_models_default_guidance(tmp_path, model_dir, ct_path):
    import json
    import shutil

    guided = shutil.copytree(model_dir, tmp_path / "guided")
    config = json.loads((guided / "config.json").read_text())
    config["projection_guidance"] = {"strength": 0.2, "steps": 1, "inner": 1}
    (guided / "config.json").write_text(json.dumps(config))
    base = ["--model", str(guided), "--ct", str(ct_path), "--steps", "2"]
    default = main([*base, "--out", str(tmp_path / "a")])
    assert default["options"]["projection_guidance"] == config["projection_guidance"]
    assert (tmp_path / "a" / "reconstruction.json").is_file()
    off = main([*base, "--no-pc", "--out", str(tmp_path / "b")])
    assert off["options"]["projection_guidance"] is None
