"""The training loop: resume, stages, checkpoints, evaluation, logging and stopping.

`train_and_evaluate` drives `train_step.make_train_step` over a batch stream; the step
itself (state, optimizer, loss) lives in `train_step`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from stconsist_jax import models
from stconsist_jax.core import errors
from stconsist_jax.training import checkpointing
from stconsist_jax.training import initial_weights
from stconsist_jax.training import checkpoint_steps
from stconsist_jax.config import schema
from stconsist_jax.config import config_file
from stconsist_jax.training import distributed
from stconsist_jax.core import fileio
from stconsist_jax.training import metric_logger
from stconsist_jax.training import preemption
from stconsist_jax.training import train_step
from stconsist_jax.training import workdir_lock
from stconsist_jax.data.pipeline import random_source

Batch = train_step.Batch
BatchIterFn = Callable[[ml_collections.ConfigDict, int], Iterator[Batch]]
EvaluateFn = Callable[..., Mapping[str, float]]


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN/Inf; the run stopped without saving that state."""


class TrainingDataExhaustedError(errors.UserError, ValueError):
  """The training stream ended before the last step (no usable video, unreadable files)."""


# -------------------------------------------------------------------------------- loop


def default_batch_iter_fn(config: ml_collections.ConfigDict, start_step: int) -> Iterator[Batch]:
  """This host's training batches starting at `start_step`.

  data.name == 'random' uses `random_source`; anything else the tf.data pipeline
  (imported here so that training on random data never imports TensorFlow).
  """
  if config.data.name == 'random':
    return random_source.batch_iterator(config, start_step)
  from stconsist_jax.data.pipeline import train_stream  # pylint: disable=g-import-not-at-top

  return train_stream.train_iterator(
    config,
    start_step=start_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def _next_batch(batches: Iterator[Batch], config: ml_collections.ConfigDict, step: int) -> Batch:
  """The next host batch; an exhausted stream is a clear error, not a StopIteration."""
  try:
    return next(batches)
  except StopIteration:
    raise TrainingDataExhaustedError(
      f'the training data of process {jax.process_index()} ran out at step {step}: its '
      f'share of {config.data.name!r} holds no usable video for data.classes='
      f'{config.data.classes!r}, data.labeled_per_batch={config.data.labeled_per_batch}'
      f', or none of its files could be read (--verbose shows the reading errors)'
    ) from None


def check_data_dir(config: ml_collections.ConfigDict) -> None:
  """A local data.data_dir that does not exist, named before TensorFlow is imported."""
  data_dir = config.data.get('data_dir')
  if config.data.name == 'random' or not data_dir or fileio.is_remote(data_dir):
    return
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
      f'TFDS dataset {config.data.name!r} not found (data_dir={data_dir!r}): no such folder'
    )


def check_num_classes(config: ml_collections.ConfigDict) -> None:
  """Fails before any compute when model.num_classes differs from the data's labels."""
  if config.data.name == 'random':
    return
  check_data_dir(config)
  from stconsist_jax.data.pipeline import sources  # pylint: disable=g-import-not-at-top

  names = sources.label_names(config.data)
  if len(names) != config.model.num_classes:
    raise schema.ConfigError(
      f'config key model.num_classes={config.model.num_classes} differs from the '
      f'{len(names)} labels that data {config.data.name!r} yields with '
      f'data.classes={config.data.classes!r} (first: {names[:3]})'
    )


def check_num_box_classes(config: ml_collections.ConfigDict) -> None:
  """A tubelet detector: model.num_box_classes must equal the data's annotated classes."""
  if config.data.name == 'random' or not schema.tubelet_frames(config):
    return
  from stconsist_jax.data.pipeline import sources  # pylint: disable=g-import-not-at-top

  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.classes = 'ucf24'  # the annotated classes, in tube-label order
  names = sources.label_names(data)
  if len(names) != config.model.num_box_classes:
    raise schema.ConfigError(
      f'config key model.num_box_classes={config.model.num_box_classes} differs from the '
      f'{len(names)} annotated classes of data {config.data.name!r} (first: {names[:3]})'
    )


def _lease_lost(lock: workdir_lock.WorkdirLock | None, step: int, every: int) -> bool:
  """Whether process 0 lost the workdir lock: looked at before every step with one
  process; with several, every `every` steps, all processes agreeing."""
  lost = lock is not None and lock.lost
  if jax.process_count() == 1:
    return lost
  return step % every == 0 and distributed.any_process(lost)


def _lease_lost_error(
  lock: workdir_lock.WorkdirLock | None, step: int, checkpointer: Any
) -> workdir_lock.LeaseLostError:
  last = checkpointer.latest_step()
  reason = lock.lost_reason if lock is not None else 'process 0 lost the workdir lock'
  return workdir_lock.LeaseLostError(
    f'{reason}; stopped at step {step}, saving nothing more (last checkpoint: '
    f'{"none" if last is None else f"step {last}"}); rerun the same command to resume'
  )


def _check_finite(
  records: Sequence[tuple[int, Mapping[str, Any]]],
  checkpointer: Any,
) -> None:
  for step, metrics in records:
    # The terms the model's head yields (the tubelet head has no loc/con_loc).
    checked = ('loss',) + tuple(k for k in schema.LOSS_TERMS if k in metrics)
    bad = [k for k in checked if not np.isfinite(metrics[k])]
    if bad:
      checkpointer.wait()
      last = checkpointer.latest_step()
      values = ', '.join(f'{k}={float(metrics[k]):.6g}' for k in checked)
      raise NonFiniteLossError(
        f'non-finite loss at step {step} (terms: {", ".join(bad)}; {values}); '
        f'stopping. Last good checkpoint: '
        f'{"none" if last is None else f"step {last}"} in {checkpointer.workdir}'
      )


def check_resume_config(
  config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool
) -> None:
  """Refuses to resume a workdir whose saved config differs in what defines the run.

  Run length, logging, evaluation, data location and lowering (model.conv_impl) may
  change on resume (logged). Any other difference (optimizer, losses, data, seed, compute
  dtype) is refused before anything is written, unless `allow_config_change`; then the
  old config is kept as `config.before-<time>.json` beside the new one. Another
  architecture is always refused.
  """
  path = fileio.as_path(workdir) / config_file.CONFIG_FILENAME
  if not path.exists():
    return
  saved = config_file.load(workdir)
  diffs = config_file.config_differences(saved, config)
  if not diffs:
    return
  blocking = [d for d in diffs if not config_file.is_resumable_change(d[0])]
  harmless = [d for d in diffs if config_file.is_resumable_change(d[0])]
  if harmless:
    logging.info('Resuming %s with changed %s', workdir, config_file.describe_differences(harmless))
  if not blocking:
    return
  model_keys = [d for d in blocking if config_file.is_architecture_change(d[0])]
  if model_keys or not allow_config_change:
    raise schema.ConfigError(
      f'workdir {workdir} holds a run with another config '
      f'({config_file.describe_differences(blocking)}); resuming would mix two '
      f'experiments. Use a new --workdir'
      + (
        ''
        if model_keys
        else ', or pass --allow_config_change to continue this run with the new settings'
      )
    )
  logging.warning(
    'Continuing %s with changed %s (--allow_config_change)',
    workdir,
    config_file.describe_differences(blocking),
  )
  if jax.process_index() == 0:
    backup = path.parent / f'config.before-{time.strftime("%Y%m%d-%H%M%S")}.json'
    fileio.atomic_write(backup, path.read_bytes())


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  batch_iter_fn: BatchIterFn | None = None,
  evaluate_fn: EvaluateFn | None = None,
  mesh: Any = None,
  allow_config_change: bool = False,
) -> train_step.TrainState:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the final state.

  Args:
    config: a validated-here ConfigDict (configs/default.py documents the fields).
    workdir: checkpoints, config.json, metrics.jsonl and TensorBoard files; a local
      folder or a bucket URL (gs://...).
    batch_iter_fn: `(config, start_step) -> iterator` of this host's numpy batches
      (docs/DESIGN.md section 3); a pure function of (seed, step). Default: the tf.data
      pipeline.
    evaluate_fn: `(config, variables, step, mesh) -> {metric: float}`, called every
      `train.eval_every` steps and at the end; the evaluated step is saved with its
      metrics, which makes it a candidate for the 'best' checkpoint.
    mesh: device mesh (default: all devices).
    allow_config_change: resume even if the saved config differs beyond run length,
      logging and evaluation (never for another architecture).

  Raises:
    NonFiniteLossError: a loss became NaN/Inf (no checkpoint of it is written).
    Preempted: SIGTERM arrived; the current step was checkpointed.
    WorkdirLockedError: another live run holds the workdir.
    LeaseLostError: the lock's lease could not be renewed in time, or another run took
      the lock; the run stopped before its next step, saving nothing more.
    TrainingDataExhaustedError: the batch stream ended before the last step.
  """
  mesh = distributed.make_mesh() if mesh is None else mesh
  schema.validate(config, num_devices=mesh.devices.size, num_processes=jax.process_count())
  fileio.set_storage_timeout(config.train.storage_timeout_seconds)
  if batch_iter_fn is None:
    check_num_classes(config)
    check_num_box_classes(config)
  ckpt_dir = fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR
  if config.init_from and not checkpoint_steps.committed_steps(ckpt_dir):
    initial_weights.check_init_from(config.init_from)
  # Process 0 holds the workdir for the whole run: a second run on it is refused. All
  # processes learn the outcome, or the others would wait for process 0 forever.
  lock, refused = None, None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir)
    try:
      fileio.bounded(lock.acquire, workdir, 'taking the lock of', retry=False)
    except workdir_lock.WorkdirLockedError as e:
      lock, refused = None, e
  if distributed.any_process(refused is not None):
    raise refused or workdir_lock.WorkdirLockedError(
      f'workdir {workdir} is in use by another run (reported by process 0)'
    )
  try:
    return _train(config, workdir, batch_iter_fn, evaluate_fn, mesh, allow_config_change, lock)
  except fileio.StorageUnavailableError:
    lock = None  # Unreachable; its lease lapses, and this host sees the process gone.
    raise
  finally:
    if lock is not None:
      fileio.bounded(lock.release, workdir, 'releasing the lock of', retry=False)


def _train(
  config: ml_collections.ConfigDict,
  workdir: str,
  batch_iter_fn: BatchIterFn | None,
  evaluate_fn: EvaluateFn | None,
  mesh: Any,
  allow_config_change: bool,
  lock: workdir_lock.WorkdirLock | None,
) -> train_step.TrainState:
  """The body of `train_and_evaluate`, run while the workdir lock is held (`lock`, on
  process 0)."""

  model = models.build_model(config.model)
  stages = train_step.resolve_stages(config)
  num_steps = config.train.num_steps
  is_main = jax.process_index() == 0
  if checkpoint_steps.committed_steps(fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR):
    check_resume_config(config, workdir, allow_config_change)
  checkpointer = checkpointing.Checkpointer(
    workdir,
    keep=config.train.keep_checkpoints,
    best_metric=config.eval.best_metric,
    best_mode=config.eval.best_mode,
  )
  latest = checkpointer.latest_step()
  if is_main:
    config_file.save(config, workdir)
  state = train_step.create_train_state(
    config, model, mesh, init_from=None if latest is not None else config.init_from
  )
  if latest is not None:
    state = checkpointer.restore(state)
    logging.info('Resumed from checkpoint step %d in %s', int(jax.device_get(state.step)), workdir)
  start = int(jax.device_get(state.step))
  batch_iter_fn = batch_iter_fn or default_batch_iter_fn
  batches = batch_iter_fn(config, start)
  # Bounded: the prefetcher must not read batches past the last step.
  device_batches = distributed.prefetch_to_mesh(
    itertools.islice(batches, num_steps - start), mesh, config.data.device_prefetch
  )
  logger = metric_logger.MetricLogger(
    workdir,
    total_steps=num_steps,
    start_step=start,
    batch_size=config.train.batch_size,
    enabled=is_main,
  )
  profiler = metric_logger.StepProfiler(workdir, *config.train.profile_steps, enabled=is_main)
  step_fns: dict[int, Callable] = {}
  pending: list[tuple[int, Any]] = []
  every = config.train.checkpoint_every

  def flush():
    records = [(s, jax.device_get(m)) for s, m in pending]
    pending.clear()
    _check_finite(records, checkpointer)
    logger.write_steps(records)

  grace = min(preemption.SIGTERM_STORAGE_GRACE_SECONDS, config.train.storage_timeout_seconds)
  data_wait = _data_wait_marker(config)
  storage_failed = False
  sigterm = preemption.SigtermFlag(workdir, grace)
  try:
    with sigterm:
      for step in range(start, num_steps):
        if _lease_lost(lock, step, config.train.log_every):
          checkpointer.wait()  # Saves begun while the lock was held; no new one.
          raise _lease_lost_error(lock, step, checkpointer)
        index = train_step.stage_at(stages, step)
        if index not in step_fns:
          logging.info(
            'Stage %d: steps [%d, %d), freeze_backbone=%s, loss weights %s',
            index,
            stages[index].start,
            stages[index].end,
            stages[index].freeze_backbone,
            dict(stages[index].loss_weights),
          )
          step_fns[index] = train_step.make_train_step(config, model, mesh, stages[index])
        profiler.before_step(step)
        with logger.timed('input'), data_wait():
          batch = _next_batch(device_batches, config, step)
        state, metrics = step_fns[index](state, batch)
        profiler.after_step(step, metrics)
        done = step + 1
        sigterm.step = done
        pending.append((done, metrics))
        # Read once: a signal arriving later is seen next step. All hosts must agree, or
        # those that stop would wait forever in the save's barriers for the others: on
        # several processes JAX's preemption service decides for all of them.
        stop = (
          checkpointer.reached_preemption(done) if jax.process_count() > 1 else sigterm.received
        )
        save_now = (every and done % every == 0) or done == num_steps or stop
        eval_now = evaluate_fn is not None and (
          (config.train.eval_every and done % config.train.eval_every == 0) or done == num_steps
        )
        if save_now or eval_now or done % config.train.log_every == 0:
          flush()
        if done % config.train.log_every == 0 or done == num_steps:
          logger.write_interval(done)
        eval_metrics = None
        if eval_now:
          variables = {'params': state.params, 'batch_stats': state.batch_stats}
          eval_metrics = evaluate_fn(config, variables, done, mesh)
          logger.write_eval(done, eval_metrics)
        if save_now or eval_now:  # An evaluated step is kept while it is the best.
          logger.flush()
          checkpointer.save(done, state, metrics=eval_metrics)
          if eval_now and checkpointer.best_step() == done:
            logging.info(
              'New best %s=%.4f at step %d',
              config.eval.best_metric,
              float(eval_metrics[config.eval.best_metric]),
              done,
            )
        if stop and done < num_steps:
          checkpointer.wait()
          raise preemption.Preempted(done)
      if pending:
        flush()
  except fileio.StorageUnavailableError:
    if sigterm.received:
      sigterm.end_process()  # A storage call gave up before the watch saw it stall.
    storage_failed = True  # Waiting for the pending writes would time out again.
    raise
  except checkpointing.NoSpaceError:
    storage_failed = True  # The pending writes would fail again on the full disk.
    raise
  finally:
    profiler.stop()
    if not storage_failed:
      checkpointer.wait()
      checkpointer.close()
      logger.close()
  return state


def _data_wait_marker(config: ml_collections.ConfigDict) -> Callable[[], Any]:
  """Context for reading a batch: a wait for storage when the data is in a bucket."""
  if fileio.is_remote(config.data.data_dir):
    return fileio.waiting_on_storage
  return contextlib.nullcontext
