"""Train-step benchmark: clips/s and achieved FLOP/s of the jitted step, optionally against PyTorch.

Times `stconsist_jax.training.train_step.make_train_step` (the clip and its flipped copy in one forward
pass, all four losses, SGD with momentum) for each compute dtype and batch size; the FLOPs
of a step come from XLA's cost analysis of the compiled step. The batches are
`random_source.random_batch` (the keys and dtypes of a training batch), fed in one or
more ways (`--prefetch`, a list): -1 = two batches put on the devices before timing and
repeated (no input cost); N >= 0 = a new host batch every step, as from a data pipeline,
through `distributed.prefetch_to_mesh` N steps ahead (0: sharded at each step). The step
is compiled once per dtype and batch size and timed with each input. With `--torch`, the
same detector, losses and step in PyTorch run in the same process after each JAX setting
(once, whatever the inputs), and `ratio` = JAX clips/s / PyTorch clips/s. A clip counts
once although it is computed twice (itself and its flip). Each (dtype, batch size,
input) prints one JSON line on stdout; on a GPU of known peak it includes `mfu`. No
TensorFlow is imported.

  python benchmarks/train_step.py --batch_sizes=2 --dtypes=float32,bfloat16 --torch
  python benchmarks/train_step.py --prefetch=-1,0,2  # the cost of feeding host batches
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import sys
import time
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

# Without this, JAX would take 75% of the GPU's memory and leave PyTorch too little.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402


from stconsist_jax.configs import default as default_config
from stconsist_jax.config import schema
from stconsist_jax.training import distributed
from stconsist_jax import models
from stconsist_jax.training import train_step
from stconsist_jax.data.pipeline import random_source

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['2'], 'Global batch sizes (clips per step).')
_DTYPES = flags.DEFINE_list(
  'dtypes', ['float32', 'bfloat16'], 'Compute dtypes (config.model.dtype): float32, bfloat16.'
)
_DEPTH = flags.DEFINE_integer('depth', 34, 'ResNet3D depth: 10, 18, 34, 50, 101, 152, 200.')
_WIDEN = flags.DEFINE_float('widen_factor', 1.0, 'Channel multiplier of the backbone.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 128, 'Clip height and width.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 16, 'Frames per clip.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Timed steps per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps before timing (after compiling).')
_BOX_HEAD = flags.DEFINE_enum(
  'box_head', 'mlp', ['mlp', 'spatial', 'none'], "Box head (mlp = the study's Model-2 head)."
)
_CONV_IMPL = flags.DEFINE_enum(
  'conv_impl', 'auto', ['auto', 'xla', 'conv2d'], '3D conv lowering (config.model.conv_impl).'
)
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 0, 'Devices in the mesh (0 = all).')
_PREFETCH = flags.DEFINE_list(
  'prefetch',
  ['-1'],
  'Inputs, each timed with the same compiled step: -1 = batches resident on the '
  'devices (no input cost); N >= 0 = host batches through distributed.prefetch_to_mesh, '
  'N ahead (0 = shard per step).',
)
_TORCH = flags.DEFINE_bool('torch', False, 'Also time the same step in PyTorch.')
_TORCH_CPU_BF16 = flags.DEFINE_bool(
  'torch_cpu_bf16',
  False,
  'With --torch on a CPU, also run PyTorch in bfloat16, with '
  'oneDNN disabled (its bf16 backward crashed on torch 2.13; the fallback is slow).',
)

# Peak dense TFLOP/s per device: (device_kind substring, {dtype: peak}), first match
# wins. float32 is the plain FP32 (non-tensor-core) peak; 'tf32' is the tensor-core TF32
# peak, which XLA may use for float32 convolutions at default precision.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
  ('H100 PCIe', {'bfloat16': 756.0, 'float32': 51.0, 'tf32': 378.0}),
  ('H100', {'bfloat16': 989.0, 'float32': 67.0, 'tf32': 495.0}),
  ('H200', {'bfloat16': 989.0, 'float32': 67.0, 'tf32': 495.0}),
  ('A100', {'bfloat16': 312.0, 'float32': 19.5, 'tf32': 156.0}),
)


def bench_config(
  *,
  depth: int,
  widen_factor: float,
  image_size: int,
  num_frames: int,
  batch_size: int,
  dtype: str,
  box_head: str,
  conv_impl: str,
) -> ml_collections.ConfigDict:
  """configs/default.py (Model-2, consistency on) with the benchmark's settings."""
  config = default_config.get_config()
  config.data.name = 'random'
  config.data.image_size = config.data.frame_size = image_size
  config.data.num_frames = num_frames
  config.model.depth = depth
  config.model.widen_factor = widen_factor
  config.model.dtype = dtype
  config.model.box_head = box_head
  config.model.conv_impl = conv_impl
  config.train.batch_size = batch_size
  config.loss.rampup_steps = 0  # Full consistency weight (the compute is the same).
  return config


def cost_flops(compiled: Any) -> float | None:
  """FLOPs of a compiled computation from XLA's cost analysis (dict or list of dicts)."""
  analysis = compiled.cost_analysis()
  if analysis is None:
    return None
  if isinstance(analysis, Mapping):
    analysis = [analysis]
  total = sum(float(a.get('flops', 0.0)) for a in analysis if a)
  return total if total > 0 else None


def peak_flops_per_s(device_kind: str, dtype: str) -> float | None:
  """Peak dense FLOP/s of one device of `device_kind` for `dtype`, None if unknown."""
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return peaks[dtype] * 1e12
  return None


def batch_stream(
  config: ml_collections.ConfigDict, mesh: Any, prefetch: int
) -> Iterator[dict[str, jax.Array]]:
  """Endless sharded training batches (`random_source.random_batch`), as `prefetch` says.

  prefetch < 0: two batches put on the devices now, repeated (no input cost); else the
  numpy batch of every step through `distributed.prefetch_to_mesh`, `prefetch` ahead.
  Both have the same keys, dtypes and sharding, so one compiled step takes either.
  """
  if prefetch < 0:
    resident = [
      distributed.shard_batch(random_source.random_batch(config, step), mesh) for step in (0, 1)
    ]
    return itertools.cycle(resident)
  host = (random_source.random_batch(config, step) for step in itertools.count())
  return distributed.prefetch_to_mesh(host, mesh, prefetch)


def compile_jax(config: ml_collections.ConfigDict, mesh: Any) -> tuple[Any, Any, dict[str, Any]]:
  """(compiled real train step, fresh replicated state, compile seconds and FLOPs)."""
  model = models.build_model(config.model)
  stage = train_step.resolve_stages(config)[0]
  state = train_step.create_train_state(config, model, mesh)
  example = distributed.shard_batch(random_source.random_batch(config, 0), mesh)
  start = time.perf_counter()
  compiled = train_step.make_train_step(config, model, mesh, stage).lower(state, example).compile()
  compile_s = time.perf_counter() - start
  # The cost analysis of an SPMD executable describes one device's share.
  flops_per_step = cost_flops(compiled)
  if flops_per_step is not None:
    flops_per_step *= mesh.devices.size
  return compiled, state, {'flops_per_step': flops_per_step, 'compile_s': compile_s}


def time_jax(
  compiled: Any,
  state: Any,
  batches: Iterator[dict[str, jax.Array]],
  batch_size: int,
  steps: int,
  warmup: int,
) -> tuple[Any, dict[str, float]]:
  """Times `steps` steps of `compiled` after `warmup` untimed ones: (new state, times)."""
  for _ in range(warmup):
    state, metrics = compiled(state, next(batches))
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, next(batches))
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise FloatingPointError(f'JAX step produced a non-finite loss {loss}')
  step_time = elapsed / steps
  return state, {'clips_per_s': batch_size / step_time, 'step_time_s': step_time}


def measure_jax(
  config: ml_collections.ConfigDict,
  mesh: Any,
  steps: int,
  warmup: int,
  prefetches: Sequence[int] = (-1,),
) -> list[dict[str, Any]]:
  """Compiles the real train step once and times it with each input of `prefetches`.

  Returns one dict per input: clips/s, step time, FLOPs (from the compiled executable)
  and FLOP/s, compile seconds (of the one compilation).
  """
  compiled, state, compiled_info = compile_jax(config, mesh)
  results = []
  for prefetch in prefetches:
    batches = batch_stream(config, mesh, prefetch)
    state, times = time_jax(compiled, state, batches, config.train.batch_size, steps, warmup)
    flops = compiled_info['flops_per_step']
    results.append(
      {
        **times,
        'flops_per_step': flops,
        'flops_per_s': None if flops is None else flops / times['step_time_s'],
        'compile_s': compiled_info['compile_s'],
      }
    )
  return results


def run_setting(
  *, dtype: str, batch_size: int, prefetches: Sequence[int], mesh: Any, with_torch: bool
) -> list[dict[str, Any]]:
  """One (dtype, batch size): the JAX step with each input, then PyTorch's; the records."""
  config = bench_config(
    depth=_DEPTH.value,
    widen_factor=_WIDEN.value,
    image_size=_IMAGE_SIZE.value,
    num_frames=_NUM_FRAMES.value,
    batch_size=batch_size,
    dtype=dtype,
    box_head=_BOX_HEAD.value,
    conv_impl=_CONV_IMPL.value,
  )
  schema.validate(config, num_devices=mesh.devices.size, num_processes=1)
  device = mesh.devices.flat[0]
  setting: dict[str, Any] = {
    'depth': _DEPTH.value,
    'widen_factor': _WIDEN.value,
    'batch_size': batch_size,
    'dtype': dtype,
    'image_size': _IMAGE_SIZE.value,
    'num_frames': _NUM_FRAMES.value,
    'box_head': _BOX_HEAD.value,
    'conv_impl': _CONV_IMPL.value,
    'steps': _STEPS.value,
    'warmup': _WARMUP.value,
    'device': f'{device.device_kind} / {device.platform}',
    'platform': device.platform,
    'num_devices': mesh.devices.size,
  }
  load_before = round(os.getloadavg()[0], 2)
  logging.info('JAX: %s, prefetch %s', setting, list(prefetches))
  results = measure_jax(config, mesh, _STEPS.value, _WARMUP.value, prefetches)
  peak = peak_flops_per_s(device.device_kind, dtype) if device.platform == 'gpu' else None
  records = []
  for prefetch, result in zip(prefetches, results):
    record = {
      **setting,
      'input': 'device' if prefetch < 0 else 'host',
      'prefetch': max(prefetch, 0),
      'load_avg_1m_before': load_before,
      **result,
    }
    if peak is not None and record['flops_per_s'] is not None:
      record['peak_flops_per_s'] = peak * mesh.devices.size
      record['mfu'] = record['flops_per_s'] / record['peak_flops_per_s']
      if dtype == 'float32':
        record['mfu_vs_tf32'] = record['flops_per_s'] / (
          peak_flops_per_s(device.device_kind, 'tf32') * mesh.devices.size
        )
    else:
      record['peak_flops_per_s'] = record['mfu'] = None
    records.append(record)
  torch_result: dict[str, Any] = dict(
    torch_clips_per_s=None, torch_step_time_s=None, torch_threads=None, torch_note=None
  )
  if with_torch:
    import torch_step  # pylint: disable=g-import-not-at-top  (a sibling script)

    logging.info('PyTorch: depth %d, batch %d, %s', _DEPTH.value, batch_size, dtype)
    torch_result = torch_step.measure(
      depth=_DEPTH.value,
      widen_factor=_WIDEN.value,
      num_classes=config.model.num_classes,
      batch_size=batch_size,
      num_frames=_NUM_FRAMES.value,
      image_size=_IMAGE_SIZE.value,
      dtype=dtype,
      steps=_STEPS.value,
      warmup=_WARMUP.value,
      device=torch_step.torch_device(device.platform),
      seed=config.seed,
      allow_cpu_bf16=_TORCH_CPU_BF16.value,
    )
  load_after = round(os.getloadavg()[0], 2)
  torch_rate = torch_result['torch_clips_per_s']
  for record in records:
    record.update(torch_result)
    record['ratio'] = record['clips_per_s'] / torch_rate if torch_rate else None
    record['load_avg_1m_after'] = load_after
    record['tensorflow_imported'] = 'tensorflow' in sys.modules
  return records


def parse_ints(
  flag: str, values: Sequence[str], valid: Callable[[int], bool], expected: str
) -> list[int]:
  """The integers of list flag `--flag`; a usage error says what it expects."""
  try:
    numbers = [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f'--{flag}: expected integers, found {values}') from e
  if not numbers or not all(valid(n) for n in numbers):
    raise app.UsageError(f'--{flag}: expected {expected}, found {numbers}')
  return numbers


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  batch_sizes = parse_ints('batch_sizes', _BATCH_SIZES.value, lambda n: n > 0, 'positive sizes')
  prefetches = parse_ints(
    'prefetch', _PREFETCH.value, lambda n: n >= -1, 'inputs -1 (on the devices) or N >= 0'
  )
  for dtype in _DTYPES.value:
    if dtype not in ('float32', 'bfloat16'):
      raise app.UsageError(f'--dtypes: expected float32 or bfloat16, found {dtype!r}')
  if _STEPS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError(
      f'--steps must be >= 1 and --warmup >= 0, found {_STEPS.value} and {_WARMUP.value}'
    )
  if _TORCH.value and _BOX_HEAD.value != 'mlp':
    raise app.UsageError(
      f'--torch replicates the Model-2 head only (--box_head=mlp), '
      f'found --box_head={_BOX_HEAD.value}'
    )
  devices = jax.devices()
  if _NUM_DEVICES.value:
    if _NUM_DEVICES.value > len(devices):
      raise app.UsageError(
        f'--num_devices={_NUM_DEVICES.value} but only {len(devices)} devices are visible'
      )
    devices = devices[: _NUM_DEVICES.value]
  for b in batch_sizes:
    if b % len(devices):
      raise app.UsageError(
        f'--batch_sizes: {b} is not divisible by the {len(devices)} '
        f'devices of the mesh (set --num_devices)'
      )
  mesh = distributed.make_mesh(devices)
  logging.info(
    '%s, jax %s, %d devices (%s), host %s with %d cores',
    sys.version.split()[0],
    jax.__version__,
    len(devices),
    devices[0].device_kind,
    platform.node(),
    os.cpu_count(),
  )
  for dtype in _DTYPES.value:
    for batch_size in batch_sizes:
      records = run_setting(
        dtype=dtype,
        batch_size=batch_size,
        prefetches=prefetches,
        mesh=mesh,
        with_torch=_TORCH.value,
      )
      for record in records:
        print(json.dumps(record), flush=True)


if __name__ == '__main__':
  app.run(main)
