"""Tests of the box geometry: flip, layout conversion and IoU under numpy and jax.numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from stconsist_jax.core import boxes


def test_flip_box():
  np.testing.assert_allclose(boxes.flip_xywh([0.1, 0.2, 0.3, 0.4]), [0.6, 0.2, 0.3, 0.4])


def test_flip_is_its_own_inverse_and_keeps_dtype():
  b = np.random.default_rng(0).uniform(0, 0.5, (3, 2, 4)).astype(np.float32)
  flipped = boxes.flip_xywh(b)
  assert flipped.dtype == np.float32 and flipped.shape == b.shape
  np.testing.assert_allclose(boxes.flip_xywh(flipped), b, atol=1e-6)


def test_layout_round_trip():
  b = np.array([[0.1, 0.2, 0.3, 0.4]])
  np.testing.assert_allclose(boxes.xywh_to_corners(b), [[0.1, 0.2, 0.4, 0.6]])
  np.testing.assert_allclose(boxes.corners_to_xywh(boxes.xywh_to_corners(b)), b)


def test_iou_known_values():
  a = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  b = np.array([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(boxes.iou_corners(a, b), [1 / 7, 0.0, 0.0])
  # ACT's pixel convention: 2x2 pixels overlapping in 1 of 4 + 4 - 1.
  np.testing.assert_allclose(
    boxes.iou_corners(
      np.array([0.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 2.0, 2.0]), plus_one=True
    ),
    1 / 7,
  )


def test_pairwise_matches_elementwise():
  rng = np.random.default_rng(1)
  a = boxes.xywh_to_corners(rng.uniform(0, 0.5, (5, 4)))
  b = boxes.xywh_to_corners(rng.uniform(0, 0.5, (3, 4)))
  matrix = boxes.pairwise_iou_corners(a, b)
  assert matrix.shape == (5, 3)
  for i in range(5):
    np.testing.assert_allclose(matrix[i], boxes.iou_corners(a[i][None], b))


@pytest.mark.parametrize('fn', ['flip_xywh', 'iou_xywh'])
def test_numpy_and_jax_agree(fn):
  rng = np.random.default_rng(2)
  a = rng.uniform(0, 0.5, (6, 4)).astype(np.float32)
  b = rng.uniform(0, 0.5, (6, 4)).astype(np.float32)
  args = (a,) if fn == 'flip_xywh' else (a, b)
  expected = getattr(boxes, fn)(*args)
  got = getattr(boxes, fn)(*map(jnp.asarray, args), xp=jnp)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
