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


TUBELET_PLACEMENT = (
  'tubelet clips: output frames o..o+K-1 for o = 0, s, 2s, ... and F-K (so every frame is '
  'covered), the clip holding frames o - (T-K)//2 + p, p = 0..T-1, clamped to the video'
)


def tubelet_output_starts(video_frames: int, k: int, stride: int) -> np.ndarray:
  """First output frames int64 `(n,)` of the tubelet clips of a whole video of F frames.

  0, s, 2s, ... up to F - K, and F - K itself when the grid misses it, so that with
  s <= K every frame lies in some clip's K output frames (one clip, at 0, when F <= K).
  """
  if k < 1 or stride < 1:
    raise ValueError(f'tubelet frames and stride must be >= 1, got {k} and {stride}')
  if stride > k:
    raise ValueError(f'a tubelet stride of {stride} > K = {k} frames leaves frames uncovered')
  if video_frames < 1:
    return np.zeros(0, np.int64)
  last = max(video_frames - k, 0)
  starts = np.arange(0, last + 1, stride, dtype=np.int64)
  return starts if starts[-1] == last else np.r_[starts, last]


def num_tubelet_clips(video_frames: int, k: int, stride: int) -> int:
  """`len(tubelet_output_starts(...))`, without the array."""
  if video_frames < 1:
    return 0
  last = max(video_frames - k, 0)
  return last // stride + 1 + int(last % stride != 0)


def tubelet_offsets(num_frames: int, k: int) -> np.ndarray:
  """Offsets int64 `(T,)` of a tubelet clip's frames from its first output frame: the K
  output frames are the central positions p0 .. p0 + K - 1, p0 = (T - K) // 2."""
  if not 1 <= k <= num_frames:
    raise ValueError(f'tubelet frames K must be in 1..{num_frames} (the clip), got {k}')
  return np.arange(num_frames, dtype=np.int64) - (num_frames - k) // 2


def first_output_position(num_frames: int, k: int) -> int:
  """p0: the clip position of a tubelet's first output frame."""
  return (num_frames - k) // 2
