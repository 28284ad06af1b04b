"""Views and patient orientation of radiographs in x2ct's pixel convention.

x2ct's gantry angle t puts the source at ``sad * (-sin t, cos t, 0)`` in RAS: AP 0, PA
180, source at the patient's left 90, at the patient's right 270. An image in x2ct's
convention has row 0 most superior and columns along ``u(t) = (-cos t, -sin t, 0)``
(DESIGN.md "Views"). Patient Orientation (0020,0020) names the patient directions of
increasing column and increasing row (DICOM PS3.3 C.7.6.1.1.1), e.g. ["L", "F"].
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "VIEW_ANGLES",
    "display_orientation",
    "from_x2ct",
    "to_x2ct",
    "view_angle",
    "x2ct_orientation",
]

VIEW_ANGLES = {"AP": 0.0, "PA": 180.0, "RL": 90.0, "LL": 270.0, "LATERAL": 90.0,
                "LAT": 90.0, "LATERAL_LEFT": 270.0, "LATERAL_RIGHT": 90.0}
_LETTERS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0),
            "H": (0, 0, 1), "F": (0, 0, -1)}

def view_angle(view) -> float:
    """x2ct's gantry angle (degrees) of a view given as an angle or a name: "ap", "pa",
    "ll" (left lateral: source on the patient's right, 270), "rl" (90), "lateral" (90)."""
    if isinstance(view, (int, float)) and not isinstance(view, bool):
        if not math.isfinite(view):
            raise ValueError(f"view angle must be finite, got {view!r}")
        return float(view) % 360.0
    key = str(view).strip().upper()
    if key not in VIEW_ANGLES:
        raise ValueError(
            f"unknown view {view!r}; expected an angle in degrees or one of "
            f"{sorted(k.lower() for k in VIEW_ANGLES)}"
        )
    return VIEW_ANGLES[key]


def _letter(direction: np.ndarray) -> str:
    """The patient-direction letter nearest to a RAS direction."""
    best = max(_LETTERS, key=lambda k: float(np.dot(_LETTERS[k], direction)))
    return best


def x2ct_orientation(angle: float) -> tuple[str, str]:
    """Patient Orientation of an image in x2ct's convention at gantry angle ``angle``:
    columns along ``u(t) = (-cos t, -sin t, 0)``, rows toward the feet (AP: ("L", "F"))."""
    t = math.radians(angle)
    return _letter(np.array([-math.cos(t), -math.sin(t), 0.0])), "F"


def display_orientation(angle: float) -> tuple[str, str]:
    """The usual display convention (see the module docstring) at ``angle``."""
    a = angle % 360.0
    if min(abs(a - 90.0), abs(a - 270.0)) < 45.0:
        return ("A", "F") if abs(a - 90.0) < 45.0 else ("P", "F")
    return "L", "F"


def _vector(value: str, where: str) -> np.ndarray:
    value = value.strip().upper()
    if not value or any(c not in _LETTERS for c in value):
        raise ValueError(
            f"{where}: Patient Orientation value {value!r} is not made of the letters "
            "L, R, A, P, H, F"
        )
    v = np.sum([_LETTERS[c] for c in value], axis=0).astype(np.float64)
    return v / np.linalg.norm(v)


def _orientation_ops(orientation, angle: float, where: str) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that take an image stored in ``orientation``
    to x2ct's convention at ``angle`` (applied in that order)."""
    if len(orientation) != 2:
        raise ValueError(f"{where}: Patient Orientation must have two values, got "
                         f"{list(orientation)}")
    along_row, along_col = (_vector(v, where) for v in orientation)
    transpose = abs(along_row[2]) > abs(along_col[2])  # rows run head-feet
    if transpose:
        along_row, along_col = along_col, along_row
    if abs(along_col[2]) < 0.5:
        raise ValueError(
            f"{where}: Patient Orientation {list(orientation)} has no head-feet axis; x2ct "
            "views are taken about the patient's long axis"
        )
    t = math.radians(angle)
    d = float(np.dot(along_row, [-math.cos(t), -math.sin(t), 0.0]))
    if abs(d) < 0.5:
        raise ValueError(
            f"{where}: Patient Orientation {list(orientation)} does not fit a view at "
            f"{angle:g} degrees (expected columns toward {x2ct_orientation(angle)[0]!r} or "
            "its opposite); check the view position"
        )
    # x2ct's row 0 is superior; its columns run along u(t).
    return transpose, bool(along_col[2] > 0), d < 0


def to_x2ct(pixels: np.ndarray, orientation, angle: float, where: str) -> np.ndarray:
    """``pixels`` stored in ``orientation``, flipped (or transposed) to x2ct's convention."""
    transpose, flip_rows, flip_cols = _orientation_ops(orientation, angle, where)
    if transpose:
        pixels = pixels.T
    if flip_rows:
        pixels = pixels[::-1]
    if flip_cols:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def from_x2ct(pixels: np.ndarray, orientation, angle: float, where: str) -> np.ndarray:
    """The inverse of :func:`to_x2ct`: an x2ct-convention image stored in ``orientation``."""
    transpose, flip_rows, flip_cols = _orientation_ops(orientation, angle, where)
    if flip_cols:
        pixels = pixels[:, ::-1]
    if flip_rows:
        pixels = pixels[::-1]
    if transpose:
        pixels = pixels.T
    return np.ascontiguousarray(pixels)
