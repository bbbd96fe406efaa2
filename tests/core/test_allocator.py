"""glibc's mmap threshold fixed: a large buffer is mapped even after a larger one was freed."""

import os
import platform
import subprocess
import sys

import pytest

from stconsist_jax.core import allocator

# In a fresh process: free an 8 MiB block (glibc's dynamic threshold then rises to 8 MiB),
# then count the mappings a 1 MiB block adds while it is held (glibc's mallinfo2).
_PROBE = """
import ctypes, sys
from stconsist_jax.core import allocator
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',
              'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
fixed = allocator.map_large_buffers() if sys.argv[1] == 'fix' else False
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(fixed, libc.mallinfo2().hblks - before)
libc.free(block)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='a glibc malloc setting')


def _probe(mode):
  env = {k: v for k, v in os.environ.items() if k != allocator.ENV_VAR}
  proc = subprocess.run(
    [sys.executable, '-c', _PROBE, mode], capture_output=True, text=True, env=env, check=False
  )
  if 'mallinfo2' in proc.stderr:
    pytest.skip('glibc before 2.33 has no mallinfo2')
  assert proc.returncode == 0, proc.stderr
  fixed, mapped = proc.stdout.split()
  return fixed == 'True', int(mapped)


@glibc_only
def test_large_buffers_stay_mapped_once_the_threshold_is_fixed():
  # Default glibc: the freed 8 MiB block raised the threshold, 1 MiB comes from the heap.
  assert _probe('default') == (False, 0)
  # Fixed at 128 KiB: the 1 MiB block is a mapping of its own, returned when freed.
  assert _probe('fix') == (True, 1)


@glibc_only
def test_the_users_environment_setting_is_left_alone(monkeypatch):
  monkeypatch.setenv(allocator.ENV_VAR, '65536')
  assert not allocator.map_large_buffers()
