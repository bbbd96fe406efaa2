"""Tubelet clip placement: every frame is an output frame of some clip, and the starts are
as documented (hand-written expectations)."""

import numpy as np
import pytest

from stconsist_jax.core import clip_geometry


@pytest.mark.parametrize(
  'frames, k, stride, expected',
  [
    (20, 8, 4, [0, 4, 8, 12]),  # 12 = F - K lies on the grid
    (21, 8, 4, [0, 4, 8, 12, 13]),  # F - K = 13 added
    (8, 8, 8, [0]),
    (5, 8, 4, [0]),  # shorter than K: one clip
    (1, 1, 1, [0]),
  ],
)
def test_tubelet_output_starts(frames, k, stride, expected):
  starts = clip_geometry.tubelet_output_starts(frames, k, stride)
  assert starts.tolist() == expected
  assert clip_geometry.num_tubelet_clips(frames, k, stride) == len(expected)


@pytest.mark.parametrize('frames', [1, 7, 8, 9, 30, 31, 64])
@pytest.mark.parametrize('k, stride', [(8, 4), (8, 8), (6, 5), (1, 1)])
def test_every_frame_is_covered(frames, k, stride):
  starts = clip_geometry.tubelet_output_starts(frames, k, stride)
  covered = np.zeros(frames, bool)
  for o in starts:
    covered[o : o + k] = True
  assert covered.all()
  assert np.all(np.diff(starts) > 0)


def test_stride_above_k_is_refused():
  with pytest.raises(ValueError, match='uncovered'):
    clip_geometry.tubelet_output_starts(10, 4, 5)


def test_tubelet_offsets_put_outputs_at_the_central_positions():
  assert clip_geometry.tubelet_offsets(8, 8).tolist() == list(range(8))
  # T = 16, K = 6: p0 = 5, so the clip starts 5 frames before its first output frame.
  assert clip_geometry.tubelet_offsets(16, 6).tolist() == list(range(-5, 11))
  assert clip_geometry.first_output_position(16, 6) == 5
