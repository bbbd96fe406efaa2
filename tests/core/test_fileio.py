"""Atomic writes: the target appears whole or not at all, with no temporary file left."""

import os
import stat

import pytest

from stconsist_jax.core import fileio


def test_writes_text_and_bytes_creating_the_folder(tmp_path):
  path = fileio.atomic_write(tmp_path / 'a' / 'b.json', '{"x": 1}')
  assert path.read_text() == '{"x": 1}'
  fileio.atomic_write(path, b'\x00\x01')
  assert path.read_bytes() == b'\x00\x01'
  assert sorted(p.name for p in path.parent.iterdir()) == ['b.json']


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
  path = fileio.atomic_write(tmp_path / 'c.txt', 'old')

  def broken_replace(src, dst):
    raise OSError('disk full')

  monkeypatch.setattr(fileio.os, 'replace', broken_replace)
  with pytest.raises(OSError, match='disk full'):
    fileio.atomic_write(path, 'new')
  assert path.read_text() == 'old'
  assert [p.name for p in tmp_path.iterdir()] == ['c.txt']


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002], ids=oct)
def test_new_file_gets_the_mode_open_would_give(tmp_path, umask):
  # mkstemp's private 0600 must not leak into the written file.
  old = os.umask(umask)
  try:
    path = fileio.atomic_write(tmp_path / 'new.txt', 'x')
    with open(tmp_path / 'by_open.txt', 'w') as f:
      f.write('x')
  finally:
    os.umask(old)
  assert _mode(path) == 0o666 & ~umask == _mode(tmp_path / 'by_open.txt')


def test_rewritten_file_keeps_its_mode(tmp_path):
  path = fileio.atomic_write(tmp_path / 'script.sh', '#!/bin/sh\n')
  os.chmod(path, 0o750)
  fileio.atomic_write(path, '#!/bin/sh\necho hi\n')
  assert _mode(path) == 0o750 and path.read_text().endswith('hi\n')
