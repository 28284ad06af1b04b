"""eval/reconstruct.py's outputs for clinicians (--format dicom, --mesh, --labels, --report),
its progress lines and its figure's title and colour bars, on a tiny random pipeline."""

import json

import numpy as np
import pytest
from latent_helpers import tiny_reconstructor

from x2ct.data import load_ct, save_ct, spine_phantom
from x2ct.eval import reconstruct
from x2ct.eval.export import resample_labels
from x2ct.eval.figures import reconstruction_figure
from x2ct.eval.report import read_report_data

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_reconstructor().save_pretrained(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    ph = spine_phantom((20, 20, 24), (6.0, 6.0, 6.0), seed=7)
    ct = save_ct(folder / "case_ct.nii.gz", ph.hu, spacing=ph.spacing)
    labels = save_ct(folder / "case_seg-vert_msk.nii.gz", ph.labels, spacing=ph.spacing)
    return ct, labels


def test_dicom_meshes_and_report_from_a_ct(tmp_path, model_dir, case, capsys):
    ct_path, labels_path = case
    out = tmp_path / "out"
    result = reconstruct.main([
        "--model", str(model_dir), "--ct", str(ct_path), "--out", str(out), "--steps", "2",
        "--num-samples", "2", "--format", "nifti", "dicom", "--mesh", "bone.stl",
        "--labels", str(labels_path), "--report",
    ])
    printed = capsys.readouterr().out
    assert "loading" in printed and "reconstructing: ddim 2 steps" in printed
    assert "dicom/" in printed.splitlines()[-1] and "report.html" in printed.splitlines()[-1]
    ct = load_ct(out / "ct.nii.gz")
    # DICOM: one file a slice; each slice holds the NIfTI slice's HU (as a set: orientation
    # is tests/test_export.py's job) at the NIfTI slice's height (RAS z = LPS z)
    files = sorted((out / "dicom").glob("*.dcm"))
    assert len(files) == ct.hu.shape[2]
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(np.sort(hu.ravel()), np.sort(np.rint(ct.hu[..., k]).ravel()))
        assert float(ds.ImagePositionPatient[2]) == pytest.approx((ct.affine @ [0, 0, k, 1])[2])
    # meshes: all bone, and one per vertebra that the labels put in the field
    meshes = sorted(p.name for p in out.glob("bone*.stl"))
    assert "bone.stl" in meshes and len(meshes) >= 2
    # the report holds the CT, the uncertainty, the truth and the scores of metrics.json
    data = read_report_data(out / "report.html")
    names = [v["name"] for v in data["volumes"]]
    assert names == ["reconstruction", "ground truth", "|error|", "uncertainty (std)"]
    np.testing.assert_array_equal(data["volumes"][0]["array"], np.rint(ct.hu))
    saved = json.loads((out / "metrics.json").read_text())
    assert data["metrics"]["psnr"] == pytest.approx(saved["psnr"]) == pytest.approx(result["psnr"])


def test_dicom_only_and_labels_without_a_mesh(tmp_path, model_dir, case):
    ct_path, labels_path = case
    out = tmp_path / "out"
    reconstruct.main(["--model", str(model_dir), "--ct", str(ct_path), "--out", str(out),
                      "--steps", "1", "--format", "dicom", "--no-pc"])
    assert not (out / "ct.nii.gz").exists() and any((out / "dicom").glob("*.dcm"))
    # --labels alone locates the spine by the labels; no mesh is asked for, none written
    reconstruct.main(["--model", str(model_dir), "--ct", str(ct_path), "--out", str(out),
                      "--labels", str(labels_path), "--steps", "1", "--format", "dicom",
                      "--no-pc", "--overwrite"])
    assert not list(out.glob("*.stl")) and any((out / "dicom").glob("*.dcm"))


def test_missing_export_library_fails_before_compute(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pydicom" else real(name, *a))
    with pytest.raises(ImportError, match=r"x2ct\[dicom\]"):
        reconstruct.require_export_libraries(["nifti", "dicom"], None)
    reconstruct.require_export_libraries(["nifti"], "bone.stl")  # skimage is there


def test_labels_are_resampled_onto_the_reconstruction_grid(tmp_path):
    labels = np.zeros((10, 12, 14), np.int16)
    labels[2:5, 3:9, 4:11] = 21
    labels[6, 7, 8] = 22
    affine = np.diag([2.0, 3.0, 1.5, 1.0])
    affine[:3, 3] = (-5.0, 7.0, 2.0)
    path = save_ct(tmp_path / "seg.nii.gz", labels, affine=affine)
    grid = affine.copy()
    grid[:3, 3] += affine[:3, :3] @ [1, 2, 3]  # a grid 1, 2, 3 voxels further on
    out = resample_labels(path, grid, (8, 9, 10))
    np.testing.assert_array_equal(out, labels[1:9, 2:11, 3:13])


def test_sampling_summary_and_figure_colour_bars():
    from x2ct.diffusion import ProjectionGuidance

    pc = ProjectionGuidance(0.05, 5, 3)
    s = reconstruct.sampling_summary("diffusion", "ddim", 25, 1.5, 4, pc)
    assert s == ("ddim 25 steps, guidance 1.5, projection-consistent sampling 0.05/5/3, "
                 "4 samples")
    assert reconstruct.sampling_summary("regression", "ddim", 25, 1.0, 1).startswith(
        "regression (one pass), projection-consistent sampling off")
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 100, (1, 1, 8, 8, 8))
    fig = reconstruction_figure(rng.random((1, 2, 6, 6)), vol, rng.random((1, 2, 6, 6)),
                                gt_hu=vol + 5, std_hu=np.abs(vol), title="t")
    rows = fig.axes[:20]  # (1 + 4 rows) x 4 columns of panels, then the colour bars
    bars = {im.colorbar.ax.get_ylabel() for ax in rows for im in ax.images if im.colorbar}
    assert bars == {"ground truth, HU", "reconstruction, HU", "|error| HU", "std HU"}
