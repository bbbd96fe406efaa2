"""Tests of tubelet linking (ACT's `BuildTubes`) and of frame detections from tubelets.

The references below transcribe MOC-Detector's `ACT_build.BuildTubes` and
`ACT_utils.nms_tubelets`, and ACT's `load_frame_detections`, `nms2d`, `frameAP`,
`nms3dt` and `iou3dt`, loops and all. Deliberate departures, each where the code under
test documents the same: start frames are any list (ACT: every frame), 0-based;
argsorts are stable, ties by index (ACT's leave ties unspecified); float64 instead of
float32; a tube's frames that no tubelet covers (stride > 1 only) are left out where
ACT would divide by zero. Boxes are integer pixels so that the references' and the
library's IoU formulas round alike.
"""

import numpy as np
import pytest

from stconsist_jax.metrics import frame_ap
from stconsist_jax.metrics import tubelets
from stconsist_jax.metrics import tubes
from stconsist_jax.metrics import video_ap


# ----------------------------------------------------------------------------------
# References.


def _ref_area2d(b):
  return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def _ref_overlap2d(b1, b2):
  xmin = np.maximum(b1[:, 0], b2[:, 0])
  ymin = np.maximum(b1[:, 1], b2[:, 1])
  xmax = np.minimum(b1[:, 2] + 1, b2[:, 2] + 1)
  ymax = np.minimum(b1[:, 3] + 1, b2[:, 3] + 1)
  return np.maximum(0, xmax - xmin) * np.maximum(0, ymax - ymin)


def _ref_iou2d(b1, b2):
  if b1.ndim == 1:
    b1 = b1[None, :]
  if b2.ndim == 1:
    b2 = b2[None, :]
  ov = _ref_overlap2d(b1, b2)
  return ov / (_ref_area2d(b1) + _ref_area2d(b2) - ov)


def _ref_nms_tubelets(dets, overlap_thresh, top_k):
  """MOC's soft `nms_tubelets`; None: no NMS (sort and cut only)."""
  if overlap_thresh is None:
    return dets[np.argsort(-dets[:, -1], kind='stable')][:top_k]
  K = int((dets.shape[1] - 1) / 4)
  x1 = [dets[:, 4 * k] for k in range(K)]
  y1 = [dets[:, 4 * k + 1] for k in range(K)]
  x2 = [dets[:, 4 * k + 2] for k in range(K)]
  y2 = [dets[:, 4 * k + 3] for k in range(K)]
  scores = dets[:, -1]
  area = [(x2[k] - x1[k] + 1) * (y2[k] - y1[k] + 1) for k in range(K)]
  order = np.argsort(-scores, kind='stable')
  weight = np.zeros_like(scores) + 1
  while order.size > 0:
    i = order[0]
    xx1 = [np.maximum(x1[k][i], x1[k][order[1:]]) for k in range(K)]
    yy1 = [np.maximum(y1[k][i], y1[k][order[1:]]) for k in range(K)]
    xx2 = [np.minimum(x2[k][i], x2[k][order[1:]]) for k in range(K)]
    yy2 = [np.minimum(y2[k][i], y2[k][order[1:]]) for k in range(K)]
    w = [np.maximum(0, xx2[k] - xx1[k] + 1) for k in range(K)]
    h = [np.maximum(0, yy2[k] - yy1[k] + 1) for k in range(K)]
    inter_area = [w[k] * h[k] for k in range(K)]
    ious = sum(
      [inter_area[k] / (area[k][order[1:]] + area[k][i] - inter_area[k]) for k in range(K)]
    )
    index = np.where(ious > overlap_thresh * K)[0]
    weight[order[index + 1]] = 1 - ious[index]
    index2 = np.where(ious <= overlap_thresh * K)[0]
    order = order[index2 + 1]
  dets[:, -1] = dets[:, -1] * weight
  new_order = np.argsort(-dets[:, -1], kind='stable')
  return dets[new_order, :][:top_k, :]


def _ref_build_tubes(starts, VDets, K, nlabels, nms=0.6, top_k=10, min_length=15):
  """MOC's `BuildTubes` for one video: {ilabel: [(out (L, 6), score)]}."""
  RES = {}
  for ilabel in range(nlabels):
    FINISHED_TUBES = []
    CURRENT_TUBES = []

    def tubescore(tt):
      return np.mean(np.array([tt[i][1][-1] for i in range(len(tt))]))

    for frame in starts:
      ltubelets = VDets[frame][ilabel + 1].copy()
      ltubelets = _ref_nms_tubelets(ltubelets, nms, top_k=top_k)
      if frame == starts[0]:
        for i in range(ltubelets.shape[0]):
          CURRENT_TUBES.append([(frame, ltubelets[i, :])])
        continue
      avgscore = [tubescore(t) for t in CURRENT_TUBES]
      argsort = np.argsort(-np.array(avgscore), kind='stable')
      CURRENT_TUBES = [CURRENT_TUBES[i] for i in argsort]
      finished = []
      for it, t in enumerate(CURRENT_TUBES):
        last_frame, last_tubelet = t[-1]
        offset = frame - last_frame
        if offset < K:
          nov = K - offset
          ious = sum(
            [
              _ref_iou2d(
                ltubelets[:, 4 * iov : 4 * iov + 4],
                last_tubelet[4 * (iov + offset) : 4 * (iov + offset + 1)],
              )
              for iov in range(nov)
            ]
          ) / float(nov)
        else:
          ious = _ref_iou2d(ltubelets[:, :4], last_tubelet[4 * K - 4 : 4 * K])
        valid = np.where(ious >= 0.5)[0]
        if valid.size > 0:
          idx = valid[np.argmax(ltubelets[valid, -1])]
          CURRENT_TUBES[it].append((frame, ltubelets[idx, :]))
          ltubelets = np.delete(ltubelets, idx, axis=0)
        else:
          if offset >= K:
            finished.append(it)
      for it in finished[::-1]:
        FINISHED_TUBES.append(CURRENT_TUBES[it][:])
        del CURRENT_TUBES[it]
      for i in range(ltubelets.shape[0]):
        CURRENT_TUBES.append([(frame, ltubelets[i, :])])
    FINISHED_TUBES += CURRENT_TUBES
    output = []
    for t in FINISHED_TUBES:
      score = tubescore(t)
      if score < 0.005:
        continue
      beginframe = t[0][0]
      endframe = t[-1][0] + K - 1
      length = endframe + 1 - beginframe
      if length < min_length:
        continue
      out = np.zeros((length, 6))
      out[:, 0] = np.arange(beginframe, endframe + 1)
      n_per_frame = np.zeros((length, 1), dtype=np.int32)
      for i in range(len(t)):
        frame, box = t[i]
        for k in range(K):
          out[frame - beginframe + k, 1:5] += box[4 * k : 4 * k + 4]
          out[frame - beginframe + k, -1] += box[-1]
          n_per_frame[frame - beginframe + k, 0] += 1
      covered = n_per_frame[:, 0] > 0  # all of them with stride 1 (ACT)
      out, n_per_frame = out[covered], n_per_frame[covered]
      out[:, 1:] /= n_per_frame
      output.append([out, score])
    RES[ilabel] = output
  return RES


def _ref_iou3dt(b1, b2):
  """ACT's `iou3dt`; a frame of the overlap that only one tube has counts IoU 0 (the
  rule of `tubes.spatiotemporal_iou` for tubes with gaps)."""
  tmin = max(b1[0, 0], b2[0, 0])
  tmax = min(b1[-1, 0], b2[-1, 0])
  if tmax < tmin:
    return 0.0
  temporal_inter = tmax - tmin + 1
  temporal_union = max(b1[-1, 0], b2[-1, 0]) - min(b1[0, 0], b2[0, 0]) + 1
  d1 = {int(r[0]): r[1:5] for r in b1}
  d2 = {int(r[0]): r[1:5] for r in b2}
  ious = []
  for f in range(int(tmin), int(tmax) + 1):
    if f in d1 and f in d2:
      ious.append(_ref_iou2d(d1[f], d2[f])[0])
    elif f in d1 or f in d2:
      ious.append(0.0)
  return np.mean(ious) * (temporal_inter / temporal_union)


def _ref_nms3dt(tubes_, overlap=0.3):
  if not tubes_:
    return np.array([], dtype=np.int32)
  order = np.argsort(-np.array([t[1] for t in tubes_]), kind='stable')[::-1]
  indices = np.zeros(order.size, dtype=np.int32)
  counter = 0
  while order.size > 0:
    i = order[-1]
    indices[counter] = i
    counter += 1
    ious = np.array([_ref_iou3dt(tubes_[ii][0], tubes_[i][0]) for ii in order[:-1]])
    order = order[np.where(ious <= overlap)[0]]
  return indices[:counter]


def _ref_nms2d(boxes, overlap=0.3):
  """ACT's hard `nms2d` (indices kept); ties: the lower index first."""
  if boxes.size == 0:
    return np.array([], dtype=np.int32)
  x1, y1, x2, y2, scores = (boxes[:, i] for i in range(5))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(-scores, kind='stable')[::-1]
  indices = np.zeros(scores.shape, dtype=np.int32)
  counter = 0
  while order.size > 0:
    i = order[-1]
    indices[counter] = i
    counter += 1
    xx1 = np.maximum(x1[i], x1[order[:-1]])
    yy1 = np.maximum(y1[i], y1[order[:-1]])
    xx2 = np.minimum(x2[i], x2[order[:-1]])
    yy2 = np.minimum(y2[i], y2[order[:-1]])
    inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
    iou = inter / (areas[i] + areas[order[:-1]] - inter)
    order = order[np.where(iou <= overlap)[0]]
  return indices[:counter]


def _ref_load_frame_detections(starts, K, dets_by_start, nlabels, nframes, nms=0.3):
  """ACT's `load_frame_detections` for one video (index 0): rows <video> <frame>
  <label> <score> <x1> <y1> <x2> <y2>. `dets_by_start[i]`: rows <label> <score> and
  the 4K coordinates (ACT's per-start-frame `dets`)."""
  vdets = {i: np.empty((0, 6)) for i in range(nframes)}
  for i in starts:
    dets = dets_by_start[i]
    for k in range(K):
      cols = np.array([2 + 4 * k, 3 + 4 * k, 4 + 4 * k, 5 + 4 * k, 1, 0])
      vdets[i + k] = np.concatenate((vdets[i + k], dets[:, cols]), axis=0)
  alldets = []
  for i in vdets:
    idx = np.empty((0,), dtype=np.int32)
    for ilabel in range(nlabels):
      a = np.where(vdets[i][:, 5] == ilabel)[0]
      if a.size == 0:
        continue
      idx = np.concatenate((idx, a[_ref_nms2d(vdets[i][vdets[i][:, 5] == ilabel, :5], nms)]))
    if idx.size == 0:
      continue
    ones = np.ones((idx.size, 1))
    alldets.append(
      np.concatenate((0 * ones, i * ones, vdets[i][idx, :][:, np.array([5, 4, 0, 1, 2, 3])]), 1)
    )
  return np.concatenate(alldets, axis=0)


def _ref_pr_to_ap(pr):
  prdif = pr[1:, 1] - pr[:-1, 1]
  prsum = pr[1:, 0] + pr[:-1, 0]
  return np.sum(prdif * prsum * 0.5)


def _ref_frame_ap(alldets, gt_tubes, ilabel, th=0.5):
  """ACT's `frameAP` for one class; gt_tubes: {ilabel: [(L, 5) frame, x1, y1, x2, y2]}."""
  detections = alldets[alldets[:, 2] == ilabel, :]
  gt = {}
  for tube in gt_tubes.get(ilabel, []):
    for i in range(tube.shape[0]):
      k = (0, int(tube[i, 0]))
      gt.setdefault(k, []).append(tube[i, 1:5].tolist())
  for k in gt:
    gt[k] = np.array(gt[k])
  pr = np.empty((detections.shape[0] + 1, 2))
  pr[0, 0], pr[0, 1] = 1.0, 0.0
  fn = sum([g.shape[0] for g in gt.values()])
  fp = tp = 0
  for i, j in enumerate(np.argsort(-detections[:, 3], kind='stable')):
    k = (int(detections[j, 0]), int(detections[j, 1]))
    box = detections[j, 4:8]
    ispositive = False
    if k in gt:
      ious = _ref_iou2d(gt[k], box)
      amax = np.argmax(ious)
      if ious[amax] >= th:
        ispositive = True
        gt[k] = np.delete(gt[k], amax, 0)
        if gt[k].size == 0:
          del gt[k]
    if ispositive:
      tp += 1
      fn -= 1
    else:
      fp += 1
    pr[i + 1, 0] = float(tp) / float(tp + fp)
    pr[i + 1, 1] = float(tp) / float(tp + fn)
  return _ref_pr_to_ap(pr)


def _act_vdets(starts, boxes, scores):
  """Our (S, N, K, 4) boxes and (S, N, C) scores as MOC's VDets[start][label + 1]."""
  s, n, k, _ = boxes.shape
  return {
    int(f): {c + 1: np.concatenate([boxes[i].reshape(n, 4 * k), scores[i, :, c : c + 1]], 1)
             for c in range(scores.shape[2])}
    for i, f in enumerate(starts)
  }  # fmt: skip


def _reference_tubes(starts, boxes, scores, nms=0.6, top_k=10, min_length=15):
  """Per class, the reference tubes after `nms3dt`, as (frames, boxes, scores, score)."""
  K = boxes.shape[2]
  res = _ref_build_tubes(
    list(starts), _act_vdets(starts, boxes, scores), K, scores.shape[2], nms, top_k, min_length
  )
  out = {}
  for c, ltubes in res.items():
    idx = _ref_nms3dt(ltubes, 0.3)
    out[c] = [
      (ltubes[i][0][:, 0].astype(int), ltubes[i][0][:, 1:5], ltubes[i][0][:, 5], ltubes[i][1])
      for i in idx
    ]
  return out


def _assert_same_tubes(got, want):
  """`got`: link_tubelets' list; `want`: {class: reference tubes in NMS order}."""
  for c, ref in want.items():
    mine = [t for t in got if t.label == c]
    assert len(mine) == len(ref), (c, len(mine), len(ref))
    for t, (fr, bx, sc, score) in zip(mine, ref):
      np.testing.assert_array_equal(t.frames, fr)
      np.testing.assert_allclose(t.boxes, bx, rtol=0, atol=1e-9)
      np.testing.assert_allclose(t.scores, sc, rtol=0, atol=1e-12)
      assert t.score == pytest.approx(score, abs=1e-12)
  assert len(got) == sum(len(r) for r in want.values())
  assert [t.score for t in got] == sorted((t.score for t in got), reverse=True)


# ----------------------------------------------------------------------------------
# Synthetic videos.


def _box(x, y=50.0, w=40.0, h=50.0):
  """A w x h pixel box (ACT's +1 convention: x2 = x + w - 1)."""
  return np.array([x, y, x + w - 1, y + h - 1], np.float64)


def _random_video(rng, num_frames, k, stride, num_tubelets=5, num_classes=2):
  """Tubelets of 1-3 drifting actors (with a jittered duplicate now and then, for the
  tubelet NMS), clutter elsewhere; integer pixel boxes; random class scores."""
  starts = np.arange(0, num_frames - k + 1, stride)
  frames = tubelets.tubelet_frames(starts, k, num_frames)
  num_actors = int(rng.integers(1, 4))
  pos = rng.uniform(0, 200, (num_actors, 2))
  vel = rng.normal(0, 4, (num_actors, 2))
  track = pos[:, None] + vel[:, None] * np.arange(num_frames)[None, :, None]  # (A, F, 2)
  present = np.ones((num_actors, num_frames), bool)
  for a in range(num_actors):
    if rng.uniform() < 0.5:  # the actor vanishes for a while
      lo = int(rng.integers(0, num_frames))
      present[a, lo : lo + int(rng.integers(1, 2 * k + 2))] = False
  boxes = np.zeros((len(starts), num_tubelets, k, 4))
  for s, f in enumerate(frames):
    slot = 0
    for a in range(num_actors):
      if not present[a, f[0]] or slot >= num_tubelets:
        continue
      xy = track[a, f] + rng.normal(0, 2, (k, 2))
      boxes[s, slot] = np.round(np.concatenate([xy, xy + [59, 79]], 1))
      slot += 1
      if rng.uniform() < 0.3 and slot < num_tubelets:
        boxes[s, slot] = boxes[s, slot - 1] + np.round(rng.normal(0, 2, (k, 4)))
        slot += 1
    for n in range(slot, num_tubelets):
      xy = rng.uniform(0, 250, 2) + rng.normal(0, 3, (k, 2))
      boxes[s, n] = np.round(np.concatenate([xy, xy + rng.uniform(20, 80, 2)], 1))
  scores = rng.uniform(0, 1, (len(starts), num_tubelets, num_classes))
  return starts, frames, boxes, scores


# ----------------------------------------------------------------------------------
# Linking against the reference.


@pytest.mark.parametrize(
  'k,stride,nms,top_k',
  [(1, 1, 0.6, 10), (3, 1, 0.6, 10), (4, 2, 0.6, 3), (3, 3, 0.6, 10), (5, 2, None, 4)],
)
def test_link_tubelets_matches_act_reference_on_random_videos(k, stride, nms, top_k):
  rng = np.random.default_rng(100 * k + stride)
  for trial in range(6):
    starts, frames, boxes, scores = _random_video(rng, 32, k, stride)
    config = tubelets.TubeletLinkingConfig(tubelet_nms_threshold=nms, top_k=top_k, min_length=6)
    got = tubelets.link_tubelets(frames, boxes, scores, config)
    want = _reference_tubes(starts, boxes, scores, nms, top_k, min_length=6)
    assert sum(len(v) for v in want.values()) > 0, trial
    _assert_same_tubes(got, want)


def test_soft_tubelet_nms_weights_as_moc():
  # Two K=2 tubelets 2 px apart: per-frame IoU 38*50 / (2*2000 - 1900) = 19/21.
  a = np.stack([_box(0), _box(10)])
  boxes = np.stack([a, a + [2, 0, 2, 0]])
  keep, rescaled = tubelets.soft_nms_tubelets(boxes, np.array([0.9, 0.5]), 0.6, 10)
  # Summed IoU 38/21 > 0.6 * 2: weight 1 - 38/21 (negative for K > 1, as in MOC).
  np.testing.assert_array_equal(keep, [0, 1])
  np.testing.assert_allclose(rescaled, [0.9, 0.5 * (1 - 38 / 21)])
  keep, rescaled = tubelets.soft_nms_tubelets(boxes, np.array([0.5, 0.9]), None, 1)
  np.testing.assert_array_equal(keep, [1])
  np.testing.assert_allclose(rescaled, [0.9])


def test_soft_tubelet_nms_a_dropped_tubelet_drops_no_other():
  # K = 1 boxes at x = 0, 6, 12: IoU(0, 6) = IoU(6, 12) = 34/46 > 0.6, IoU(0, 12) =
  # 28/52 <= 0.6. Class 0 ranks 0, 6, 12: box 6 is rescaled by 1 - 17/23 and dropped
  # from the visit, so box 12 keeps its score. Class 1 ranks 12, 6, 0, the mirror case.
  boxes = np.stack([_box(0), _box(6), _box(12)])[:, None]
  scores = np.array([[0.9, 0.7], [0.8, 0.8], [0.7, 0.9]])
  keep, rescaled = tubelets.soft_nms_tubelets(boxes, scores, 0.6, 10)
  np.testing.assert_array_equal(keep, [[0, 2], [2, 0], [1, 1]])
  np.testing.assert_allclose(rescaled, [[0.9, 0.9], [0.7, 0.7], [0.8 * 6 / 23] * 2])
  keep, rescaled = tubelets.soft_nms_tubelets(boxes, scores[:, 0], 0.6, 2)
  np.testing.assert_array_equal(keep, [0, 2])
  np.testing.assert_allclose(rescaled, [0.9, 0.7])


# ----------------------------------------------------------------------------------
# Hand-made cases.


def _single_track(frames, per_step_boxes, per_step_scores):
  """One tubelet per step: boxes (S, K, 4), scores (S,) of one class."""
  return (
    np.asarray(frames),
    np.asarray(per_step_boxes, np.float64)[:, None],
    np.asarray(per_step_scores, np.float64)[:, None, None],
  )


def test_overlapping_tubelets_are_averaged_per_frame():
  # K = 2, stride 1: tubelets on frames (0, 1), (1, 2), (2, 3); x shifts by 2 px a box.
  frames = tubelets.tubelet_frames([0, 1, 2], 2, 4)
  per_step = [[_box(0), _box(2)], [_box(4), _box(6)], [_box(8), _box(10)]]
  f, b, s = _single_track(frames, per_step, [0.9, 0.6, 0.6])
  config = tubelets.TubeletLinkingConfig(min_length=4)
  (tube,) = tubelets.link_tubelets(f, b, s, config)
  np.testing.assert_array_equal(tube.frames, [0, 1, 2, 3])
  np.testing.assert_allclose(tube.boxes, [_box(0), _box(3), _box(7), _box(10)])
  np.testing.assert_allclose(tube.scores, [0.9, 0.75, 0.6, 0.6])
  # ACT's tube score is the mean of the 3 tubelets, not of the 4 frames (0.7125).
  assert tube.score == pytest.approx(0.7)
  assert tube.tube_score == pytest.approx(0.7)
  assert not tubelets.link_tubelets(f, b, s, tubelets.TubeletLinkingConfig(min_length=5))


def test_triangular_weighting_favours_each_tubelets_central_frames():
  # K = 4, stride 2: position weights 1, 2, 2, 1. Frame 2 is tubelet 0's third frame
  # (weight 2, x = 4) and tubelet 1's first (weight 1, x = 5): x = (2*4 + 5) / 3.
  frames = tubelets.tubelet_frames([0, 2, 4], 4, 8)
  per_step = [
    [_box(0), _box(2), _box(4), _box(6)],
    [_box(5), _box(7), _box(9), _box(11)],
    [_box(8), _box(10), _box(12), _box(14)],
  ]
  f, b, s = _single_track(frames, per_step, [0.9, 0.6, 0.3])
  config = tubelets.TubeletLinkingConfig(min_length=8, frame_weighting='triangular')
  (tube,) = tubelets.link_tubelets(f, b, s, config)
  x = [0, 2, 13 / 3, 20 / 3, 26 / 3, 31 / 3, 12, 14]
  np.testing.assert_allclose(tube.boxes, [_box(v) for v in x])
  # The scores stay ACT's plain means.
  np.testing.assert_allclose(tube.scores, [0.9, 0.9, 0.75, 0.75, 0.45, 0.45, 0.3, 0.3])
  (uniform,) = tubelets.link_tubelets(f, b, s, tubelets.TubeletLinkingConfig(min_length=8))
  np.testing.assert_allclose(uniform.boxes[2:6], [_box(v) for v in (4.5, 6.5, 8.5, 10.5)])


def test_triangular_weighting_of_a_clamped_clip():
  # K = 3 (weights 1, 2, 1); the clip starting at 4 covers frame 4 three times: its box
  # there is the mean (x = 5) with the mean weight 4/3. Frame 4: (1*7 + 4/3*5) / (7/3).
  frames = tubelets.tubelet_frames([0, 2, 4], 3, 5)
  per_step = [
    [_box(0), _box(1), _box(2)],
    [_box(4), _box(5), _box(7)],
    [_box(3), _box(4), _box(8)],
  ]
  f, b, s = _single_track(frames, per_step, [0.9, 0.6, 0.3])
  config = tubelets.TubeletLinkingConfig(min_length=5, frame_weighting='triangular')
  (tube,) = tubelets.link_tubelets(f, b, s, config)
  np.testing.assert_allclose(tube.boxes, [_box(v) for v in (0, 1, 3, 5, 41 / 7)])


def _one_tube_two_candidates():
  """K = 2, stride 2: tubelet A (x = 0, score 0.9), then B (x = 0, 0.5) and C (x = 12,
  0.6). Both pass 0.5 against A's last box: B with IoU 1, C with 29/53 (+1 pixel)."""
  frames = tubelets.tubelet_frames([0, 2], 2, 4)
  boxes = np.zeros((2, 2, 2, 4))
  boxes[0, :] = _box(0)
  boxes[1, 0], boxes[1, 1] = _box(0), _box(12)
  scores = np.array([[[0.9], [0.0]], [[0.5], [0.6]]])
  valid = np.array([[True, False], [True, True]])
  return frames, boxes, scores, valid


@pytest.mark.parametrize('weight, x, score', [(0.0, 12, 0.75), (1.0, 0, 0.7)])
def test_overlap_weight_links_by_score_plus_overlap(weight, x, score):
  # ACT (weight 0) takes C, the higher score; with weight 1, B: 0.5 + 1 > 0.6 + 29/53.
  frames, boxes, scores, valid = _one_tube_two_candidates()
  config = tubelets.TubeletLinkingConfig(
    tubelet_nms_threshold=None, min_length=1, overlap_weight=weight
  )
  top = tubelets.link_tubelets(frames, boxes, scores, config, valid=valid)[0]
  np.testing.assert_array_equal(top.frames, [0, 1, 2, 3])
  np.testing.assert_allclose(top.boxes[2:], [_box(x), _box(x)])
  assert top.score == pytest.approx(score)


def test_linking_options_are_checked():
  with pytest.raises(ValueError, match='frame_weighting'):
    tubelets.TubeletLinkingConfig(frame_weighting='gaussian')
  with pytest.raises(ValueError, match='overlap_weight'):
    tubelets.TubeletLinkingConfig(overlap_weight=-1.0)
  np.testing.assert_array_equal(tubelets.position_weights('triangular', 5), [1, 2, 3, 2, 1])
  np.testing.assert_array_equal(tubelets.position_weights('uniform', 3), [1, 1, 1])


def _static_actor_with_clutter(num_steps, k, actor_steps, score=0.8):
  """Stride 1; the actor (a fixed box) has a tubelet at `actor_steps`, clutter far away
  (score 0.001, dropped by min_score) at the others."""
  frames = tubelets.tubelet_frames(np.arange(num_steps), k, num_steps + k - 1)
  boxes = np.zeros((num_steps, 1, k, 4))
  scores = np.zeros((num_steps, 1, 1))
  for s in range(num_steps):
    actor = s in actor_steps
    boxes[s, 0] = _box(10) if actor else _box(200, y=150)
    scores[s, 0, 0] = score if actor else 0.001
  return frames, boxes, scores


def test_a_tube_survives_fewer_than_k_frames_of_misses():
  # K = 3: the tube's last tubelet starts at 3; steps 4 and 5 miss (offsets 1, 2 < K);
  # at step 6 (offset 3) nothing is shared, so the first box of the new tubelet meets
  # the last box of the old one: IoU 1, the tube goes on.
  frames, boxes, scores = _static_actor_with_clutter(8, 3, {0, 1, 2, 3, 6, 7})
  config = tubelets.TubeletLinkingConfig(min_length=1)
  (tube,) = tubelets.link_tubelets(frames, boxes, scores, config)
  np.testing.assert_array_equal(tube.frames, np.arange(10))
  np.testing.assert_allclose(tube.boxes, np.tile(_box(10), (10, 1)))
  assert tube.score == pytest.approx(0.8)
  want = _reference_tubes(frames[:, 0], boxes, scores, min_length=1)
  _assert_same_tubes(tubelets.link_tubelets(frames, boxes, scores, config), want)


def test_a_tube_ends_after_k_frames_without_a_match():
  # Missing at steps 4, 5 and 6: at step 6 (offset 3 = K) the tube ends; the actor's
  # tubelet at step 7 starts a new tube.
  frames, boxes, scores = _static_actor_with_clutter(9, 3, {0, 1, 2, 3, 7, 8})
  scores[7:] = 0.7
  config = tubelets.TubeletLinkingConfig(min_length=1)
  got = tubelets.link_tubelets(frames, boxes, scores, config)
  assert [t.frames.tolist() for t in got] == [list(range(0, 6)), list(range(7, 11))]
  assert [t.score for t in got] == pytest.approx([0.8, 0.7])
  _assert_same_tubes(got, _reference_tubes(frames[:, 0], boxes, scores, min_length=1))


def test_tubes_ending_together_keep_acts_reversed_order_on_ties():
  # K = 1: actors A (x = 0) and B (x = 200), both scored 0.5, vanish together at step
  # 3. ACT appends the ended tubes in reverse (B, A); equal scores keep that order.
  frames = tubelets.tubelet_frames(np.arange(6), 1, 6)
  boxes = np.zeros((6, 2, 1, 4))
  scores = np.full((6, 2, 1), 0.5)
  for s in range(6):
    boxes[s, 0, 0], boxes[s, 1, 0] = (_box(0), _box(200)) if s < 3 else (_box(400), _box(500))
  scores[3:] = 0.001
  got = tubelets.link_tubelets(frames, boxes, scores, tubelets.TubeletLinkingConfig(min_length=1))
  assert [t.boxes[0, 0] for t in got] == [200.0, 0.0]
  _assert_same_tubes(got, _reference_tubes(frames[:, 0], boxes, scores, min_length=1))


def _two_crossing_actors(k, stride, num_frames=20):
  """Actor P moves right, Q left, 10 px a frame, same row: they cross near frame 9.5.
  Class scores: P (0.9, 0.1), Q (0.2, 0.7)."""
  starts = np.arange(0, num_frames - k + 1, stride)
  frames = tubelets.tubelet_frames(starts, k, num_frames)
  p = np.stack([_box(10.0 * f) for f in range(num_frames)])
  q = np.stack([_box(190.0 - 10.0 * f) for f in range(num_frames)])
  boxes = np.stack([np.stack([p[f], q[f]]) for f in frames])  # (S, 2, K, 4)
  scores = np.tile([[0.9, 0.1], [0.2, 0.7]], (len(starts), 1, 1))
  return starts, frames, boxes, scores, p, q


@pytest.mark.parametrize('k,stride', [(4, 2), (4, 4), (3, 1)])
def test_two_crossing_actors_keep_their_identity_in_every_class(k, stride):
  starts, frames, boxes, scores, p, q = _two_crossing_actors(k, stride)
  got = tubelets.link_tubelets(frames, boxes, scores)
  # Per class one tube per actor, all 20 frames; by score: P/0, Q/1, Q/0, P/1.
  assert [(t.label, round(t.score, 6)) for t in got] == [(0, 0.9), (1, 0.7), (0, 0.2), (1, 0.1)]
  for t, track in zip(got, (p, q, q, p)):
    np.testing.assert_array_equal(t.frames, np.arange(20))
    np.testing.assert_allclose(t.boxes, track)
  _assert_same_tubes(got, _reference_tubes(starts, boxes, scores))


def test_clamped_clip_at_the_video_end():
  # 5 frames, K = 3, stride 2: the clip starting at 4 covers frame 4 three times; its
  # box there is the mean of its three boxes (x = 3, 4, 8 -> 5).
  frames = tubelets.tubelet_frames([0, 2, 4], 3, 5)
  np.testing.assert_array_equal(frames, [[0, 1, 2], [2, 3, 4], [4, 4, 4]])
  per_step = [
    [_box(0), _box(1), _box(2)],
    [_box(4), _box(5), _box(7)],
    [_box(3), _box(4), _box(8)],
  ]
  f, b, s = _single_track(frames, per_step, [0.9, 0.6, 0.3])
  (tube,) = tubelets.link_tubelets(f, b, s, tubelets.TubeletLinkingConfig(min_length=5))
  np.testing.assert_array_equal(tube.frames, [0, 1, 2, 3, 4])
  np.testing.assert_allclose(tube.boxes, [_box(0), _box(1), _box(3), _box(5), _box(6)])
  np.testing.assert_allclose(tube.scores, [0.9, 0.9, 0.75, 0.6, 0.45])
  assert tube.score == pytest.approx(0.6)
  # Frame detections, with a second class that prefers the later clips: frames 2 and 4
  # have two rows, each kept by one class's NMS (IoU 19/21 > 0.3); the clamped clip
  # gives one row (x = 5) on frame 4.
  two = np.concatenate([s, s[::-1]], axis=2)
  det = tubelets.frame_detections(f, b, two)
  np.testing.assert_array_equal(det.frames, [0, 1, 2, 2, 3, 4, 4])
  np.testing.assert_allclose(det.boxes, [_box(x) for x in (0, 1, 2, 4, 5, 7, 5)])
  np.testing.assert_array_equal(det.valid[:, 0], [1, 1, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(det.valid[:, 1], [1, 1, 0, 1, 1, 0, 1])


def test_stride_above_one_leaves_uncovered_frames_out():
  # K = 4, stride 3: the tubelet at 3 misses; the one at 6 links through first/last
  # boxes (offset 6 >= K); frames 4 and 5 are covered by no tubelet of the tube.
  frames = tubelets.tubelet_frames([0, 3, 6], 4, 10)
  boxes = np.stack(
    [np.tile(_box(10), (4, 1)), np.tile(_box(200), (4, 1)), np.tile(_box(10), (4, 1))]
  )
  scores = np.array([0.8, 0.001, 0.6])
  got = tubelets.link_tubelets(
    frames, boxes[:, None], scores[:, None, None], tubelets.TubeletLinkingConfig(min_length=1)
  )
  (tube,) = got
  np.testing.assert_array_equal(tube.frames, [0, 1, 2, 3, 6, 7, 8, 9])
  assert tube.score == pytest.approx(0.7)


def test_k1_stride1_without_tubelet_nms_is_link_video():
  rng = np.random.default_rng(7)
  for trial in range(12):
    max_gap, top_k = [(1, 10), (2, 3), (3, 2)][trial % 3]
    starts, frames, boxes, scores = _random_video(rng, 40, 1, 1, num_classes=3)
    got = tubelets.link_tubelets(
      frames,
      boxes,
      scores,
      tubelets.TubeletLinkingConfig(
        tubelet_nms_threshold=None, top_k=top_k, max_gap=max_gap, min_length=5
      ),
    )
    want = tubes.link_video(
      starts,
      boxes[:, :, 0],
      scores,
      tubes.LinkingConfig(max_gap=max_gap, top_k=top_k, min_length=5),
    )
    assert len(got) == len(want) > 0, trial
    for g, w in zip(got, want):
      assert g.label == w.label and g.score == w.score
      np.testing.assert_array_equal(g.frames, w.frames)
      np.testing.assert_array_equal(g.boxes, w.boxes)
      np.testing.assert_array_equal(g.scores, w.scores)


def test_valid_mask_and_input_errors():
  starts, frames, boxes, scores, p, q = _two_crossing_actors(4, 2)
  valid = np.ones(boxes.shape[:2], bool)
  valid[:, 1] = False  # Q is padding
  got = tubelets.link_tubelets(frames, boxes, scores, valid=valid)
  assert [t.label for t in got] == [0, 1]
  for t in got:
    np.testing.assert_allclose(t.boxes, p)
  assert tubelets.link_tubelets(frames, boxes, scores, valid=np.zeros_like(valid)) == []
  with pytest.raises(ValueError, match='normalized'):
    tubelets.link_tubelets(frames, boxes / 1000.0, scores)
  mixed = boxes / 1000.0
  mixed[:, 1] = boxes[:, 1]  # pixels, but padding: only the valid boxes are looked at
  with pytest.raises(ValueError, match='normalized'):
    tubelets.link_tubelets(frames, mixed, scores, valid=valid)
  with pytest.raises(ValueError, match='strictly increasing'):
    tubelets.link_tubelets(frames[::-1], boxes, scores)
  with pytest.raises(ValueError, match=r'boxes \(S, N, K, 4\)'):
    tubelets.link_tubelets(frames, boxes[:, :, :2], scores)


def test_config_defaults_are_acts():
  c = tubelets.TubeletLinkingConfig()
  assert (
    c.tubelet_nms_threshold,
    c.top_k,
    c.iou_threshold,
    c.max_gap,
    c.min_length,
    c.min_score,
    c.nms_threshold,
    c.plus_one,
    c.overlap_weight,
    c.frame_weighting,
  ) == (0.6, 10, 0.5, None, 15, 0.005, 0.3, True, 0.0, 'uniform')


# ----------------------------------------------------------------------------------
# Video-AP of linked tubes.


def _gt(label, track):
  return tubes.ground_truth_tube(label, np.arange(len(track)), track)


def test_video_ap_two_actors_both_found_or_one():
  starts, frames, boxes, scores, p, q = _two_crossing_actors(4, 2)
  gt = {'v': [_gt(0, p), _gt(0, q)]}
  both = {'v': tubelets.link_tubelets(frames, boxes, scores)}
  res = video_ap.video_map(both, gt, num_classes=2)
  # Class 0: P (0.9) and Q (0.2) both true positives: AP 1. Class 1 has no ground truth.
  assert res['video_map@0.5'] == pytest.approx(1.0)
  assert res['classes_with_gt'] == [0]
  valid = np.ones(boxes.shape[:2], bool)
  valid[:, 1] = False
  one = {'v': tubelets.link_tubelets(frames, boxes, scores, valid=valid)}
  # Only P: recall 0.5 at precision 1: ACT's trapezoid from (0, 1) to (0.5, 1) = 0.5.
  assert video_ap.video_map(one, gt, num_classes=2)['video_map@0.5'] == pytest.approx(0.5)


def test_video_ap_ranks_linked_tubes_by_acts_tube_score():
  # Y (on the ground truth): tubelets (K = 2, stride 1) scored 0.9, 0.06, 0.9: ACT's
  # score 0.62, while its per-frame scores (0.9, 0.48, 0.48, 0.9) average 0.69. X
  # (elsewhere) scores 0.65 throughout. ACT ranks X (0.65) before Y (0.62): precision
  # 1/2 at recall 1, AP = (1 - 0) * (0 + 0.5) / 2 = 0.25 (by the frame mean: AP 1).
  frames = tubelets.tubelet_frames([0, 1, 2], 2, 4)
  y = np.stack([_box(10.0 * f) for f in range(4)])
  x = np.stack([_box(10.0 * f, y=300) for f in range(4)])
  boxes = np.stack([np.stack([y[f], x[f]]) for f in frames])
  scores = np.array([[0.9, 0.65], [0.06, 0.65], [0.9, 0.65]])[:, :, None]
  found = tubelets.link_tubelets(frames, boxes, scores, tubelets.TubeletLinkingConfig(min_length=4))
  assert [round(t.score, 9) for t in found] == [0.65, 0.62]
  assert np.mean(found[1].scores) == pytest.approx(0.69)
  res = video_ap.video_map({'v': found}, {'v': [_gt(0, y)]}, num_classes=1)
  assert res['video_map@0.5'] == pytest.approx(0.25)


# ----------------------------------------------------------------------------------
# Frame detections and frame-AP.


@pytest.mark.parametrize('block', [tubelets.FRAME_BLOCK, 5], ids=['one_block', 'blocks_of_5'])
def test_frame_detections_match_act_reference_on_random_videos(block, monkeypatch):
  # Blocks of 5 frames: the clips at a block's edge give rows to both blocks.
  monkeypatch.setattr(tubelets, 'FRAME_BLOCK', block)
  rng = np.random.default_rng(3)
  for trial, (k, stride) in enumerate([(1, 1), (3, 1), (4, 2), (3, 3), (2, 1), (5, 1)]):
    num_frames = 24
    starts, frames, boxes, scores = _random_video(rng, num_frames, k, stride, num_classes=3)
    min_score = 0.2 if trial % 2 else 0.0
    det = tubelets.frame_detections(frames, boxes, scores, min_score=min_score)
    assert np.all(np.diff(det.frames) >= 0)  # rows by frame
    # ACT's per-start-frame detections: one row per (tubelet, class) above the cut.
    dets_by_start = {}
    for s, f0 in enumerate(starts):
      rows = [
        np.concatenate([[c, scores[s, n, c]], boxes[s, n].reshape(-1)])
        for c in range(3)
        for n in range(boxes.shape[1])
        if scores[s, n, c] >= min_score
      ]
      dets_by_start[int(f0)] = np.array(rows).reshape(-1, 2 + 4 * k)
    ref = _ref_load_frame_detections(list(starts), k, dets_by_start, 3, num_frames)
    mine = sorted(
      (int(f), c, float(det.scores[d, c]), tuple(det.boxes[d]))
      for d, f in enumerate(det.frames)
      for c in range(3)
      if det.valid[d, c]
    )
    theirs = sorted((int(r[1]), int(r[2]), float(r[3]), tuple(r[4:8])) for r in ref)
    assert mine == theirs, trial
    # Ground truth: the actors' true boxes are unknown here; take some detections'
    # boxes shifted a little, with random labels, as annotations.
    pick = rng.choice(len(det.frames), size=min(12, len(det.frames)), replace=False)
    gt_labels = rng.integers(0, 3, len(pick))
    gt_boxes = det.boxes[pick] + np.round(rng.normal(0, 4, (len(pick), 4)))
    gt_frames = det.frames[pick]
    res = frame_ap.frame_map(
      frame_ap.frame_keys(np.zeros(len(det.frames)), det.frames),
      det.scores,
      det.boxes,
      frame_ap.frame_keys(np.zeros(len(pick)), gt_frames),
      gt_labels,
      gt_boxes,
      num_classes=3,
      protocol='act',
      frame_sizes=(1, 1),
      det_valid=det.valid,
    )
    gt_tubes = {}
    for f, lab, b in zip(gt_frames, gt_labels, gt_boxes):
      gt_tubes.setdefault(int(lab), []).append(np.concatenate([[f], b])[None])
    for c in range(3):
      if c in gt_tubes:
        assert res['per_class_ap'][c] == pytest.approx(_ref_frame_ap(ref, gt_tubes, c)), trial


def _frame_setup(found_boxes, found_scores):
  """Two frames, two class-0 actors each (A at x=0, B at x=100); K = 1 tubelets."""
  gt_boxes = np.stack([_box(0), _box(100), _box(0, y=60), _box(100, y=60)])
  gt_frames = np.array([0, 0, 1, 1])
  frames = np.array([[0], [1]])
  boxes = np.asarray(found_boxes, np.float64)[:, :, None]
  scores = np.asarray(found_scores, np.float64)[:, :, None]
  det = tubelets.frame_detections(frames, boxes, scores)
  res = frame_ap.frame_map(
    det.frames,
    det.scores,
    det.boxes,
    gt_frames,
    np.zeros(4, int),
    gt_boxes,
    num_classes=1,
    protocol='act',
    frame_sizes=(1, 1),
    det_valid=det.valid,
  )
  return det, res['per_class_ap'][0]


def test_frame_ap_several_actors_per_frame():
  a0, b0, a1, b1 = _box(0), _box(100), _box(0, y=60), _box(100, y=60)
  _, ap = _frame_setup([[a0, b0], [a1, b1]], [[0.9, 0.8], [0.7, 0.6]])
  assert ap == pytest.approx(1.0)
  # Only actor A found: recall 0.5 at precision 1: trapezoid (0.5 - 0) * (1 + 1) / 2.
  far = _box(300, y=200)
  _, ap = _frame_setup([[a0, far], [a1, far]], [[0.9, 0.0], [0.8, 0.0]])
  assert ap == pytest.approx(0.5)
  # Ranked: A0 TP (0.9), a false positive (0.8), A1 TP (0.7): precision 1, 1/2, 2/3 at
  # recall 1/4, 1/4, 1/2: AP = 1/4 * (1 + 1) / 2 + 0 + 1/4 * (1/2 + 2/3) / 2 = 19/48.
  _, ap = _frame_setup([[a0, far], [a1, far]], [[0.9, 0.8], [0.7, 0.0]])
  assert ap == pytest.approx(19 / 48)


def test_pairs_suppressed_by_a_class_nms_do_not_count_for_that_class():
  # Two class-0 actors 16 px apart: their boxes overlap at IoU 24*50 / (4000 - 1200) =
  # 3/7 > 0.3, so ACT's per-frame NMS keeps only the higher-scored one per class.
  g1, g2 = _box(0), _box(16)
  frames = np.array([[0]])
  boxes = np.stack([g1, g2])[None, :, None]
  scores = np.array([[[0.9, 0.2], [0.6, 0.7]]])  # class 0 prefers g1, class 1 g2
  det = tubelets.frame_detections(frames, boxes, scores)
  np.testing.assert_array_equal(det.valid, [[True, False], [False, True]])
  args = (det.frames, det.scores, det.boxes, np.array([0, 0]), np.array([0, 0]), np.stack([g1, g2]))
  kwargs = dict(num_classes=2, protocol='act', frame_sizes=(1, 1))
  # Class 0 keeps only g1's row: recall 1/2 at precision 1, AP 0.5.
  assert frame_ap.frame_map(*args, det_valid=det.valid, **kwargs)['per_class_ap'][0] == 0.5
  # Without the mask the suppressed row (class-0 score 0.6) would find g2: AP 1.
  assert frame_ap.frame_map(*args, **kwargs)['per_class_ap'][0] == 1.0
  with pytest.raises(ValueError, match='det_valid'):
    frame_ap.frame_map(*args, det_valid=det.valid[:, :1], **kwargs)


def test_frame_detections_in_blocks_are_the_same_rows_in_the_same_order(monkeypatch):
  """Blocks only bound memory: a video in blocks of 4 frames (clips of K = 5 spanning two
  or three blocks) gives the rows of one block, in the same order (ties included)."""
  rng = np.random.default_rng(7)
  _, frames, boxes, scores = _random_video(rng, 30, 5, 2, num_classes=3)
  scores = np.round(scores, 1)  # ties, kept in row order
  whole = tubelets.frame_detections(frames, boxes, scores, min_score=0.1)
  monkeypatch.setattr(tubelets, 'FRAME_BLOCK', 4)
  blocks = tubelets.frame_detections(frames, boxes, scores, min_score=0.1)
  assert len(whole.frames) > 30
  for a, b in zip(whole, blocks):
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype


def test_frame_detections_min_score_and_continuous_iou():
  g1, g2 = _box(0), _box(16)
  frames = np.array([[0]])
  boxes = np.stack([g1, g2])[None, :, None]
  det = tubelets.frame_detections(frames, boxes, np.array([[[0.9], [0.05]]]), min_score=0.1)
  np.testing.assert_array_equal(det.valid, [[True]])
  # Normalized boxes with the continuous IoU: 0.16 / (0.4 * 2 - 0.24) ... 0.24/0.56 > 0.3.
  det = tubelets.frame_detections(
    frames, np.array([[[[0, 0, 0.4, 0.5]], [[0.16, 0, 0.56, 0.5]]]]), np.array([[[0.9], [0.6]]]),
    plus_one=False,
  )  # fmt: skip
  np.testing.assert_array_equal(det.valid, [[True]])
  det = tubelets.frame_detections(frames, boxes[:, :0], np.zeros((1, 0, 1)))
  assert det.frames.shape == (0,) and det.scores.shape == (0, 1) and det.valid.shape == (0, 1)
