"""Atomic file writes: a temporary file in the same folder, renamed over the target.

A reader sees the old file or the new one, never a half-written one (configs, reports,
annotation pickles, PNGs); a failed write leaves no temporary file behind. The file
gets the mode open() would give it: an existing file's own, else 0666 minus the umask.
"""

import os
import pathlib
import stat
import tempfile


def _umask() -> int:
  """The process umask, read without changing it where the system allows."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)  # No other way to read it: set and restore at once.
  os.umask(mask)
  return mask


def _target_mode(path: pathlib.Path) -> int:
  """The permission bits open(path, 'w') would leave on `path`."""
  try:
    return stat.S_IMODE(os.stat(path).st_mode)
  except FileNotFoundError:
    return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
  """Writes `data` (text as UTF-8) to `path`, creating its folder; returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, str):
    data = data.encode("utf-8")
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), _target_mode(path))  # mkstemp makes it private (0600).
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path
