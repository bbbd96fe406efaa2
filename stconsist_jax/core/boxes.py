"""Box geometry in one place: horizontal flip, layout conversion and IoU of boxes.

Boxes lie on the last axis as `(x_left, y_top, w, h)` ("xywh") or corners `(x1, y1, x2, y2)`.
Every function takes the array namespace `xp`: numpy (the default) for metrics and
tubes, jax.numpy in the jitted train step, tf.experimental.numpy inside tf.data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # An array of the namespace `xp`.


def flip_xywh(boxes: Array, xp: Any = np) -> Array:
  """`(x, y, w, h)` -> `(1 - x - w, y, w, h)`: the boxes of the horizontally flipped frame.

  For boxes normalized by the frame width.
  """
  boxes = xp.asarray(boxes)
  return xp.concatenate([1.0 - boxes[..., :1] - boxes[..., 2:3], boxes[..., 1:]], axis=-1)


def xywh_to_corners(boxes: Array, xp: Any = np) -> Array:
  """`(x, y, w, h)` -> `(x1, y1, x2, y2)` along the last axis."""
  boxes = xp.asarray(boxes)
  return xp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def corners_to_xywh(boxes: Array, xp: Any = np) -> Array:
  """`(x1, y1, x2, y2)` -> `(x, y, w, h)` along the last axis."""
  boxes = xp.asarray(boxes)
  return xp.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def iou_corners(a: Array, b: Array, *, plus_one: bool = False, xp: Any = np) -> Array:
  """IoU of corner boxes `a (..., 4)` and `b (..., 4)`, broadcast against each other.

  Boxes with non-positive width or height have zero area; a pair whose union is zero
  (two zero-area boxes) has IoU 0.

  Args:
    a: corner boxes.
    b: corner boxes, broadcastable with `a`.
    plus_one: ACT's pixel convention: a box covers the pixels `x1..x2` inclusive, so
      width = `x2 - x1 + 1` (likewise height and the intersection). Only meaningful for
      boxes in pixels. Identical to ACT's `iou2d` for boxes with `x2 >= x1 - 1` and
      `y2 >= y1 - 1` (widths below that are clipped to 0 here).
    xp: the array namespace of `a` and `b`.
  """
  one = 1.0 if plus_one else 0.0

  def extent(lo, hi):
    return xp.maximum(hi - lo + one, 0.0)

  def area(box):
    return extent(box[..., 0], box[..., 2]) * extent(box[..., 1], box[..., 3])

  inter = extent(xp.maximum(a[..., 0], b[..., 0]), xp.minimum(a[..., 2], b[..., 2])) * extent(
    xp.maximum(a[..., 1], b[..., 1]), xp.minimum(a[..., 3], b[..., 3])
  )
  union = area(a) + area(b) - inter
  positive = union > 0
  return xp.where(positive, inter / xp.where(positive, union, 1.0), 0.0)


def pairwise_iou_corners(a: Array, b: Array, *, plus_one: bool = False, xp: Any = np) -> Array:
  """`(M, G)` IoU between corner boxes `a (M, 4)` and `b (G, 4)` (see `iou_corners`)."""
  return iou_corners(a[:, None, :], b[None, :, :], plus_one=plus_one, xp=xp)


def iou_xywh(a: Array, b: Array, xp: Any = np) -> Array:
  """IoU of `(x, y, w, h)` boxes `a (..., 4)` and `b (..., 4)`, broadcast elementwise."""
  return iou_corners(xywh_to_corners(a, xp), xywh_to_corners(b, xp), xp=xp)
