"""Faults a user meets with a workdir: two runs, damaged files, changed configs, bad paths.

Each test reproduces a failure seen before the fix (issue "the real path at real scale",
findings 3, 5-8, 10 and 12) on a tiny model with random data (no TensorFlow).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import pytest

from stconsist_jax.training import checkpointing

from stconsist_jax.training import checkpoint_steps
from stconsist_jax.config import schema
from stconsist_jax.config import config_file
from stconsist_jax.core import console
from stconsist_jax.core import errors
from stconsist_jax.training import summaries
from stconsist_jax.training import train
from stconsist_jax.training import workdir_lock
from tests import no_tensorflow
from tests import xla_env
from tests.training import lock_files
from tests.training import metric_records
from tests.training.test_train import tiny_config


def _run(config, workdir, **kwargs):
  return train.train_and_evaluate(config, str(workdir), mesh=_one_device_mesh(), **kwargs)


def _one_device_mesh():
  from stconsist_jax.training import distributed  # pylint: disable=g-import-not-at-top

  return distributed.make_mesh(jax.devices()[:1])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One finished 4-step run (checkpoints at steps 2 and 4), copied by the tests."""
  workdir = tmp_path_factory.mktemp('template') / 'run'
  _run(tiny_config(4), workdir)
  return workdir


def _copy(trained, tmp_path):
  target = tmp_path / 'run'
  shutil.copytree(trained, target)
  return target


# ------------------------------------------------------------------------- the lock


def test_second_run_on_a_live_workdir_is_refused_naming_the_holder(tmp_path):
  with workdir_lock.WorkdirLock(tmp_path):
    with pytest.raises(workdir_lock.WorkdirLockedError) as e:
      _run(tiny_config(2), tmp_path)
  message = str(e.value)
  assert f'pid {os.getpid()}' in message and socket.gethostname() in message
  assert 'started' in message
  assert not (tmp_path / config_file.CONFIG_FILENAME).exists(), 'refused run wrote a file'
  assert not (tmp_path / workdir_lock.LOCK_FILENAME).exists(), 'lock not released'


def _run_command(repo_root, script, *args, env=None):
  """Runs a project command (launch.py, tools/demo.py) as a user would, on the CPU."""
  return subprocess.run(
    [sys.executable, script, *args],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=300,
    env=env or dict(os.environ, JAX_PLATFORMS='cpu'),
  )


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  dead = subprocess.run(
    [sys.executable, '-c', 'import os; print(os.getpid())'],
    capture_output=True,
    text=True,
    check=True,
  )
  lock_files.write_lock(tmp_path, pid=int(dead.stdout))
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    held = json.loads(lock.path.read_text())
    assert held['pid'] == os.getpid() and held['token'] != 'other'
  assert not lock.path.exists()


def test_lock_of_another_host_holds_until_its_lease_expires(tmp_path):
  lock_files.write_lock(tmp_path, host='node-7', pid=1, renewed=time.time())
  with pytest.raises(workdir_lock.WorkdirLockedError, match='host node-7, pid 1'):
    workdir_lock.WorkdirLock(tmp_path).acquire()
  lock_files.write_lock(tmp_path, host='node-7', pid=1, renewed=time.time() - 1000)
  with workdir_lock.WorkdirLock(tmp_path):
    pass


def test_lease_is_renewed_while_held(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path, lease_seconds=0.3)
  lock.acquire()
  try:
    first = json.loads(lock.path.read_text())['renewed']
    time.sleep(0.5)
    assert json.loads(lock.path.read_text())['renewed'] > first
  finally:
    lock.release()


def test_two_launches_on_one_workdir_second_exits_with_one_line(repo_root, tmp_path):
  lock_files.write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid())  # a live run
  proc = _run_command(
    repo_root,
    'launch.py',
    '--config=configs/demo.py',
    f'--workdir={tmp_path}',
    '--config.data.name=random',
  )
  assert proc.returncode == 2
  assert 'in use by another run' in proc.stderr and 'Traceback' not in proc.stderr
  assert not (tmp_path / 'metrics.jsonl').exists()


# ------------------------------------------------------------- damaged files, resumes


def test_truncated_metrics_line_then_resume_stays_readable(trained, tmp_path):
  config = tiny_config(4)
  tmp_path = _copy(trained, tmp_path)
  path = tmp_path / summaries.METRICS_FILENAME
  with open(path, 'a') as f:
    f.write('{"step": 5, "loss": 1.2')  # a crash mid-write
  config.train.num_steps = 6
  _run(config, tmp_path)
  records = summaries.read_metrics_jsonl(path)
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]


def _damage_latest(workdir: pathlib.Path, step: int) -> None:
  """Truncates every array data file of a committed checkpoint step."""
  files = [
    p for p in (workdir / 'checkpoints' / str(step)).rglob('*') if p.is_file() and '/d/' in str(p)
  ]
  assert files, 'no data files found to damage'
  for p in files:
    p.write_bytes(p.read_bytes()[:7])


# A damaged step is one warning: orbax's abandoned reads of the step's other arrays must
# not add asyncio "never retrieved" errors or callbacks into its closed event loop.
QUIET_FALLBACK = pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')


def _asyncio_errors(caplog):
  return [r.getMessage()[:200] for r in caplog.records if r.name == 'asyncio']


@QUIET_FALLBACK
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(trained, tmp_path, caplog):
  config = tiny_config(4)  # checkpoints at steps 2 and 4
  tmp_path = _copy(trained, tmp_path)
  _damage_latest(tmp_path, 4)
  _, variables, step = checkpointing.restore_for_eval(tmp_path, 'latest')
  assert step == 2
  unreadable = [r for r in caplog.records if 'is unreadable' in r.getMessage()]
  assert len(unreadable) == 1 and 'step 4' in unreadable[0].getMessage()
  assert not _asyncio_errors(caplog)
  config.train.num_steps = 5
  state = _run(config, tmp_path)
  assert int(jax.device_get(state.step)) == 5
  steps = checkpoint_steps.committed_steps(tmp_path / 'checkpoints')
  assert steps[-1] == 5 and 4 in steps, 'step 4 must be saved again, not skipped'
  assert any(p.name.startswith('4.unreadable-') for p in (tmp_path / 'checkpoints').iterdir())
  # The resumed run repeated steps 3..4 from step 2: same losses as the first time.
  metrics = summaries.read_metrics(tmp_path)
  assert sorted(metrics) == [1, 2, 3, 4, 5]
  del variables


@QUIET_FALLBACK
def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(trained, tmp_path, caplog):
  tmp_path = _copy(trained, tmp_path)
  _damage_latest(tmp_path, 2)
  _damage_latest(tmp_path, 4)
  with pytest.raises(checkpointing.CheckpointReadError, match='could be read'):
    checkpointing.restore_for_eval(tmp_path, 'latest')
  assert not _asyncio_errors(caplog)


def _fake_step(step_dir, *, variables_data=True):
  """A step directory laid out as orbax writes one (files hold no real checkpoint)."""
  for item in checkpoint_steps.ITEMS:
    (step_dir / item / 'ocdbt.process_0' / 'd').mkdir(parents=True)
    (step_dir / item / '_METADATA').write_text('{}')
    if item != 'variables' or variables_data:
      (step_dir / item / 'ocdbt.process_0' / 'd' / 'abc123').write_bytes(b'data')


def test_a_step_is_complete_with_each_items_metadata_and_data(tmp_path):
  _fake_step(tmp_path / '4')
  assert checkpoint_steps.missing_parts(tmp_path / '4') == []
  _fake_step(tmp_path / '6', variables_data=False)
  assert checkpoint_steps.missing_parts(tmp_path / '6') == ['variables/ array data']
  (tmp_path / '6' / 'train' / '_METADATA').unlink()
  assert checkpoint_steps.missing_parts(tmp_path / '6') == [
    'variables/ array data',
    'train/_METADATA',
  ]


def test_committed_step_without_its_array_data_falls_back_with_one_warning(
  trained, tmp_path, caplog
):
  tmp_path = _copy(trained, tmp_path)
  shutil.rmtree(tmp_path / 'checkpoints' / '4' / 'variables' / 'ocdbt.process_0' / 'd')
  assert checkpoint_steps.committed_steps(tmp_path / 'checkpoints') == [2, 4]  # orbax's view
  _, _, step = checkpointing.restore_for_eval(tmp_path, 'latest')
  assert step == 2
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1, warnings
  assert 'step 4' in warnings[0] and 'lacks variables/ array data' in warnings[0]
  assert 'falling back to step 2' in warnings[0]


def test_run_whose_lease_is_lost_stops_keeping_its_checkpoints(trained, tmp_path, monkeypatch):
  tmp_path = _copy(trained, tmp_path)
  acquire = workdir_lock.WorkdirLock.acquire

  def acquire_then_lose(lock):
    holder = acquire(lock)
    lock._lose('the lease could not be renewed (OSError: 503)')  # as the renewal thread does
    return holder

  monkeypatch.setattr(workdir_lock.WorkdirLock, 'acquire', acquire_then_lose)
  with pytest.raises(workdir_lock.LeaseLostError) as e:
    _run(tiny_config(6), tmp_path)
  assert str(e.value) == (
    'the lease could not be renewed (OSError: 503); stopped at step 4, saving nothing more '
    '(last checkpoint: step 4); rerun the same command to resume'
  )
  assert checkpoint_steps.committed_steps(tmp_path / 'checkpoints') == [2, 4]
  assert not (tmp_path / workdir_lock.LOCK_FILENAME).exists()


def test_full_disk_stops_before_the_step_in_one_line_and_the_resume_is_exact(
  trained, tmp_path, monkeypatch
):
  """A disk without room for the next step (a full disk, simulated by its free space):
  the run stops before writing it, naming the step and the last committed one; after
  space is freed the same command resumes from that step and repeats its steps exactly."""
  tmp_path = _copy(trained, tmp_path)  # checkpoints at steps 2 and 4
  config = tiny_config(8)
  monkeypatch.setattr(checkpointing, '_free_bytes', lambda directory: 0)
  with pytest.raises(checkpointing.NoSpaceError) as e:
    _run(config, tmp_path)
  message = str(e.value)
  assert 'no space left for checkpoint step 6' in message and '0.0 MB free' in message
  assert 'the last committed step is 4' in message and '\n' not in message
  assert isinstance(e.value, errors.UserError)  # launch.py: one line, exit 74
  checkpoints = tmp_path / 'checkpoints'
  assert sorted(p.name for p in checkpoints.iterdir()) == ['2', '4']  # nothing partial
  assert not (tmp_path / workdir_lock.LOCK_FILENAME).exists(), 'lock not released'

  monkeypatch.undo()
  _run(config, tmp_path)
  assert checkpoint_steps.committed_steps(checkpoints)[-1] == 8
  assert sorted(summaries.read_metrics(tmp_path)) == list(range(1, 9))
  repeated = metric_records.steps_run_twice(tmp_path)
  assert sorted(repeated) == [5, 6]  # logged before the stop, then again from step 4
  assert all(first == again for first, again in repeated.values())


def test_resume_with_another_architecture_is_refused_before_writing(trained, tmp_path):
  tmp_path = _copy(trained, tmp_path)
  saved = (tmp_path / config_file.CONFIG_FILENAME).read_text()
  other = tiny_config(4)
  other.model.depth = 18
  with pytest.raises(schema.ConfigError, match='model.depth: 10 -> 18'):
    _run(other, tmp_path, allow_config_change=True)
  assert (tmp_path / config_file.CONFIG_FILENAME).read_text() == saved


def test_resume_with_another_learning_rate_needs_explicit_consent(trained, tmp_path):
  tmp_path = _copy(trained, tmp_path)
  saved = (tmp_path / config_file.CONFIG_FILENAME).read_text()
  changed = tiny_config(5)
  changed.optimizer.lr = 0.5
  with pytest.raises(schema.ConfigError, match='allow_config_change'):
    _run(changed, tmp_path)
  assert (tmp_path / config_file.CONFIG_FILENAME).read_text() == saved
  _run(changed, tmp_path, allow_config_change=True)
  assert config_file.load(tmp_path).optimizer.lr == 0.5
  backups = list(tmp_path.glob('config.before-*.json'))
  assert len(backups) == 1 and backups[0].read_text() == saved


def test_resume_may_change_the_lowering_and_with_consent_the_dtype(trained, tmp_path):
  """model.conv_impl gives the same numbers by another XLA program: a resume may change
  it. model.dtype keeps the stored float32 parameters but changes the numbers: only with
  --allow_config_change. Any other model key is another architecture."""
  tmp_path = _copy(trained, tmp_path)
  saved = (tmp_path / config_file.CONFIG_FILENAME).read_text()
  lowering = tiny_config(4)
  lowering.model.conv_impl = 'xla' if lowering.model.conv_impl != 'xla' else 'conv2d'
  train.check_resume_config(lowering, str(tmp_path), allow_config_change=False)
  compute = tiny_config(4)
  compute.model.dtype = 'bfloat16'
  with pytest.raises(schema.ConfigError, match='model.dtype.*allow_config_change'):
    train.check_resume_config(compute, str(tmp_path), allow_config_change=False)
  train.check_resume_config(compute, str(tmp_path), allow_config_change=True)
  assert [p.read_text() for p in tmp_path.glob('config.before-*.json')] == [saved]
  width = tiny_config(4)
  width.model.widen_factor = 0.25
  with pytest.raises(schema.ConfigError, match='model.widen_factor') as e:
    train.check_resume_config(width, str(tmp_path), allow_config_change=True)
  assert 'allow_config_change' not in str(e.value)


def test_longer_run_resumes_without_consent(trained, tmp_path):
  tmp_path = _copy(trained, tmp_path)
  state = _run(tiny_config(5), tmp_path)
  assert int(jax.device_get(state.step)) == 5


def test_relative_workdir_trains_resumes_and_restores(trained, tmp_path, monkeypatch):
  """A workdir given relative to the current folder (as `make demo` does): orbax needs
  absolute paths, so the project makes local ones absolute itself."""
  _copy(trained, tmp_path)
  monkeypatch.chdir(tmp_path)
  state = _run(tiny_config(5), 'run')
  assert int(jax.device_get(state.step)) == 5
  _, _, step = checkpointing.restore_for_eval('run', 'latest')
  assert step == 5


# --------------------------------------------------------------------- bad settings


def test_missing_init_from_says_how_to_get_weights_before_writing(tmp_path):
  config = tiny_config(1)
  config.init_from = str(tmp_path / 'no_weights')
  with pytest.raises(FileNotFoundError, match="convert_torch_weights.*init_from=''"):
    _run(config, tmp_path / 'run')
  assert not (tmp_path / 'run' / config_file.CONFIG_FILENAME).exists()


def test_negative_seed_is_refused_by_validation():
  config = tiny_config(1)
  config.seed = -1
  with pytest.raises(schema.ConfigError, match="'seed' must be >= 0"):
    schema.validate(config)


def test_short_run_warmup_message_says_how_to_proceed():
  config = tiny_config(20)
  config.optimizer.warmup_steps = 500
  with pytest.raises(schema.ConfigError, match=r'warmup_steps=2\)'):
    schema.validate(config)


@pytest.mark.parametrize(
  'args, message',
  [
    (['--config=configs/nope.py'], "config file 'configs/nope.py' not found"),
    (['--config.seed=-1'], "'seed' must be >= 0"),
    (['--config.seedx=1'], "'seedx' does not exist"),
    (['--cache_dir=gs://bucket/cache'], '--cache_dir gs://bucket/cache is a bucket URL'),
  ],
)
def test_demo_bad_flags_one_line_and_workdir_kept(repo_root, tmp_path, args, message):
  workdir = tmp_path / 'demo'
  workdir.mkdir()
  (workdir / 'keep.txt').write_text('previous run')
  proc = _run_command(
    repo_root, 'tools/demo.py', f'--workdir={workdir}', f'--cache_dir={tmp_path / "cache"}', *args
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert (workdir / 'keep.txt').exists(), 'the demo deleted the workdir of a bad run'
  assert not (tmp_path / 'cache').exists(), 'data was built before the config was checked'


def test_demo_refuses_to_delete_a_live_workdir(repo_root, tmp_path):
  workdir = tmp_path / 'demo'
  workdir.mkdir()
  lock_files.write_lock(workdir)
  proc = _run_command(
    repo_root, 'tools/demo.py', f'--workdir={workdir}', f'--cache_dir={tmp_path / "cache"}'
  )
  assert proc.returncode == 2 and 'in use by another run' in proc.stderr
  assert (workdir / workdir_lock.LOCK_FILENAME).exists()


# ------------------------------------------------------------ the study's config, tools


def test_model2_as_shipped_says_how_to_get_its_weights(repo_root, tmp_path):
  proc = _run_command(
    repo_root,
    'launch.py',
    '--config=configs/model2.py',
    f'--workdir={tmp_path / "model2"}',
    '--config.data.name=random',
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'convert_torch_weights' in proc.stderr and "init_from=''" in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'model2' / config_file.CONFIG_FILENAME).exists()


def test_model2_trains_from_scratch_when_told_to(repo_root, tmp_path):
  # On one CPU device and, its data being random, without TensorFlow (no TensorBoard
  # summaries, no import of it): what is checked is only where the weights come from.
  env = no_tensorflow.env(
    xla_env.subprocess_env(1, JAX_PLATFORMS='cpu'), tmp_path / 'no_tensorflow'
  )
  proc = _run_command(
    repo_root,
    'launch.py',
    '--config=configs/model2.py',
    f'--workdir={tmp_path / "model2"}',
    '--config.init_from=',
    '--config.data.name=random',
    '--config.data.frame_size=16',
    '--config.data.image_size=16',
    '--config.data.num_frames=4',
    '--config.model.depth=10',
    '--config.model.widen_factor=0.125',
    '--config.train.batch_size=8',
    '--config.train.num_steps=2',
    '--config.optimizer.warmup_steps=1',
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert no_tensorflow.NO_TENSORBOARD in proc.stderr
  assert checkpoint_steps.committed_steps(tmp_path / 'model2' / 'checkpoints') == [2]


def test_progress_logs_count_and_eta_without_a_terminal(caplog):
  import logging as std_logging  # pylint: disable=g-import-not-at-top

  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  # A command's main run earlier in this worker may have lowered absl's verbosity.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  caplog.set_level(std_logging.INFO)
  try:
    items = list(console.progress(range(5), 5, 'eval frames', log_every_s=0.0))
  finally:
    absl_logging.set_verbosity(verbosity)
  assert items == list(range(5))
  lines = [r.getMessage() for r in caplog.records if 'eval frames' in r.getMessage()]
  assert lines and lines[-1].startswith('eval frames: 5/5 batches (100%)')
  assert 'ETA' in lines[-1]
