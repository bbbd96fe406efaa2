"""The frame evaluator: frame-AP@0.5 by ACT's and the VOC rule on every annotated test frame,
one clip centred on each frame giving one box and a score per annotated class.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.evaluation import evaluator
from stconsist_jax.metrics import frame_ap

KEYS = ('label', 'video_id', 'frame', 'gt_boxes', 'gt_labels', 'original_size', 'valid')


def frame_index_map(class_names: Sequence[str], annotated_class_names: Sequence[str]) -> np.ndarray:
  """Model class index of each annotated class (identity when the model is 24-way)."""
  if list(class_names) == list(annotated_class_names):
    return np.arange(len(class_names))
  return frame_ap.class_index_map(class_names, annotated_class_names)


def frame_ap_both(
  det_frames: np.ndarray,
  det_scores: np.ndarray,
  det_boxes: np.ndarray,
  det_sizes: np.ndarray,
  gt_frames: np.ndarray,
  gt_labels: np.ndarray,
  gt_boxes: np.ndarray,
  gt_sizes: np.ndarray,
  annotated_class_names: Sequence[str],
  protocol: str,
  det_valid: np.ndarray | None = None,
) -> dict[str, Any]:
  """Frame-mAP@0.5 under both rules ('act', 'voc'); `protocol` names the headline one.
  `det_valid` (D, C): which (row, class) pairs are detections (`frame_ap.frame_map`)."""
  results = {
    name: frame_ap.frame_map(
      det_frames,
      det_scores,
      det_boxes,
      gt_frames,
      gt_labels,
      gt_boxes,
      num_classes=len(annotated_class_names),
      protocol=name,
      frame_sizes=det_sizes,
      gt_frame_sizes=gt_sizes,
      det_valid=det_valid,
    )
    for name in frame_ap.FRAME_AP_PROTOCOLS
  }
  chosen = results[protocol]
  return {
    'frame_map': chosen['frame_map'],
    'frame_map_protocol': protocol,
    'frame_map_by_protocol': {k: v['frame_map'] for k, v in results.items()},
    'per_class_ap': {
      annotated_class_names[c]: float(chosen['per_class_ap'][c])
      for c in range(len(annotated_class_names))
    },
  }


def frame_metrics(
  out: Mapping[str, np.ndarray],
  index_map: np.ndarray,
  annotated_class_names: Sequence[str],
  protocol: str = 'act',
) -> dict[str, Any]:
  """Frame-mAP@0.5 of the annotated-frame stream: one box per frame, a score per class."""
  valid = out['valid'].astype(bool)
  keys = frame_ap.frame_keys(out['video_id'][valid], out['frame'][valid])
  scores = frame_ap.frame_detection_scores(out['logits'][valid], index_map)
  det_boxes = boxes_lib.xywh_to_corners(out['boxes'][valid].astype(np.float64))
  sizes = out['original_size'][valid]
  gt_labels = out['gt_labels'][valid]
  present = gt_labels >= 0
  gt_frames = np.broadcast_to(keys[:, None], gt_labels.shape)[present]
  gt_sizes = np.broadcast_to(sizes[:, None], gt_labels.shape + (2,))[present]
  result = frame_ap_both(
    keys,
    scores,
    det_boxes,
    sizes,
    gt_frames,
    gt_labels[present],
    out['gt_boxes'][valid][present],
    gt_sizes,
    annotated_class_names,
    protocol,
  )
  return {
    **result,
    'frame_map_frames': 'annotated',
    'num_frames_scored': int(valid.sum()),
    'num_gt_boxes': int(present.sum()),
  }


def index_map_of(context: evaluator.Context) -> np.ndarray:
  return frame_index_map(context.streams.class_names, context.streams.annotated_class_names)


class Evaluator(evaluator.Evaluator):
  """Frame-AP of the annotated-frame stream."""

  name = 'frames'
  summary_keys = ('frame_map',)

  def check(self, context: evaluator.Context) -> None:
    index_map_of(context)  # The class names must map, before any compute.

  def not_measured(self) -> Mapping[str, Any]:
    return {'frame_map': float('nan'), 'per_class_ap': {}}

  def run(self, context: evaluator.Context) -> evaluator.Fields:
    out, _ = context.run_stream(context.streams.frame_batches(), KEYS, desc='eval frames')
    yield from frame_metrics(
      out,
      index_map_of(context),
      context.streams.annotated_class_names,
      context.config.eval.frame_ap_protocol,
    ).items()
