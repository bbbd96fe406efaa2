"""Whole-video evaluation: per-frame detections -> tubes -> video-mAP and every-frame frame-AP.

Hand-built detections on two constructed videos, where the right answer is known:
boxes exactly on the ground truth give AP 1, boxes beside it AP 0, and interpolation
between scored frames reproduces a box moving linearly.
"""

import ml_collections
import numpy as np
import pytest

from stconsist_jax.configs import default
from stconsist_jax.evaluation.evaluators import tubes as tubes_evaluator
from stconsist_jax.metrics import tubes
from stconsist_jax.metrics import video_ap
from stconsist_jax.data.pipeline import eval_streams

NUM_FRAMES = 30
SIZE = (240, 320)


def _truth(video_id, label, boxes, present=None):
  """A VideoTruth with one tube of normalized corner boxes `(NUM_FRAMES, 4)`."""
  present = np.ones(NUM_FRAMES, bool) if present is None else present
  return eval_streams.VideoTruth(
    video_id=video_id,
    name=f'v{video_id}',
    label=label,
    num_frames=NUM_FRAMES,
    original_size=SIZE,
    tube_labels=np.array([label]),
    tube_present=present[None],
    tube_boxes=np.where(present[:, None], boxes, 0.0)[None].astype(np.float32),
  )


def _moving_boxes(shift=0.0):
  t = np.arange(NUM_FRAMES)[:, None] / NUM_FRAMES
  x1 = 0.1 + 0.3 * t + shift
  return np.concatenate([x1, np.full_like(x1, 0.2), x1 + 0.3, np.full_like(x1, 0.8)], 1)


def _stream_rows(truth, boxes_corner, label, num_classes, stride):
  """What the whole-video stream and the model give: every stride-th frame and the last."""
  frames = np.arange(0, NUM_FRAMES, stride)
  if frames[-1] != NUM_FRAMES - 1:
    frames = np.append(frames, NUM_FRAMES - 1)
  xywh = boxes_corner[frames].copy()
  xywh[:, 2:] -= xywh[:, :2]
  logits = np.full((len(frames), num_classes), -5.0)
  logits[:, label] = 5.0
  return {
    'video_id': np.full(len(frames), truth.video_id),
    'frame': frames,
    'boxes': xywh,
    'logits': logits,
    'valid': np.ones(len(frames), bool),
  }


def _concat(rows):
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _config(**eval_fields):
  config = default.get_config()
  for k, v in eval_fields.items():
    config.eval[k] = v
  return config


def test_num_video_clips_matches_the_stream_frames():
  for n, k in [(30, 1), (30, 4), (29, 4), (1, 3), (7, 7), (8, 7)]:
    frames = list(range(0, n, k)) + ([n - 1] if (n - 1) % k else [])
    assert eval_streams.num_video_clips(n, k) == len(frames)


@pytest.mark.parametrize('stride', [1, 4])
def test_detections_on_the_ground_truth_give_video_ap_one(stride):
  names = ['A', 'B', 'C']
  truths = [_truth(0, 0, _moving_boxes()), _truth(1, 2, _moving_boxes(0.2))]
  out = _concat(
    [
      _stream_rows(truths[0], _moving_boxes(), 0, 3, stride),
      _stream_rows(truths[1], _moving_boxes(0.2), 2, 3, stride),
    ]
  )
  result = tubes_evaluator.video_metrics(
    out, truths, np.arange(3), names, _config(frame_ap_frames='all')
  )
  for key in video_ap.VIDEO_MAP_KEYS:
    assert result[key] == pytest.approx(1.0), key
  assert result['tube_video_accuracy'] == 1.0
  assert result['one_box_cap'] == 1.0
  assert np.isnan(result['per_class_video_ap@0.5']['B'])  # no ground truth: left out
  # Every frame scored: each frame's one box matches its one ground-truth box.
  assert result['all_frames']['frame_map_by_protocol']['act'] == pytest.approx(1.0)
  assert result['all_frames']['frame_map_by_protocol']['voc'] == pytest.approx(1.0)
  assert result['all_frames']['num_frames_scored'] == 2 * NUM_FRAMES


def test_boxes_beside_the_actor_give_video_ap_zero():
  truth = _truth(0, 1, _moving_boxes())
  out = _stream_rows(truth, _moving_boxes(0.45), 1, 2, 1)  # no overlap at all
  result = tubes_evaluator.video_metrics(out, [truth], np.arange(2), ['A', 'B'], _config())
  assert result['video_map@0.2'] == 0.0 and result['video_map@0.5'] == 0.0
  assert 'all_frames' not in result


def test_half_the_video_detected_gives_temporal_iou_one_half():
  """The box jumps off the actor at frame 15, so linking ends the first tube there:
  spatio-temporal IoU of that tube = 15/30 temporal x 1 spatial = 0.5; matched at 0.2,
  not at 0.75. The off-actor tube scores lower and only adds a false positive after it.
  """
  truth = _truth(0, 0, _moving_boxes())
  off = np.where(np.arange(NUM_FRAMES)[:, None] < 15, _moving_boxes(), _moving_boxes(0.5))
  out = _stream_rows(truth, off, 0, 1, 1)
  out['logits'] = np.where(out['frame'][:, None] < 15, 5.0, 1.0) * np.array([[1.0, 0.0]])
  result = tubes_evaluator.video_metrics(out, [truth], np.array([0]), ['A'], _config())
  assert result['num_tubes'] == 2
  assert result['video_map@0.2'] == 1.0
  assert result['video_map@0.75'] == 0.0


def test_config_group_reaches_the_linking():
  config = _config()
  config.eval.tubes.min_length = 3
  config.eval.tubes.iou_threshold = 0.3
  linking = tubes.linking_config(config)
  assert (linking.min_length, linking.iou_threshold, linking.max_gap) == (3, 0.3, 1)
  assert tubes.linking_config(ml_collections.ConfigDict({'eval': {}})).min_length == 15
