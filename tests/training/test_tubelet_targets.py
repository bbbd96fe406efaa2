"""Tests of the dense tubelet targets: hand cases, a numpy loop reference, and the mirror."""

import jax
import numpy as np
import pytest

from stconsist_jax.training import tubelet_targets as tt


def _targets(boxes, present, labels, dense, h, w, k, p0):
  fn = jax.jit(tt.tubelet_targets, static_argnums=(4, 5, 6))
  return jax.tree.map(np.asarray, fn(boxes, present, labels, dense, (h, w), k, p0))


def reference_targets(boxes, present, labels, dense, h, w, k, p0):
  """Loops over actors: key frame, cell, larger box wins (ties: the first actor)."""
  b_size, _, a_size, _ = boxes.shape
  cls = np.zeros((b_size, h, w), np.int64)
  out = np.zeros((b_size, h, w, k, 4))
  mask = np.zeros((b_size, h, w, k), bool)
  best = np.full((b_size, h, w), -1.0)
  kc = k // 2
  for b in range(b_size):
    for a in range(a_size):
      frames = [f for f in range(k) if present[b, p0 + f, a]]
      if not dense[b] or labels[b, a] < 0 or not frames:
        continue
      key = min(frames, key=lambda f: (abs(f - kc), f))
      x, y, bw, bh = boxes[b, p0 + key, a]
      j = min(max(int(np.floor((x + bw / 2) * w)), 0), w - 1)
      i = min(max(int(np.floor((y + bh / 2) * h)), 0), h - 1)
      if bw * bh <= best[b, i, j]:
        continue
      best[b, i, j] = bw * bh
      cls[b, i, j] = labels[b, a] + 1
      out[b, i, j] = 0.0
      mask[b, i, j] = False
      for f in frames:
        x, y, bw, bh = boxes[b, p0 + f, a]
        out[b, i, j, f] = [(x + bw / 2) * w - (j + 0.5), (y + bh / 2) * h - (i + 0.5), bw, bh]
        mask[b, i, j, f] = True
  return cls, out, mask


def _random_case(seed, b=3, t=6, a=5):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0.0, 0.7, (b, t, a, 2))
  wh = rng.uniform(0.05, 0.3, (b, t, a, 2))
  boxes = np.concatenate([xy, wh], -1).astype(np.float32)
  present = rng.random((b, t, a)) < 0.6
  labels = rng.integers(-1, 4, (b, a)).astype(np.int32)
  dense = np.array([True, True, False])[:b]
  boxes = np.where(present[..., None], boxes, 0.0).astype(np.float32)
  return boxes, present, labels, dense


def test_output_frames_are_the_central_k_positions():
  assert tt.output_frames(16, 0) == (16, 0)
  assert tt.output_frames(16, 7) == (7, 4)
  assert tt.output_frames(8, 4) == (4, 2)
  with pytest.raises(ValueError, match='1 <= K <= 8'):
    tt.output_frames(8, 9)


@pytest.mark.parametrize(
  'present, want',
  [
    ([1, 1, 1, 1, 1], 2),  # odd K: the middle frame
    ([1, 1, 0, 1, 1], 1),  # two equally near: the earlier
    ([0, 0, 0, 0, 1], 4),
    ([1, 1, 1, 1], 2),  # even K: K // 2, the later middle frame
    ([1, 0, 0, 1], 3),  # distance 1 beats distance 2
    ([1, 1, 0, 0], 1),
  ],
)
def test_key_frame_rule(present, want):
  assert int(tt.key_frame(np.array(present, bool))) == want


def test_one_actor_by_hand():
  # 4x4 map, K = T = 3. Key frame 1: box (0.2, 0.5, 0.2, 0.2), centre (0.3, 0.6) ->
  # column floor(1.2) = 1, row floor(2.4) = 2, dx = 1.2 - 1.5 = -0.3, dy = 2.4 - 2.5 = -0.1.
  # Frame 0: centre (0.2, 0.6) -> dx = 0.8 - 1.5 = -0.7. Frame 2: absent.
  boxes = np.zeros((1, 3, 1, 4), np.float32)
  boxes[0, 0, 0] = [0.1, 0.5, 0.2, 0.2]
  boxes[0, 1, 0] = [0.2, 0.5, 0.2, 0.2]
  present = np.array([[[True], [True], [False]]])
  got = _targets(boxes, present, np.array([[5]]), np.array([True]), 4, 4, 3, 0)
  want_cls = np.zeros((1, 4, 4), int)
  want_cls[0, 2, 1] = 6
  np.testing.assert_array_equal(got.cls, want_cls)
  np.testing.assert_array_equal(got.positive, want_cls > 0)
  np.testing.assert_array_equal(got.box_mask[0, 2, 1], [True, True, False])
  assert got.box_mask.sum() == 2
  np.testing.assert_allclose(got.boxes[0, 2, 1, 0], [-0.7, -0.1, 0.2, 0.2], atol=1e-6)
  np.testing.assert_allclose(got.boxes[0, 2, 1, 1], [-0.3, -0.1, 0.2, 0.2], atol=1e-6)
  assert np.all(got.boxes[0, 2, 1, 2] == 0) and np.abs(got.boxes).sum() > 0
  assert got.cls.dtype == np.int32 and got.boxes.shape == (1, 4, 4, 3, 4)


def test_larger_box_wins_a_shared_cell():
  # Both centres at (0.25, 0.25) on a 2x2 map (cell (0, 0)); actor 1 is larger.
  boxes = np.zeros((1, 1, 3, 4), np.float32)
  boxes[0, 0, 0] = [0.2, 0.2, 0.1, 0.1]
  boxes[0, 0, 1] = [0.1, 0.1, 0.3, 0.3]
  boxes[0, 0, 2] = [0.6, 0.6, 0.2, 0.2]  # alone in cell (1, 1)
  present = np.ones((1, 1, 3), bool)
  got = _targets(boxes, present, np.array([[0, 1, 2]]), np.array([True]), 2, 2, 1, 0)
  np.testing.assert_array_equal(got.cls[0], [[2, 0], [0, 3]])
  np.testing.assert_allclose(got.boxes[0, 0, 0, 0], [0.0, 0.0, 0.3, 0.3], atol=1e-6)


def test_padding_unlabeled_clips_and_frames_outside_the_window_give_nothing():
  boxes = np.full((2, 5, 2, 4), 0.25, np.float32)
  present = np.zeros((2, 5, 2), bool)
  present[0, 0, 0] = present[0, 4, 0] = True  # actor 0: only outside positions 1..3
  present[0, 2, 1] = True  # actor 1: padding label
  present[1, 2, 0] = True  # clip 1 is not dense_labeled
  labels = np.array([[3, -1], [3, 1]])
  got = _targets(boxes, present, labels, np.array([True, False]), 2, 2, 3, 1)
  assert not got.positive.any() and not got.box_mask.any() and not got.cls.any()


def test_matches_the_numpy_loop_reference():
  for seed in range(3):
    boxes, present, labels, dense = _random_case(seed)
    got = _targets(boxes, present, labels, dense, 3, 4, 4, 1)
    cls, out, mask = reference_targets(boxes, present, labels, dense, 3, 4, 4, 1)
    assert (cls > 0).sum() >= 3  # the case is not empty
    np.testing.assert_array_equal(got.cls, cls)
    np.testing.assert_array_equal(got.positive, cls > 0)
    np.testing.assert_array_equal(got.box_mask, mask)
    np.testing.assert_allclose(got.boxes, out, atol=1e-5)


def test_targets_of_the_flipped_clip_are_the_mirrored_targets():
  boxes, present, labels, dense = _random_case(7)
  flipped = boxes.copy()
  flipped[..., 0] = 1.0 - boxes[..., 0] - boxes[..., 2]  # x -> 1 - x - w
  flipped = np.where(present[..., None], flipped, 0.0).astype(np.float32)
  original = _targets(boxes, present, labels, dense, 3, 4, 4, 1)
  of_flip = _targets(flipped, present, labels, dense, 3, 4, 4, 1)
  mirrored = jax.tree.map(np.asarray, tt.flip_targets(original))
  assert original.positive.sum() >= 3
  assert not np.array_equal(original.cls, of_flip.cls)  # the mirror moves cells
  np.testing.assert_array_equal(of_flip.cls, mirrored.cls)
  np.testing.assert_array_equal(of_flip.positive, mirrored.positive)
  np.testing.assert_array_equal(of_flip.box_mask, mirrored.box_mask)
  np.testing.assert_allclose(of_flip.boxes, mirrored.boxes, atol=1e-5)


def test_mirror_offsets_negate_dx_and_reverse_columns():
  x = np.arange(2 * 1 * 3 * 2 * 4, dtype=np.float32).reshape(2, 1, 3, 2, 4)
  got = np.asarray(tt.mirror_offsets(x))
  np.testing.assert_array_equal(got[:, :, 0, :, 0], -x[:, :, 2, :, 0])
  np.testing.assert_array_equal(got[:, :, 0, :, 1:], x[:, :, 2, :, 1:])
  np.testing.assert_array_equal(
    got[:, :, 1], np.concatenate([-x[:, :, 1, :, :1], x[:, :, 1, :, 1:]], -1)
  )
