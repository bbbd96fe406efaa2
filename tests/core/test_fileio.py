"""Atomic writes (the target appears whole or not at all) and time-bounded bucket calls."""

import os
import stat
import threading

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


# ----------------------------------------------------------- bounded bucket calls


@pytest.fixture
def short_storage_timeout(monkeypatch):
  """0.3 s for a bucket call, whose client (TensorFlow) these fake calls do not need."""
  monkeypatch.setattr(fileio, '_load_bucket_client', lambda: None)
  previous = fileio.storage_timeout()
  fileio.set_storage_timeout(0.3)
  yield
  fileio.set_storage_timeout(previous)


def test_bucket_call_without_answer_gives_up_in_one_line_naming_the_url(short_storage_timeout):
  never = threading.Event()
  with pytest.raises(fileio.StorageUnavailableError) as e:
    fileio.bounded(never.wait, 'gs://b/run/metrics.jsonl', 'writing')
  never.set()
  assert str(e.value) == (
    'storage unavailable: writing gs://b/run/metrics.jsonl failed: no answer within 0.3 s'
  )


def test_failing_bucket_call_is_retried_until_it_succeeds(short_storage_timeout, monkeypatch):
  monkeypatch.setattr(fileio, '_FIRST_RETRY_DELAY_S', 0.01)
  calls = []

  def flaky():
    calls.append(1)
    if len(calls) < 3:
      raise ConnectionError('connection reset')
    return 'written'

  assert fileio.bounded(flaky, 'gs://b/x') == 'written'
  assert len(calls) == 3


def test_bucket_call_failing_until_the_timeout_names_the_last_error(short_storage_timeout):
  def down():
    raise OSError('Could not resolve host: storage.googleapis.com\nwith\nmany lines')

  with pytest.raises(fileio.StorageUnavailableError) as e:
    fileio.bounded(down, 'gs://b/run', 'taking the lock of')
  message = str(e.value)
  assert '\n' not in message and message.startswith(
    'storage unavailable: taking the lock of gs://b/run failed: OSError: Could not resolve '
    'host: storage.googleapis.com with many lines'
  )


def test_refused_credentials_and_missing_paths_are_not_retried(short_storage_timeout):
  class PermissionDeniedError(Exception):  # TensorFlow's name for a 403.
    pass

  calls = []

  def denied():
    calls.append(1)
    raise PermissionDeniedError('403 Forbidden')

  with pytest.raises(fileio.StorageUnavailableError, match='gs://b/x failed: access refused'):
    fileio.bounded(denied, 'gs://b/x')
  with pytest.raises(FileNotFoundError):
    fileio.bounded(lambda: calls.append(1) or open('/nonexistent/x'), 'gs://b/x')
  assert len(calls) == 2


def test_local_paths_are_called_directly_without_a_time_limit(short_storage_timeout):
  assert fileio.bounded(lambda: threading.current_thread(), '/tmp/x') is threading.current_thread()
