"""Test radiographs that take the user's path: simulated X-ray-room images written as files.

For ``eval/evaluate.py --xray-style radiograph``: each test case's whole body is imaged by
x2ct's radiograph simulator (``x2ct.projector.simulate_radiograph``) the way an X-ray
room or C-arm would image the patient, not the way training renders DRRs:

- a flat-panel detector 1.5 times the model's field at the isocentre, with square pixels
  of 0.15-1 mm drawn per case (rays traced on a grid of about 1 mm at the detector, then
  interpolated, as ``python -m x2ct.projector --radiograph`` does);
- source-to-isocentre and source-to-detector distances drawn within the model's accepted
  range (``config.acquisitions``; both views share them, as on a C-arm);
- a random ``RadiographStyle`` per view (tube voltage, filtration, scatter, noise, blur,
  heel effect, display curve);
- stored as an 8-bit PNG with a ``geometry.json`` that states the geometry truthfully, or
  as a 12-bit DX DICOM whose tags state it (``--radiograph-format dicom``), then read back
  through ``x2ct.data.prepare_radiographs``, exactly as ``reconstruct.py --ap --lateral``
  reads a user's files.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

__all__ = ["RadiographCase", "radiograph_case"]


@dataclasses.dataclass
class RadiographCase:
    xrays: torch.Tensor  # (1, V, H, W) on the model's detector, display values
    geometries: list  # one single-view Geometry per view, on the model's detector
    mirror: tuple[bool, bool]
    settings: dict  # what was drawn (pixel size, distances, kV, ...)


FILE_FORMATS = {"png": 8, "dicom": 12}
"""Formats of the test radiographs and their bit depth: an 8-bit PNG with a geometry.json
(a screenshot or an export), or a 12-bit DX DICOM whose tags alone carry the geometry
(DistanceSourceToDetector, DistanceSourceToPatient, ImagerPixelSpacing, ViewPosition,
PatientOrientation) and its PhotometricInterpretation, as an X-ray room exports it."""


def radiograph_case(case, nominal, acquisitions, folder: Path, seed: int,
                    pixel_range=(0.15, 1.0), file_format: str = "png") -> RadiographCase:
    """Radiograph files of ``case`` (a ``Case`` made with ``keep_body=True``) written
    into ``folder`` as ``file_format`` (:data:`FILE_FORMATS`), and the model input read
    back from them. The draws (pixel size, distances, styles) do not depend on the
    format, so the formats image each case alike but for the stored bits."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {sorted(FILE_FORMATS)}, got "
                         f"{file_format!r}")
    bits = FILE_FORMATS[file_format]
    from x2ct.data import (
        RadiographView,
        prepare_radiographs,
        write_geometry_json,
        write_radiograph_dicom,
        write_radiograph_png,
        x2ct_orientation,
    )
    from x2ct.data.scene import views_in_body
    from x2ct.projector import Geometry, isocentre_pixel, view_vectors
    from x2ct.projector.radiograph import RadiographStyle, material_paths, simulate_radiograph

    if case.body is None:
        raise ValueError("radiograph_case needs a Case made with keep_body=True")
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    lo, hi = (math.log(v) for v in pixel_range)
    pixel = math.exp(lo + (hi - lo) * u[0])
    sad_lo, sad_hi = (math.log(v) for v in acquisitions.sad)
    sad = math.exp(sad_lo + (sad_hi - sad_lo) * u[1])
    m_lo, m_hi = acquisitions.magnification
    sdd = sad * (m_lo + (m_hi - m_lo) * u[2])
    field_mm = [1.5 * n * p for n, p in zip(nominal.detector_shape, isocentre_pixel(nominal))]
    shape = tuple(max(8, round(f * sdd / sad / pixel)) for f in field_mm)
    render = tuple(max(8, round(f * sdd / sad / 1.0)) for f in field_mm)  # ~1 mm grid
    styles = [dataclasses.replace(RadiographStyle.sample(g, view=v), bits=bits)
              for v in ("ap", "lateral")[: nominal.num_views]]
    folder.mkdir(parents=True, exist_ok=True)
    entries, files = [], []
    for k, (angle, style) in enumerate(zip(nominal.angles, styles)):
        coarse = Geometry(sad=sad, sdd=sdd, detector_shape=render,
                          pixel_spacing=tuple(n * pixel / r for n, r in zip(shape, render)),
                          angles=(angle,))
        body_views = views_in_body(view_vectors(coarse), case.placement).float()
        with torch.no_grad():
            paths = material_paths(torch.as_tensor(case.body)[None, None], body_views, render,
                                   case.spacing, 0.5)
            paths = torch.nn.functional.interpolate(
                paths.flatten(1, 2), size=shape, mode="bilinear", align_corners=False
            ).unflatten(1, (3, 1))
            shown = simulate_radiograph(paths, (pixel, pixel), [[style]], g).display[0, 0]
        detector = Geometry(sad=sad, sdd=sdd, detector_shape=shape,
                            pixel_spacing=(pixel, pixel), angles=(angle,))
        name = ("ap", "lateral")[k] if k < 2 else f"view{k}"
        photometric = "MONOCHROME1" if style.invert else "MONOCHROME2"
        if file_format == "dicom":
            path = folder / f"{name}.dcm"
            write_radiograph_dicom(path, shown.numpy(), detector, style.bits, photometric,
                                   kvp=style.kvp)
        else:
            path = folder / f"{name}.png"
            write_radiograph_png(path, shown.numpy(), style.bits)
            entries.append(RadiographView(name, path.name, detector, "display", style.bits,
                                          photometric, x2ct_orientation(angle)))
        files.append(path)
    if entries:
        write_geometry_json(folder / "geometry.json", entries)
    read = prepare_radiographs(files, nominal)
    settings = {"pixel_mm": pixel, "sad_mm": sad, "sdd_mm": sdd, "detector": list(shape),
                "kvp": [s.kvp for s in styles], "bits": bits, "coverage": read.coverage}
    return RadiographCase(torch.from_numpy(read.xrays), read.geometries, read.mirror, settings)
