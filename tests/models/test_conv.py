"""conv3d_as_2d against XLA's own 3D convolution and a direct numpy loop."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from stconsist_jax.models import conv

DIMS = ('NTHWC', 'THWIO', 'NTHWC')


def numpy_conv3d(x, w, stride, pad):
  """Direct definition: out[n,t,i,j,o] = sum x_pad[n, t*s+a, i*s+b, j*s+c, :] w[a,b,c,:,o]."""
  x = np.pad(x, [(0, 0)] + [(p, p) for p in pad] + [(0, 0)])
  kt, kh, kw, _, o = w.shape
  n, t, h, ww, _ = x.shape
  to, ho, wo = [(size - k) // s + 1 for size, k, s in zip((t, h, ww), (kt, kh, kw), stride)]
  out = np.zeros((n, to, ho, wo, o))
  for a in range(kt):
    for b in range(kh):
      for c in range(kw):
        patch = x[
          :,
          a : a + stride[0] * (to - 1) + 1 : stride[0],
          b : b + stride[1] * (ho - 1) + 1 : stride[1],
          c : c + stride[2] * (wo - 1) + 1 : stride[2],
        ]
        out += patch @ w[a, b, c]
  return out


@pytest.mark.parametrize(
  'kernel,stride,pad',
  [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1)),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
    ((7, 7, 7), (1, 2, 2), (3, 3, 3)),
    ((1, 1, 1), (2, 2, 2), (0, 0, 0)),
    ((3, 7, 7), (2, 2, 2), (1, 3, 3)),
  ],
)
def test_matches_direct_convolution(kernel, stride, pad):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 9, 10, 3)).astype(np.float32)
  w = rng.normal(size=kernel + (3, 4)).astype(np.float32)
  got = conv.conv3d_as_2d(
    jnp.asarray(x),
    jnp.asarray(w),
    stride,
    [(p, p) for p in pad],
    dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, DIMS),
  )
  np.testing.assert_allclose(np.asarray(got), numpy_conv3d(x, w, stride, pad), rtol=1e-4, atol=1e-4)


def test_gradients_match_xla_3d_convolution():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 8, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)
  stride, padding = (2, 2, 2), [(1, 1)] * 3

  def loss(fn, x, w):
    return jnp.sum(jnp.sin(fn(x, w, stride, padding, dimension_numbers=DIMS)))

  got = jax.grad(lambda x, w: loss(conv.conv3d_as_2d, x, w), argnums=(0, 1))(x, w)
  want = jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-4)


def test_unsupported_cases_fall_back_to_xla():
  x = jnp.ones((1, 4, 4, 4, 2))
  w = jnp.ones((3, 3, 3, 2, 2))
  got = conv.conv3d_as_2d(x, w, (1, 1, 1), 'SAME', dimension_numbers=DIMS)
  want = lax.conv_general_dilated(x, w, (1, 1, 1), 'SAME', dimension_numbers=DIMS)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_resolve_conv_impl():
  assert conv.resolve_conv_impl('xla') is None
  assert conv.resolve_conv_impl('conv2d') is conv.conv3d_as_2d
  expected = conv.conv3d_as_2d if jax.default_backend() == 'cpu' else None
  assert conv.resolve_conv_impl('auto') is expected
  with pytest.raises(ValueError, match='conv_impl must be one of'):
    conv.resolve_conv_impl('cudnn')
