"""One live run per workdir: a lock file with its holder's host, pid, start time and a lease.

A second run on a live workdir is refused with the holder named; a lock whose holder is
gone (a dead pid on this host, or a lease not renewed in time on any host) is taken over.
A lock file appears whole or not at all: locally it is written under a temporary name and
hard-linked to `.run.lock` (which fails when a lock exists); on gs:// it is uploaded only
if no object of that name exists (a generation-match precondition). Renewing, taking over
and removing a lock change it only if it is still the version that was read (locally
under an flock of `.run.lock.guard`). A lock file that cannot be read (being written by
another tool, or damaged) is taken over only once it is older than the lease. A holder
whose lease cannot be renewed in time marks its lock lost, and its run stops before the
lease runs out and another run could take the workdir over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from absl import logging
from etils import epath

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.training import lock_stores

LOCK_FILENAME = '.run.lock'
DEFAULT_LEASE_SECONDS = 120.0
# A holder that could not renew its lease gives up (and its run stops) with this part
# of the lease left, so that the run has stopped before anyone may take the lock over.
STOP_MARGIN_FRACTION = 0.25


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another live run holds the workdir."""


class LeaseLostError(WorkdirLockedError):
  """This run's lock was taken by another run, or its lease could not be renewed."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock, as written in the lock file."""

  host: str
  pid: int
  started: float  # time.time() of acquisition
  renewed: float  # time.time() of the last lease renewal
  lease_seconds: float
  token: str  # unique per acquisition

  def describe(self) -> str:
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))
    return f'host {self.host}, pid {self.pid}, started {started}'

  def expired(self, now: float) -> bool:
    return now > self.renewed + self.lease_seconds


@dataclasses.dataclass(frozen=True)
class LockFile:
  """A lock file as read: its holder (None when unreadable), age and version."""

  holder: Holder | None
  age: float  # seconds since it was last written
  version: Any  # what a conditional replace or remove compares with


def _encode(holder: Holder) -> bytes:
  return json.dumps(dataclasses.asdict(holder)).encode('utf-8')


def _decode(data: bytes) -> Holder | None:
  """The holder in a lock file's bytes; None when they are not a whole holder record."""
  try:
    record = json.loads(data.decode('utf-8'))
    return Holder(**{f.name: record[f.name] for f in dataclasses.fields(Holder)})
  except (ValueError, KeyError, TypeError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def stale_reason(lock: LockFile, lease_seconds: float, now: float | None = None) -> str | None:
  """Why `lock` may be taken over ('process gone', 'lease expired', ...); None while live.

  An unreadable lock file has no lease of its own: `lease_seconds` (the reader's) is used.
  """
  now = time.time() if now is None else now
  holder = lock.holder
  if holder is None:
    if lock.age > lease_seconds:
      return f'unreadable lock file, older than the lease ({lease_seconds:.0f} s)'
    return None
  if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
    return f'{holder.describe()}: process gone'
  if holder.expired(now):
    return f'{holder.describe()}: lease expired'
  return None


def _in_use(workdir: Any, lock: LockFile, lease_seconds: float) -> WorkdirLockedError:
  if lock.holder is None:
    return WorkdirLockedError(
      f'workdir {workdir} is in use by another run (its lock file {LOCK_FILENAME} cannot be '
      f'read yet, written {lock.age:.0f} s ago); wait, or if no run uses the workdir, delete '
      f'the file or let it be taken over {lease_seconds - lock.age:.0f} s from now'
    )
  return WorkdirLockedError(
    f'workdir {workdir} is in use by another run ({lock.holder.describe()}); wait for it '
    f'to finish, stop it, or choose another --workdir'
  )


# ----------------------------------------------------------------------------- stores
# Each store holds one lock file: read() -> (bytes, mtime, version) | None; create(data)
# -> version | None when a lock exists; replace(data, version) -> new version | None and
# remove(version) -> bool act only while the file is still at `version`.


class WorkdirLock:
  """Context manager holding `WORKDIR/.run.lock` for a run, renewing its lease.

  The lease is renewed every `renew_every` seconds (a third of the lease by default); a
  failed renewal is retried four times as often. When the lease cannot be renewed before
  a quarter of it is left, or another run took the lock, `lost` becomes true: the run
  must stop.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    renew_every: float | None = None,
  ):
    self.path = fileio.as_path(workdir) / LOCK_FILENAME
    self.lease_seconds = float(lease_seconds)
    self.renew_every = self.lease_seconds / 3 if renew_every is None else float(renew_every)
    self._store = lock_stores.store_for(self.path)
    self._holder: Holder | None = None
    self._version: Any = None
    self._stop = threading.Event()
    self._lost = threading.Event()
    self.lost_reason = ''
    self._thread: threading.Thread | None = None

  @property
  def workdir(self) -> epath.Path:
    return self.path.parent

  @property
  def lost(self) -> bool:
    """Whether this run no longer holds the lock (taken, or its lease not renewed)."""
    return self._lost.is_set()

  def read(self) -> LockFile | None:
    """The lock file as it is now; None when there is none."""
    raw = self._store.read()
    if raw is None:
      return None
    data, mtime, version = raw
    return LockFile(_decode(data), max(0.0, time.time() - mtime), version)

  def _new_holder(self) -> Holder:
    now = time.time()
    host, pid = socket.gethostname(), os.getpid()
    return Holder(host, pid, now, now, self.lease_seconds, f'{host}-{pid}-{secrets.token_hex(8)}')

  def acquire(self) -> Holder:
    """Takes the lock; raises WorkdirLockedError naming a live holder."""
    if not fileio.is_remote(self.path):  # A bucket has no folders to make.
      self.workdir.mkdir(parents=True, exist_ok=True)
    holder = self._new_holder()
    for _ in range(5):
      version = self._store.create(_encode(holder))
      if version is not None:
        self._hold(holder, version)
        return holder
      self._take_over_if_stale()
    raise WorkdirLockedError(
      f'could not take the lock of workdir {self.workdir}: other runs kept taking it; try again'
    )

  def _take_over_if_stale(self) -> None:
    """Removes the current lock if its holder is gone; raises naming a live holder."""
    current = self.read()
    if current is None:
      return  # Released between our two looks: try again.
    reason = stale_reason(current, self.lease_seconds)
    if reason is None:
      raise _in_use(self.workdir, current, self.lease_seconds)
    if self._store.remove(current.version):  # Not if another run took it over first.
      logging.warning('Lock of workdir %s: %s: taken over', self.workdir, reason)

  def _hold(self, holder: Holder, version: Any) -> None:
    self._holder, self._version = holder, version
    self._stop.clear()
    self._lost.clear()
    self._thread = threading.Thread(target=self._renew_loop, daemon=True, name='workdir-lock-lease')
    self._thread.start()

  def renew(self) -> None:
    """Extends the lease; raises LeaseLostError when another run has taken the lock."""
    if self._holder is None:
      return
    holder = dataclasses.replace(self._holder, renewed=time.time())
    version = self._store.replace(_encode(holder), self._version)
    if version is None:
      raise LeaseLostError(f'the lock of workdir {self.workdir} was taken by another run')
    self._holder, self._version = holder, version

  def _renew_loop(self) -> None:
    wait = self.renew_every
    while wait is not None and not self._stop.wait(wait):
      wait = self.renew_or_retry()

  def _give_up_at(self) -> float:
    return self._holder.renewed + self.lease_seconds * (1 - STOP_MARGIN_FRACTION)

  def renew_or_retry(self) -> float | None:
    """Renews the lease once: seconds until the next try; None once the lock is lost."""
    try:
      self.renew()
      return self.renew_every
    except LeaseLostError as e:
      self._lose(str(e))
      return None
    except Exception as e:  # pylint: disable=broad-except
      # A bucket or file system outage raises many types; all are retried in time.
      left = self._give_up_at() - time.time()
      if left <= 0:
        self._lose(
          f'the lease of the lock of workdir {self.workdir} could not be renewed '
          f'({errors.describe(e, 200)}) and runs out in {self.lease_seconds * STOP_MARGIN_FRACTION:.0f} s'
        )
        return None
      retry = min(self.renew_every / 4, left)
      logging.warning(
        'Could not renew the lease of workdir %s (%s); retrying in %.1f s, stopping the '
        'run in %.0f s unless it succeeds',
        self.workdir,
        errors.describe(e, 200),
        retry,
        left,
      )
      return retry

  def _lose(self, reason: str) -> None:
    self.lost_reason = reason
    logging.error('%s: stopping the run', reason)
    self._lost.set()

  def release(self) -> None:
    """Removes the lock file if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._version is None:
      return
    try:
      self._store.remove(self._version)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
        'Could not remove the lock of workdir %s (%s)', self.workdir, errors.describe(e, 200)
      )
    self._holder, self._version = None, None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()


def check_not_locked(workdir: str | os.PathLike) -> None:
  """Raises WorkdirLockedError when a live run holds `workdir` (before deleting it, say)."""
  lock = WorkdirLock(workdir)
  current = lock.read()
  if current is not None and stale_reason(current, lock.lease_seconds) is None:
    raise _in_use(workdir, current, lock.lease_seconds)
