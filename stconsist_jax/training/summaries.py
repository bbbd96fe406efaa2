"""The metric records of a run: metrics.jsonl (whole-file writes, tolerant reads) and the
TensorBoard writer (clu, TensorFlow loaded only when it is used).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any
from collections.abc import Mapping

from absl import logging
from etils import epath
import numpy as np

from stconsist_jax.core import fileio

METRICS_FILENAME = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


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
