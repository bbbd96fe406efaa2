"""Whole-file and whole-directory writes that a reader never sees half done, local or gs://.

Every path goes through `etils.epath`, so a workdir, data_dir or weights folder may be a
bucket URL. A local file is written to a temporary file and renamed over the target; an
object store has no rename, but uploads one object whole, so a remote file is written
in one call. A directory is finished when its commit file (written last) exists;
readers ignore directories without it. A new local file gets the mode open() would
give it: an existing file's own, else 0666 minus the umask.

A call on a bucket goes through `bounded`: it is retried with backoff while it fails, and
gives up with a one-line StorageUnavailableError once `storage_timeout()` has passed
without an answer (an outage, no network, no credentials), instead of hanging.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
import threading
import time
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Mapping

from etils import epath
from etils.epath import backend as epath_backend

from stconsist_jax.core import errors

COMMIT_FILENAME = 'COMMITTED'
PathLike = str | os.PathLike
T = TypeVar('T')
DEFAULT_STORAGE_TIMEOUT_SECONDS = 300.0
_FIRST_RETRY_DELAY_S = 0.5
_MAX_RETRY_DELAY_S = 8.0
# Errors that retrying cannot fix: a wrong path, a refused credential.
_FINAL_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
_FINAL_ERROR_NAMES = ('NotFoundError', 'AlreadyExistsError', 'InvalidArgumentError')
_ACCESS_ERROR_NAMES = (
  'PermissionError',
  'PermissionDeniedError',
  'UnauthenticatedError',
  'DefaultCredentialsError',  # google-auth: no credentials on this machine
)
_storage_timeout_s = DEFAULT_STORAGE_TIMEOUT_SECONDS


class StorageUnavailableError(RuntimeError):
  """A bucket kept failing or did not answer for the whole storage timeout, or refused access."""


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
  if isinstance(data, str):
    data = data.encode('utf-8')
  if is_remote(path):
    # One upload: the object appears whole or not at all, so a retry is harmless.
    bounded(lambda: _write_remote(path, data), path, 'writing')
  else:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_local(os.fspath(path), data)
  return path


def _write_remote(path: epath.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


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


# ------------------------------------------------------------------ bounded bucket calls


def set_storage_timeout(seconds: float) -> None:
  """How long `bounded` keeps retrying or waiting for a bucket before it gives up."""
  global _storage_timeout_s
  _storage_timeout_s = float(seconds)


def storage_timeout() -> float:
  return _storage_timeout_s


_main_thread_waits: dict[int, float] = {}
_waits_lock = threading.Lock()


@contextlib.contextmanager
def waiting_on_storage() -> Iterator[None]:
  """Marks the main thread as waiting for a bucket meanwhile (see `main_thread_waiting_since`)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  key = object()
  with _waits_lock:
    _main_thread_waits[id(key)] = time.monotonic()
  try:
    yield
  finally:
    with _waits_lock:
      _main_thread_waits.pop(id(key), None)


def main_thread_waiting_since() -> float | None:
  """time.monotonic() at which the main thread began its current wait for a bucket, if any."""
  with _waits_lock:
    return min(_main_thread_waits.values(), default=None)


def _call_in_thread(fn: Callable[[], T], deadline: float) -> tuple[bool, Any, BaseException | None]:
  """Runs `fn` in a daemon thread: (finished before `deadline`, value, error).

  A call still running at the deadline is left behind: client libraries retry inside one
  call for minutes, and the main thread must stay free to stop the run.
  """
  outcome: dict[str, Any] = {}
  finished = threading.Event()

  def run() -> None:
    try:
      outcome['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      outcome['error'] = e
    finally:
      finished.set()

  threading.Thread(target=run, daemon=True, name='bounded-storage-call').start()
  finished.wait(max(deadline - time.monotonic(), 0.0))
  return finished.is_set(), outcome.get('value'), outcome.get('error')


@functools.cache
def _load_bucket_client() -> None:
  """Loads epath's client for gs:// (its TensorFlow backend), if installed, before a call
  is timed: loaded on the first bucket call otherwise, its start-up (seconds, more on a
  busy machine) would count as the bucket's time to answer.
  """
  try:
    epath_backend.tf_backend.gfile  # noqa: B018 (the property loads the client)
  except ImportError:
    pass


def _is_final(error: BaseException) -> bool:
  return isinstance(error, _FINAL_ERRORS) or type(error).__name__ in _FINAL_ERROR_NAMES


def _unavailable(url: PathLike, what: str, cause: str) -> StorageUnavailableError:
  return StorageUnavailableError(f'storage unavailable: {what} {os.fspath(url)} failed: {cause}')


def bounded(
  fn: Callable[[], T], url: PathLike, what: str = 'access to', *, retry: bool = True
) -> T:
  """`fn()`, a call on `url`; for a bucket bounded in time by `storage_timeout()`.

  A local `url` calls `fn` directly. For a bucket a failing call is retried with
  backoff (`retry`: only for calls that may run twice) until the timeout, a call that
  does not answer is abandoned at the timeout; both raise StorageUnavailableError naming
  `url` and the last error. A missing path raises its own error at once, a refused
  credential a StorageUnavailableError at once.
  """
  if not is_remote(url):
    return fn()
  _load_bucket_client()
  timeout = _storage_timeout_s
  deadline = time.monotonic() + timeout
  delay = _FIRST_RETRY_DELAY_S
  with waiting_on_storage():
    while True:
      finished, value, error = _call_in_thread(fn, deadline)
      if not finished:
        raise _unavailable(url, what, f'no answer within {timeout:g} s')
      if error is None:
        return value
      if _is_final(error):
        raise error
      if type(error).__name__ in _ACCESS_ERROR_NAMES:
        raise _unavailable(url, what, f'access refused ({errors.describe(error)})') from None
      if not retry or time.monotonic() + delay >= deadline:
        raise _unavailable(url, what, f'{errors.describe(error)} (for {timeout:g} s)') from None
      time.sleep(delay)
      delay = min(2 * delay, _MAX_RETRY_DELAY_S)
