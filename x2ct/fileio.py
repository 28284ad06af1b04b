"""Atomic file and folder writes, shared by every part of x2ct that saves what a user keeps.

Nothing a user made is overwritten half-way: a file is written under a temporary name in
the same folder and renamed over the target only once complete (``os.replace`` is atomic
on POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name ends in ``suffix``, by default the last two suffixes of ``path``
    (``.nii.gz``, ``.png``), so writers that infer the format from the name still work.
    On error it is removed and ``path`` is left as it was. Parent folders are created.

    >>> with atomic_path("out/ct.nii.gz") as tmp:
    ...     nib.save(img, tmp)
    """
    path = Path(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes[-2:])
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name the writer creates itself, so the file gets the usual permissions
    # (tempfile.mkstemp would leave it readable by its owner only).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success its entries land in
    ``path``.

    A new ``path`` appears whole in one rename. Into an existing folder each written file
    is renamed over its namesake (one atomic step per file) and each written subfolder
    replaces its namesake the same way, recursively; entries the writer did not write (a
    README the user keeps beside the weights) are left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; give it the usual mode
    try:
        yield tmp
        _merge(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    if not dst.exists():
        os.replace(src, dst)
        return
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)
        else:
            os.replace(entry, target)
