"""Atomic writes never leave a half-written file and never drop a file the user keeps."""

from __future__ import annotations

import pytest

from x2ct.fileio import atomic_dir, atomic_path


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "ct.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
        tmp.write_text("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["ct.nii.gz"]


def test_atomic_dir_writes_new_folders_whole_and_keeps_foreign_files(tmp_path):
    model = tmp_path / "model"
    with atomic_dir(model) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "part").mkdir()
        (tmp / "part" / "weights").write_text("w1")
    assert (model / "config.json").read_text() == "{}"
    (model / "README.md").write_text("mine")
    (model / "part" / "notes.txt").write_text("mine too")
    with atomic_dir(model) as tmp:
        (tmp / "config.json").write_text('{"v": 2}')
        (tmp / "part").mkdir()
        (tmp / "part" / "weights").write_text("w2")
    assert (model / "config.json").read_text() == '{"v": 2}'
    assert (model / "part" / "weights").read_text() == "w2"
    assert (model / "README.md").read_text() == "mine"
    assert (model / "part" / "notes.txt").read_text() == "mine too"
    with pytest.raises(RuntimeError), atomic_dir(model) as tmp:
        (tmp / "config.json").write_text("broken")
        raise RuntimeError("killed")
    assert (model / "config.json").read_text() == '{"v": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_gives_folders_the_usual_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
