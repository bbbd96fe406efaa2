"""Output files of prediction, written whole or not at all: a partial file (local, or a
scratch file copied up to a bucket) becomes the output when finished.

A local output is written in place under a partial name and renamed; one for a bucket
URL (gs://...) is copied up in chunks from a local scratch file. A killed process's
partial files are removed by the next run (`remove_stale_partials`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from absl import logging
from etils import epath

from stconsist_jax.core import fileio

SCRATCH_PREFIX = 'stconsist_predict_'  # Local scratch folders: <prefix><pid>_<random>.
COPY_CHUNK = 8 << 20  # Bytes per read when a finished output is copied to a bucket.
_SCRATCH_NAME = re.compile(re.escape(SCRATCH_PREFIX) + r'(\d+)_')
_PARTIAL_NAME = re.compile(r'\..+\.(\d+)\.partial(\.[^./]+)?$')


@contextlib.contextmanager
def staged_output(path: str | os.PathLike) -> Iterator[str]:
  """A local file name to write; on success its content becomes `path` whole.

  For a local `path`: a hidden partial file beside it, named with this process's id,
  renamed over it (keeping an existing file's mode). For a bucket URL: a file in a
  local scratch folder named with this process's id, copied up in chunks. The partial
  file is removed whatever the body raises; one a killed process left behind is
  removed by the next `remove_stale_partials`. The name keeps `path`'s extension
  (OpenCV picks the container from it).
  """
  path = fileio.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if fileio.is_remote(path):
    scratch = tempfile.mkdtemp(prefix=f'{SCRATCH_PREFIX}{os.getpid()}_')
    try:
      local = os.path.join(scratch, f'output{path.suffix}')
      yield local
      _copy_up(local, path)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    return
  target = os.fspath(path)
  folder, name = os.path.split(target)
  local = os.path.join(folder, f'.{name}.{os.getpid()}.partial{path.suffix}')
  try:
    yield local
    if os.path.exists(target):
      shutil.copymode(target, local)
    os.replace(local, target)
  finally:
    if os.path.lexists(local):
      os.unlink(local)


def _copy_up(local: str, path: epath.Path) -> None:
  """Copies a local file to a bucket URL a chunk at a time (the object appears at close)."""
  with open(local, 'rb') as src, path.open('wb') as dst:
    shutil.copyfileobj(src, dst, COPY_CHUNK)


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def remove_stale_partials(out_dir: str | os.PathLike) -> list[str]:
  """Removes what killed predictions left: partial outputs in a local `out_dir` and
  scratch folders in the temp folder whose process is gone. Returns the paths removed."""
  places = [(tempfile.gettempdir(), _SCRATCH_NAME)]
  if not fileio.is_remote(out_dir) and os.path.isdir(out_dir):
    places.append((os.fspath(out_dir), _PARTIAL_NAME))
  removed = []
  for folder, pattern in places:
    for entry in os.scandir(folder):
      match = pattern.match(entry.name)
      if match is not None and not _process_alive(int(match.group(1))) and _remove(entry):
        removed.append(entry.path)
  return removed


def _remove(entry: os.DirEntry) -> bool:
  """Removes a file or a folder tree; False when it cannot be (another user's)."""
  try:
    if entry.is_dir(follow_symlinks=False):
      shutil.rmtree(entry.path)
    else:
      os.unlink(entry.path)
  except FileNotFoundError:
    return False
  except OSError as e:
    logging.warning('cannot remove the stale partial output %s: %s', entry.path, e)
    return False
  return True
