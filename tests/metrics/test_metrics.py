"""Tests of the numpy metrics against hand-built cases and independent references.

The AP references (VOC devkit, ACT's `frameAP` / `pr_to_ap` / `iou2d`) are deliberately
plain per-detection loops written from the published algorithms (no vectorization).
"""

import math

import numpy as np
import pytest

from stconsist_jax.core import boxes
from stconsist_jax.metrics import frame_ap
from stconsist_jax.metrics import classification
from stconsist_jax.evaluation import description
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import videos


# ----------------------------------------------------------------------------------
# Independent references.


def _ref_iou(a, b):
  """IoU of two corner boxes, written out by hand."""
  ax1, ay1, ax2, ay2 = a
  bx1, by1, bx2, by2 = b
  iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
  ih = max(0.0, min(ay2, by2) - max(ay1, by1))
  inter = iw * ih
  area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
  area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
  union = area_a + area_b - inter
  return inter / union if union > 0 else 0.0


def _ref_ap(dets, gts, thr=0.5):
  """Straightforward VOC AP: dets = [(frame, score, box)], gts = [(frame, box)].

  Sorts by score (stable), greedily matches each detection to the best-IoU ground truth
  in its frame, and integrates the precision envelope at each true positive's recall.
  """
  if not gts:
    return float('nan')
  dets = sorted(dets, key=lambda d: -d[1])
  used = [False] * len(gts)
  tps = []
  for frame, _, box in dets:
    best, best_iou = -1, -1.0
    for j, (gframe, gbox) in enumerate(gts):
      if gframe == frame:
        iou = _ref_iou(box, gbox)
        if iou > best_iou:
          best, best_iou = j, iou
    if best >= 0 and best_iou >= thr and not used[best]:
      used[best] = True
      tps.append(1)
    else:
      tps.append(0)
  precisions, recalls = [], []
  tp = fp = 0
  for t in tps:
    tp += t
    fp += 1 - t
    precisions.append(tp / (tp + fp))
    recalls.append(tp / len(gts))
  # Area under the envelope: sum over recall steps of the max precision to the right.
  ap, prev_r = 0.0, 0.0
  for i, r in enumerate(recalls):
    if r > prev_r:
      ap += (r - prev_r) * max(precisions[i:])
      prev_r = r
  return ap


def _ap(dets, gts):
  det_frames = np.array([d[0] for d in dets], np.int64)
  det_scores = np.array([d[1] for d in dets], np.float64)
  det_boxes = np.array([d[2] for d in dets], np.float64).reshape(-1, 4)
  gt_frames = np.array([g[0] for g in gts], np.int64)
  gt_boxes = np.array([g[1] for g in gts], np.float64).reshape(-1, 4)
  return frame_ap.average_precision(det_frames, det_scores, det_boxes, gt_frames, gt_boxes)


A = (0.1, 0.1, 0.4, 0.4)
B = (0.5, 0.5, 0.9, 0.9)
A_NEAR = (0.12, 0.1, 0.42, 0.4)  # IoU with A > 0.5
FAR = (0.6, 0.0, 0.7, 0.1)  # overlaps neither


# ----------------------------------------------------------------------------------
# AP hand-built cases.


def test_ap_perfect():
  gts = [(0, A), (1, B), (2, A)]
  dets = [(0, 0.9, A), (1, 0.8, B), (2, 0.7, A_NEAR)]
  assert _ap(dets, gts) == pytest.approx(1.0)
  assert _ref_ap(dets, gts) == pytest.approx(1.0)


def test_ap_all_wrong():
  gts = [(0, A), (1, B)]
  dets = [(0, 0.9, FAR), (1, 0.8, A), (2, 0.7, A)]  # wrong place / wrong frame
  assert _ap(dets, gts) == 0.0


def test_ap_duplicates_are_false_positives():
  gts = [(0, A), (1, B)]
  # The second detection on frame 0 duplicates the first: FP. Ranks: TP, FP, TP.
  dets = [(0, 0.9, A), (0, 0.8, A_NEAR), (1, 0.7, B)]
  # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3.
  expected = 0.5 + 0.5 * (2 / 3)
  assert _ap(dets, gts) == pytest.approx(expected)
  assert _ref_ap(dets, gts) == pytest.approx(expected)


def test_ap_missed_box_caps_recall():
  gts = [(0, A), (1, B), (2, A), (3, B)]
  dets = [(0, 0.9, A), (1, 0.8, B), (2, 0.7, A)]  # frame 3 never detected
  assert _ap(dets, gts) == pytest.approx(0.75)


def test_ap_ties_keep_input_order():
  gts = [(0, A)]
  tp_first = [(0, 0.5, A), (1, 0.5, B)]
  fp_first = [(1, 0.5, B), (0, 0.5, A)]
  assert _ap(tp_first, gts) == pytest.approx(1.0)
  assert _ap(fp_first, gts) == pytest.approx(0.5)
  assert _ref_ap(fp_first, gts) == pytest.approx(0.5)


def test_ap_no_ground_truth_is_nan():
  assert math.isnan(_ap([(0, 0.5, A)], []))


def test_ap_matches_reference_on_random_cases():
  rng = np.random.default_rng(0)
  for trial in range(30):
    n_frames = int(rng.integers(1, 6))
    gts = []
    for f in range(n_frames):
      for _ in range(int(rng.integers(0, 3))):
        xy = rng.uniform(0, 0.6, 2)
        wh = rng.uniform(0.1, 0.4, 2)
        gts.append((f, tuple(np.concatenate([xy, xy + wh]))))
    dets = []
    for _ in range(int(rng.integers(0, 10))):
      f = int(rng.integers(0, n_frames))
      if gts and rng.uniform() < 0.6:
        base = np.array(gts[int(rng.integers(len(gts)))][1])
        box = base + rng.normal(0, 0.05, 4)
      else:
        xy = rng.uniform(0, 0.6, 2)
        box = np.concatenate([xy, xy + rng.uniform(0.1, 0.4, 2)])
      # Coarse scores make ties frequent.
      dets.append((f, float(np.round(rng.uniform(), 1)), tuple(box)))
    got, ref = _ap(dets, gts), _ref_ap(dets, gts)
    if math.isnan(ref):
      assert math.isnan(got), trial
    else:
      assert got == pytest.approx(ref, abs=1e-12), trial


def test_voc_ap_is_all_point_interpolation():
  # precision 1, 0.5, 0.667 at recall 0.5, 0.5, 1.0 -> envelope 1 then 0.667.
  assert frame_ap.voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(
    0.5 + 0.5 * 2 / 3
  )
  # The 11-point VOC2007 value would be (6 * 1 + 5 * 2/3) / 11 = 0.8485; not this.
  assert frame_ap.voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) != pytest.approx(
    (6 + 5 * 2 / 3) / 11
  )


def test_frame_map_over_classes_with_ground_truth():
  # Three classes; class 2 has no GT and must not count.
  det_frames = np.array([0, 1])
  det_boxes = np.array([A, B])
  det_scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
  gt_frames = np.array([0, 1])
  gt_labels = np.array([0, 1])
  gt_boxes = np.array([A, B])
  out = frame_ap.frame_map(
    det_frames, det_scores, det_boxes, gt_frames, gt_labels, gt_boxes, num_classes=3
  )
  # Class 0: dets ranked (f0 TP 0.9, f1 FP 0.2) -> AP 1. Class 1: (f1 TP 0.8, f0 FP) -> 1.
  assert out['classes_with_gt'] == [0, 1]
  np.testing.assert_allclose(out['per_class_ap'][:2], [1.0, 1.0])
  assert math.isnan(out['per_class_ap'][2])
  assert out['frame_map'] == pytest.approx(1.0)
  # Swap the boxes: class 0's only detection on frame 0 is now wrong.
  out = frame_ap.frame_map(
    det_frames, det_scores, det_boxes[::-1], gt_frames, gt_labels, gt_boxes, num_classes=3
  )
  assert out['frame_map'] == pytest.approx(0.0)


def test_frame_keys_distinguish_videos():
  keys = frame_ap.frame_keys(np.array([0, 1, 1]), np.array([5, 5, 6]))
  assert len(set(keys.tolist())) == 3


# ----------------------------------------------------------------------------------
# IoU.


@pytest.mark.parametrize(
  'a,b,expected',
  [
    ((0, 0, 1, 1), (2, 2, 1, 1), 0.0),  # no overlap
    ((0, 0, 1, 1), (1, 0, 1, 1), 0.0),  # touching edge
    ((0, 0, 1, 1), (0.25, 0.25, 0.5, 0.5), 0.25),  # containment
    ((0, 0, 1, 1), (0, 0, 1, 1), 1.0),  # identical
    ((0, 0, 1, 1), (0.5, 0, 1, 1), 0.5 / 1.5),  # half shifted
    ((0.2, 0.2, 0, 0), (0, 0, 1, 1), 0.0),  # zero-area inside
    ((0.2, 0.2, 0, 0), (0.2, 0.2, 0, 0), 0.0),  # two zero-area boxes: no NaN
  ],
)
def test_box_iou_edge_cases(a, b, expected):
  got = classification.box_iou(np.array([a], float), np.array([b], float))
  assert got.shape == (1,)
  assert got[0] == pytest.approx(expected)
  ref = _ref_iou(
    boxes.xywh_to_corners(np.array(a, float)), boxes.xywh_to_corners(np.array(b, float))
  )
  assert got[0] == pytest.approx(ref)


def test_mean_iou_only_over_clips_with_a_target():
  pred = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], float)
  target = np.array([[0, 0, 1, 1], [5, 5, 1, 1], [0.25, 0.25, 0.5, 0.5]], float)
  assert classification.mean_iou(pred, target, [True, False, True]) == pytest.approx(0.625)
  assert classification.mean_iou(
    pred, target, [True, True, True], valid=[False, True, True]
  ) == pytest.approx(0.125)
  assert math.isnan(classification.mean_iou(pred, target, [False] * 3))


# ----------------------------------------------------------------------------------
# Classification.


def test_topk_and_accuracy_with_valid_mask():
  scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
  labels = np.array([1, 1, 0, 2])
  # top-1 correct: row 0 only; top-2: rows 0, 1.
  assert classification.accuracy(scores, labels, 1) == pytest.approx(0.25)
  assert classification.accuracy(scores, labels, 2) == pytest.approx(0.5)
  assert classification.accuracy(scores, labels, 3) == pytest.approx(1.0)
  valid = np.array([True, True, False, False])
  assert classification.accuracy(scores, labels, 1, valid) == pytest.approx(0.5)
  assert math.isnan(classification.accuracy(scores, labels, 1, np.zeros(4, bool)))


def test_video_accuracy_averages_clip_softmax():
  # Video 7: clips vote 0 (weakly, twice) and 1 (strongly, once); the mean says 1.
  probs = np.array([[0.55, 0.45], [0.55, 0.45], [0.0, 1.0], [0.9, 0.1], [0.3, 0.7]])
  labels = np.array([1, 1, 1, 0, 0])
  vids = np.array([7, 7, 7, 3, 3])
  valid = np.array([True, True, True, True, False])  # padding row ignored
  vid_ids, mean_probs, vlabels = classification.video_predictions(probs, labels, vids, valid)
  np.testing.assert_array_equal(vid_ids, [3, 7])
  np.testing.assert_allclose(mean_probs, [[0.9, 0.1], [1.1 / 3, 1.9 / 3]])
  np.testing.assert_array_equal(vlabels, [0, 1])
  assert classification.video_accuracy(probs, labels, vids, valid) == 1.0
  # Majority-of-clips voting would say 0 for video 7: accuracy 0.5.
  with pytest.raises(ValueError, match='different labels'):
    classification.video_accuracy(probs, np.array([1, 0, 1, 0, 0]), vids)


def test_confusion_matrix_and_per_class_accuracy():
  labels = np.array([0, 0, 1, 2, 2, 2])
  preds = np.array([0, 1, 1, 2, 0, 2])
  cm = classification.confusion_matrix(labels, preds, 4)
  ref = np.zeros((4, 4), int)
  for t, p in zip(labels, preds):
    ref[t, p] += 1
  np.testing.assert_array_equal(cm, ref)
  acc = classification.per_class_accuracy(cm)
  np.testing.assert_allclose(acc[:3], [0.5, 1.0, 2 / 3])
  assert math.isnan(acc[3])
  with pytest.raises(ValueError, match='labels must lie'):
    classification.confusion_matrix(np.array([5]), np.array([0]), 4)


def test_class_index_map_by_name():
  names = ['ApplyEyeMakeup'] + list(reversed(classes.UCF24_CLASSES))
  idx = frame_ap.class_index_map(names)
  assert [names[i] for i in idx] == list(classes.UCF24_CLASSES)
  with pytest.raises(ValueError, match='Basketball'):
    frame_ap.class_index_map(['ApplyEyeMakeup'])


def test_class_index_map_matches_real_class_list(ucf24_dir):
  names = (ucf24_dir / 'classes.txt').read_text().split()
  assert tuple(names) == classes.UCF24_CLASSES


def test_frame_detection_scores_softmax_over_all_classes():
  logits = np.array([[2.0, 0.0, 1.0, -1.0]])
  p = np.exp(logits) / np.exp(logits).sum()
  got = frame_ap.frame_detection_scores(logits, np.array([2, 0]))
  np.testing.assert_allclose(got, p[:, [2, 0]])


# ----------------------------------------------------------------------------------
# ACT's frameAP rule: independent references written from ACT.py / ACT_utils.py.


def _ref_iou_plus_one(a, b):
  """ACT's `iou2d` for two pixel boxes: areas and intersection counted with +1."""
  ax1, ay1, ax2, ay2 = a
  bx1, by1, bx2, by2 = b
  w = max(0.0, min(ax2 + 1, bx2 + 1) - max(ax1, bx1))
  h = max(0.0, min(ay2 + 1, by2 + 1) - max(ay1, by1))
  inter = w * h
  area_a = (ax2 - ax1 + 1) * (ay2 - ay1 + 1)
  area_b = (bx2 - bx1 + 1) * (by2 - by1 + 1)
  return inter / (area_a + area_b - inter)


def _ref_pr_to_ap(pr):
  """ACT's `pr_to_ap` over a list of (precision, recall) rows, the first (1, 0)."""
  ap = 0.0
  for i in range(1, len(pr)):
    ap += (pr[i][1] - pr[i - 1][1]) * (pr[i][0] + pr[i - 1][0]) * 0.5
  return ap


def _ref_act_frame_ap(dets, gts, thr=0.5):
  """ACT's `frameAP` for one class: dets = [(frame, score, box)], gts = [(frame, box)].

  Python's sort is stable, so equal scores keep their input order.
  """
  if not gts:
    return float('nan')
  gt = {}
  for frame, box in gts:
    gt.setdefault(frame, []).append(box)
  fn, fp, tp = len(gts), 0, 0
  pr = [(1.0, 0.0)]
  for frame, _, box in sorted(dets, key=lambda d: -d[1]):
    positive = False
    if frame in gt:
      ious = [_ref_iou_plus_one(g, box) for g in gt[frame]]
      amax = ious.index(max(ious))
      if ious[amax] >= thr:
        positive = True
        del gt[frame][amax]
        if not gt[frame]:
          del gt[frame]
    if positive:
      tp += 1
      fn -= 1
    else:
      fp += 1
    pr.append((tp / (tp + fp), tp / (tp + fn)))
  return _ref_pr_to_ap(pr)


def _act_ap(dets, gts, thr=0.5):
  det_frames = np.array([d[0] for d in dets], np.int64)
  det_scores = np.array([d[1] for d in dets], np.float64)
  det_boxes = np.array([d[2] for d in dets], np.float64).reshape(-1, 4)
  gt_frames = np.array([g[0] for g in gts], np.int64)
  gt_boxes = np.array([g[1] for g in gts], np.float64).reshape(-1, 4)
  return frame_ap.act_average_precision(det_frames, det_scores, det_boxes, gt_frames, gt_boxes, thr)


# Pixel boxes for the ACT cases.
PA = (0, 0, 99, 99)
PA_NEAR = (5, 0, 104, 99)  # +1 IoU with PA: 95 / 105
PB = (150, 100, 249, 199)
PFAR = (300, 0, 319, 19)


def test_plus_one_iou_hand_values():
  # Continuous: 2 / (4 + 4 - 2) = 1/3. Pixel-inclusive: 2*3 / (9 + 9 - 6) = 1/2.
  a, b = np.array([[0, 0, 2, 2]], float), np.array([[1, 0, 3, 2]], float)
  assert boxes.pairwise_iou_corners(a, b)[0, 0] == pytest.approx(1 / 3)
  assert boxes.pairwise_iou_corners(a, b, plus_one=True)[0, 0] == pytest.approx(0.5)
  assert _ref_iou_plus_one(a[0], b[0]) == pytest.approx(0.5)
  # Touching boxes overlap by one pixel column under the +1 convention.
  c, d = np.array([[0, 0, 9, 9]], float), np.array([[9, 0, 18, 9]], float)
  assert boxes.pairwise_iou_corners(c, d)[0, 0] == 0.0
  assert boxes.pairwise_iou_corners(c, d, plus_one=True)[0, 0] == pytest.approx(10 / 190)


def test_act_ap_trapezoid_from_precision_one():
  # A false positive ranked first: curve (0, 1) -> (0, 0) -> (1, 0.5).
  gts = [(0, PA)]
  dets = [(1, 0.9, PA), (0, 0.8, PA)]
  assert _act_ap(dets, gts) == pytest.approx(0.25)
  assert _ref_act_frame_ap(dets, gts) == pytest.approx(0.25)
  # The VOC envelope credits precision 0.5 over the whole recall range instead.
  assert _ap(dets, gts) == pytest.approx(0.5)
  np.testing.assert_allclose(
    frame_ap.act_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]),
    0.5 * (1 + 1) / 2 + 0.0 + 0.5 * (0.5 + 2 / 3) / 2,
  )
  assert frame_ap.act_ap([], []) == 0.0


def test_act_ap_duplicates_are_false_positives():
  gts = [(0, PA), (1, PB)]
  dets = [(0, 0.9, PA), (0, 0.8, PA_NEAR), (1, 0.7, PB)]
  # Points (1, 0), (1, 1/2), (1/2, 1/2), (2/3, 1): 1/2 + 0 + 1/2 * (1/2 + 2/3) / 2.
  expected = 0.5 + 0.5 * (0.5 + 2 / 3) / 2
  assert _act_ap(dets, gts) == pytest.approx(expected)
  assert _ref_act_frame_ap(dets, gts) == pytest.approx(expected)


def test_act_and_voc_differ_on_two_actors_in_a_frame():
  a, b = (0, 0, 99, 99), (30, 0, 129, 99)
  between = (10, 0, 109, 99)  # +1 IoU: 0.818 with a, 0.667 with b
  gts = [(0, a), (0, b)]
  dets = [(0, 0.9, a), (0, 0.8, between)]
  # ACT: `a` is gone, so `between` is compared with `b` alone and matches it.
  assert _act_ap(dets, gts) == pytest.approx(1.0)
  assert _ref_act_frame_ap(dets, gts) == pytest.approx(1.0)
  # VOC: `between`'s best box is the matched `a`: a false positive.
  assert _ap(dets, gts) == pytest.approx(0.5)


def test_act_ap_ties_keep_input_order():
  gts = [(0, PA)]
  assert _act_ap([(0, 0.5, PA), (1, 0.5, PB)], gts) == pytest.approx(1.0)
  assert _act_ap([(1, 0.5, PB), (0, 0.5, PA)], gts) == pytest.approx(0.25)
  assert _ref_act_frame_ap([(1, 0.5, PB), (0, 0.5, PA)], gts) == pytest.approx(0.25)


def test_act_ap_missed_boxes_and_no_ground_truth():
  gts = [(0, PA), (1, PB), (2, PA), (3, PB)]
  dets = [(0, 0.9, PA), (1, 0.8, PB), (2, 0.7, PFAR)]
  # Precision 1 up to recall 1/2, then an FP: area 1/2.
  assert _act_ap(dets, gts) == pytest.approx(0.5)
  assert math.isnan(_act_ap(dets, []))
  assert _act_ap([], gts) == 0.0


def test_act_ap_matches_reference_on_random_cases():
  rng = np.random.default_rng(1)
  for trial in range(60):
    n_frames = int(rng.integers(1, 5))
    gts = []
    for f in range(n_frames):
      for _ in range(int(rng.integers(0, 4))):
        xy = rng.integers(0, 200, 2)
        wh = rng.integers(10, 100, 2)
        gts.append((f, tuple(float(v) for v in np.concatenate([xy, xy + wh]))))
    dets = []
    for _ in range(int(rng.integers(0, 12))):
      f = int(rng.integers(0, n_frames))
      if gts and rng.uniform() < 0.7:
        base = np.array(gts[int(rng.integers(len(gts)))][1])
        box = base + rng.integers(-15, 16, 4)
      else:
        xy = rng.integers(0, 200, 2)
        box = np.concatenate([xy, xy + rng.integers(10, 100, 2)])
      dets.append((f, float(np.round(rng.uniform(), 1)), tuple(float(v) for v in box)))
    for thr in (0.3, 0.5):
      got, ref = _act_ap(dets, gts, thr), _ref_act_frame_ap(dets, gts, thr)
      if math.isnan(ref):
        assert math.isnan(got), trial
      else:
        assert got == pytest.approx(ref, abs=1e-12), (trial, thr)


def test_frame_map_act_converts_normalized_boxes_to_pixels():
  w, h = videos.UCF101_FRAME_SIZE[1], videos.UCF101_FRAME_SIZE[0]
  gt_px, det_px = np.array([[0, 0, 2, 2]], float), np.array([[1, 0, 3, 2]], float)
  scale = np.array([w, h, w, h], float)
  gt, det = gt_px / scale, det_px / scale
  args = (np.array([7]), np.array([[1.0]]), det, np.array([7]), np.array([0]), gt)
  # In pixels of the 240x320 frame the +1 IoU is 0.5; the continuous one 1/3.
  act = frame_ap.frame_map(*args, num_classes=1, iou_threshold=0.45, protocol='act')
  voc = frame_ap.frame_map(*args, num_classes=1, iou_threshold=0.45)
  assert act['frame_map'] == pytest.approx(1.0) and act['protocol'] == 'act'
  assert voc['frame_map'] == 0.0 and voc['protocol'] == 'voc'
  # On a 10x finer pixel grid the same normalized boxes are 21 px wide: +1 IoU 0.355.
  fine = frame_ap.frame_map(
    *args, num_classes=1, iou_threshold=0.45, protocol='act', frame_sizes=(10 * h, 10 * w)
  )
  assert fine['frame_map'] == 0.0
  per_row = frame_ap.frame_map(
    *args,
    num_classes=1,
    iou_threshold=0.45,
    protocol='act',
    frame_sizes=np.array([[h, w]]),
    gt_frame_sizes=np.array([[h, w]]),
  )
  assert per_row['frame_map'] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='gt_frame_sizes'):
    frame_ap.frame_map(*args, num_classes=1, protocol='act', frame_sizes=np.array([[h, w]]))
  with pytest.raises(ValueError, match='protocol'):
    frame_ap.frame_map(*args, num_classes=1, protocol='coco')


def test_frame_map_act_class_without_ground_truth_is_left_out():
  scale = np.array([320, 240, 320, 240], float)
  det_boxes = np.array([PA, PB], float) / scale
  det_scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
  out = frame_ap.frame_map(
    np.array([0, 1]),
    det_scores,
    det_boxes,
    np.array([0, 1]),
    np.array([0, 1]),
    np.array([PA, PB], float) / scale,
    num_classes=3,
    protocol='act',
  )
  assert out['classes_with_gt'] == [0, 1]
  np.testing.assert_allclose(out['per_class_ap'][:2], [1.0, 1.0])
  assert math.isnan(out['per_class_ap'][2])
  assert out['frame_map'] == pytest.approx(1.0)


def test_frame_map_act_matches_reference_per_class():
  rng = np.random.default_rng(2)
  n, num_classes = 40, 3
  det_frames = rng.integers(0, 10, n)
  det_boxes_px = np.concatenate([rng.integers(0, 200, (n, 2)), np.zeros((n, 2))], 1)
  det_boxes_px[:, 2:] = det_boxes_px[:, :2] + rng.integers(20, 100, (n, 2))
  det_scores = np.round(rng.uniform(size=(n, num_classes)), 2)
  gt_idx = rng.choice(n, 15, replace=False)
  gt_frames, gt_labels = det_frames[gt_idx], rng.integers(0, num_classes, 15)
  gt_boxes_px = det_boxes_px[gt_idx] + rng.integers(-10, 11, (15, 4))
  scale = np.array([320, 240, 320, 240], float)
  out = frame_ap.frame_map(
    det_frames,
    det_scores,
    det_boxes_px / scale,
    gt_frames,
    gt_labels,
    gt_boxes_px / scale,
    num_classes=num_classes,
    protocol='act',
  )
  for c in range(num_classes):
    dets = [
      (int(f), float(s), tuple(b)) for f, s, b in zip(det_frames, det_scores[:, c], det_boxes_px)
    ]
    gts = [(int(f), tuple(b)) for f, b, lab in zip(gt_frames, gt_boxes_px, gt_labels) if lab == c]
    ref = _ref_act_frame_ap(dets, gts)
    if math.isnan(ref):
      assert math.isnan(out['per_class_ap'][c])
    else:
      assert out['per_class_ap'][c] == pytest.approx(ref, abs=1e-9), c


def test_normalized_to_pixels():
  boxes = np.array([[0.5, 0.25, 1.0, 1.0], [0.0, 0.0, 0.1, 0.5]])
  np.testing.assert_allclose(
    classification.normalized_to_pixels(boxes), [[160, 60, 320, 240], [0, 0, 32, 120]]
  )
  np.testing.assert_allclose(
    classification.normalized_to_pixels(boxes, np.array([[100, 200], [10, 20]])),
    [[100, 25, 200, 100], [0, 0, 2, 5]],
  )
  with pytest.raises(ValueError, match='frame_sizes'):
    classification.normalized_to_pixels(boxes, np.ones((3, 2)))
  with pytest.raises(ValueError, match='positive'):
    classification.normalized_to_pixels(boxes, (0, 320))


def test_box_iou_is_row_wise_and_matches_reference():
  rng = np.random.default_rng(3)
  a = np.concatenate([rng.uniform(0, 1, (50, 2)), rng.uniform(0, 0.5, (50, 2))], 1)
  b = np.concatenate([rng.uniform(0, 1, (50, 2)), rng.uniform(0, 0.5, (50, 2))], 1)
  got = classification.box_iou(a, b)
  ref = [_ref_iou(boxes.xywh_to_corners(x), boxes.xywh_to_corners(y)) for x, y in zip(a, b)]
  np.testing.assert_allclose(got, ref, atol=1e-12)
  assert classification.box_iou(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0,)
  with pytest.raises(ValueError, match='box_iou'):
    classification.box_iou(a, b[:3])


def test_protocol_names_the_frame_map_rule():
  voc = description.protocol(8, 112, 10, 101)['frame_map']
  act = description.protocol(8, 112, 10, 101, frame_map_protocol='act')['frame_map']
  assert 'VOC devkit rule' in voc and 'ACT' not in voc
  assert 'ACT frameAP rule' in act and '+1' in act
  with pytest.raises(ValueError, match='frame_map_protocol'):
    description.protocol(8, 112, 10, 101, frame_map_protocol='x')
