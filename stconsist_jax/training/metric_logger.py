"""Training logs: a console line per interval, a progress bar on a TTY, and the metric
records (JSON lines, TensorBoard) of process 0; optionally a trace of chosen steps.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import jax
import numpy as np

from stconsist_jax.core import console
from stconsist_jax.core import fileio
from stconsist_jax.training import summaries


T = TypeVar('T')
PROFILE_DIR = 'profile'
CONSOLE_KEYS = (
  'loss',
  'cls',
  'loc',
  'con_cls',
  'con_loc',
  'tubelet_cls',
  'tubelet_box',
  'tubelet_giou',
  'tubelet_presence',
  'con_dense_cls',
  'con_dense_box',
  'con_weight',
  'accuracy',
  'iou',
  'lr',
)


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
    f'input={100 * means["input_wait_fraction"]:.0f}% ETA {console.format_seconds(eta)}'
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
    self._jsonl = summaries.JsonlWriter(self.workdir / summaries.METRICS_FILENAME)
    self._tensorboard = self._bounded(
      lambda: summaries.tensorboard_writer(self.workdir / summaries.TENSORBOARD_DIR), 'opening'
    )
    if progress_bar is None:
      progress_bar = sys.stdout.isatty()
    if progress_bar:
      import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True)

  def _bounded(self, fn: Callable[[], T], what: str) -> T:
    """A TensorBoard call, bounded in time on a bucket (it may block on a full queue)."""
    return fileio.bounded(fn, self.workdir / summaries.TENSORBOARD_DIR, what, retry=False)

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
