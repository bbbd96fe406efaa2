"""Tests of the causal linker (stconsist_jax.metrics.online_tubes) on hand-made detections:
which tube each detection joins, when tubes end, the filters, gaps and dropped frames; and
fed a whole video, the tubes of the offline per-frame linking."""

import numpy as np
import pytest

from stconsist_jax.metrics import online_tubes
from stconsist_jax.metrics import tubes

A0 = [0, 0, 10, 10]
A1 = [1, 0, 11, 10]  # IoU with A0: 90 / 110 = 0.82 (continuous)
A2 = [2, 0, 12, 10]
B0 = [50, 50, 60, 60]
B1 = [70, 70, 80, 80]  # disjoint from B0


def _config(**kwargs):
  values = dict(iou_threshold=0.5, max_gap=1, min_length=3, min_score=0.1, top_k=2)
  values.update(kwargs)
  return tubes.LinkingConfig(plus_one=False, **values)


def test_each_detection_joins_a_tube_of_each_class_by_hand():
  linker = online_tubes.OnlineLinker(_config(), num_classes=2)
  # Frame 0: every candidate starts a tube; ids by class, then by score.
  step = linker.update(0, [A0, B0], [[0.9, 0.1], [0.2, 0.8]])
  assert step.tube_ids.tolist() == [[0, 3], [1, 2]] and step.ended == []
  # Frame 1: class 0's tube 0 takes A1; tube 1 (on B0) finds nothing and ends (1 frame:
  # dropped silently), B1 starts tube 4. Class 1: tube 2 (best, on B0) ends, tube 3 (A0)
  # takes A1, B1 starts tube 5.
  step = linker.update(1, [A1, B1], [[0.8, 0.1], [0.3, 0.6]])
  assert step.tube_ids.tolist() == [[0, 3], [4, 5]] and step.ended == []
  # Frame 2: one detection; the best tube of each class that overlaps it takes it.
  step = linker.update(2, [A2], [[0.7, 0.05]])
  assert step.tube_ids.tolist() == [[0, 3]] and step.ended == []
  assert linker.num_live == 2
  # Frame 3: nothing. Tube 0 ends: frames 0..2, mean (0.9 + 0.8 + 0.7) / 3 = 0.8. Tube 3
  # ends below min_score ((0.1 + 0.1 + 0.05) / 3 = 0.083): not reported.
  step = linker.update(3, np.zeros((0, 4)), np.zeros((0, 2)))
  assert step.tube_ids.shape == (0, 2)
  (ended,) = step.ended
  assert (ended.id, ended.label, ended.start, ended.end, ended.detections) == (0, 0, 0, 2, 3)
  assert ended.score == pytest.approx(0.8)
  assert linker.num_live == 0 and linker.finish() == []


def test_a_gap_within_max_gap_keeps_the_tube_and_dropped_frames_count_as_one_step():
  linker = online_tubes.OnlineLinker(_config(max_gap=2, min_length=1, top_k=1), num_classes=1)
  assert linker.update(0, [A0], [[0.5]]).tube_ids.tolist() == [[0]]
  assert linker.update(1, np.zeros((0, 4)), np.zeros((0, 1))).ended == []  # one miss: alive
  assert linker.update(2, [A1], [[0.7]]).tube_ids.tolist() == [[0]]
  # Frames 3..9 dropped by the stream: frame 10 is the next step, and it extends the tube.
  assert linker.update(10, [A2], [[0.6]]).tube_ids.tolist() == [[0]]
  assert linker.live_tube(0).end == 10 and linker.live_tube(0).detections == 3
  (ended,) = linker.finish()
  assert (ended.id, ended.start, ended.end, ended.detections) == (0, 0, 10, 3)
  assert ended.score == pytest.approx(0.6)


def test_a_box_that_moves_too_far_starts_a_new_tube():
  linker = online_tubes.OnlineLinker(_config(min_length=1, top_k=1), num_classes=1)
  linker.update(0, [B0], [[0.9]])
  step = linker.update(1, [B1], [[0.9]])
  assert step.tube_ids.tolist() == [[1]]
  assert [(t.id, t.start, t.end) for t in step.ended] == [(0, 0, 0)]
  assert [(t.id, t.start, t.end) for t in linker.finish()] == [(1, 1, 1)]


def test_frames_must_increase():
  linker = online_tubes.OnlineLinker(_config(), num_classes=1)
  linker.update(4, [A0], [[0.5]])
  with pytest.raises(ValueError, match='frames must increase: 4 after 4'):
    linker.update(4, [A0], [[0.5]])


def test_a_whole_video_gives_the_offline_linking():
  """Random detections (3 boxes, 4 classes, 60 frames): the online tubes are those of
  `tubes.link_video` without its 3D NMS (threshold 1 keeps all)."""
  rng = np.random.default_rng(0)
  num_frames, n, c = 60, 3, 4
  centres = rng.uniform(20, 80, (n, 2)) + np.cumsum(rng.normal(0, 2, (num_frames, n, 2)), 0)
  boxes = np.concatenate([centres - 10, centres + 10], -1)
  boxes[rng.random((num_frames, n)) < 0.1] += 40  # now and then a jump: tubes end and start
  scores = rng.random((num_frames, n, c))
  config = tubes.LinkingConfig(
    iou_threshold=0.4, max_gap=2, min_length=5, min_score=0.3, nms_threshold=1.0, top_k=2
  )
  offline = tubes.link_video(np.arange(num_frames), boxes, scores, config)
  linker = online_tubes.OnlineLinker(config, c)
  members = {}
  kept = []
  for f in range(num_frames):
    step = linker.update(f, boxes[f], scores[f])
    for d, k in zip(*np.nonzero(step.tube_ids >= 0)):
      members.setdefault(int(step.tube_ids[d, k]), []).append((f, d))
    kept += step.ended
  kept += linker.finish()
  online = {}
  for t in kept:
    frames = [f for f, _ in members[t.id]]
    online[(t.label, tuple(frames))] = (t, np.array([boxes[f, d] for f, d in members[t.id]]))
  assert len(offline) > 5 and len(online) == len(offline)
  for tube in offline:
    t, tube_boxes = online[(tube.label, tuple(tube.frames.tolist()))]
    np.testing.assert_array_equal(tube_boxes, tube.boxes)
    assert t.score == pytest.approx(tube.score, rel=1e-12)
    assert (t.start, t.end) == (tube.start, tube.end)
