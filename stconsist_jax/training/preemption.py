"""Stopping a run on SIGTERM: a flag the loop checks between steps (it then saves and stops),
and a watcher that ends a run whose storage stopped answering, keeping its checkpoints.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from absl import logging
import jax

from stconsist_jax.core import fileio


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the current step was saved."""

  def __init__(self, step: int):
    super().__init__(
      f'stopped by SIGTERM at step {step} after saving a checkpoint; '
      f'rerun the same command to resume'
    )
    self.step = step


# After SIGTERM the run may wait this long for its storage (at most the storage timeout).
SIGTERM_STORAGE_GRACE_SECONDS = 10.0
EXIT_SIGTERM = 128 + signal.SIGTERM


class SigtermFlag:
  """Records SIGTERM so a single-process loop can save and stop between steps.

  If the main thread then waits for the workdir's storage longer than the grace (a
  bucket outage), the process ends at once as SIGTERM's default would, with one line:
  the committed checkpoints are untouched. With several processes JAX's own preemption
  notifier watches SIGTERM instead.
  """

  def __init__(self, workdir: str, grace_s: float):
    self.received = False
    self.step = 0  # The last step run, for the message.
    self._workdir = workdir
    self._grace_s = grace_s
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after the current step')
    if not self.received:
      self.received = True
      watch = threading.Thread(
        target=self._end_if_storage_stalls, args=(time.monotonic(),), daemon=True
      )
      watch.start()

  def _end_if_storage_stalls(self, received_at: float) -> None:
    """Ends the process once the main thread has waited for storage past the grace."""
    while True:
      time.sleep(0.2)
      since = fileio.main_thread_waiting_since()
      if since is not None and time.monotonic() - max(since, received_at) > self._grace_s:
        self.end_process()

  def end_process(self) -> None:
    """After SIGTERM, when the storage does not answer: one line, exit code 143, now."""
    print(
      f'stopped by SIGTERM at step {self.step} without saving it: the storage of '
      f'{self._workdir} did not answer for {self._grace_s:g} s; rerun the same command '
      f'to resume from the last committed checkpoint',
      file=sys.stderr,
      flush=True,
    )
    os._exit(EXIT_SIGTERM)  # Threads stuck in the storage client would block a normal exit.

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
