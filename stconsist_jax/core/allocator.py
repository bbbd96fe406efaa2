"""A long run's peak memory kept flat under glibc's malloc: buffers of 128 KiB and more
always get their own mapping, returned to the system when freed (`map_large_buffers`).

glibc serves a request of at least its mmap threshold with a mapping of its own. The
threshold starts at 128 KiB but is dynamic: freeing a mapped block raises it to that
block's size (up to 32 MiB), after which frame-sized buffers (decoded and drawn frames,
batches of clips, a runtime's host copies) come from the heaps, one per thread, whose
free space fragments, so that their peak grows with the number of buffers a video
needs. Setting the threshold (mallopt M_MMAP_THRESHOLD, or the environment variable
MALLOC_MMAP_THRESHOLD_) fixes it. Elsewhere than glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's initial threshold, made fixed
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
ENV_VAR = 'MALLOC_MMAP_THRESHOLD_'  # read by glibc at start: when set, it is left alone


def map_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
  """Fixes glibc's mmap threshold at `threshold` bytes for the rest of the process.

  Returns whether it was set: False without glibc, and when MALLOC_MMAP_THRESHOLD_ is
  set (the user's choice, already applied by glibc). Call it early, before the
  first large buffers are freed: blocks the heaps hold already stay there.
  """
  if platform.libc_ver()[0] != 'glibc' or os.environ.get(ENV_VAR):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
