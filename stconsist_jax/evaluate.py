"""Evaluation of checkpoints: restore a step (or a converted classifier) and check that it
fits the config's model, run the eval streams through one jitted forward pass, report.

Restores the latest, the best or a named step of a training workdir (or a converted
Kinetics classifier, classification only) and runs the clip, frame and whole-video eval
streams sharded on the mesh's 'data' axis (multi-host safe: outputs are gathered and
padding rows dropped by the `valid` mask, so every example counts once). The numbers
come from `stream_metrics`; `reports` writes WORKDIR/eval/<step>/.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from stconsist_jax import checkpointing
from stconsist_jax import config_lib
from stconsist_jax import distributed
from stconsist_jax import fileio
from stconsist_jax import logging_utils
from stconsist_jax import reports
from stconsist_jax import stream_metrics
from stconsist_jax.data import annotations as ann
from stconsist_jax.models import param_trees

INIT_FROM = 'init_from'  # `step` value: evaluate config.init_from (classification only).
CLIP_KEYS = ('label', 'box', 'has_box', 'video_id', 'valid')
FRAME_KEYS = ('label', 'video_id', 'frame', 'gt_boxes', 'gt_labels', 'original_size', 'valid')
VIDEO_KEYS = ('video_id', 'frame', 'valid')

Batch = Mapping[str, np.ndarray]
PredictFn = Callable[[Any, jax.Array], dict[str, jax.Array]]


@dataclasses.dataclass
class Restored:
  """What evaluation runs: a model, its variables and where they came from."""

  model: Any
  variables: dict[str, Any]  # host arrays, or arrays already replicated on the mesh
  step: int | str  # checkpoint step, or INIT_FROM
  source_config: ml_collections.ConfigDict | None  # the config that trained it
  classification_only: bool


@dataclasses.dataclass(frozen=True)
class Counted:
  """An iterable of batches that knows how many it yields (for progress and ETA)."""

  batches: Iterable[Batch]
  count: int

  def __iter__(self):
    return iter(self.batches)

  def __len__(self) -> int:
    return self.count


@dataclasses.dataclass
class StreamData:
  """A data source for the two eval streams plus the names its labels refer to."""

  clip_batches: Callable[[], Iterable[Batch]]
  frame_batches: Callable[[], Iterable[Batch]] | None
  class_names: Sequence[str]  # label index -> name (model.num_classes entries)
  annotated_class_names: Sequence[str]  # gt_labels index -> name (24 on UCF101-24)
  # Whole test videos for tubes (eval.video_map): clips every tube_frame_stride frames,
  # and the evaluated videos' ground truth.
  video_batches: Callable[[], Iterable[Batch]] | None = None
  video_truth: Callable[[], Sequence[Any]] | None = None


# ----------------------------------------------------------------------------------
# Restoring.


def resolve_step(config: ml_collections.ConfigDict, step: int | str | None) -> int | str:
  """`step`, or `config.eval.checkpoint_step` when None, validated."""
  if step is None:
    step = config.eval.checkpoint_step
  if isinstance(step, str) and step.isdigit():
    step = int(step)
  if isinstance(step, bool) or not (
    (isinstance(step, int) and step >= 0) or step in ('latest', 'best', INIT_FROM)
  ):
    raise config_lib.ConfigError(
      f"eval.checkpoint_step must be 'latest', 'best', {INIT_FROM!r} or a "
      f'step number >= 0, found {step!r}'
    )
  return step


def _model_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The collections a forward pass reads: params and (where present) batch_stats."""
  return {k: variables[k] for k in ('params', 'batch_stats') if k in variables}


def check_architecture(
  model: Any,
  variables: Mapping[str, Any],
  sample_shape: tuple[int, ...],
  expected_desc: str,
  found_desc: str,
  where: str,
) -> None:
  """Raises ParameterTreeMismatchError unless `variables` has `model`'s exact shapes."""
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(sample_shape, jnp.uint8), train=False)
  )
  mismatch = param_trees.tree_mismatch(
    param_trees.flat_shapes(_model_variables(abstract)),
    param_trees.flat_shapes(_model_variables(variables)),
    found_name='checkpoint',
    expected_name='model',
  )
  if mismatch:
    raise param_trees.ParameterTreeMismatchError(
      f'{where} holds another architecture: expected {expected_desc}, found '
      f'{found_desc} ({mismatch})'
    )


def _sample_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  d = config.data
  return (1, int(d.num_frames), int(d.image_size), int(d.image_size), 3)


def restore(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, step: int | str | None = None
) -> Restored:
  """Restores the model that `config.model` describes from a workdir (or init_from)."""
  from stconsist_jax import models  # pylint: disable=g-import-not-at-top

  step = resolve_step(config, step)
  if step == INIT_FROM:
    path = config.init_from
    if not path:
      raise config_lib.ConfigError(
        f'eval.checkpoint_step={INIT_FROM!r} needs config.init_from (a '
        'directory written by tools/convert_torch_weights.py)'
      )
    model, variables = models.load_pretrained(path)
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    expected = int(config.model.num_classes)
    found = model.num_classes
    if 'classifier' not in variables['params'] or found != expected:
      raise param_trees.ParameterTreeMismatchError(
        f'converted checkpoint {path} holds another classifier: expected '
        f'{expected} classes (config.model.num_classes), found '
        f'{found if "classifier" in variables["params"] else "none (dropped)"}'
      )
    return Restored(model, variables, INIT_FROM, None, classification_only=True)
  source_config, variables, restored_step = checkpointing.restore_for_eval(workdir, step)
  model = models.build_model(config.model)
  check_architecture(
    model,
    variables,
    _sample_shape(config),
    reports.describe_model(config.model),
    reports.describe_model(source_config.model),
    where=f'checkpoint {fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR} step '
    f'{restored_step}',
  )
  return Restored(
    model,
    variables,
    restored_step,
    source_config,
    classification_only=config.model.box_head == 'none',
  )


# ----------------------------------------------------------------------------------
# Running the streams.


def make_predict_fn(model: Any, mesh: Any) -> PredictFn:
  """Jitted `(variables, clip) -> {'logits', 'boxes'?}`: batch on 'data', variables replicated."""

  def predict(variables, clip):
    out = model.apply(variables, clip, train=False)
    return out if isinstance(out, dict) else {'logits': out}

  return jax.jit(
    predict,
    in_shardings=(distributed.replicated(mesh), distributed.batch_sharding(mesh)),
    out_shardings=distributed.batch_sharding(mesh),
  )


def _gather(tree: Any) -> dict[str, np.ndarray]:
  """Global batch-sharded arrays -> full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


def run_stream(
  predict: PredictFn,
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
  for batch in logging_utils.progress(batches, total, desc, enabled=jax.process_index() == 0):
    sharded = distributed.shard_batch({k: batch[k] for k in ('clip',) + tuple(keys)}, mesh)
    out = predict(variables, sharded['clip'])
    gathered = _gather({**{k: sharded[k] for k in keys}, **out})
    chunks.append(gathered)
    if keep_first and first is None:
      flipped = distributed.shard_batch({'clip': np.asarray(batch['clip'])[:, :, :, ::-1]}, mesh)
      out_flip = _gather(predict(variables, flipped['clip']))
      lo = distributed.local_batch_size(len(gathered['valid']), mesh) * jax.process_index()
      hi = lo + len(batch['clip'])
      first = {k: np.asarray(v) for k, v in batch.items()}
      first.update({f'pred_{k}': v[lo:hi] for k, v in gathered.items() if k in out})
      first.update({f'pred_flip_{k}': v[lo:hi] for k, v in out_flip.items()})
  if not chunks:
    raise ann.DataFileError('evaluation stream yielded no batches: the test split is empty')
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, first


# ----------------------------------------------------------------------------------
# Data.


def pipeline_streams(
  config: ml_collections.ConfigDict,
  source: Any = None,
  class_names: Sequence[str] | None = None,
  annotated_class_names: Sequence[str] | None = None,
  with_frames: bool = True,
) -> StreamData:
  """The tf.data eval streams of this host (stconsist_jax.data.eval_streams)."""
  from stconsist_jax.data import eval_streams  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data import sources  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = source or sources.source_from_config(config.data)
  kw = dict(process_index=jax.process_index(), process_count=jax.process_count(), source=source)
  builder = getattr(source, 'builder', None)
  if class_names is None:
    class_names = sources.label_names(config.data, source)
  if annotated_class_names is None and builder is not None:
    annotated_class_names = (builder.info.metadata or {}).get('annotated_class_names') or None
  if annotated_class_names is None:
    annotated_class_names = ann.UCF24_CLASSES

  @functools.cache
  def layout():  # one pass over the test annotations sizes both frame-level streams
    return eval_streams.eval_layout(config, jax.process_count(), source)

  def counted(make, **extra):
    ds, count = make(config, **kw, **extra)
    return Counted(tfds.as_numpy(ds), count)

  with_videos = with_frames and config.eval.video_map
  return StreamData(
    clip_batches=lambda: counted(eval_streams.make_eval_clip_dataset),
    frame_batches=(lambda: counted(eval_streams.make_eval_frame_dataset, layout=layout()))
    if with_frames
    else None,
    video_batches=(lambda: counted(eval_streams.make_eval_video_dataset, layout=layout()))
    if with_videos
    else None,
    video_truth=(lambda: eval_streams.video_ground_truth(config, source)) if with_videos else None,
    class_names=list(class_names),
    annotated_class_names=list(annotated_class_names),
  )


# ----------------------------------------------------------------------------------
# Entry points.


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

  return jax.tree.map(place, _model_variables(variables))


def evaluate_restored(
  config: ml_collections.ConfigDict, restored: Restored, streams: StreamData, mesh: Any = None
) -> tuple[dict[str, Any], dict[str, Any] | None, np.ndarray | None]:
  """(clip-stream metrics, frame-stream metrics or None, clip sheet or None)."""
  mesh = distributed.make_mesh() if mesh is None else mesh
  with_boxes = not restored.classification_only
  index_map = None
  if with_boxes and streams.frame_batches is not None:
    # Fails before any compute when the class names do not map.
    index_map = stream_metrics.frame_index_map(streams.class_names, streams.annotated_class_names)
  if len(streams.class_names) != int(config.model.num_classes):
    raise ann.DataFileError(
      f'the dataset has {len(streams.class_names)} class names but '
      f'config.model.num_classes is {config.model.num_classes}'
    )
  variables = _on_mesh(restored.variables, mesh)
  predict = make_predict_fn(restored.model, mesh)
  t0 = time.monotonic()
  clip_out, first = run_stream(
    predict,
    variables,
    streams.clip_batches(),
    CLIP_KEYS,
    mesh,
    keep_first=with_boxes,
    desc='eval clips',
  )
  clip_result = stream_metrics.clip_metrics(clip_out, streams.class_names, with_boxes)
  clip_result['timing'] = {'clips_seconds': time.monotonic() - t0}
  frame_result = None
  if index_map is not None:
    t0 = time.monotonic()
    frame_out, _ = run_stream(
      predict, variables, streams.frame_batches(), FRAME_KEYS, mesh, desc='eval frames'
    )
    frame_result = stream_metrics.frame_metrics(
      frame_out, index_map, streams.annotated_class_names, config.eval.frame_ap_protocol
    )
    clip_result['timing']['frames_seconds'] = time.monotonic() - t0
    if streams.video_batches is not None:
      t0 = time.monotonic()
      video_out, _ = run_stream(
        predict, variables, streams.video_batches(), VIDEO_KEYS, mesh, desc='eval whole videos'
      )
      frame_result['video'] = stream_metrics.video_metrics(
        video_out, streams.video_truth(), index_map, streams.annotated_class_names, config
      )
      clip_result['timing']['videos_seconds'] = time.monotonic() - t0
  sheet = None
  if first is not None:
    sheet = reports.clip_sheet_of(first, streams.class_names, config.eval.sheet_clips)
  return clip_result, frame_result, sheet


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  step: int | str | None = None,
  *,
  mesh: Any = None,
  streams: StreamData | None = None,
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
  restored = restore(config, workdir, step)
  workdir = fileio.as_path(workdir)
  out_root = fileio.as_path(eval_dir) if eval_dir else workdir / reports.EVAL_DIR
  if write and jax.process_index() == 0:
    reports.check_writable(out_root)
  if streams is None:
    streams = pipeline_streams(config, with_frames=not restored.classification_only)
  clip_result, frame_result, sheet = evaluate_restored(config, restored, streams, mesh)
  report = reports.build_report(
    config, restored, clip_result, frame_result, run_name=fileio.base_name(workdir)
  )
  logging.info(
    'Eval %s step %s: %s',
    workdir,
    restored.step,
    ' '.join(f'{k}={report[k]}' for k in reports.SUMMARY_KEYS),
  )
  if write and jax.process_index() == 0:
    out_dir = reports.write_eval_dir(
      out_root / str(restored.step), report, reports.pictures(sheet, workdir)
    )
    logging.info('Wrote %s', out_dir)
  return report


def make_evaluate_fn(
  workdir: str | os.PathLike | None = None,
  streams_fn: Callable[[ml_collections.ConfigDict], StreamData] | None = None,
) -> Callable[..., dict[str, float]]:
  """`(config, variables, step, mesh) -> {metric: float}` for train_and_eval.

  `variables` are the training state's, replicated on `mesh`; they are evaluated where
  they are. Writes WORKDIR/eval/<step>/ like `evaluate` when `workdir` is given (without
  the training curves, which are still being written). NaN metrics (e.g. no boxes in
  the test split) are left out so they never select a 'best'.
  """

  def evaluate_fn(config, variables, step, mesh):
    from stconsist_jax import models  # pylint: disable=g-import-not-at-top

    restored = Restored(
      models.build_model(config.model),
      variables,
      int(step),
      config,
      classification_only=config.model.box_head == 'none',
    )
    streams = (streams_fn or pipeline_streams)(config)
    clip_result, frame_result, sheet = evaluate_restored(config, restored, streams, mesh)
    report = reports.build_report(
      config, restored, clip_result, frame_result, run_name=fileio.base_name(workdir or '.')
    )
    if workdir is not None and jax.process_index() == 0:
      reports.write_eval_dir(
        fileio.as_path(workdir) / reports.EVAL_DIR / str(step), report, reports.pictures(sheet)
      )
    return {k: float(report[k]) for k in reports.SUMMARY_KEYS if report[k] is not None}

  return evaluate_fn
