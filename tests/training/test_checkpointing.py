"""Tests of checkpoints: kill (SIGTERM, SIGKILL) and resume, best-by-metric, eval restore.

Training runs go through launch.py in subprocesses on random data, with TensorFlow made
unimportable (no TensorBoard summaries: the runs skip its import).
"""

import logging as std_logging
import signal
import subprocess
import sys
import time

import flax
import jax
import ml_collections
import numpy as np
import pytest

from stconsist_jax.training import checkpointing

from stconsist_jax.training import checkpoint_steps
from stconsist_jax.config import config_file
from stconsist_jax.training import summaries
from tests import no_tensorflow
from tests import xla_env

NUM_STEPS = 30
EVERY = 4
OVERRIDES = [
  '--config.data.name=random',
  '--config.data.frame_size=16',
  '--config.data.image_size=16',
  '--config.data.num_frames=4',
  '--config.model.widen_factor=0.125',
  '--config.model.box_hidden=(16,)',
  '--config.train.batch_size=4',
  f'--config.train.num_steps={NUM_STEPS}',
  '--config.train.log_every=1',
  f'--config.train.checkpoint_every={EVERY}',
  '--config.optimizer.warmup_steps=2',
  '--config.loss.rampup_steps=5',
]


def _launch(repo_root, workdir, cache_dir, **kwargs):
  env = xla_env.subprocess_env(
    1,
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  env = no_tensorflow.env(env, cache_dir.parent / 'no_tensorflow')
  cmd = [
    sys.executable,
    str(repo_root / 'launch.py'),
    '--config=configs/demo_one_box.py',
    f'--workdir={workdir}',
    *OVERRIDES,
  ]
  return subprocess.Popen(
    cmd,
    cwd=repo_root,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


def _wait_for_steps(proc, workdir, n, committed=None, timeout=300):
  """Until `n` steps are logged (and checkpoint `committed` is renamed into place)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if len(summaries.read_metrics(workdir)) >= n and (
      committed is None or (workdir / 'checkpoints' / str(committed)).is_dir()
    ):
      return
    if proc.poll() is not None:
      pytest.fail(f'run ended early (rc {proc.returncode}):\n{proc.stdout.read()[-3000:]}')
    time.sleep(0.02)
  proc.kill()
  pytest.fail('run made no progress')


@pytest.fixture(scope='module')
def reference(repo_root, tmp_path_factory):
  """An uninterrupted run: its per-step losses and the compilation cache it fills."""
  cache = tmp_path_factory.mktemp('jax_cache')
  workdir = tmp_path_factory.mktemp('uninterrupted')
  proc = _launch(repo_root, workdir, cache)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert no_tensorflow.NO_TENSORBOARD in out, 'TensorFlow was imported'
  metrics = summaries.read_metrics(workdir)
  assert sorted(metrics) == list(range(1, NUM_STEPS + 1))
  return cache, metrics


def _stop(proc, workdir, sig):
  """Sends `sig`; returns (output, last logged step, latest checkpoint step)."""
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  done = max(summaries.read_metrics(workdir))
  assert done < NUM_STEPS, 'the run finished before the signal; nothing was tested'
  return out, done, checkpointing.Checkpointer(workdir).latest_step()


def test_sigterm_then_sigkill_and_resumes_continue_the_same_loss_curve(
  repo_root, tmp_path, reference
):
  """One run stopped twice: SIGTERM (a scheduler's preemption), then SIGKILL of its
  resumed run (a crash); both resumes continue the uninterrupted run's losses exactly."""
  cache, ref = reference
  proc = _launch(repo_root, tmp_path, cache)
  _wait_for_steps(proc, tmp_path, 9)
  out, done, latest = _stop(proc, tmp_path, signal.SIGTERM)
  assert proc.returncode == 143, out[-3000:]
  assert 'SIGTERM' in out
  assert latest == done, 'SIGTERM must checkpoint the step it stopped at'

  proc = _launch(repo_root, tmp_path, cache)
  # Killed once the async save of a periodic step past the resume has committed (a save
  # still in flight when the process dies is lost, and the resume falls back further).
  periodic = (latest // EVERY + 2) * EVERY
  _wait_for_steps(proc, tmp_path, periodic + 1, committed=periodic)
  out, done, latest_after_kill = _stop(proc, tmp_path, signal.SIGKILL)
  assert f'Resumed from checkpoint step {latest}' in out
  assert proc.returncode == -signal.SIGKILL
  assert latest_after_kill >= periodic and done - latest_after_kill <= EVERY, (
    done,
    latest_after_kill,
  )

  resumed = _launch(repo_root, tmp_path, cache)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out[-3000:]
  assert f'Resumed from checkpoint step {latest_after_kill}' in out
  metrics = summaries.read_metrics(tmp_path)  # Re-run steps keep their last record.
  assert sorted(metrics) == list(range(1, NUM_STEPS + 1))
  for step in range(1, NUM_STEPS + 1):
    for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'lr', 'con_weight'):
      assert metrics[step][key] == ref[step][key], (step, key)


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: dict


def _state(value: float) -> _State:
  return _State(
    step=np.array(int(value), np.int32),
    params={'w': np.full((3,), value, np.float32)},
    batch_stats={'m': np.zeros((2,), np.float32)},
    opt_state={'mu': np.full((3,), -value, np.float32)},
  )


def test_keep_last_k_best_by_metric_and_eval_restore(tmp_path):
  config = ml_collections.ConfigDict(
    {'seed': 3, 'eval': {'best_metric': 'acc', 'best_mode': 'max'}}
  )
  config_file.save(config, tmp_path)
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, best_metric='acc', best_mode='max')
  assert ckpt.best_step() is None
  ckpt.save(1, _state(1.0), metrics={'acc': 0.5})
  ckpt.save(2, _state(2.0), metrics={'acc': 0.9})
  assert ckpt.best_step() == 2
  ckpt.save(3, _state(3.0), metrics={'acc': 0.7})
  ckpt.save(4, _state(4.0))
  ckpt.save(5, _state(5.0))
  assert ckpt.best_step() == 2
  ckpt.wait()
  # The latest two (4, 5) and the best evaluated one (2); 1 and 3 are gone.
  assert checkpoint_steps.committed_steps(tmp_path / 'checkpoints') == [2, 4, 5]
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '4', '5']
  restored = ckpt.restore(_state(0.0))
  np.testing.assert_array_equal(restored.params['w'], [5.0, 5.0, 5.0])
  np.testing.assert_array_equal(restored.opt_state['mu'], [-5.0, -5.0, -5.0])
  assert int(restored.step) == 5
  ckpt.close()
  loaded, variables, step = checkpointing.restore_for_eval(tmp_path, 'best')
  assert step == 2 and loaded.seed == 3
  np.testing.assert_array_equal(variables['params']['w'], [2.0, 2.0, 2.0])
  _, variables, step = checkpointing.restore_for_eval(tmp_path, 2)
  assert step == 2
  with pytest.raises(FileNotFoundError, match='step 1'):
    checkpointing.restore_for_eval(tmp_path, 1)
  assert checkpointing.restore_for_eval(tmp_path, 'latest')[2] == 5
  with pytest.raises(FileNotFoundError, match='config.json'):
    checkpointing.restore_for_eval(tmp_path / 'nothing')


def test_teacher_is_saved_and_restored_with_the_train_item(tmp_path):
  from stconsist_jax.training import train_step  # pylint: disable=g-import-not-at-top

  def state(value, teacher):
    return train_step.TrainState(
      step=np.array(int(value), np.int32),
      params={'w': np.full((3,), value, np.float32)},
      batch_stats={'m': np.zeros((2,), np.float32)},
      opt_state={'mu': np.full((3,), -value, np.float32)},
      teacher=teacher,
    )

  teacher = {'params': {'w': np.full((3,), 0.5, np.float32)}, 'batch_stats': {'m': np.ones(2)}}
  ckpt = checkpointing.Checkpointer(tmp_path, keep=2, async_save=False)
  ckpt.save(1, state(1.0, teacher))
  blank = {'params': {'w': np.zeros(3, np.float32)}, 'batch_stats': {'m': np.zeros(2)}}
  restored = ckpt.restore(state(0.0, blank))
  ckpt.close()
  assert int(restored.step) == 1
  np.testing.assert_array_equal(restored.teacher['params']['w'], [0.5, 0.5, 0.5])
  np.testing.assert_array_equal(restored.teacher['batch_stats']['m'], [1.0, 1.0])
  # Without a teacher the train item is as before: {opt_state, step}.
  assert set(checkpointing._train_item(state(1.0, None))) == {'opt_state', 'step'}


# What orbax raises when tensorstore's write fails on a full disk (text as measured).
TENSORSTORE_NO_SPACE = (
  'RESOURCE_EXHAUSTED: Error writing local file "/run/checkpoints/12.orbax-checkpoint-tmp/'
  'train.orbax-checkpoint-tmp/_sharding": Failed to write 1154 bytes to file 25: No space '
  "left on device [os_error_code='28']"
)


def test_a_disk_that_fills_during_a_save_is_one_error_and_the_partial_step_goes(
  tmp_path, monkeypatch
):
  """Orbax writes a step in the background; a full disk surfaces at the next wait. It
  becomes one NoSpaceError naming that step and the last committed one, and the step's
  partial directory is removed."""
  config_file.save(ml_collections.ConfigDict({'seed': 3}), tmp_path)
  ckpt = checkpointing.Checkpointer(tmp_path, keep=3)
  ckpt.save(1, _state(1.0))
  ckpt.wait()
  partial = tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp'

  def save_that_fills_the_disk(step, **kwargs):
    (partial / 'variables.orbax-checkpoint-tmp').mkdir(parents=True)
    return True

  def wait_after_a_failed_write():
    raise ValueError(TENSORSTORE_NO_SPACE)

  monkeypatch.setattr(ckpt._manager, 'save', save_that_fills_the_disk)
  ckpt.save(2, _state(2.0))
  assert partial.is_dir()
  monkeypatch.setattr(ckpt._manager, 'wait_until_finished', wait_after_a_failed_write)
  with pytest.raises(checkpointing.NoSpaceError) as e:
    ckpt.wait()
  assert str(e.value) == (
    f'no space left for checkpoint step 2 in {tmp_path / "checkpoints"} (the disk filled '
    'while it was written): the last committed step is 1; free space and rerun the same '
    'command to resume from it'
  )
  assert not partial.exists()
  assert checkpoint_steps.committed_steps(tmp_path / 'checkpoints') == [1]

  def wait_after_another_failure():
    raise ValueError('RESOURCE_EXHAUSTED: out of memory')

  monkeypatch.setattr(ckpt._manager, 'wait_until_finished', wait_after_another_failure)
  with pytest.raises(ValueError, match='out of memory'):  # Other failures keep their type.
    ckpt.wait()


def test_orbax_writer_errors_of_a_full_disk_are_hidden_and_its_other_errors_kept(tmp_path, caplog):
  """Orbax's writer threads log their full-disk errors (a thousand lines, measured) before
  the main thread turns the failure into one line; only those records are hidden."""
  checkpointing.Checkpointer(tmp_path).close()
  orbax_log = std_logging.getLogger('absl')
  with caplog.at_level(std_logging.ERROR):
    orbax_log.error('_SignalingThread.run() raised an exception: %s', TENSORSTORE_NO_SPACE)
    try:
      raise ValueError(TENSORSTORE_NO_SPACE)
    except ValueError:
      orbax_log.exception('Failed to run 4 Handler Commit operations')
    std_logging.getLogger('asyncio').error(
      'Task exception was never retrieved: No space left on device'
    )
    orbax_log.error('another error of orbax')
  assert [r.getMessage() for r in caplog.records] == ['another error of orbax']
