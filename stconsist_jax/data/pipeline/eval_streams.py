"""The evaluation streams of one host: test clips, annotated frames and whole videos.

Padded to the same batch count on every host, with the ground truth they are scored against.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from stconsist_jax.config import schema
from stconsist_jax.core import clip_geometry
from stconsist_jax.data.pipeline import clips as clips_lib
from stconsist_jax.data.pipeline import sources


def num_batches_for(counts: Sequence[int], batch_size: int) -> int:
  """Batches every host runs: enough for the host with the most examples."""
  return max(math.ceil(c / batch_size) for c in counts) if counts else 0


def eval_clip_counts(num_videos: int, clips_per_video: int, process_count: int) -> list[int]:
  return [
    clips_per_video * (e - s)
    for s, e in (sources.host_range(num_videos, i, process_count) for i in range(process_count))
  ]


def _pad_and_batch(ds: tf.data.Dataset, batch: int, num_batches: int) -> tf.data.Dataset:
  """Appends invalid all-zero rows so every host yields exactly `num_batches` batches."""
  padding = tf.data.Dataset.from_tensors(
    tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  )
  ds = ds.concatenate(
    padding.map(sources.graph_fn(lambda ex: {**ex, 'valid': tf.constant(False)})).repeat()
  )
  return sources.with_stream_options(
    ds.take(batch * num_batches).batch(batch).prefetch(sources.AUTOTUNE)
  )


def eval_subset(num_videos: int, max_videos: int) -> np.ndarray:
  """Indices of the test videos evaluated: all, or `max_videos` evenly spaced ones.

  Evenly spaced over the split (sorted by class) so a small subset still spans the
  classes; deterministic, the same on every host and every run.
  """
  if max_videos <= 0 or max_videos >= num_videos:
    return np.arange(num_videos)
  return np.unique((np.arange(max_videos) * num_videos) // max_videos)


def host_videos(
  num_videos: int, max_videos: int, process_index: int, process_count: int
) -> np.ndarray:
  """The evaluated test-video indices of one host (a contiguous share of the subset)."""
  subset = eval_subset(num_videos, max_videos)
  start, end = sources.host_range(len(subset), process_index, process_count)
  return subset[start:end]


def _read_videos(source: sources.Source, videos: np.ndarray) -> tf.data.Dataset:
  """(index, example) of the given sorted test-video indices."""
  if not len(videos):
    return source.read(sources.TEST_SPLIT, 0, 1).enumerate(0).take(0)
  first, last = int(videos[0]), int(videos[-1]) + 1
  ds = source.read(sources.TEST_SPLIT, first, last).enumerate(first)
  if last - first != len(videos):
    wanted = tf.constant(videos, tf.int64)
    ds = ds.filter(sources.graph_fn(lambda i, ex: tf.reduce_any(tf.equal(i, wanted))))
  return ds


def _eval_setup(config, process_index, process_count, source):
  spec = clips_lib.window_spec(config.data)._replace(scale_min=1.0, scale_max=1.0)
  source = source or sources.source_from_config(config.data)
  batch = sources.per_host_batch(config.eval.batch_size, process_count, 'config.eval.batch_size')
  num_videos = source.num_examples(sources.TEST_SPLIT)
  videos = host_videos(num_videos, config.eval.max_videos, process_index, process_count)
  raw = _read_videos(source, videos).ignore_errors(log_warning=True)
  raw = sources.select_classes(raw, config.data.classes)
  return spec, source, batch, num_videos, raw


def _decoded_clip(
  ex: dict[str, tf.Tensor], indices: tf.Tensor, spec: clips_lib.WindowSpec
) -> tf.Tensor:
  """The frames `indices` of a video, decoded and sized for the model."""
  clip = clips_lib.resize_clip(
    clips_lib.decode_frames(ex['frames'], indices, spec.frame_size), spec.image_size
  )
  return tf.ensure_shape(clip, [spec.num_frames, spec.image_size, spec.image_size, 3])


def _centred_clip(
  ex: dict[str, tf.Tensor], frame: tf.Tensor, spec: clips_lib.WindowSpec
) -> tf.Tensor:
  """The clip whose position `T // 2` is `frame`, decoded and sized for the model."""
  return _decoded_clip(ex, clips_lib.centred_indices(frame, tf.shape(ex['frames'])[0], spec), spec)


def _clips_at(frames_of, make, raw: tf.data.Dataset) -> tf.data.Dataset:
  """`make(video_id, frame, ex)` for each frame of `frames_of(ex)` of each video."""

  def clips_of(video_id, ex):
    return tf.data.Dataset.from_tensor_slices(frames_of(ex)).map(
      sources.graph_fn(lambda frame: (video_id, frame, ex))
    )

  ds = raw.flat_map(sources.graph_fn(clips_of))
  ds = ds.map(sources.graph_fn(make), num_parallel_calls=sources.AUTOTUNE, deterministic=True)
  return ds.ignore_errors(log_warning=True)


def make_eval_clip_dataset(
  config,
  *,
  process_index: int = 0,
  process_count: int = 1,
  source: sources.Source | None = None,
  layout: EvalLayout | None = None,
) -> tuple[tf.data.Dataset, int]:
  """K uniformly placed clips per test video of this host, padded: `(dataset, num_batches)`.

  Every host gets the same `num_batches`; padding rows have `valid` false and all
  videos of the test split are covered exactly once over all hosts.
  """
  spec, source, batch, num_videos, raw = _eval_setup(config, process_index, process_count, source)
  k = config.eval.clips_per_video
  if config.data.classes == 'ucf24':  # which videos count needs a pass
    counts = (layout or eval_layout(config, process_count, source)).clip_counts
  else:
    counts = eval_clip_counts(
      len(eval_subset(num_videos, config.eval.max_videos)), k, process_count
    )
  num_batches = num_batches_for(counts, batch)
  c0, c1 = clips_lib.central_positions(spec)

  def make(video_id, start, ex):
    video_frames = tf.shape(ex['frames'])[0]
    indices = clips_lib.window_indices(start, video_frames, spec)
    box, has_box, tube_label = clips_lib.primary_box(
      ex['tube_boxes'], ex['tube_present'], ex['tube_labels'], tf.gather(indices, [c0, c1])
    )
    clip = clips_lib.decode_frames(ex['frames'], indices, spec.frame_size)
    out = clips_lib.clip_targets(clip, box, has_box, tube_label, spec)
    return {
      'clip': out['clip'],
      'label': ex['label'],
      'box': out['box'],
      'has_box': out['has_box'],
      'video_id': tf.cast(video_id, tf.int32),
      'valid': tf.constant(True),
    }

  def starts_of(ex):
    return clips_lib.uniform_starts(tf.shape(ex['frames'])[0], k, spec)

  return _pad_and_batch(_clips_at(starts_of, make, raw), batch, num_batches), num_batches


def annotated_frames(
  tube_present: tf.Tensor, video_frames: tf.Tensor, frame_stride: int
) -> tf.Tensor:
  """Frames (int32) where any tube has a box, restricted to multiples of `frame_stride`."""
  any_box = tf.cond(
    tf.shape(tube_present)[0] > 0,
    lambda: tf.reduce_any(tube_present, axis=0),
    lambda: tf.zeros([video_frames], tf.bool),
  )
  frames = tf.cast(tf.where(any_box)[:, 0], tf.int32)
  return tf.boolean_mask(frames, tf.equal(frames % frame_stride, 0))


@dataclasses.dataclass(frozen=True)
class EvalLayout:
  """Per-host sizes of the evaluation streams, from the test split's annotations."""

  clip_counts: tuple[int, ...]  # clips per host of the clip stream
  frame_counts: tuple[int, ...]  # clips per host of the frame stream
  max_boxes: int  # G: most tubes of any test video (at least 1)
  video_frame_counts: tuple[int, ...] = ()  # clips per host of the whole-video stream


def eval_layout(config, process_count: int, source: sources.Source | None = None) -> EvalLayout:
  """One pass over the test split's annotations (no frame decoding) to size both streams.

  Every host can call it and gets the same answer, so all run the same batch counts.
  """
  source = source or sources.source_from_config(config.data)
  stride = config.eval.frame_stride
  ucf24 = config.data.classes == 'ucf24'

  def summary(i, ex):
    frames = annotated_frames(ex['tube_present'], tf.shape(ex['frames'])[0], stride)
    taken = sources.is_ucf24(ex) if ucf24 else tf.constant(True)
    return tf.stack(
      [
        tf.cast(i, tf.int32),
        tf.cast(taken, tf.int32),
        tf.size(frames),
        tf.shape(ex['tube_labels'])[0],
        tf.shape(ex['frames'])[0],
        tf.cast(sources.is_ucf24(ex), tf.int32),
      ]
    )

  num_videos = source.num_examples(sources.TEST_SPLIT)
  max_videos = config.eval.max_videos
  subset = eval_subset(num_videos, max_videos)
  ds = _read_videos(source, subset).map(
    sources.graph_fn(summary), num_parallel_calls=sources.AUTOTUNE
  )
  rows = np.array(list(ds.ignore_errors(log_warning=True).as_numpy_iterator()), np.int64).reshape(
    -1, 6
  )
  if len(rows) != len(subset):
    logging.warning(
      'Test split: %d of %d records are unreadable; evaluation skips them.',
      len(subset) - len(rows),
      len(subset),
    )
  # taken, annotated frames, tubes, length, has tubes; unreadable: 0
  table = np.zeros((num_videos, 5), np.int64)
  table[rows[:, 0]] = rows[:, 1:]
  per_host = [
    table[host_videos(num_videos, max_videos, i, process_count)] for i in range(process_count)
  ]
  k = config.eval.clips_per_video
  clips_of_video = functools.partial(video_clip_count, config)
  return EvalLayout(
    clip_counts=tuple(k * int(t[:, 0].sum()) for t in per_host),
    frame_counts=tuple(int((t[:, 0] * t[:, 1]).sum()) for t in per_host),
    max_boxes=max(1, int(table[:, 2].max(initial=0))),
    video_frame_counts=tuple(
      int(sum(clips_of_video(int(n)) for n in t[(t[:, 0] > 0) & (t[:, 4] > 0), 3]))
      for t in per_host
    ),
  )


def make_eval_frame_dataset(
  config,
  *,
  process_index: int = 0,
  process_count: int = 1,
  source: sources.Source | None = None,
  layout: EvalLayout | None = None,
) -> tuple[tf.data.Dataset, int]:
  """One clip centred on each annotated test frame (stride `eval.frame_stride`), padded.

  The clip of frame f holds frames f + (p - T // 2) * frame_stride, p = 0..T-1, clamped
  to the video. Returns `(dataset, num_batches)`, the same count on every host.
  """
  spec, source, batch, _, raw = _eval_setup(config, process_index, process_count, source)
  layout = layout or eval_layout(config, process_count, source)
  num_batches = num_batches_for(layout.frame_counts, batch)
  stride = config.eval.frame_stride

  def make(video_id, frame, ex):
    gt_boxes, gt_labels = clips_lib.frame_ground_truth(
      ex['tube_boxes'], ex['tube_present'], ex['tube_labels'], frame, layout.max_boxes
    )
    return {
      'clip': _centred_clip(ex, frame, spec),
      'label': ex['label'],
      'video_id': tf.cast(video_id, tf.int32),
      'frame': frame,
      'gt_boxes': gt_boxes,
      'gt_labels': gt_labels,
      'original_size': ex['original_size'],
      'valid': tf.constant(True),
    }

  def frames_of(ex):
    return annotated_frames(ex['tube_present'], tf.shape(ex['frames'])[0], stride)

  return _pad_and_batch(_clips_at(frames_of, make, raw), batch, num_batches), num_batches


def num_video_clips(video_frames: int, stride: int) -> int:
  """Clips of the whole-video stream for one video: frames 0, k, 2k, ... and the last."""
  if video_frames <= 0:
    return 0
  return len(range(0, video_frames, stride)) + int((video_frames - 1) % stride != 0)


def video_clip_frames(video_frames: tf.Tensor, stride: int) -> tf.Tensor:
  """Frames (int32) 0, k, 2k, ... plus the last frame, so interpolation reaches the end."""
  frames = tf.range(0, video_frames, stride, dtype=tf.int32)
  last = tf.reshape(video_frames - 1, [1])
  return tf.cond(
    tf.equal((video_frames - 1) % stride, 0), lambda: frames, lambda: tf.concat([frames, last], 0)
  )


def video_clip_count(config, video_frames: int) -> int:
  """Clips of the whole-video stream for one video of `video_frames` frames."""
  k = schema.tubelet_frames(config)
  if k:
    return clip_geometry.num_tubelet_clips(video_frames, k, config.eval.tube_frame_stride)
  return num_video_clips(video_frames, config.eval.tube_frame_stride)


def tubelet_output_starts(video_frames: tf.Tensor, k: int, stride: int) -> tf.Tensor:
  """`clip_geometry.tubelet_output_starts` in TensorFlow (int32)."""
  last = tf.maximum(tf.cast(video_frames, tf.int32) - k, 0)
  starts = tf.range(0, last + 1, stride, dtype=tf.int32)
  return tf.cond(tf.equal(last % stride, 0), lambda: starts, lambda: tf.concat([starts, [last]], 0))


def tubelet_indices(start: tf.Tensor, video_frames: tf.Tensor, num_frames: int, k: int):
  """Frames int32 `(T,)` of the tubelet clip whose first output frame is `start`, clamped."""
  offsets = tf.constant(clip_geometry.tubelet_offsets(num_frames, k), tf.int32)
  return tf.clip_by_value(tf.cast(start, tf.int32) + offsets, 0, video_frames - 1)


def make_eval_video_dataset(
  config,
  *,
  process_index: int = 0,
  process_count: int = 1,
  source: sources.Source | None = None,
  layout: EvalLayout | None = None,
) -> tuple[tf.data.Dataset, int]:
  """Whole annotated test videos: a clip centred on every `eval.tube_frame_stride`-th frame,
  or, for a tubelet detector of K output frames, clips whose output frames start every
  s-th frame (`clip_geometry.TUBELET_PLACEMENT`; `frame` is the first output frame and
  `output_frames` int32 `(K,)` all of them).

  The detections of these clips, interpolated in between, are linked into action tubes
  (video-mAP). Only UCF101-24 videos (with tubes) take part, as in ACT's protocol; only
  the window's frames are decoded, never a whole video. Each clip carries `frame` (its
  centre) and `frame_indices` int32 `(T,)`, the video frame at each clip position.

  Placement: clips centred on frames f = 0, s, 2s, ... and on the last frame n - 1
  (s = `eval.tube_frame_stride`); position p of the clip of f holds frame
  f + (p - T // 2) * `data.frame_stride`, clamped to [0, n - 1] (the clamped windows
  near the ends repeat the first or last frame). For a tubelet head whose K outputs are
  positions p0 .. p0 + K - 1, p0 = (T - K) // 2, and frame stride 1, the clip of f covers
  frames f + d .. f + d + K - 1 with d = p0 - T // 2 <= 0: consecutive centres s <= K
  apart leave no gap, clamping brings frame 0 into the first clip, and the clip of
  n - 1 reaches n - 1 as d + K - 1 >= 0, which holds unless K = 1 and T is even (then
  the only output is position T // 2 - 1 and frame n - 1 is never an output frame).
  So every frame of every video is some clip's output frame when s <= K, for K >= 2 or
  odd T. A tubelet detector (model.box_head='tubelet') is placed by its first output
  frames instead (`clip_geometry.TUBELET_PLACEMENT`: 0, s, 2s, ... and n - K, strictly
  increasing as ACT's linking needs); then `frame` is the first output frame and
  `output_frames` int32 `(K,)` lists the K output frames. Returns `(dataset,
  num_batches)`, the same count on every host.
  """
  spec, source, batch, _, raw = _eval_setup(config, process_index, process_count, source)
  layout = layout or eval_layout(config, process_count, source)
  num_batches = num_batches_for(layout.video_frame_counts, batch)
  stride = config.eval.tube_frame_stride
  k = schema.tubelet_frames(config)

  def make(video_id, frame, ex):
    video_frames = tf.shape(ex['frames'])[0]
    if k:
      indices = tubelet_indices(frame, video_frames, spec.num_frames, k)
      p0 = clip_geometry.first_output_position(spec.num_frames, k)
      extra = {'output_frames': tf.ensure_shape(indices[p0 : p0 + k], [k])}
    else:
      indices, extra = clips_lib.centred_indices(frame, video_frames, spec), {}
    return {
      'clip': _decoded_clip(ex, indices, spec),
      'video_id': tf.cast(video_id, tf.int32),
      'frame': frame,
      'frame_indices': indices,
      'valid': tf.constant(True),
      **extra,
    }

  raw = raw.filter(sources.graph_fn(lambda i, ex: sources.is_ucf24(ex)))

  def frames_of(ex):
    if k:
      return tubelet_output_starts(tf.shape(ex['frames'])[0], k, stride)
    return video_clip_frames(tf.shape(ex['frames'])[0], stride)

  return _pad_and_batch(_clips_at(frames_of, make, raw), batch, num_batches), num_batches


@dataclasses.dataclass(frozen=True)
class VideoTruth:
  """A test video's ground truth for tube evaluation (boxes normalized corners)."""

  video_id: int
  name: str
  label: int  # the model's label space (ucf24: the first tube's label)
  num_frames: int
  original_size: tuple[int, int]  # (height, width)
  tube_labels: np.ndarray  # (n,) 0..23
  tube_present: np.ndarray  # (n, num_frames) bool
  tube_boxes: np.ndarray  # (n, num_frames, 4) float32


def video_ground_truth(config, source: sources.Source | None = None) -> list[VideoTruth]:
  """Ground truth of the evaluated annotated test videos (every host gets the same list).

  The videos of `make_eval_video_dataset`; one pass, no frame decoded.
  """
  source = source or sources.source_from_config(config.data)
  num_videos = source.num_examples(sources.TEST_SPLIT)
  subset = eval_subset(num_videos, config.eval.max_videos)
  ucf24 = config.data.classes == 'ucf24'
  keys = (
    'label',
    'name',
    'num_frames',
    'original_size',
    'tube_labels',
    'tube_present',
    'tube_boxes',
    'annotated',
  )
  ds = (
    _read_videos(source, subset)
    .map(
      sources.graph_fn(lambda i, ex: (i, tf.shape(ex['frames'])[0], {k: ex[k] for k in keys})),
      num_parallel_calls=sources.AUTOTUNE,
      deterministic=True,
    )
    .ignore_errors(log_warning=True)
  )
  out = []
  for index, length, ex in ds.as_numpy_iterator():
    labels = np.asarray(ex['tube_labels'], np.int64)
    if not (ex['annotated'] and len(labels)):
      continue
    out.append(
      VideoTruth(
        video_id=int(index),
        name=ex['name'].decode(),
        label=int(labels[0]) if ucf24 else int(ex['label']),
        num_frames=int(length),
        original_size=(int(ex['original_size'][0]), int(ex['original_size'][1])),
        tube_labels=labels,
        tube_present=np.asarray(ex['tube_present'], bool),
        tube_boxes=np.asarray(ex['tube_boxes'], np.float32),
      )
    )
  return out
