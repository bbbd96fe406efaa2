"""Training logs: the library-log filter, metrics.jsonl written whole, the interval line.

TensorBoard events are read back with TensorFlow; one test hides TensorFlow's writer.
"""

import logging as std_logging
import sys

from absl import logging
import numpy as np

from stconsist_jax.core import console

from stconsist_jax.training import metric_logger

from stconsist_jax.training import summaries


def _record(level: int, pathname: str) -> std_logging.LogRecord:
  return std_logging.LogRecord('absl', level, pathname, 1, 'msg', None, None)


def test_library_info_dropped_warnings_and_own_logs_kept():
  f = console.LibraryFilter()
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not f.filter(_record(std_logging.INFO, orbax))
  assert not f.filter(_record(std_logging.INFO, '/site-packages/tensorflow_datasets/x.py'))
  assert f.filter(_record(std_logging.WARNING, orbax))
  assert f.filter(_record(std_logging.ERROR, orbax))
  assert f.filter(_record(std_logging.INFO, '/repo/stconsist_jax/training/train.py'))
  # Prediction drops orbax's routine warnings too, and keeps its errors.
  g = console.LibraryFilter(('/orbax/',), logging.ERROR)
  assert not g.filter(_record(std_logging.WARNING, orbax))
  assert g.filter(_record(std_logging.ERROR, orbax))
  assert g.filter(_record(std_logging.WARNING, '/site-packages/tensorflow_datasets/x.py'))


def test_quiet_library_logs_installs_one_filter():
  console.quiet_library_logs()
  console.quiet_library_logs()
  handler = logging.get_absl_handler()
  installed = [f for f in handler.filters if isinstance(f, console.LibraryFilter)]
  assert len(installed) == 1


# ------------------------------------------------------------------ metrics.jsonl


def _fake_clock(monkeypatch, start: float = 100.0) -> list[float]:
  """metric_logger's monotonic clock, advanced by assigning now[0]."""
  now = [start]
  monkeypatch.setattr(metric_logger.time, 'monotonic', lambda: now[0])
  return now


def test_jsonl_is_written_whole_at_each_flush_only(tmp_path, monkeypatch):
  writes = []
  real_write = summaries.fileio.atomic_write

  def recording_write(path, data):
    writes.append((str(path), data))
    return real_write(path, data)

  monkeypatch.setattr(summaries.fileio, 'atomic_write', recording_write)
  path = tmp_path / 'run' / 'metrics.jsonl'
  writer = summaries.JsonlWriter(str(path))
  writer.write_scalars(1, {'loss': np.float32(0.5)})
  writer.write_scalars(2, {'loss': 0.25, 'lr': 1})
  assert not path.exists(), 'nothing reaches the workdir before a flush'
  writer.flush()
  first = '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25, "lr": 1.0}\n'
  assert path.read_text() == first
  writer.flush()  # Nothing new: no write.
  writer.write_scalars(3, {'loss': 0.125})
  writer.close()
  second = first + '{"step": 3, "loss": 0.125}\n'
  assert writes == [(str(path), first), (str(path), second)]
  assert path.read_text() == second


def test_partial_last_line_of_an_old_run_is_dropped_with_a_warning(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(
    metric_logger.logging, 'warning', lambda msg, *args: warnings.append(msg % args)
  )
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  writer = summaries.JsonlWriter(path)
  assert len(warnings) == 1 and '(15 bytes)' in warnings[0], warnings
  writer.write_scalars(2, {'loss': 3.0})
  writer.close()
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 3.0}\n'
  assert summaries.read_metrics(tmp_path) == {1: {'loss': 2.0}, 2: {'loss': 3.0}}


def test_drop_partial_last_line_cases():
  drop = summaries.drop_partial_last_line
  assert drop('') == ''
  assert drop('a\nb\n') == 'a\nb\n'
  assert drop('a\nb') == 'a\n'
  assert drop('only a fragment') == ''


# ------------------------------------------------------------------ MetricLogger


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of the TensorBoard event files under `logdir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  out = {}
  for path in sorted(logdir.glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        number = float(tf.make_ndarray(value.tensor))
        out.setdefault(value.tag, []).append((event.step, number))
  return out


def test_interval_splits_input_wait_and_writes_tensorboard(tmp_path, monkeypatch):
  now = _fake_clock(monkeypatch)
  logger = metric_logger.MetricLogger(
    tmp_path, total_steps=20, start_step=0, batch_size=4, progress_bar=False
  )
  lines = []
  monkeypatch.setattr(metric_logger.logging, 'info', lambda msg, *args: lines.append(msg % args))
  for step in range(1, 6):  # 5 steps in 10 s, 2.5 s of them waiting for input.
    with logger.timed('input'):
      now[0] += 0.5
    now[0] += 1.5
    logger.write_steps([(step, {'loss': float(step)})])
  means = logger.write_interval(5)
  assert means == {
    'loss': 3.0,
    'steps_per_sec': 0.5,
    'clips_per_s': 2.0,
    'input_wait_fraction': 0.25,
  }
  assert lines == ['step 5/20 loss=3 clips/s=2.0 input=25% ETA 0:00:30']
  logger.close()
  events = _events(tmp_path / 'tensorboard')
  assert events['train/input_wait_fraction'] == [(5, 0.25)]
  assert events['train/steps_per_sec'] == [(5, 0.5)]
  assert events['train/loss'] == [(5, 3.0)]
  assert summaries.read_metrics(tmp_path) == {s: {'loss': float(s)} for s in range(1, 6)}


def test_without_tensorflow_console_and_jsonl_only_one_warning(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'clu.metric_writers', None)  # as if TF were missing
  monkeypatch.setattr(summaries, '_warned_no_tensorboard', False)
  warnings = []
  monkeypatch.setattr(
    metric_logger.logging, 'warning', lambda msg, *args: warnings.append(msg % args)
  )
  for run in ('a', 'b'):
    logger = metric_logger.MetricLogger(
      tmp_path / run, total_steps=2, start_step=0, batch_size=1, progress_bar=False
    )
    logger.write_steps([(1, {'loss': 1.5})])
    assert logger.write_interval(1)['loss'] == 1.5
    logger.close()
    assert summaries.read_metrics(tmp_path / run) == {1: {'loss': 1.5}}
    assert not (tmp_path / run / 'tensorboard').exists()
  assert len(warnings) == 1 and 'TensorBoard' in warnings[0], warnings


def test_other_processes_write_nothing(tmp_path):
  logger = metric_logger.MetricLogger(
    tmp_path / 'w', total_steps=2, start_step=0, batch_size=1, enabled=False
  )
  logger.write_steps([(1, {'loss': 1.0})])
  assert logger.write_interval(1)['loss'] == 1.0
  logger.close()
  assert not (tmp_path / 'w').exists()
