"""Training logs: a console line per interval, a progress bar on a TTY, TensorBoard, JSON lines.

Only process 0 writes. TensorBoard goes through tensorboardX (no TensorFlow needed).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar

from absl import logging
import numpy as np

T = TypeVar('T')
METRICS_FILENAME = 'metrics.jsonl'
CONSOLE_KEYS = ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'w', 'accuracy', 'iou', 'lr')


# Libraries whose INFO records (one per checkpoint event, shard, backend probe, ...)
# drown the run's own.
QUIET_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/etils/', '/jax/_src/')


# Warnings a library raises about its own code, which no user setting can avoid:
# TFDS 4.9's Tensor.decode_example reads its own deprecated `FeatureConnector.dtype`.
# And TFDS warns for every builder config not registered in advance, though the project
# makes them on purpose (any frame size, any class list).
LIBRARY_SELF_WARNINGS = (
    ('/tensorflow_datasets/', '`FeatureConnector.dtype` is deprecated'),
    ('/tensorflow_datasets/', 'Using custom data configuration'))


class _DropLibraryInfo:
  """absl handler filter: keeps WARNING and above from `QUIET_LIBRARIES`, all else."""

  def filter(self, record: Any) -> bool:
    if any(lib in record.pathname and text in str(record.msg)
           for lib, text in LIBRARY_SELF_WARNINGS):
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


def progress(items: Iterable[T], total: int | None, desc: str, *,
             enabled: bool = True, log_every_s: float = 30.0) -> Iterator[T]:
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
        logging.info('%s: %d/%d batches (%.0f%%), %s elapsed, ETA %s', desc, done, total,
                     100 * done / total, _format_seconds(now - start),
                     _format_seconds((total - done) / max(rate, 1e-9)))
      else:
        logging.info('%s: %d batches, %s elapsed', desc, done,
                     _format_seconds(now - start))


class MetricLogger:
  """Writes per-step metrics (JSON lines) and interval summaries (console, TensorBoard).

  Attributes:
    workdir: where `metrics.jsonl` and the TensorBoard event files go.
  """

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int,
               batch_size: int, enabled: bool = True, progress_bar: bool | None = None):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._total_steps = total_steps
    self._batch_size = batch_size
    self._interval: list[Mapping[str, float]] = []
    self._interval_start = (start_step, time.monotonic())
    self._writer = None
    self._bar = None
    self._jsonl = None
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    repair_partial_last_line(self.workdir / METRICS_FILENAME)
    self._jsonl = open(self.workdir / METRICS_FILENAME, 'a')
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._writer = SummaryWriter(str(self.workdir / 'tensorboard'))
    if progress_bar is None:
      progress_bar = sys.stdout.isatty()
    if progress_bar:
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step',
                            dynamic_ncols=True)

  def write_steps(self, records: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
    """Appends one JSON line per step and accumulates the interval's mean."""
    for step, metrics in records:
      values = {k: float(np.asarray(v)) for k, v in metrics.items()}
      self._interval.append(values)
      if self._jsonl is not None:
        self._jsonl.write(json.dumps({'step': int(step), **values}) + '\n')
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._bar is not None and records:
      self._bar.update(len(records))
      last = self._interval[-1]
      self._bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")

  def write_interval(self, step: int) -> dict[str, float]:
    """Console line + TensorBoard scalars of the mean over the steps since the last call."""
    if not self._interval:
      return {}
    keys = self._interval[0].keys()
    means = {k: float(np.mean([m[k] for m in self._interval])) for k in keys}
    start_step, start_time = self._interval_start
    elapsed = max(time.monotonic() - start_time, 1e-9)
    steps_per_s = (step - start_step) / elapsed
    means['clips_per_s'] = steps_per_s * self._batch_size
    self._interval = []
    self._interval_start = (step, time.monotonic())
    if not self.enabled:
      return means
    eta = (self._total_steps - step) / max(steps_per_s, 1e-9)
    parts = [f'{k}={means[k]:.4g}' for k in CONSOLE_KEYS if k in means]
    line = (f'step {step}/{self._total_steps} ' + ' '.join(parts) +
            f" clips/s={means['clips_per_s']:.1f} ETA {_format_seconds(eta)}")
    if self._bar is not None:
      self._bar.write(line)
    else:
      logging.info('%s', line)
    for k, v in means.items():
      self._writer.add_scalar(f'train/{k}', v, step)
    self._writer.flush()
    return means

  def write_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    logging.info('eval step %d: %s', step,
                 ' '.join(f'{k}={v:.4g}' for k, v in sorted(values.items())))
    for k, v in values.items():
      self._writer.add_scalar(f'eval/{k}', v, step)
    self._writer.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()
    if self._jsonl is not None:
      self._jsonl.close()


def repair_partial_last_line(path: pathlib.Path) -> None:
  """Cuts a partly written last line (a run killed mid-write) before appending to `path`.

  Without this, the next run's first line would be glued onto the fragment.
  """
  if not path.exists():
    return
  with open(path, 'rb+') as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b'\n':
      return
    tail_start = max(size - 65536, 0)
    f.seek(tail_start)
    tail = f.read()
    cut = tail_start + tail.rfind(b'\n') + 1 if b'\n' in tail else 0
    logging.warning('%s: dropping a partly written last line (%d bytes) left by an '
                    'interrupted run', path, size - cut)
    f.truncate(cut)


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads `metrics.jsonl` (one JSON dict per logged step, each with `step`).

  Blank lines are ignored; a truncated last line (a run killed mid-write) is skipped.
  A malformed line elsewhere raises a ValueError naming the file and line.
  """
  path = pathlib.Path(path)
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
  path = pathlib.Path(workdir) / METRICS_FILENAME
  if not path.exists():
    return {}
  out: dict[int, dict[str, float]] = {}
  for record in read_metrics_jsonl(path):
    record = dict(record)
    out[int(record.pop('step'))] = record
  return out
