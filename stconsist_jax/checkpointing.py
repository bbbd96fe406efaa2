"""Orbax checkpoints in one place: periodic async saves, last K + best, resume, eval restore.

Layout of a workdir:
  config.json                 the run's config (saved before the first step)
  checkpoints/<step>/         items 'variables' {params, batch_stats} and 'train'
                              {opt_state, step, rng}; the last `keep` are kept
  best/<step>/                'variables' + 'metrics' of the best evaluation so far
Orbax writes each step into a temporary directory and renames it when complete, so a
crash never leaves a half-written checkpoint that a resume would pick up. A committed step
that cannot be read (a damaged file) is set aside as `<step>.unreadable-<time>` and the
previous step is used, with a warning; never silently step 0. The data stream is a pure
function of (seed, step): the step alone restores the pipeline position.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Callable, Mapping, TypeVar

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from stconsist_jax import config_lib

CHECKPOINT_DIR = 'checkpoints'
BEST_DIR = 'best'
T = TypeVar('T')


class CheckpointReadError(RuntimeError):
  """No committed checkpoint of a workdir could be read."""


def _short(error: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


def restore_with_fallback(steps: list[int], read: Callable[[int], T], where: str,
                          on_unreadable: Callable[[int], None] | None = None
                          ) -> tuple[int, T]:
  """`read(step)` for the newest readable step, newest first, warning on each failure.

  `on_unreadable(step)` is called for the steps that failed, only once an older one was
  read: when every step fails alike (say, a target of another structure) nothing is
  touched. Raises CheckpointReadError when none can be read (never a fresh start).
  """
  errors, failed = [], []
  for step in sorted(steps, reverse=True):
    try:
      result = read(step)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for a damaged file; all mean unreadable.
      errors.append(f'step {step}: {_short(e)}')
      failed.append(step)
      older = [s for s in steps if s < step]
      logging.warning('Checkpoint step %d in %s is unreadable (%s); %s', step, where,
                      _short(e), f'falling back to step {max(older)}' if older
                      else 'no older checkpoint to fall back to')
      continue
    for bad in failed if on_unreadable is not None else ():
      on_unreadable(bad)
    return step, result
  raise CheckpointReadError(
      f'no checkpoint in {where} could be read ({"; ".join(errors[:3])}); the files are '
      f'damaged: restore them from a backup or start a new workdir')


def _abstract(tree: Any) -> Any:
  """Target for restoring into the shardings of `tree`'s arrays."""
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, tree)


def _local_abstract(metadata: Any) -> Any:
  """Metadata tree -> target on this process's first device, whatever topology saved it."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                      metadata)


def committed_steps(directory: str | os.PathLike) -> list[int]:
  """Sorted steps with a committed directory (orbax's temporary ones are not digits)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpointer:
  """Periodic checkpoints (last `keep`) plus the best one by an evaluation metric."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3,
               best_metric: str = 'video_accuracy', best_mode: str = 'max',
               async_save: bool = True):
    self.workdir = pathlib.Path(workdir).absolute()
    self.best_metric = best_metric
    self._manager = ocp.CheckpointManager(
        self.workdir / CHECKPOINT_DIR,
        item_names=('variables', 'train'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep > 0 else None, create=True,
            enable_async_checkpointing=async_save))
    self._best = ocp.CheckpointManager(
        self.workdir / BEST_DIR,
        item_names=('variables', 'metrics'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: float(m[best_metric]),
            best_mode=best_mode, keep_checkpoints_without_metrics=False,
            enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Starts an async save of a TrainState at `step` (no-op if that step exists)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(
            {'params': state.params, 'batch_stats': state.batch_stats}),
        train=ocp.args.StandardSave(
            {'opt_state': state.opt_state, 'step': state.step, 'rng': state.rng})),
        force=True)

  def restore(self, state: Any, step: int | None = None) -> Any:
    """`state` restored from `step`, or from the newest readable step when None.

    An unreadable step is set aside (renamed, not deleted) so that later saves of that
    step number are not skipped, and the previous step is tried.
    """
    args = ocp.args.Composite(
        variables=ocp.args.StandardRestore(
            _abstract({'params': state.params, 'batch_stats': state.batch_stats})),
        train=ocp.args.StandardRestore(
            _abstract({'opt_state': state.opt_state, 'step': state.step, 'rng': state.rng})))
    steps = [step] if step is not None else list(self._manager.all_steps())
    _, restored = restore_with_fallback(
        steps, lambda s: self._manager.restore(s, args=args),
        str(self.workdir / CHECKPOINT_DIR),
        on_unreadable=self._set_aside if step is None else None)
    v, t = restored['variables'], restored['train']
    return state.replace(params=v['params'], batch_stats=v['batch_stats'],
                         opt_state=t['opt_state'], step=t['step'], rng=t['rng'])

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step directory out of orbax's sight (process 0 only)."""
    if jax.process_index() == 0:
      src = self.workdir / CHECKPOINT_DIR / str(step)
      dst = src.with_name(f'{step}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}')
      if src.exists():
        os.replace(src, dst)
        logging.warning('Moved unreadable checkpoint %s to %s', src, dst)
    self._manager.reload()

  def save_best(self, step: int, state: Any, metrics: Mapping[str, float]) -> bool:
    """Offers an evaluated state to the 'best' slot; returns whether it was kept."""
    if self.best_metric not in metrics:
      logging.warning('eval.best_metric %r not among the evaluation metrics %s (undefined '
                      'at this step?): step %d not offered as best', self.best_metric,
                      sorted(metrics), step)
      return False
    metrics = {k: float(v) for k, v in metrics.items()}
    self._best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(
            {'params': state.params, 'batch_stats': state.batch_stats}),
        metrics=ocp.args.JsonSave(metrics)), metrics=metrics, force=True)
    self._best.wait_until_finished()
    return self._best.best_step() == step

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
    self._best.close()


def restore_for_eval(workdir: str | os.PathLike, step: int | str = 'latest'
                     ) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """(config, {'params', 'batch_stats'} as numpy, step) of a training workdir.

  `step` is an int, 'latest' (newest periodic checkpoint) or 'best' (best evaluation).
  """
  workdir = pathlib.Path(workdir).absolute()
  config = config_lib.load(workdir)
  subdir = BEST_DIR if step == 'best' else CHECKPOINT_DIR
  # Never saves: create=False and no read_only (whose notices only alarm users); every
  # item present gets a handler, so orbax does not warn about the ones left unread.
  manager = ocp.CheckpointManager(
      workdir / subdir, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={'variables': ocp.StandardCheckpointHandler(),
                     'train': ocp.StandardCheckpointHandler(),
                     'metrics': ocp.JsonCheckpointHandler()})
  steps = list(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f'no checkpoints under {workdir / subdir}')
  if step not in ('latest', 'best') and step not in steps:
    raise FileNotFoundError(f'no checkpoint for step {step} under {workdir / subdir}; '
                            f'available: {sorted(steps)}')

  def read(s: int) -> Any:
    metadata = manager.item_metadata(s)['variables']
    return manager.restore(s, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(_local_abstract(metadata))))['variables']

  try:
    step, restored = restore_with_fallback(
        steps if step in ('latest', 'best') else [step], read, str(workdir / subdir))
  finally:
    manager.close()
  variables = jax.tree.map(np.asarray, jax.device_get(restored))
  logging.info('Restored %s step %d from %s', subdir, step, workdir)
  return config, variables, int(step)


def is_training_workdir(path: str | os.PathLike) -> bool:
  path = pathlib.Path(path)
  return (path / config_lib.CONFIG_FILENAME).exists() and (path / CHECKPOINT_DIR).is_dir()


def load_init_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Variables to start from: a converted checkpoint dir or another run's workdir."""
  path = check_init_from(path)
  if is_training_workdir(path):
    _, variables, _ = restore_for_eval(path, 'latest')
    return variables
  from stconsist_jax import models  # pylint: disable=g-import-not-at-top
  _, variables = models.load_pretrained(str(path))
  return variables


def check_init_from(path: str | os.PathLike) -> pathlib.Path:
  """`path` if it exists; else a FileNotFoundError saying how to get the weights."""
  from stconsist_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  workdir_lock.check_local_path(path, 'init_from')
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f'init_from: {path} does not exist. It should be a directory written by '
        f'tools/convert_torch_weights.py (see docs/converting.md for the Kinetics weights) '
        f'or the workdir of a finished run (configs/finetune_cls.py); pass '
        f"--config.init_from='' to train from scratch instead")
  return path
