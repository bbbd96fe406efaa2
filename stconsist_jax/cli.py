"""Command-line plumbing shared by launch.py and the tools: flags and user errors in one line.

A bad --config file, an unknown --config.* key, a wrong value or a busy workdir gives one
line on stderr and exit code 2, never a traceback; real bugs still raise.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence

from absl import flags

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
  """Prints `message` as one line on stderr and exits with EXIT_USER_ERROR."""
  print(message, file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def fail_now(message: str, code: int) -> None:
  """Prints `message` as one line on stderr and ends the process at once with `code`.

  For a run whose background threads are stuck (a bucket outage): sys.exit would wait
  for them.
  """
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def _config_path(argv: Sequence[str], name: str) -> str | None:
  return next((a.split('=', 1)[1] for a in argv[1:] if a.startswith(f'--{name}=')), None)


def define_config_file(name: str, default: str | None, help_string: str) -> object:
  """config_flags.DEFINE_config_file; a bad override of the default config is one line.

  With a default file, ml_collections applies --name.* overrides while defining the flag,
  so an unknown key raises at import time, before app.run can report it.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  try:
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail(_override_error(sys.argv, name, e))


def _missing_field(error: Exception) -> str | None:
  """The field that ml_collections names first when an override's key does not exist.

  It raises KeyError (a missing group) or AttributeError (a missing field) whose message
  starts with the quoted field.
  """
  if not isinstance(error, (KeyError, AttributeError)):
    return None
  found = re.match(r"""[\s\\'"]*(\w+)""", str(error))
  return found.group(1) if found else None


def _override_error(argv: Sequence[str], name: str, error: Exception) -> str:
  """One line for a --name.* override that ml_collections refused."""
  keys = [a[2:].split('=')[0][len(name) + 1 :] for a in argv[1:] if a.startswith(f'--{name}.')]
  field = _missing_field(error)
  missing = [k for k in keys if field in k.split('.')] if field else []
  where = (
    f'config key {missing[0]!r} does not exist'
    if missing
    else f'bad override among {[f"{name}.{k}" for k in keys]}'
  )
  hint = re.search(r'Did you mean "([^"]+)"', str(error))
  detail = f' (did you mean {hint.group(1)!r}?)' if hint else f' ({error})'
  return f'invalid config: {where}{detail}'


def _config_file_error(argv: Sequence[str], name: str, error: Exception) -> str:
  path = _config_path(argv, name)
  cause = error.__cause__ or error
  text = ' '.join(str(cause).split())
  if isinstance(cause, OSError) and 'No such file' in text:
    return f'invalid --{name}: config file {path!r} not found'
  return f'invalid --{name}={path}: {type(cause).__name__}: {text[:300]}'


def parse_flags(argv: list[str], config_flags: Sequence[str] = ('config',)) -> list[str]:
  """absl flag parsing for app.run(flags_parser=...): bad flags and configs in one line."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'FATAL flags parsing error: {e}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for unknown keys and type mismatches of overrides.
    fail(_override_error(argv, config_flags[0], e))
  for name in config_flags:
    try:
      flags.FLAGS[name].value.keys()  # A config file that failed to load raises here.
    except Exception as e:  # pylint: disable=broad-except
      fail(_config_file_error(argv, name, e))
  return rest


@contextlib.contextmanager
def user_errors(*error_types: type[BaseException]) -> Iterator[None]:
  """Turns the given error types (mistakes a user can fix) into one line and exit 2."""
  try:
    yield
  except error_types as e:
    fail(f'error: {e}')


def project_user_errors() -> tuple[type[BaseException], ...]:
  """The error types that describe a user's mistake or a damaged file.

  The project's own types, and the OS errors of a path the user gave; any other
  exception is a bug and keeps its traceback.
  """
  # pylint: disable=g-import-not-at-top
  from stconsist_jax import checkpointing
  from stconsist_jax import config_lib
  from stconsist_jax import train
  from stconsist_jax import workdir_lock
  from stconsist_jax.data import annotations
  from stconsist_jax.models import param_trees
  from stconsist_jax.models import pretrained

  # pylint: enable=g-import-not-at-top
  return (
    config_lib.ConfigError,
    workdir_lock.WorkdirLockedError,
    checkpointing.CheckpointReadError,
    param_trees.ParameterTreeMismatchError,
    pretrained.ConversionError,
    annotations.DataFileError,
    train.TrainingDataExhaustedError,
    FileNotFoundError,
    PermissionError,
  )
