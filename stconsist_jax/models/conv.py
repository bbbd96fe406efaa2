"""3D convolution as a sum of 2D convolutions over the temporal kernel taps.

The same numbers as `lax.conv_general_dilated` on NTHWC/THWIO; XLA's CPU backend runs
2D convolutions several times faster than 3D ones (forward and backward), GPUs do not care.
"""

from typing import Any
from collections.abc import Sequence

import jax
from jax import lax
import jax.numpy as jnp

from stconsist_jax.config import schema

CONV_IMPLS = schema.CONV_IMPLS


def _is_default_3d(
  lhs: jax.Array,
  dimension_numbers: Any,
  lhs_dilation: Any,
  rhs_dilation: Any,
  feature_group_count: int,
) -> bool:
  """Whether this is the plain channels-last 3D case that the 2D rewrite covers."""
  if lhs.ndim != 5 or feature_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  expected = lax.conv_dimension_numbers(lhs.shape, (1, 1, 1, 1, 1), ('NTHWC', 'THWIO', 'NTHWC'))
  return dimension_numbers is None or dimension_numbers == expected


def conv3d_as_2d(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: Sequence[tuple[int, int]] | str,
  lhs_dilation: Any = None,
  rhs_dilation: Any = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  precision: Any = None,
  **kwargs,
) -> jax.Array:
  """`lax.conv_general_dilated` for NTHWC x THWIO, computed as kt 2D convolutions.

  out[:, t] = sum_dt conv2d(x_padded[:, t * st + dt], w[dt]): each tap is one 2D conv
  over the (N * T_out) frames it touches. Anything other than that plain case (string
  padding, dilation, groups, other layouts) is passed to `lax.conv_general_dilated`.
  """
  if isinstance(padding, str) or not _is_default_3d(
    lhs, dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count
  ):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
    )
  kt = rhs.shape[0]
  st = window_strides[0]
  (pt_lo, pt_hi), pad_h, pad_w = padding
  x = jnp.pad(lhs, ((0, 0), (pt_lo, pt_hi), (0, 0), (0, 0), (0, 0)))
  n, t, h, w, c = x.shape
  t_out = (t - kt) // st + 1
  out = None
  for dt in range(kt):
    frames = x[:, dt : dt + st * (t_out - 1) + 1 : st].reshape(n * t_out, h, w, c)
    y = lax.conv_general_dilated(
      frames,
      rhs[dt],
      window_strides[1:],
      (pad_h, pad_w),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=precision,
      **kwargs,
    )
    out = y if out is None else out + y
  return out.reshape(n, t_out, *out.shape[1:])


def resolve_conv_impl(conv_impl: str) -> Any:
  """The `conv_general_dilated` for flax's nn.Conv: None means XLA's own."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}.')
  if conv_impl == 'auto':
    conv_impl = 'conv2d' if jax.default_backend() == 'cpu' else 'xla'
  return conv3d_as_2d if conv_impl == 'conv2d' else None
