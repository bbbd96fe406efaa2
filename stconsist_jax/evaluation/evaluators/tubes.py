"""The tube evaluator: clips every `eval.tube_frame_stride` frames of whole test videos,
boxes interpolated in between, ACT's linking into tubes, video-AP; with
`eval.frame_ap_frames='all'` also the headline frame-AP over every frame of those videos.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.evaluation import evaluator
from stconsist_jax.evaluation.evaluators import frames as frames_lib
from stconsist_jax.metrics import classification
from stconsist_jax.metrics import frame_ap
from stconsist_jax.metrics import interpolation
from stconsist_jax.metrics import tubes
from stconsist_jax.metrics import video_ap

KEYS = ('video_id', 'frame', 'valid')
# The report's frame-AP fields that the every-frame pass replaces.
FRAME_FIELDS = ('frame_map', 'frame_map_protocol', 'frame_map_by_protocol', 'per_class_ap')


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
  return interpolation.fill_one_box(frames, boxes, scores, truth.num_frames)


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
          classification.normalized_to_pixels(truth.tube_boxes[k][frames], truth.original_size),
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
    # In pixels of the video's own size: an untrained model's boxes may all collapse
    # below one pixel, which link_video would otherwise take for normalized ones.
    detections[truth.name] = tubes.link_video(
      frames,
      classification.normalized_to_pixels(boxes, truth.original_size)[:, None],
      scores[:, None],
      linking,
      in_pixels=True,
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
    all_frames = frames_lib.frame_ap_both(
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


def report_fields(video: Mapping[str, Any], earlier: Mapping[str, Any]) -> dict[str, Any]:
  """The report fields of `video_metrics`: video-mAP, the `tubes` group, counts, and (every
  frame scored) the headline frame-AP, the annotated frames' kept beside it."""
  fields = {k: video[k] for k in video_ap.VIDEO_MAP_KEYS}
  fields['tubes'] = {
    k: v
    for k, v in video.items()
    if k not in video_ap.VIDEO_MAP_KEYS and k != 'all_frames' and not k.startswith('num_')
  }
  fields.update({k: v for k, v in video.items() if k.startswith('num_')})
  if 'all_frames' in video:
    fields.update({k: video['all_frames'][k] for k in FRAME_FIELDS})
    fields['frame_map_frames'] = 'all'
    fields['frame_map_annotated_frames'] = earlier['frame_map_by_protocol']
  return fields


class Evaluator(evaluator.Evaluator):
  """Tubes and video-AP on whole test videos (after `frames`, whose fields it may replace)."""

  name = 'tubes'
  summary_keys = ('video_map@0.5',)

  def check(self, context: evaluator.Context) -> None:
    frames_lib.index_map_of(context)

  def not_measured(self) -> Mapping[str, Any]:
    return {k: float('nan') for k in video_ap.VIDEO_MAP_KEYS}

  def run(self, context: evaluator.Context) -> evaluator.Fields:
    out, _ = context.run_stream(context.streams.video_batches(), KEYS, desc='eval whole videos')
    video = video_metrics(
      out,
      context.streams.video_truth(),
      frames_lib.index_map_of(context),
      context.streams.annotated_class_names,
      context.config,
    )
    yield from report_fields(video, context.fields).items()
