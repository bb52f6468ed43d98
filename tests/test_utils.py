"""tfkit.utils: atomic writes leave either the old file or the complete new one."""

from __future__ import annotations

import os
import stat

import pytest

from tfkit.utils import TfkitError, atomic_write, prepare_out_dir, read_json, write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "cv.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write('{"a": 2')  # half-written...
            raise RuntimeError("killed")  # ...and interrupted
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cv.json"]  # no temp file left


def test_atomic_write_gives_normal_permissions(tmp_path):
    # mkstemp makes 0600 files; outputs must be readable like any file open() creates.
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", [1])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644


def test_prepare_out_dir_refuses_non_empty_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(TfkitError, match="not empty"):
        prepare_out_dir(tmp_path / "out", overwrite=False)
    assert (tmp_path / "out" / "keep.txt").exists()
    prepare_out_dir(tmp_path / "out", overwrite=True)
    assert list((tmp_path / "out").iterdir()) == []
