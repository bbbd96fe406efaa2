"""Where a clip's frames sit around its centre frame: the one placement rule shared by the
eval streams (data.pipeline.clips, in TensorFlow) and prediction (frame_predictor).

The clip of frame f holds frames f + (p - T // 2) * s for p = 0..T-1; callers clamp
them to the video. Numpy only.
"""

from __future__ import annotations

import numpy as np

PLACEMENT = 'the clip of frame f holds frames f + (p - T//2) * s, p = 0..T-1, clamped to the video'


def centred_offsets(num_frames: int, frame_stride: int = 1) -> np.ndarray:
  """Offsets int64 `(T,)` of a clip's frames from its centre frame (position T // 2)."""
  if num_frames < 1 or frame_stride < 1:
    raise ValueError(
      f'clip length and frame stride must be >= 1, got {num_frames} and {frame_stride}'
    )
  return (np.arange(num_frames, dtype=np.int64) - num_frames // 2) * frame_stride
