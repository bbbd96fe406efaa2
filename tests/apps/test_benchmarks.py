"""Tests of benchmarks/: train_step.py (a tiny end-to-end run, its FLOP count, the PyTorch
step) and the random models of the export benchmark.

train_step.py runs once as a subprocess (one CPU device), timing the step with batches resident
on the device and with host batches through the prefetcher; its XLA FLOP count is checked
against a hand count of the convolutions, and the PyTorch losses against
stconsist_jax.training.losses.
"""

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tests import xla_env

TINY = dict(depth=10, widen_factor=0.125, num_frames=4, image_size=16, batch_size=2)
RECORD_KEYS = {
  'clips_per_s',
  'flops_per_step',
  'flops_per_s',
  'step_time_s',
  'compile_s',
  'torch_clips_per_s',
  'torch_step_time_s',
  'ratio',
  'torch_threads',
  'device',
  'platform',
  'num_devices',
  'mfu',
  'depth',
  'widen_factor',
  'batch_size',
  'dtype',
  'image_size',
  'num_frames',
  'box_head',
  'tensorflow_imported',
}


def _out_len(n: int, k: int, s: int, p: int) -> int:
  return (n + 2 * p - k) // s + 1


def _conv_flops(n, thw, cin, cout, k, s, p):
  out = tuple(_out_len(d, k, s_, p_) for d, s_, p_ in zip(thw, s, p))
  return 2 * n * math.prod(out) * cout * cin * k**3, out


def basic_resnet_conv_flops(layers, widen, n, t, size):
  """Forward conv FLOPs (2 per multiply-add) of a BasicBlock ResNet3D: (stem, the rest)."""
  planes = [int(c * widen) for c in (64, 128, 256, 512)]
  out = _out_len(size, 7, 2, 3)
  stem = 2 * n * t * out * out * planes[0] * 3 * 7**3
  thw = (_out_len(t, 3, 2, 1), _out_len(out, 3, 2, 1), _out_len(out, 3, 2, 1))
  rest, cin = 0, planes[0]
  for i, (p, blocks) in enumerate(zip(planes, layers)):
    for b in range(blocks):
      s = 2 if (i > 0 and b == 0) else 1
      f1, out_thw = _conv_flops(n, thw, cin, p, 3, (s,) * 3, (1,) * 3)
      rest += f1 + _conv_flops(n, out_thw, p, p, 3, (1,) * 3, (1,) * 3)[0]
      if s != 1 or cin != p:
        rest += _conv_flops(n, thw, cin, p, 1, (s,) * 3, (0,) * 3)[0]
      thw, cin = out_thw, p
  return stem, rest


@pytest.fixture(scope='module')
def tiny_records(repo_root):
  """The records of one run: the step compiled once, timed with each input, then PyTorch."""
  env = xla_env.subprocess_env(1)
  cmd = [
    sys.executable,
    str(repo_root / 'benchmarks' / 'train_step.py'),
    f'--depth={TINY["depth"]}',
    f'--widen_factor={TINY["widen_factor"]}',
    f'--num_frames={TINY["num_frames"]}',
    f'--image_size={TINY["image_size"]}',
    f'--batch_sizes={TINY["batch_size"]}',
    '--dtypes=float32',
    '--warmup=1',
    '--steps=3',
    '--prefetch=-1,2',  # Batches resident on the device, then host batches 2 ahead.
    '--torch',
  ]
  proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [s for s in proc.stdout.splitlines() if s.startswith('{')]
  assert len(lines) == 2, proc.stdout
  records = [json.loads(line) for line in lines]
  assert [r['input'] for r in records] == ['device', 'host'], records
  return {r['input']: r for r in records}


@pytest.fixture(scope='module')
def tiny_record(tiny_records):
  """The record of the step fed by batches resident on the device (no input cost)."""
  return tiny_records['device']


def test_record_keys_and_values(tiny_record):
  r = tiny_record
  assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
  for key in (
    'clips_per_s',
    'flops_per_step',
    'flops_per_s',
    'step_time_s',
    'torch_clips_per_s',
    'torch_step_time_s',
    'ratio',
  ):
    assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
  for key, value in TINY.items():
    assert r[key] == value, key
  assert r['dtype'] == 'float32' and r['platform'] == 'cpu' and r['num_devices'] == 1
  assert r['mfu'] is None  # No peak table on a CPU.
  assert r['tensorflow_imported'] is False
  assert r['torch_threads'] == len(os.sched_getaffinity(0))
  assert r['ratio'] == pytest.approx(r['clips_per_s'] / r['torch_clips_per_s'])
  assert r['clips_per_s'] == pytest.approx(r['batch_size'] / r['step_time_s'])
  assert r['flops_per_s'] == pytest.approx(r['flops_per_step'] / r['step_time_s'])


def test_flops_match_a_hand_count_of_the_convolutions(tiny_record):
  # Clip and flip: 2 * batch samples. Training = forward + weight gradients everywhere
  # + input gradients except into the stem (its input is the uint8 clip). XLA also
  # counts the elementwise work and the heads, and its conv count differs a little
  # (the conv2d lowering on CPU); a forward-only or one-device-share count would be
  # 3x or more off.
  stem, rest = basic_resnet_conv_flops(
    [1, 1, 1, 1],
    TINY['widen_factor'],
    2 * TINY['batch_size'],
    TINY['num_frames'],
    TINY['image_size'],
  )
  expected = 2 * stem + 3 * rest
  assert 0.6 * expected < tiny_record['flops_per_step'] < 1.5 * expected, (
    tiny_record['flops_per_step'],
    expected,
  )


@functools.cache
def _load(repo_root, name):
  """A benchmarks/ module, loaded once (train_step defines absl flags at import)."""
  spec = importlib.util.spec_from_file_location(name, repo_root / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_torch_loss_terms_match_jax_losses(repo_root):
  torch = pytest.importorskip('torch')
  import jax  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import train_step  # pylint: disable=g-import-not-at-top

  torch_step = _load(repo_root, 'torch_step')
  rng = np.random.default_rng(0)
  n, k = 6, 7
  logits, logits_flip = rng.normal(size=(2, n, k)).astype(np.float32) * 2
  boxes, boxes_flip, box = rng.uniform(0.05, 0.6, (3, n, 4)).astype(np.float32)
  label = rng.integers(0, k, n)
  has_box = np.array([True, False, True, True, False, False])
  got = torch_step.loss_terms(
    *(torch.from_numpy(a) for a in (logits, logits_flip, boxes, boxes_flip)),
    torch.from_numpy(label),
    torch.from_numpy(box),
    torch.from_numpy(has_box),
  )
  # Jitted: one compilation instead of one per operation (the terms are the same).
  want = jax.jit(train_step.loss_terms, static_argnums=3)(
    {'logits': logits, 'boxes': boxes},
    {'logits': logits_flip, 'boxes': boxes_flip},
    {'label': label.astype(np.int32), 'box': box, 'has_box': has_box},
    'js',
  )
  for name in ('cls', 'loc', 'con_cls', 'con_loc'):
    np.testing.assert_allclose(
      got[name].item(), float(want[name]), rtol=1e-5, atol=1e-7, err_msg=name
    )


def test_torch_detector_has_the_jax_detectors_parameter_count(repo_root):
  pytest.importorskip('torch')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  train_step = _load(repo_root, 'train_step')
  torch_step = _load(repo_root, 'torch_step')
  config = train_step.bench_config(
    depth=10,
    widen_factor=0.25,
    image_size=16,
    num_frames=4,
    batch_size=2,
    dtype='float32',
    box_head='mlp',
    conv_impl='auto',
  )
  from stconsist_jax import models  # pylint: disable=g-import-not-at-top

  model = models.build_model(config.model)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3), jnp.uint8), train=False)
  )
  jax_count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes['params']))
  torch_model = torch_step.TorchDetector(10, 0.25, config.model.num_classes)
  torch_count = sum(p.numel() for p in torch_model.parameters())
  assert torch_count == jax_count
  assert [m.out_features for m in torch_model.box_head] == [256, 64, 8, 4]


def test_mfu_peaks(repo_root):
  module = _load(repo_root, 'train_step')
  assert module.peak_flops_per_s('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert module.peak_flops_per_s('NVIDIA H100 80GB HBM3', 'float32') == 67e12
  assert module.peak_flops_per_s('NVIDIA H200', 'bfloat16') == 989e12
  assert module.peak_flops_per_s('NVIDIA A100-SXM4-80GB', 'float32') == 19.5e12
  assert module.peak_flops_per_s('cpu', 'float32') is None


def test_host_input_through_the_prefetcher(tiny_records):
  record = tiny_records['host']
  assert record['input'] == 'host' and record['prefetch'] == 2
  assert record['clips_per_s'] == pytest.approx(record['batch_size'] / record['step_time_s'])
  assert record['tensorflow_imported'] is False
  # The same compiled step as with resident batches: one compilation, the same FLOPs.
  device = tiny_records['device']
  assert device['input'] == 'device' and device['prefetch'] == 0
  assert record['flops_per_step'] == device['flops_per_step']
  assert record['compile_s'] == device['compile_s']


def test_calibrated_batchnorm_makes_inference_equal_training_mode(repo_root):
  """benchmarks/exports.py's random weights: with each BatchNorm's running statistics set
  from a train-mode pass, inference on the same clips computes what training mode did
  (the statistics are the batch's own), so its activations have a trained model's scale."""
  import jax  # pylint: disable=g-import-not-at-top
  from stconsist_jax.configs import demo_one_box  # pylint: disable=g-import-not-at-top

  bench_models = _load(repo_root, 'bench_models')
  config = demo_one_box.get_config()
  config.data.num_frames, config.data.image_size = 4, 16
  config.model.widen_factor = 0.125
  restored = bench_models.random_model_from_config(config)
  clips = bench_models.random_clips(config, 4, seed=1)
  model, initial = restored.model, restored.variables
  calibrated = bench_models.calibrate_batchnorm(model, initial, clips)
  train_mode, _ = jax.jit(lambda v, c: model.apply(v, c, train=True, mutable=['batch_stats']))(
    initial, clips
  )
  infer = jax.jit(lambda v, c: model.apply(v, c, train=False))
  inference, before = infer(calibrated, clips), infer(initial, clips)
  for key in ('logits', 'boxes'):
    want = np.asarray(train_mode[key])
    difference = np.abs(np.asarray(inference[key]) - want).max() / np.abs(want).max()
    assert difference < 1e-4, (key, difference)
  # flax's initial statistics (mean 0, variance 1) give other logits.
  assert np.abs(np.asarray(before['logits']) - np.asarray(train_mode['logits'])).max() > 1e-2
  assert jax.tree.structure(calibrated) == jax.tree.structure(initial)
