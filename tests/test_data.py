"""Data: NIfTI and X-ray I/O, the HU window, preprocessing, splits and datasets."""

import dataclasses
import gzip
import os
import struct
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

import x2ct
import x2ct.fileio
from x2ct.data import (
    CropPadToSpined,
    CTFolderDataset,
    PhantomDataset,
    XrayAugment,
    centred_affine,
    default_geometry,
    find_ct_cases,
    hu_to_unit,
    load_ct,
    load_xray,
    preprocess,
    save_ct,
    save_xray_png,
    spine_phantom,
    split_ids,
    unit_to_hu,
)
from x2ct.projector import DRR_SCALE, hu_to_mu, project

SHAPE, SPACING = (32, 32, 32), (4.0, 4.0, 4.0)


def _drr(ct, geometry, spacing):
    """The reference: project the HU the model sees."""
    return project(hu_to_mu(unit_to_hu(ct))[None], geometry, spacing=spacing)[0] / DRR_SCALE


def test_public_api_resolves():
    import x2ct.data as data

    assert set(data.__all__) == set(data._MODULE_OF)
    for name in data.__all__:
        assert getattr(data, name) is not None
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018


# --- NIfTI -------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    ph = spine_phantom((20, 24, 16), (1.5, 2.0, 3.0), seed=1)
    save_ct(tmp_path / "ct.nii.gz", ph.hu, spacing=ph.spacing)
    save_ct(tmp_path / "lab.nii", ph.labels, spacing=ph.spacing)
    ct = load_ct(tmp_path / "ct.nii.gz")
    lab = load_ct(tmp_path / "lab.nii")
    assert ct.hu.dtype == np.float32 and np.array_equal(ct.hu, ph.hu)
    assert np.array_equal(lab.hu, ph.labels)
    assert nib.load(tmp_path / "lab.nii").get_data_dtype() == np.int16
    assert ct.spacing == pytest.approx((1.5, 2.0, 3.0))
    np.testing.assert_allclose(ct.affine, centred_affine((20, 24, 16), (1.5, 2.0, 3.0)), atol=1e-5)
    # Centred on the origin: the middle of the volume is at world 0.
    centre = ct.affine @ np.array([(20 - 1) / 2, (24 - 1) / 2, (16 - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-5)
    # Only the final files remain (atomic writes leave no temporaries).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "lab.nii"]


def test_save_with_affine_and_torch(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    vol = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6) * 0.5
    save_ct(tmp_path / "a.nii.gz", vol, affine=affine)
    back = load_ct(tmp_path / "a.nii.gz")
    assert np.array_equal(back.hu, vol[0].numpy())
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    with pytest.raises(ValueError, match="disagrees"):
        save_ct(tmp_path / "b.nii.gz", vol, spacing=(1, 1, 1), affine=affine)
    with pytest.raises(ValueError, match=r"\.nii"):
        save_ct(tmp_path / "c.nrrd", vol)


def test_lps_file_comes_back_in_ras(tmp_path):
    # Voxel axes: i toward the patient's left, j posterior, k superior (LPS).
    shape = (10, 12, 14)
    data = np.zeros(shape, np.float32)
    data[1, 2, 10] = 1000.0  # near i=0, j=0: the patient's right, anterior; superior
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    affine[:3, 3] = [9.0, 11.0, -19.5]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "lps.nii.gz")
    ct = load_ct(tmp_path / "lps.nii.gz")
    assert ct.hu.shape == shape
    assert np.all(np.diag(ct.affine)[:3] > 0)  # RAS+
    a, b, c = np.unravel_index(np.argmax(ct.hu), shape)
    assert (a, b, c) == (8, 9, 10)
    world = ct.affine @ np.array([a, b, c, 1.0])
    assert world[0] > 0 and world[1] > 0 and world[2] > 0  # right, anterior, superior
    np.testing.assert_allclose(world[:3], affine[:3] @ np.array([1, 2, 10, 1.0]))


def test_trailing_singleton_axis_is_accepted(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), tmp_path / "s.nii.gz")
    assert load_ct(tmp_path / "s.nii.gz").hu.shape == (4, 5, 6)


def _bad_files(tmp_path):
    ct = tmp_path / "good.nii.gz"
    save_ct(ct, np.zeros((6, 7, 8), np.float32) + 0.5, spacing=(2.0, 2.0, 2.0))
    raw = ct.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    nib.save(nib.Nifti1Image(np.zeros((6, 7), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    nan = np.zeros((6, 7, 8), np.float32)
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    # Zero voxel size: nibabel refuses to write one, so patch pixdim[2] in the header.
    header = bytearray(gzip.decompress(raw))
    header[84:88] = struct.pack("<f", 0.0)  # pixdim starts at byte 76
    (tmp_path / "zero.nii.gz").write_bytes(gzip.compress(bytes(header)))
    return {
        "missing.nii.gz": (FileNotFoundError, "no such"),
        "trunc.nii.gz": (ValueError, "truncated"),
        "flat.nii.gz": (ValueError, "3-D"),
        "4d.nii.gz": (ValueError, "3-D"),
        "nan.nii.gz": (ValueError, "non-finite"),
        "zero.nii.gz": (ValueError, "voxel size"),
    }


def test_bad_ct_files(tmp_path):
    for name, (error, words) in _bad_files(tmp_path).items():
        with pytest.raises(error) as info:
            load_ct(tmp_path / name)
        assert name in str(info.value) and words in str(info.value), str(info.value)
    assert load_ct(tmp_path / "good.nii.gz").hu.mean() == pytest.approx(0.5)


# --- HU window and preprocessing ----------------------------------------------------------


def test_hu_window_numpy_and_torch():
    hu = np.array([-3000.0, -1000.0, -250.0, 0.0, 500.0, 2000.0, 5000.0], np.float32)
    x = hu_to_unit(hu)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-1, -1, -0.5, -1 / 3, 0.0, 1, 1], atol=1e-6)
    inside = hu[1:-1]
    np.testing.assert_allclose(unit_to_hu(hu_to_unit(inside)), inside, atol=1e-3)
    t = torch.linspace(-1000.0, 2000.0, 101, dtype=torch.float64)
    assert torch.allclose(unit_to_hu(hu_to_unit(t)), t, atol=1e-9)
    assert hu_to_unit(torch.tensor([-5000.0, 9000.0])).tolist() == [-1.0, 1.0]
    assert hu_to_unit(np.array([0, 100]), window=(0.0, 100.0)).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="window"):
        hu_to_unit(hu, window=(100.0, 0.0))


def test_crop_pad_centres_on_bone_and_pads_air():
    hu = np.full((1, 20, 20, 20), -500.0, np.float32)
    hu[0, 3:6, 14:17, 8:11] = 800.0  # bone around voxel (4, 15, 9)
    out = CropPadToSpined(["image"], (12, 12, 12), mask_key=None)({"image": hu})["image"]
    assert out.shape == (1, 12, 12, 12)
    bone = np.argwhere(out[0] > 250).mean(0)
    np.testing.assert_allclose(bone, [5.5, 5.5, 5.5], atol=0.6)
    assert out.min() == -1000.0  # padded beyond the border with air
    # With a mask, the mask's centroid wins over bone.
    label = np.zeros_like(hu)
    label[0, 14:17, 3:6, 9:12] = 20
    d = CropPadToSpined(["image", "label"], (8, 8, 8))({"image": hu, "label": label})
    np.testing.assert_allclose(np.argwhere(d["label"][0] > 0).mean(0), [3.5, 3.5, 3.5], atol=0.6)
    # centre_at puts the spine elsewhere than the middle (a model's spine_position)
    out = CropPadToSpined(["image"], (12, 12, 12), mask_key=None, centre_at=(3.0, 7.0, 9.0))(
        {"image": hu})["image"]
    np.testing.assert_allclose(np.argwhere(out[0] > 250).mean(0), [3.0, 7.0, 9.0], atol=0.6)
    with pytest.raises(ValueError, match="centre_at"):
        CropPadToSpined(["image"], (12, 12, 12), centre_at=(1.0, 2.0))


def test_preprocess_reorients_resamples_and_centres(tmp_path):
    ph = spine_phantom((40, 40, 30), (1.5, 1.5, 2.0), seed=2)
    # Store it LPS-flipped; preprocessing must undo that.
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(ph.hu[::-1, ::-1].copy(), affine), tmp_path / "x_ct.nii.gz")
    nib.save(nib.Nifti1Image(ph.labels[::-1, ::-1].copy(), affine), tmp_path / "x_msk.nii.gz")
    d = preprocess((3.0, 3.0, 3.0), (16, 18, 20))(
        {"image": str(tmp_path / "x_ct.nii.gz"), "label": str(tmp_path / "x_msk.nii.gz")}
    )
    img, lab = d["image"], d["label"]
    assert img.shape == lab.shape == (1, 16, 18, 20)
    assert img.min() >= -1.0 and img.max() <= 1.0
    ids = set(torch.unique(lab).tolist())
    assert ids <= set(np.unique(ph.labels).tolist()) and len(ids) >= 3
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3].numpy(), axis=0), 3.0)
    # Centred on the mask; RAS: the spinous processes (posterior) at low Y indices.
    c = np.argwhere(lab[0].numpy() > 0).mean(0)
    np.testing.assert_allclose(c, (np.array([16, 18, 20]) - 1) / 2, atol=1.0)
    vert = lab[0].numpy()
    vert = (vert > 0) & (vert < 100)
    ys = np.nonzero(vert)[1]
    # The discs lie between the bodies, in front of the arches: anterior (higher Y) of the
    # vertebrae's centroid. (The crop cuts both ends of a real-size vertebra, ~90 mm deep,
    # so the extents of the labels say little about which end is which.)
    assert np.nonzero(lab[0].numpy() == 100)[1].mean() > ys.mean() + 1.5


# --- splits -------------------------------------------------------------------------------


def test_split_ids_disjoint_covering_and_stable():
    ids = [f"case{i:03d}" for i in range(200)]
    s = split_ids(ids)
    parts = [set(s[k]) for k in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(ids) and set.union(*parts) == set(ids)
    assert 120 < len(parts[0]) < 185 and len(parts[1]) > 5 and len(parts[2]) > 5
    more = split_ids(ids + [f"new{i}" for i in range(50)])
    for k in ("train", "val", "test"):
        assert set(more[k]) & set(ids) == set(s[k])
    assert split_ids(ids, seed=1) != s
    with pytest.raises(ValueError, match="fractions"):
        split_ids(ids, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="unique"):
        split_ids(["a", "a"])


# --- datasets -----------------------------------------------------------------------------


def test_default_geometry_covers_the_volume_tightly():
    g = default_geometry((24, 32, 20), (4.0, 3.0, 5.0))
    assert g.detector_shape == (20, 32) and g.angles == (0.0, 90.0)
    # Same pixels on a detector two pixels larger all round: the extra ring stays dark.
    wide = dataclasses.replace(g, detector_shape=(24, 36))
    drr = project(torch.ones(1, 1, 24, 32, 20), wide, spacing=(4.0, 3.0, 5.0))[0]
    for view in drr:
        inside = view[2:-2, 2:-2]
        assert view.sum() == pytest.approx(inside.sum().item(), rel=1e-6)
    # Tight: with square pixels the shadow fills the limiting dimension (here the height).
    rows = (drr[:, 2:-2, 2:-2].sum(-1) > 0).float().mean(-1)
    assert rows.max() > 0.9


def test_phantom_dataset_items(tmp_path):
    """Whole body (the default): each item is the case ``phantom_case`` makes of the seed's
    phantom (the path of a patient's CT), its X-rays through the whole body."""
    from x2ct.data.cases import phantom_case

    ds = PhantomDataset(3, seed=10, shape=SHAPE, spacing=SPACING, cache_dir=tmp_path)
    assert len(ds) == 3 and ds.ids[0] == "phantom_0010"
    item = ds[1]
    assert item["id"] == "phantom_0011"
    assert item["ct"].shape == (1, *SHAPE) and item["ct"].dtype == torch.float32
    assert item["ct"].min() >= -1.0 and item["ct"].max() <= 1.0
    assert item["xrays"].shape == (2, 32, 32) and item["xrays"].dtype == torch.float32
    assert item["labels"].shape == (1, *SHAPE) and item["labels"].dtype == torch.int64
    assert item["views"].shape == (2, 15)
    assert torch.equal(item["spacing"], torch.tensor(SPACING))
    case = phantom_case(11, "lumbar", SHAPE, SPACING, ds.geometry, window=ds.window)
    torch.testing.assert_close(item["ct"][0], hu_to_unit(case.hu.float(), ds.window))
    torch.testing.assert_close(item["xrays"], case.drr / DRR_SCALE)
    torch.testing.assert_close(item["drr"], case.drr)  # line integrals, as rendered
    field = item["drr_field"] / DRR_SCALE  # the field's own DRRs, the projection target
    torch.testing.assert_close(field, _drr(item["ct"], ds.geometry, SPACING),
                               atol=1e-4, rtol=1e-4)
    # the body around the field attenuates: whole-body X-rays are darker than the field's
    assert (item["xrays"] - field).mean() > 0.05
    with pytest.raises(IndexError):
        ds[3]


def test_phantom_dataset_field_only_items():
    ds = PhantomDataset(3, seed=10, shape=SHAPE, spacing=SPACING, whole_body=False)
    item = ds[1]
    assert item["xrays"].min() >= 0.0 and 0.05 < item["xrays"].max() < 2.0
    ref = spine_phantom(SHAPE, SPACING, seed=11)
    assert torch.equal(item["labels"][0], torch.from_numpy(ref.labels).long())
    assert torch.allclose(item["ct"][0], hu_to_unit(torch.from_numpy(ref.hu)))
    torch.testing.assert_close(item["xrays"], _drr(item["ct"], ds.geometry, SPACING))


def test_phantom_dataset_splits():
    parts = {
        s: PhantomDataset(30, shape=(8, 8, 8), spacing=SPACING, split=s)
        for s in ("train", "val", "test")
    }
    ids = [set(p.ids) for p in parts.values()]
    assert set.union(*ids) == {f"phantom_{i:04d}" for i in range(30)}
    assert sum(len(i) for i in ids) == 30
    with pytest.raises(ValueError, match="split"):
        PhantomDataset(3, split="training")


def test_augmentation_seeded_per_index_and_epoch():
    aug = XrayAugment(angle_jitter=2.0, noise=(0.005, 0.01))
    ds = PhantomDataset(1, shape=SHAPE, spacing=SPACING, augment=aug)
    plain = PhantomDataset(1, shape=SHAPE, spacing=SPACING)[0]["xrays"]
    a, b = ds[0]["xrays"], ds[0]["xrays"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, plain, atol=1e-3)
    ds.set_epoch(1)
    assert not torch.allclose(ds[0]["xrays"], a, atol=1e-3)
    assert torch.equal(ds[0]["ct"], PhantomDataset(1, shape=SHAPE, spacing=SPACING)[0]["ct"])
    with pytest.raises(ValueError, match="gamma"):
        XrayAugment(gamma=(0.0, 1.0))


def _verse_folder(root, n=3):
    for i in range(n):
        ph = spine_phantom(SHAPE, SPACING, seed=i)
        sub = f"sub-verse{i:03d}"
        save_ct(root / "rawdata" / sub / f"{sub}_ct.nii.gz", ph.hu, spacing=SPACING)
        save_ct(
            root / "derivatives" / sub / f"{sub}_seg-vert_msk.nii.gz", ph.labels, spacing=SPACING
        )


def test_find_cases_in_verse_ctspine1k_and_flat_folders(tmp_path):
    _verse_folder(tmp_path / "verse", n=2)
    cases = find_ct_cases(tmp_path / "verse")
    assert [c.id for c in cases] == ["sub-verse000", "sub-verse001"]
    assert all(c.label is not None and c.label.parent.name == c.id for c in cases)
    vol = np.zeros((4, 4, 4), np.float32)
    save_ct(tmp_path / "ctspine" / "data" / "COLONOG" / "a1.nii.gz", vol)
    save_ct(tmp_path / "ctspine" / "label" / "COLONOG" / "a1_seg.nii.gz", vol)
    save_ct(tmp_path / "ctspine" / "data" / "COLONOG" / "a2.nii.gz", vol)
    cases = find_ct_cases(tmp_path / "ctspine")
    assert [(c.id, c.label is not None) for c in cases] == [("a1", True), ("a2", False)]
    save_ct(tmp_path / "flat" / "p.nii", vol)
    assert [c.id for c in find_ct_cases(tmp_path / "flat")] == ["p"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no volumes")
    with pytest.raises(ValueError, match="empty"):
        find_ct_cases(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty"):
        CTFolderDataset(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_ct_folder_dataset_caches_outside_the_data(tmp_path, monkeypatch):
    root, cache = tmp_path / "verse", tmp_path / "cache"
    _verse_folder(root)
    spacing, shape = (5.0, 5.0, 5.0), (20, 22, 24)
    ds = CTFolderDataset(root, spacing=spacing, shape=shape, cache_dir=cache)
    assert len(ds) == 3
    item = ds[1]
    assert item["id"] == "sub-verse001"
    assert item["ct"].shape == (1, *shape) and item["ct"].dtype == torch.float32
    assert item["ct"].min() >= -1.0 and item["ct"].max() <= 1.0
    assert item["xrays"].shape == (2, 24, 22)
    assert item["labels"].dtype == torch.int64 and (item["labels"] > 0).any()
    # the case reconstruct.py --ct makes of the same CT and labels: X-rays through the whole
    # resampled CT, the field's own DRRs the projection target
    from x2ct.data.cases import ct_case

    ref = ct_case(ds.cases[1].image, shape, spacing, ds.geometry,
                  mask=ds.cases[1].label, window=ds.window)
    torch.testing.assert_close(item["xrays"], ref.drr / DRR_SCALE)
    torch.testing.assert_close(item["drr_field"] / DRR_SCALE,
                               _drr(item["ct"], ds.geometry, spacing), atol=1e-4, rtol=1e-4)
    entries = sorted((cache / "ctfolder").iterdir())
    # one entry, the case's first (only) placement
    assert len(entries) == 1 and entries[0].name.startswith("sub-verse001_0-")
    assert not any(p.suffix == ".safetensors" for p in root.rglob("*"))

    # A second dataset reads the cache instead of preprocessing again.
    again = CTFolderDataset(root, spacing=spacing, shape=shape, cache_dir=cache)
    monkeypatch.setattr(again, "_build", lambda case: pytest.fail("rebuilt a cached case"))
    assert torch.equal(again[1]["ct"], item["ct"])
    # A changed file or setting gets a new entry.
    image = ds.cases[1].image
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert ds.cache_path(1) != entries[0]
    other = CTFolderDataset(root, spacing=(6.0, 6.0, 6.0), shape=shape, cache_dir=cache)
    assert other.cache_path(0).name != ds.cache_path(0).name
    # Crops (train/latent.py --crops): their own entries, X-rays of the cut CT alone
    from x2ct.data import CropRange

    cut = CTFolderDataset(root, spacing=spacing, shape=shape, cache_dir=cache,
                          crops=CropRange(1.0, 60.0, 60.0))
    assert cut.cache_path(1).name != ds.cache_path(1).name
    no_cut = CTFolderDataset(root, spacing=spacing, shape=shape, cache_dir=cache,
                             crops=CropRange(0.0))  # cuts nothing: the entries made without
    assert no_cut.cache_path(1).name == ds.cache_path(1).name
    assert float((cut[1]["drr"] - item["drr"]).max()) < 1e-3
    assert float(cut[1]["drr"].mean()) < 0.9 * float(item["drr"].mean())

    with pytest.raises(ValueError, match="inside the data folder"):
        CTFolderDataset(root, cache_dir=root / "cache")
    parts = [CTFolderDataset(root, cache_dir=cache, split=s).ids for s in ("train", "val", "test")]
    assert sorted(sum(parts, [])) == ds.ids


# --- X-ray images -------------------------------------------------------------------------


def test_xray_png_round_trip(tmp_path):
    x = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    x[0, 0], x[0, 1] = -0.5, 1.7  # clipped to [0, 1]
    save_xray_png(tmp_path / "x.png", torch.from_numpy(x)[None])
    y = load_xray(tmp_path / "x.png")
    assert y.shape == (20, 30) and y.dtype == np.float32
    assert np.abs(y - np.clip(x, 0, 1)).max() <= 1 / 65535
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_xray_formats(tmp_path):
    from PIL import Image

    x = np.random.default_rng(1).random((16, 24)).astype(np.float32)
    x8 = np.round(x * 255).astype(np.uint8)
    Image.fromarray(x8).save(tmp_path / "a.png")
    np.testing.assert_allclose(load_xray(tmp_path / "a.png"), x8 / 255.0, atol=1e-6)
    Image.fromarray(np.stack([x8] * 3, axis=-1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_xray(tmp_path / "rgb.png"), x8 / 255.0, atol=1e-5)
    Image.fromarray(np.round(x * 65535).astype(np.uint16)).save(tmp_path / "b.tif")
    np.testing.assert_allclose(load_xray(tmp_path / "b.tif"), x, atol=1 / 65535)
    np.save(tmp_path / "raw.npy", x * DRR_SCALE)  # raw line integrals
    np.testing.assert_allclose(load_xray(tmp_path / "raw.npy"), x, rtol=1e-6)
    with pytest.warns(UserWarning, match="resized"):
        small = load_xray(tmp_path / "a.png", shape=(8, 12))
    assert small.shape == (8, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_xray(tmp_path / "a.png", shape=(16, 24)).shape == (16, 24)


def test_bad_xray_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.png"):
        load_xray(tmp_path / "none.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_xray(tmp_path / "junk.png")
    with pytest.raises(ValueError, match="X-ray image"):
        load_xray(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match="png"):
        save_xray_png(tmp_path / "x.tif", np.zeros((4, 4)))


def write_dicom_xray(path, pixels: np.ndarray, photometric: str, bits_stored: int = 12):
    """A minimal digital X-ray (DX, For Presentation) DICOM file: unsigned 16-bit
    allocated, ``bits_stored`` used, explicit VR little endian with a proper file meta."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def test_dicom_xrays_monochrome1_and_2(tmp_path):
    """A 12-bit DICOM radiograph reads as value / 4095 (bone bright, as PNGs): MONOCHROME2
    as stored, MONOCHROME1 (bone dark) inverted; rows and columns as in the file."""
    pytest.importorskip("pydicom")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=(12, 20), dtype=np.uint16)
    pixels[0, :3] = (0, 4095, 2048)
    m2 = write_dicom_xray(tmp_path / "m2.dcm", pixels, "MONOCHROME2")
    m1 = write_dicom_xray(tmp_path / "m1.dicom", pixels, "MONOCHROME1")
    a2, a1 = load_xray(m2), load_xray(m1)
    assert a2.shape == (12, 20) and a2.dtype == np.float32
    np.testing.assert_allclose(a2, pixels / 4095.0, atol=1e-6)
    np.testing.assert_allclose(a1, 1.0 - pixels / 4095.0, atol=1e-6)
    assert a2[0, 0] == 0.0 and a2[0, 1] == 1.0 and a1[0, 0] == 1.0 and a1[0, 1] == 0.0
    with pytest.warns(UserWarning, match="resized"):
        assert load_xray(m2, shape=(6, 10)).shape == (6, 10)
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match="junk.dcm"):
        load_xray(tmp_path / "junk.dcm")


def test_dicom_needs_pydicom(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom raises ImportError
    (tmp_path / "a.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ImportError, match="pip install pydicom"):
        load_xray(tmp_path / "a.dcm")


def test_case_code_version_covers_every_module_cases_import():
    """Every x2ct module that the case pipeline (phantom, localiser, case cutting,
    rendering) imports in a fresh interpreter is hashed into the case cache's key, apart
    from the package root and the atomic file writer, which change no value of a case."""
    from x2ct.data.datasets import case_code_files

    probe = (
        "import sys, x2ct.data.cases, x2ct.data.localise, x2ct.data.phantom\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items()\n"
        "                 if n.startswith('x2ct') and getattr(m, '__file__', None)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    imported = {os.path.realpath(f) for f in out}
    hashed = {os.path.realpath(f) for f in case_code_files()}
    exempt = {os.path.realpath(x2ct.__file__), os.path.realpath(x2ct.fileio.__file__)}
    assert len(imported) > 20  # the probe saw the pipeline
    assert imported - exempt <= hashed, sorted(imported - exempt - hashed)
