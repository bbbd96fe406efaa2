"""Orbax checkpoints in one place: periodic async saves, latest N + best, resume, eval restore.

Layout of a workdir (a local folder or a gs:// prefix):
  config.json                 the run's config (saved before the first step)
  checkpoints/<step>/         items 'variables' {params, batch_stats} and 'train'
                              {opt_state, step, and with a mean teacher its teacher
                              {params, batch_stats}}; an evaluated step also holds its
                              'metrics'. One orbax CheckpointManager keeps the latest
                              `keep` steps and the best one by `best_metric`.
Locally orbax writes each step into a temporary directory and renames it when complete;
on a bucket it writes the step in place and marks it with a commit file last. Either
way only finished steps are listed, so a crash never leaves a half-written checkpoint
that a resume would pick up. Before a step is restored, each of its items must hold its
metadata and array data: a step listed as finished without them (another run writing the
same workdir) counts as unreadable. A step that cannot be read (a damaged or missing file)
is set aside as `<step>.unreadable-<time>` and the previous step is used, with a warning;
never silently step 0. The data stream is a pure function of (seed, step): the step
alone restores the pipeline position. A disk too full for the next step stops the run with
one line (`NoSpaceError`); the committed steps stay, the partial one is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Mapping

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from stconsist_jax.core import errors
from stconsist_jax.config import config_file
from stconsist_jax.core import fileio
from stconsist_jax.training import checkpoint_steps
from stconsist_jax.training import distributed
from stconsist_jax.training import orbax_quirks

CHECKPOINT_DIR = 'checkpoints'
T = TypeVar('T')
# Room asked for a step beyond its estimated size: later steps compress less, and slack.
SPACE_MARGIN_FACTOR = 1.25
SPACE_MARGIN_BYTES = 2**20


class CheckpointReadError(errors.UserError, RuntimeError):
  """No committed checkpoint of a workdir could be read."""


class NoSpaceError(errors.NoSpaceError):
  """The checkpoint disk is too full for the next step; the committed steps are intact."""


def _free_bytes(directory: epath.Path) -> int:
  """Free bytes of the file system `directory` is (or will be) on."""
  path = os.path.abspath(os.fspath(directory))
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def _tree_bytes(path: str) -> int:
  """Bytes of the files under `path`."""
  return sum(
    os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
  )


def restore_with_fallback(
  steps: list[int],
  read: Callable[[int], T],
  where: str,
  on_unreadable: Callable[[int], None] | None = None,
) -> tuple[int, T]:
  """`read(step)` for the newest readable step, newest first, warning on each failure.

  `on_unreadable(step)` is called for the steps that failed, only once an older one was
  read: when every step fails alike (say, a target of another structure) nothing is
  touched. Raises CheckpointReadError when none can be read (never a fresh start).
  """
  problems, failed = [], []
  for step in sorted(steps, reverse=True):
    try:
      with orbax_quirks.failed_read_leftovers_silenced():
        result = read(step)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for a damaged file; all mean unreadable.
      problems.append(f'step {step}: {errors.describe(e)}')
      failed.append(step)
      older = [s for s in steps if s < step]
      logging.warning(
        'Checkpoint step %d in %s is unreadable (%s); %s',
        step,
        where,
        errors.describe(e),
        f'falling back to step {max(older)}' if older else 'no older checkpoint to fall back to',
      )
      continue
    for bad in failed if on_unreadable is not None else ():
      on_unreadable(bad)
    return step, result
  raise CheckpointReadError(
    f'no checkpoint in {where} could be read ({"; ".join(problems[:3])}); the files are '
    f'damaged: restore them from a backup or start a new workdir'
  )


def _abstract(tree: Any) -> Any:
  """Target for restoring into the shapes, dtypes and shardings of `tree`'s arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _local_abstract(metadata: Any) -> Any:
  """Metadata tree -> target on this process's first device, whatever topology saved it."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)


def _train_item(state: Any) -> dict[str, Any]:
  """The 'train' item of a TrainState: what resuming needs besides the variables."""
  item = {'opt_state': state.opt_state, 'step': state.step}
  if getattr(state, 'teacher', None) is not None:
    item['teacher'] = state.teacher
  return item


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Handlers for every item a step may hold, so none is reported as left unread."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item in checkpoint_steps.ITEMS:
    registry.add(item, ocp.args.StandardSave)
    registry.add(item, ocp.args.StandardRestore)
  return registry


def _best_fn(best_metric: str) -> Callable[[Mapping[str, float]], float]:
  return lambda metrics: float(metrics[best_metric])


def _manager(
  directory: epath.Path,
  *,
  keep: int | None,
  best_metric: str,
  best_mode: str,
  async_save: bool = True,
  create: bool = True,
) -> ocp.CheckpointManager:
  """The one manager of a workdir: keeps the latest `keep` steps and the best one."""
  directory = fileio.absolute(directory)
  orbax_quirks.save_replicas_without_slicing()
  orbax_quirks.full_disk_write_errors_silenced()
  policies = ocp.checkpoint_managers
  best_fn = _best_fn(best_metric)
  latest = policies.LatestN(n=keep if keep and keep > 0 else None)
  best = policies.BestN(
    get_metric_fn=best_fn, reverse=best_mode == 'min', n=1, keep_checkpoints_without_metrics=False
  )
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      create=create,
      enable_async_checkpointing=async_save,
      best_fn=best_fn,
      best_mode=best_mode,
      preservation_policy=policies.AnyPreservationPolicy([latest, best]),
    ),
    handler_registry=_handler_registry(),
  )


class Checkpointer:
  """Periodic checkpoints (latest `keep`) and the best evaluated one, in one manager."""

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    keep: int = 3,
    best_metric: str = 'video_accuracy',
    best_mode: str = 'max',
    async_save: bool = True,
  ):
    self.workdir = fileio.as_path(workdir)
    self.best_metric = best_metric
    self._in_flight: int | None = None  # The step of the last save begun.
    self._manager = self._bounded(
      lambda: _manager(
        self.workdir / CHECKPOINT_DIR,
        keep=keep,
        best_metric=best_metric,
        best_mode=best_mode,
        async_save=async_save,
      ),
      'opening the checkpoints in',
    )

  def _bounded(self, fn: Callable[[], T], what: str, retry: bool = False) -> T:
    """`fn()` bounded in time on a bucket (fileio.bounded); once only unless `retry`."""
    return fileio.bounded(fn, self.workdir / CHECKPOINT_DIR, what, retry=retry)

  def latest_step(self) -> int | None:
    return self._bounded(self._manager.latest_step, 'listing', retry=True)

  def best_step(self) -> int | None:
    """The evaluated step with the best `best_metric` (None before any evaluation)."""
    return self._manager.best_step()  # best_fn is set: only evaluated steps count.

  def save(self, step: int, state: Any, metrics: Mapping[str, Any] | None = None) -> None:
    """Starts an async save of a TrainState at `step` (no-op if that step exists).

    `metrics` (an evaluation of this state) make the step a candidate for 'best'; they
    must hold `best_metric`, else the step is saved as a plain periodic one.
    """
    if step in self._bounded(self._manager.all_steps, 'listing', retry=True):
      return
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
      if self.best_metric not in metrics:
        logging.warning(
          'eval.best_metric %r not among the evaluation metrics %s '
          '(undefined at this step?): step %d not offered as best',
          self.best_metric,
          sorted(metrics),
          step,
        )
        metrics = None
    items = {
      'variables': {'params': state.params, 'batch_stats': state.batch_stats},
      'train': _train_item(state),
    }
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
    self.wait()  # The step in flight first: its bytes are on the disk the check reads.
    self._check_space(step, items)
    self._in_flight = step
    with self._no_space_as_one_line():
      self._bounded(
        lambda: self._manager.save(step, args=args, metrics=metrics, force=True),
        f'saving step {step} to',
      )

  def _check_space(self, step: int, items: Any) -> None:
    """Refuses to start step `step` on a local disk without room for it: as large as the
    last committed step (orbax compresses), or for a first step as its arrays (`items`)."""
    directory = self.workdir / CHECKPOINT_DIR
    if fileio.is_remote(directory):
      return  # A bucket's quota is met while writing.
    committed = checkpoint_steps.committed_steps(directory)
    if committed:
      size = _tree_bytes(os.fspath(directory / str(max(committed))))
    else:
      size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(items))
    needed = size * SPACE_MARGIN_FACTOR + SPACE_MARGIN_BYTES
    free = _free_bytes(directory)
    if distributed.any_process(free < needed):  # Every process stops, or none.
      raise NoSpaceError(
        self._no_space_message(
          step, f'about {needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free'
        )
      )

  def _no_space_message(self, step: int, detail: str) -> str:
    directory = self.workdir / CHECKPOINT_DIR
    committed = checkpoint_steps.committed_steps(directory)
    kept = (
      f'the last committed step is {max(committed)}; free space and rerun the same command '
      f'to resume from it'
      if committed
      else 'no step is committed yet; free space and rerun the same command'
    )
    return f'no space left for checkpoint step {step} in {directory} ({detail}): {kept}'

  @contextlib.contextmanager
  def _no_space_as_one_line(self) -> Iterator[None]:
    """A full disk met by orbax (the step in flight) as a NoSpaceError, its partial
    directory removed (orbax would also remove it on the next save of that step)."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not errors.is_out_of_space(e) or self._in_flight is None:
        raise
      step, self._in_flight = self._in_flight, None
      self._remove_partial(step)
      raise NoSpaceError(
        self._no_space_message(step, 'the disk filled while it was written')
      ) from None

  def _remove_partial(self, step: int) -> None:
    directory = self.workdir / CHECKPOINT_DIR
    if fileio.is_remote(directory) or jax.process_index() != 0:
      return
    for partial in directory.glob(f'{step}.orbax-checkpoint-tmp*'):
      shutil.rmtree(os.fspath(partial), ignore_errors=True)

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption service saw a SIGTERM on any host (multi-process runs)."""
    return self._manager.reached_preemption(step)

  def restore(self, state: Any, step: int | None = None) -> Any:
    """`state` restored from `step`, or from the newest readable step when None.

    An unreadable step is set aside (moved, not deleted) so that later saves of that
    step number are not skipped, and the previous step is tried.
    """
    args = ocp.args.Composite(
      variables=ocp.args.StandardRestore(
        _abstract({'params': state.params, 'batch_stats': state.batch_stats})
      ),
      train=ocp.args.StandardRestore(_abstract(_train_item(state))),
    )
    steps = [step] if step is not None else list(self._manager.all_steps())
    _, restored = restore_with_fallback(
      steps,
      lambda s: self._restore_whole(s, args),
      os.fspath(self.workdir / CHECKPOINT_DIR),
      on_unreadable=self._set_aside if step is None else None,
    )
    v, t = restored['variables'], restored['train']
    state = state.replace(
      params=v['params'], batch_stats=v['batch_stats'], opt_state=t['opt_state'], step=t['step']
    )
    return state.replace(teacher=t['teacher']) if 'teacher' in t else state

  def _restore_whole(self, step: int, args: ocp.args.Composite) -> Any:
    checkpoint_steps.check_complete(self.workdir / CHECKPOINT_DIR / str(step))
    return self._manager.restore(step, args=args)

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable step directory out of orbax's sight (process 0 only)."""
    if jax.process_index() == 0:
      src = self.workdir / CHECKPOINT_DIR / str(step)
      dst = src.parent / f'{step}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}'
      if src.exists():
        fileio.move_tree(src, dst)
        logging.warning('Moved unreadable checkpoint %s to %s', src, dst)
    self._manager.reload()

  def wait(self) -> None:
    with self._no_space_as_one_line():
      self._bounded(self._manager.wait_until_finished, 'finishing the checkpoint in')

  def close(self) -> None:
    with self._no_space_as_one_line():
      self._bounded(self._manager.close, 'closing the checkpoints in')


def check_workdir(workdir: str | os.PathLike, step: int | str = 'latest') -> list[int]:
  """The committed steps of a training workdir; clear errors when it cannot be restored.

  Raises FileNotFoundError for a missing workdir, one without checkpoints or without
  its config, and an int `step` that is not among its steps.
  """
  workdir = fileio.as_path(workdir)
  if not fileio.bounded(workdir.is_dir, workdir, 'reading'):
    raise FileNotFoundError(
      f'workdir {workdir} does not exist (expected a directory '
      f'written by launch.py --mode=train: '
      f'{config_file.CONFIG_FILENAME} and {CHECKPOINT_DIR}/)'
    )
  ckpt_dir = workdir / CHECKPOINT_DIR
  steps = checkpoint_steps.committed_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(
      f'workdir {workdir} has no checkpoints: expected step '
      f'directories under {ckpt_dir}, found '
      f'{"none" if ckpt_dir.is_dir() else "no such directory"}'
    )
  if isinstance(step, int) and step not in steps:
    raise FileNotFoundError(
      f'workdir {workdir} has no checkpoint for step {step}; found steps {steps}'
    )
  if not (workdir / config_file.CONFIG_FILENAME).exists():
    raise FileNotFoundError(
      f'workdir {workdir} has checkpoints but no '
      f'{config_file.CONFIG_FILENAME} (the config saved by training)'
    )
  return steps


def restore_for_eval(
  workdir: str | os.PathLike, step: int | str = 'latest'
) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """(config, {'params', 'batch_stats'} as numpy, step) of a training workdir.

  `step` is an int, 'latest' (newest checkpoint) or 'best' (best evaluated checkpoint by
  the run's eval.best_metric). Errors as `check_workdir`.
  """
  steps = check_workdir(workdir, step)
  workdir = fileio.as_path(workdir)
  config = config_file.load(workdir)
  directory = workdir / CHECKPOINT_DIR
  evaluation = config.get('eval', None) or {}
  # Never saves: create=False and no read_only (whose notices only alarm users); every
  # item present has a handler, so orbax does not warn about the ones left unread.
  manager = _manager(
    directory,
    keep=None,
    create=False,
    best_metric=evaluation.get('best_metric', 'video_accuracy'),
    best_mode=evaluation.get('best_mode', 'max'),
  )
  try:
    if step == 'best':
      best = manager.best_step()
      if best is None:
        raise FileNotFoundError(
          f'no evaluated checkpoint under {directory}: the run saved '
          f'no evaluation yet, so there is no best step'
        )
      candidates = [best]
    elif step == 'latest':
      candidates = steps
    else:
      candidates = [step]

    def read(s: int) -> Any:
      checkpoint_steps.check_complete(directory / str(s))
      metadata = manager.item_metadata(s)['variables']
      return manager.restore(
        s, args=ocp.args.Composite(variables=ocp.args.StandardRestore(_local_abstract(metadata)))
      )['variables']

    step, restored = restore_with_fallback(candidates, read, os.fspath(directory))
  finally:
    manager.close()
  variables = jax.tree.map(np.asarray, jax.device_get(restored))
  logging.info('Restored step %d from %s', step, directory)
  return config, variables, int(step)


def is_training_workdir(path: str | os.PathLike) -> bool:
  path = fileio.as_path(path)
  return (path / config_file.CONFIG_FILENAME).exists() and (path / CHECKPOINT_DIR).is_dir()
