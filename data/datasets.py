"""Datasets of (CT, biplanar X-ray) pairs: procedural phantoms and folders of NIfTI CTs.

Every item is a dict:

- ``ct``: (1, X, Y, Z) float32 in [-1, 1] (the HU window, :func:`hu_to_unit`), RAS+.
- ``xrays``: (V, H, W) float32, the normalised DRRs of that case,
  ``project(hu_to_mu(unit_to_hu(ct))) / xray_scale``: exactly the projection of what the
  model sees (V = 2: AP and lateral by default).
- ``labels``: (1, X, Y, Z) int64 VerSe labels (discs 100 in phantoms), when known.
- ``spacing``: (3,) float32 voxel size in mm.
- ``id``: str, the case id (also what splits hash).

Splits are deterministic per id (:func:`split_ids`): adding cases never moves others.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from x2ct.data.augment import XrayAugment, augment_generator
from x2ct.data.cases import CropRange, PlacementRange
from x2ct.data.io import atomic_path
from x2ct.data.phantom import REGIONS, phantom_id, spine_phantom
from x2ct.data.transforms import HU_WINDOW, hu_to_unit, unit_to_hu
from x2ct.projector import (
    DRR_SCALE,
    AcquisitionRange,
    Geometry,
    hu_to_mu,
    project,
    project_posed,
)

__all__ = [
    "CACHE_ENV",
    "CTCase",
    "CTFolderDataset",
    "PhantomDataset",
    "phantom_offset",
    "SPLITS",
    "ct_to_drr",
    "default_cache_dir",
    "default_geometry",
    "find_ct_cases",
    "split_ids",
    "split_of",
]

SPLITS = ("train", "val", "test")
CACHE_ENV = "X2CT_CACHE_DIR"
"""Environment variable naming the cache folder (default ``~/.cache/x2ct``)."""
CACHE_VERSION = 2  # bump when the cached content changes meaning (2: whole-body cases)

_MASK_SUFFIXES = ("_seg-vert_msk", "_seg-subreg_msk", "_seg", "_msk", "_mask", "_label", "_labels")


# --- splits --------------------------------------------------------------------------------


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {fractions!r}"
        )
    return f


def split_of(case_id: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) of one id: a SHA-256 hash of
    (seed, id) mapped to [0, 1) and compared with the cumulative fractions."""
    f = _check_fractions(fractions)
    digest = hashlib.sha256(f"{int(seed)}:{case_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < f[0]:
        return "train"
    return "val" if u < f[0] + f[1] else "test"


def split_ids(
    ids: Iterable[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Deterministic train/val/test split by hashing each id (:func:`split_of`).

    Each id's split depends only on the id, ``fractions`` and ``seed``, so adding cases
    never moves existing ones; the sizes match ``fractions`` only on average (a small set
    can leave a split empty). Order within each split follows ``ids``.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("split_ids: ids must be unique")
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i in ids:
        out[split_of(i, fractions, seed)].append(i)
    return out


def _select(ids: list[str], split: str | None, fractions, seed: int) -> list[int]:
    if split is None:
        return list(range(len(ids)))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return [i for i, c in enumerate(ids) if split_of(c, fractions, seed) == split]


# --- X-rays of a CT --------------------------------------------------------------------------


def default_geometry(
    shape: Sequence[int],
    spacing: Sequence[float],
    detector_shape: Sequence[int] | None = None,
    angles: Sequence[float] = (0.0, 90.0),
    **kwargs,
) -> Geometry:
    """The datasets' default views: AP and lateral (0 and 90 degrees), cone beam with the
    Geometry defaults (sad 541 mm, sdd 949 mm; override through ``kwargs``) and a detector
    of (Z, max(X, Y)) pixels whose square pixels just cover the volume
    (:meth:`Geometry.fit`)."""
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing need three entries, got {shape}, {spacing}")
    if detector_shape is not None:
        detector_shape = tuple(int(n) for n in detector_shape)
    return Geometry.fit(shape, spacing, detector_shape, angles=tuple(angles), **kwargs)


def ct_to_drr(
    ct: torch.Tensor,
    geometry: Geometry,
    spacing: Sequence[float],
    window: Sequence[float] = HU_WINDOW,
    step: float = 0.5,
    pose: torch.Tensor | None = None,
) -> torch.Tensor:
    """Line integrals (DRRs) of a normalised CT: ``project(hu_to_mu(unit_to_hu(ct)))``.

    Args:
        ct: (1, X, Y, Z) or (B, 1, X, Y, Z) in [-1, 1].
        pose: views moved by (d_angle deg, d_u mm, d_v mm) per view, (V, 3) or for a batch
            (B, V, 3) (``x2ct.projector.project_posed``, the PyTorch path); None: nominal.
    Returns:
        (V, H, W) or (B, V, H, W) raw line integrals (divide by ``DRR_SCALE`` for networks).
    """
    batched = ct.ndim == 5
    mu = hu_to_mu(unit_to_hu(ct if batched else ct[None], window)).float()
    spacing = tuple(float(s) for s in spacing)
    if pose is None:
        drr = project(mu, geometry, spacing=spacing, step=step)
    else:
        pose = pose if pose.ndim == 3 else pose.expand(mu.shape[0], *pose.shape)
        drr = torch.cat([project_posed(mu[i : i + 1], geometry, pose[i], spacing, step)
                         for i in range(mu.shape[0])])
    return drr if batched else drr[0]


class _Base(Dataset):
    """Shared item assembly: DRR scaling and augmentation."""

    def __init__(self, geometry: Geometry, xray_scale: float, augment, window, seed: int):
        if not (xray_scale > 0):
            raise ValueError(f"xray_scale must be positive, got {xray_scale}")
        self.geometry = geometry
        self.xray_scale = float(xray_scale)
        self.augment = XrayAugment() if augment is True else (augment or None)
        if self.augment is not None and not isinstance(self.augment, XrayAugment):
            raise ValueError(f"augment must be a bool or an XrayAugment, got {augment!r}")
        self.window = tuple(float(w) for w in window)
        self.augment_seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draws (seeded by (seed, index, epoch)). With DataLoader
        workers, call it before creating the epoch's iterator (not with persistent workers)."""
        self.epoch = int(epoch)

    def _item(self, index: int, case_id: str, ct, drr, labels, spacing, views=None,
              drr_field=None, paths=None) -> dict:
        xrays = drr / self.xray_scale
        if self.augment is not None:
            g = augment_generator(self.augment_seed, index, self.epoch)
            if views is None:  # a field-only case: re-render along jittered angles
                geometry = self.augment.geometry(self.geometry, g)
                if geometry is not self.geometry:
                    drr = ct_to_drr(ct, geometry, spacing, self.window)
                    xrays = drr / self.xray_scale
            xrays = self.augment.intensity(xrays, g)
        item = {
            "ct": ct,
            "xrays": xrays.float(),
            "drr": drr.float(),
            "spacing": torch.tensor(spacing, dtype=torch.float32),
            "id": case_id,
        }
        if views is not None:
            item["views"] = views.float()
            item["drr_field"] = drr_field.float()
        if labels is not None:
            item["labels"] = labels.long()
        if paths is not None:
            item["paths"] = paths.float()
        return item


def _crops(crops: CropRange | None) -> CropRange | None:
    """``crops`` checked; None when it cuts no case (fraction 0)."""
    if crops is not None and not isinstance(crops, CropRange):
        raise ValueError(f"crops must be a CropRange or None, got {crops!r}")
    return None if crops is None or crops.fraction == 0 else crops


def _random_case(dataset, ct, mask, spine, rng: np.random.Generator,
                 crop_rng: np.random.Generator, case_id: str):
    """One training case of ``ct`` (located at ``spine``) for a dataset with ``placement``,
    ``acquisitions`` and ``crops`` ranges: the CT cut around its spine when ``crops`` draws
    a width (``crop_rng``), the field placed at random around the spine and the views drawn
    (``rng``, the same draws whether or not the CT is cut)."""
    from x2ct.data.cases import ct_case

    width = None if dataset.crops is None else dataset.crops.draw(crop_rng)
    placement = None
    if dataset.placement is not None:
        placement = dataset.placement.draw(spine.centre, rng)
    acquisition = None
    if dataset.acquisitions is not None:
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        acquisition = dataset.acquisitions.sample(dataset.geometry, g)
    return ct_case(ct, dataset.shape, dataset.spacing, dataset.geometry, mask=mask,
                   placement=placement, acquisition=acquisition, spine=spine,
                   case_id=case_id, window=dataset.window, materials=dataset.materials,
                   crop_mm=width)


class _CaseCache:
    """Cases (x2ct.data.cases.Case) stored as safetensors under ``root``, keyed by a hash
    of everything they are made from; an unreadable entry is rebuilt."""

    def __init__(self, root: Path | None):
        self.root = root

    def get(self, name: str, key: dict, build) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        if self.root is None:
            return build()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        path = self.root / f"{name}-{digest}.safetensors"
        if path.is_file():
            try:
                return load_file(path)
            except (SafetensorError, OSError, ValueError):
                pass  # unreadable entry: rebuild it
        tensors = build()
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"name": name})
        return tensors


def _case_tensors(case, window) -> dict[str, torch.Tensor]:
    out = {
        "ct": hu_to_unit(case.hu, window)[None].float().contiguous(),
        "drr": case.drr.float().contiguous(),
        "drr_field": case.drr_field.float().contiguous(),
        "views": case.views.double().contiguous(),
        "placement": torch.tensor(
            [*case.placement.centre, *np.asarray(case.placement.rotation).ravel()],
            dtype=torch.float64,
        ),
    }
    if case.labels is not None:
        out["labels"] = case.labels[None].to(torch.int16).contiguous()
    if case.paths is not None:
        out["paths"] = case.paths.float().contiguous()
    return out


CASE_CODE_PACKAGES = ("x2ct.data", "x2ct.projector", "x2ct.kernels")
"""The packages whose code draws phantoms, locates the spine, cuts the field and renders the
X-rays of a case: :func:`case_code_version` hashes every module in them."""


def case_code_files() -> list[Path]:
    """Every Python file of :data:`CASE_CODE_PACKAGES`, in a fixed order. Whole packages
    rather than a list of modules, so that a new module cannot be left out; the price is
    that an edit to a module that does not change cases (a file reader, say) also re-makes
    cached cases."""
    import importlib

    files = []
    for name in CASE_CODE_PACKAGES:
        root = Path(importlib.import_module(name).__file__).resolve().parent
        files += sorted(root.rglob("*.py"))
    return files


@functools.cache
def case_code_version() -> str:
    """A hash of the code that makes cases (:func:`case_code_files`): cached cases and
    latents made by older code are never reused. Computed once per process (every case's
    cache key asks for it; the code does not change under a running process)."""
    h = hashlib.sha256()
    for f in case_code_files():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# --- phantoms --------------------------------------------------------------------------------


def phantom_offset(seed: int, max_shift_mm: float) -> tuple[float, float, float]:
    """The (x, y, z) mm offset of phantom ``seed``'s anatomy: uniform in
    [-max_shift_mm, max_shift_mm] per axis from its own stream (the phantom's anatomy,
    drawn from ``seed`` alone, does not change with it)."""
    if max_shift_mm == 0:
        return (0.0, 0.0, 0.0)
    rng = np.random.default_rng([int(seed), 0x0FF5E7])
    return tuple(float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, 3))


class PhantomDataset(_Base):
    """Procedural spine phantoms (:func:`x2ct.data.phantom.spine_phantom`).

    Whole body (the default, ``whole_body=True``): each phantom is drawn at real size on a
    grid that holds its torso (:func:`x2ct.data.cases.phantom_body`), the field is cut
    around its spine and the X-rays are rendered through the whole body
    (:func:`x2ct.data.cases.ct_case`, the path of a patient's CT), ``placements`` times
    per phantom with the field placed at random (``placement``, a
    :class:`~x2ct.data.cases.PlacementRange`; None: centred on the spine) and the views
    drawn from ``acquisitions`` (an ``AcquisitionRange``; None: ``geometry``'s views).
    Items then carry ``views`` (V, 15), the acquisition's view vectors. Cases are cached
    on disk under ``cache_dir`` (default ``<default_cache_dir()>/phantoms``; False: no
    disk cache), keyed by the phantom and case code, so a changed phantom is redrawn.

    Field only (``whole_body=False``): the phantom is drawn on the field's grid and the
    X-rays are the DRRs of that grid (``xrays == project(ct) / xray_scale``), placed off
    centre by ``max_shift_mm`` (:func:`phantom_offset`). Fast; what autoencoders train on.

    Case ``i`` is seed ``seed + i // placements`` (id ``phantom_{seed:04d}``, with ``_k``
    for its k-th placement when ``placements`` > 1); with ``split`` only the phantoms
    hashed into that split are kept. Items are also memoised in an LRU of ``cache_size``.

    Args:
        n: number of phantoms before the split.
        seed: seed of the first phantom.
        shape, spacing: the field's size (voxels) and voxel size (mm).
        geometry: the nominal views; default :func:`default_geometry`.
        region: ``"lumbar"`` or ``"thoracic"`` (or a sequence, assigned to seeds in turn:
            seed s gets ``regions[s % len(regions)]``).
        xray_scale: divisor of the DRRs (default ``DRR_SCALE``).
        augment: False, True (:class:`XrayAugment` defaults) or an :class:`XrayAugment`.
        split, split_fractions, split_seed: see :func:`split_ids`.
        window: HU window mapped to [-1, 1].
        cache_size: cases memoised in memory (0: none).
        max_shift_mm: field-only phantoms: anatomy offset range (mm per axis).
        whole_body, placement, acquisitions, placements, options, cache_dir: see above;
            ``options`` is passed to the phantom (its feature switches).
        materials: whole-body items also carry ``paths`` (3, V, H, W), the basis-material
            paths the radiograph simulator turns into radiographs.
        crops: a :class:`~x2ct.data.cases.CropRange`: that fraction of whole-body cases is
            cut around the spine before its X-rays are rendered, as spine CT crops are
            (None: every case sees the whole body).
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shape: Sequence[int] = (64, 64, 64),
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        geometry: Geometry | None = None,
        region: str | Sequence[str] = "lumbar",
        xray_scale: float = DRR_SCALE,
        augment: bool | XrayAugment = False,
        split: str | None = None,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        window: Sequence[float] = HU_WINDOW,
        cache_size: int = 64,
        max_shift_mm: float = 0.0,
        whole_body: bool = True,
        placement: PlacementRange | None = None,
        acquisitions: AcquisitionRange | None = None,
        placements: int = 1,
        options=None,
        cache_dir: str | os.PathLike | bool | None = None,
        materials: bool = False,
        crops: CropRange | None = None,
    ):
        if int(n) < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if not (math.isfinite(max_shift_mm) and max_shift_mm >= 0):
            raise ValueError(f"max_shift_mm must be >= 0 mm, got {max_shift_mm}")
        if int(placements) < 1:
            raise ValueError(f"placements must be >= 1, got {placements}")
        self.crops = _crops(crops)
        if self.crops is not None and not whole_body:
            raise ValueError("crops cut a whole-body phantom around its spine: "
                             "give whole_body=True or no crops")
        self.max_shift_mm = float(max_shift_mm)
        self.regions = (region,) if isinstance(region, str) else tuple(region)
        for r in self.regions:
            if r not in REGIONS:
                raise ValueError(f"region must be one of {REGIONS}, got {r!r}")
        self.region = self.regions[0]
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        geometry = default_geometry(self.shape, self.spacing) if geometry is None else geometry
        super().__init__(geometry, xray_scale, augment, window, seed)
        self.whole_body = bool(whole_body)
        self.placement = placement
        self.acquisitions = acquisitions
        self.placements = int(placements)
        self.options = options
        self.materials = bool(materials)
        seeds = [int(seed) + i for i in range(int(n))]
        keep = _select([phantom_id(s) for s in seeds], split, split_fractions, split_seed)
        self.seeds = [seeds[i] for i in keep]
        self.ids = [
            phantom_id(s) + (f"_{k}" if self.placements > 1 else "")
            for s in self.seeds
            for k in range(self.placements)
        ]
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, dict] = OrderedDict()
        if cache_dir is False or not self.whole_body:
            self._disk = _CaseCache(None)
        else:
            root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
            self._disk = _CaseCache(Path(root).expanduser() / "phantoms")

    def __len__(self) -> int:
        return len(self.ids)

    def region_of(self, seed: int) -> str:
        return self.regions[seed % len(self.regions)]

    def _build(self, seed: int) -> list[dict[str, torch.Tensor]]:
        """Every placement of phantom ``seed`` (one drawing of its body)."""
        from x2ct.data.cases import locate, phantom_body

        body, labels = phantom_body(seed, self.region_of(seed), self.spacing, self.shape,
                                    self.options)
        spine = locate(body.hu, body.spacing, labels)
        out = []
        for k in range(self.placements):
            rng = np.random.default_rng([int(seed), int(k), 0x91ACE])
            crop_rng = np.random.default_rng([int(seed), int(k), 0xC809])
            case = _random_case(self, body, labels, spine, rng, crop_rng, phantom_id(seed))
            out.append(_case_tensors(case, self.window))
        return out

    def _case(self, index: int) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        seed, k = self.seeds[index // self.placements], index % self.placements
        if self.whole_body:
            key = {
                "version": case_code_version(), "seed": seed, "k": k,
                "region": self.region_of(seed), "shape": self.shape, "spacing": self.spacing,
                "geometry": self.geometry.to_dict(), "window": self.window,
                "placement": None if self.placement is None else self.placement.to_dict(),
                "acquisitions": None if self.acquisitions is None
                else self.acquisitions.to_dict(),
                "options": repr(self.options),
                "materials": self.materials,
                # (no crops: caches made before the option keep their key)
                **({"crops": self.crops.to_dict()} if self.crops is not None else {}),
            }
            built: list = []

            def build(k=k):
                if not built:
                    built.extend(self._build(seed))
                return built[k]

            case = self._disk.get(self.ids[index], key, build)
            for j in range(self.placements):  # store the seed's other placements too
                if built and j != k:
                    self._disk.get(phantom_id(seed) + f"_{j}", {**key, "k": j},
                                   lambda j=j: built[j])
        else:
            offset = phantom_offset(seed, self.max_shift_mm)
            ph = spine_phantom(self.shape, self.spacing, seed=seed, region=self.region_of(seed),
                               offset_mm=offset)
            ct = hu_to_unit(torch.from_numpy(ph.hu), self.window)[None]  # (1, X, Y, Z)
            case = {
                "ct": ct,
                "drr": ct_to_drr(ct, self.geometry, self.spacing, self.window),
                "labels": torch.from_numpy(ph.labels)[None],
            }
        if self.cache_size > 0:
            self._cache[index] = case
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return case

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} phantoms")
        index %= len(self)
        c = self._case(index)
        return self._item(index, self.ids[index], c["ct"], c["drr"], c.get("labels"),
                          self.spacing, c.get("views"), c.get("drr_field"), c.get("paths"))


# --- folders of CTs --------------------------------------------------------------------------


@dataclass(frozen=True)
class CTCase:
    """One CT volume found in a folder, with its vertebra mask when there is one."""

    id: str
    image: Path
    label: Path | None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_ct_cases(root: str | os.PathLike) -> list[CTCase]:
    """CT volumes under ``root`` (searched recursively; hidden files and folders skipped).

    - VerSe: ``<id>_ct.nii.gz`` with ``<id>_seg-vert_msk.nii.gz`` anywhere under root
      (e.g. ``rawdata/sub-x/`` and ``derivatives/sub-x/``); the id drops ``_ct``.
    - CTSpine1K: ``<id>.nii.gz`` volumes with ``<id>_seg.nii.gz`` masks.
    - Any other ``.nii``/``.nii.gz``: a volume without mask.

    Files whose names end in a mask suffix (``_seg-vert_msk``, ``_seg``, ``_msk``,
    ``_mask``, ``_label(s)``) are masks, never volumes. When a mask name occurs in several
    folders, the one whose folder name matches the volume's is taken. Ids are file stems,
    or relative paths where stems collide. Sorted by id.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no volume found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of CT volumes")
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.name.lower().endswith((".nii", ".nii.gz"))
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    masks: dict[str, list[Path]] = {}
    volumes: list[Path] = []
    for p in files:
        if _stem(p).endswith(_MASK_SUFFIXES):
            masks.setdefault(_stem(p), []).append(p)
        else:
            volumes.append(p)
    if not volumes:
        raise ValueError(
            f"{root}: no CT volumes found (expected VerSe '*_ct.nii.gz' with "
            "'*_seg-vert_msk.nii.gz', CTSpine1K volumes with '*_seg.nii.gz' masks, or "
            ".nii/.nii.gz files)"
        )

    def mask_for(base: str, volume: Path, suffixes: Sequence[str]) -> Path | None:
        for suffix in suffixes:
            found = masks.get(base + suffix)
            if found:
                same = [m for m in found if m.parent.name == volume.parent.name]
                return (same or found)[0]
        return None

    cases = []
    for v in volumes:
        stem = _stem(v)
        if stem.endswith("_ct"):
            base = stem[:-3]
            label = mask_for(base, v, ("_seg-vert_msk", "_seg", "_msk"))
        else:
            base = stem
            label = mask_for(
                base, v, ("_seg", "_seg-vert_msk", "_msk", "_mask", "_label", "_labels")
            )
        cases.append((base, v, label))
    counts: dict[str, int] = {}
    for base, _, _ in cases:
        counts[base] = counts.get(base, 0) + 1
    out = []
    for base, v, label in cases:
        case_id = base
        if counts[base] > 1:
            rel = v.relative_to(root)
            case_id = str(rel.parent / base).replace(os.sep, "/")
        out.append(CTCase(case_id, v, label))
    return sorted(out, key=lambda c: c.id)


def default_cache_dir() -> Path:
    """``$X2CT_CACHE_DIR``, else ``$XDG_CACHE_HOME/x2ct``, else ``~/.cache/x2ct``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "x2ct"


class CTFolderDataset(_Base):
    """CT volumes of a folder (VerSe, CTSpine1K or plain NIfTI, :func:`find_ct_cases`),
    each made into cases once by :func:`x2ct.data.cases.ct_case` (the field around its
    spine, X-rays through the whole CT: the path of ``reconstruct.py --ct``) and served
    from a disk cache.

    ``placements`` cases per CT: with ``placement`` (a PlacementRange) each field is
    placed at random around the located spine (the first centred on it otherwise), with
    ``acquisitions`` each case's views are drawn from that range.

    Cache: ``<cache_dir>/ctfolder/<id>_<k>-<key>.safetensors`` holding ``ct`` (1, X, Y, Z)
    in [-1, 1], ``drr`` and ``drr_field`` (V, H, W) line integrals, ``views`` (V, 15),
    ``placement`` and ``labels`` (1, X, Y, Z) int16 when there is a mask; ``key`` hashes
    the volume's and mask's resolved paths, sizes and mtimes, every setting and the case
    code's version, so an edited file or a new setting makes a new entry. Written
    atomically; an unreadable entry is rebuilt. ``cache_dir`` may not lie inside ``root``.

    Args:
        root: the data folder.
        spacing, shape: model voxel size (mm) and field size (voxels).
        geometry: the nominal views; default :func:`default_geometry`.
        cache_dir: cache folder; default :func:`default_cache_dir`.
        split, split_fractions, split_seed: see :func:`split_ids` (on case ids).
        window: HU window mapped to [-1, 1].
        xray_scale: divisor of the DRRs (default ``DRR_SCALE``).
        augment: False, True or an :class:`XrayAugment`.
        with_labels: include ``labels`` when a mask exists (None or True) or never (False).
            A folder mixing cases with and without masks gives items with different keys;
            pass False to batch them together.
        placement, acquisitions, placements: see above.
        materials: items also carry ``paths`` (3, V, H, W) for the radiograph simulator.
        crops: a :class:`~x2ct.data.cases.CropRange`: that fraction of cases is cut tighter
            around the spine before its X-rays are rendered (None: the CT as it is).
        seed: augmentation, placement and crop seed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        shape: Sequence[int] = (64, 64, 64),
        geometry: Geometry | None = None,
        cache_dir: str | os.PathLike | None = None,
        split: str | None = None,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        window: Sequence[float] = HU_WINDOW,
        xray_scale: float = DRR_SCALE,
        augment: bool | XrayAugment = False,
        with_labels: bool | None = None,
        seed: int = 0,
        placement: PlacementRange | None = None,
        acquisitions: AcquisitionRange | None = None,
        placements: int = 1,
        materials: bool = False,
        crops: CropRange | None = None,
    ):
        self.root = Path(root)
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.shape) != 3 or len(self.spacing) != 3:
            raise ValueError(f"shape and spacing need three entries, got {shape}, {spacing}")
        if int(placements) < 1:
            raise ValueError(f"placements must be >= 1, got {placements}")
        self.crops = _crops(crops)
        geometry = default_geometry(self.shape, self.spacing) if geometry is None else geometry
        super().__init__(geometry, xray_scale, augment, window, seed)
        cases = find_ct_cases(self.root)
        keep = _select([c.id for c in cases], split, split_fractions, split_seed)
        self.cases = [cases[i] for i in keep]
        self.placement = placement
        self.acquisitions = acquisitions
        self.placements = int(placements)
        self.materials = bool(materials)
        self.seed = int(seed)
        self.ids = [
            c.id + (f"_{k}" if self.placements > 1 else "")
            for c in self.cases
            for k in range(self.placements)
        ]
        self.with_labels = with_labels is not False
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        root_r, cache_r = self.root.resolve(), cache.resolve()
        if cache_r == root_r or root_r in cache_r.parents:
            raise ValueError(
                f"cache_dir {cache} lies inside the data folder {self.root}; "
                "choose a folder outside it"
            )
        self.cache_dir = cache / "ctfolder"
        self._disk = _CaseCache(self.cache_dir)

    def __len__(self) -> int:
        return len(self.ids)

    def _key(self, case: CTCase, k: int) -> dict:
        def stat(p: Path | None):
            if p is None:
                return None
            st = p.stat()
            return [str(p.resolve()), st.st_size, st.st_mtime_ns]

        return {
            "version": [CACHE_VERSION, case_code_version()],
            "image": stat(case.image),
            "label": stat(case.label),
            "spacing": self.spacing,
            "shape": self.shape,
            "window": self.window,
            "geometry": self.geometry.to_dict(),
            "k": k,
            "seed": self.seed,
            "placement": None if self.placement is None else self.placement.to_dict(),
            "acquisitions": None if self.acquisitions is None else self.acquisitions.to_dict(),
            "materials": self.materials,
            **({"crops": self.crops.to_dict()} if self.crops is not None else {}),
        }

    def _build(self, case: CTCase) -> list[dict[str, torch.Tensor]]:
        """Every placement of one CT (loaded and located once)."""
        from x2ct.data.cases import locate
        from x2ct.data.io import check_hounsfield, load_ct

        ct = load_ct(case.image)
        check_hounsfield(ct.hu, str(case.image))  # before the spine is looked for
        mask = None
        if case.label is not None:
            mask = np.asarray(load_ct(case.label).hu).round().astype(np.int16)
        spine = locate(ct.hu, ct.spacing, mask)
        out = []
        for k in range(self.placements):
            digest = hashlib.sha256(f"{self.seed}:{case.id}:{k}".encode()).digest()
            rng = np.random.default_rng(list(digest[:8]))
            crop_rng = np.random.default_rng(list(digest[8:16]))
            c = _random_case(self, ct, mask, spine, rng, crop_rng, case.id)
            c.info["source"] = str(case.image)
            out.append(_case_tensors(c, self.window))
        return out

    def cache_path(self, index: int) -> Path:
        """The cache file of item ``index`` for the current settings."""
        case, k = self.cases[index // self.placements], index % self.placements
        key = self._key(case, k)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"{self._name(case, k)}-{digest}.safetensors"

    @staticmethod
    def _name(case: CTCase, k: int) -> str:
        return f"{case.id.replace('/', '__')}_{k}"

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        case, k = self.cases[index // self.placements], index % self.placements
        built: list = []

        def build(j):
            if not built:
                built.extend(self._build(case))
            return built[j]

        tensors = self._disk.get(self._name(case, k), self._key(case, k), lambda: build(k))
        for j in range(self.placements):  # store the other placements made with it
            if built and j != k:
                self._disk.get(self._name(case, j), self._key(case, j), lambda j=j: built[j])
        return tensors

    def prepare(self, progress: bool = True) -> None:
        """Build every missing cache entry now (with a progress bar)."""
        from tqdm import tqdm

        for i in tqdm(range(len(self)), desc="preprocess", unit="case", disable=not progress):
            self._load(i)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cases")
        index %= len(self)
        t = self._load(index)
        labels = t.get("labels") if self.with_labels else None
        return self._item(index, self.ids[index], t["ct"], t["drr"], labels, self.spacing,
                          t["views"], t["drr_field"], t.get("paths"))
