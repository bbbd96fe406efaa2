"""XLA flags of the test processes and the subprocesses they start.

Tests compile hundreds of tiny programs and run each for a few steps, so they ask XLA for
its quick CPU code generation: about 4x faster compiles of the tiny train step, steps about
3x slower. The reduced demo test trains larger clips and evaluates whole videos: it keeps
XLA's optimizations and turns off only the newer fusion emitters, which compile slower than
the classic ones at equal step time.
"""

import os

CLASSIC_EMITTERS = '--xla_cpu_use_fusion_emitters=false'
FAST_COMPILE = f'--xla_backend_optimization_level=0 {CLASSIC_EMITTERS}'


def xla_flags(num_devices: int) -> str:
  """XLA_FLAGS for `num_devices` simulated CPU devices with quick compiles."""
  return f'--xla_force_host_platform_device_count={num_devices} {FAST_COMPILE}'


def subprocess_env(num_devices: int = 1, **extra: str) -> dict[str, str]:
  """This process's environment for a subprocess with `num_devices` CPU devices."""
  return dict(os.environ, XLA_FLAGS=xla_flags(num_devices), **extra)
