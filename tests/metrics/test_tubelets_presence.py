"""Tubelet linking and frame detections with per-frame presence masks (`present=`), on
constructed tubelets whose tubes and rows are worked out by hand."""

import numpy as np
import pytest

from stconsist_jax.metrics import tubelets


def _box(x, y=50.0, w=40.0, h=50.0):
  """A w x h pixel box (ACT's +1 convention: x2 = x + w - 1)."""
  return np.array([x, y, x + w - 1, y + h - 1], np.float64)


def _one_actor(starts, k, num_frames, xs, scores):
  """One tubelet per step: step s boxes `_box(xs[s])` on all K frames, class score
  `scores[s]` of one class."""
  frames = tubelets.tubelet_frames(starts, k, num_frames)
  boxes = np.stack([np.tile(_box(x), (k, 1)) for x in xs])[:, None]  # (S, 1, K, 4)
  return frames, boxes, np.asarray(scores, np.float64)[:, None, None]


def _present(rows):
  return np.array(rows, bool)[:, None]  # (S, 1, K)


def test_a_tube_is_trimmed_to_its_present_frames_at_both_ends():
  # 12 frames, K = 4, a clip every 2 frames: steps on frames 0-3, 2-5, 4-7, 6-9, 8-11.
  # The actor is on frames 3..8; each tubelet knows it. Step s boxes x = 10 + s.
  frames, boxes, scores = _one_actor([0, 2, 4, 6, 8], 4, 12, [10, 11, 12, 13, 14],
                                     [0.9, 0.5, 0.7, 0.7, 0.5])  # fmt: skip
  present = _present(
    [
      [False, False, False, True],  # frames 0-3
      [False, True, True, True],  # frames 2-5
      [True, True, True, True],  # frames 4-7
      [True, True, True, False],  # frames 6-9
      [True, False, False, False],  # frames 8-11
    ]
  )
  config = tubelets.TubeletLinkingConfig(min_length=6)
  (tube,) = tubelets.link_tubelets(frames, boxes, scores, config, present=present)
  np.testing.assert_array_equal(tube.frames, [3, 4, 5, 6, 7, 8])
  # Every frame of 3..8 has two present tubelets: steps (0, 1), (1, 2), (1, 2), (2, 3),
  # (2, 3), (3, 4).
  np.testing.assert_allclose(tube.boxes, [_box(x) for x in (10.5, 11.5, 11.5, 12.5, 12.5, 13.5)])
  np.testing.assert_allclose(tube.scores, [0.7, 0.6, 0.6, 0.7, 0.7, 0.6])
  # The tube's score is still the mean over its five tubelets.
  assert tube.tube_score == pytest.approx(0.66)
  # min_length counts the present span (6 frames), not the tubelets' (12).
  assert not tubelets.link_tubelets(
    frames, boxes, scores, tubelets.TubeletLinkingConfig(min_length=7), present=present
  )
  # Without presence: ACT's tube over all 12 frames.
  (full,) = tubelets.link_tubelets(frames, boxes, scores, config)
  np.testing.assert_array_equal(full.frames, np.arange(12))
  (same,) = tubelets.link_tubelets(
    frames, boxes, scores, config, present=np.ones(present.shape, bool)
  )
  np.testing.assert_array_equal(same.frames, full.frames)
  np.testing.assert_array_equal(same.boxes, full.boxes)
  np.testing.assert_array_equal(same.scores, full.scores)


def test_a_frame_takes_only_the_present_tubelets_box():
  # K = 2, stride 1: frame 1 is covered by step 0 (x = 0, 0.9), absent there, and by
  # step 1 (x = 4, 0.5), present.
  frames, boxes, scores = _one_actor([0, 1], 2, 3, [0, 4], [0.9, 0.5])
  present = _present([[True, False], [True, True]])
  config = tubelets.TubeletLinkingConfig(min_length=1)
  (tube,) = tubelets.link_tubelets(frames, boxes, scores, config, present=present)
  np.testing.assert_array_equal(tube.frames, [0, 1, 2])
  np.testing.assert_allclose(tube.boxes, [_box(0), _box(4), _box(4)])
  np.testing.assert_allclose(tube.scores, [0.9, 0.5, 0.5])
  (both,) = tubelets.link_tubelets(frames, boxes, scores, config)  # the mean on frame 1
  np.testing.assert_allclose(both.boxes, [_box(0), _box(2), _box(4)])
  np.testing.assert_allclose(both.scores, [0.9, 0.7, 0.5])


def test_linking_still_uses_absent_boxes_and_a_tube_never_present_is_dropped():
  # K = 2, stride 2: steps on frames 0-1, 2-3, 4-5; the middle tubelet is absent on both
  # frames but still links the others (its boxes overlap theirs): one tube, frames 2 and
  # 3 left out, span 6. A second actor far away is present nowhere: no tube.
  frames = tubelets.tubelet_frames([0, 2, 4], 2, 6)
  boxes = np.zeros((3, 2, 2, 4))
  boxes[:, 0] = _box(10)
  boxes[:, 1] = _box(300)
  scores = np.full((3, 2, 1), 0.8)
  present = np.ones((3, 2, 2), bool)
  present[1, 0] = False
  present[:, 1] = False
  config = tubelets.TubeletLinkingConfig(min_length=6)
  (tube,) = tubelets.link_tubelets(frames, boxes, scores, config, present=present)
  np.testing.assert_array_equal(tube.frames, [0, 1, 4, 5])
  np.testing.assert_allclose(tube.boxes, np.tile(_box(10), (4, 1)))
  assert tube.tube_score == pytest.approx(0.8)
  assert len(tubelets.link_tubelets(frames, boxes, scores, config)) == 2


def test_frame_detections_drop_absent_rows():
  # 3 frames, K = 3, clips at 0 and 2 (the second clamped: frames 2, 2, 2). Step 0: an
  # actor at x = 0, 1, 2, absent on frame 1. Step 1: one far away at x = 100, 104, 108,
  # present on one copy of frame 2: present there, its box the mean of the three (104).
  frames = tubelets.tubelet_frames([0, 2], 3, 3)
  boxes = np.stack(
    [np.stack([_box(0), _box(1), _box(2)]), np.stack([_box(100), _box(104), _box(108)])]
  )[:, None]
  scores = np.array([[[0.9]], [[0.6]]])
  present = _present([[True, False, True], [False, True, False]])
  det = tubelets.frame_detections(frames, boxes, scores, present=present)
  np.testing.assert_array_equal(det.frames, [0, 2, 2])
  np.testing.assert_allclose(det.boxes, [_box(0), _box(2), _box(104)])
  np.testing.assert_allclose(det.scores, [[0.9], [0.9], [0.6]])
  assert det.valid.all()
  everywhere = tubelets.frame_detections(frames, boxes, scores)
  np.testing.assert_array_equal(everywhere.frames, [0, 1, 2, 2])
  present[1] = False
  det = tubelets.frame_detections(frames, boxes, scores, present=present)
  np.testing.assert_array_equal(det.frames, [0, 2])
  with pytest.raises(ValueError, match=r'present bool \(2, 1, 3\)'):
    tubelets.frame_detections(frames, boxes, scores, present=present[:, :, :2])
  with pytest.raises(ValueError, match='present bool'):
    tubelets.link_tubelets(frames, boxes, scores, present=present.astype(int))
