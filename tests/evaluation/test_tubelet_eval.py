"""The tubelets evaluator on constructed whole-video outputs: two actors per frame, found by
a perfect tubelet detector or by one that misses one actor (expected values by hand)."""

import ml_collections
import numpy as np
import pytest

from stconsist_jax.configs import default
from stconsist_jax.data.pipeline import eval_streams
from stconsist_jax.evaluation.evaluators import tubelets as tubelets_eval

F, K, S = 24, 8, 4  # frames, tubelet length, clip every S frames
SIZE = (60, 80)  # (h, w)
CLASSES = ['a', 'b']


def _truth() -> eval_streams.VideoTruth:
  """Two actors of class 0 on every frame: one left, one right, moving down."""
  t = np.arange(F)[:, None] / F
  left = np.c_[0.1 + 0 * t, 0.1 + 0.3 * t, 0.3 + 0 * t, 0.5 + 0.3 * t]
  right = np.c_[0.6 + 0 * t, 0.2 + 0.2 * t, 0.9 + 0 * t, 0.6 + 0.2 * t]
  return eval_streams.VideoTruth(
    video_id=3,
    name='v3',
    label=0,
    num_frames=F,
    original_size=SIZE,
    tube_labels=np.array([0, 0]),
    tube_present=np.ones((2, F), bool),
    tube_boxes=np.stack([left, right]).astype(np.float32),
  )


def _outputs(truth, actors=(0, 1)) -> dict[str, np.ndarray]:
  """The stream's gathered outputs of a detector that boxes `actors` exactly, score 0.9."""
  starts = np.r_[np.arange(0, F - K + 1, S)]
  frames = np.minimum(starts[:, None] + np.arange(K), F - 1)
  n = 3
  boxes = np.zeros((len(starts), n, K, 4), np.float32)
  scores = np.zeros((len(starts), n, 2), np.float32)
  valid = np.zeros((len(starts), n), bool)
  for i, a in enumerate(actors):
    boxes[:, i] = truth.tube_boxes[a][frames]
    scores[:, i] = [0.9, 0.05]
    valid[:, i] = True
  return {
    'video_id': np.full(len(starts), truth.video_id),
    'frame': starts,
    'output_frames': frames,
    'valid': np.ones(len(starts), bool),
    'det_boxes': boxes,
    'det_scores': scores,
    'det_valid': valid,
  }


def _config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.box_head = 'tubelet'
  config.data.num_frames = K
  config.eval.tube_frame_stride = S
  config.eval.evaluators = ('clips', 'tubelets')
  return config


def test_a_perfect_detector_scores_one_on_both_actors():
  truth = _truth()
  got = tubelets_eval.tubelet_metrics(_outputs(truth), [truth], CLASSES, _config())
  assert got['frame_map'] == pytest.approx(1.0)
  assert got['frame_map_by_protocol']['voc'] == pytest.approx(1.0)
  assert got['video_map@0.5'] == pytest.approx(1.0)
  assert got['video_map@0.75'] == pytest.approx(1.0)
  assert got['num_tubes'] == 4  # each actor, linked for each class (ACT links every class)
  assert got['tubes']['one_box_cap'] == pytest.approx(0.5)
  assert got['tubes']['clips_per_frame'] == pytest.approx(5 / 24)
  assert got['num_gt_boxes'] == 2 * F


def test_missing_one_actor_halves_the_recall():
  truth = _truth()
  got = tubelets_eval.tubelet_metrics(_outputs(truth, actors=(1,)), [truth], CLASSES, _config())
  # Every detection is a true positive at precision 1 up to recall 1/2: ACT's AP is the
  # trapezoid from (0, 1) to (1/2, 1), 0.5; video-AP likewise 0.5.
  assert got['frame_map'] == pytest.approx(0.5)
  assert got['video_map@0.5'] == pytest.approx(0.5)
  assert got['num_tubes'] == 2


def test_the_linking_config_reads_the_eval_group():
  config = _config()
  config.eval.tubelets.max_gap = 0
  config.eval.tubelets.tubelet_nms_threshold = 0.0
  config.eval.tubelets.iou_threshold = 0.3
  linking = tubelets_eval.linking_config(config)
  assert linking.max_gap is None and linking.tubelet_nms_threshold is None
  assert linking.iou_threshold == 0.3 and linking.min_length == 15
  assert linking.overlap_weight == 0.0 and linking.frame_weighting == 'uniform'
  config.eval.tubelets.overlap_weight = 0.5
  config.eval.tubelets.frame_weighting = 'triangular'
  linking = tubelets_eval.linking_config(config)
  assert linking.overlap_weight == 0.5 and linking.frame_weighting == 'triangular'


def test_presence_trims_a_late_actors_tube_to_its_frames():
  # The right actor enters at frame 8. The detector boxes it on every frame of every
  # clip; with presence it also says on which. Without presence its tube spans frames
  # 0..23 against the truth's 8..23: temporal IoU 16/24, a match at 0.5, not at 0.75,
  # and its boxes on frames 0..7 are frame-AP false positives. With presence the tube
  # is the truth's, and every box a true positive.
  truth = _truth()
  truth.tube_present[1, :8] = False
  out = _outputs(truth)
  without = tubelets_eval.tubelet_metrics(out, [truth], CLASSES, _config())
  assert without['video_map@0.5'] == pytest.approx(1.0)
  assert without['video_map@0.75'] < 1.0 and without['frame_map'] < 1.0
  present = np.zeros(out['det_boxes'].shape[:3], bool)
  present[:, :2] = truth.tube_present[:, out['output_frames']].transpose(1, 0, 2)
  got = tubelets_eval.tubelet_metrics(dict(out, det_present=present), [truth], CLASSES, _config())
  assert got['video_map@0.75'] == pytest.approx(1.0)
  assert got['frame_map'] == pytest.approx(1.0)
