"""python -m x2ct.autoencoder: encode, decode, roundtrip, evaluate, and its errors."""

import json

import numpy as np
import pytest
import torch

from x2ct.autoencoder import AutoencoderConfig, CTAutoencoder
from x2ct.autoencoder.__main__ import main, resample_to_spacing

data = pytest.importorskip("x2ct.data")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = AutoencoderConfig(
        kind="kl",
        channels=(4, 8, 8),
        latent_channels=3,
        norm_num_groups=4,
        attention_levels=(False, False, False),
        spacing=(2.0, 2.0, 2.0),
    )
    return CTAutoencoder(config).save_pretrained(tmp_path_factory.mktemp("m") / "ae")


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    """A 1 mm CT of 30 x 34 x 28 voxels, so the model resamples it to 2 mm (15 x 17 x 14)."""
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, size=(30, 34, 28)).astype(np.float32)
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    data.save_ct(path, hu, spacing=(1.0, 1.0, 1.0))
    return path


def test_resample_to_spacing_keeps_field_of_view():
    hu = np.zeros((30, 34, 28), np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-14.5, -16.5, -13.5]  # centred on the origin
    out, spacing, new_affine = resample_to_spacing(hu, (1, 1, 1), affine, (2, 2, 2))
    assert out.shape == (15, 17, 14) and spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(np.diag(new_affine)[:3], [2, 2, 2])
    # still centred: centre voxel of the new grid maps to the origin
    centre = new_affine @ np.array([(15 - 1) / 2, (17 - 1) / 2, (14 - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)
    same, _, aff2 = resample_to_spacing(hu, (2, 2, 2), np.diag([2.0, 2, 2, 1]), (2, 2, 2))
    assert same.shape == hu.shape and np.array_equal(aff2, np.diag([2.0, 2, 2, 1]))


def test_encode_decode_roundtrip_files(tmp_path, model_dir, ct_path, capsys):
    latent = tmp_path / "z.safetensors"
    assert main(["encode", str(ct_path), str(latent), "--model", str(model_dir)]) == 0
    from safetensors import safe_open

    with safe_open(str(latent), framework="pt") as f:
        z = f.get_tensor("latent")
        meta = f.metadata()
    assert z.shape == (1, 3, 4, 5, 4)  # ceil((15, 17, 14) / 4)
    assert "affine" in meta and "shape" in meta

    out = tmp_path / "dec.nii.gz"
    assert main(["decode", str(latent), str(out), "--model", str(model_dir)]) == 0
    ct = data.load_ct(out)
    src = data.load_ct(ct_path)
    assert ct.hu.shape == (15, 17, 14)
    np.testing.assert_allclose(ct.spacing, (2.0, 2.0, 2.0), atol=1e-5)
    # the decoded volume covers the same field of view as the input
    c_in = src.affine @ np.array([*(np.array(src.hu.shape) - 1) / 2, 1.0])
    c_out = ct.affine @ np.array([*(np.array(ct.hu.shape) - 1) / 2, 1.0])
    np.testing.assert_allclose(c_out, c_in, atol=1e-3)

    recon = tmp_path / "rec.nii.gz"
    capsys.readouterr()
    assert main(["roundtrip", str(ct_path), "--model", str(model_dir), "--out", str(recon)]) == 0
    printed = capsys.readouterr().out
    rec = data.load_ct(recon)
    assert rec.hu.shape == (15, 17, 14)
    # the printed scores are ct_metrics of the written round trip against the input at the
    # model's spacing (as printed: 2, 4 and 1 decimals)
    from x2ct.eval.metrics import ct_metrics

    src_hu, _, _ = resample_to_spacing(
        np.asarray(src.hu, np.float32), src.spacing, np.asarray(src.affine), (2.0, 2.0, 2.0)
    )
    m = ct_metrics(rec.hu, src_hu, CTAutoencoder.from_pretrained(model_dir).config.hu_window)
    assert f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  MAE {m['mae_hu']:.1f} HU" in printed
    # decode(encode) through files equals roundtrip in memory
    np.testing.assert_allclose(rec.hu, ct.hu, atol=1e-2)


def test_evaluate_prints_metrics(model_dir, capsys, tmp_path):
    """The numbers are ct_metrics of the model's round trip of each phantom, recomputed
    here, and their mean."""
    from x2ct.data.phantom import spine_phantom
    from x2ct.eval.metrics import ct_metrics

    out = tmp_path / "m.json"
    code = main(
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--phantoms",
            "2",
            "--seed",
            "90000",
            "--shape",
            "24",
            "24",
            "24",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "seed 90000" in printed and "seed 90001" in printed and "mean over 2" in printed
    numbers = json.loads(out.read_text())
    assert set(numbers["mean"]) == {"psnr", "ssim", "mae_hu"}
    assert [r["seed"] for r in numbers["per_seed"]] == [90000, 90001]
    model = CTAutoencoder.from_pretrained(model_dir)
    for row in numbers["per_seed"]:
        hu = torch.from_numpy(spine_phantom((24, 24, 24), (2.0, 2.0, 2.0), seed=row["seed"]).hu)
        with torch.no_grad():
            rec = model.output_to_hu(model.reconstruct(model.hu_to_input(hu)[None, None]))
        expected = ct_metrics(rec[0, 0], hu, model.config.hu_window)
        for k, v in expected.items():
            assert row[k] == pytest.approx(v, rel=1e-5), (row["seed"], k)
    for k, v in numbers["mean"].items():
        assert v == pytest.approx(np.mean([r[k] for r in numbers["per_seed"]]), rel=1e-12)
    assert f"PSNR {numbers['mean']['psnr']:.2f}" in printed


def test_errors_before_compute(tmp_path, model_dir, ct_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(
            ["encode", str(tmp_path / "missing.nii.gz"), "z.safetensors", "--model", str(model_dir)]
        )
    assert e.value.code == 2
    assert "input file not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["roundtrip", str(ct_path), "--model", str(tmp_path / "empty")])
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["decode", str(tmp_path / "nope.safetensors"), "x.nii.gz", "--model", str(model_dir)])
    assert "not found" in capsys.readouterr().err
