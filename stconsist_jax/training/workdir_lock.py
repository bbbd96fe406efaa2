"""One live run per workdir: a lock file with its holder's host, pid, start time and a lease.

A second run on a live workdir is refused with the holder named; a lock whose holder is
gone (a dead pid on this host, or a lease not renewed in time on any host) is taken over.
Locally the lock is created exclusively (O_EXCL); a bucket has no exclusive create, so
there the lock is written, left to settle and read back: the last writer holds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from typing import Any

from absl import logging
from etils import epath

from stconsist_jax.core import errors
from stconsist_jax.core import fileio

LOCK_FILENAME = '.run.lock'
DEFAULT_LEASE_SECONDS = 120.0
# A bucket write is visible to every reader once it returns; two contenders that both saw
# no lock wait this long, then read back whose lock stayed.
REMOTE_SETTLE_SECONDS = 2.0


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another live run holds the workdir."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock, as written in the lock file."""

  host: str
  pid: int
  started: float  # time.time() of acquisition
  renewed: float  # time.time() of the last lease renewal
  lease_seconds: float
  token: str  # unique per acquisition, so only the holder removes its own lock

  def describe(self) -> str:
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))
    return f'host {self.host}, pid {self.pid}, started {started}'

  def expired(self, now: float) -> bool:
    return now > self.renewed + self.lease_seconds


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def is_stale(holder: Holder, now: float | None = None, host: str | None = None) -> bool:
  """A lock is stale when its pid is dead on this host or its lease ran out."""
  now = time.time() if now is None else now
  host = socket.gethostname() if host is None else host
  if holder.host == host and not _pid_alive(holder.pid):
    return True
  return holder.expired(now)


def _in_use(workdir: str | os.PathLike, holder: Holder) -> WorkdirLockedError:
  return WorkdirLockedError(
    f'workdir {workdir} is in use by another run ({holder.describe()}); wait for it '
    f'to finish, stop it, or choose another --workdir'
  )


def read_holder(path: epath.Path) -> Holder | None:
  """The holder in a lock file; None when absent; an unreadable file counts as stale."""
  try:
    data = json.loads(path.read_text())
    return Holder(**{f.name: data[f.name] for f in dataclasses.fields(Holder)})
  except FileNotFoundError:
    return None
  except (ValueError, KeyError, TypeError):
    return Holder(host='?', pid=-1, started=0.0, renewed=0.0, lease_seconds=0.0, token='')


class WorkdirLock:
  """Context manager holding `WORKDIR/.run.lock` for a run, renewing its lease."""

  def __init__(self, workdir: str | os.PathLike, *, lease_seconds: float = DEFAULT_LEASE_SECONDS):
    self.path = fileio.as_path(workdir) / LOCK_FILENAME
    self.lease_seconds = float(lease_seconds)
    self._holder: Holder | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _new_holder(self) -> Holder:
    now = time.time()
    return Holder(
      host=socket.gethostname(),
      pid=os.getpid(),
      started=now,
      renewed=now,
      lease_seconds=self.lease_seconds,
      token=f'{socket.gethostname()}-{os.getpid()}-{time.time_ns()}',
    )

  def _create_exclusive(self, holder: Holder) -> bool:
    """Writes the lock if none exists; whether this run now holds it."""
    if fileio.is_remote(self.path):
      return self._create_remote(holder)
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(dataclasses.asdict(holder), f)
    return True

  def _create_remote(self, holder: Holder) -> bool:
    if self.path.exists():
      return False
    fileio.atomic_write(self.path, json.dumps(dataclasses.asdict(holder)))
    time.sleep(REMOTE_SETTLE_SECONDS)
    current = read_holder(self.path)
    return current is not None and current.token == holder.token

  def acquire(self) -> Holder:
    """Takes the lock; raises WorkdirLockedError naming a live holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    holder = self._new_holder()
    for _ in range(3):
      if self._create_exclusive(holder):
        break
      current = read_holder(self.path)
      if current is None:
        continue  # Released between our two looks: try again.
      if not is_stale(current):
        raise _in_use(self.path.parent, current)
      logging.warning(
        'Taking over the stale lock of workdir %s (%s: %s)',
        self.path.parent,
        current.describe(),
        'process gone' if current.host == holder.host else 'lease expired',
      )
      self._remove_stale()
    else:
      raise WorkdirLockedError(f'could not take the lock of workdir {self.path.parent}')
    self._holder = holder
    self._stop.clear()
    self._thread = threading.Thread(target=self._renew_loop, daemon=True, name='workdir-lock-lease')
    self._thread.start()
    return holder

  def _remove_stale(self) -> None:
    if fileio.is_remote(self.path):
      self.path.unlink(missing_ok=True)
      return
    stale = self.path.with_name(f'{LOCK_FILENAME}.stale.{os.getpid()}.{time.time_ns()}')
    try:
      os.replace(self.path, stale)  # Atomic: only one contender wins the rename.
      stale.unlink()
    except FileNotFoundError:
      pass

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.lease_seconds / 3):
      self.renew()

  def renew(self) -> None:
    """Extends the lease (rewrites the lock file whole) if the lock is still ours."""
    if self._holder is None:
      return
    current = read_holder(self.path)
    if current is None or current.token != self._holder.token:
      logging.warning('The lock of workdir %s was taken by another run', self.path.parent)
      return
    self._holder = dataclasses.replace(self._holder, renewed=time.time())
    fileio.atomic_write(self.path, json.dumps(dataclasses.asdict(self._holder)))

  def release(self) -> None:
    """Removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._holder is None:
      return
    current = read_holder(self.path)
    if current is not None and current.token == self._holder.token:
      self.path.unlink(missing_ok=True)
    self._holder = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()


def check_not_locked(workdir: str | os.PathLike) -> None:
  """Raises WorkdirLockedError when a live run holds `workdir` (before deleting it, say)."""
  holder = read_holder(fileio.as_path(workdir) / LOCK_FILENAME)
  if holder is not None and not is_stale(holder):
    raise _in_use(workdir, holder)
