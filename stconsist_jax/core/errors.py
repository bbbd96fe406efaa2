"""Errors a user can fix: the project's one base type for them, and the one-line exit that
the command lines give them. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2
EXIT_NO_SPACE = 74  # EX_IOERR: a full disk; rerunning once there is room continues.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How TensorFlow and tensorstore (orbax's writer) word them, in errors of their own types.
_NO_SPACE_TEXTS = ('No space left on device', 'Disk quota exceeded', "os_error_code='28'")


class UserError(Exception):
  """A mistake a user can fix, or a damaged input file; the message says what, in one line."""


class NoSpaceError(UserError, OSError):
  """A disk too full for what a command was about to write; what it wrote before stays."""


def one_line(text: object) -> str:
  """`text` with its whitespace folded: one line."""
  return ' '.join(str(text).split())


def describe(error: BaseException, limit: int = 300) -> str:
  """`Type: message` of an error on one line, cut at `limit` characters of message
  (libcurl, orbax and pickle errors span many lines)."""
  text = one_line(error)
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


def mentions_out_of_space(text: str) -> bool:
  """Whether a message says that a disk is full or a quota exceeded."""
  return any(marker in text for marker in _NO_SPACE_TEXTS)


def is_out_of_space(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk or quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
      return True
    if mentions_out_of_space(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def user_error_types() -> tuple[type[BaseException], ...]:
  """The project's own user errors, and the OS errors of a path the user gave."""
  return (UserError, FileNotFoundError, PermissionError)


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


@contextlib.contextmanager
def user_errors(*error_types: type[BaseException]) -> Iterator[None]:
  """Turns user errors (by default `user_error_types()`) into one line and exit 2, and
  a full disk into one line and `EXIT_NO_SPACE`."""
  caught = error_types or user_error_types()
  try:
    yield
  except NoSpaceError as e:
    fail_now(f'error: {e}', EXIT_NO_SPACE)  # Background writers may hold failed writes.
  except caught as e:
    fail(f'error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_space(e):
      raise
    # Background writers (orbax's) may still hold failed writes: exit at once.
    fail_now(
      f'error: no space left on the disk ({describe(e)}); free space and rerun', EXIT_NO_SPACE
    )
