"""Tests of tube linking, spatio-temporal IoU, video-AP and the one-box cap.

References are plain-loop re-implementations written from ACT's published algorithms
(`BuildTubes` with K = 1, `iou3dt`, `nms3dt`, `videoAP`, `pr_to_ap`) and hand-computed
cases; boxes are in pixels (ACT's +1 convention) unless a test says otherwise.
"""

import math
import tracemalloc

import numpy as np
import pytest

from stconsist_jax.metrics import frame_ap
from stconsist_jax.metrics import interpolation
from stconsist_jax.metrics import tubes
from stconsist_jax.metrics import video_ap


# ----------------------------------------------------------------------------------
# Independent references.


def _ref_iou(a, b):
  """ACT's `iou2d` for two pixel boxes (+1 convention)."""
  w = max(0.0, min(a[2] + 1, b[2] + 1) - max(a[0], b[0]))
  h = max(0.0, min(a[3] + 1, b[3] + 1) - max(a[1], b[1]))
  inter = w * h
  area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
  area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
  return inter / (area_a + area_b - inter)


def _ref_tube_iou(fa, ba, fb, bb):
  """ACT's `iou3dt` on frame lists + box lists; a frame of the overlap where only one
  tube has a box counts 0 (the documented rule for tubes with gaps)."""
  da, db = dict(zip(fa, ba)), dict(zip(fb, bb))
  s, e = max(fa[0], fb[0]), min(fa[-1], fb[-1])
  if e < s:
    return 0.0
  temporal = (e - s + 1) / (max(fa[-1], fb[-1]) - min(fa[0], fb[0]) + 1)
  total, n = 0.0, 0
  for f in range(s, e + 1):
    if f in da and f in db:
      total += _ref_iou(da[f], db[f])
      n += 1
    elif f in da or f in db:
      n += 1
  return (total / n) * temporal  # ACT: np.mean(ious) * (inter / union), in that order


def _ref_pr_to_ap(pr):
  ap = 0.0
  for i in range(1, len(pr)):
    ap += (pr[i][1] - pr[i - 1][1]) * (pr[i][0] + pr[i - 1][0]) * 0.5
  return ap


def _ref_link(
  frames, boxes, scores, iou_thr=0.5, max_gap=1, min_length=15, min_score=0.005, nms=0.3, top_k=10
):
  """ACT's `BuildTubes` for one class with tubelets of one frame, then `nms3dt`.

  frames: list of F ints; boxes: F x N boxes; scores: F x N scores of the class.
  Returns a list of (frames, boxes, scores) in NMS keep order.
  """

  def mean(t):
    return sum(scores[s][n] for s, n in t) / len(t)

  current, finished = [], []
  for step in range(len(frames)):
    n_dets = len(scores[step])
    dets = sorted(range(n_dets), key=lambda n: -scores[step][n])[:top_k]
    dets = [(step, n) for n in dets]
    if step == 0:
      current = [[d] for d in dets]
      continue
    current = sorted(current, key=lambda t: -mean(t))
    ended = []
    for it, t in enumerate(current):
      last_s, last_n = t[-1]
      valid = [d for d in dets if _ref_iou(boxes[last_s][last_n], boxes[d[0]][d[1]]) >= iou_thr]
      if valid:
        best = valid[0]
        for d in valid[1:]:
          if scores[d[0]][d[1]] > scores[best[0]][best[1]]:
            best = d
        t.append(best)
        dets.remove(best)
      elif step - last_s >= max_gap:
        ended.append(it)
    for it in reversed(ended):
      finished.append(current.pop(it))
    current += [[d] for d in dets]
  finished += current
  out = []
  for t in finished:
    fr = [int(frames[s]) for s, _ in t]
    if mean(t) < min_score or fr[-1] + 1 - fr[0] < min_length:
      continue
    out.append((fr, [list(boxes[s][n]) for s, n in t], [scores[s][n] for s, n in t]))
  order = sorted(range(len(out)), key=lambda i: -sum(out[i][2]) / len(out[i][2]))
  keep = []
  while order:
    i = order.pop(0)
    keep.append(i)
    order = [j for j in order if _ref_tube_iou(out[j][0], out[j][1], out[i][0], out[i][1]) <= nms]
  return [out[i] for i in keep]


def _ref_video_ap(dets, gt, thr):
  """ACT's `videoAP` for one class: dets = [(video, score, (frames, boxes))] already in
  tie order; gt = {video: [(frames, boxes)]}. Python's sort is stable."""
  gt = {v: list(g) for v, g in gt.items() if g}
  fn = sum(len(g) for g in gt.values())
  if fn == 0:
    return float('nan')
  tp = fp = 0
  pr = [(1.0, 0.0)]
  for v, _, (fr, bx) in sorted(dets, key=lambda d: -d[1]):
    positive = False
    if v in gt:
      ious = [_ref_tube_iou(gf, gb, fr, bx) for gf, gb in gt[v]]
      amax = ious.index(max(ious))
      if ious[amax] >= thr:
        positive = True
        del gt[v][amax]
        if not gt[v]:
          del gt[v]
    if positive:
      tp += 1
      fn -= 1
    else:
      fp += 1
    pr.append((tp / (tp + fp), tp / (tp + fn)))
  return _ref_pr_to_ap(pr)


def _track(x0, dx, n, y=50.0, w=40.0, h=50.0):
  """(n, 4) boxes of a box moving dx pixels per frame along x."""
  x = x0 + dx * np.arange(n, dtype=np.float64)
  return np.stack([x, np.full(n, y), x + w, np.full(n, y + h)], axis=-1)


def _tube(label, frames, box, score=1.0):
  frames = np.asarray(frames)
  return tubes.Tube(
    label, frames, np.tile(np.asarray(box, float), (len(frames), 1)), np.full(len(frames), score)
  )


BOX = (100.0, 50.0, 149.0, 119.0)
OTHER = (200.0, 150.0, 239.0, 199.0)


# ----------------------------------------------------------------------------------
# Tube and LinkingConfig.


def test_tube_properties_and_validation():
  t = tubes.Tube(3, [2, 3, 5], np.zeros((3, 4)), [0.2, 0.4, 0.9])
  assert (t.label, t.start, t.end, len(t)) == (3, 2, 5, 3)
  assert t.score == pytest.approx(0.5)
  assert t.frames.dtype == np.int64 and t.boxes.dtype == np.float64
  with pytest.raises(ValueError):
    t.boxes[0, 0] = 1.0  # read-only
  g = tubes.ground_truth_tube(1, [0, 1], np.ones((2, 4)))
  np.testing.assert_array_equal(g.scores, [1.0, 1.0])
  with pytest.raises(ValueError, match='increasing'):
    tubes.Tube(0, [1, 1], np.zeros((2, 4)), [0, 0])
  with pytest.raises(ValueError, match='at least one'):
    tubes.Tube(0, [], np.zeros((0, 4)), [])
  with pytest.raises(ValueError, match='boxes'):
    tubes.Tube(0, [0, 1], np.zeros((3, 4)), [0, 0])


def test_tube_score_overrides_the_frame_mean():
  t = tubes.Tube(0, [0, 1], np.zeros((2, 4)), [0.2, 0.4], tube_score=0.9)
  assert t.score == 0.9
  assert tubes.Tube(0, [0, 1], np.zeros((2, 4)), [0.2, 0.4]).score == pytest.approx(0.3)
  with pytest.raises(ValueError, match='tube_score'):
    tubes.Tube(0, [0], np.zeros((1, 4)), [0.2], tube_score=float('nan'))


def test_a_tubes_arrays_are_shared_by_a_relabelled_tube_and_inputs_copied():
  boxes = np.zeros((3, 4))
  t = tubes.Tube(3, [2, 3, 5], boxes, [0.2, 0.4, 0.9])
  assert not np.shares_memory(t.boxes, boxes)  # a writable input is copied
  boxes[0, 0] = 7.0
  assert t.boxes[0, 0] == 0.0
  relabelled = tubes.Tube(1, t.frames, t.boxes, t.scores)  # read-only owned arrays: shared
  assert all(
    np.shares_memory(a, b)
    for a, b in zip(
      (t.frames, t.boxes, t.scores), (relabelled.frames, relabelled.boxes, relabelled.scores)
    )
  )
  view = t.boxes[:2]  # read-only, but a view: copied
  assert not np.shares_memory(tubes.Tube(0, [0, 1], view, [0.1, 0.2]).boxes, view)
  assert relabelled.score == t.score == pytest.approx(0.5)  # (0.2 + 0.4 + 0.9) / 3


def test_linking_config_defaults():
  c = tubes.LinkingConfig()
  assert (
    c.iou_threshold,
    c.max_gap,
    c.min_length,
    c.min_score,
    c.nms_threshold,
    c.top_k,
    c.plus_one,
  ) == (0.5, 1, 15, 0.005, 0.3, 10, True)


# ----------------------------------------------------------------------------------
# Spatio-temporal IoU and NMS.


def test_spatiotemporal_iou_hand_values():
  a = _tube(0, range(0, 10), (0, 0, 99, 99))
  b = _tube(0, range(5, 15), (0, 0, 99, 99))
  assert tubes.spatiotemporal_iou(a, b) == pytest.approx(5 / 15)
  # Shift b by 10 px: per-frame +1 IoU 90*100 / (2*100*100 - 9000) = 9/11.
  c = _tube(0, range(5, 15), (10, 0, 109, 99))
  assert tubes.spatiotemporal_iou(a, c) == pytest.approx(5 / 15 * 9 / 11)
  # Continuous IoU: 89*99 / (2*99*99 - 89*99) = 89/109.
  assert tubes.spatiotemporal_iou(a, c, plus_one=False) == pytest.approx(5 / 15 * 89 / 109)
  assert tubes.spatiotemporal_iou(a, _tube(0, range(10, 20), BOX)) == 0.0
  assert tubes.spatiotemporal_iou(a, a) == pytest.approx(1.0)


def test_spatiotemporal_iou_with_gaps():
  full = _tube(0, [0, 1, 2, 3], BOX)
  gapped = _tube(0, [0, 2, 3], BOX)
  # Span 0..3 on both; frame 1 only in `full` counts 0: 3 of 4 frames.
  assert tubes.spatiotemporal_iou(full, gapped) == pytest.approx(3 / 4)
  # Gaps on both sides at different frames: frames 0..4, boxes on {0,2,4} and {0,1,4}.
  a, b = _tube(0, [0, 2, 4], BOX), _tube(0, [0, 1, 4], BOX)
  assert tubes.spatiotemporal_iou(a, b) == pytest.approx(2 / 4)  # frame 3: neither
  ref = _ref_tube_iou([0, 2, 4], [BOX] * 3, [0, 1, 4], [BOX] * 3)
  assert ref == pytest.approx(2 / 4)


def test_spatiotemporal_iou_matches_act_reference():
  rng = np.random.default_rng(0)
  for _ in range(50):
    tubes_ = []
    for _ in range(2):
      start = int(rng.integers(0, 10))
      n = int(rng.integers(1, 12))
      xy = rng.integers(0, 100, (n, 2))
      boxes = np.concatenate([xy, xy + rng.integers(5, 60, (n, 2))], 1).astype(float)
      tubes_.append((list(range(start, start + n)), boxes))
    (fa, ba), (fb, bb) = tubes_
    got = tubes.spatiotemporal_iou(
      tubes.ground_truth_tube(0, fa, ba), tubes.ground_truth_tube(0, fb, bb)
    )
    assert got == pytest.approx(_ref_tube_iou(fa, list(ba), fb, list(bb)), abs=1e-12)


def test_nms_tubes_keeps_highest_and_ties_in_order():
  a = _tube(0, range(10), BOX, 0.5)
  dup = _tube(0, range(1, 10), BOX, 0.9)  # IoU 0.9 with a
  other = _tube(0, range(10), OTHER, 0.1)
  assert tubes.nms_tubes([a, dup, other], 0.3) == [1, 2]
  assert tubes.nms_tubes([a, dup, other], 0.95) == [1, 0, 2]
  tie1, tie2 = _tube(0, range(10), BOX, 0.5), _tube(0, range(10), BOX, 0.5)
  assert tubes.nms_tubes([tie1, tie2], 0.3) == [0]


# ----------------------------------------------------------------------------------
# Linking.


def _as_tuple(t):
  return (t.label, t.frames.tolist(), t.boxes.tolist(), t.scores.tolist())


def test_link_two_crossing_actors_keep_their_identity():
  n = 40
  a, b = _track(10, 4, n), _track(250, -4, n)  # cross at frame 30
  boxes = np.stack([a, b], 1)
  scores = np.zeros((n, 2, 1))
  scores[:, 0, 0], scores[:, 1, 0] = 0.9, 0.6
  out = tubes.link_video(np.arange(n), boxes, scores)
  assert len(out) == 2
  np.testing.assert_array_equal(out[0].boxes, a)
  np.testing.assert_array_equal(out[1].boxes, b)
  assert (out[0].score, out[1].score) == (pytest.approx(0.9), pytest.approx(0.6))


def test_link_crossing_actors_swap_where_greedy_says_so():
  # At frame 29, B's detection outscores A's and overlaps A's last box (+1 IoU 0.547):
  # the stronger tube (A) takes it, B's tube takes A's detection; at frame 30 the
  # boxes coincide and each tube goes back to its own actor.
  n = 40
  a, b = _track(10, 4, n), _track(250, -4, n)
  boxes = np.stack([a, b], 1)
  scores = np.zeros((n, 2, 1))
  scores[:, 0, 0], scores[:, 1, 0] = 0.9, 0.6
  scores[29, 1, 0] = 0.95
  out = tubes.link_video(np.arange(n), boxes, scores)
  assert len(out) == 2
  want_a, want_b = a.copy(), b.copy()
  want_a[29], want_b[29] = b[29], a[29]
  np.testing.assert_array_equal(out[0].boxes, want_a)
  np.testing.assert_array_equal(out[1].boxes, want_b)
  assert out[0].scores[29] == 0.95 and out[1].scores[29] == 0.9
  assert out[0].score == pytest.approx((39 * 0.9 + 0.95) / 40)


def _one_actor_with_misses(n, missing):
  boxes = _track(20, 2, n)[:, None, :].copy()
  scores = np.full((n, 1, 1), 0.8)
  for f in missing:
    boxes[f, 0] = (280, 200, 300, 220)  # somewhere else, weak: a 1-frame tube
    scores[f, 0, 0] = 0.01
  return boxes, scores


def test_link_gap_of_max_gap_frames_ends_the_tube():
  boxes, scores = _one_actor_with_misses(40, [20])
  out = tubes.link_video(np.arange(40), boxes, scores, tubes.LinkingConfig(max_gap=1))
  assert [(t.start, t.end, len(t)) for t in out] == [(0, 19, 20), (21, 39, 19)]
  # Two consecutive misses with max_gap=2 end it as well.
  boxes, scores = _one_actor_with_misses(40, [20, 21])
  out = tubes.link_video(np.arange(40), boxes, scores, tubes.LinkingConfig(max_gap=2))
  assert [(t.start, t.end, len(t)) for t in out] == [(0, 19, 20), (22, 39, 18)]


def test_link_gap_shorter_than_max_gap_continues_the_tube():
  boxes, scores = _one_actor_with_misses(40, [20])
  out = tubes.link_video(np.arange(40), boxes, scores, tubes.LinkingConfig(max_gap=2))
  assert len(out) == 1
  t = out[0]
  assert (t.start, t.end, len(t)) == (0, 39, 39)
  assert 20 not in t.frames.tolist()
  assert t.score == pytest.approx(0.8)
  # Gaps count in linking steps: detections every 2nd frame link with max_gap=1.
  out = tubes.link_video(np.arange(0, 40, 2), boxes[::2], scores[::2])
  assert [(t.start, t.end, len(t)) for t in out] == [(0, 18, 10), (22, 38, 9)]


def test_link_min_length_and_min_score_filters():
  n = 20
  boxes = np.stack([_track(0, 1, n), _track(0, 1, n, y=200)], 1)
  scores = np.zeros((n, 2, 2))
  scores[:15, 0, 0] = 0.5  # class 0: 15 frames, then weak far boxes
  scores[15:, 0, 0] = 0.0
  boxes[15:, 0] = (500, 500, 510, 510)
  scores[:, 1, 0] = 0.0
  scores[:, 0, 1] = 0.004  # class 1: mean below 0.005 -> dropped
  scores[:, 1, 1] = 0.006  # kept
  out = tubes.link_video(np.arange(n), boxes, scores)
  got = sorted((t.label, t.start, t.end, round(t.score, 6)) for t in out)
  assert got == [(0, 0, 14, 0.5), (1, 0, 19, 0.006)]
  out = tubes.link_video(np.arange(n), boxes, scores, tubes.LinkingConfig(min_length=16))
  assert [(t.label, len(t)) for t in out] == [(1, 20)]
  short = tubes.link_video(np.arange(14), boxes[:14], scores[:14])
  assert [t.label for t in short] == []  # 14 frames < 15


def test_link_nms_removes_a_duplicate_tube():
  n = 20
  actor = _track(50, 3, n)
  dup = actor + np.array([4.0, 0.0, 4.0, 0.0])  # +1 IoU with the actor ~0.82
  boxes = np.stack([actor, dup], 1)
  scores = np.zeros((n, 2, 1))
  scores[:, 0, 0], scores[:, 1, 0] = 0.9, 0.5
  out = tubes.link_video(np.arange(n), boxes, scores)
  assert len(out) == 1
  np.testing.assert_array_equal(out[0].boxes, actor)
  out = tubes.link_video(np.arange(n), boxes, scores, tubes.LinkingConfig(nms_threshold=1.0))
  assert len(out) == 2
  np.testing.assert_array_equal(out[1].boxes, dup)


def test_link_top_k_and_sorted_output():
  n = 16
  boxes = np.stack([_track(0, 1, n, y=y) for y in (0, 100, 200)], 1)
  scores = np.zeros((n, 3, 2))
  scores[:, :, 0] = (0.9, 0.8, 0.7)
  scores[:, :, 1] = (0.1, 0.2, 0.85)
  out = tubes.link_video(np.arange(n), boxes, scores, tubes.LinkingConfig(top_k=2))
  assert [(t.label, round(t.score, 6)) for t in out] == [(0, 0.9), (1, 0.85), (0, 0.8), (1, 0.2)]
  out = tubes.link_video(np.arange(n), boxes, scores)
  assert len(out) == 6
  assert [t.score for t in out] == sorted((t.score for t in out), reverse=True)


def test_link_refuses_normalized_boxes_under_plus_one():
  n = 16
  boxes = np.tile(np.array([0.1, 0.1, 0.4, 0.5]), (n, 1, 1))
  scores = np.full((n, 1, 1), 0.9)
  with pytest.raises(ValueError, match='normalized'):
    tubes.link_video(np.arange(n), boxes, scores)
  out = tubes.link_video(np.arange(n), boxes, scores, tubes.LinkingConfig(plus_one=False))
  assert len(out) == 1 and len(out[0]) == n
  assert tubes.link_video(np.arange(0), np.zeros((0, 1, 4)), np.zeros((0, 1, 2))) == []
  with pytest.raises(ValueError, match='increasing'):
    tubes.link_video(np.array([0, 0]), np.zeros((2, 1, 4)), np.zeros((2, 1, 1)))


@pytest.mark.parametrize('max_gap,top_k', [(1, 3), (2, 2), (3, 3)])
def test_link_matches_act_reference_on_random_videos(max_gap, top_k):
  rng = np.random.default_rng(max_gap * 10 + top_k)
  for trial in range(15):
    n_frames, n_det, n_cls = 25, 3, 2
    frames = np.sort(rng.choice(60, n_frames, replace=False))
    boxes = np.zeros((n_frames, n_det, 4))
    for d in range(2):  # two actors drifting, sometimes replaced by clutter
      xy = rng.uniform(0, 150, 2)
      for f in range(n_frames):
        xy = xy + rng.normal(0, 4, 2)
        boxes[f, d] = np.round(np.concatenate([xy, xy + [60, 80]]))
        if rng.uniform() < 0.15:
          c = rng.uniform(0, 250, 2)
          boxes[f, d] = np.round(np.concatenate([c, c + rng.uniform(20, 80, 2)]))
    c = rng.uniform(0, 250, (n_frames, 2))
    boxes[:, 2] = np.round(np.concatenate([c, c + 50], 1))
    scores = rng.uniform(0, 1, (n_frames, n_det, n_cls))
    config = tubes.LinkingConfig(max_gap=max_gap, top_k=top_k, min_length=5)
    got = tubes.link_video(frames, boxes, scores, config)
    want = []
    for c in range(n_cls):
      for fr, bx, sc in _ref_link(
        frames.tolist(),
        boxes.tolist(),
        scores[:, :, c].tolist(),
        max_gap=max_gap,
        min_length=5,
        top_k=top_k,
      ):
        want.append((c, fr, bx, sc))
    want.sort(key=lambda t: -sum(t[3]) / len(t[3]))
    assert len(got) == len(want), trial
    for g, w in zip(got, want):
      assert g.label == w[0] and g.frames.tolist() == w[1], trial
      np.testing.assert_allclose(g.boxes, w[2])
      np.testing.assert_allclose(g.scores, w[3])


def _linking_overhead(num_frames, num_classes=2):
  """tracemalloc's peak during `link_video` less the bytes of the tubes it returns."""
  rng = np.random.default_rng(0)
  boxes = (np.array([100.0, 80.0, 200.0, 180.0]) + rng.normal(0, 3, (num_frames, 4)))[:, None]
  scores = rng.dirichlet(np.ones(num_classes), num_frames)[:, None]
  tracemalloc.start()
  try:
    out = tubes.link_video(np.arange(num_frames), boxes, scores)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  result = sum(t.frames.nbytes + t.boxes.nbytes + t.scores.nbytes for t in out)
  return peak - result, [len(t) for t in out]


def test_link_working_memory_is_a_few_bytes_per_frame():
  # One steady actor, two classes: each class gives one tube through every frame (the
  # prediction's case). Beyond the tubes returned (48 bytes per tube and frame), the
  # linking holds 4 bytes per frame and class (which tube each detection joined) and,
  # while a class's tubes are built, index arrays and the copies a Tube is made from:
  # about 100 bytes per frame. Per-frame Python lists, as linking held before, cost
  # over 600 bytes per frame here (and about 250 per frame and class).
  small, _ = _linking_overhead(60)
  big, lengths = _linking_overhead(600)
  assert lengths == [600, 600]
  per_frame = (big - small) / 540
  assert per_frame < 200, f'{per_frame:.0f} bytes per frame'


# ----------------------------------------------------------------------------------
# fill_frames.


def test_fill_frames_hand_values():
  frames = np.array([1, 4])
  boxes = np.array([[[0, 0, 3, 3], [10, 10, 20, 20]], [[3, 6, 6, 9], [10, 10, 20, 20]]], float)
  scores = np.array([[[0.0, 1.0], [0.5, 0.5]], [[0.3, 0.7], [0.5, 0.5]]])
  f, b, s = interpolation.fill_frames(frames, boxes, scores, 7)
  np.testing.assert_array_equal(f, np.arange(7))
  assert b.shape == (7, 2, 4) and s.shape == (7, 2, 2)
  np.testing.assert_allclose(b[:, 0, 0], [0, 0, 1, 2, 3, 3, 3])
  np.testing.assert_allclose(b[:, 0, 1], [0, 0, 2, 4, 6, 6, 6])
  np.testing.assert_allclose(s[:, 0, 0], [0, 0, 0.1, 0.2, 0.3, 0.3, 0.3])
  np.testing.assert_allclose(s[:, 0, 1], [1, 1, 0.9, 0.8, 0.7, 0.7, 0.7])
  np.testing.assert_allclose(b[:, 1], np.tile([10, 10, 20, 20], (7, 1)))
  # Three computed frames, unequal spacing.
  three = np.array([[[0, 0, 0, 0]], [[2, 2, 2, 2]], [[0, 0, 0, 0]]], float)
  f, b, s = interpolation.fill_frames(
    np.array([0, 2, 6]), three, np.array([[[1.0]], [[0.0]], [[1.0]]]), 7
  )
  np.testing.assert_allclose(b[:, 0, 0], [0, 1, 2, 1.5, 1, 0.5, 0])
  np.testing.assert_allclose(s[:, 0, 0], [1, 0.5, 0, 0.25, 0.5, 0.75, 1])


def test_fill_frames_single_frame_and_errors():
  _, b, s = interpolation.fill_frames(np.array([3]), np.ones((1, 1, 4)), np.full((1, 1, 2), 0.4), 5)
  np.testing.assert_allclose(b, np.ones((5, 1, 4)))
  np.testing.assert_allclose(s, np.full((5, 1, 2), 0.4))
  with pytest.raises(ValueError, match=r'\[0, 5\)'):
    interpolation.fill_frames(np.array([5]), np.ones((1, 1, 4)), np.ones((1, 1, 1)), 5)
  with pytest.raises(ValueError, match='increasing'):
    interpolation.fill_frames(np.array([2, 1]), np.ones((2, 1, 4)), np.ones((2, 1, 1)), 5)
  with pytest.raises(ValueError, match='at least one'):
    interpolation.fill_frames(np.zeros(0, int), np.ones((0, 1, 4)), np.ones((0, 1, 1)), 5)


def test_fill_scores_interpolates_each_class_as_np_interp():
  frames = np.array([1, 4, 9])
  scores = np.array([[0.0, 1.0], [0.3, 0.7], [0.9, 0.1]])
  got = interpolation.fill_scores(frames, scores, 12)
  assert got.shape == (12, 2) and got.dtype == np.float64
  for c in range(2):  # np.interp holds the end values outside, as the fill does
    np.testing.assert_allclose(got[:, c], np.interp(np.arange(12), frames, scores[:, c]))
  with pytest.raises(ValueError, match='fill_scores'):
    interpolation.fill_scores(np.array([12]), scores[:1], 12)


# ----------------------------------------------------------------------------------
# Video-AP.


def test_video_ap_duplicates_misses_and_videos_without_ground_truth():
  gt = {
    'a': [_tube(0, range(20), BOX), _tube(0, range(20), OTHER)],
    'b': [_tube(0, range(20), BOX)],
  }
  dets = {
    'a': [
      _tube(0, range(20), BOX, 0.9),  # TP
      _tube(0, range(20), BOX, 0.8),  # duplicate: FP
      _tube(0, range(20), OTHER, 0.7),
    ],  # TP
    'c': [_tube(0, range(20), BOX, 0.6)],
  }  # video without GT: FP
  # Points (1,0), (1,1/3), (1/2,1/3), (2/3,2/3), (1/2,2/3); "b" never found.
  expected = 1 / 3 + 1 / 3 * (0.5 + 2 / 3) / 2
  assert video_ap.video_ap(dets, gt, 0, 0.5) == pytest.approx(expected)
  ref = _ref_video_ap(
    [
      ('a', 0.9, (list(range(20)), [BOX] * 20)),
      ('a', 0.8, (list(range(20)), [BOX] * 20)),
      ('a', 0.7, (list(range(20)), [OTHER] * 20)),
      ('c', 0.6, (list(range(20)), [BOX] * 20)),
    ],
    {
      'a': [(list(range(20)), [BOX] * 20), (list(range(20)), [OTHER] * 20)],
      'b': [(list(range(20)), [BOX] * 20)],
    },
    0.5,
  )
  assert ref == pytest.approx(expected)
  assert math.isnan(video_ap.video_ap(dets, gt, 1, 0.5))


def test_video_ap_ties_by_video_name_then_list_order():
  gt = {'b': [_tube(0, range(20), BOX)]}
  tp, fp = _tube(0, range(20), BOX, 0.5), _tube(0, range(20), OTHER, 0.5)
  assert video_ap.video_ap({'a': [fp], 'b': [tp]}, gt, 0, 0.5) == pytest.approx(0.25)
  assert video_ap.video_ap({'b': [tp], 'a': [fp]}, gt, 0, 0.5) == pytest.approx(0.25)
  assert video_ap.video_ap({'b': [tp, fp]}, gt, 0, 0.5) == pytest.approx(1.0)
  assert video_ap.video_ap({'b': [fp, tp]}, gt, 0, 0.5) == pytest.approx(0.25)


def test_video_ap_tubes_with_gaps():
  # GT has no box on frames 5..9; the detection covers 0..19: 15 of 20 frames.
  gt = {'v': [tubes.ground_truth_tube(0, [*range(5), *range(10, 20)], [BOX] * 15)]}
  det = {'v': [_tube(0, range(20), BOX, 0.9)]}
  assert tubes.spatiotemporal_iou(gt['v'][0], det['v'][0]) == pytest.approx(0.75)
  assert video_ap.video_ap(det, gt, 0, 0.7) == pytest.approx(1.0)
  assert video_ap.video_ap(det, gt, 0, 0.8) == 0.0


def test_video_map_thresholds_and_class_without_ground_truth():
  # Class 0: IoU 0.72 (temporal 72/100): a TP at 0.2..0.7, a FP at 0.75 and above.
  # Class 1: perfect. Class 2: detections but no ground truth: NaN, not in the mean.
  gt = {'v': [_tube(0, range(100), BOX), _tube(1, range(30), OTHER)]}
  dets = {
    'v': [
      _tube(0, range(72), BOX, 0.9),
      _tube(1, range(30), OTHER, 0.8),
      _tube(2, range(30), OTHER, 0.7),
    ]
  }
  out = video_ap.video_map(dets, gt, num_classes=3)
  assert out['classes_with_gt'] == [0, 1]
  assert out['video_map@0.2'] == pytest.approx(1.0)
  assert out['video_map@0.5'] == pytest.approx(1.0)
  assert out['video_map@0.75'] == pytest.approx(0.5)
  # 0.5, 0.55, ..., 0.7 (five thresholds): both 1; 0.75 ... 0.95: class 0 is 0.
  assert out['video_map@0.5:0.95'] == pytest.approx((5 * 1.0 + 5 * 0.5) / 10)
  np.testing.assert_allclose(out['per_class_ap'][0.75][:2], [0.0, 1.0])
  assert math.isnan(out['per_class_ap'][0.5][2])
  assert sorted(out['per_class_ap']) == sorted({0.2} | {0.5 + 0.05 * i for i in range(10)})
  np.testing.assert_array_equal(out['num_gt_tubes'], [1, 1, 0])
  np.testing.assert_array_equal(out['num_detections'], [1, 1, 1])
  empty = video_ap.video_map(dets, {}, num_classes=3)
  assert math.isnan(empty['video_map@0.5']) and empty['classes_with_gt'] == []
  with pytest.raises(ValueError, match='outside'):
    video_ap.video_map(dets, gt, num_classes=2)


def test_exact_threshold_ious_round_as_in_act():
  # Identical boxes, 9 of 10 frames: ACT's 1.0 * (9 / 10) is 0.9 exactly, which passes
  # the threshold 0.9 (0.5 + 0.05 * 8 == 0.9); 0.9 * 9 / 9 would be 0.8999999999999999.
  gt = {'v': [_tube(0, range(10), BOX)]}
  det = {'v': [_tube(0, range(1, 10), BOX, 0.9)]}
  assert tubes.spatiotemporal_iou(gt['v'][0], det['v'][0]) == 0.9
  assert video_ap.video_ap(det, gt, 0, 0.9) == 1.0
  # Thresholds 0.5 .. 0.9 of the ten pass, 0.95 does not.
  assert video_ap.video_map(det, gt, 1)['video_map@0.5:0.95'] == pytest.approx(0.9)


def test_iou_of_exactly_085_fails_acts_unrounded_threshold():
  # 17 of 20 frames: IoU 0.85, under ACT's 0.5 + 0.05 * 7 = 0.8500000000000001, so only
  # the seven thresholds 0.5 .. 0.8 of 0.5:0.95 count it as found.
  gt = {'v': [_tube(0, range(20), BOX)]}
  det = {'v': [_tube(0, range(17), BOX, 0.9)]}
  assert tubes.spatiotemporal_iou(gt['v'][0], det['v'][0]) == 0.85
  assert video_ap.video_map(det, gt, 1)['video_map@0.5:0.95'] == pytest.approx(0.7)


def test_video_map_refuses_normalized_boxes_under_plus_one():
  t = _tube(0, range(20), (0.1, 0.1, 0.5, 0.5))
  with pytest.raises(ValueError, match='normalized'):
    video_ap.video_map({'v': [t]}, {'v': [t]}, num_classes=1)
  out = video_ap.video_map({'v': [t]}, {'v': [t]}, num_classes=1, plus_one=False)
  assert out['video_map@0.5'] == pytest.approx(1.0)


def test_video_ap_matches_act_reference_on_random_cases():
  rng = np.random.default_rng(5)
  for trial in range(25):
    gt, ref_gt = {}, {}
    dets, ref_dets = {}, []
    for v in ('v0', 'v1', 'v2'):
      gt[v], ref_gt[v] = [], []
      for _ in range(int(rng.integers(0, 3))):
        start, n = int(rng.integers(0, 20)), int(rng.integers(5, 30))
        xy = rng.integers(0, 150, 2)
        box = (*map(float, xy), *map(float, xy + rng.integers(30, 90, 2)))
        gt[v].append(_tube(0, range(start, start + n), box))
        ref_gt[v].append((list(range(start, start + n)), [box] * n))
    for v in ('v0', 'v1', 'v2', 'v3'):  # sorted names: the ties' order
      dets[v] = []
      for _ in range(int(rng.integers(0, 4))):
        start, n = int(rng.integers(0, 25)), int(rng.integers(5, 30))
        if gt.get(v) and rng.uniform() < 0.7:
          base = gt[v][int(rng.integers(len(gt[v])))].boxes[0]
          box = tuple(float(x) for x in base + rng.integers(-10, 11, 4))
        else:
          xy = rng.integers(0, 150, 2)
          box = (*map(float, xy), *map(float, xy + rng.integers(30, 90, 2)))
        score = float(rng.integers(0, 9)) / 8  # coarse (ties), exact in binary
        dets[v].append(_tube(0, range(start, start + n), box, score))
        ref_dets.append((v, score, (list(range(start, start + n)), [box] * n)))
    for thr in (0.2, 0.5):
      got, ref = video_ap.video_ap(dets, gt, 0, thr), _ref_video_ap(ref_dets, ref_gt, thr)
      if math.isnan(ref):
        assert math.isnan(got), trial
      else:
        assert got == pytest.approx(ref, abs=1e-12), (trial, thr)


# ----------------------------------------------------------------------------------
# Video accuracy and the one-box cap.


def test_video_accuracy_from_tubes():
  dets = {
    'a': [_tube(2, range(5), BOX, 0.4), _tube(1, range(5), BOX, 0.9)],
    'b': [_tube(0, range(5), BOX, 0.5), _tube(1, range(5), BOX, 0.5)],
    'c': [],
    'extra': [_tube(0, range(5), BOX, 0.5)],
  }
  # a -> 1 (right), b -> 0 (tie: first listed; wrong), c -> none (wrong).
  labels = {'a': 1, 'b': 1, 'c': 0}
  assert video_ap.video_accuracy_from_tubes(dets, labels) == pytest.approx(1 / 3)
  assert video_ap.video_accuracy_from_tubes(dets, {'b': 0}) == 1.0
  assert math.isnan(video_ap.video_accuracy_from_tubes(dets, {}))


def test_one_box_cap_hand_values():
  assert video_ap.one_box_cap([1, 2, 0, 3]) == pytest.approx(3 / 6)
  assert video_ap.one_box_cap(np.ones(4, int)) == 1.0
  assert math.isnan(video_ap.one_box_cap([]))
  assert math.isnan(video_ap.one_box_cap([0, 0]))
  with pytest.raises(ValueError, match='>= 0'):
    video_ap.one_box_cap([1, -1])


@pytest.mark.parametrize('protocol', ['voc', 'act'])
def test_one_box_cap_is_the_best_frame_ap_of_a_one_box_detector(protocol):
  # Frames with 1, 2 and 3 actors of class 0; a perfect detector, one box per frame.
  gt_boxes = {
    0: [(0.1, 0.1, 0.3, 0.5)],
    1: [(0.1, 0.1, 0.3, 0.5), (0.5, 0.1, 0.7, 0.5)],
    2: [(0.1, 0.1, 0.3, 0.5), (0.4, 0.1, 0.6, 0.5), (0.7, 0.1, 0.9, 0.5)],
  }
  gt_frames = np.array([f for f, bs in gt_boxes.items() for _ in bs])
  gt = np.array([b for bs in gt_boxes.values() for b in bs])
  det = np.array([bs[0] for bs in gt_boxes.values()])
  out = frame_ap.frame_map(
    np.arange(3),
    np.ones((3, 1)),
    det,
    gt_frames,
    np.zeros(len(gt), int),
    gt,
    num_classes=1,
    protocol=protocol,
  )
  cap = video_ap.one_box_cap(np.bincount(gt_frames))
  assert cap == pytest.approx(3 / 6)
  assert out['frame_map'] == pytest.approx(cap)
