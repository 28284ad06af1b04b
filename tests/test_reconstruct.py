"""eval/reconstruct.py end to end on a tiny random pipeline: from a CT, from two PNGs, and
the errors raised before any compute. (Phantom evaluation with baselines is eval/evaluate.py,
tests/test_evaluate.py; timing is eval/benchmark.py reconstruct, tests/test_benchmark.py.)"""

import json

import numpy as np
import pytest
import torch
from latent_helpers import CT_SHAPE, SPACING, one_thread, tiny_reconstructor  # noqa: F401

from x2ct.cli import InputError
from x2ct.data import load_ct, save_ct, save_xray_png, spine_phantom
from x2ct.eval.reconstruct import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_reconstructor().save_pretrained(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def rank_model_dir(tmp_path_factory):
    """A model that reads radiographs (rank-normalised inputs) and averages two samples by
    default (its config's num_samples)."""
    model = tiny_reconstructor(xray_input="rank", num_samples=2)
    return model.save_pretrained(tmp_path_factory.mktemp("rank") / "model")


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    """A phantom CT at another spacing and size than the model's (resampled on input)."""
    ph = spine_phantom((20, 20, 24), (6.0, 6.0, 6.0), seed=7)
    return save_ct(tmp_path_factory.mktemp("ct") / "case_ct.nii.gz", ph.hu, spacing=ph.spacing)


def test_from_ct_writes_volume_uncertainty_figure_and_scores(tmp_path, model_dir, ct_path, capsys):
    out = tmp_path / "out"
    result = main(
        [
            "--model",
            str(model_dir),
            "--ct",
            str(ct_path),
            "--out",
            str(out),
            "--steps",
            "2",
            "--num-samples",
            "2",
            "--seed",
            "1",
            "--sampler",
            "ddpm",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "ct.nii.gz",
        "metrics.json",
        "reconstruction.png",
        "std.nii.gz",
    ]
    ct = load_ct(out / "ct.nii.gz")
    assert ct.hu.shape == CT_SHAPE and ct.spacing == pytest.approx(SPACING)
    assert float(load_ct(out / "std.nii.gz").hu.max()) > 0
    saved = json.loads((out / "metrics.json").read_text())
    for k in ("psnr", "ssim", "mae_hu", "projection_error"):
        assert np.isfinite(saved[k]) and saved[k] == pytest.approx(result[k])
    assert "PSNR" in capsys.readouterr().out
    # the volume and its std are the mean and spread of the two ddpm samples the library
    # draws for the CT's X-rays with that seed
    from x2ct.diffusion import Reconstructor
    from x2ct.eval.reconstruct import ct_inputs, parse_args

    recon = Reconstructor.from_pretrained(model_dir)
    args = parse_args(["--model", str(model_dir), "--ct", str(ct_path), "--out", str(out)])
    _, gt, xrays, _ = ct_inputs(ct_path, recon.config.to_dict(),
                                recon.autoencoder.config.to_dict(), args)
    assert gt.shape == (1, 1, *CT_SHAPE)
    lib = recon(xrays, sampler="ddpm", steps=2, num_samples=2,
                generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(ct.hu, lib.hu[0, 0].numpy(), atol=1e-2)
    np.testing.assert_allclose(load_ct(out / "std.nii.gz").hu, lib.std[0, 0].numpy(), atol=1e-2)


def test_from_two_pngs_by_their_place_and_pixel_spacing(tmp_path, rank_model_dir, capsys):
    """Plain PNGs declare no view and no pixel size: the view comes from the flag each was
    given under (said), the pixel size must be given (refused without, naming the field)."""
    views = torch.rand(2, 20, 20, generator=torch.Generator().manual_seed(0)) * 0.4
    ap = save_xray_png(tmp_path / "ap.png", views[0])
    lat = save_xray_png(tmp_path / "lateral.png", views[1])
    out = tmp_path / "out"
    args = ["--model", str(rank_model_dir), "--ap", str(ap), "--lateral", str(lat), "--out",
            str(out), "--steps", "2", "--sampler", "rflow"]
    with pytest.raises(InputError, match="ap.png: no pixel spacing.*--pixel-spacing"):
        main(args)
    assert not out.exists()
    main(args + ["--pixel-spacing", "4.0", "--allow-geometry-mismatch"])
    printed = capsys.readouterr().out
    assert "ap.png: no view angle in the file; taken as 0 degrees" in printed
    assert "lateral.png: no view angle in the file; taken as 90 degrees" in printed
    assert "2 samples" in printed  # the model's default, with its uncertainty map
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "reconstruction.png",
                                                     "std.nii.gz"]
    assert load_ct(out / "ct.nii.gz").hu.shape == CT_SHAPE


def test_declared_geometry_must_match(tmp_path, model_dir):
    from x2ct.diffusion import Reconstructor

    geometry = Reconstructor.from_pretrained(model_dir).geometry.to_dict()
    rng = np.random.default_rng(0)
    ap = save_xray_png(tmp_path / "ap.png", rng.uniform(0.1, 0.3, (16, 16)))
    lat = save_xray_png(tmp_path / "lateral.png", rng.uniform(0.1, 0.3, (16, 16)))
    other = {**geometry, "sdd": geometry["sdd"] + 100.0}
    (tmp_path / "geometry.json").write_text(
        json.dumps({"geometry": other, "views": ["ap", "lateral"]})
    )
    args = [
        "--model",
        str(model_dir),
        "--ap",
        str(ap),
        "--lateral",
        str(lat),
        "--out",
        str(tmp_path / "out"),
        "--steps",
        "2",
    ]
    with pytest.raises(InputError, match="allow-geometry-mismatch"):
        main(args)
    assert not (tmp_path / "out").exists()
    main(args + ["--allow-geometry-mismatch"])
    assert (tmp_path / "out" / "ct.nii.gz").is_file()


def test_errors_come_before_any_compute(tmp_path, model_dir, ct_path):
    ap = save_xray_png(tmp_path / "ap.png", np.zeros((16, 16)))
    out = ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):  # argparse: a missing view
        main(["--model", str(model_dir), "--ap", str(ap), *out])
    bad = tmp_path / "lateral.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read"):
        main(["--model", str(model_dir), "--ap", str(ap), "--lateral", str(bad), *out])
    with pytest.raises(InputError, match="no such file"):
        main(
            ["--model", str(model_dir), "--ap", str(ap), "--lateral", str(tmp_path / "x.png"), *out]
        )
    for gone in (["--phantoms", "2"], ["--benchmark", "1"]):  # evaluate.py, benchmark.py
        with pytest.raises(SystemExit):
            main(["--model", str(model_dir), *gone, *out])
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(InputError, match="config.json"):
        main(["--model", str(empty), "--ct", str(ct_path), *out])
    assert not (tmp_path / "out").exists()


def test_from_a_dicom_ct_folder_as_from_its_nifti(tmp_path, model_dir):
    """``--ct FOLDER`` (one DICOM series, as a scanner exports it) reconstructs what the same
    CT as NIfTI gives; a folder without a series is refused by name before any compute."""
    pytest.importorskip("pydicom")
    from x2ct.eval.export import write_dicom_series

    ph = spine_phantom((20, 20, 24), (6.0, 6.0, 6.0), seed=7)
    hu = np.rint(np.maximum(ph.hu, -1024))  # what the series stores exactly
    nifti = save_ct(tmp_path / "ct.nii.gz", hu, spacing=ph.spacing)
    ct = load_ct(nifti)
    write_dicom_series(tmp_path / "series", ct.hu, ct.affine)
    common = ["--model", str(model_dir), "--steps", "2", "--num-samples", "1", "--seed", "3"]
    a = main([*common, "--ct", str(nifti), "--out", str(tmp_path / "a")])
    b = main([*common, "--ct", str(tmp_path / "series"), "--out", str(tmp_path / "b")])
    # a study's second reconstruction in the same folder: refused, unless --series picks one
    write_dicom_series(tmp_path / "other", np.full_like(ct.hu, 40.0), ct.affine,
                       series_number=7)
    for f in (tmp_path / "other").glob("*.dcm"):
        f.rename(tmp_path / "series" / f"bone_{f.name}")
    with pytest.raises(InputError, match="2 CT series"):
        main([*common, "--ct", str(tmp_path / "series"), "--out", str(tmp_path / "c")])
    picked = main([*common, "--ct", str(tmp_path / "series"), "--series", "1001",
                   "--out", str(tmp_path / "d")])
    assert picked["psnr"] == pytest.approx(a["psnr"], abs=1e-4)
    with pytest.raises(InputError, match="--series chooses"):
        main([*common, "--ct", str(nifti), "--series", "7", "--out", str(tmp_path / "c")])
    assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-4)
    np.testing.assert_allclose(load_ct(tmp_path / "b" / "ct.nii.gz").hu,
                               load_ct(tmp_path / "a" / "ct.nii.gz").hu, atol=1e-2)
    np.testing.assert_allclose(load_ct(tmp_path / "b" / "ct.nii.gz").affine,
                               load_ct(tmp_path / "a" / "ct.nii.gz").affine, atol=1e-4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM images"):
        main([*common, "--ct", str(tmp_path / "empty"), "--out", str(tmp_path / "c")])
    with pytest.raises(InputError, match="no such CT file or DICOM folder"):
        main([*common, "--ct", str(tmp_path / "gone"), "--out", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kind", ["spine", "soft tissue", "bone ball", "spine without bone"])
def test_spine_check_warns_when_the_reconstruction_shows_no_column(kind):
    """reconstruct.py's closing check (x2ct.data.locate_spine on the reconstruction): silent
    on a field holding a spine phantom's column; a warning naming the reason otherwise (no
    bone, bone without a vertebral canal, the column's bone made soft tissue)."""
    from x2ct.eval.reconstruct import spine_check

    shape, spacing = (64, 64, 64), (2.0, 2.0, 2.0)
    hu = spine_phantom(shape, spacing, seed=0).hu
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)],
                          indexing="ij")
    volume = {
        "spine": hu,
        "soft tissue": np.full(shape, 40.0, np.float32),
        "bone ball": np.where(x**2 + y**2 + z**2 < 30.0**2, 1000.0, 40.0).astype(np.float32),
        "spine without bone": np.where(hu > 150, 40.0, hu).astype(np.float32),
    }[kind]
    note = spine_check(volume, spacing)
    if kind == "spine":
        assert note is None, note
    else:
        assert note is not None and "no clear vertebral column" in note, note
        assert ("no bone" in note) == (kind != "bone ball"), note
        assert ("canal" in note) == (kind == "bone ball"), note
