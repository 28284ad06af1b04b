"""Data: NIfTI and X-ray I/O, CT preprocessing, procedural spine phantoms, datasets.

Conventions (DESIGN.md): RAS+ voxel order (X right, Y anterior, Z superior), millimetres,
volumes centred on the origin, HU window [-1000, 2000] mapped to [-1, 1], X-rays as
``drr / DRR_SCALE``.

Names are imported from their modules on first use (PEP 562), so that
``python -m x2ct.data.phantom`` runs without the package having imported it already.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "augment": ["XrayAugment", "augment_generator"],
    "datasets": [
        "CTCase",
        "CTFolderDataset",
        "PhantomDataset",
        "ct_to_drr",
        "default_cache_dir",
        "default_geometry",
        "find_ct_cases",
        "phantom_offset",
        "split_ids",
        "split_of",
    ],
    "io": ["CTImage", "centred_affine", "load_ct", "load_xray", "save_ct", "save_xray_png"],
    "phantom": [
        "DISC_LABEL",
        "LEVEL_NAMES",
        "SACRUM_LABEL",
        "Phantom",
        "PhantomOptions",
        "body_bounds",
        "phantom_id",
        "spine_phantom",
        "whole_body_grid",
    ],
    "transforms": [
        "BONE_HU",
        "HU_WINDOW",
        "AntiAliasd",
        "CropPadToSpined",
        "HUToUnitd",
        "LoadCTd",
        "UnitToHUd",
        "hu_to_unit",
        "preprocess",
        "spine_centre",
        "unit_to_hu",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "AntiAliasd",
    "BONE_HU",
    "CTCase",
    "CTFolderDataset",
    "CTImage",
    "CropPadToSpined",
    "DISC_LABEL",
    "HUToUnitd",
    "HU_WINDOW",
    "LEVEL_NAMES",
    "LoadCTd",
    "Phantom",
    "PhantomDataset",
    "PhantomOptions",
    "SACRUM_LABEL",
    "UnitToHUd",
    "XrayAugment",
    "augment_generator",
    "body_bounds",
    "centred_affine",
    "ct_to_drr",
    "default_cache_dir",
    "default_geometry",
    "find_ct_cases",
    "hu_to_unit",
    "load_ct",
    "load_xray",
    "phantom_id",
    "phantom_offset",
    "preprocess",
    "save_ct",
    "save_xray_png",
    "spine_centre",
    "spine_phantom",
    "split_ids",
    "split_of",
    "unit_to_hu",
    "whole_body_grid",
]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'x2ct.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"x2ct.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
