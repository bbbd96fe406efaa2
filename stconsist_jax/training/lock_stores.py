"""Where a workdir's lock file lives, and how exactly one writer publishes it: a hard link
on a local file system, a generation-matched object on GCS, write-and-read-back elsewhere.

Each store reads the lock with a version, creates it only where none exists, and replaces
or removes it only at the version read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from typing import Any
from collections.abc import Iterator

from absl import logging
from etils import epath

from stconsist_jax.core import fileio

GUARD_SUFFIX = '.guard'
# Other object stores than gs:// have no conditional write: the lock is written, left to
# settle this long and read back (best effort: the last writer holds it).
REMOTE_SETTLE_SECONDS = 2.0


class _LocalStore:
  """The lock file on a local or mounted file system: hard-link publish, flock guard."""

  def __init__(self, path: epath.Path):
    self.path = os.fspath(path)

  def read(self) -> tuple[bytes, float, Any] | None:
    try:
      with open(self.path, 'rb') as f:
        st = os.fstat(f.fileno())
        return f.read(), st.st_mtime, (st.st_ino, st.st_mtime_ns)
    except FileNotFoundError:
      return None

  def _current_version(self) -> Any:
    try:
      st = os.stat(self.path)
    except FileNotFoundError:
      return None
    return (st.st_ino, st.st_mtime_ns)

  def _write_temp(self, data: bytes) -> str:
    folder, name = os.path.split(self.path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'{name}.', suffix='.tmp')
    try:
      with os.fdopen(fd, 'wb') as f:
        os.fchmod(f.fileno(), 0o644)
        f.write(data)
    except BaseException:  # A full disk: no temporary file is left behind.
      os.unlink(tmp)
      raise
    return tmp

  def create(self, data: bytes) -> Any:
    tmp = self._write_temp(data)
    try:
      os.link(tmp, self.path)  # Atomic, and fails if a lock exists: the content is in.
      return self._version_of(tmp)
    except FileExistsError:
      return None
    except OSError:  # No hard links on this file system: exclusive create, then write.
      return self._create_exclusive(data)
    finally:
      os.unlink(tmp)

  def _version_of(self, path: str) -> Any:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns)

  def _create_exclusive(self, data: bytes) -> Any:
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return None
    with os.fdopen(fd, 'wb') as f:
      f.write(data)  # Until written, readers see an unreadable, young lock: in use.
    return self._current_version()

  @contextlib.contextmanager
  def _guarded(self) -> Iterator[None]:
    """Excludes the other runs' replaces and removes of this lock meanwhile."""
    fd = os.open(self.path + GUARD_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # Released when closed, or when the process dies.
      except OSError as e:  # A file system without flock: unguarded, as before.
        logging.log_first_n(logging.WARNING, 'No flock on %s (%s)', 1, self.path, e)
      yield
    finally:
      os.close(fd)

  def replace(self, data: bytes, version: Any) -> Any:
    with self._guarded():
      if self._current_version() != version:
        return None
      tmp = self._write_temp(data)
      os.replace(tmp, self.path)
      return self._current_version()

  def remove(self, version: Any) -> bool:
    with self._guarded():
      if self._current_version() != version:
        return False
      os.unlink(self.path)
      return True


class _GcsStore:
  """The lock object in a gs:// bucket: every write is conditional on its generation."""

  def __init__(self, url: str):
    # pylint: disable=g-import-not-at-top
    from google.api_core import exceptions
    from google.cloud import storage

    # pylint: enable=g-import-not-at-top
    bucket_name, _, self._name = url[len('gs://') :].partition('/')
    self._url = url
    # The client (and its credentials) is made at the first call, which the caller bounds.
    self._bucket_of = lambda: storage.Client().bucket(bucket_name)
    self._client_bucket = None
    self._precondition_failed = exceptions.PreconditionFailed
    self._not_found = exceptions.NotFound
    self._lost = (exceptions.PreconditionFailed, exceptions.NotFound)

  @property
  def _bucket(self) -> Any:
    if self._client_bucket is None:
      self._client_bucket = self._bucket_of()
    return self._client_bucket

  def read(self) -> tuple[bytes, float, Any] | None:
    blob = self._bucket.get_blob(self._name)
    if blob is None:
      return None
    try:
      data = blob.download_as_bytes(if_generation_match=blob.generation)
    except self._lost:
      return None  # Replaced or removed since listed: the caller looks again.
    return data, blob.updated.timestamp(), blob.generation

  def _upload(self, data: bytes, generation: int) -> Any:
    blob = self._bucket.blob(self._name)
    try:
      blob.upload_from_string(data, if_generation_match=generation)
    except self._precondition_failed:
      return None
    except self._not_found:
      if generation == 0:
        raise  # Nothing to replace yet: the bucket is missing (see `create`).
      return None
    return blob.generation

  def create(self, data: bytes) -> Any:
    try:
      return self._upload(data, 0)  # Generation 0: only if no such object exists.
    except self._not_found:  # Caught here: the bucket itself is missing (one line).
      raise FileNotFoundError(f'{self._url}: no such bucket') from None

  def replace(self, data: bytes, version: Any) -> Any:
    return self._upload(data, version)

  def remove(self, version: Any) -> bool:
    try:
      self._bucket.blob(self._name).delete(if_generation_match=version)
    except self._lost:
      return False
    return True


class _SettleStore:
  """Other object stores (no conditional writes): write, settle, read back; best effort."""

  def __init__(self, path: epath.Path):
    self.path = path

  def read(self) -> tuple[bytes, float, Any] | None:
    try:
      data = self.path.read_bytes()
      return data, self.path.stat().mtime, data
    except FileNotFoundError:
      return None

  def create(self, data: bytes) -> Any:
    if self.path.exists():
      return None
    self.path.write_bytes(data)
    time.sleep(REMOTE_SETTLE_SECONDS)
    current = self.read()
    return data if current is not None and current[0] == data else None

  def replace(self, data: bytes, version: Any) -> Any:
    current = self.read()
    if current is None or current[2] != version:
      return None
    self.path.write_bytes(data)
    return data

  def remove(self, version: Any) -> bool:
    current = self.read()
    if current is None or current[2] != version:
      return False
    self.path.unlink(missing_ok=True)
    return True


def store_for(path: epath.Path) -> Any:
  url = os.fspath(path)
  if url.startswith('gs://'):
    return _GcsStore(url)
  return _SettleStore(path) if fileio.is_remote(url) else _LocalStore(path)


# ------------------------------------------------------------------------------- lock
