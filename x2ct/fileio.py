"""Atomic file and folder writes, shared by every part of x2ct that saves what a user keeps.

Nothing a user made is overwritten half-way: a file is written under a temporary name in
the same folder and renamed over the target only once complete (``os.replace`` is atomic
on POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "prepare_out_dir", "remove_stale_temporaries"]


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


# Names atomic_path and atomic_dir give their temporaries: ".NAME.<hex>.tmp<suffix>" and
# ".NAME.tmp-<random>"; a killed writer leaves them behind.
def _is_temporary_of(entry: str, name: str) -> bool:
    return fnmatch.fnmatchcase(entry, f".{name}.*.tmp*") or entry.startswith(f".{name}.tmp-")


def remove_stale_temporaries(folder: str | os.PathLike, names: Sequence[str] | None = None
                             ) -> list[Path]:
    """Delete what killed atomic writes left in ``folder`` (hidden ``.NAME...tmp...``
    files and folders; of ``names`` only, or of any name): call it only where no other
    writer can be at work (under a run folder's lock, or on a command's own outputs).
    Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if not entry.name.startswith("."):
            continue
        if names is None:
            stale = ".tmp" in entry.name
        else:
            stale = any(_is_temporary_of(entry.name, n) for n in names)
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def prepare_out_dir(
    path: str | os.PathLike,
    outputs: Sequence[str],
    overwrite: bool = False,
    need_bytes: int = 0,
) -> Path:
    """Make ``path`` ready for a command's ``outputs`` (file names) before any compute.

    - ``path`` must be a folder or not exist (it is created, with its parents);
    - it must be writable: a probe file is written, flushed to disk and removed, so a
      read-only folder, /proc or a full disk fail here, not after the work;
    - ``need_bytes`` > 0: the file system must have that much free space;
    - outputs of an earlier run there (any name in ``outputs``) are refused unless
      ``overwrite``, in which case all of them are removed first, so an old ``std.nii.gz``
      or ``metrics.json`` never lies beside a new ``ct.nii.gz``. Other files are kept.
      Temporaries of killed writes of these outputs are removed.

    Raises:
        ValueError: the message names ``path`` and what to do.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; --out must be a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{path}: cannot create the output folder ({e.strerror or e})") from e
    earlier = [n for n in outputs if (path / n).exists() or (path / n).is_symlink()]
    if earlier and not overwrite:
        raise ValueError(
            f"{path}: already holds {', '.join(earlier)} from an earlier run; pass "
            "--overwrite to replace this command's outputs there, or choose another --out"
        )
    probe = path / f".x2ct-write-probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ValueError(f"{path}: the output folder is not writable ({e.strerror or e})") from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    if need_bytes > 0:
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise ValueError(
                f"{path}: {free / 2**20:.1f} MiB free, the outputs need about "
                f"{need_bytes / 2**20:.1f} MiB"
            )
    for name in earlier:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    remove_stale_temporaries(path, outputs)
    return path
