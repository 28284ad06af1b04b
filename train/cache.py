"""The training latent cache (RUN/latent_cache.safetensors): written atomically with its
key and checksum, rebuilt whenever it is missing, made for other data, unreadable,
truncated, edited or holds a non-finite value, with a warning saying why.

It is built in parts of ``chunk_size`` cases (RUN/latent_cache.parts/), dealt out in turn
to the processes of ``accelerate launch``, which make their parts at once
(``--prepare-only`` does only that), and a build that is killed resumes from the parts
already written (each is checked against the cache's key like the cache itself). The main
process joins the parts in case order, writes the cache and removes them. Writing holds
the whole cache in the main process's memory (about twice its size at the join); reading
it does not.

It is read memory-mapped (``x2ct.state.read_safetensors``): the checks stream through
the file a slice at a time and training indexes a batch out of it, so a cache of 128^3
cases at 1 mm (about 1.7 MB each with material paths) may outgrow RAM. Every process of
a run maps the same file and shares its pages."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from x2ct.state import read_safetensors, write_safetensors

__all__ = ["all_finite", "cache_parts", "load_latent_cache"]


def _problem(path: Path, key: str) -> str | None:
    """Why the cache at ``path`` cannot be used (None: it can)."""
    if not path.is_file():
        return "missing"
    try:
        tensors, metadata = read_safetensors(path)
    except ValueError as e:
        return str(e)
    if metadata.get("key") != key:
        return "made for other data or another autoencoder"
    for name, t in tensors.items():
        if not all_finite(t):
            return f"{path}: {name} holds non-finite values"
    return None


def all_finite(t: torch.Tensor, chunk_bytes: int = 4 * 2**20) -> bool:
    """No NaN or infinity in ``t`` (True for integers), checked ``chunk_bytes`` of its
    leading axis at a time (a mapped tensor is not copied whole)."""
    if not t.is_floating_point():
        return True
    if t.ndim == 0:
        return bool(torch.isfinite(t))
    rows = max(1, chunk_bytes // max(1, t[0].numel() * t.element_size()))
    return all(bool(torch.isfinite(t[i : i + rows]).all()) for i in range(0, len(t), rows))


def cache_parts(n_cases: int, chunk_size: int) -> list[range]:
    """The parts a cache of ``n_cases`` is built in: consecutive ranges of ``chunk_size``
    cases (the last one shorter)."""
    if n_cases < 1:
        raise ValueError(f"no training cases to cache (got {n_cases}): check --n-train and "
                         "the 'train' split of each --data folder")
    if chunk_size < 1:
        raise ValueError(f"the cache's chunk size must be >= 1 case, got {chunk_size}")
    return [range(s, min(s + chunk_size, n_cases)) for s in range(0, n_cases, chunk_size)]


def _part_path(parts_dir: Path, cases: range) -> Path:
    return parts_dir / f"cases_{cases.start:07d}-{cases.stop - 1:07d}.safetensors"


def _build_part(path: Path, part: Path, key: str, cases: range, build) -> None:
    tensors = build(cases)
    wrong = {k: tuple(t.shape) for k, t in tensors.items() if len(t) != len(cases)}
    if wrong:
        raise ValueError(f"{path}: building cases {cases.start}-{cases.stop - 1} gave "
                         f"{wrong}, expected {len(cases)} along the first axis")
    bad = [k for k, t in tensors.items() if not all_finite(t)]
    if bad:
        raise ValueError(f"{path}: the encoded training data of cases {cases.start}-"
                         f"{cases.stop - 1} has non-finite {bad}")
    write_safetensors(part, tensors, {"key": key})


def load_latent_cache(
    accelerator,
    path: Path,
    key: str,
    n_cases: int,
    build: Callable[[range], dict[str, torch.Tensor]],
    chunk_size: int = 32,
) -> dict[str, torch.Tensor]:
    """The cache at ``path`` if it was made with ``key`` and is intact; else it is built:
    ``build(cases)`` gives the tensors of the cases in the range ``cases`` (each with
    ``len(cases)`` along its first axis), called for the parts (:func:`cache_parts`) this
    process is dealt (part j goes to process j mod the number of processes), a part
    already written with ``key`` being kept. The main process joins the parts and writes
    the cache (atomically) and removes the parts; then every process maps it
    (memory-mapped tensors; the main process has just checked or written it)."""
    from accelerate.utils import broadcast_object_list

    path = Path(path)
    parts_dir = path.with_suffix(".parts")
    problem = [None]
    if accelerator.is_main_process:
        problem[0] = _problem(path, key)
        if problem[0] not in (None, "missing"):
            msg = f"rebuilding the latent cache {path}: {problem[0]}"
            warnings.warn(msg, stacklevel=2)
            accelerator.print(msg)
        elif problem[0] is None:  # parts of a build killed after it wrote the cache
            shutil.rmtree(parts_dir, ignore_errors=True)
    if accelerator.num_processes > 1:
        broadcast_object_list(problem)
    if problem[0] is not None:
        parts = cache_parts(n_cases, chunk_size)
        mine = parts[accelerator.process_index :: accelerator.num_processes]
        parts_dir.mkdir(parents=True, exist_ok=True)
        todo = [c for c in mine if _problem(_part_path(parts_dir, c), key) is not None]
        if len(todo) < len(mine):
            print(f"latent cache {path}: {len(mine) - len(todo)} of this process's "
                  f"{len(mine)} parts kept from an earlier build", flush=True)
        for cases in todo:
            _build_part(path, _part_path(parts_dir, cases), key, cases, build)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            pieces = [read_safetensors(_part_path(parts_dir, c))[0] for c in parts]
            names = sorted(pieces[0])
            for c, piece in zip(parts, pieces):
                if sorted(piece) != names:
                    raise ValueError(f"{_part_path(parts_dir, c)}: holds {sorted(piece)}, "
                                     f"expected the first part's {names}")
            tensors = {k: torch.cat([p[k] for p in pieces]) for k in names}
            write_safetensors(path, tensors, {"key": key})
            del pieces, tensors
            shutil.rmtree(parts_dir)
    accelerator.wait_for_everyone()
    return read_safetensors(path, verify=False)[0]
