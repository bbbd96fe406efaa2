"""Evaluation metrics: clip/video accuracy, box IoU, frame-AP and frame-mAP, confusion.

Plain numpy (no JAX, no TensorFlow) so that reports can be recomputed anywhere from
saved predictions. Boxes are `(x_left, y_top, w, h)` unless a name says corners.
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


def iou_matrix_corners(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`(M, G)` IoU between corner boxes `a (M, 4)` and `b (G, 4)`.

  Boxes with non-positive width or height have zero area; a pair whose union is zero
  (two zero-area boxes) has IoU 0.
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
  iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
  ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
  iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
  inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)

  def area(x):
    return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)

  union = area(a)[:, None] + area(b)[None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """`(N,)` IoU of matching rows of two `(N, 4)` arrays of `(x, y, w, h)` boxes."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape or pred.shape[-1:] != (4,):
    raise ValueError(f"box_iou: expected two (N, 4) arrays, found {pred.shape} and "
                     f"{target.shape}")
  pa, ta = xywh_to_corners(pred), xywh_to_corners(target)
  return np.array([iou_matrix_corners(pa[i:i + 1], ta[i:i + 1])[0, 0]
                   for i in range(pa.shape[0])], np.float64)


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


def average_precision(det_frames: np.ndarray, det_scores: np.ndarray,
                      det_boxes: np.ndarray, gt_frames: np.ndarray,
                      gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> float:
  """VOC average precision of one class over frames.

  Detections of all frames are ranked together by score (descending; equal scores keep
  their input order). Following the VOC devkit, each detection is compared with the
  ground-truth box of highest IoU in its frame: a true positive when that IoU is
  >= `iou_threshold` and that box is not yet matched (then it becomes matched),
  otherwise a false positive (so duplicates are false positives). AP is the all-point
  interpolated area (`voc_ap`). NaN when the class has no ground truth.

  Args:
    det_frames: `(D,)` integer frame keys (see `frame_keys`).
    det_scores: `(D,)` scores.
    det_boxes: `(D, 4)` corner boxes.
    gt_frames: `(G,)` frame keys of the ground-truth boxes of this class.
    gt_boxes: `(G, 4)` corner boxes.
    iou_threshold: the VOC overlap criterion.
  """
  det_frames = np.asarray(det_frames).reshape(-1)
  det_scores = np.asarray(det_scores, np.float64).reshape(-1)
  det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
  gt_frames = np.asarray(gt_frames).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  num_gt = gt_frames.shape[0]
  if num_gt == 0:
    return float("nan")
  gt_by_frame: Dict[Any, np.ndarray] = {}
  for f in np.unique(gt_frames):
    gt_by_frame[f.item()] = np.nonzero(gt_frames == f)[0]
  matched = np.zeros(num_gt, bool)
  order = np.argsort(-det_scores, kind="stable")
  tp = np.zeros(len(order), np.float64)
  for rank, d in enumerate(order):
    candidates = gt_by_frame.get(det_frames[d].item())
    if candidates is None:
      continue
    ious = iou_matrix_corners(det_boxes[d:d + 1], gt_boxes[candidates])[0]
    best = int(np.argmax(ious))
    if ious[best] >= iou_threshold and not matched[candidates[best]]:
      matched[candidates[best]] = True
      tp[rank] = 1.0
  ctp = np.cumsum(tp)
  cfp = np.cumsum(1.0 - tp)
  recall = ctp / num_gt
  precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
  return voc_ap(recall, precision)


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
              num_classes: int = 24, iou_threshold: float = 0.5) -> Dict[str, Any]:
  """Per-class frame AP and their mean over the classes that have ground truth.

  Args:
    det_frames: `(D,)` frame keys; each row is one box scored for every class.
    det_scores: `(D, C)` per-class scores of that box.
    det_boxes: `(D, 4)` corner boxes.
    gt_frames, gt_labels, gt_boxes: `(G,)`, `(G,)` in [0, C), `(G, 4)` corner boxes.

  Returns:
    `{'frame_map': float, 'per_class_ap': (C,) float (NaN without ground truth),
      'classes_with_gt': list of int}`.
  """
  det_scores = np.asarray(det_scores, np.float64)
  gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
  gt_frames = np.asarray(gt_frames).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  if det_scores.ndim != 2 or det_scores.shape[1] != num_classes:
    raise ValueError(f"frame_map: expected det_scores (D, {num_classes}), found "
                     f"{det_scores.shape}")
  aps = np.full(num_classes, np.nan)
  for c in range(num_classes):
    sel = gt_labels == c
    if sel.any():
      aps[c] = average_precision(det_frames, det_scores[:, c], det_boxes,
                                 gt_frames[sel], gt_boxes[sel], iou_threshold)
  with_gt = [int(c) for c in np.nonzero(~np.isnan(aps))[0]]
  fmap = float(np.mean(aps[with_gt])) if with_gt else float("nan")
  return {"frame_map": fmap, "per_class_ap": aps, "classes_with_gt": with_gt}


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


def protocol(clip_length: int, image_size: int, clips_per_video: int,
             num_classes: int, num_annotated_classes: int = 24,
             extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Describes how the reported numbers were measured, for honest comparisons."""
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
                   "ranked "
                   "across all frames; a ground-truth box is matched at most once "
                   "(VOC devkit rule: compare with the highest-IoU box of the frame), "
                   "duplicates count as false positives; VOC all-point interpolated "
                   "AP. Ground truth: every tube box of the frame (all actors).",
  }
  if extra:
    desc.update(extra)
  return desc
