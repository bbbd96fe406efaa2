"""Training logs: a console line per interval, a progress bar on a TTY, TensorBoard, JSON lines.

Only process 0 writes; TensorBoard (clu) needs TensorFlow. Optional: a trace of chosen steps.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pathlib
import sys
import time
from typing import Any, TypeVar
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import jax
import numpy as np

from stconsist_jax import fileio

T = TypeVar('T')
METRICS_FILENAME = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
PROFILE_DIR = 'profile'
CONSOLE_KEYS = ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'con_weight', 'accuracy', 'iou', 'lr')


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


class _DropLibraryInfo:
  """absl handler filter: keeps WARNING and above from `QUIET_LIBRARIES`, all else."""

  def filter(self, record: Any) -> bool:
    if any(
      lib in record.pathname and text in str(record.msg) for lib, text in LIBRARY_SELF_WARNINGS
    ):
      return False
    if record.levelno >= logging.converter.ABSL_TO_STANDARD[logging.WARNING]:
      return True
    return not any(lib in record.pathname for lib in QUIET_LIBRARIES)


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
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


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


def _format_seconds(seconds: float) -> str:
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
          _format_seconds(now - start),
          _format_seconds((total - done) / max(rate, 1e-9)),
        )
      else:
        logging.info('%s: %d batches, %s elapsed', desc, done, _format_seconds(now - start))


class JsonlWriter:
  """`metrics.jsonl` (one JSON dict per step), buffered and written whole at each flush.

  A bucket cannot append to an object, so the file's text is kept in memory and every
  flush writes all of it again through `fileio.atomic_write`. It has the scalar methods
  of clu's MetricWriter (write_scalars, flush, close) without subclassing it: importing
  `clu.metric_writers` imports TensorFlow, which this writer must not need.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = epath.Path(path)
    old = fileio.bounded(self._read, self.path, 'reading')
    self._text = drop_partial_last_line(old, self.path)
    self._new: list[str] = []
    self._dirty = self._text != old

  def _read(self) -> str:
    return self.path.read_text() if self.path.exists() else ''

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._new.append(json.dumps({'step': int(step), **values}) + '\n')

  def flush(self) -> None:
    if not (self._new or self._dirty):
      return
    self._text += ''.join(self._new)
    self._new = []
    self._dirty = False
    fileio.atomic_write(self.path, self._text)

  def close(self) -> None:
    self.flush()


_warned_no_tensorboard = False


def tensorboard_writer(logdir: str | os.PathLike) -> Any | None:
  """clu's TensorBoard writer (TF summaries) on `logdir`; None, warning once, without TF."""
  global _warned_no_tensorboard
  try:
    metric_writers = importlib.import_module('clu.metric_writers')
  except ImportError as e:
    if not _warned_no_tensorboard:
      _warned_no_tensorboard = True
      logging.warning(
        'No TensorBoard summaries (%s): training metrics go to the console and %s only',
        e,
        METRICS_FILENAME,
      )
    return None
  return metric_writers.SummaryWriter(os.fspath(logdir))


class IntervalClock:
  """Wall time of a logging interval and the part of it spent in `timed(name)` blocks.

  Like clu's `periodic_actions.ReportProgress.timed`, without its TensorFlow import.
  """

  def __init__(self, start_step: int):
    self._start = (start_step, time.monotonic())
    self._timed: dict[str, float] = {}

  @contextlib.contextmanager
  def timed(self, name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
      yield
    finally:
      self._timed[name] = self._timed.get(name, 0.0) + time.monotonic() - start

  def lap(self, step: int) -> tuple[float, float, dict[str, float]]:
    """(steps since the last lap, seconds, {name: fraction of them}); starts a new one."""
    start_step, start_time = self._start
    now = time.monotonic()
    elapsed = max(now - start_time, 1e-9)
    fractions = {k: v / elapsed for k, v in self._timed.items()}
    self._start = (step, now)
    self._timed = {}
    return step - start_step, elapsed, fractions


def interval_line(step: int, total_steps: int, means: Mapping[str, float]) -> str:
  """The console line of a logging interval: step, losses, speed, input share, ETA."""
  eta = (total_steps - step) / max(means['steps_per_sec'], 1e-9)
  parts = [f'{k}={means[k]:.4g}' for k in CONSOLE_KEYS if k in means]
  return (
    f'step {step}/{total_steps} ' + ' '.join(parts) + f' clips/s={means["clips_per_s"]:.1f} '
    f'input={100 * means["input_wait_fraction"]:.0f}% ETA {_format_seconds(eta)}'
  )


class MetricLogger:
  """Writes per-step metrics (JSON lines) and interval summaries (console, TensorBoard).

  `metrics.jsonl` and the TensorBoard events reach the workdir at each `flush()` (the
  training loop calls it at checkpoints, evaluations and preemption) and at `close()`.

  Attributes:
    workdir: where `metrics.jsonl` and the TensorBoard event files go (local or bucket).
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    total_steps: int,
    start_step: int,
    batch_size: int,
    enabled: bool = True,
    progress_bar: bool | None = None,
  ):
    self.workdir = epath.Path(workdir)
    self.enabled = enabled
    self._total_steps = total_steps
    self._batch_size = batch_size
    self._interval: list[Mapping[str, float]] = []
    self._clock = IntervalClock(start_step)
    self._tensorboard = None
    self._bar = None
    self._jsonl = None
    if not enabled:
      return
    self._jsonl = JsonlWriter(self.workdir / METRICS_FILENAME)
    self._tensorboard = self._bounded(
      lambda: tensorboard_writer(self.workdir / TENSORBOARD_DIR), 'opening'
    )
    if progress_bar is None:
      progress_bar = sys.stdout.isatty()
    if progress_bar:
      import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True)

  def _bounded(self, fn: Callable[[], T], what: str) -> T:
    """A TensorBoard call, bounded in time on a bucket (it may block on a full queue)."""
    return fileio.bounded(fn, self.workdir / TENSORBOARD_DIR, what, retry=False)

  def _write_tensorboard(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._tensorboard is not None:
      self._bounded(lambda: self._tensorboard.write_scalars(step, scalars), 'writing')

  def timed(self, name: str) -> contextlib.AbstractContextManager[None]:
    """Context whose wall time counts as `name` (e.g. 'input') in the interval's split."""
    return self._clock.timed(name)

  def write_steps(self, records: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
    """Buffers one JSON line per step and accumulates the interval's mean."""
    for step, metrics in records:
      values = {k: float(np.asarray(v)) for k, v in metrics.items()}
      self._interval.append(values)
      if self._jsonl is not None:
        self._jsonl.write_scalars(step, values)
    if self._bar is not None and records:
      self._bar.update(len(records))
      last = self._interval[-1]
      self._bar.set_postfix(loss=f'{last.get("loss", float("nan")):.4f}')

  def write_interval(self, step: int) -> dict[str, float]:
    """Console line + TensorBoard scalars of the mean over the steps since the last call.

    Besides the metrics' means: `steps_per_sec`, `clips_per_s` and `input_wait_fraction`
    (the share of the interval's wall time spent in `timed('input')`).
    """
    if not self._interval:
      return {}
    keys = self._interval[0].keys()
    means = {k: float(np.mean([m[k] for m in self._interval])) for k in keys}
    self._interval = []
    steps, elapsed, fractions = self._clock.lap(step)
    means['steps_per_sec'] = steps / elapsed
    means['clips_per_s'] = means['steps_per_sec'] * self._batch_size
    means['input_wait_fraction'] = fractions.get('input', 0.0)
    if not self.enabled:
      return means
    line = interval_line(step, self._total_steps, means)
    if self._bar is not None:
      self._bar.write(line)
    else:
      logging.info('%s', line)
    self._write_tensorboard(step, {f'train/{k}': v for k, v in means.items()})
    return means

  def write_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    logging.info(
      'eval step %d: %s', step, ' '.join(f'{k}={v:.4g}' for k, v in sorted(values.items()))
    )
    self._write_tensorboard(step, {f'eval/{k}': v for k, v in values.items()})

  def flush(self) -> None:
    """Writes the buffered JSON lines and TensorBoard events to the workdir."""
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tensorboard is not None:
      self._bounded(self._tensorboard.flush, 'flushing')

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    self.flush()
    if self._tensorboard is not None:
      self._bounded(self._tensorboard.close, 'closing')


class StepProfiler:
  """A JAX profiler trace of training steps [first, first + num) in `<workdir>/profile`.

  Off when `num` is 0, on processes other than 0 (enabled=False), and when a resumed run
  starts after `first`. View the trace with TensorBoard's profile plugin or Perfetto.
  """

  def __init__(self, workdir: str | os.PathLike, first: int, num: int, *, enabled: bool = True):
    self.logdir = epath.Path(workdir) / PROFILE_DIR
    self._first = first
    self._last = first + num - 1
    self._on = enabled and num > 0
    self._tracing = False

  def before_step(self, step: int) -> None:
    if self._on and step == self._first:
      jax.profiler.start_trace(os.fspath(self.logdir))
      self._tracing = True

  def after_step(self, step: int, outputs: Any) -> None:
    """Stops the trace after its last step has run (`outputs` are that step's)."""
    if self._tracing and step == self._last:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
      logging.info('Profile of steps %d-%d written to %s', self._first, self._last, self.logdir)


def drop_partial_last_line(text: str, source: str | os.PathLike = '') -> str:
  """`text` without a partly written last line (a run killed mid-write), with a warning.

  Without this, the next run's first line would be glued onto the fragment.
  """
  if not text or text.endswith('\n'):
    return text
  cut = text.rfind('\n') + 1
  logging.warning(
    '%s: dropping a partly written last line (%d bytes) left by an interrupted run',
    source,
    len(text[cut:].encode('utf-8')),
  )
  return text[:cut]


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads `metrics.jsonl` (one JSON dict per logged step, each with `step`).

  Blank lines are ignored; a truncated last line (a run killed mid-write) is skipped.
  A malformed line elsewhere raises a ValueError naming the file and line.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'training metrics log not found: {path}')
  lines = path.read_text().splitlines()
  records = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      if n == len(lines):
        continue
      raise ValueError(f'{path}:{n}: not a JSON object ({e})') from None
    if not isinstance(rec, dict) or 'step' not in rec:
      raise ValueError(f"{path}:{n}: expected a JSON object with a 'step' key")
    records.append(rec)
  return records


def read_metrics(workdir: str | os.PathLike) -> dict[int, dict[str, float]]:
  """step -> metrics from `metrics.jsonl`; a step logged twice (after a resume) keeps the last."""
  path = epath.Path(workdir) / METRICS_FILENAME
  if not path.exists():
    return {}
  out: dict[int, dict[str, float]] = {}
  for record in read_metrics_jsonl(path):
    record = dict(record)
    out[int(record.pop('step'))] = record
  return out
