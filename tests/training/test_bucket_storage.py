"""A whole run on gs:// against a local GCS-API server: build, train, kill, resume, evaluate.

Every path (TFDS data_dir, workdir, eval reports) is a bucket URL; the server is reached
only through the environment the `gcs_bucket` fixture sets, as on a real pod.
"""

import json
import os
import signal
import subprocess
import sys
import time

from etils import epath
import pytest

from stconsist_jax.training import checkpointing
from stconsist_jax.core import fileio
from stconsist_jax.training import summaries
from stconsist_jax.data.ucf101 import dataset_build
from stconsist_jax.data.ucf101 import tfds_builder
from tests import xla_env
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


def _kill_during_a_save(proc, ckpt_dir, timeout=300):
  """SIGKILLs `proc` while a step is being written next to a committed one.

  On a bucket orbax writes a step in place and commits it last, so the step in progress
  is a directory that `committed_steps` does not list. Returns (committed, partial).
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      pytest.fail(f'run ended early (rc {proc.returncode}):\n{proc.stdout.read()[-4000:]}')
    committed = {str(s) for s in checkpointing.committed_steps(ckpt_dir)}
    present = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.exists() else set()
    if committed and {name for name in present - committed if name.isdigit()}:
      break
    time.sleep(0.05)  # Each look is several requests to the server; a save takes longer.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  committed = checkpointing.committed_steps(ckpt_dir)
  partial = {p.name for p in ckpt_dir.iterdir() if p.name.isdigit()} - {str(s) for s in committed}
  return committed, partial


def test_build_train_kill_during_a_save_resume_and_evaluate_on_a_bucket(
  gcs_bucket, synthetic_root, repo_root
):
  """The TFDS build, training (SIGKILLed while a checkpoint is being written, then
  resumed from the last committed one), evaluation and a separate --mode=eval, all on
  gs://."""
  data_dir = f'{gcs_bucket}/tfds'
  workdir = f'{gcs_bucket}/runs/tiny'
  builder = dataset_build.build(
    synthetic_root.root, data_dir, split=1, frame_size=SYNTHETIC_FRAME_SIZE, num_workers=0
  )
  assert os.fspath(builder.data_path).startswith('gs://')
  assert sum(tfds_builder.read_report(builder)['videos_written'].values()) > 0
  args = ['--mode=train_and_eval', *_overrides(builder, data_dir, len(synthetic_root.class_names))]

  first = _launch(repo_root, workdir, args)
  ckpt_dir = epath.Path(workdir) / checkpointing.CHECKPOINT_DIR
  killed_at, partial = _kill_during_a_save(first, ckpt_dir)
  assert partial, 'the save in progress finished before the kill landed'
  assert killed_at and max(killed_at) < NUM_STEPS

  out = _finish(_launch(repo_root, workdir, args))
  assert f'Resumed from checkpoint step {max(killed_at)}' in out
  assert NUM_STEPS in checkpointing.committed_steps(ckpt_dir)
  logged = summaries.read_metrics(workdir)
  assert sorted(logged) == list(range(1, NUM_STEPS + 1))
  root = epath.Path(workdir)
  assert any('events.out.tfevents.' in name for name in _files_under(root / 'tensorboard'))
  report_dir = root / 'eval' / str(NUM_STEPS)
  assert fileio.is_committed(report_dir)
  report = json.loads((report_dir / 'report.json').read_text())
  assert report['checkpoint_step'] == NUM_STEPS

  # A separate evaluation restores the best (the only evaluated) step from the bucket
  # and writes its reports to another bucket folder.
  eval_dir = f'{gcs_bucket}/reports'
  out = _finish(
    _launch(
      repo_root, workdir, args[1:] + ['--mode=eval', '--eval_step=best', f'--eval_dir={eval_dir}']
    )
  )
  again = json.loads((epath.Path(eval_dir) / str(NUM_STEPS) / 'report.json').read_text())
  assert again['video_accuracy'] == report['video_accuracy']
  _, variables, step = checkpointing.restore_for_eval(workdir, 'latest')
  assert step == NUM_STEPS and 'params' in variables
