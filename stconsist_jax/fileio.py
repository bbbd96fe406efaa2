"""Atomic file writes: a temporary file in the same folder, renamed over the target.

A reader sees the old file or the new one, never a half-written one (configs, reports,
annotation pickles, PNGs); a failed write leaves no temporary file behind.
"""

import os
import pathlib
import tempfile


def atomic_write(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
  """Writes `data` (text as UTF-8) to `path`, creating its folder; returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, str):
    data = data.encode("utf-8")
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path
