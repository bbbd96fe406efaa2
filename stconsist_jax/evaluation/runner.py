"""Evaluation runs: a restored model on the mesh, the configured evaluators over this host's
streams (sharded on 'data', gathered on every host), then WORKDIR/eval/<step>/.

Multi-host safe: outputs are gathered and padding rows dropped by the `valid` mask, so
every example counts once.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from stconsist_jax.core import fileio
from stconsist_jax.data.pipeline import eval_inputs
from stconsist_jax.data import records as records_lib
from stconsist_jax.evaluation import evaluator
from stconsist_jax.evaluation import forward
from stconsist_jax.evaluation import pictures
from stconsist_jax.evaluation import report as report_lib
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.training import distributed
from stconsist_jax.core import console

Batch = Mapping[str, np.ndarray]


def run_stream(
  predict: forward.PredictFn,
  variables: Any,
  batches: Iterable[Batch],
  keys: Sequence[str],
  mesh: Any,
  keep_first: bool = False,
  desc: str = 'eval',
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
  """Predictions and the named batch fields of a whole stream, concatenated (all hosts).

  Returns the outputs and, with `keep_first`, this host's first batch with its
  predictions and the predictions on its flipped clips (for the picture sheet).
  """
  chunks: list[dict[str, np.ndarray]] = []
  first = None
  total = len(batches) if hasattr(batches, '__len__') else None
  for batch in console.progress(batches, total, desc, enabled=jax.process_index() == 0):
    sharded = distributed.shard_batch({k: batch[k] for k in ('clip',) + tuple(keys)}, mesh)
    out = predict(variables, sharded['clip'])
    gathered = forward.gather({**{k: sharded[k] for k in keys}, **out})
    chunks.append(gathered)
    if keep_first and first is None:
      flipped = distributed.shard_batch({'clip': np.asarray(batch['clip'])[:, :, :, ::-1]}, mesh)
      out_flip = forward.gather(predict(variables, flipped['clip']))
      lo = distributed.local_batch_size(len(gathered['valid']), mesh) * jax.process_index()
      hi = lo + len(batch['clip'])
      first = {k: np.asarray(v) for k, v in batch.items()}
      first.update({f'pred_{k}': v[lo:hi] for k, v in gathered.items() if k in out})
      first.update({f'pred_flip_{k}': v[lo:hi] for k, v in out_flip.items()})
  if not chunks:
    raise records_lib.DataFileError('evaluation stream yielded no batches: the test split is empty')
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, first


def _on_mesh(variables: Mapping[str, Any], mesh: Any) -> dict[str, Any]:
  """params and batch_stats replicated on `mesh`; arrays placed so already stay put.

  Host arrays (a restored checkpoint) are put on every device; the training state's
  device arrays (evaluation during training) are used where they are, never copied to
  the host: `device_put` onto the sharding they already have is free, and reshards
  global arrays of another layout on every host alike.
  """
  sharding = distributed.replicated(mesh)

  def place(x):
    if isinstance(x, jax.Array):
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(place, restore_lib.model_variables(variables))


def run_evaluators(
  config: ml_collections.ConfigDict,
  restored: restore_lib.Restored,
  streams: eval_inputs.StreamData,
  mesh: Any = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
  """(the fields the configured evaluators yielded, with 'timing'; the clip sheet or None).

  An evaluator that needs boxes is skipped for a classifier (its `not_measured` fields
  are reported). Every evaluator's `check` runs before any compute.
  """
  mesh = distributed.make_mesh() if mesh is None else mesh
  if len(streams.class_names) != int(config.model.num_classes):
    raise records_lib.DataFileError(
      f'the dataset has {len(streams.class_names)} class names but '
      f'config.model.num_classes is {config.model.num_classes}'
    )
  variables = _on_mesh(restored.variables, mesh)
  predict = forward.make_predict_fn(restored.model, mesh)
  context = evaluator.Context(
    config,
    streams,
    functools.partial(run_stream, predict, variables, mesh=mesh),
    shared={'with_boxes': not restored.classification_only},
  )
  active = []
  for item in evaluator.from_config(config):
    if item.needs_boxes and restored.classification_only:
      context.fields.update(item.not_measured())
    else:
      item.check(context)
      active.append(item)
  timing = {}
  for item in active:
    t0 = time.monotonic()
    for name, value in item.run(context):
      context.fields[name] = value
    timing[f'{item.name}_seconds'] = time.monotonic() - t0
  return {**context.fields, 'timing': timing}, context.shared.get('sheet')


def summary_line(fields: Mapping[str, Any], keys: Sequence[str]) -> str:
  return ' '.join(f'{k}={fields[k]}' for k in keys)


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  step: int | str | None = None,
  *,
  mesh: Any = None,
  streams: eval_inputs.StreamData | None = None,
  write: bool = True,
  eval_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
  """Restores a checkpoint of `workdir`, evaluates it and writes WORKDIR/eval/<step>/.

  Args:
    config: the evaluation config (model, data and eval groups); its `model` must
      describe the checkpoint's architecture.
    workdir: a training workdir (checkpoints/, config.json, metrics.jsonl).
    step: 'latest', 'best', a step number, or 'init_from' (config.init_from, a
      converted classifier: classification metrics only). Default:
      `config.eval.checkpoint_step`.
    mesh: device mesh (default: all devices of all processes).
    streams: the eval data (default: the tf.data pipeline of `config.data`).
    write: write report.json, report.md and PNGs (process 0 only).
    eval_dir: where `<step>/` goes (default WORKDIR/eval), e.g. for a read-only workdir.

  Returns:
    The report dict (also on processes that do not write).
  """
  keys = evaluator.summary_keys(evaluator.from_config(config))  # Unknown names fail here.
  restored = restore_lib.restore(config, workdir, step)
  workdir = fileio.as_path(workdir)
  out_root = fileio.as_path(eval_dir) if eval_dir else workdir / report_lib.EVAL_DIR
  if write and jax.process_index() == 0:
    report_lib.check_writable(out_root)
  if streams is None:
    streams = eval_inputs.pipeline_streams(config, with_frames=not restored.classification_only)
  fields, sheet = run_evaluators(config, restored, streams, mesh)
  report = report_lib.build_report(config, restored, fields, run_name=fileio.base_name(workdir))
  logging.info('Eval %s step %s: %s', workdir, restored.step, summary_line(report, keys))
  if write and jax.process_index() == 0:
    out_dir = report_lib.write_eval_dir(
      out_root / str(restored.step), report, pictures.report_pictures(sheet, workdir)
    )
    logging.info('Wrote %s', out_dir)
  return report


def make_evaluate_fn(
  workdir: str | os.PathLike | None = None,
  streams_fn: Callable[[ml_collections.ConfigDict], eval_inputs.StreamData] | None = None,
) -> Callable[..., dict[str, float]]:
  """`(config, variables, step, mesh) -> {summary metric: float}` for train_and_evaluate.

  `variables` are the training state's, replicated on `mesh`; they are evaluated where
  they are. Writes WORKDIR/eval/<step>/ like `evaluate` when `workdir` is given (without
  the training curves, which are still being written). NaN metrics (e.g. no boxes in
  the test split) are left out so they never select a 'best'.
  """

  def evaluate_fn(config, variables, step, mesh):
    restored = restore_lib.from_training_state(config, variables, step)
    streams = (streams_fn or eval_inputs.pipeline_streams)(config)
    fields, sheet = run_evaluators(config, restored, streams, mesh)
    report = report_lib.build_report(
      config, restored, fields, run_name=fileio.base_name(workdir or '.')
    )
    if workdir is not None and jax.process_index() == 0:
      report_lib.write_eval_dir(
        fileio.as_path(workdir) / report_lib.EVAL_DIR / str(step),
        report,
        pictures.report_pictures(sheet),
      )
    keys = evaluator.summary_keys(evaluator.from_config(config))
    return {k: float(report[k]) for k in keys if report[k] is not None}

  return evaluate_fn
