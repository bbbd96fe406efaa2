"""Frame-AP in plain numpy: per-class frame AP by the VOC devkit rule or ACT's `frameAP`,
frame-mAP over the annotated classes, and the per-frame detection scores it ranks.

Detections are one corner box per frame key (`frame_keys`) scored for every annotated
class (`frame_detection_scores`); see `frame_map` for the two matching rules.
"""

from typing import Any
from collections.abc import Sequence

import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.metrics import classification
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import videos

# Frame-AP matching rules understood by `frame_map` (see `FRAME_AP_FUNCTIONS`).
FRAME_AP_PROTOCOLS: tuple[str, ...] = ('voc', 'act')


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
  """VOC all-point interpolated AP (VOC2010 onwards, not the 11-point VOC2007 one).

  The precision envelope (max precision at any recall >= r) integrated over recall at
  every point where recall changes.
  """
  mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
  mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def act_ap(recall: np.ndarray, precision: np.ndarray) -> float:
  """ACT's `pr_to_ap`: trapezoidal area under the raw precision/recall curve.

  The curve starts at (recall 0, precision 1), followed by one point per ranked
  detection; consecutive points are joined by straight lines (no envelope, no
  interpolation to recall 1). A false positive adds a point at the same recall, so it
  adds no area itself but lowers the precision the next true positive starts from.
  """
  r = np.concatenate([[0.0], np.asarray(recall, np.float64).reshape(-1)])
  p = np.concatenate([[1.0], np.asarray(precision, np.float64).reshape(-1)])
  if r.shape != p.shape:
    raise ValueError(f'act_ap: recall and precision differ in length: {r.size - 1} vs {p.size - 1}')
  return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) * 0.5))


def _ap_inputs(det_frames, det_scores, det_boxes, gt_frames, gt_boxes, fn_name):
  """Flattens and checks the arguments of the per-class AP functions."""
  det_frames = np.asarray(det_frames).reshape(-1)
  det_scores = np.asarray(det_scores, np.float64).reshape(-1)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gt_frames = np.asarray(gt_frames).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  if not det_frames.shape[0] == det_scores.shape[0] == det_boxes.shape[0]:
    raise ValueError(
      f'{fn_name}: {det_frames.shape[0]} detection frames, '
      f'{det_scores.shape[0]} scores and {det_boxes.shape[0]} boxes'
    )
  if gt_frames.shape[0] != gt_boxes.shape[0]:
    raise ValueError(
      f'{fn_name}: {gt_frames.shape[0]} ground-truth frames but {gt_boxes.shape[0]} boxes'
    )
  return det_frames, det_scores, det_boxes, gt_frames, gt_boxes


def _frame_candidates(
  det_frames: np.ndarray,
  det_boxes: np.ndarray,
  gt_frames: np.ndarray,
  gt_boxes: np.ndarray,
  plus_one: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ground-truth boxes of each detection's frame and their IoUs, all at once.

  Returns:
    `(offsets (D + 1,), gt_index (P,), ious (P,))`: detection `d`'s candidates are
    `gt_index[offsets[d]:offsets[d + 1]]` (in ground-truth input order) with IoUs
    `ious[offsets[d]:offsets[d + 1]]`.
  """
  gt_order = np.argsort(gt_frames, kind='stable')
  sorted_frames = gt_frames[gt_order]
  lo = np.searchsorted(sorted_frames, det_frames, side='left')
  hi = np.searchsorted(sorted_frames, det_frames, side='right')
  counts = hi - lo
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
  gt_index = gt_order[np.repeat(lo, counts) + within]
  det_index = np.repeat(np.arange(len(det_frames)), counts)
  ious = boxes_lib.iou_corners(det_boxes[det_index], gt_boxes[gt_index], plus_one=plus_one)
  return offsets, gt_index, ious


def _frame_true_positives(
  det_frames, det_scores, det_boxes, gt_frames, gt_boxes, iou_threshold: float, rule: str
) -> np.ndarray:
  """`(D,)` 1.0 / 0.0 per detection in rank order (score descending, stable)."""
  plus_one = rule == 'act'
  offsets, gt_index, ious = _frame_candidates(det_frames, det_boxes, gt_frames, gt_boxes, plus_one)
  order = np.argsort(-det_scores, kind='stable')
  tp = np.zeros(len(order), np.float64)
  matched = np.zeros(gt_frames.shape[0], bool)
  offsets_l, gt_l, ious_l = offsets.tolist(), gt_index.tolist(), ious.tolist()
  for rank in np.nonzero(np.diff(offsets)[order] > 0)[0].tolist():
    d = int(order[rank])
    lo, hi = offsets_l[d], offsets_l[d + 1]
    best, best_iou = -1, -np.inf
    for j in range(lo, hi):
      if plus_one and matched[gt_l[j]]:
        continue  # ACT: only the still-unmatched boxes of the frame compete.
      if ious_l[j] > best_iou:  # Strict: the first of equal IoUs wins.
        best, best_iou = gt_l[j], ious_l[j]
    if best >= 0 and best_iou >= iou_threshold and not matched[best]:
      matched[best] = True
      tp[rank] = 1.0
  return tp


def precision_recall(tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
  """(recall, precision) after each ranked detection, from its 1.0 / 0.0 true positives."""
  ctp = np.cumsum(tp)
  precision = ctp / np.arange(1, len(tp) + 1, dtype=np.float64)
  return ctp / num_gt, precision


def _class_ap(
  rule: str, det_frames, det_scores, det_boxes, gt_frames, gt_boxes, iou_threshold: float
) -> float:
  """One class's frame AP by `rule` ('voc' or 'act'); NaN without ground truth."""
  fn_name = {'voc': 'average_precision', 'act': 'act_average_precision'}[rule]
  args = _ap_inputs(det_frames, det_scores, det_boxes, gt_frames, gt_boxes, fn_name)
  num_gt = args[3].shape[0]
  if num_gt == 0:
    return float('nan')
  tp = _frame_true_positives(*args, iou_threshold, rule=rule)
  curve_ap = act_ap if rule == 'act' else voc_ap
  return curve_ap(*precision_recall(tp, num_gt))


def average_precision(
  det_frames: np.ndarray,
  det_scores: np.ndarray,
  det_boxes: np.ndarray,
  gt_frames: np.ndarray,
  gt_boxes: np.ndarray,
  iou_threshold: float = 0.5,
) -> float:
  """VOC average precision of one class over frames (the `'voc'` protocol).

  Detections of all frames are ranked together by score (descending; equal scores keep
  their input order). Following the VOC devkit, each detection is compared with the
  ground-truth box of highest IoU in its frame: a true positive when that IoU is
  >= `iou_threshold` and that box is not yet matched (then it becomes matched),
  otherwise a false positive (so duplicates are false positives). AP is the all-point
  interpolated area (`voc_ap`). NaN when the class has no ground truth. The IoU is the
  continuous one (no +1), so any box units work.

  Args:
    det_frames: `(D,)` integer frame keys (see `frame_keys`).
    det_scores: `(D,)` scores.
    det_boxes: `(D, 4)` corner boxes.
    gt_frames: `(G,)` frame keys of the ground-truth boxes of this class.
    gt_boxes: `(G, 4)` corner boxes.
    iou_threshold: the VOC overlap criterion.
  """
  return _class_ap('voc', det_frames, det_scores, det_boxes, gt_frames, gt_boxes, iou_threshold)


def act_average_precision(
  det_frames: np.ndarray,
  det_scores: np.ndarray,
  det_boxes: np.ndarray,
  gt_frames: np.ndarray,
  gt_boxes: np.ndarray,
  iou_threshold: float = 0.5,
) -> float:
  """Frame AP of one class by ACT's `frameAP` rule (the `'act'` protocol).

  - Boxes are in pixels and IoU uses the +1 convention
    (`boxes.iou_corners(..., plus_one=True)`).
  - Detections of all frames are ranked by score, descending, with a stable sort:
    equal scores keep their input order. (ACT's `np.argsort(-score)` leaves the order
    of ties unspecified; this is the only way the two can differ.)
  - Each detection is compared with the ground-truth boxes of its frame that are still
    unmatched and takes the one of highest IoU (the first of equal IoUs, in input
    order); at IoU >= `iou_threshold` it is a true positive and that box is removed,
    otherwise (including frames without ground truth, or whose boxes are all matched)
    a false positive.
  - AP is `act_ap`: trapezoids under the raw precision/recall curve from
    (recall 0, precision 1); no envelope. Computed in float64 (ACT keeps the curve in
    float32, a difference below 1e-6).

  Same arguments as `average_precision`, boxes in pixels. NaN without ground truth.
  """
  return _class_ap('act', det_frames, det_scores, det_boxes, gt_frames, gt_boxes, iou_threshold)


# Per-class frame AP of each protocol, as called by `frame_map`.
FRAME_AP_FUNCTIONS = {'voc': average_precision, 'act': act_average_precision}


def frame_keys(video_ids: np.ndarray, frames: np.ndarray) -> np.ndarray:
  """One int64 key per (video, frame) pair."""
  video_ids = np.asarray(video_ids, np.int64)
  frames = np.asarray(frames, np.int64)
  if frames.size and (frames.min() < 0 or frames.max() >= 1 << 32):
    raise ValueError(
      f'frame_keys: frame indices must lie in [0, 2**32), found [{frames.min()}, {frames.max()}]'
    )
  return (video_ids << 32) + frames


def frame_map(
  det_frames: np.ndarray,
  det_scores: np.ndarray,
  det_boxes: np.ndarray,
  gt_frames: np.ndarray,
  gt_labels: np.ndarray,
  gt_boxes: np.ndarray,
  num_classes: int = 24,
  iou_threshold: float = 0.5,
  protocol: str = 'voc',
  frame_sizes: Any = None,
  gt_frame_sizes: Any = None,
  det_valid: Any = None,
) -> dict[str, Any]:
  """Per-class frame AP and their mean over the classes that have ground truth.

  Classes without ground truth get AP NaN and are left out of the mean (ACT's
  `frameAP` would divide by zero there, or count AP 0 if the class had no detections
  either; MMAction2's port skips them, as here).

  Args:
    det_frames: `(D,)` frame keys; each row is one box scored for every class.
    det_scores: `(D, C)` per-class scores of that box.
    det_boxes: `(D, 4)` corner boxes, normalized to [0, 1] for `'act'`.
    gt_frames, gt_labels, gt_boxes: `(G,)`, `(G,)` in [0, C), `(G, 4)` corner boxes
      (normalized for `'act'`).
    num_classes: C.
    iou_threshold: the overlap criterion.
    protocol: `'voc'` (`average_precision`, the default) or `'act'`
      (`act_average_precision`: boxes are first converted to pixels, see below).
    frame_sizes: `'act'` only: `(height, width)` of every frame, or `(D, 2)` per
      detection. None: `videos.UCF101_FRAME_SIZE` (240, 320). Boxes already in pixels: pass
      `(1, 1)`. Ignored by `'voc'`, whose IoU does not depend on the frame size.
    gt_frame_sizes: `'act'` only: `(height, width)` or `(G, 2)` per ground-truth box.
      None: `frame_sizes` when that is a single `(height, width)`.
    det_valid: `(D, C)` bool or None: where False, row d is no detection of class c and
      is left out of that class's ranking (e.g. suppressed by that class's per-frame
      NMS, `tubelets.frame_detections`). Any score, even 0, ranks a row and can match a
      box, so a left-out pair needs this mask. None: every row is a detection of every
      class.

  Returns:
    `{'frame_map': float, 'per_class_ap': (C,) float (NaN without ground truth),
      'classes_with_gt': list of int, 'protocol': str}`.
  """
  if protocol not in FRAME_AP_FUNCTIONS:
    raise ValueError(f'frame_map: protocol must be one of {FRAME_AP_PROTOCOLS}, found {protocol!r}')
  det_frames = np.asarray(det_frames).reshape(-1)
  det_scores = np.asarray(det_scores, np.float64)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
  gt_frames = np.asarray(gt_frames).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  if det_scores.ndim != 2 or det_scores.shape[1] != num_classes:
    raise ValueError(f'frame_map: expected det_scores (D, {num_classes}), found {det_scores.shape}')
  if not det_frames.shape[0] == det_scores.shape[0] == det_boxes.shape[0]:
    raise ValueError(
      f'frame_map: {det_frames.shape[0]} detection frames, {det_scores.shape[0]} '
      f'score rows and {det_boxes.shape[0]} boxes'
    )
  if det_valid is not None:
    det_valid = np.asarray(det_valid)
    if det_valid.shape != det_scores.shape or det_valid.dtype != np.bool_:
      raise ValueError(
        f'frame_map: expected det_valid bool {det_scores.shape}, found '
        f'{det_valid.dtype} {det_valid.shape}'
      )
  if gt_labels.shape != gt_frames.shape:
    raise ValueError(
      f'frame_map: {gt_labels.shape[0]} ground-truth labels but {gt_frames.shape[0]} frames'
    )
  if protocol == 'act':
    sizes = videos.UCF101_FRAME_SIZE if frame_sizes is None else frame_sizes
    if gt_frame_sizes is None:
      if np.shape(sizes) != (2,):
        raise ValueError(
          'frame_map: per-detection frame_sizes need gt_frame_sizes '
          '(height, width) or (G, 2) for the ground truth as well'
        )
      gt_frame_sizes = sizes
    det_boxes = classification.normalized_to_pixels(det_boxes, sizes)
    gt_boxes = classification.normalized_to_pixels(gt_boxes, gt_frame_sizes)
  ap_fn = FRAME_AP_FUNCTIONS[protocol]
  aps = np.full(num_classes, np.nan)
  for c in range(num_classes):
    sel = gt_labels == c
    if sel.any():
      rows = slice(None) if det_valid is None else det_valid[:, c]
      aps[c] = ap_fn(
        det_frames[rows],
        det_scores[rows, c],
        det_boxes[rows],
        gt_frames[sel],
        gt_boxes[sel],
        iou_threshold,
      )
  with_gt = [int(c) for c in np.nonzero(~np.isnan(aps))[0]]
  fmap = float(np.mean(aps[with_gt])) if with_gt else float('nan')
  return {'frame_map': fmap, 'per_class_ap': aps, 'classes_with_gt': with_gt, 'protocol': protocol}


def class_index_map(
  dataset_class_names: Sequence[str],
  annotated_class_names: Sequence[str] = classes.UCF24_CLASSES,
) -> np.ndarray:
  """`(24,)` index into the dataset's (101) classes of each annotated class, by name.

  Raises:
    ValueError: naming the annotated classes that the dataset lacks.
  """
  lookup = {name: i for i, name in enumerate(dataset_class_names)}
  missing = [n for n in annotated_class_names if n not in lookup]
  if missing:
    raise ValueError(
      f'class_index_map: annotated classes {missing} not found among '
      f"the dataset's {len(lookup)} class names (first: "
      f'{list(dataset_class_names)[:3]})'
    )
  return np.array([lookup[n] for n in annotated_class_names], np.int64)


def frame_detection_scores(logits: np.ndarray, index_map: np.ndarray) -> np.ndarray:
  """`(N, 24)` per annotated class score: softmax over all K logits, then its column."""
  return classification.softmax(logits)[:, np.asarray(index_map)]
