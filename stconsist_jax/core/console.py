"""The console: progress bars with rate and ETA, the CPU's name, and quieting the libraries'
routine log lines so that a run's own lines stay readable.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any, TypeVar
from collections.abc import Iterable, Iterator

from absl import logging

T = TypeVar('T')


# Libraries whose INFO records (one per checkpoint event, shard, backend probe, ...)
# drown the run's own.
QUIET_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/etils/', '/jax/_src/')


# Warnings a library raises about its own code, which no user setting can avoid:
# TFDS 4.9's Tensor.decode_example reads its own deprecated `FeatureConnector.dtype`.
# And TFDS warns for every builder config not registered in advance, though the project
# makes them on purpose (any frame size, any class list).
LIBRARY_SELF_WARNINGS = (
  ('/tensorflow_datasets/', '`FeatureConnector.dtype` is deprecated'),
  ('/tensorflow_datasets/', 'Using custom data configuration'),
  # Orbax, tracking the best step, warns for every save without metrics, though only
  # evaluated steps have any.
  ('/orbax/', 'Requested `tracked_metric`; did not provide metrics'),
)


class LibraryFilter:
  """absl handler filter: drops the records of `libraries` below `level` (an absl level),
  and the warnings libraries raise about their own code; keeps everything else."""

  def __init__(self, libraries: tuple[str, ...] = QUIET_LIBRARIES, level: int = logging.WARNING):
    self.libraries = libraries
    self.level = level

  def filter(self, record: Any) -> bool:
    if any(
      lib in record.pathname and text in str(record.msg) for lib, text in LIBRARY_SELF_WARNINGS
    ):
      return False
    if record.levelno >= logging.converter.ABSL_TO_STANDARD[self.level]:
      return True
    return not any(lib in record.pathname for lib in self.libraries)


def quiet_library_logs(verbose: bool = False) -> None:
  """Hides library INFO logs and TensorFlow's C++ notices on the console (idempotent).

  With `verbose` nothing is hidden. TensorFlow reads its C++ log level once, when first
  imported: call this before anything imports it.
  """
  # TensorFlow only runs the input pipeline here (JPEG decoding, gathers, resizes), none
  # of which uses oneDNN; with oneDNN on it prints a notice no log level hides.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if verbose:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  handler = logging.get_absl_handler()
  if not any(getattr(f, 'libraries', None) == QUIET_LIBRARIES for f in handler.filters):
    handler.addFilter(LibraryFilter())


def cpu_model() -> str:
  """The CPU's model name as lscpu gives it (/proc/cpuinfo), else the platform's word."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top

  return platform.processor() or platform.machine()


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'


def progress(
  items: Iterable[T],
  total: int | None,
  desc: str,
  *,
  enabled: bool = True,
  log_every_s: float = 30.0,
) -> Iterator[T]:
  """Yields `items`, showing progress with an ETA: a tqdm bar on a TTY, else log lines.

  Without a TTY a line is logged at most every `log_every_s` seconds and at the end, so
  long evaluations in batch jobs still say how far they are.
  """
  if not enabled:
    yield from items
    return
  if sys.stderr.isatty():
    import tqdm  # pylint: disable=g-import-not-at-top

    yield from tqdm.tqdm(items, total=total, desc=desc, unit='batch', dynamic_ncols=True)
    return
  start = last = time.monotonic()
  done = 0
  for item in items:
    yield item
    done += 1
    now = time.monotonic()
    if now - last >= log_every_s or (total and done == total):
      last = now
      rate = done / max(now - start, 1e-9)
      if total:
        logging.info(
          '%s: %d/%d batches (%.0f%%), %s elapsed, ETA %s',
          desc,
          done,
          total,
          100 * done / total,
          format_seconds(now - start),
          format_seconds((total - done) / max(rate, 1e-9)),
        )
      else:
        logging.info('%s: %d batches, %s elapsed', desc, done, format_seconds(now - start))
