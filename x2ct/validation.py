"""Type and range checks of config dicts read from JSON, before anything is built.

``check_fields(cls, d, source)`` holds each entry of ``d`` to the annotation of the
dataclass field of the same name (``int``, ``float``, ``bool``, ``str``, ``dict``,
``tuple[int, ...]``, ``tuple[float, float]``, ``X | None``): a string where a number
belongs, a number where a list belongs, a float NaN, an unknown or a missing required
field is a ValueError naming the source (the file) and the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any

__all__ = ["build_config", "check_fields", "check_range", "parse_json", "read_json_config"]


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # JSON writes 2.0 as 2.0, but hand-written configs say 2
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        )
    if tp is str:
        return isinstance(value, str)
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, t) for v, t in zip(value, args))
    return True  # an annotation this checker does not know: left to __post_init__


def check_fields(
    cls: type, d: Any, source: str | os.PathLike, required: typing.Iterable[str] = ()
) -> None:
    """ValueError naming ``source`` and the field when ``d`` is not a dict of ``cls``'s
    fields with values of their annotated types, or lacks a ``required`` field."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object of {cls.__name__} fields, "
                         f"got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} fields {unknown}")
    missing = sorted(set(required) - set(d))
    if missing:
        raise ValueError(f"{source}: {cls.__name__} fields {missing} are missing")
    for name, value in d.items():
        tp = hints.get(name, Any)
        if not _matches(value, tp):
            raise ValueError(
                f"{source}: field {name!r} must be {_describe(tp)}, got {value!r:.80}"
            )


def check_range(name: str, value: float, low: float, high: float) -> None:
    """ValueError unless low <= value <= high."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def build_config(cls: type, d: Any, source: str | os.PathLike, required=()) -> Any:
    """``cls(**d)`` after :func:`check_fields`; its own range checks' errors name ``source``."""
    check_fields(cls, d, source, required)
    try:
        return cls(**d)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{source}: {e}") from e


def parse_json(text: str, source: str | os.PathLike) -> Any:
    """``json.loads(text)``; ValueError naming ``source`` when it is not valid JSON."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from e


def read_json_config(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; ValueError naming the file when it is not readable JSON."""
    from pathlib import Path

    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file ({e})") from e
    return parse_json(text, path)
