"""Whole-file and whole-directory writes that a reader never sees half done, local or gs://.

Every path goes through `etils.epath`, so a workdir, data_dir or weights folder may be a
bucket URL. A local file is written to a temporary file and renamed over the target; an
object store has no rename, but uploads one object whole, so a remote file is written
in one call. A directory is finished when its commit file (written last) exists;
readers ignore directories without it. A new local file gets the mode open() would
give it: an existing file's own, else 0666 minus the umask.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Mapping

from etils import epath

COMMIT_FILENAME = 'COMMITTED'
PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """True for URLs (gs://, s3://, ...), which have no rename and no append."""
  return '://' in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """An epath.Path for a local path or a bucket URL."""
  return epath.Path(path)


def absolute(path: PathLike) -> epath.Path:
  """`path` as an epath.Path, a local one made absolute (orbax and tensorstore need it)."""
  if is_remote(path):
    return as_path(path)
  return as_path(os.path.abspath(os.fspath(path)))


def base_name(path: PathLike) -> str:
  """The last component of `path`, for a relative local path too ('.' -> its folder)."""
  if is_remote(path):
    return as_path(path).name
  return os.path.basename(os.path.abspath(os.fspath(path)))


def _umask() -> int:
  """The process umask, read without changing it where the system allows."""
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)  # No other way to read it: set and restore at once.
  os.umask(mask)
  return mask


def _target_mode(path: str) -> int:
  """The permission bits open(path, 'w') would leave on a local `path`."""
  try:
    return stat.S_IMODE(os.stat(path).st_mode)
  except FileNotFoundError:
    return 0o666 & ~_umask()


def _write_local(path: str, data: bytes) -> None:
  folder, name = os.path.split(path)
  fd, tmp = tempfile.mkstemp(dir=folder or '.', prefix=f'.{name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      os.fchmod(f.fileno(), _target_mode(path))  # mkstemp makes it private (0600).
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write(path: PathLike, data: bytes | str) -> epath.Path:
  """Writes `data` (text as UTF-8) to `path` whole, creating its folder; returns the path."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, str):
    data = data.encode('utf-8')
  if is_remote(path):
    path.write_bytes(data)  # One upload: the object appears whole or not at all.
  else:
    _write_local(os.fspath(path), data)
  return path


def is_committed(directory: PathLike) -> bool:
  """Whether `directory` was finished by `write_committed_dir` (its commit file exists)."""
  return (as_path(directory) / COMMIT_FILENAME).exists()


def begin_committed_dir(directory: PathLike) -> epath.Path:
  """Empties `directory` for a new version, commit file first: readers then skip it."""
  directory = as_path(directory)
  marker = directory / COMMIT_FILENAME
  if marker.exists():
    marker.unlink()
  if directory.exists():
    directory.rmtree()
  directory.mkdir(parents=True, exist_ok=True)
  return directory


def commit_dir(directory: PathLike) -> None:
  """Marks `directory` finished; call once everything in it is written."""
  atomic_write(as_path(directory) / COMMIT_FILENAME, time.strftime('%Y-%m-%dT%H:%M:%S%z') + '\n')


def write_committed_dir(directory: PathLike, files: Mapping[str, bytes | str]) -> epath.Path:
  """Writes `files` (name -> content) into `directory`, replacing its old content.

  The commit file is removed first and written last, so a reader that checks
  `is_committed` sees either nothing or the complete new set, never a mixture.
  """
  directory = begin_committed_dir(directory)
  for name, data in files.items():
    atomic_write(directory / name, data)
  commit_dir(directory)
  return directory


def move_tree(src: PathLike, dst: PathLike) -> None:
  """Moves a directory: a rename locally, copy then delete on an object store."""
  src, dst = as_path(src), as_path(dst)
  if not is_remote(src) and not is_remote(dst):
    os.replace(os.fspath(src), os.fspath(dst))
    return
  for file in sorted(p for p in src.rglob('*') if p.is_file()):
    target = dst / os.fspath(file.relative_to(src))
    target.parent.mkdir(parents=True, exist_ok=True)
    file.copy(target, overwrite=True)
  src.rmtree()
