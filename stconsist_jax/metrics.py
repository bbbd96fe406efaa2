"""Evaluation metrics: clip/video accuracy, box IoU, frame-AP and frame-mAP, confusion.
Frame-AP follows either the VOC devkit rule or ACT's `frameAP` (see `frame_map`).

Plain numpy (no JAX, no TensorFlow) so that reports can be recomputed anywhere from
saved predictions. Boxes are `(x_left, y_top, w, h)` unless a name says corners.
Spatio-temporal tubes and video-AP live in `stconsist_jax.tubes`.
"""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

# The 24 annotated classes of UCF101-24 in label order (0..23).
UCF101_24_CLASSES: Tuple[str, ...] = (
    "Basketball", "BasketballDunk", "Biking", "CliffDiving", "CricketBowling",
    "Diving", "Fencing", "FloorGymnastics", "GolfSwing", "HorseRiding", "IceDancing",
    "LongJump", "PoleVault", "RopeClimbing", "SalsaSpin", "SkateBoarding", "Skiing",
    "Skijet", "SoccerJuggling", "Surfing", "TennisSwing", "TrampolineJumping",
    "VolleyballSpiking", "WalkingWithDog")

# (height, width) of every UCF-101 video: the default pixel grid of the ACT protocol.
UCF101_FRAME_SIZE: Tuple[int, int] = (240, 320)

# Frame-AP matching rules understood by `frame_map` (see `FRAME_AP_FUNCTIONS`).
FRAME_AP_PROTOCOLS: Tuple[str, ...] = ("voc", "act")


def _valid_mask(n: int, valid: Optional[np.ndarray]) -> np.ndarray:
  if valid is None:
    return np.ones(n, bool)
  valid = np.asarray(valid).astype(bool)
  if valid.shape != (n,):
    raise ValueError(f"valid mask: expected shape ({n},), found {valid.shape}")
  return valid


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
  """Numerically stable softmax in float64."""
  x = np.asarray(logits, np.float64)
  x = x - np.max(x, axis=axis, keepdims=True)
  e = np.exp(x)
  return e / np.sum(e, axis=axis, keepdims=True)


# ----------------------------------------------------------------------------------
# Classification.


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
  """`(N,)` bool: the label is among the k highest scores.

  Ties are broken in favour of the lower class index (a stable sort), so a row of equal
  scores counts as correct at top-1 only for label 0.
  """
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  if scores.ndim != 2 or labels.shape != scores.shape[:1]:
    raise ValueError(f"topk_correct: expected scores (N, K) and labels (N,), found "
                     f"{scores.shape} and {labels.shape}")
  order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
  return np.any(order == labels[:, None], axis=-1)


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1,
             valid: Optional[np.ndarray] = None) -> float:
  """Top-k accuracy over the valid rows (NaN when there are none)."""
  correct = topk_correct(scores, labels, k)
  mask = _valid_mask(correct.shape[0], valid)
  if not mask.any():
    return float("nan")
  return float(np.mean(correct[mask]))


def video_predictions(probs: np.ndarray, labels: np.ndarray, video_ids: np.ndarray,
                      valid: Optional[np.ndarray] = None
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Averages the clip class probabilities of each video.

  Returns:
    `(video_ids (V,), mean_probs (V, K), labels (V,))`, sorted by video id.

  Raises:
    ValueError: if the clips of one video disagree on its label.
  """
  probs = np.asarray(probs, np.float64)
  mask = _valid_mask(probs.shape[0], valid)
  probs, labels = probs[mask], np.asarray(labels)[mask]
  video_ids = np.asarray(video_ids)[mask]
  vids, inverse = np.unique(video_ids, return_inverse=True)
  sums = np.zeros((len(vids), probs.shape[1]), np.float64)
  np.add.at(sums, inverse, probs)
  counts = np.bincount(inverse, minlength=len(vids)).astype(np.float64)
  vlabels = np.full(len(vids), -1, np.int64)
  vlabels[inverse] = labels
  if np.any(vlabels[inverse] != labels):
    bad = vids[np.unique(inverse[vlabels[inverse] != labels])]
    raise ValueError(f"video_predictions: clips of video(s) {bad[:5].tolist()} carry "
                     "different labels")
  return vids, sums / counts[:, None], vlabels


def video_accuracy(probs: np.ndarray, labels: np.ndarray, video_ids: np.ndarray,
                   valid: Optional[np.ndarray] = None) -> float:
  """Top-1 accuracy of the clip-averaged softmax per video (NaN with no videos)."""
  _, mean_probs, vlabels = video_predictions(probs, labels, video_ids, valid)
  if len(vlabels) == 0:
    return float("nan")
  return float(np.mean(topk_correct(mean_probs, vlabels, 1)))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     valid: Optional[np.ndarray] = None) -> np.ndarray:
  """`(K, K)` int64 counts, rows = true class, columns = predicted class."""
  labels = np.asarray(labels, np.int64)
  predictions = np.asarray(predictions, np.int64)
  mask = _valid_mask(labels.shape[0], valid)
  labels, predictions = labels[mask], predictions[mask]
  for name, arr in (("labels", labels), ("predictions", predictions)):
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
      raise ValueError(f"confusion_matrix: {name} must lie in [0, {num_classes}), "
                       f"found range [{arr.min()}, {arr.max()}]")
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """Recall per true class from a confusion matrix; NaN for classes with no samples."""
  confusion = np.asarray(confusion, np.float64)
  totals = confusion.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


# ----------------------------------------------------------------------------------
# Boxes.


def xywh_to_corners(boxes: np.ndarray) -> np.ndarray:
  """`(x, y, w, h)` -> `(x1, y1, x2, y2)` along the last axis, float64."""
  b = np.asarray(boxes, np.float64)
  return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def corners_to_xywh(boxes: np.ndarray) -> np.ndarray:
  """`(x1, y1, x2, y2)` -> `(x, y, w, h)` along the last axis, float64."""
  b = np.asarray(boxes, np.float64)
  return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def _elementwise_iou(a: np.ndarray, b: np.ndarray, plus_one: bool) -> np.ndarray:
  """IoU of broadcast corners `a (..., 4)`, `b (..., 4)`; see `iou_matrix_corners`."""
  one = 1.0 if plus_one else 0.0
  iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
  ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
  inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)

  def area(x):
    return (np.clip(x[..., 2] - x[..., 0] + one, 0, None)
            * np.clip(x[..., 3] - x[..., 1] + one, 0, None))

  union = area(a) + area(b) - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_matrix_corners(a: np.ndarray, b: np.ndarray, plus_one: bool = False
                       ) -> np.ndarray:
  """`(M, G)` IoU between corner boxes `a (M, 4)` and `b (G, 4)`.

  Boxes with non-positive width or height have zero area; a pair whose union is zero
  (two zero-area boxes) has IoU 0.

  Args:
    a: `(M, 4)` corner boxes.
    b: `(G, 4)` corner boxes.
    plus_one: ACT's pixel convention: a box covers the pixels `x1..x2` inclusive, so
      width = `x2 - x1 + 1` (likewise height and the intersection). Only meaningful for
      boxes in pixels. Identical to ACT's `iou2d` for boxes with `x2 >= x1 - 1` and
      `y2 >= y1 - 1` (widths below that are clipped to 0 here).
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  return _elementwise_iou(a[:, None, :], b[None, :, :], plus_one)


def paired_iou_corners(a: np.ndarray, b: np.ndarray, plus_one: bool = False
                       ) -> np.ndarray:
  """`(N,)` IoU of matching rows of two `(N, 4)` corner arrays (`plus_one`: above)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.shape[-1:] != (4,):
    raise ValueError(f"paired_iou_corners: expected two (N, 4) arrays, found {a.shape} "
                     f"and {b.shape}")
  return _elementwise_iou(a, b, plus_one)


def box_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """`(N,)` IoU of matching rows of two `(N, 4)` arrays of `(x, y, w, h)` boxes."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape or pred.ndim != 2 or pred.shape[-1:] != (4,):
    raise ValueError(f"box_iou: expected two (N, 4) arrays, found {pred.shape} and "
                     f"{target.shape}")
  return paired_iou_corners(xywh_to_corners(pred), xywh_to_corners(target))


def normalized_to_pixels(boxes: np.ndarray, frame_sizes: Any = UCF101_FRAME_SIZE
                         ) -> np.ndarray:
  """Normalized corner boxes -> pixel corner boxes (x times width, y times height).

  The inverse of how annotations are normalized (pixel coordinate / frame size), so
  ground truth comes back at its annotated pixel coordinates.

  Args:
    boxes: `(N, 4)` corner boxes in [0, 1] units of the frame.
    frame_sizes: `(height, width)` of every frame, or `(N, 2)`, one per box.

  Returns:
    `(N, 4)` float64 corner boxes in pixels.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  sizes = np.asarray(frame_sizes, np.float64)
  if sizes.shape != (2,) and sizes.shape != (boxes.shape[0], 2):
    raise ValueError(f"normalized_to_pixels: frame_sizes must be (height, width) or "
                     f"({boxes.shape[0]}, 2), found shape {sizes.shape}")
  if sizes.size and not np.all(sizes > 0):
    raise ValueError("normalized_to_pixels: frame sizes must be positive, found "
                     f"min {sizes.min()}")
  h, w = sizes[..., 0], sizes[..., 1]
  return boxes * np.stack([w, h, w, h], axis=-1)


def mean_iou(pred: np.ndarray, target: np.ndarray, has_box: np.ndarray,
             valid: Optional[np.ndarray] = None) -> float:
  """Mean IoU over the (valid) clips that have a box target; NaN when none do."""
  has_box = np.asarray(has_box).astype(bool) & _valid_mask(len(has_box), valid)
  if not has_box.any():
    return float("nan")
  return float(np.mean(box_iou(np.asarray(pred)[has_box], np.asarray(target)[has_box])))


# ----------------------------------------------------------------------------------
# Frame average precision.


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
    raise ValueError(f"act_ap: recall and precision differ in length: {r.size - 1} vs "
                     f"{p.size - 1}")
  return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) * 0.5))


def _ap_inputs(det_frames, det_scores, det_boxes, gt_frames, gt_boxes, fn_name):
  """Flattens and checks the arguments of the per-class AP functions."""
  det_frames = np.asarray(det_frames).reshape(-1)
  det_scores = np.asarray(det_scores, np.float64).reshape(-1)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gt_frames = np.asarray(gt_frames).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  if not det_frames.shape[0] == det_scores.shape[0] == det_boxes.shape[0]:
    raise ValueError(f"{fn_name}: {det_frames.shape[0]} detection frames, "
                     f"{det_scores.shape[0]} scores and {det_boxes.shape[0]} boxes")
  if gt_frames.shape[0] != gt_boxes.shape[0]:
    raise ValueError(f"{fn_name}: {gt_frames.shape[0]} ground-truth frames but "
                     f"{gt_boxes.shape[0]} boxes")
  return det_frames, det_scores, det_boxes, gt_frames, gt_boxes


def _frame_candidates(det_frames: np.ndarray, det_boxes: np.ndarray,
                      gt_frames: np.ndarray, gt_boxes: np.ndarray, plus_one: bool
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ground-truth boxes of each detection's frame and their IoUs, all at once.

  Returns:
    `(offsets (D + 1,), gt_index (P,), ious (P,))`: detection `d`'s candidates are
    `gt_index[offsets[d]:offsets[d + 1]]` (in ground-truth input order) with IoUs
    `ious[offsets[d]:offsets[d + 1]]`.
  """
  gt_order = np.argsort(gt_frames, kind="stable")
  sorted_frames = gt_frames[gt_order]
  lo = np.searchsorted(sorted_frames, det_frames, side="left")
  hi = np.searchsorted(sorted_frames, det_frames, side="right")
  counts = hi - lo
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
  gt_index = gt_order[np.repeat(lo, counts) + within]
  det_index = np.repeat(np.arange(len(det_frames)), counts)
  ious = paired_iou_corners(det_boxes[det_index], gt_boxes[gt_index], plus_one)
  return offsets, gt_index, ious


def _frame_true_positives(det_frames, det_scores, det_boxes, gt_frames, gt_boxes,
                          iou_threshold: float, rule: str) -> np.ndarray:
  """`(D,)` 1.0 / 0.0 per detection in rank order (score descending, stable)."""
  plus_one = rule == "act"
  offsets, gt_index, ious = _frame_candidates(det_frames, det_boxes, gt_frames,
                                              gt_boxes, plus_one)
  order = np.argsort(-det_scores, kind="stable")
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


def _precision_recall(tp: np.ndarray, num_gt: int) -> Tuple[np.ndarray, np.ndarray]:
  ctp = np.cumsum(tp)
  precision = ctp / np.arange(1, len(tp) + 1, dtype=np.float64)
  return ctp / num_gt, precision


def average_precision(det_frames: np.ndarray, det_scores: np.ndarray,
                      det_boxes: np.ndarray, gt_frames: np.ndarray,
                      gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> float:
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
  args = _ap_inputs(det_frames, det_scores, det_boxes, gt_frames, gt_boxes,
                    "average_precision")
  num_gt = args[3].shape[0]
  if num_gt == 0:
    return float("nan")
  tp = _frame_true_positives(*args, iou_threshold, rule="voc")
  return voc_ap(*_precision_recall(tp, num_gt))


def act_average_precision(det_frames: np.ndarray, det_scores: np.ndarray,
                          det_boxes: np.ndarray, gt_frames: np.ndarray,
                          gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> float:
  """Frame AP of one class by ACT's `frameAP` rule (the `'act'` protocol).

  - Boxes are in pixels and IoU uses the +1 convention
    (`iou_matrix_corners(..., plus_one=True)`).
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
  args = _ap_inputs(det_frames, det_scores, det_boxes, gt_frames, gt_boxes,
                    "act_average_precision")
  num_gt = args[3].shape[0]
  if num_gt == 0:
    return float("nan")
  tp = _frame_true_positives(*args, iou_threshold, rule="act")
  return act_ap(*_precision_recall(tp, num_gt))


# Per-class frame AP of each protocol, as called by `frame_map`.
FRAME_AP_FUNCTIONS = {"voc": average_precision, "act": act_average_precision}


def frame_keys(video_ids: np.ndarray, frames: np.ndarray) -> np.ndarray:
  """One int64 key per (video, frame) pair."""
  video_ids = np.asarray(video_ids, np.int64)
  frames = np.asarray(frames, np.int64)
  if frames.size and (frames.min() < 0 or frames.max() >= 1 << 32):
    raise ValueError(f"frame_keys: frame indices must lie in [0, 2**32), found "
                     f"[{frames.min()}, {frames.max()}]")
  return (video_ids << 32) + frames


def frame_map(det_frames: np.ndarray, det_scores: np.ndarray, det_boxes: np.ndarray,
              gt_frames: np.ndarray, gt_labels: np.ndarray, gt_boxes: np.ndarray,
              num_classes: int = 24, iou_threshold: float = 0.5,
              protocol: str = "voc", frame_sizes: Any = None,
              gt_frame_sizes: Any = None) -> Dict[str, Any]:
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
      detection. None: `UCF101_FRAME_SIZE` (240, 320). Boxes already in pixels: pass
      `(1, 1)`. Ignored by `'voc'`, whose IoU does not depend on the frame size.
    gt_frame_sizes: `'act'` only: `(height, width)` or `(G, 2)` per ground-truth box.
      None: `frame_sizes` when that is a single `(height, width)`.

  Returns:
    `{'frame_map': float, 'per_class_ap': (C,) float (NaN without ground truth),
      'classes_with_gt': list of int, 'protocol': str}`.
  """
  if protocol not in FRAME_AP_FUNCTIONS:
    raise ValueError(f"frame_map: protocol must be one of {FRAME_AP_PROTOCOLS}, found "
                     f"{protocol!r}")
  det_scores = np.asarray(det_scores, np.float64)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
  gt_frames = np.asarray(gt_frames).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  if det_scores.ndim != 2 or det_scores.shape[1] != num_classes:
    raise ValueError(f"frame_map: expected det_scores (D, {num_classes}), found "
                     f"{det_scores.shape}")
  if gt_labels.shape != gt_frames.shape:
    raise ValueError(f"frame_map: {gt_labels.shape[0]} ground-truth labels but "
                     f"{gt_frames.shape[0]} frames")
  if protocol == "act":
    sizes = UCF101_FRAME_SIZE if frame_sizes is None else frame_sizes
    if gt_frame_sizes is None:
      if np.shape(sizes) != (2,):
        raise ValueError("frame_map: per-detection frame_sizes need gt_frame_sizes "
                         "(height, width) or (G, 2) for the ground truth as well")
      gt_frame_sizes = sizes
    det_boxes = normalized_to_pixels(det_boxes, sizes)
    gt_boxes = normalized_to_pixels(gt_boxes, gt_frame_sizes)
  ap_fn = FRAME_AP_FUNCTIONS[protocol]
  aps = np.full(num_classes, np.nan)
  for c in range(num_classes):
    sel = gt_labels == c
    if sel.any():
      aps[c] = ap_fn(det_frames, det_scores[:, c], det_boxes, gt_frames[sel],
                     gt_boxes[sel], iou_threshold)
  with_gt = [int(c) for c in np.nonzero(~np.isnan(aps))[0]]
  fmap = float(np.mean(aps[with_gt])) if with_gt else float("nan")
  return {"frame_map": fmap, "per_class_ap": aps, "classes_with_gt": with_gt,
          "protocol": protocol}


def class_index_map(dataset_class_names: Sequence[str],
                    annotated_class_names: Sequence[str] = UCF101_24_CLASSES
                    ) -> np.ndarray:
  """`(24,)` index into the dataset's (101) classes of each annotated class, by name.

  Raises:
    ValueError: naming the annotated classes that the dataset lacks.
  """
  lookup = {name: i for i, name in enumerate(dataset_class_names)}
  missing = [n for n in annotated_class_names if n not in lookup]
  if missing:
    raise ValueError(f"class_index_map: annotated classes {missing} not found among "
                     f"the dataset's {len(lookup)} class names (first: "
                     f"{list(dataset_class_names)[:3]})")
  return np.array([lookup[n] for n in annotated_class_names], np.int64)


def frame_detection_scores(logits: np.ndarray, index_map: np.ndarray) -> np.ndarray:
  """`(N, 24)` per annotated class score: softmax over all K logits, then its column."""
  return softmax(logits)[:, np.asarray(index_map)]


# ----------------------------------------------------------------------------------
# Protocol written into reports.


_FRAME_MATCHING_TEXT = {
    "voc": ("a ground-truth box is matched at most once (VOC devkit rule: compare with "
            "the highest-IoU box of the frame), duplicates count as false positives; "
            "VOC all-point interpolated AP."),
    "act": ("ACT frameAP rule: boxes converted to pixels with the +1 area convention; "
            "each detection in score order (stable: ties keep stream order) is "
            "compared with the still-unmatched ground-truth boxes of its frame and a "
            "match removes that box; AP = trapezoidal area under the raw "
            "precision/recall curve from (recall 0, precision 1), no envelope."),
}


def protocol(clip_length: int, image_size: int, clips_per_video: int,
             num_classes: int, num_annotated_classes: int = 24,
             extra: Optional[Mapping[str, Any]] = None,
             frame_map_protocol: str = "voc") -> Dict[str, Any]:
  """Describes how the reported numbers were measured, for honest comparisons.

  `frame_map_protocol` ('voc' or 'act') must name the rule `frame_map` was called with.
  """
  if frame_map_protocol not in _FRAME_MATCHING_TEXT:
    raise ValueError(f"protocol: frame_map_protocol must be one of "
                     f"{FRAME_AP_PROTOCOLS}, found {frame_map_protocol!r}")
  desc = {
      "split": "UCF-101 split 1 test list (UCF101-24 split 1 for boxes)",
      "clip": f"{clip_length} consecutive frames resized (squashed) to "
              f"{image_size}x{image_size}",
      "clip_accuracy": f"top-1 / top-5 over the {num_classes}-way softmax of every "
                       "test clip of the clip stream",
      "video_accuracy": f"top-1 of the softmax averaged over {clips_per_video} "
                        "uniformly spaced clips per test video",
      "mean_iou": "IoU of the predicted (x, y, w, h) box with the clip's box target "
                  "(primary actor's box averaged over the two central frames), over "
                  "clip-stream clips that have a target",
      "frame_map": "frame-AP at IoU 0.5 per annotated (UCF101-24) class, averaged "
                   "over the classes with ground truth. Every annotated frame of the "
                   f"test videos is scored: one {clip_length}-frame clip centred on it "
                   "(the frame at clip position T//2) gives ONE box, emitted for each "
                   f"of the {num_annotated_classes} annotated classes with score = "
                   f"softmax over all {num_classes} classes at that class. Detections "
                   "ranked across all frames; "
                   + _FRAME_MATCHING_TEXT[frame_map_protocol]
                   + " Ground truth: every tube box of the frame (all actors).",
  }
  if extra:
    desc.update(extra)
  return desc
