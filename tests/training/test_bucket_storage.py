"""A whole run on gs:// against a local GCS-API server: build, train, outage, resume, evaluate.

Every path (TFDS data_dir, workdir, eval reports) is a bucket URL; the server is reached
only through the environment the `gcs_bucket` fixture sets, as on a real pod.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from etils import epath
import pytest

from stconsist_jax.config import config_file
from stconsist_jax.evaluation import runner
from stconsist_jax.training import checkpointing

from stconsist_jax.training import checkpoint_steps
from stconsist_jax.core import fileio
from stconsist_jax.training import summaries
from stconsist_jax.data.ucf101 import dataset_build
from stconsist_jax.data.ucf101 import tfds_builder
from tests import xla_env
from tests.training import metric_records
from tests.data_fixtures import SYNTHETIC_FRAME_SIZE

NUM_STEPS = 6


def _overrides(builder, data_dir, num_classes):
  return [
    f'--config.data.name=ucf101_stconsist/{builder.builder_config.name}',
    f'--config.data.data_dir={data_dir}',
    f'--config.data.frame_size={SYNTHETIC_FRAME_SIZE}',
    '--config.data.image_size=32',
    '--config.data.num_frames=8',
    '--config.data.shuffle_buffer=8',
    f'--config.model.num_classes={num_classes}',
    '--config.model.widen_factor=0.125',
    '--config.model.box_head=mlp',
    '--config.model.box_hidden=(8,)',
    '--config.train.batch_size=4',
    f'--config.train.num_steps={NUM_STEPS}',
    '--config.train.log_every=2',
    '--config.train.checkpoint_every=1',
    f'--config.train.eval_every={NUM_STEPS}',
    '--config.optimizer.warmup_steps=2',
    '--config.loss.rampup_steps=4',
    '--config.eval.batch_size=8',
    '--config.eval.clips_per_video=1',
    '--config.eval.frame_stride=8',
    "--config.eval.evaluators=('clips', 'frames')",
  ]


def _files_under(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return [name for _, _, names in tf.io.gfile.walk(os.fspath(directory)) for name in names]


def _launch(repo_root, workdir, args):
  env = xla_env.subprocess_env(1, JAX_PLATFORMS='cpu')
  return subprocess.Popen(
    [sys.executable, 'launch.py', '--config=configs/demo.py', f'--workdir={workdir}', *args],
    cwd=repo_root,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def _wait_for_a_save(proc, ckpt_dir, timeout=300):
  """Returns once a step is being written next to a committed one.

  On a bucket orbax writes a step in place and commits it last, so the step in progress
  is a directory that `committed_steps` does not list.
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      pytest.fail(f'run ended early (rc {proc.returncode}):\n{proc.stdout.read()[-4000:]}')
    committed = {str(s) for s in checkpoint_steps.committed_steps(ckpt_dir)}
    present = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.exists() else set()
    if committed and {name for name in present - committed if name.isdigit()}:
      return
    time.sleep(0.05)  # Each look is several requests to the server; a save takes longer.
  pytest.fail('no save in progress seen')


def _sigterm_during_an_outage(proc, server, timeout=120):
  """Freezes the server, SIGTERMs `proc` and waits for it; (exit code, output)."""
  server.pause()
  try:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)  # A guard: the run stops within seconds.
  finally:
    server.resume()
  return proc.returncode, out


def test_build_train_outage_during_a_save_resume_and_evaluate_on_a_bucket(
  gcs_server, gcs_bucket, synthetic_root, repo_root
):
  """The TFDS build, training (the server frozen while a checkpoint is being written and
  the run SIGTERMed, then resumed exactly from the last committed step), evaluation and a
  separate evaluation of the best step, all on gs://."""
  data_dir = f'{gcs_bucket}/tfds'
  workdir = f'{gcs_bucket}/runs/tiny'
  builder = dataset_build.build(
    synthetic_root.root, data_dir, split=1, frame_size=SYNTHETIC_FRAME_SIZE, num_workers=0
  )
  assert os.fspath(builder.data_path).startswith('gs://')
  assert sum(tfds_builder.read_report(builder)['videos_written'].values()) > 0
  args = ['--mode=train_and_eval', *_overrides(builder, data_dir, len(synthetic_root.class_names))]

  first = _launch(repo_root, workdir, [*args, '--config.train.storage_timeout_seconds=5'])
  ckpt_dir = epath.Path(workdir) / checkpointing.CHECKPOINT_DIR
  _wait_for_a_save(first, ckpt_dir)
  code, out = _sigterm_during_an_outage(first, gcs_server)
  assert code == 143, out[-4000:]
  stopped = [line for line in out.splitlines() if 'stopped by SIGTERM' in line]
  assert len(stopped) == 1 and f'storage of {workdir} did not answer for 5 s' in stopped[0]
  killed_at = checkpoint_steps.committed_steps(ckpt_dir)
  assert killed_at and max(killed_at) < NUM_STEPS
  partial = {p.name for p in ckpt_dir.iterdir() if p.name.isdigit()} - {str(s) for s in killed_at}
  assert partial, 'the save in progress finished before the outage'

  out = _finish(_launch(repo_root, workdir, args))
  assert f'Resumed from checkpoint step {max(killed_at)}' in out
  assert NUM_STEPS in checkpoint_steps.committed_steps(ckpt_dir)
  logged = summaries.read_metrics(workdir)
  assert sorted(logged) == list(range(1, NUM_STEPS + 1))
  # The steps after the last committed one were logged before the outage and again by
  # the resumed run: the same numbers, as without the interruption.
  repeated = metric_records.steps_run_twice(workdir)
  assert repeated and min(repeated) == max(killed_at) + 1
  assert all(first == again for first, again in repeated.values())
  root = epath.Path(workdir)
  assert any('events.out.tfevents.' in name for name in _files_under(root / 'tensorboard'))
  report_dir = root / 'eval' / str(NUM_STEPS)
  assert fileio.is_committed(report_dir)
  report = json.loads((report_dir / 'report.json').read_text())
  assert report['checkpoint_step'] == NUM_STEPS

  # A separate evaluation (`--mode=eval`'s function, here in this process to spare a
  # third start of JAX and TensorFlow) restores the best (the only evaluated) step from
  # the bucket, with the config saved there, and writes its reports to another folder.
  eval_dir = f'{gcs_bucket}/reports'
  runner.evaluate(config_file.load(workdir), workdir, 'best', eval_dir=eval_dir)
  again = json.loads((epath.Path(eval_dir) / str(NUM_STEPS) / 'report.json').read_text())
  assert again['checkpoint_step'] == NUM_STEPS
  assert again['video_accuracy'] == report['video_accuracy']


def test_bucket_without_network_is_one_line(repo_root, tmp_path):
  """A gs:// workdir when the storage cannot be reached (the proxy every request of
  TensorFlow goes through is closed): one line naming the URL and the cause, no
  traceback. TensorFlow's own retries are turned off to keep the test short."""
  with socket.socket() as closed:
    closed.bind(('127.0.0.1', 0))
    proxy = f'http://127.0.0.1:{closed.getsockname()[1]}'
  env = xla_env.subprocess_env(
    1,
    JAX_PLATFORMS='cpu',
    HTTPS_PROXY=proxy,
    https_proxy=proxy,
    GOOGLE_AUTH_TOKEN_FOR_TESTING='token',
    NO_GCE_CHECK='true',
    GCS_RETRY_CONFIG_MAX_RETRIES='0',
  )
  for name in ('STORAGE_EMULATOR_HOST', 'TENSORSTORE_GCS_HTTP_URL'):  # Set by a running emulator.
    env.pop(name, None)  # Every client goes to the closed proxy.
  workdir = 'gs://no-network-bucket/run'
  proc = subprocess.run(
    [
      sys.executable,
      'launch.py',
      '--config=configs/demo.py',
      f'--workdir={workdir}',
      '--config.data.name=random',
      '--config.train.storage_timeout_seconds=2',
    ],
    cwd=repo_root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 75, proc.stderr[-4000:]
  errors = [line for line in proc.stderr.splitlines() if 'storage unavailable' in line]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-4000:]
  assert errors[0].startswith(f'error: storage unavailable: taking the lock of {workdir} failed:')
  # No network, or (the Python GCS client, first) no credentials here: either way named.
  assert 'Could not connect to server' in errors[0] or 'credentials' in errors[0], errors[0]
