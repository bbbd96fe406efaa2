"""The one entry point: train, evaluate, or both, from an ml_collections config file.

  python launch.py --config=configs/model2.py --workdir=workdirs/model2 \
      --config.optimizer.lr=0.01 --mode=train_and_eval

Multi-host: jax.distributed is initialized when Slurm/TPU-pod environments are detected,
with --distributed, or with explicit --coordinator_address/--num_processes/--process_id.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from stconsist_jax.core import errors

from stconsist_jax.apps import cli

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Config file (configs/*.py); override fields with --config.a.b=value.',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, logs and config.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'train_and_eval'], 'What to run.')
_EVAL_STEP = flags.DEFINE_string(
  'eval_step', None, "--mode=eval: a step number, 'latest' or 'best'."
)
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed', False, 'Force jax.distributed.initialize() (auto-detected on Slurm and TPU pods).'
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0 (multi-process without a cluster environment).',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')
_VERBOSE = flags.DEFINE_bool(
  'verbose',
  False,
  'Show every library log line (hidden: INFO of orbax, TFDS, '
  "JAX's backend probe and TensorFlow's C++ notices).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  'allow_config_change',
  False,
  'Resume a workdir even though the config differs from its config.json beyond run '
  'length, logging and evaluation (the old config is kept beside it).',
)
_EVAL_DIR = flags.DEFINE_string(
  'eval_dir', None, '--mode=eval: write reports here instead of WORKDIR/eval.'
)

EXIT_PREEMPTED = 143  # 128 + SIGTERM: the scheduler may requeue; rerunning resumes.
EXIT_STORAGE_UNAVAILABLE = 75  # EX_TEMPFAIL: the bucket did not answer; rerunning resumes.


def _evaluate_module():
  from stconsist_jax.evaluation import runner  # pylint: disable=g-import-not-at-top

  return runner


def _check_eval_workdir(config):
  """--mode=eval: a workdir that cannot be restored is named before TensorFlow loads."""
  from stconsist_jax.evaluation import restore  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import checkpointing  # pylint: disable=g-import-not-at-top

  step = restore.resolve_step(config, _EVAL_STEP.value)
  if step != restore.INIT_FROM:  # Converted weights: no workdir to restore from.
    checkpointing.check_workdir(_WORKDIR.value, step)


def _evaluator_module():
  from stconsist_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top

  return evaluator


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Imported here so that --help and flag errors come back without loading JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from stconsist_jax.config import schema  # pylint: disable=g-import-not-at-top
  from stconsist_jax.core import console  # pylint: disable=g-import-not-at-top
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import distributed  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import preemption  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  console.quiet_library_logs(_VERBOSE.value)
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, force=_DISTRIBUTED.value
  )
  try:
    schema.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
  except schema.ConfigError as e:
    errors.fail(f'invalid config: {e}')
  logging.info(
    'JAX %s: %d processes, %d devices (%s)',
    jax.__version__,
    jax.process_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )

  try:
    if _MODE.value == 'eval':
      _check_eval_workdir(config)
      _evaluate_module().evaluate(
        config, _WORKDIR.value, step=_EVAL_STEP.value, eval_dir=_EVAL_DIR.value
      )
      return
    evaluate_fn = None
    if _MODE.value == 'train_and_eval':
      _evaluator_module().check_best_metric(config)
      evaluate_fn = _evaluate_module().make_evaluate_fn(_WORKDIR.value)
    train.train_and_evaluate(
      config,
      _WORKDIR.value,
      evaluate_fn=evaluate_fn,
      allow_config_change=_ALLOW_CONFIG_CHANGE.value,
    )
  except errors.NoSpaceError as e:
    # Orbax's writer threads still hold the failed step's writes: a normal exit would
    # print their errors as the interpreter shuts down. The committed steps are intact.
    errors.fail_now(f'error: {e}', errors.EXIT_NO_SPACE)
  except errors.user_error_types() as e:
    # Mistakes found once the data, weights or checkpoints are looked at (num_classes vs
    # the dataset, a dataset not built, no checkpoint, another architecture): one line.
    # Any other exception is a bug and keeps its traceback.
    errors.fail(f'error: {e}')
  except fileio.StorageUnavailableError as e:
    # Threads of the storage clients may still be stuck in the outage: a normal exit
    # would wait for them. Every committed checkpoint stays as it is.
    errors.fail_now(f'error: {e}', EXIT_STORAGE_UNAVAILABLE)
  except preemption.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except train.NonFiniteLossError as e:
    print(str(e), file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    if not errors.is_out_of_space(e):
      raise
    # The lock, config.json, metrics.jsonl or a report: each is written whole or not at all.
    errors.fail_now(
      f'error: no space left on the disk of {_WORKDIR.value} ({errors.describe(e)}); free '
      'space and rerun the same command (it resumes from the last committed checkpoint)',
      errors.EXIT_NO_SPACE,
    )


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
