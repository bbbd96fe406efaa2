"""The console filter that hides library INFO logs keeps everything else."""

import logging as std_logging

from absl import logging

from stconsist_jax import logging_utils


def _record(level: int, pathname: str) -> std_logging.LogRecord:
  return std_logging.LogRecord('absl', level, pathname, 1, 'msg', None, None)


def test_library_info_dropped_warnings_and_own_logs_kept():
  f = logging_utils._DropLibraryInfo()  # pylint: disable=protected-access
  orbax = '/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert not f.filter(_record(std_logging.INFO, orbax))
  assert not f.filter(_record(std_logging.INFO, '/site-packages/tensorflow_datasets/x.py'))
  assert f.filter(_record(std_logging.WARNING, orbax))
  assert f.filter(_record(std_logging.ERROR, orbax))
  assert f.filter(_record(std_logging.INFO, '/repo/stconsist_jax/train.py'))


def test_quiet_library_logs_installs_one_filter():
  logging_utils.quiet_library_logs()
  logging_utils.quiet_library_logs()
  handler = logging.get_absl_handler()
  installed = [f for f in handler.filters
               if isinstance(f, logging_utils._DropLibraryInfo)]  # pylint: disable=protected-access
  assert len(installed) == 1
