"""The tubelet evaluator: a tubelet detector on whole test videos, clips every
`eval.tube_frame_stride` frames, linked by ACT's BuildTubes (video-AP) and, per frame,
every tubelet box covering it after ACT's per-class NMS (frame-AP, several actors a frame).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from stconsist_jax.config import schema
from stconsist_jax.evaluation import evaluator
from stconsist_jax.evaluation.evaluators import frames as frames_lib
from stconsist_jax.evaluation.evaluators import tubes as tubes_eval
from stconsist_jax.metrics import frame_ap
from stconsist_jax.metrics import tubelets
from stconsist_jax.metrics import video_ap

KEYS = ('video_id', 'frame', 'output_frames', 'valid')


def linking_config(config: ml_collections.ConfigDict) -> tubelets.TubeletLinkingConfig:
  """`TubeletLinkingConfig` from `config.eval.tubelets` (0 for max_gap: K; 0 for
  tubelet_nms_threshold: no tubelet NMS); the fields it lacks keep ACT's defaults."""
  group = (config.get('eval', None) or {}).get('tubelets', None) or {}
  defaults = tubelets.TubeletLinkingConfig()
  values = {}
  casts = {'max_gap': int, 'tubelet_nms_threshold': float}  # 0 is None for these two
  for field in dataclasses.fields(defaults):
    if group.get(field.name) is None:
      continue
    value = group[field.name]
    if field.name in casts and not value:
      values[field.name] = None
    else:
      values[field.name] = casts.get(field.name, type(getattr(defaults, field.name)))(value)
  return tubelets.TubeletLinkingConfig(**values)


def frame_nms_threshold(config: ml_collections.ConfigDict) -> float:
  group = (config.get('eval', None) or {}).get('tubelets', None) or {}
  return float(group.get('frame_nms_threshold', 0.3))


def video_tubelets(
  out: Mapping[str, np.ndarray], truth: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
  """One video's clips in frame order: output frames `(S, K)`, pixel corner boxes
  `(S, N, K, 4)`, class scores `(S, N, C)`, validity `(S, N)` and, from a head with
  presence, presence `(S, N, K)` (else None)."""
  rows = np.nonzero(out['valid'].astype(bool) & (out['video_id'] == truth.video_id))[0]
  if not len(rows):
    raise ValueError(f'the whole-video stream yielded no clip of test video {truth.name}')
  rows = rows[np.argsort(out['frame'][rows], kind='stable')]
  h, w = truth.original_size
  scale = np.array([w, h, w, h], np.float64)
  return (
    out['output_frames'][rows].astype(np.int64),
    out['det_boxes'][rows].astype(np.float64) * scale,
    out['det_scores'][rows].astype(np.float64),
    out['det_valid'][rows].astype(bool),
    out['det_present'][rows].astype(bool) if 'det_present' in out else None,
  )


def _frame_rows(truth: Any, dets: tubelets.FrameDetections, annotated_only: bool):
  """Detection rows (keys, scores, normalized boxes, sizes, valid) of one video for frame-AP."""
  keep = np.ones(len(dets.frames), bool)
  if annotated_only:
    keep = truth.tube_present.any(axis=0)[dets.frames]
  h, w = truth.original_size
  frames = dets.frames[keep]
  return (
    frame_ap.frame_keys(np.full(len(frames), truth.video_id), frames),
    dets.scores[keep],
    dets.boxes[keep] / np.array([w, h, w, h], np.float64),
    np.tile(truth.original_size, (len(frames), 1)),
    dets.valid[keep],
  )


def _truth_rows(truth: Any):
  tube_k, frame_f = np.nonzero(truth.tube_present)
  keys = frame_ap.frame_keys(np.full(len(frame_f), truth.video_id), frame_f)
  return (
    keys,
    truth.tube_labels[tube_k],
    truth.tube_boxes[tube_k, frame_f].astype(np.float64),
    np.tile(truth.original_size, (len(tube_k), 1)),
  )


def frame_map_both(det_rows, gt_rows, class_names: Sequence[str], protocol: str) -> dict[str, Any]:
  """Frame-mAP@0.5 under both rules of several scored boxes per frame."""
  keys, scores, boxes, sizes, valid = (np.concatenate(c) for c in zip(*det_rows))
  g_keys, g_labels, g_boxes, g_sizes = (np.concatenate(c) for c in zip(*gt_rows))
  return {
    **frames_lib.frame_ap_both(
      keys, scores, boxes, sizes, g_keys, g_labels, g_boxes, g_sizes, class_names, protocol, valid
    ),
    'num_frames_scored': int(len(np.unique(keys))),
    'num_gt_boxes': int(len(g_keys)),
  }


def tubelet_metrics(
  out: Mapping[str, np.ndarray],
  truths: Sequence[Any],
  class_names: Sequence[str],
  config: ml_collections.ConfigDict,
) -> dict[str, Any]:
  """Frame-mAP, video-mAP and the top tube's video accuracy of a tubelet detector."""
  linking = linking_config(config)
  frames_rule = config.eval.frame_ap_frames
  detections, ground_truth, video_labels = {}, {}, {}
  det_rows, gt_rows, boxes_per_frame = [], [], []
  num_frames = 0
  for truth in truths:
    frames, boxes, scores, valid, present = video_tubelets(out, truth)
    detections[truth.name] = tubelets.link_tubelets(
      frames, boxes, scores, linking, valid=valid, present=present
    )
    ground_truth[truth.name] = tubes_eval.ground_truth_tubes(truth)
    video_labels[truth.name] = int(truth.tube_labels[0])
    per_frame = tubelets.frame_detections(
      frames,
      boxes,
      scores,
      valid=valid,
      present=present,
      nms_threshold=frame_nms_threshold(config),
      plus_one=linking.plus_one,
    )
    det_rows.append(_frame_rows(truth, per_frame, frames_rule == 'annotated'))
    gt_rows.append(_truth_rows(truth))
    boxes_per_frame.append(truth.tube_present.sum(axis=0))
    num_frames += truth.num_frames
  result = video_ap.video_map(detections, ground_truth, len(class_names), plus_one=linking.plus_one)
  counts = np.concatenate(boxes_per_frame) if boxes_per_frame else np.zeros(0)
  num_clips = int(out['valid'].astype(bool).sum())
  return {
    **frame_map_both(det_rows, gt_rows, class_names, config.eval.frame_ap_protocol),
    'frame_map_frames': frames_rule,
    **{k: result[k] for k in video_ap.VIDEO_MAP_KEYS},
    'tubes': {
      'per_class_video_ap@0.5': {
        class_names[c]: float(result['per_class_ap'][0.5][c]) for c in range(len(class_names))
      },
      'tube_video_accuracy': video_ap.video_accuracy_from_tubes(detections, video_labels),
      'one_box_cap': video_ap.one_box_cap(counts) if counts.sum() else float('nan'),
      'clips_per_frame': num_clips / max(num_frames, 1),
      'tubelet_frames': schema.tubelet_frames(config),
      'clip_every': int(config.eval.tube_frame_stride),
      'linking': dataclasses.asdict(linking),
      'frame_nms_threshold': frame_nms_threshold(config),
    },
    'num_tubes': int(sum(len(t) for t in detections.values())),
    'num_gt_tubes': int(sum(len(t) for t in ground_truth.values())),
    'num_videos_linked': len(truths),
    'num_video_clips_scored': num_clips,
  }


class Evaluator(evaluator.Evaluator):
  """Frame-AP and video-AP of a tubelet detector on whole test videos."""

  name = 'tubelets'
  summary_keys = ('frame_map', 'video_map@0.5')

  def check(self, context: evaluator.Context) -> None:
    if not schema.tubelet_frames(context.config):
      raise schema.ConfigError(
        "config key eval.evaluators: 'tubelets' needs model.box_head='tubelet' "
        f'(found {context.config.model.box_head!r}); use frames and tubes for the other heads'
      )
    if context.streams.video_batches is None:
      raise schema.ConfigError(
        "config key eval.evaluators: 'tubelets' needs the whole-video stream of the test split"
      )

  def not_measured(self) -> Mapping[str, Any]:
    return {'frame_map': float('nan'), **{k: float('nan') for k in video_ap.VIDEO_MAP_KEYS}}

  def run(self, context: evaluator.Context) -> evaluator.Fields:
    out, _ = context.run_stream(context.streams.video_batches(), KEYS, desc='eval tubelets')
    yield from tubelet_metrics(
      out, context.streams.video_truth(), context.streams.annotated_class_names, context.config
    ).items()
