"""Metrics of the evaluation streams' gathered outputs: the clip stream's accuracy and
mean IoU, the frame stream's frame-mAP, and the whole-video stream's tubes and video-mAP.

Inputs are the concatenated numpy outputs of `evaluate.run_stream` (model outputs with
their batch fields, padding rows marked by `valid`); results are report fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from stconsist_jax import boxes as boxes_lib
from stconsist_jax import frame_ap
from stconsist_jax import metrics
from stconsist_jax import tubes
from stconsist_jax import video_ap


def clip_metrics(
  out: Mapping[str, np.ndarray], class_names: Sequence[str], with_boxes: bool
) -> dict[str, Any]:
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
    'mean_iou': (
      metrics.mean_iou(out['boxes'], out['box'], out['has_box'], valid)
      if with_boxes
      else float('nan')
    ),
    'per_class_accuracy': {
      class_names[c]: float(per_class[c]) for c in range(num_classes) if confusion[c].sum()
    },
    'confusion_matrix': confusion.tolist(),
    'num_clips': int(valid.sum()),
    'num_videos': int(len(np.unique(out['video_id'][valid]))),
    'num_clips_with_box': int((out['has_box'].astype(bool) & valid).sum()),
  }


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
) -> dict[str, Any]:
  """Frame-mAP@0.5 under both rules ('act', 'voc'); `protocol` names the headline one."""
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


def video_detections(
  out: Mapping[str, np.ndarray], truth: Any, index_map: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Every frame of one video: normalized corner boxes `(F, 4)` and annotated-class
  scores `(F, C)`, interpolated between the frames the stream scored."""
  rows = np.nonzero(out['valid'].astype(bool) & (out['video_id'] == truth.video_id))[0]
  if not len(rows):
    raise ValueError(f'the whole-video stream yielded no clip of test video {truth.name}')
  rows = rows[np.argsort(out['frame'][rows], kind='stable')]
  frames = out['frame'][rows]
  boxes = boxes_lib.xywh_to_corners(out['boxes'][rows].astype(np.float64))
  scores = frame_ap.frame_detection_scores(out['logits'][rows], index_map)
  return tubes.fill_one_box(frames, boxes, scores, truth.num_frames)


def ground_truth_tubes(truth: Any) -> list[Any]:
  """The video's annotated tubes as `tubes.Tube`s in pixels (frames where present)."""
  out = []
  for k, label in enumerate(truth.tube_labels):
    frames = np.nonzero(truth.tube_present[k])[0]
    if len(frames):
      out.append(
        tubes.ground_truth_tube(
          int(label),
          frames,
          metrics.normalized_to_pixels(truth.tube_boxes[k][frames], truth.original_size),
        )
      )
  return out


def video_metrics(
  out: Mapping[str, np.ndarray],
  truths: Sequence[Any],
  index_map: np.ndarray,
  annotated_class_names: Sequence[str],
  config: ml_collections.ConfigDict,
) -> dict[str, Any]:
  """Video-mAP of tubes linked on whole test videos; optionally frame-mAP on every frame.

  Tubes are linked per annotated class (`eval.tubes`, ACT's linking); video accuracy
  here is the class of each annotated video's top tube. With
  `eval.frame_ap_frames='all'`, frame-mAP scores every frame of the test videos (frames
  without ground truth hold only false positives), as ACT does for untrimmed videos.
  """
  linking = tubes.linking_config(config)
  num_classes = len(annotated_class_names)
  detections, ground_truth, video_labels = {}, {}, {}
  frame_rows = {k: [] for k in ('frames', 'scores', 'boxes', 'sizes')}
  gt_rows = {k: [] for k in ('frames', 'labels', 'boxes', 'sizes')}
  boxes_per_frame = []
  every_frame = config.eval.frame_ap_frames == 'all'
  for truth in truths:
    boxes, scores = video_detections(out, truth, index_map)
    frames = np.arange(truth.num_frames)
    detections[truth.name] = tubes.link_video(
      frames,
      metrics.normalized_to_pixels(boxes, truth.original_size)[:, None],
      scores[:, None],
      linking,
    )
    ground_truth[truth.name] = ground_truth_tubes(truth)
    if len(truth.tube_labels):
      video_labels[truth.name] = int(truth.tube_labels[0])
    boxes_per_frame.append(truth.tube_present.sum(axis=0))
    if every_frame:
      keys = frame_ap.frame_keys(np.full(truth.num_frames, truth.video_id), frames)
      frame_rows['frames'].append(keys)
      frame_rows['scores'].append(scores)
      frame_rows['boxes'].append(boxes)
      frame_rows['sizes'].append(np.tile(truth.original_size, (truth.num_frames, 1)))
      tube_k, frame_f = np.nonzero(truth.tube_present)
      gt_rows['frames'].append(keys[frame_f])
      gt_rows['labels'].append(truth.tube_labels[tube_k])
      gt_rows['boxes'].append(truth.tube_boxes[tube_k, frame_f])
      gt_rows['sizes'].append(np.tile(truth.original_size, (len(tube_k), 1)))
  result = video_ap.video_map(detections, ground_truth, num_classes, plus_one=linking.plus_one)
  counts = np.concatenate(boxes_per_frame) if boxes_per_frame else np.zeros(0)
  report = {
    **{k: result[k] for k in video_ap.VIDEO_MAP_KEYS},
    'per_class_video_ap@0.5': {
      annotated_class_names[c]: float(result['per_class_ap'][0.5][c]) for c in range(num_classes)
    },
    'tube_video_accuracy': video_ap.video_accuracy_from_tubes(detections, video_labels),
    'one_box_cap': video_ap.one_box_cap(counts) if counts.sum() else float('nan'),
    'num_tubes': int(sum(len(t) for t in detections.values())),
    'num_gt_tubes': int(sum(len(t) for t in ground_truth.values())),
    'num_videos_linked': len(truths),
    'num_video_clips_scored': int(out['valid'].astype(bool).sum()),
    'linking': dataclasses.asdict(linking),
  }
  if every_frame and frame_rows['frames']:
    cat = {k: np.concatenate(v) for k, v in frame_rows.items()}
    gcat = {k: np.concatenate(v) for k, v in gt_rows.items()}
    all_frames = frame_ap_both(
      cat['frames'],
      cat['scores'],
      cat['boxes'],
      cat['sizes'],
      gcat['frames'],
      gcat['labels'],
      gcat['boxes'],
      gcat['sizes'],
      annotated_class_names,
      config.eval.frame_ap_protocol,
    )
    report['all_frames'] = {
      **all_frames,
      'num_frames_scored': int(len(cat['frames'])),
      'num_gt_boxes': int(len(gcat['frames'])),
    }
  return report


def frame_index_map(class_names: Sequence[str], annotated_class_names: Sequence[str]) -> np.ndarray:
  """Model class index of each annotated class (identity when the model is 24-way)."""
  if list(class_names) == list(annotated_class_names):
    return np.arange(len(class_names))
  return frame_ap.class_index_map(class_names, annotated_class_names)
