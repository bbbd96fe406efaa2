"""Atomic writes: the target appears whole or not at all, with no temporary file left."""

import pytest

from stconsist_jax import fileio


def test_writes_text_and_bytes_creating_the_folder(tmp_path):
  path = fileio.atomic_write(tmp_path / "a" / "b.json", '{"x": 1}')
  assert path.read_text() == '{"x": 1}'
  fileio.atomic_write(path, b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  assert sorted(p.name for p in path.parent.iterdir()) == ["b.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
  path = fileio.atomic_write(tmp_path / "c.txt", "old")

  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(fileio.os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    fileio.atomic_write(path, "new")
  assert path.read_text() == "old"
  assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]
