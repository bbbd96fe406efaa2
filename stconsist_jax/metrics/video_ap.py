"""Scoring action tubes: video-AP and video-mAP (ACT's `videoAP`) against ground-truth
tubes, tube-level video accuracy, and the one-box cap of a one-box-per-frame detector.

Plain numpy. Tubes and their spatio-temporal IoU (+1 pixel convention by default,
boxes in pixels) are `stconsist_jax.metrics.tubes`.
"""

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from stconsist_jax.metrics import frame_ap
from stconsist_jax.metrics import tubes as tubes_lib

# IoU thresholds averaged into 'video_map@0.5:0.95', as ACT computes them, unrounded
# (0.5 + 0.05 * 7 is 0.8500000000000001: an IoU of exactly 0.85 does not pass it).
COCO_THRESHOLDS: tuple[float, ...] = tuple(0.5 + 0.05 * i for i in range(10))
# The video-mAP fields of reports: `video_map`'s default thresholds and 0.5:0.95.
VIDEO_MAP_KEYS = ('video_map@0.2', 'video_map@0.5', 'video_map@0.75', 'video_map@0.5:0.95')


def _class_tubes(
  tubes_by_video: Mapping[str, Sequence[tubes_lib.Tube]], label: int
) -> dict[str, list[tubes_lib.Tube]]:
  return {v: [t for t in tubes if t.label == label] for v, tubes in tubes_by_video.items()}


def _ranked(
  detections: Mapping[str, Sequence[tubes_lib.Tube]], label: int
) -> list[tuple[str, tubes_lib.Tube]]:
  """(video, tube) of one class by score, descending; ties: video name, list order."""
  dets = [(v, t) for v in sorted(detections) for t in detections[v] if t.label == label]
  return sorted(dets, key=lambda vt: -vt[1].score)


def _video_ap_curves(
  detections: Mapping[str, Sequence[tubes_lib.Tube]],
  ground_truth: Mapping[str, Sequence[tubes_lib.Tube]],
  label: int,
  thresholds: Sequence[float],
  plus_one: bool,
) -> list[float]:
  """Video AP of one class at each threshold (NaN without ground truth)."""
  gt = {v: tubes for v, tubes in _class_tubes(ground_truth, label).items() if tubes}
  num_gt = sum(len(t) for t in gt.values())
  if num_gt == 0:
    return [float('nan')] * len(thresholds)
  ranked = _ranked(detections, label)
  # IoU of each ranked detection with the ground-truth tubes of its video, once.
  rows = [
    np.array([tubes_lib.spatiotemporal_iou(g, tube, plus_one=plus_one) for g in gt[v]])
    if v in gt
    else None
    for v, tube in ranked
  ]
  aps = []
  for thr in thresholds:
    unmatched = {v: np.ones(len(tubes), bool) for v, tubes in gt.items()}
    tp = np.zeros(len(ranked), np.float64)
    for i, ((v, _), row) in enumerate(zip(ranked, rows)):
      if row is None or not unmatched[v].any():
        continue
      # ACT: the best of the video's still-unmatched tubes (first of equal IoUs).
      cand = np.nonzero(unmatched[v])[0]
      best = cand[int(np.argmax(row[cand]))]
      if row[best] >= thr:
        unmatched[v][best] = False
        tp[i] = 1.0
    aps.append(frame_ap.act_ap(*frame_ap.precision_recall(tp, num_gt)))
  return aps


def video_ap(
  detections: Mapping[str, Sequence[tubes_lib.Tube]],
  ground_truth: Mapping[str, Sequence[tubes_lib.Tube]],
  label: int,
  iou_threshold: float,
  *,
  plus_one: bool = True,
) -> float:
  """Video AP of one class (ACT's `videoAP`).

  The class's detected tubes of all videos are ranked by score, descending (stable:
  ties by video name, then by position in the video's list). Each is compared with
  the class's ground-truth tubes of its video that are still unmatched and takes the
  one of highest `tubes.spatiotemporal_iou` (the first of equal IoUs): a true positive
  at IoU >= `iou_threshold`, which removes that tube, otherwise a false positive (as is
  every tube of a video without ground truth of the class). AP is `frame_ap.act_ap`
  (ACT's `pr_to_ap`: trapezoids from (recall 0, precision 1), no envelope).

  Args:
    detections: video name -> detected tubes (any labels; other classes ignored).
    ground_truth: video name -> ground-truth tubes (any labels).
    label: the class.
    iou_threshold: spatio-temporal IoU criterion.
    plus_one: ACT's +1 pixel IoU (boxes in pixels); False for the continuous IoU.

  Returns:
    The AP, NaN when the class has no ground-truth tube.
  """
  return _video_ap_curves(detections, ground_truth, label, [iou_threshold], plus_one)[0]


def _threshold_key(thr: float) -> str:
  return f'video_map@{thr:g}'


def video_map(
  detections: Mapping[str, Sequence[tubes_lib.Tube]],
  ground_truth: Mapping[str, Sequence[tubes_lib.Tube]],
  num_classes: int,
  thresholds: Sequence[float] = (0.2, 0.5, 0.75),
  *,
  plus_one: bool = True,
) -> dict[str, Any]:
  """Video-mAP at several spatio-temporal IoU thresholds, and over 0.5:0.95.

  Per class and threshold `video_ap`; the mAP is the mean over the classes that have
  ground truth. Classes without a ground-truth tube get AP NaN and are left out of
  the mean (ACT's `videoAP` would divide by zero there, or count AP 0 if the class had
  no detections either; MMAction2's port skips them, as here). 'video_map@0.5:0.95' is
  the mean of the mAPs at 0.5, 0.55, ..., 0.95 (ACT's `videoAP_050_095`).

  Args:
    detections: video name -> detected tubes of all classes (e.g. `tubes.link_video`).
    ground_truth: video name -> ground-truth tubes.
    num_classes: C; every tube label must lie in [0, C).
    thresholds: the single thresholds reported.
    plus_one: ACT's +1 pixel IoU (boxes in pixels); False for the continuous IoU.

  Returns:
    `{'video_map@<thr>': float for each threshold (e.g. 'video_map@0.2'),
      'video_map@0.5:0.95': float, 'per_class_ap': {thr: (C,) float64 array, for the
      given thresholds and 0.5..0.95}, 'classes_with_gt': list of int,
      'num_gt_tubes': (C,) int64, 'num_detections': (C,) int64}`. mAPs are NaN when no
      class has ground truth.
  """
  for name, tubes_by_video in (('detections', detections), ('ground_truth', ground_truth)):
    for v, tubes in tubes_by_video.items():
      for t in tubes:
        if not 0 <= t.label < num_classes:
          raise ValueError(
            f'video_map: a tube of video {v!r} in {name} has label '
            f'{t.label}, outside [0, {num_classes})'
          )
  if plus_one:
    everything = [
      t.boxes for d in (detections, ground_truth) for tubes in d.values() for t in tubes
    ]
    if everything:
      tubes_lib.check_pixel_boxes(np.concatenate(everything), 'video_map')
  all_thresholds = sorted(set(float(t) for t in thresholds) | set(COCO_THRESHOLDS))
  per_class = np.full((num_classes, len(all_thresholds)), np.nan)
  num_gt = np.zeros(num_classes, np.int64)
  num_det = np.zeros(num_classes, np.int64)
  for tubes in ground_truth.values():
    for t in tubes:
      num_gt[t.label] += 1
  for tubes in detections.values():
    for t in tubes:
      num_det[t.label] += 1
  for c in range(num_classes):
    if num_gt[c]:
      per_class[c] = _video_ap_curves(detections, ground_truth, c, all_thresholds, plus_one)
  with_gt = [int(c) for c in np.nonzero(num_gt)[0]]
  maps = np.mean(per_class[with_gt], axis=0) if with_gt else np.full(len(all_thresholds), np.nan)
  by_thr = dict(zip(all_thresholds, maps.tolist()))
  out: dict[str, Any] = {_threshold_key(t): by_thr[float(t)] for t in thresholds}
  out['video_map@0.5:0.95'] = float(np.mean([by_thr[t] for t in COCO_THRESHOLDS]))
  out['per_class_ap'] = {t: per_class[:, i].copy() for i, t in enumerate(all_thresholds)}
  out['classes_with_gt'] = with_gt
  out['num_gt_tubes'] = num_gt
  out['num_detections'] = num_det
  return out


def video_accuracy_from_tubes(
  detections: Mapping[str, Sequence[tubes_lib.Tube]], video_labels: Mapping[str, int]
) -> float:
  """Share of videos whose top tube carries the video's label.

  The predicted class of a video is the label of its highest-scoring tube (the first
  of equal scores in its list); a video without tubes counts as wrong. Videos in
  `detections` but not in `video_labels` are ignored.

  Args:
    detections: video name -> tubes (e.g. `tubes.link_video`).
    video_labels: video name -> class index, the videos scored.

  Returns:
    The accuracy in [0, 1], NaN without videos.
  """
  if not video_labels:
    return float('nan')
  correct = 0
  for v, label in video_labels.items():
    tubes = detections.get(v, ())
    if tubes:
      top = max(range(len(tubes)), key=lambda i: (tubes[i].score, -i))
      correct += int(tubes[top].label == int(label))
  return correct / len(video_labels)


def one_box_cap(gt_boxes_per_frame: Any) -> float:
  """The share of ground-truth boxes a one-box-per-frame detector could ever match.

  A detector that emits one box per frame (scored for every class) matches at most
  one ground-truth box per frame, so on frames with several actors the others are
  missed whatever it does: at most `frames with >= 1 box / boxes` of the boxes can be
  recalled. Under both frame-AP rules that is also the highest frame-AP it can reach
  (all its true positives ranked first give precision 1 up to that recall). Count
  the boxes of one class to cap that class's AP, or of all classes for the whole set.

  Args:
    gt_boxes_per_frame: `(frames,)` non-negative counts of ground-truth boxes per
      frame (frames without boxes may be included, they change nothing).

  Returns:
    The cap in (0, 1], NaN when there is no box.
  """
  counts = np.asarray(gt_boxes_per_frame).reshape(-1)
  if counts.size and (
    not np.issubdtype(counts.dtype, np.integer) and not np.all(counts == np.round(counts))
  ):
    raise ValueError('one_box_cap: box counts must be integers')
  if counts.size and counts.min() < 0:
    raise ValueError(f'one_box_cap: box counts must be >= 0, found {counts.min()}')
  total = counts.sum()
  if total == 0:
    return float('nan')
  return float(np.count_nonzero(counts) / total)
