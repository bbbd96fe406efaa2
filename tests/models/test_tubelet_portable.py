"""The tubelet head's exportable forms: the neck's bilinear upsampling as an einsum with
constant weights, and the decoding's candidate selection by a stable argsort instead of
`lax.top_k` (which TF 2.21 cannot run), each against an independent reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stconsist_jax.models import tubelet_decode
from stconsist_jax.models import tubelet_head


def _bilinear_reference(x, h, w):
  """Half-pixel centres, the edge pixel repeated: every output sample by hand."""
  n, h0, w0, c = x.shape
  out = np.zeros((n, h, w, c), np.float64)
  for i in range(h):
    y = min(max((i + 0.5) * h0 / h - 0.5, 0.0), h0 - 1)
    y0 = int(np.floor(y))
    y1, fy = min(y0 + 1, h0 - 1), y - y0
    for j in range(w):
      xx = min(max((j + 0.5) * w0 / w - 0.5, 0.0), w0 - 1)
      x0 = int(np.floor(xx))
      x1, fx = min(x0 + 1, w0 - 1), xx - x0
      top = (1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1]
      bottom = (1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]
      out[:, i, j] = (1 - fy) * top + fy * bottom
  return out


@pytest.mark.parametrize('shape', [(2, 2, 6, 6), (3, 3, 6, 6), (1, 1, 4, 4), (3, 5, 7, 11)])
def test_upsampling_is_bilinear_by_hand_and_resize_with_or_without_antialias(shape):
  h0, w0, h, w = shape
  x = np.random.default_rng(0).normal(size=(2, h0, w0, 3)).astype(np.float32)
  got = np.asarray(jax.jit(tubelet_head.upsample_bilinear, static_argnums=(1, 2))(x, h, w))
  np.testing.assert_allclose(got, _bilinear_reference(x.astype(np.float64), h, w), atol=1e-6)
  # What the neck computed before (antialias=True, jax's default) and antialias=False: the
  # same numbers when upsampling, where antialiasing widens nothing.
  for antialias in (True, False):
    resized = jax.image.resize(x, (2, h, w, 3), 'linear', antialias=antialias)
    np.testing.assert_allclose(got, np.asarray(resized), atol=1e-6)


def test_upsampling_weights_by_hand():
  # 2 -> 4: samples at -0.25, 0.25, 0.75, 1.25 of the input; the outer ones clamp.
  np.testing.assert_allclose(
    tubelet_head.linear_weights(2, 4),
    [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]],
    atol=1e-7,
  )


def test_downsampling_is_refused():
  with pytest.raises(ValueError, match='upsamples'):
    tubelet_head.upsample_bilinear(jnp.zeros((1, 4, 4, 1)), 2, 4)


def test_candidates_are_the_top_k_ties_to_the_lower_index():
  """The decoding picks the same candidates, in the same order, as lax.top_k, ties
  included: equal scores go to the lower location first."""
  rng = np.random.default_rng(3)
  n, h, w, k, classes = 3, 4, 5, 2, 3
  logits = rng.normal(size=(n, h, w, classes + 1)).astype(np.float32)
  logits[0, 1:3] = logits[0, 0, 0]  # Rows of identical cells: tied scores.
  logits[1] = logits[1, 0, 0]  # A whole map of ties.
  boxes = np.concatenate(
    [rng.uniform(-0.5, 0.5, (n, h, w, k, 2)), rng.uniform(0.2, 0.6, (n, h, w, k, 2))], -1
  ).astype(np.float32)
  pool = 8
  # The reference: top_k's candidates, then the decoding's own NMS and ordering (numpy).
  _, best = tubelet_decode.foreground_scores(jnp.asarray(logits))
  _, order = jax.lax.top_k(best.reshape(n, h * w), pool)
  order = np.asarray(order)
  assert (order[1] == np.arange(pool)).all()  # Ties: the lower index first.
  corners = np.asarray(tubelet_decode.tubelet_corners(jnp.asarray(boxes), clip=True))
  corners = corners.reshape(n, h * w, k, 4)
  out = tubelet_decode.decode(
    jnp.asarray(logits), jnp.asarray(boxes), top_n=pool, nms_threshold=1.0, candidates=pool
  )
  # Threshold 1.0 suppresses nothing: the detections are the candidates in order.
  assert np.asarray(out['det_valid']).all()
  expected = np.take_along_axis(corners, order[:, :, None, None], axis=1)
  np.testing.assert_array_equal(np.asarray(out['det_boxes']), expected)
