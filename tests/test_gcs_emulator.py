"""Each GCS client of a training run works on gs:// against the local emulator: tf.io.gfile,
etils.epath, orbax (tensorstore), tf.summary and clu, tf.data, and subprocesses.
"""

import os
import pathlib
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from clu import metric_writers
from etils import epath

import gcs_emulator


def _is_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def test_emulator_starts_quickly_and_stops_cleanly():
  start = time.monotonic()
  with gcs_emulator.GcsEmulator() as emulator:
    started_s = time.monotonic() - start
    emulator.create_bucket('start-stop')
    pid, ca_path = emulator.pid, emulator.ca_path
    assert _is_running(pid) and ca_path.exists()
  assert started_s < 15, f'the emulator took {started_s:.1f}s to start'
  assert not _is_running(pid)
  assert not ca_path.exists()


def test_emulator_that_cannot_start_raises_with_its_log():
  with pytest.raises(gcs_emulator.GcsEmulatorError, match='exited with code'):
    gcs_emulator.GcsEmulator(binary='/bin/false').start()


def test_emulator_ends_when_its_test_process_is_killed():
  code = (
    'import sys, time, gcs_emulator;'
    'emulator = gcs_emulator.GcsEmulator(); emulator.start();'
    'print(emulator.pid, emulator.ca_path, flush=True); time.sleep(120)'
  )
  owner = subprocess.Popen(
    [sys.executable, '-c', code],
    stdout=subprocess.PIPE,
    cwd=pathlib.Path(__file__).parent,
    text=True,
  )
  try:
    pid, ca_path = owner.stdout.readline().split()
  finally:
    owner.kill()
    owner.wait()
    owner.stdout.close()
  deadline = time.monotonic() + 10
  while _is_running(int(pid)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not _is_running(int(pid))
  assert not pathlib.Path(ca_path).exists()


def test_tf_gfile(gcs_bucket):
  gfile = tf.io.gfile
  root = f'{gcs_bucket}/gfile'
  gfile.makedirs(f'{root}/sub/deeper')
  with gfile.GFile(f'{root}/sub/a.txt', 'w') as f:
    f.write('alpha')
  with gfile.GFile(f'{root}/empty.bin', 'wb') as f:
    f.write(b'')

  assert gfile.exists(f'{root}/sub/a.txt')
  assert not gfile.exists(f'{root}/missing.txt')
  assert gfile.isdir(f'{root}/sub')
  with gfile.GFile(f'{root}/sub/a.txt') as f:
    assert f.read() == 'alpha'
  assert gfile.stat(f'{root}/sub/a.txt').length == 5
  assert gfile.stat(f'{root}/empty.bin').length == 0
  assert sorted(gfile.listdir(root)) == ['empty.bin', 'sub/']
  assert gfile.glob(f'{root}/sub/*.txt') == [f'{root}/sub/a.txt']

  gfile.rename(f'{root}/sub/a.txt', f'{root}/sub/b.txt')
  assert not gfile.exists(f'{root}/sub/a.txt')
  with gfile.GFile(f'{root}/sub/b.txt') as f:
    assert f.read() == 'alpha'

  # A folder rename (TFDS finishes every build with one) moves each object.
  gfile.rename(f'{root}/sub', f'{root}/moved')
  assert not gfile.exists(f'{root}/sub/b.txt')
  with gfile.GFile(f'{root}/moved/b.txt') as f:
    assert f.read() == 'alpha'

  gfile.rmtree(f'{root}/moved')
  assert not gfile.exists(f'{root}/moved/b.txt')
  assert gfile.listdir(root) == ['empty.bin']


def test_epath_uses_tensorflow_and_works(gcs_bucket):
  root = epath.Path(gcs_bucket) / 'epath'
  assert 'tf' in type(root._backend).__name__.lower()  # pylint: disable=protected-access
  (root / 'dir').mkdir(parents=True, exist_ok=True)
  (root / 'dir' / 'one.txt').write_text('one')
  (root / 'dir' / 'two.json').write_text('{}')
  (root / 'top.bin').write_bytes(b'\x00\x01')

  assert (root / 'dir' / 'one.txt').exists()
  assert (root / 'dir').is_dir()
  assert (root / 'dir' / 'one.txt').read_text() == 'one'
  assert (root / 'top.bin').read_bytes() == b'\x00\x01'
  assert sorted(p.name for p in root.iterdir()) == ['dir', 'top.bin']
  assert [p.name for p in root.glob('dir/*.txt')] == ['one.txt']

  (root / 'dir').rmtree()
  assert not (root / 'dir').exists()
  assert [p.name for p in root.iterdir()] == ['top.bin']


def test_orbax_checkpoint_manager(gcs_bucket):
  directory = epath.Path(gcs_bucket) / 'ckpt'
  tree = {
    'w': jnp.arange(12.0).reshape(3, 4),
    'b': jnp.ones(4, jnp.int32),
    'step': np.array(7, np.int64),
  }
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  with ocp.CheckpointManager(directory, options=options) as manager:
    for step in range(3):
      manager.save(step, args=ocp.args.StandardSave({**tree, 'w': tree['w'] + step}))
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2]

  assert (directory / '2' / 'commit_success.txt').exists()
  # The array data, written by tensorstore.
  assert list((directory / '2' / 'default').glob('ocdbt.process_*/d/*'))
  assert not (directory / '0').exists()
  with ocp.CheckpointManager(directory, options=options) as manager:
    assert manager.all_steps() == [1, 2]
    assert manager.latest_step() == 2
    restored = manager.restore(2, args=ocp.args.StandardRestore(tree))
  np.testing.assert_array_equal(restored['w'], tree['w'] + 2)
  np.testing.assert_array_equal(restored['b'], tree['b'])
  assert int(restored['step']) == 7


def test_tf_summary_event_file(gcs_bucket):
  logdir = f'{gcs_bucket}/logs/train'
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for step in range(3):
      tf.summary.scalar('loss', 1.0 / (step + 1), step=step)
  writer.close()

  (event_file,) = tf.io.gfile.glob(f'{logdir}/events.out.tfevents.*')
  losses = {}
  for event in tf.compat.v1.train.summary_iterator(event_file):
    for value in event.summary.value:
      if value.tag == 'loss':
        losses[event.step] = float(tf.make_ndarray(value.tensor))
  assert losses == pytest.approx({0: 1.0, 1: 0.5, 2: 1.0 / 3})


def test_clu_summary_writer(gcs_bucket):
  logdir = f'{gcs_bucket}/logs/clu'
  writer = metric_writers.SummaryWriter(logdir)
  writer.write_scalars(5, {'accuracy': 0.25})
  writer.close()

  (event_file,) = tf.io.gfile.glob(f'{logdir}/events.out.tfevents.*')
  tags = {
    value.tag
    for event in tf.compat.v1.train.summary_iterator(event_file)
    for value in event.summary.value
  }
  assert 'accuracy' in tags


def test_tfrecord_write_and_read(gcs_bucket):
  path = f'{gcs_bucket}/data/part-00000.tfrecord'
  records = [f'record {i}'.encode() * (i + 1) for i in range(20)]
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)

  dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(f'{gcs_bucket}/data/*.tfrecord'))
  assert [r.numpy() for r in dataset] == records


def test_subprocess_inherits_the_emulator(gcs_bucket):
  path = f'{gcs_bucket}/from_parent.txt'
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write('written by the test process')
  code = "import sys, tensorflow as tf;print(tf.io.gfile.GFile(sys.argv[1]).read(), end='')"
  result = subprocess.run(
    [sys.executable, '-c', code, path], capture_output=True, text=True, timeout=120, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == 'written by the test process'
