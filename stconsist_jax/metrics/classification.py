"""Clip metrics in plain numpy: clip/video accuracy, confusion, per-class accuracy, the
mean IoU of clip boxes and normalized-to-pixel boxes.

No JAX, no TensorFlow, so that reports can be recomputed anywhere from saved
predictions. Boxes are `(x_left, y_top, w, h)` unless a name says corners; their
geometry is `stconsist_jax.core.boxes`. Frame-AP is `frame_ap`, tubes and video-AP are
`tubes` and `video_ap`.
"""

from typing import Any

import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.data.ucf101.videos import UCF101_FRAME_SIZE


def _valid_mask(n: int, valid: np.ndarray | None) -> np.ndarray:
  if valid is None:
    return np.ones(n, bool)
  valid = np.asarray(valid).astype(bool)
  if valid.shape != (n,):
    raise ValueError(f'valid mask: expected shape ({n},), found {valid.shape}')
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
    raise ValueError(
      f'topk_correct: expected scores (N, K) and labels (N,), found '
      f'{scores.shape} and {labels.shape}'
    )
  order = np.argsort(-scores, axis=-1, kind='stable')[:, :k]
  return np.any(order == labels[:, None], axis=-1)


def accuracy(
  scores: np.ndarray, labels: np.ndarray, k: int = 1, valid: np.ndarray | None = None
) -> float:
  """Top-k accuracy over the valid rows (NaN when there are none)."""
  correct = topk_correct(scores, labels, k)
  mask = _valid_mask(correct.shape[0], valid)
  if not mask.any():
    return float('nan')
  return float(np.mean(correct[mask]))


def video_predictions(
  probs: np.ndarray, labels: np.ndarray, video_ids: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    raise ValueError(
      f'video_predictions: clips of video(s) {bad[:5].tolist()} carry different labels'
    )
  return vids, sums / counts[:, None], vlabels


def video_accuracy(
  probs: np.ndarray, labels: np.ndarray, video_ids: np.ndarray, valid: np.ndarray | None = None
) -> float:
  """Top-1 accuracy of the clip-averaged softmax per video (NaN with no videos)."""
  _, mean_probs, vlabels = video_predictions(probs, labels, video_ids, valid)
  if len(vlabels) == 0:
    return float('nan')
  return float(np.mean(topk_correct(mean_probs, vlabels, 1)))


def confusion_matrix(
  labels: np.ndarray, predictions: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
  """`(K, K)` int64 counts, rows = true class, columns = predicted class."""
  labels = np.asarray(labels, np.int64)
  predictions = np.asarray(predictions, np.int64)
  mask = _valid_mask(labels.shape[0], valid)
  labels, predictions = labels[mask], predictions[mask]
  for name, arr in (('labels', labels), ('predictions', predictions)):
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
      raise ValueError(
        f'confusion_matrix: {name} must lie in [0, {num_classes}), '
        f'found range [{arr.min()}, {arr.max()}]'
      )
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """Recall per true class from a confusion matrix; NaN for classes with no samples."""
  confusion = np.asarray(confusion, np.float64)
  totals = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, np.diag(confusion) / totals, np.nan)


# ----------------------------------------------------------------------------------
# Boxes.


def box_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """`(N,)` IoU of matching rows of two `(N, 4)` arrays of `(x, y, w, h)` boxes, float64."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape or pred.ndim != 2 or pred.shape[-1:] != (4,):
    raise ValueError(f'box_iou: expected two (N, 4) arrays, found {pred.shape} and {target.shape}')
  return boxes_lib.iou_xywh(pred.astype(np.float64), target.astype(np.float64))


def normalized_to_pixels(boxes: np.ndarray, frame_sizes: Any = UCF101_FRAME_SIZE) -> np.ndarray:
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
    raise ValueError(
      f'normalized_to_pixels: frame_sizes must be (height, width) or '
      f'({boxes.shape[0]}, 2), found shape {sizes.shape}'
    )
  if sizes.size and not np.all(sizes > 0):
    raise ValueError(f'normalized_to_pixels: frame sizes must be positive, found min {sizes.min()}')
  h, w = sizes[..., 0], sizes[..., 1]
  return boxes * np.stack([w, h, w, h], axis=-1)


def mean_iou(
  pred: np.ndarray, target: np.ndarray, has_box: np.ndarray, valid: np.ndarray | None = None
) -> float:
  """Mean IoU over the (valid) clips that have a box target; NaN when none do."""
  has_box = np.asarray(has_box).astype(bool) & _valid_mask(len(has_box), valid)
  if not has_box.any():
    return float('nan')
  return float(np.mean(box_iou(np.asarray(pred)[has_box], np.asarray(target)[has_box])))
