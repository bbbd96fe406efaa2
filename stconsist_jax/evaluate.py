"""Evaluation of restored checkpoints: accuracy, mean IoU and frame-mAP, written as reports.

Restores the latest, the best or a named step of a training workdir (or a converted
Kinetics classifier, classification only), runs the clip and frame eval streams through
one jitted forward pass sharded on the mesh's 'data' axis (multi-host safe: outputs are
gathered and padding rows dropped by the `valid` mask, so every example counts once),
and writes WORKDIR/eval/<step>/{report.json, report.md, clips.png, curves.png}.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
from etils import epath
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
from stconsist_jax import metrics
from stconsist_jax import visualize

EVAL_DIR = 'eval'
REPORT_JSON = 'report.json'
REPORT_MD = 'report.md'
SHEET_PNG = 'clips.png'
CURVES_PNG = 'curves.png'
INIT_FROM = 'init_from'  # `step` value: evaluate config.init_from (classification only).
CLIP_KEYS = ('label', 'box', 'has_box', 'video_id', 'valid')
FRAME_KEYS = ('label', 'video_id', 'frame', 'gt_boxes', 'gt_labels', 'original_size',
              'valid')
VIDEO_KEYS = ('video_id', 'frame', 'valid')
SUMMARY_KEYS = ('clip_accuracy', 'clip_top5', 'video_accuracy', 'mean_iou', 'frame_map',
                'video_map@0.5')
VIDEO_MAP_KEYS = ('video_map@0.2', 'video_map@0.5', 'video_map@0.75', 'video_map@0.5:0.95')

Batch = Mapping[str, np.ndarray]
PredictFn = Callable[[Any, jax.Array], dict[str, jax.Array]]


class ArchitectureMismatchError(ValueError):
  """The checkpoint's parameters do not fit the model the config describes."""


@dataclasses.dataclass
class Restored:
  """What evaluation runs: a model, its host variables and where they came from."""
  model: Any
  variables: dict[str, Any]
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
# Descriptions and hashing.


def describe_model(model_config: Any) -> str:
  """A one-line architecture description, e.g. 'R3D-34 (shortcut B) + Model-2 box head'."""
  get = model_config.get
  widen = float(get('widen_factor', 1.0))
  text = f"R3D-{get('depth', 34)} (shortcut {get('shortcut_type', 'B')}"
  text += f', widen {widen:g})' if widen != 1.0 else ')'
  text += f", {get('num_classes', 101)} classes"
  return f'{text}, box head {model_name(model_config)}'


def model_name(model_config: Any) -> str:
  """'Model-1' / 'Model-2' for the study's box heads, else a short description."""
  head = str(model_config.get('box_head', 'mlp'))
  hidden = tuple(int(h) for h in np.atleast_1d(model_config.get('box_hidden', (16,))))
  if head == 'mlp' and hidden == (16,):
    return 'Model-1'
  if head == 'mlp' and hidden == (256, 64, 8):
    return 'Model-2'
  if head == 'none':
    return 'classifier only'
  return f'{head} {list(hidden)}'


def uses_fix_weights(config: Any) -> bool:
  """Whether training froze backbone and classifier at any point (protocol 2)."""
  train = config.get('train', {}) or {}
  if bool(train.get('fix_weights', False)):
    return True
  return any(bool(dict(s).get('fix_weights', False)) for s in train.get('stages', ()) or ())


def config_hash(config: ml_collections.ConfigDict) -> str:
  """First 12 hex digits of the SHA-256 of the config's sorted JSON."""
  return hashlib.sha256(config_lib.to_json(config).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------
# Restoring.


def resolve_step(config: ml_collections.ConfigDict, step: int | str | None) -> int | str:
  """`step` or `config.eval.checkpoint_step` ('latest' when absent), validated."""
  if step is None:
    step = config.eval.get('checkpoint_step', 'latest') if 'eval' in config else 'latest'
  if isinstance(step, str) and step.isdigit():
    step = int(step)
  if isinstance(step, bool) or not (
      (isinstance(step, int) and step >= 0) or step in ('latest', 'best', INIT_FROM)):
    raise ValueError(f"eval.checkpoint_step must be 'latest', 'best', {INIT_FROM!r} or a "
                     f'step number >= 0, found {step!r}')
  return step


def check_workdir(workdir: str | os.PathLike, step: int | str) -> epath.Path:
  """Clear errors for a missing workdir or one without the requested checkpoints."""
  workdir = fileio.as_path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'workdir {workdir} does not exist (expected a directory '
                            'written by launch.py --mode=train)')
  ckpt_dir = workdir / checkpointing.CHECKPOINT_DIR
  steps = checkpointing.committed_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f'workdir {workdir} has no checkpoints: expected step '
                            f'directories under {ckpt_dir}, found '
                            f'{"none" if ckpt_dir.is_dir() else "no such directory"}')
  if isinstance(step, int) and step not in steps:
    raise FileNotFoundError(f'workdir {workdir} has no checkpoint for step {step}; '
                            f'found steps {steps}')
  if not (workdir / config_lib.CONFIG_FILENAME).exists():
    raise FileNotFoundError(f'workdir {workdir} has checkpoints but no '
                            f'{config_lib.CONFIG_FILENAME} (the config saved by training)')
  return workdir


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(v))
          for path, v in flat}


def check_architecture(model: Any, variables: Mapping[str, Any], sample_shape: tuple[int, ...],
                       expected_desc: str, found_desc: str, where: str) -> None:
  """Raises ArchitectureMismatchError unless `variables` has `model`'s exact shapes."""
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(sample_shape, jnp.uint8),
                         train=False))
  expected = _flat_shapes({k: abstract[k] for k in ('params', 'batch_stats')
                           if k in abstract})
  found = _flat_shapes({k: variables[k] for k in ('params', 'batch_stats')
                        if k in variables})
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
  if not (missing or extra or wrong):
    return
  details = []
  if wrong:
    details.append('shape differs: ' + '; '.join(
        f'{k} expected {expected[k]} found {found[k]}' for k in wrong[:4]))
  if missing:
    details.append(f'missing from the checkpoint: {missing[:4]}')
  if extra:
    details.append(f'not in the model: {extra[:4]}')
  raise ArchitectureMismatchError(
      f'{where} holds another architecture: expected {expected_desc}, found '
      f'{found_desc} ({len(wrong)} shape(s) differ, {len(missing)} missing, '
      f'{len(extra)} unexpected; ' + '; '.join(details) + ')')


def _sample_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  d = config.data
  return (1, int(d.num_frames), int(d.image_size), int(d.image_size), 3)


def restore(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
            step: int | str | None = None) -> Restored:
  """Restores the model that `config.model` describes from a workdir (or init_from)."""
  from stconsist_jax import models  # pylint: disable=g-import-not-at-top
  step = resolve_step(config, step)
  if step == INIT_FROM:
    path = str(config.get('init_from', '') or '')
    if not path:
      raise ValueError(f"eval.checkpoint_step={INIT_FROM!r} needs config.init_from (a "
                       'directory written by tools/convert_torch_weights.py)')
    model, variables = models.load_pretrained(path)
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    expected = int(config.model.num_classes)
    found = model.num_classes
    if 'classifier' not in variables['params'] or found != expected:
      raise ArchitectureMismatchError(
          f'converted checkpoint {path} holds another classifier: expected '
          f'{expected} classes (config.model.num_classes), found '
          f"{found if 'classifier' in variables['params'] else 'none (dropped)'}")
    return Restored(model, variables, INIT_FROM, None, classification_only=True)
  check_workdir(workdir, step)
  source_config, variables, restored_step = checkpointing.restore_for_eval(workdir, step)
  model = models.build_model(config.model)
  check_architecture(
      model, variables, _sample_shape(config), describe_model(config.model),
      describe_model(source_config.model) if 'model' in source_config else 'unknown',
      where=f'checkpoint {fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR} step '
            f'{restored_step}')
  return Restored(model, variables, restored_step, source_config,
                  classification_only=str(config.model.get('box_head', 'mlp')) == 'none')


# ----------------------------------------------------------------------------------
# Running the streams.


def make_predict_fn(model: Any, mesh: Any) -> PredictFn:
  """Jitted `(variables, clip) -> {'logits', 'boxes'?}`: batch on 'data', variables replicated."""
  def predict(variables, clip):
    out = model.apply(variables, clip, train=False)
    return out if isinstance(out, dict) else {'logits': out}
  return jax.jit(predict, in_shardings=(distributed.replicated(mesh),
                                        distributed.batch_sharding(mesh)),
                 out_shardings=distributed.batch_sharding(mesh))


def _gather(tree: Any) -> dict[str, np.ndarray]:
  """Global batch-sharded arrays -> full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


def run_stream(predict: PredictFn, variables: Any, batches: Iterable[Batch],
               keys: Sequence[str], mesh: Any, keep_first: bool = False,
               desc: str = 'eval'
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
  """Predictions and the named batch fields of a whole stream, concatenated (all hosts).

  Returns the outputs and, with `keep_first`, this host's first batch with its
  predictions and the predictions on its flipped clips (for the picture sheet).
  """
  chunks: list[dict[str, np.ndarray]] = []
  first = None
  total = len(batches) if hasattr(batches, '__len__') else None
  for batch in logging_utils.progress(batches, total, desc,
                                      enabled=jax.process_index() == 0):
    sharded = distributed.shard_batch({k: batch[k] for k in ('clip',) + tuple(keys)},
                                      mesh)
    out = predict(variables, sharded['clip'])
    gathered = _gather({**{k: sharded[k] for k in keys}, **out})
    chunks.append(gathered)
    if keep_first and first is None:
      flipped = distributed.shard_batch({'clip': np.asarray(batch['clip'])[:, :, :, ::-1]},
                                        mesh)
      out_flip = _gather(predict(variables, flipped['clip']))
      lo = distributed.local_batch_size(len(gathered['valid']), mesh) * jax.process_index()
      hi = lo + len(batch['clip'])
      first = {k: np.asarray(v) for k, v in batch.items()}
      first.update({f'pred_{k}': v[lo:hi] for k, v in gathered.items() if k in out})
      first.update({f'pred_flip_{k}': v[lo:hi] for k, v in out_flip.items()})
  if not chunks:
    raise ValueError('evaluation stream yielded no batches: the test split is empty')
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}, first


# ----------------------------------------------------------------------------------
# Metrics.


def _nan_to_none(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def clip_metrics(out: Mapping[str, np.ndarray], class_names: Sequence[str],
                 with_boxes: bool) -> dict[str, Any]:
  """Clip/video accuracy, mean IoU, per-class accuracy and counts of the clip stream."""
  valid = out['valid'].astype(bool)
  logits, labels = out['logits'], out['label']
  num_classes = logits.shape[1]
  probs = metrics.softmax(logits)
  confusion = metrics.confusion_matrix(labels, probs.argmax(-1), num_classes, valid)
  per_class = metrics.per_class_accuracy(confusion)
  return {
      'clip_accuracy': metrics.accuracy(logits, labels, 1, valid),
      'clip_top5': metrics.accuracy(logits, labels, min(5, num_classes), valid),
      'video_accuracy': metrics.video_accuracy(probs, labels, out['video_id'], valid),
      'mean_iou': (metrics.mean_iou(out['boxes'], out['box'], out['has_box'], valid)
                   if with_boxes else float('nan')),
      'per_class_accuracy': {class_names[c]: float(per_class[c])
                             for c in range(num_classes) if confusion[c].sum()},
      'confusion_matrix': confusion.tolist(),
      'num_clips': int(valid.sum()),
      'num_videos': int(len(np.unique(out['video_id'][valid]))),
      'num_clips_with_box': int((out['has_box'].astype(bool) & valid).sum()),
  }


def frame_ap_both(det_frames: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
                  det_sizes: np.ndarray, gt_frames: np.ndarray, gt_labels: np.ndarray,
                  gt_boxes: np.ndarray, gt_sizes: np.ndarray,
                  annotated_class_names: Sequence[str], protocol: str) -> dict[str, Any]:
  """Frame-mAP@0.5 under both rules ('act', 'voc'); `protocol` names the headline one."""
  results = {
      name: metrics.frame_map(det_frames, det_scores, det_boxes, gt_frames, gt_labels,
                              gt_boxes, num_classes=len(annotated_class_names),
                              protocol=name, frame_sizes=det_sizes,
                              gt_frame_sizes=gt_sizes)
      for name in metrics.FRAME_AP_PROTOCOLS}
  chosen = results[protocol]
  return {
      'frame_map': chosen['frame_map'],
      'frame_map_protocol': protocol,
      'frame_map_by_protocol': {k: v['frame_map'] for k, v in results.items()},
      'per_class_ap': {annotated_class_names[c]: float(chosen['per_class_ap'][c])
                       for c in range(len(annotated_class_names))},
  }


def frame_metrics(out: Mapping[str, np.ndarray], index_map: np.ndarray,
                  annotated_class_names: Sequence[str], protocol: str = 'act'
                  ) -> dict[str, Any]:
  """Frame-mAP@0.5 of the annotated-frame stream: one box per frame, a score per class."""
  valid = out['valid'].astype(bool)
  keys = metrics.frame_keys(out['video_id'][valid], out['frame'][valid])
  scores = metrics.frame_detection_scores(out['logits'][valid], index_map)
  det_boxes = metrics.xywh_to_corners(out['boxes'][valid])
  sizes = out['original_size'][valid]
  gt_labels = out['gt_labels'][valid]
  present = gt_labels >= 0
  gt_frames = np.broadcast_to(keys[:, None], gt_labels.shape)[present]
  gt_sizes = np.broadcast_to(sizes[:, None], gt_labels.shape + (2,))[present]
  result = frame_ap_both(keys, scores, det_boxes, sizes, gt_frames, gt_labels[present],
                         out['gt_boxes'][valid][present], gt_sizes,
                         annotated_class_names, protocol)
  return {
      **result,
      'frame_map_frames': 'annotated',
      'num_frames_scored': int(valid.sum()),
      'num_gt_boxes': int(present.sum()),
  }


def linking_config(config: ml_collections.ConfigDict | None) -> Any:
  """tubes.LinkingConfig from `config.eval.tubes` (missing fields keep the defaults)."""
  from stconsist_jax import tubes  # pylint: disable=g-import-not-at-top
  group = {}
  if config is not None:
    group = (config.get('eval', None) or {}).get('tubes', None) or {}
  defaults = tubes.LinkingConfig()
  values = {}
  for field in dataclasses.fields(defaults):
    if group.get(field.name) is not None:
      values[field.name] = type(getattr(defaults, field.name))(group[field.name])
  return tubes.LinkingConfig(**values)


def video_detections(out: Mapping[str, np.ndarray], truth: Any, index_map: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Every frame of one video: normalized corner boxes `(F, 4)` and annotated-class
  scores `(F, C)`, interpolated between the frames the stream scored."""
  from stconsist_jax import tubes  # pylint: disable=g-import-not-at-top
  rows = np.nonzero(out['valid'].astype(bool) & (out['video_id'] == truth.video_id))[0]
  if not len(rows):
    raise ValueError(f'the whole-video stream yielded no clip of test video {truth.name}')
  rows = rows[np.argsort(out['frame'][rows], kind='stable')]
  frames = out['frame'][rows]
  boxes = metrics.xywh_to_corners(out['boxes'][rows])
  scores = metrics.frame_detection_scores(out['logits'][rows], index_map)
  _, boxes, scores = tubes.fill_frames(frames, boxes[:, None], scores[:, None],
                                       truth.num_frames)
  return boxes[:, 0], scores[:, 0]


def ground_truth_tubes(truth: Any) -> list[Any]:
  """The video's annotated tubes as `tubes.Tube`s in pixels (frames where present)."""
  from stconsist_jax import tubes  # pylint: disable=g-import-not-at-top
  out = []
  for k, label in enumerate(truth.tube_labels):
    frames = np.nonzero(truth.tube_present[k])[0]
    if len(frames):
      out.append(tubes.ground_truth_tube(
          int(label), frames,
          metrics.normalized_to_pixels(truth.tube_boxes[k][frames], truth.original_size)))
  return out


def video_metrics(out: Mapping[str, np.ndarray], truths: Sequence[Any],
                  index_map: np.ndarray, annotated_class_names: Sequence[str],
                  config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Video-mAP of tubes linked on whole test videos; optionally frame-mAP on every frame.

  Tubes are linked per annotated class (`eval.tubes`, ACT's linking); video accuracy
  here is the class of each annotated video's top tube. With
  `eval.frame_ap_frames='all'`, frame-mAP scores every frame of the test videos (frames
  without ground truth hold only false positives), as ACT does for untrimmed videos.
  """
  from stconsist_jax import tubes  # pylint: disable=g-import-not-at-top
  linking = linking_config(config)
  num_classes = len(annotated_class_names)
  detections, ground_truth, video_labels = {}, {}, {}
  frame_rows = {k: [] for k in ('frames', 'scores', 'boxes', 'sizes')}
  gt_rows = {k: [] for k in ('frames', 'labels', 'boxes', 'sizes')}
  boxes_per_frame = []
  every_frame = str(config.eval.get('frame_ap_frames', 'annotated')) == 'all'
  for truth in truths:
    boxes, scores = video_detections(out, truth, index_map)
    frames = np.arange(truth.num_frames)
    detections[truth.name] = tubes.link_video(
        frames, metrics.normalized_to_pixels(boxes, truth.original_size)[:, None],
        scores[:, None], linking)
    ground_truth[truth.name] = ground_truth_tubes(truth)
    if len(truth.tube_labels):
      video_labels[truth.name] = int(truth.tube_labels[0])
    boxes_per_frame.append(truth.tube_present.sum(axis=0))
    if every_frame:
      keys = metrics.frame_keys(np.full(truth.num_frames, truth.video_id), frames)
      frame_rows['frames'].append(keys)
      frame_rows['scores'].append(scores)
      frame_rows['boxes'].append(boxes)
      frame_rows['sizes'].append(np.tile(truth.original_size, (truth.num_frames, 1)))
      tube_k, frame_f = np.nonzero(truth.tube_present)
      gt_rows['frames'].append(keys[frame_f])
      gt_rows['labels'].append(truth.tube_labels[tube_k])
      gt_rows['boxes'].append(truth.tube_boxes[tube_k, frame_f])
      gt_rows['sizes'].append(np.tile(truth.original_size, (len(tube_k), 1)))
  result = tubes.video_map(detections, ground_truth, num_classes,
                           plus_one=linking.plus_one)
  counts = np.concatenate(boxes_per_frame) if boxes_per_frame else np.zeros(0)
  report = {
      **{k: result[k] for k in VIDEO_MAP_KEYS},
      'per_class_video_ap@0.5': {
          annotated_class_names[c]: float(result['per_class_ap'][0.5][c])
          for c in range(num_classes)},
      'tube_video_accuracy': tubes.video_accuracy_from_tubes(detections, video_labels),
      'one_box_cap': tubes.one_box_cap(counts) if counts.sum() else float('nan'),
      'num_tubes': int(sum(len(t) for t in detections.values())),
      'num_gt_tubes': int(sum(len(t) for t in ground_truth.values())),
      'num_videos_linked': len(truths),
      'num_video_clips_scored': int(out['valid'].astype(bool).sum()),
      'linking': dataclasses.asdict(linking),
  }
  if every_frame and frame_rows['frames']:
    cat = {k: np.concatenate(v) for k, v in frame_rows.items()}
    gcat = {k: np.concatenate(v) for k, v in gt_rows.items()}
    all_frames = frame_ap_both(cat['frames'], cat['scores'], cat['boxes'], cat['sizes'],
                               gcat['frames'], gcat['labels'], gcat['boxes'], gcat['sizes'],
                               annotated_class_names,
                               str(config.eval.get('frame_ap_protocol', 'act')))
    report['all_frames'] = {**all_frames, 'num_frames_scored': int(len(cat['frames'])),
                            'num_gt_boxes': int(len(gcat['frames']))}
  return report


def frame_index_map(class_names: Sequence[str], annotated_class_names: Sequence[str]
                    ) -> np.ndarray:
  """Model class index of each annotated class (identity when the model is 24-way)."""
  if list(class_names) == list(annotated_class_names):
    return np.arange(len(class_names))
  return metrics.class_index_map(class_names, annotated_class_names)


# ----------------------------------------------------------------------------------
# Data.


def pipeline_streams(config: ml_collections.ConfigDict, source: Any = None,
                     class_names: Sequence[str] | None = None,
                     annotated_class_names: Sequence[str] | None = None,
                     with_frames: bool = True) -> StreamData:
  """The tf.data eval streams of this host (stconsist_jax.data.pipeline)."""
  from stconsist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = source or pipeline.source_from_config(config.data)
  kw = dict(process_index=jax.process_index(), process_count=jax.process_count(),
            source=source)
  builder = getattr(source, 'builder', None)
  if class_names is None:
    class_names = pipeline.label_names(config.data, source)
  if annotated_class_names is None and builder is not None:
    annotated_class_names = (builder.info.metadata or {}).get('annotated_class_names') or None
  if annotated_class_names is None:
    annotated_class_names = metrics.UCF101_24_CLASSES

  @functools.cache
  def layout():  # one pass over the test annotations sizes both frame-level streams
    return pipeline.eval_layout(config, jax.process_count(), source)

  def counted(make, **extra):
    ds, count = make(config, **kw, **extra)
    return Counted(tfds.as_numpy(ds), count)

  with_videos = with_frames and bool(config.eval.get('video_map', False))
  return StreamData(
      clip_batches=lambda: counted(pipeline.make_eval_clip_dataset),
      frame_batches=(lambda: counted(pipeline.make_eval_frame_dataset, layout=layout()))
      if with_frames else None,
      video_batches=(lambda: counted(pipeline.make_eval_video_dataset, layout=layout()))
      if with_videos else None,
      video_truth=(lambda: pipeline.video_ground_truth(config, source))
      if with_videos else None,
      class_names=list(class_names), annotated_class_names=list(annotated_class_names))


# ----------------------------------------------------------------------------------
# Reports.


def protocol_of(config: ml_collections.ConfigDict, num_annotated_classes: int = 24
                ) -> dict[str, Any]:
  d, e = config.data, config.eval
  every_frame = str(e.get('frame_ap_frames', 'annotated')) == 'all'
  tubes_text = {}
  if e.get('video_map', False):
    tubes_text['video_map'] = (
        f"tubes linked per annotated class on whole test videos: a clip centred on every "
        f"{int(e.get('tube_frame_stride', 1))}-th frame (and the last) gives one box and "
        f"the class scores, linearly interpolated in between; ACT's linking "
        f"(eval.tubes: {dict(e.get('tubes', None) or {})}); spatio-temporal IoU = "
        f"temporal IoU x mean per-frame IoU (+1 pixel convention); per class, tubes "
        f"ranked across videos, each ground-truth tube matched once; AP as ACT's videoAP. "
        f"video_map@0.5:0.95 averages 0.5, 0.55, ..., 0.95")
  return metrics.protocol(
      clip_length=int(d.num_frames), image_size=int(d.image_size),
      clips_per_video=int(e.clips_per_video), num_classes=int(config.model.num_classes),
      num_annotated_classes=num_annotated_classes,
      frame_map_protocol=str(e.get('frame_ap_protocol', 'voc')),
      extra={**tubes_text,
          'frame_clip_placement': (
              f'annotated frame f at clip position T//2 = {int(d.num_frames) // 2}; clip '
              f'frames f + (p - T//2) * {int(d.frame_stride)}, clamped to the video'),
          'frames_scored': (
              "every frame of the test videos (eval.frame_ap_frames='all', from the "
              "whole-video pass; frames without ground truth hold only false positives)"
              if every_frame else
              f'every annotated frame f (any tube has a box) with '
              f'f % {int(e.frame_stride)} == 0'),
          'clip_stream_placement': (f'{int(e.clips_per_video)} uniformly spaced windows '
                                    'per test video, loop-padded if shorter than a clip'),
          'data': f'{d.name} split {d.split}, frames stored at {d.frame_size}px',
          'videos': ('every test video' if not int(e.get('max_videos', 0)) else
                     f'a subset: at most {int(e.max_videos)} test videos evenly spaced over '
                     'the split (eval.max_videos), not comparable with full-split numbers'),
      })


def frame_summary(frame_result: Mapping[str, Any] | None) -> dict[str, Any]:
  """The report's frame-mAP and video-mAP fields (NaN when not measured).

  The headline `frame_map` scores every frame when the whole-video pass measured it
  (eval.frame_ap_frames='all'), else the annotated frames; both rules are kept.
  """
  if not frame_result:
    return {'frame_map': float('nan'), 'per_class_ap': {},
            **{k: float('nan') for k in VIDEO_MAP_KEYS}}
  video = frame_result.get('video') or {}
  headline = video.get('all_frames') or frame_result
  out = {
      'frame_map': headline['frame_map'],
      'frame_map_protocol': headline['frame_map_protocol'],
      'frame_map_by_protocol': headline['frame_map_by_protocol'],
      'frame_map_frames': 'all' if 'all_frames' in video else 'annotated',
      'per_class_ap': headline['per_class_ap'],
      **{k: video.get(k, float('nan')) for k in VIDEO_MAP_KEYS},
  }
  if 'all_frames' in video:
    out['frame_map_annotated_frames'] = frame_result['frame_map_by_protocol']
  if video:
    out['tubes'] = {k: v for k, v in video.items()
                    if k not in VIDEO_MAP_KEYS and k != 'all_frames'
                    and not k.startswith('num_')}
  return out


def build_report(config: ml_collections.ConfigDict, restored: Restored,
                 clip_result: Mapping[str, Any], frame_result: Mapping[str, Any] | None,
                 run_name: str) -> dict[str, Any]:
  source = restored.source_config or config
  report = {
      'run': run_name,
      'checkpoint_step': restored.step,
      'model': model_name(config.model) if not restored.classification_only
               else 'classifier only',
      'architecture': describe_model(config.model),
      'fix_weights': uses_fix_weights(source),
      'config_hash': config_hash(source),
      'eval_config_hash': config_hash(config),
      'clip_accuracy': clip_result['clip_accuracy'],
      'clip_top5': clip_result['clip_top5'],
      'video_accuracy': clip_result['video_accuracy'],
      'mean_iou': clip_result['mean_iou'],
      **frame_summary(frame_result),
      'per_class_accuracy': clip_result['per_class_accuracy'],
      'counts': {k: v for k, v in {**clip_result, **(frame_result or {}),
                                   **((frame_result or {}).get('video') or {})}.items()
                 if k.startswith('num_')},
      'confusion_matrix': clip_result['confusion_matrix'],
      'timing': {k: round(v, 3) for k, v in clip_result.get('timing', {}).items()},
      'protocol': protocol_of(config, len(frame_result['per_class_ap'])
                              if frame_result else 24),
      'devices': int(jax.device_count()),
      'processes': int(jax.process_count()),
  }
  return _nan_to_none(report)


def _fmt(value: Any, percent: bool = False) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.1f}%' if percent else f'{value:.3f}'


def report_markdown(report: Mapping[str, Any], images: Sequence[str] = ()) -> str:
  lines = [f"# Evaluation of {report['run']} at step {report['checkpoint_step']}", '',
           f"{report['architecture']}; fix_weights: {report['fix_weights']}; config "
           f"{report['config_hash']}.", '',
           '| model | fix_weights | accuracy (video) | clip top-1 | clip top-5 | mean IoU '
           '| frame-mAP@0.5 | video-mAP@0.2 | @0.5 | @0.75 | @0.5:0.95 |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
           f"| {report['model']} | {report['fix_weights']} | "
           f"{_fmt(report['video_accuracy'], True)} | {_fmt(report['clip_accuracy'], True)} "
           f"| {_fmt(report['clip_top5'], True)} | {_fmt(report['mean_iou'])} | "
           f"{_fmt(report['frame_map'], True)} | "
           + ' | '.join(_fmt(report.get(k), True) for k in VIDEO_MAP_KEYS) + ' |', '']
  by_rule = report.get('frame_map_by_protocol') or {}
  if by_rule:
    lines += [f"frame-mAP@0.5 by rule ({report.get('frame_map_frames')} frames): " +
              ', '.join(f'{k} {_fmt(v, True)}' for k, v in by_rule.items()) +
              f"; the table shows {report.get('frame_map_protocol')}.", '']
  lines += ['## Counts', '']
  lines += [f'- {k}: {v}' for k, v in report['counts'].items()]
  lines += ['', '## Protocol', '']
  lines += [f'- **{k}**: {v}' for k, v in report['protocol'].items()]
  if report['per_class_ap']:
    lines += ['', '## Per annotated class', '', '| class | frame AP | clip accuracy |',
              '| --- | --- | --- |']
    for name, ap in report['per_class_ap'].items():
      lines.append(f"| {name} | {_fmt(ap, True)} | "
                   f"{_fmt(report['per_class_accuracy'].get(name), True)} |")
  if images:
    lines += ['', '## Pictures', '']
    lines += [f'![{name}]({name})' for name in images]
  return '\n'.join(lines) + '\n'


def write_eval_dir(out_dir: str | os.PathLike, report: Mapping[str, Any],
                   images: Mapping[str, np.ndarray]) -> epath.Path:
  """Writes report.json, report.md and PNGs into `out_dir`, its commit file last.

  Readers take only committed report directories (`fileio.is_committed`), so a crash
  mid-write, locally or on a bucket, never leaves a report that looks finished.
  """
  files = {name: visualize.png_bytes(image) for name, image in images.items()}
  files[REPORT_MD] = report_markdown(report, sorted(images))
  files[REPORT_JSON] = json.dumps(report, indent=2) + '\n'
  return fileio.write_committed_dir(out_dir, files)


def clip_sheet_of(first: Mapping[str, np.ndarray], class_names: Sequence[str],
                  num_clips: int) -> np.ndarray | None:
  """The picture of up to `num_clips` valid clips of a batch, clips with a box first."""
  valid = np.nonzero(first['valid'].astype(bool))[0]
  if not len(valid) or 'pred_boxes' not in first:
    return None
  order = sorted(valid, key=lambda i: (not first['has_box'][i], i))[:num_clips]
  clips = first['clip'][order]
  pred_labels = first['pred_logits'][order].argmax(-1)
  return visualize.clip_sheet(
      clips, clips[:, :, :, ::-1], first['pred_boxes'][order],
      first['pred_flip_boxes'][order], gt_boxes=first['box'][order],
      has_box=first['has_box'][order],
      gt_names=[class_names[int(l)] for l in first['label'][order]],
      pred_names=[class_names[int(l)] for l in pred_labels])


# ----------------------------------------------------------------------------------
# Entry points.


def evaluate_restored(config: ml_collections.ConfigDict, restored: Restored,
                      streams: StreamData, mesh: Any = None
                      ) -> tuple[dict[str, Any], dict[str, Any] | None, np.ndarray | None]:
  """(clip-stream metrics, frame-stream metrics or None, clip sheet or None)."""
  mesh = distributed.make_mesh() if mesh is None else mesh
  with_boxes = not restored.classification_only
  index_map = None
  if with_boxes and streams.frame_batches is not None:
    # Fails before any compute when the class names do not map.
    index_map = frame_index_map(streams.class_names, streams.annotated_class_names)
  if len(streams.class_names) != int(config.model.num_classes):
    raise ValueError(f'the dataset has {len(streams.class_names)} class names but '
                     f'config.model.num_classes is {config.model.num_classes}')
  variables = distributed.replicate(
      {k: restored.variables[k] for k in ('params', 'batch_stats')
       if k in restored.variables}, mesh)
  predict = make_predict_fn(restored.model, mesh)
  t0 = time.monotonic()
  clip_out, first = run_stream(predict, variables, streams.clip_batches(), CLIP_KEYS, mesh,
                               keep_first=with_boxes, desc='eval clips')
  clip_result = clip_metrics(clip_out, streams.class_names, with_boxes)
  clip_result['timing'] = {'clips_seconds': time.monotonic() - t0}
  frame_result = None
  if index_map is not None:
    t0 = time.monotonic()
    frame_out, _ = run_stream(predict, variables, streams.frame_batches(), FRAME_KEYS,
                              mesh, desc='eval frames')
    frame_result = frame_metrics(frame_out, index_map, streams.annotated_class_names,
                                 str(config.eval.get('frame_ap_protocol', 'voc')))
    clip_result['timing']['frames_seconds'] = time.monotonic() - t0
    if streams.video_batches is not None:
      t0 = time.monotonic()
      video_out, _ = run_stream(predict, variables, streams.video_batches(), VIDEO_KEYS,
                                mesh, desc='eval whole videos')
      frame_result['video'] = video_metrics(video_out, streams.video_truth(), index_map,
                                            streams.annotated_class_names, config)
      clip_result['timing']['videos_seconds'] = time.monotonic() - t0
  sheet = None
  if first is not None:
    sheet = clip_sheet_of(first, streams.class_names,
                          int(config.eval.get('sheet_clips', 6)))
  return clip_result, frame_result, sheet


def check_writable(directory: str | os.PathLike) -> None:
  """Fails before any compute when reports could not be written to `directory`."""
  probe = fileio.as_path(directory) / f'.write-check-{os.getpid()}'
  try:
    fileio.atomic_write(probe, b'')
    probe.unlink()
  except OSError as e:
    raise PermissionError(
        f'cannot write evaluation reports to {directory} ({e.strerror or e}); pass '
        f'--eval_dir=DIR to write them elsewhere') from None


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             step: int | str | None = None, *, mesh: Any = None,
             streams: StreamData | None = None, write: bool = True,
             eval_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Restores a checkpoint of `workdir`, evaluates it and writes WORKDIR/eval/<step>/.

  Args:
    config: the evaluation config (model, data and eval groups); its `model` must
      describe the checkpoint's architecture.
    workdir: a training workdir (checkpoints/, best/, config.json, metrics.jsonl).
    step: 'latest', 'best', a step number, or 'init_from' (config.init_from, a
      converted classifier: classification metrics only). Default:
      `config.eval.checkpoint_step`, else 'latest'.
    mesh: device mesh (default: all devices of all processes).
    streams: the eval data (default: the tf.data pipeline of `config.data`).
    write: write report.json, report.md and PNGs (process 0 only).
    eval_dir: where `<step>/` goes (default WORKDIR/eval), e.g. for a read-only workdir.

  Returns:
    The report dict (also on processes that do not write).
  """
  restored = restore(config, workdir, step)
  workdir = fileio.as_path(workdir)
  out_root = fileio.as_path(eval_dir) if eval_dir else workdir / EVAL_DIR
  if write and jax.process_index() == 0:
    check_writable(out_root)
  if streams is None:
    streams = pipeline_streams(config, with_frames=not restored.classification_only)
  clip_result, frame_result, sheet = evaluate_restored(config, restored, streams, mesh)
  report = build_report(config, restored, clip_result, frame_result,
                        run_name=fileio.base_name(workdir))
  logging.info('Eval %s step %s: %s', workdir, restored.step,
               ' '.join(f'{k}={report[k]}' for k in SUMMARY_KEYS))
  if write and jax.process_index() == 0:
    images = {}
    if sheet is not None:
      images[SHEET_PNG] = sheet
    log_path = workdir / 'metrics.jsonl'
    if log_path.exists():
      try:
        images[CURVES_PNG] = visualize.training_curves(
            logging_utils.read_metrics_jsonl(log_path))
      except ValueError as e:
        logging.warning('No training curves: %s', e)
    out_dir = write_eval_dir(out_root / str(restored.step), report, images)
    logging.info('Wrote %s', out_dir)
  return report


def make_evaluate_fn(workdir: str | os.PathLike | None = None,
                     streams_fn: Callable[[ml_collections.ConfigDict], StreamData] | None = None
                     ) -> Callable[..., dict[str, float]]:
  """`(config, variables, step, mesh) -> {metric: float}` for train_and_eval.

  Writes WORKDIR/eval/<step>/ like `evaluate` when `workdir` is given. NaN metrics
  (e.g. no boxes in the test split) are left out so they never select a 'best'.
  """
  def evaluate_fn(config, variables, step, mesh):
    from stconsist_jax import models  # pylint: disable=g-import-not-at-top
    host_vars = jax.tree.map(np.asarray, _gather(variables))
    restored = Restored(models.build_model(config.model), host_vars, int(step), config,
                        classification_only=config.model.get('box_head', 'mlp') == 'none')
    streams = (streams_fn or pipeline_streams)(config)
    clip_result, frame_result, sheet = evaluate_restored(config, restored, streams, mesh)
    report = build_report(config, restored, clip_result, frame_result,
                          run_name=fileio.base_name(workdir or '.'))
    if workdir is not None and jax.process_index() == 0:
      write_eval_dir(fileio.as_path(workdir) / EVAL_DIR / str(step), report,
                     {SHEET_PNG: sheet} if sheet is not None else {})
    return {k: float(report[k]) for k in SUMMARY_KEYS if report[k] is not None}
  return evaluate_fn


# For train_and_eval without report files; launch.py may prefer make_evaluate_fn(workdir).
evaluate_fn = make_evaluate_fn()
