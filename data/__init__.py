"""Data: NIfTI and X-ray I/O, radiograph files with their geometry, CT preprocessing,
procedural spine phantoms, datasets.

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
    "cases": [
        "Case",
        "CropRange",
        "PlacementRange",
        "SpinePoint",
        "crop_around_spine",
        "ct_case",
        "locate",
        "phantom_body",
        "phantom_case",
        "truncation_message",
    ],
    "scene": ["Placement", "random_placement", "render_drr", "sample_field"],
    "radiographs": [
        "RadiographInput",
        "ResampledView",
        "area_sample",
        "check_views",
        "prepare_radiographs",
        "resample_radiograph",
        "unmirror",
    ],
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
    "localise": ["CONFIDENCE_WARN", "SpineLocation", "locate_spine"],
    "io": ["CTImage", "centred_affine", "check_hounsfield", "load_ct", "load_xray", "save_ct",
           "save_xray_png"],
    "dicom_ct": ["load_dicom_series"],
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
    "xray_files": [
        "GEOMETRY_FORMAT",
        "RadiographFile",
        "RadiographView",
        "read_geometry_json",
        "read_radiograph",
        "write_geometry_json",
    ],
    "xray_orientation": ["view_angle", "x2ct_orientation"],
    "xray_write": ["write_radiograph_dicom", "write_radiograph_png"],
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
    "augment_generator",
    "body_bounds",
    "BONE_HU",
    "Case",
    "centred_affine",
    "check_hounsfield",
    "check_views",
    "CONFIDENCE_WARN",
    "CropPadToSpined",
    "CropRange",
    "ct_case",
    "ct_to_drr",
    "CTCase",
    "CTFolderDataset",
    "CTImage",
    "crop_around_spine",
    "default_cache_dir",
    "default_geometry",
    "DISC_LABEL",
    "find_ct_cases",
    "GEOMETRY_FORMAT",
    "hu_to_unit",
    "HU_WINDOW",
    "HUToUnitd",
    "LEVEL_NAMES",
    "load_ct",
    "load_dicom_series",
    "load_xray",
    "LoadCTd",
    "locate",
    "locate_spine",
    "Phantom",
    "phantom_body",
    "phantom_case",
    "phantom_id",
    "phantom_offset",
    "PhantomDataset",
    "PhantomOptions",
    "Placement",
    "PlacementRange",
    "area_sample",
    "prepare_radiographs",
    "preprocess",
    "RadiographFile",
    "RadiographInput",
    "RadiographView",
    "random_placement",
    "read_geometry_json",
    "read_radiograph",
    "render_drr",
    "resample_radiograph",
    "ResampledView",
    "SACRUM_LABEL",
    "sample_field",
    "save_ct",
    "save_xray_png",
    "spine_centre",
    "spine_phantom",
    "SpineLocation",
    "SpinePoint",
    "split_ids",
    "split_of",
    "truncation_message",
    "unit_to_hu",
    "UnitToHUd",
    "unmirror",
    "view_angle",
    "whole_body_grid",
    "write_geometry_json",
    "write_radiograph_dicom",
    "write_radiograph_png",
    "x2ct_orientation",
    "XrayAugment",
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
