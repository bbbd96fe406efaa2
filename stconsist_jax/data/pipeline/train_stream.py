"""The training stream of one host: shuffled videos -> random clips with box targets.

Label protocols: kept boxes (`data.box_label_fraction`) and kept videos (class and boxes,
`data.labeled_video_fraction` or the list `data.labeled_videos`, marked by `has_label`);
labelled rows per batch; resumption at any step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from stconsist_jax.data.pipeline import clips as clips_lib
from stconsist_jax.data.pipeline import label_protocols
from stconsist_jax.data.pipeline import sources

SKIPPED_KEY = '_skipped'
INDEX_KEY = '_index'

TRAIN_KEYS = ('clip', 'label', 'has_label', 'box', 'box_flip', 'has_box', 'tube_label')
# With data.max_actors = A > 0 (the dense tubelet head's targets, every clip frame):
# actor_boxes, actor_boxes_flip float32 (T, A, 4) xywh; actor_present bool (T, A);
# actor_labels int32 (A,); dense_labeled bool.
ACTOR_KEYS = ('actor_boxes', 'actor_boxes_flip', 'actor_present', 'actor_labels', 'dense_labeled')


derive_seed = label_protocols.derive_seed


def box_label_kept(name: tf.Tensor, seed: int, fraction: float) -> tf.Tensor:
  """Whether a video's boxes are kept (`data.box_label_fraction`): a pure function of
  (name, seed), nested in the fraction (label_protocols.kept)."""
  return label_protocols.kept(name, seed, fraction, label_protocols.BOX_LABEL)


def video_label_fn(data_config, seed: int) -> Callable[[tf.Tensor], tf.Tensor]:
  """name -> whether the video keeps its class and boxes (a bool tensor like `name`).

  Membership in the list `data.labeled_videos` when one is given, else
  `label_protocols.kept(name, seed, data.labeled_video_fraction, VIDEO_LABEL)`: either
  way the same on every host and restart, and nested in the fraction.
  """
  path = data_config.get('labeled_videos', '')
  if path:
    names = label_protocols.read_video_list(path)
    if not names:
      raise ValueError(f'config key data.labeled_videos: {path} lists no video')
    table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(names), tf.ones([len(names)], tf.int32), tf.string, tf.int32
      ),
      default_value=0,
    )
    return lambda name: table.lookup(name) > 0
  fraction = float(data_config.get('labeled_video_fraction', 1.0))
  return lambda name: label_protocols.kept(name, seed, fraction, label_protocols.VIDEO_LABEL)


def _count_gaps(ds: tf.data.Dataset, first_index: int) -> tf.data.Dataset:
  """Replaces `_index` by `_skipped`: how many indices were dropped right before it."""

  def step(last, ex):
    index = ex.pop(INDEX_KEY)
    ex[SKIPPED_KEY] = tf.cast(index - last - 1, tf.int32)
    return index, ex

  return ds.scan(tf.constant(first_index - 1, tf.int64), sources.graph_fn(step))


def train_example(
  index: tf.Tensor,
  ex: dict[str, tf.Tensor],
  *,
  spec: clips_lib.WindowSpec,
  stream_seed: int,
  keep_fraction: float,
  box_seed: int,
  prefer_boxes: bool,
  has_label_fn: Callable[[tf.Tensor], tf.Tensor] | None = None,
  max_actors: int = 0,
) -> dict[str, tf.Tensor]:
  """One training sample from one raw video; all randomness from (stream_seed, index).

  `has_label_fn(name)`: whether the video keeps its class and boxes (default: all do);
  a video without its labels has label -1 and no box.
  `max_actors` A > 0 adds `ACTOR_KEYS`: tubes 0..A-1 on all T window frames, under
  the same protocols as the box: `dense_labeled` (the clip's dense targets are known)
  when the video is annotated, keeps its boxes and its labels, and no tube past the
  first A has a box in the window; otherwise no actor is present and labels are -1.
  The scale crop moves every actor box like the box.
  """
  seed = tf.stack([tf.constant(stream_seed, tf.int64), tf.cast(index, tf.int64)])
  window_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  video_frames = tf.shape(ex['frames'])[0]
  tf.debugging.assert_equal(
    video_frames, ex['num_frames'], message='frames length differs from num_frames'
  )
  has_label = tf.constant(True) if has_label_fn is None else has_label_fn(ex['name'])
  kept = tf.logical_and(ex['annotated'], box_label_kept(ex['name'], box_seed, keep_fraction))
  kept = tf.logical_and(kept, has_label)
  preferred = None
  if prefer_boxes:
    preferred = tf.cond(
      tf.shape(ex['tube_labels'])[0] > 0,
      lambda: ex['tube_present'][0],
      lambda: tf.zeros([video_frames], tf.bool),
    )
  start = clips_lib.sample_start(window_seed, video_frames, spec, preferred)
  indices = clips_lib.window_indices(start, video_frames, spec)
  c0, c1 = clips_lib.central_positions(spec)
  box, has_box, tube_label = clips_lib.primary_box(
    ex['tube_boxes'], ex['tube_present'], ex['tube_labels'], tf.gather(indices, [c0, c1])
  )
  has_box = tf.logical_and(has_box, kept)
  clip = clips_lib.decode_frames(ex['frames'], indices, spec.frame_size)
  if max_actors:
    actors = clips_lib.window_actors(
      ex['tube_boxes'], ex['tube_present'], ex['tube_labels'], indices, max_actors
    )
    dense_labeled = tf.logical_and(kept, tf.logical_not(actors.crowded))
    actor_boxes, actor_present = actors.boxes, actors.present
  if spec.augments_scale:
    window = clips_lib.crop_window(scale_seed, spec)
    clip = clips_lib.crop_clip(clip, window, spec)
    box, has_box = clips_lib.crop_boxes(box, has_box, window, spec)
    if max_actors:
      actor_boxes, actor_present = clips_lib.crop_boxes(actor_boxes, actor_present, window, spec)
  out = clips_lib.clip_targets(clip, box, has_box, tube_label, spec)
  if max_actors:
    out.update(clips_lib.actor_targets(actor_boxes, actor_present, actors.labels, dense_labeled))
  # A video without its labels carries no class either (-1, like a missing tube label).
  out['label'] = tf.where(has_label, tf.cast(ex['label'], tf.int32), -1)
  out['has_label'] = has_label
  out[INDEX_KEY] = tf.cast(index, tf.int64)
  return out


def _train_stream(
  raw: tf.data.Dataset,
  *,
  batch: int,
  start_step: int,
  shuffle_buffer: int,
  shuffle_seed: int,
  **example_kwargs,
) -> tf.data.Dataset:
  first = start_step * batch
  ds = raw.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate().skip(first)  # skip before any decoding
  ds = ds.map(
    sources.graph_fn(functools.partial(train_example, **example_kwargs)),
    num_parallel_calls=sources.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.ignore_errors(log_warning=True)
  return _count_gaps(ds, first).batch(batch, drop_remainder=True)


def make_train_dataset(
  data_config,
  *,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  start_step: int = 0,
  source: sources.Source | None = None,
) -> tf.data.Dataset:
  """The infinite training stream of one host: batches of `batch_size` (per host) clips.

  Resuming at `start_step=N` yields exactly the batches an uninterrupted run yields from
  step N on, skipping the first N batches' videos before any frame is decoded (exact
  while no clip was dropped as corrupt before step N: each drop shifts the later stream
  by one clip, and is counted and logged by `BatchIterator`).

  Args:
    data_config: `config.data`, validated (`schema.validate`).
    batch_size: clips per batch on this host (global batch / process_count).
    seed: the experiment seed; with `start_step` it fixes the stream completely.
    process_index: this host.
    process_count: number of hosts; host i reads the i-th contiguous share of the split.
    start_step: number of batches to skip (resumption); no skipped video is decoded.
    source: where to read from (default: the TFDS dataset named in the config).
  Returns:
    A dataset of dicts with the DESIGN.md training keys (and `ACTOR_KEYS` when
    `data.max_actors` > 0) plus `_skipped` (int32 `(B,)`, decode failures before each
    clip; `BatchIterator` removes it).
  """
  spec = clips_lib.window_spec(data_config)
  source = source or sources.source_from_config(data_config)
  start, end = sources.host_range(
    source.num_examples(sources.TRAIN_SPLIT), process_index, process_count
  )
  raw = source.read(sources.TRAIN_SPLIT, start, end).ignore_errors(log_warning=True)
  raw = sources.select_classes(raw, data_config.classes)
  fraction = data_config.box_label_fraction
  labeled = data_config.labeled_per_batch
  has_label = video_label_fn(data_config, seed)
  common = dict(
    spec=spec,
    max_actors=int(data_config.get('max_actors', 0)),
    keep_fraction=fraction,
    box_seed=seed,
    has_label_fn=has_label,
    start_step=start_step,
    shuffle_buffer=data_config.shuffle_buffer,
  )

  def stream(ds, name, size, prefer_boxes):
    return _train_stream(
      ds,
      batch=size,
      prefer_boxes=prefer_boxes,
      shuffle_seed=derive_seed('shuffle', seed, process_index, name),
      stream_seed=derive_seed('clips', seed, process_index, name),
      **common,
    )

  if labeled == 0:
    ds = stream(raw, 'all', batch_size, False)
  else:
    # The first `labeled` rows: videos with kept boxes (and, under the video protocol,
    # kept class labels).
    def is_kept(ex):
      kept = tf.logical_and(ex['annotated'], box_label_kept(ex['name'], seed, fraction))
      return tf.logical_and(kept, has_label(ex['name']))

    parts = [stream(raw.filter(sources.graph_fn(is_kept)), 'labeled', labeled, True)]
    if labeled < batch_size:
      parts.append(
        stream(
          raw.filter(sources.graph_fn(lambda ex: tf.logical_not(is_kept(ex)))),
          'unlabeled',
          batch_size - labeled,
          False,
        )
      )
    ds = tf.data.Dataset.zip(tuple(parts)).map(
      sources.graph_fn(
        lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
      )
    )
  return sources.with_stream_options(ds.prefetch(sources.AUTOTUNE))


class BatchIterator:
  """Numpy batches of a training dataset; counts and logs clips dropped as undecodable."""

  def __init__(self, ds: tf.data.Dataset):
    self._iterator = iter(tfds.as_numpy(ds))
    self.num_skipped = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    skipped = int(batch.pop(SKIPPED_KEY, np.zeros(1)).sum())
    if skipped:
      self.num_skipped += skipped
      logging.warning(
        'Input pipeline dropped %d undecodable clip(s) (%d so far).', skipped, self.num_skipped
      )
    return batch


def train_iterator(
  config,
  *,
  process_index: int = 0,
  process_count: int = 1,
  start_step: int = 0,
  source: sources.Source | None = None,
) -> BatchIterator:
  """`make_train_dataset` with the config's global batch and seed, as numpy batches."""
  batch = sources.per_host_batch(config.train.batch_size, process_count, 'config.train.batch_size')
  return BatchIterator(
    make_train_dataset(
      config.data,
      batch_size=batch,
      seed=config.seed,
      process_index=process_index,
      process_count=process_count,
      start_step=start_step,
      source=source,
    )
  )
