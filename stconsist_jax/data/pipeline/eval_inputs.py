"""The evaluation streams of one host as numpy batches: what the evaluators read (clips,
annotated frames, whole videos and their ground truth), and the class names they refer to.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from stconsist_jax.data.pipeline import eval_streams
from stconsist_jax.data.pipeline import sources
from stconsist_jax.data.ucf101 import classes

Batch = Mapping[str, np.ndarray]


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
  # Whole test videos for tubes (the 'tubes' evaluator): clips every tube_frame_stride frames,
  # and the evaluated videos' ground truth.
  video_batches: Callable[[], Iterable[Batch]] | None = None
  video_truth: Callable[[], Sequence[Any]] | None = None


def pipeline_streams(
  config: ml_collections.ConfigDict,
  source: Any = None,
  class_names: Sequence[str] | None = None,
  annotated_class_names: Sequence[str] | None = None,
  with_frames: bool = True,
) -> StreamData:
  """The tf.data eval streams of this host (stconsist_jax.data.pipeline.eval_streams)."""
  source = source or sources.source_from_config(config.data)
  kw = dict(process_index=jax.process_index(), process_count=jax.process_count(), source=source)
  builder = getattr(source, 'builder', None)
  if class_names is None:
    class_names = sources.label_names(config.data, source)
  if annotated_class_names is None and builder is not None:
    annotated_class_names = (builder.info.metadata or {}).get('annotated_class_names') or None
  if annotated_class_names is None:
    annotated_class_names = classes.UCF24_CLASSES

  @functools.cache
  def layout():  # one pass over the test annotations sizes both frame-level streams
    return eval_streams.eval_layout(config, jax.process_count(), source)

  def counted(make, **extra):
    ds, count = make(config, **kw, **extra)
    return Counted(tfds.as_numpy(ds), count)

  with_videos = with_frames and bool({'tubes', 'tubelets'} & set(config.eval.evaluators))
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
