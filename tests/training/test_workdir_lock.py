"""The workdir lock under contention: simultaneous starts, stale and unreadable locks, leases.

Contenders are threads of this process, released together by a barrier, with Python
switching between them as often as it can so that their steps interleave.
"""

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from stconsist_jax.training import workdir_lock
from tests.training import lock_files


@pytest.fixture
def interleaved():
  """Threads switch every microsecond (default 5 ms), as truly parallel processes would."""
  previous = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)
  yield
  sys.setswitchinterval(previous)


def _contend(workdir, contenders, before=None):
  """`contenders` runs acquire the lock of `workdir` at once; (winners, refused) counts.

  `before(workdir)` prepares the workdir (a stale lock, say) before they start.
  """
  if before is not None:
    before(workdir)
  barrier = threading.Barrier(contenders)
  won, refused = [], []

  def contend():
    lock = workdir_lock.WorkdirLock(workdir)
    barrier.wait()
    try:
      lock.acquire()
      won.append(lock)
    except workdir_lock.WorkdirLockedError:
      refused.append(lock)

  threads = [threading.Thread(target=contend) for _ in range(contenders)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for lock in won:
    lock.release()
  return len(won), len(refused)


def _assert_one_winner_each(outcomes, contenders):
  wrong = [o for o in outcomes if o != (1, contenders - 1)]
  assert not wrong, f'{len(wrong)} of {len(outcomes)} trials: (winners, refused) {wrong[:5]}'


@pytest.mark.parametrize('contenders', [2, 4])
def test_runs_started_together_one_wins(tmp_path, interleaved, contenders):
  outcomes = [_contend(tmp_path / f'trial{i}', contenders) for i in range(100)]
  _assert_one_winner_each(outcomes, contenders)


def _dead_pid():
  """The pid of a process that has exited (a child, reaped)."""
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()
  return child.pid


def _stale_lock(workdir):
  workdir.mkdir()
  lock_files.write_lock(workdir, renewed=time.time() - 1000)


@pytest.mark.parametrize('contenders', [2, 4])
def test_runs_taking_over_one_stale_lock_together_one_wins(tmp_path, interleaved, contenders):
  outcomes = [_contend(tmp_path / f'trial{i}', contenders, _stale_lock) for i in range(100)]
  _assert_one_winner_each(outcomes, contenders)


def test_a_full_disk_refuses_the_lock_and_leaves_no_file(tmp_path, monkeypatch):
  real_fdopen = os.fdopen

  class FullDisk:
    def __init__(self, fd, mode):
      self.file = real_fdopen(fd, mode)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.file.close()

    def fileno(self):
      return self.file.fileno()

    def write(self, data):
      raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(os, 'fdopen', FullDisk)
  with pytest.raises(OSError) as e:
    workdir_lock.WorkdirLock(tmp_path).acquire()
  assert e.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert [
    p.name for p in tmp_path.iterdir() if p.name != workdir_lock.LOCK_FILENAME + '.guard'
  ] == []


def test_young_unreadable_lock_is_in_use(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILENAME).write_text('')  # a holder still writing it
  with pytest.raises(workdir_lock.WorkdirLockedError, match='in use by another run') as e:
    workdir_lock.WorkdirLock(tmp_path).acquire()
  assert 'cannot be read yet' in str(e.value) and '\n' not in str(e.value)
  with pytest.raises(workdir_lock.WorkdirLockedError):
    workdir_lock.check_not_locked(tmp_path)


def test_old_unreadable_lock_is_taken_over_saying_what_it_was(tmp_path, caplog):
  path = tmp_path / workdir_lock.LOCK_FILENAME
  path.write_text('{"host": "node-7", "pi')  # garbage, left 200 s ago
  os.utime(path, (time.time() - 200, time.time() - 200))
  workdir_lock.check_not_locked(tmp_path)  # not in use
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    assert json.loads(path.read_text())['token'] == lock._holder.token
  messages = [r.getMessage() for r in caplog.records]
  assert messages == [
    f'Lock of workdir {tmp_path}: unreadable lock file, older than the lease (120 s): taken over'
  ]


def test_lock_of_a_dead_process_is_taken_over_naming_it(tmp_path, caplog):
  pid = _dead_pid()
  lock_files.write_lock(tmp_path, pid=pid, started=0.0)
  with workdir_lock.WorkdirLock(tmp_path):
    pass
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(0.0))
  expected = f'host {socket.gethostname()}, pid {pid}, started {started}: process gone'
  assert [r.getMessage() for r in caplog.records] == [
    f'Lock of workdir {tmp_path}: {expected}: taken over'
  ]


# ------------------------------------------------------------------------ the lease


class _FailingWrites:
  """Makes the lock store's replace() raise OSError `failures` times (a bucket outage)."""

  def __init__(self, monkeypatch, lock, failures):
    self.failures, self.calls = failures, 0
    self._replace = lock._store.replace
    monkeypatch.setattr(lock._store, 'replace', self)

  def __call__(self, data, version):
    self.calls += 1
    if self.calls <= self.failures:
      raise OSError('503 Service Unavailable')
    return self._replace(data, version)


def test_lease_renewal_survives_transient_errors(tmp_path, monkeypatch, caplog):
  lock = workdir_lock.WorkdirLock(tmp_path, lease_seconds=60.0, renew_every=0.04)
  failing = _FailingWrites(monkeypatch, lock, failures=2)
  with lock:
    first = json.loads(lock.path.read_text())['renewed']
    deadline = time.monotonic() + 5  # a bound on waiting, not an expectation
    while json.loads(lock.path.read_text())['renewed'] == first and time.monotonic() < deadline:
      time.sleep(0.01)
    assert json.loads(lock.path.read_text())['renewed'] > first
    assert failing.calls >= 3 and not lock.lost and lock._thread.is_alive()
  retries = [r.getMessage() for r in caplog.records if 'Could not renew' in r.getMessage()]
  assert len(retries) == 2 and 'OSError: 503 Service Unavailable' in retries[0]
  assert 'retrying in 0.0 s' in retries[0]  # a quarter of renew_every: 0.01 s


def test_unrenewable_lease_is_lost_before_it_runs_out(tmp_path, monkeypatch):
  lock = workdir_lock.WorkdirLock(tmp_path, lease_seconds=100.0, renew_every=20.0)
  with lock:
    renewed = lock._holder.renewed
    _FailingWrites(monkeypatch, lock, failures=10)
    now = [renewed]
    monkeypatch.setattr(workdir_lock.time, 'time', lambda: now[0])
    # Gives up at 75 s (a quarter of the lease left): retries at 40 and 74 s, not at 76.
    now[0] = renewed + 40.0
    assert lock.renew_or_retry() == 5.0  # renew_every / 4
    now[0] = renewed + 74.0
    assert lock.renew_or_retry() == pytest.approx(1.0)  # until the give-up time
    assert not lock.lost
    now[0] = renewed + 76.0
    assert lock.renew_or_retry() is None
    assert lock.lost and 'could not be renewed (OSError: 503' in lock.lost_reason
    assert 'runs out in 25 s' in lock.lost_reason
    monkeypatch.undo()
  assert not lock.path.exists(), 'the lock, still at its version, is removed on release'


def test_lock_taken_by_another_run_is_lost(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path, renew_every=1000.0)
  with lock:
    lock_files.write_lock(tmp_path, host='node-7', token='other')  # another run took it over
    assert lock.renew_or_retry() is None
    assert lock.lost
    assert lock.lost_reason == f'the lock of workdir {tmp_path} was taken by another run'
  assert json.loads(lock.path.read_text())['token'] == 'other', 'release removed their lock'


# ---------------------------------------------------------------------------- gs://


def test_bucket_lock_is_exclusive_renewed_and_released(gcs_bucket):
  workdir = f'{gcs_bucket}/run'
  outcomes = [_contend(f'{workdir}{i}', 2) for i in range(10)]
  _assert_one_winner_each(outcomes, 2)
  lock = workdir_lock.WorkdirLock(workdir, renew_every=1000.0)
  with lock:
    with pytest.raises(workdir_lock.WorkdirLockedError, match='in use by another run'):
      workdir_lock.check_not_locked(workdir)
    first = lock.read()
    assert lock.renew_or_retry() == 1000.0
    assert lock.read().version != first.version and lock.read().holder.token == lock._holder.token
  assert lock.read() is None
