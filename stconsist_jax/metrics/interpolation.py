"""Detections computed every k-th frame of a video -> every frame: boxes and scores
interpolated linearly between computed frames, held before the first and after the last.
"""

import numpy as np

from stconsist_jax.metrics import tubes


def fill_frames(
  frames: np.ndarray, boxes: np.ndarray, scores: np.ndarray, num_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Detections computed every k-th frame -> every frame `0..num_frames - 1`.

  Boxes and scores are interpolated linearly (coordinate by coordinate) between the
  two nearest computed frames, and held constant before the first and after the last
  computed frame. Detection `n` of one frame is assumed to continue detection `n` of
  the next (true for a one-box-per-frame model).

  Args:
    frames: `(F,)` strictly increasing computed frames in `[0, num_frames)`, F >= 1.
    boxes: `(F, N, 4)`.
    scores: `(F, N, C)`.
    num_frames: frames of the video.

  Returns:
    `(frames (num_frames,) int64, boxes (num_frames, N, 4), scores (num_frames, N, C))`,
    float64; computed frames keep their values exactly.
  """
  frames, boxes, scores = tubes.check_video_arrays(frames, boxes, scores, 'fill_frames')
  lerp = _interpolator(frames, num_frames, 'fill_frames')
  return np.arange(num_frames, dtype=np.int64), lerp(boxes), lerp(scores)


def _interpolator(frames: np.ndarray, num_frames: int, fn_name: str):
  """`lerp(x)`: values `x` `(F, ...)` of the computed `frames` -> every frame's
  `(num_frames, ...)`, linear between the two nearest computed frames, held outside."""
  if frames.shape[0] == 0:
    raise ValueError(f'{fn_name}: needs at least one computed frame')
  if num_frames < 1 or frames[-1] >= num_frames:
    raise ValueError(
      f'{fn_name}: computed frames must lie in [0, {num_frames}), found last frame {frames[-1]}'
    )
  target = np.arange(num_frames, dtype=np.int64)
  hi = np.clip(np.searchsorted(frames, target, side='left'), 0, len(frames) - 1)
  lo = np.clip(hi - 1, 0, None)
  lo = np.where(frames[hi] == target, hi, lo)  # Exact hits (and the first frame).
  span = (frames[hi] - frames[lo]).astype(np.float64)
  w = np.where(span > 0, (target - frames[lo]) / np.where(span > 0, span, 1.0), 0.0)
  w = np.clip(w, 0.0, 1.0)  # Before the first / after the last: hold.

  def lerp(x):  # x[lo] * (1 - w) + x[hi] * w, in place: two arrays of the output's size
    weight = w.reshape((-1,) + (1,) * (x.ndim - 1))
    out = x[lo]
    out *= 1.0 - weight
    high = x[hi]
    high *= weight
    out += high
    return out

  return lerp


def fill_one_box(
  frames: np.ndarray, boxes: np.ndarray, scores: np.ndarray, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
  """`fill_frames` for one box per frame: boxes `(F, 4)`, scores `(F, C)` -> every frame's
  `(num_frames, 4)` and `(num_frames, C)`, float64."""
  _, dense_boxes, dense_scores = fill_frames(
    frames, np.asarray(boxes)[:, None], np.asarray(scores)[:, None], num_frames
  )
  return dense_boxes[:, 0], dense_scores[:, 0]


def fill_scores(frames: np.ndarray, scores: np.ndarray, num_frames: int) -> np.ndarray:
  """`fill_one_box`'s scores alone: `(F, C)` of the computed frames -> `(num_frames, C)`
  float64 (no boxes interpolated for nobody)."""
  frames, _, scores = tubes.check_video_arrays(
    frames, np.zeros((len(frames), 1, 4)), np.asarray(scores)[:, None], 'fill_scores'
  )
  return _interpolator(frames, num_frames, 'fill_scores')(scores[:, 0])
