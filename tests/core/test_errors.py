"""A full disk is recognized in each form the libraries raise it (core/errors.py)."""

import errno

import pytest

from stconsist_jax.core import errors

# As measured on a full file system: orbax's writer (tensorstore) and a TFDS build.
TENSORSTORE = (
  'RESOURCE_EXHAUSTED: Error writing local file "/run/checkpoints/12.orbax-checkpoint-tmp/'
  'train.orbax-checkpoint-tmp/_sharding": Failed to write 1154 bytes to file 25: No space '
  "left on device [os_error_code='28']"
)
TFDS = (
  'ResourceExhaustedError: Failed to finalize writing of split "train": /data/tfds/'
  'incomplete.FERORD_1.0.0/ucf101_stconsist-train.tfrecord-00000-of-00001; No space left '
  'on device'
)


def test_out_of_space_is_recognized_in_each_form_it_takes():
  assert errors.is_out_of_space(OSError(errno.ENOSPC, 'No space left on device'))
  assert errors.is_out_of_space(OSError(errno.EDQUOT, 'Disk quota exceeded'))
  assert errors.is_out_of_space(ValueError(TENSORSTORE))
  assert errors.is_out_of_space(RuntimeError(TFDS))
  try:
    try:
      raise OSError(errno.ENOSPC, 'write')
    except OSError as inner:
      raise RuntimeError('save failed') from inner
  except RuntimeError as outer:
    assert errors.is_out_of_space(outer)
  assert not errors.is_out_of_space(ValueError('RESOURCE_EXHAUSTED: out of memory'))
  assert not errors.is_out_of_space(OSError(errno.EACCES, 'Permission denied'))
  assert not errors.is_out_of_space(None)


class _Ended(Exception):
  """Stands in for os._exit, which would end the test process."""


def test_commands_end_a_full_disk_in_one_line_and_exit_74(monkeypatch, capsys):
  codes = []

  def exit_now(code):
    codes.append(code)
    raise _Ended

  monkeypatch.setattr(errors.os, '_exit', exit_now)
  for error in (RuntimeError(TFDS), errors.NoSpaceError('no space left for step 8 in /r')):
    with pytest.raises(_Ended):
      with errors.user_errors():
        raise error
  with pytest.raises(KeyError):  # Anything else is a bug and keeps its traceback.
    with errors.user_errors():
      raise KeyError('a bug')
  assert codes == [errors.EXIT_NO_SPACE] * 2 == [74] * 2
  assert capsys.readouterr().err.splitlines() == [
    f'error: no space left on the disk (RuntimeError: {TFDS}); free space and rerun',
    'error: no space left for step 8 in /r',
  ]
