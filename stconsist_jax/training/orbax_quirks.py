"""Orbax's rough edges on this project's runs, smoothed in one place: the tracebacks a failed
read or a write to a full disk leaves behind, and a compilation per replica slice at every
single-process save.
"""

from __future__ import annotations

import contextlib
import gc
import logging as std_logging
import sys
from typing import Any
from collections.abc import Iterator

import jax
import orbax.checkpoint as ocp

from stconsist_jax.core import errors


def _is_closed_loop_callback(unraisable: Any) -> bool:
  return isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(
    unraisable.exc_value
  )


@contextlib.contextmanager
def _log_records_dropped(logger_name: str, text: str) -> Iterator[None]:
  """Drops the records of Python logger `logger_name` that contain `text`, meanwhile."""
  logger = std_logging.getLogger(logger_name)
  dropped = std_logging.Filter()
  dropped.filter = lambda record: text not in record.getMessage()
  logger.addFilter(dropped)
  try:
    yield
  finally:
    logger.removeFilter(dropped)


_closed_loop_callbacks_dropped = False


def _drop_closed_loop_callbacks() -> None:
  """From now on in this process, drops callbacks into an event loop orbax has closed.

  They come from the reads of a damaged step that orbax abandoned when one of them
  failed, and can arrive after the restore has returned, in the middle of training.
  """
  global _closed_loop_callbacks_dropped
  if _closed_loop_callbacks_dropped:
    return
  previous_hook = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    if not _is_closed_loop_callback(unraisable):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  _closed_loop_callbacks_dropped = True


@contextlib.contextmanager
def failed_read_leftovers_silenced() -> Iterator[None]:
  """Hides what a failed orbax read leaves behind, once its error has been reported.

  When one array of a damaged step fails, orbax closes its event loop with the reads of
  the other arrays still pending: asyncio logs each of their errors as "never retrieved"
  and tensorstore's callbacks into the closed loop print "Event loop is closed", screens
  of tracebacks after the one warning that says what happened. Only those two kinds of
  message are hidden: the first while a read and its clean-up run, the second for good.
  A read that succeeded leaves nothing behind, so only a failed one pays for the full
  garbage collection (a second or more in a process that holds JAX and TensorFlow).
  """
  _drop_closed_loop_callbacks()
  with _log_records_dropped('asyncio', 'never retrieved'):
    try:
      yield
    except BaseException:
      gc.collect()  # The abandoned tasks report when collected: here, while filtered.
      raise


_full_disk_errors_dropped = False


def _says_out_of_space(record: std_logging.LogRecord) -> bool:
  exc = record.exc_info[1] if record.exc_info else None
  return errors.is_out_of_space(exc) or errors.mentions_out_of_space(record.getMessage())


def full_disk_write_errors_silenced() -> None:
  """From now on in this process, hides what orbax's writer threads print when the disk
  fills during a save: each thread's error with its traceback, asyncio's "never
  retrieved" and tensorstore's callbacks into the closed loop, a thousand lines. The
  error itself reaches the main thread at the next save or wait, where it becomes one
  line (`checkpointing.NoSpaceError`); other errors of orbax are shown as before.
  """
  global _full_disk_errors_dropped
  if _full_disk_errors_dropped:
    return
  _drop_closed_loop_callbacks()
  dropped = std_logging.Filter()
  dropped.filter = lambda record: not _says_out_of_space(record)
  for name in ('absl', 'asyncio'):
    std_logging.getLogger(name).addFilter(dropped)
  _full_disk_errors_dropped = True


_replicas_saved_unsliced = False


def save_replicas_without_slicing() -> None:
  """In one process, saves each replicated array from one replica, unsliced (once).

  Orbax's CPU default splits a replicated array across its replicas so that several
  hosts share the writing; with one host every slice is written by this process anyway,
  and each distinct slice shape costs a compilation at the first save (dozens with the
  8-device CPU mesh of the tests). Multi-process runs keep orbax's default. Orbax warns
  of any override; this one is deliberate, so its notice is not shown.
  """
  global _replicas_saved_unsliced
  if _replicas_saved_unsliced or jax.process_count() != 1:
    return
  with _log_records_dropped('absl', 'overriding'):
    ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )
  _replicas_saved_unsliced = True
