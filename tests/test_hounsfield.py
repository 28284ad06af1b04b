"""A CT whose values are not Hounsfield units is refused before anything is drawn from it
(``x2ct.data.check_hounsfield``, called by ``ct_case``: ``reconstruct --ct``, evaluation and
CT-folder training alike)."""

import numpy as np
import pytest
from scipy import ndimage

import x2ct.data.cases as cases
from x2ct.cli import InputError
from x2ct.data import CTImage, check_hounsfield, ct_case, default_geometry, save_ct
from x2ct.data.cases import crop_around_spine, locate, phantom_body


@pytest.fixture(scope="module")
def body():
    """A whole-body lumbar phantom at 4 mm (air, lungs or bowel gas, fat, muscle, bone)."""
    return phantom_body(90000, "lumbar", (4.0, 4.0, 4.0), (32, 32, 32))


def _padded(hu, value):
    """The corners outside a scanner's reconstruction circle filled with ``value``."""
    x, y = np.meshgrid(np.linspace(-1, 1, hu.shape[0]), np.linspace(-1, 1, hu.shape[1]),
                       indexing="ij")
    out = hu.copy()
    out[x**2 + y**2 > 1.0] = value
    return out


def test_cts_in_hounsfield_units_pass(body):
    """The body, its padding at -3024, clipped at -1000 (air then all at the lowest value,
    which rule 1 leaves out), and a spine CT crop 136 mm wide (no air left around the body:
    fat alone must carry it)."""
    ct, labels = body
    check_hounsfield(ct.hu)
    check_hounsfield(_padded(ct.hu, -3024.0))
    clipped = np.clip(ct.hu, -1000.0, None)
    assert np.count_nonzero(clipped == -1000.0) > 0.1 * clipped.size
    check_hounsfield(clipped)
    crop, _, _ = crop_around_spine(ct, 136.0, locate(ct.hu, ct.spacing, labels), labels)
    check_hounsfield(crop.hu)


@pytest.mark.parametrize("how", ["no intercept", "no intercept, padding -2000",
                                 "no intercept, padding -2000, resampled",
                                 "scaled to [0, 1]", "scaled to [0, 1], padding -1024",
                                 "scaled to [-1, 1]"])
def test_values_that_are_not_hu_are_refused_by_name_before_any_work(
        tmp_path, body, monkeypatch, how):
    ct, _ = body
    hu = ct.hu
    bad = {
        "no intercept": hu + 1024.0,
        "no intercept, padding -2000": _padded(np.maximum(hu, -1024.0) + 1024.0, -2000.0),
        # the padding's edge spread over [-2000, 0]: rule 1 is met, rule 2 refuses
        "no intercept, padding -2000, resampled": ndimage.zoom(
            _padded(np.maximum(hu, -1024.0) + 1024.0, -2000.0), 1.3, order=1),
        "scaled to [0, 1]": (np.clip(hu, -1024, 3071) + 1024.0) / 4095.0,
        # rule 1 must leave the padding out to see this one
        "scaled to [0, 1], padding -1024": _padded((np.clip(hu, -1024, 3071) + 1024.0) / 4095.0,
                                                   -1024.0),
        "scaled to [-1, 1]": np.clip(hu, -1000, 1000) / 1000.0,
    }[how]
    path = save_ct(tmp_path / "raw_ct.nii.gz", bad, affine=ct.affine)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the spine was looked for in a CT that is not in HU")

    monkeypatch.setattr(cases, "locate", must_not_run)
    with pytest.raises(ValueError, match=r"raw_ct\.nii\.gz: its values do not look like "
                       r"Hounsfield units.*subtract 1024"):
        field, spacing = (16, 16, 16), (4.0, 4.0, 4.0)
        ct_case(path, field, spacing, default_geometry(field, spacing))
    with pytest.raises(ValueError, match=r"^the CT: its values"):
        check_hounsfield(CTImage(bad, ct.spacing, ct.affine).hu)


def test_reconstruct_refuses_a_ct_stored_without_its_intercept(tmp_path, body):
    """The user's path: ``reconstruct --ct`` names the file and writes nothing."""
    from x2ct.eval.reconstruct import main
    from x2ct.models import model_path

    ct, _ = body
    path = save_ct(tmp_path / "raw_ct.nii.gz", ct.hu + 1024.0, affine=ct.affine)
    with pytest.raises(InputError, match=r"raw_ct\.nii\.gz: its values do not look like"):
        main(["--model", str(model_path("ldm-tiny")), "--ct", str(path),
              "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_training_folder_names_the_ct_that_is_not_in_hu(tmp_path, body):
    """CT-folder training (``CTFolderDataset``, ``train/latent.py --data``) names the file;
    the CTs in HU beside it are served."""
    from x2ct.data import CTFolderDataset

    ct, labels = body
    root = tmp_path / "verse"
    for sub, hu in (("sub-good", ct.hu), ("sub-raw", ct.hu + 1024.0)):  # VerSe layout
        save_ct(root / "rawdata" / sub / f"{sub}_ct.nii.gz", hu, affine=ct.affine)
        save_ct(root / "derivatives" / sub / f"{sub}_seg-vert_msk.nii.gz",
                labels.astype(np.float32), affine=ct.affine)
    ds = CTFolderDataset(root, spacing=(4.0, 4.0, 4.0), shape=(16, 16, 16),
                         cache_dir=tmp_path / "cache")
    assert ds.ids == ["sub-good", "sub-raw"]
    assert ds[0]["ct"].shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match=r"sub-raw_ct\.nii\.gz: its values do not look like"):
        ds[1]
