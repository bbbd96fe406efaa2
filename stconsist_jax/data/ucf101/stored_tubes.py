"""A video's annotated tubes as a TFDS build stores them: per-frame boxes clipped to the
frame and normalized, a presence mask, and counts of the boxes that storing changed or dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stconsist_jax.data import records as records_lib


class TubeArrays(NamedTuple):
  """A video's tubes as stored, and how many boxes storing them changed or dropped."""

  labels: np.ndarray  # int32 (k,)
  boxes: np.ndarray  # float32 (k, n, 4): normalized corners, zeros where absent
  present: np.ndarray  # bool (k, n)
  beyond_video: int  # boxes on frames the video does not have
  clipped: int  # boxes partly outside the frame, clipped to it
  empty: int  # boxes empty once clipped (zero width or height, or off the frame)


def clip_boxes(
  boxes: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(corner boxes clipped to the frame, which changed, which are empty after it)."""
  clipped = np.clip(boxes, 0, np.array([width, height, width, height], np.float64))
  changed = np.any(clipped != boxes, axis=-1)
  empty = (clipped[..., 2] <= clipped[..., 0]) | (clipped[..., 3] <= clipped[..., 1])
  return clipped, changed, empty


def tube_arrays(
  record: records_lib.VideoRecord | None, num_frames: int, height: int, width: int
) -> TubeArrays:
  """Tubes -> stored arrays: boxes clipped to the frame, empty ones not present."""
  tubes = record.tubes if record is not None else ()
  labels = np.array([t.label for t in tubes], np.int32)
  boxes = np.zeros((len(tubes), num_frames, 4), np.float32)
  present = np.zeros((len(tubes), num_frames), bool)
  scale = np.array([width, height, width, height], np.float64)
  beyond = clipped_count = empty_count = 0
  for k, t in enumerate(tubes):
    lo, hi = max(t.start, 0), min(t.end, num_frames)
    beyond += t.num_boxes - max(hi - lo, 0)
    if hi <= lo:
      continue
    clipped, changed, empty = clip_boxes(t.boxes[lo - t.start : hi - t.start], height, width)
    clipped_count += int(np.sum(changed & ~empty))
    empty_count += int(np.sum(empty))
    keep = ~empty
    boxes[k, lo:hi][keep] = clipped[keep] / scale
    present[k, lo:hi] = keep
  return TubeArrays(labels, boxes, present, beyond, clipped_count, empty_count)
