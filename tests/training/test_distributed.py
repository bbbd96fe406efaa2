"""Tests of multi-device and multi-process plumbing: batches, detection, a 2-process run.

The 2-process run uses jax.distributed over loopback with gloo CPU collectives, its
processes without TensorFlow (random data; no TensorBoard summaries, no TensorFlow import).
"""

import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from stconsist_jax.training import checkpointing
from stconsist_jax.training import distributed
from stconsist_jax.training import summaries
from stconsist_jax.training import train
from stconsist_jax.data.pipeline import random_source

import test_train  # pylint: disable=g-bad-import-order
from tests import no_tensorflow
from tests import xla_env


def test_shard_batch_global_array_equals_host_batch():
  mesh = distributed.make_mesh()
  batch = {
    'clip': np.arange(8 * 6, dtype=np.uint8).reshape(8, 6),
    'label': np.arange(8, dtype=np.int32),
  }
  arrays = distributed.shard_batch(batch, mesh)
  for key, value in batch.items():
    assert arrays[key].shape == value.shape
    np.testing.assert_array_equal(np.asarray(arrays[key]), value)
    assert len(arrays[key].sharding.device_set) == 8
    # Row i lives on device i: split on the batch axis only.
    shard_rows = sorted(int(s.index[0].start or 0) for s in arrays[key].addressable_shards)
    assert shard_rows == list(range(8))


def test_make_mesh_over_a_subset_of_devices():
  devices = jax.devices()[2:6]
  mesh = distributed.make_mesh(devices)
  assert mesh.axis_names == ('data',)
  assert list(mesh.devices.flat) == devices
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  rows = distributed.shard_batch({'x': np.arange(8)}, mesh)['x']
  assert {d.id for d in rows.sharding.device_set} == {2, 3, 4, 5}


def _host_batches(n: int):
  """n distinct host batches (batch i holds i and its rows) and a count of those read."""
  read = [0]

  def stream():
    for i in range(n):
      read[0] += 1
      yield {'x': np.arange(8, dtype=np.int32) + 100 * i, 'y': np.full(8, i, np.float32)}

  return stream(), read


@pytest.mark.parametrize('size', [0, 1, 2, 5])
def test_prefetched_stream_equals_sharding_each_batch(size):
  mesh = distributed.make_mesh()
  expected = [distributed.shard_batch(b, mesh) for b in _host_batches(4)[0]]
  stream, _ = _host_batches(4)
  got = list(distributed.prefetch_to_mesh(stream, mesh, size))
  assert len(got) == len(expected) == 4
  for i, (a, b) in enumerate(zip(got, expected)):
    assert a.keys() == b.keys() == {'x', 'y'}
    np.testing.assert_array_equal(np.asarray(a['x']), np.arange(8) + 100 * i)
    np.testing.assert_array_equal(np.asarray(a['y']), np.full(8, i))
    for key in a:
      assert a[key].sharding == b[key].sharding == distributed.batch_sharding(mesh)


def test_prefetch_keeps_two_batches_ahead_and_stops_cleanly():
  mesh = distributed.make_mesh(jax.devices()[:2])
  stream, read = _host_batches(5)
  batches = distributed.prefetch_to_mesh(stream, mesh, 2)
  seen = []
  for i, batch in enumerate(batches):
    seen.append(int(np.asarray(batch['y'])[0]))
    # While batch i is in use, batches i+1 and i+2 (if any) are already on the devices.
    assert read[0] == min(i + 3, 5), (i, read[0])
  assert seen == [0, 1, 2, 3, 4]
  with pytest.raises(StopIteration):
    next(batches)


def test_detect_multiprocess(monkeypatch):
  for var in ('SLURM_NTASKS', 'SLURM_PROCID', 'TPU_WORKER_HOSTNAMES', 'JAX_NUM_PROCESSES'):
    monkeypatch.delenv(var, raising=False)
  assert not distributed.detect_multiprocess()
  monkeypatch.setenv('SLURM_NTASKS', '1')
  monkeypatch.setenv('SLURM_PROCID', '0')
  assert not distributed.detect_multiprocess()
  monkeypatch.setenv('SLURM_NTASKS', '4')
  assert distributed.detect_multiprocess()
  monkeypatch.delenv('SLURM_NTASKS')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host-a,host-b')
  assert distributed.detect_multiprocess()
  # Single process, nothing detected: initialize() is a no-op.
  monkeypatch.delenv('TPU_WORKER_HOSTNAMES')
  distributed.initialize()
  assert jax.process_count() == 1


def test_host_rows_partition_the_global_batch():
  batch = {'x': np.arange(12)}
  parts = [random_source.host_rows(batch, i, 3)['x'] for i in range(3)]
  np.testing.assert_array_equal(np.concatenate(parts), batch['x'])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_process_run_matches_single_process(repo_root, tmp_path):
  steps = 3
  config = test_train.tiny_config(num_steps=steps)
  overrides = [
    '--config.data.name=random',
    '--config.data.frame_size=16',
    '--config.data.image_size=16',
    '--config.data.num_frames=4',
    '--config.model.widen_factor=0.125',
    '--config.model.box_hidden=(16,)',
    '--config.train.batch_size=8',
    f'--config.train.num_steps={steps}',
    '--config.train.log_every=1',
    '--config.train.checkpoint_every=2',
    '--config.optimizer.warmup_steps=1',
    '--config.optimizer.schedule=constant',
    '--config.loss.rampup_steps=2',
    '--config.loss.loc_weight=1.0',
  ]
  port = _free_port()
  env = no_tensorflow.env(
    xla_env.subprocess_env(1, JAX_PLATFORMS='cpu'), tmp_path / 'no_tensorflow'
  )
  workdir = tmp_path / 'two'
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  files = [log.open('w') for log in logs]  # Files, not pipes: nobody reads until the end.
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(repo_root / 'launch.py'),
        '--config=configs/demo_one_box.py',
        f'--workdir={workdir}',
        *overrides,
        f'--coordinator_address=localhost:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      cwd=repo_root,
      env=env,
      stdout=f,
      stderr=subprocess.STDOUT,
    )
    for i, f in enumerate(files)
  ]
  for f in files:
    f.close()
  try:
    # The same run in this process on a 2-device mesh, while the two processes run.
    mesh = distributed.make_mesh(jax.devices()[:2])
    state = train.train_and_evaluate(config, str(tmp_path / 'one'), mesh=mesh)
    for p in procs:
      p.wait(timeout=600)
  finally:
    for p in procs:
      p.kill()
  outs = [log.read_text() for log in logs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert '2 processes, 2 devices' in outs[0]
  assert no_tensorflow.NO_TENSORBOARD in outs[0]  # The process that writes summaries.

  ref = summaries.read_metrics(tmp_path / 'one')
  got = summaries.read_metrics(workdir)
  assert sorted(got) == sorted(ref) == [1, 2, 3]
  for step in ref:
    for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'grad_norm'):
      np.testing.assert_allclose(
        got[step][key], ref[step][key], rtol=2e-5, atol=1e-6, err_msg=f'{key} at step {step}'
      )
  _, variables, step = checkpointing.restore_for_eval(workdir)
  assert step == steps
  ref_params = jax.device_get(state.params)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(variables['params']), jax.tree.leaves(ref_params)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
