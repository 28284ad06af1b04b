"""Models by name: ``ldm-tiny`` from any folder, as well as ``runs/latent/model`` by path.

    from x2ct.models import resolve_model, list_models
    resolve_model("ldm-tiny")                 # Path(".../models/ldm-tiny")
    resolve_model("runs/latent/model")         # an existing folder is taken as it is
    resolve_model("ldm-tiny/autoencoder")      # a subfolder of a shipped model
    list_models()                              # {"ae-kl-tiny": Path(...), "ldm-tiny": ...}

A name is looked up, in this order, in

1. the folders of the environment variable ``X2CT_MODELS`` (separated like PATH), and
2. the repository's ``models/`` folder, when x2ct runs from a checkout (``pip install -e``).

A folder that exists under the given path always wins over a name. The weights (about 55 MB)
are not packaged into a wheel: after a non-editable install, point ``X2CT_MODELS`` at a
``models/`` folder (a checkout's, or a copy of it) to use the shipped models by name.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "MODELS_ENV",
    "describe_model",
    "list_models",
    "model_kind",
    "model_path",
    "model_search_path",
    "model_spec",
    "not_found_hint",
    "resolve_model",
]

MODELS_ENV = "X2CT_MODELS"
_CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root in a checkout


def model_search_path() -> list[Path]:
    """The folders searched for models by name, in order (only those that exist)."""
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    if (_CHECKOUT / "pyproject.toml").is_file():  # a checkout, not site-packages
        dirs.append(_CHECKOUT / "models")
    return [d for d in dirs if d.is_dir()]


def model_kind(folder: str | os.PathLike) -> str | None:
    """"pipeline" (a Reconstructor: config, weights and an autoencoder/ subfolder),
    "autoencoder" (config and weights), or None (not a saved model)."""
    folder = Path(folder)
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return None
    return "pipeline" if model_kind(folder / "autoencoder") is not None else "autoencoder"


def list_models() -> dict[str, Path]:
    """Every model found by name: {name: folder}; the first folder of the search path that
    has a name wins."""
    found: dict[str, Path] = {}
    for d in model_search_path():
        for sub in sorted(d.iterdir()):
            if sub.name not in found and model_kind(sub) is not None:
                found[sub.name] = sub
    return found


def describe_model(folder: str | os.PathLike) -> str:
    """The first line of a model's README.md (its title), or ''."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return ""
    for line in readme.read_text().splitlines():
        if line.strip():
            return line.lstrip("# ").strip()
    return ""


def _by_name(spec: str) -> Path | None:
    name, _, rest = str(spec).partition("/")
    folder = list_models().get(name)
    if folder is None:
        return None
    return folder / rest if rest else folder


def resolve_model(spec: str | os.PathLike, kind: str | None = None) -> Path:
    """The folder of a model given by path or by name (module docstring).

    Args:
        spec: a folder, or a model name (``ldm-tiny``, ``ldm-tiny/autoencoder``).
        kind: "pipeline" or "autoencoder" to insist on one; None takes either.

    Raises:
        FileNotFoundError: neither a folder nor a known name, or not a saved model (the
            message names what was searched and the models found).
        ValueError: a model of the other kind.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        named = _by_name(str(spec))
        if named is None or not named.exists():
            known = ", ".join(list_models()) or "none"
            searched = ", ".join(str(d) for d in model_search_path()) or "no folder"
            raise FileNotFoundError(
                f"{spec}: no such folder, and no model of that name (models by name: {known}; "
                f"searched {searched}; set {MODELS_ENV} to a folder of models)"
            )
        path = named
    found = model_kind(path)
    if found is None:
        raise FileNotFoundError(
            f"{path}: not a saved x2ct model (expected config.json and model.safetensors)"
        )
    if kind is not None and found != kind:
        what = {"pipeline": "a reconstruction model (with an autoencoder/ subfolder)",
                "autoencoder": "an autoencoder"}[kind]
        hint = f" (its autoencoder: {path / 'autoencoder'})" if found == "pipeline" else ""
        raise ValueError(f"{path}: a saved {found}, but {what} is expected here{hint}")
    return path


def model_path(spec: str) -> str:
    """``spec`` with a model name replaced by its folder; anything else unchanged, for the
    caller's own checks (an argparse ``type=`` of the scripts' ``--model`` flags)."""
    if spec is None or Path(spec).exists():
        return spec
    named = _by_name(spec)
    return str(named) if named is not None and named.exists() else spec


def model_spec(spec: str) -> str:
    """:func:`model_path` of a ``[NAME=]DIR`` row spec (eval/evaluate.py), label kept."""
    label, sep, rest = spec.partition("=")
    if sep and not Path(spec).exists() and label and "/" not in label:
        return f"{label}={model_path(rest)}"
    return model_path(spec)


def not_found_hint() -> str:
    """What a "model folder not found" message adds: the models known by name."""
    known = ", ".join(list_models())
    return f" (models by name: {known})" if known else f" (no models by name: set {MODELS_ENV})"
