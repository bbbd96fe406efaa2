"""The dense tubelet head: per cell of a stride-s map, class logits and a box per output frame.

A light FPN neck over the backbone stages, a 3x3 conv, then 1x1 class and box convs.

Neck: the stride stage is the backbone stage whose spatial stride equals `stride` (else the
coarsest finer one). Its t time steps, flattened channel-wise, go through a 1x1 conv (the
temporal branch: the K per-frame boxes can see motion); each deeper stage is averaged over
time, projected by a 1x1 lateral conv and resized (bilinear) to the stride stage's h x w;
all are summed. With `finer_stage`, the next finer stage (more time steps, smaller cells)
adds its time steps and the r x r cells under each stride-stage cell, flattened
channel-wise (space-to-depth), through a 1x1 conv: finer motion for the K boxes. Then
3x3 conv + ReLU, and 1x1 convs to `num_box_classes + 1` logits (index 0 background) and
K * 4 box numbers per cell, `(dx, dy, sigmoid(bw), sigmoid(bh))` as tubelet_decode's
geometry reads them. With `presence`, a further 1x1 conv gives K logits per
cell: whether the cell's actor is on each output frame (sigmoid).
"""

import math
from typing import Any
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Initial foreground probability of every cell (RetinaNet's prior for the focal loss).
FOREGROUND_PRIOR = 0.01
# Initial presence probability of every (cell, frame): most frames of an actor's tubelet
# show it, so the presence output starts near "present".
PRESENCE_PRIOR = 0.9
HEAD_INIT_STD = 0.01


def pick_stage(stage_strides: Sequence[int], stride: int) -> int:
  """Index of the stage with spatial stride `stride`, else of the coarsest finer one."""
  finer = [i for i, s in enumerate(stage_strides) if s <= stride]
  if not finer:
    raise ValueError(
      f'tubelet_stride {stride} is finer than every backbone stage (strides '
      f'{tuple(stage_strides)}).'
    )
  return max(finer, key=lambda i: stage_strides[i])


def background_bias(num_box_classes: int, prior: float = FOREGROUND_PRIOR) -> float:
  """The background logit that, with zero foreground logits, gives total foreground
  probability `prior`: C / (e^b + C) = prior."""
  return math.log(num_box_classes * (1 - prior) / prior)


def linear_weights(in_size: int, out_size: int) -> np.ndarray:
  """`(out_size, in_size)` float32 weights of bilinear resizing along one axis, as
  `jax.image.resize(..., 'linear')` computes them: half-pixel centres, a triangle kernel of
  radius 1 (no widening: upsampling never needs antialiasing), weights renormalized over
  the input samples inside the edge, i.e. the edge pixel repeated."""
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(source[:, None] - np.arange(in_size)[None, :]))
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def upsample_bilinear(x: jax.Array, h: int, w: int) -> jax.Array:
  """`(N, h0, w0, C)` -> `(N, h, w, C)` bilinear (h >= h0, w >= w0): the numbers of
  `jax.image.resize(x, (N, h, w, C), 'linear')`, written as one einsum with constant
  weights so that a symbolic batch converts to ONNX (jax2onnx 0.17's resize needs a
  constant batch and refuses antialias)."""
  h0, w0 = x.shape[1:3]
  if h < h0 or w < w0:
    raise ValueError(f'upsample_bilinear upsamples: ({h0}, {w0}) -> ({h}, {w})')
  rows, cols = linear_weights(h0, h), linear_weights(w0, w)
  return jnp.einsum('nijc,hi,wj->nhwc', x, rows, cols, precision=jax.lax.Precision.HIGHEST).astype(
    x.dtype
  )


def space_to_depth(x: jax.Array, r: int) -> jax.Array:
  """`(N, t, H, W, C)` -> `(N, ceil(H / r), ceil(W / r), t * r * r * C)`: each output cell
  holds the t time steps of the r x r input cells under it (zeros past an edge), channels
  ordered (time, row, column, channel)."""
  n, t, height, width, c = x.shape
  h, w = -(-height // r), -(-width // r)
  x = jnp.pad(x, ((0, 0), (0, 0), (0, h * r - height), (0, w * r - width), (0, 0)))
  x = x.reshape(n, t, h, r, w, r, c)
  return jnp.transpose(x, (0, 2, 4, 1, 3, 5, 6)).reshape(n, h, w, t * r * r * c)


def presence_bias(prior: float = PRESENCE_PRIOR) -> float:
  """The presence logit of initial probability `prior`: log(prior / (1 - prior))."""
  return math.log(prior / (1 - prior))


class TubeletHead(nn.Module):
  """Backbone stages -> `{'tubelet_logits': (N, h, w, C + 1), 'tubelet_boxes': (N, h, w, K, 4)}`,
  and with `presence` `'tubelet_presence': (N, h, w, K)` logits, all float32.

  Attributes:
    num_box_classes: C, the annotated (tube-label) classes.
    num_frames: K, boxes per cell.
    stride: output stride in input pixels (picks the stride stage, see `pick_stage`).
    width: channels of the neck and the 3x3 conv.
    stage_strides: spatial stride of each input stage (resnet3d.stage_strides).
    presence: add the per-frame presence logits (a 1x1 conv 'presence').
    finer_stage: add the next finer stage by `space_to_depth` and a 1x1 conv
      'temporal_finer' (nothing when the stride stage is the finest).
    dtype: compute dtype; parameters and outputs are float32.
  """

  num_box_classes: int
  num_frames: int
  stride: int = 8
  width: int = 256
  stage_strides: Sequence[int] = (4, 8, 16, 32)
  presence: bool = False
  finer_stage: bool = False
  dtype: Any = jnp.float32

  def _conv(self, features: int, kernel: int, name: str, **kwargs) -> nn.Conv:
    return nn.Conv(
      features,
      (kernel, kernel),
      padding=[(kernel // 2, kernel // 2)] * 2,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name=name,
      **kwargs,
    )

  @nn.compact
  def __call__(self, stages: Sequence[jax.Array]) -> dict[str, jax.Array]:
    if len(stages) != len(self.stage_strides):
      raise ValueError(f'{len(stages)} stage maps for {len(self.stage_strides)} stage strides.')
    first = pick_stage(self.stage_strides, self.stride)
    base = stages[first].astype(self.dtype)
    n, t, h, w, c = base.shape
    temporal = jnp.transpose(base, (0, 2, 3, 1, 4)).reshape(n, h, w, t * c)
    x = self._conv(self.width, 1, 'temporal')(temporal)
    if self.finer_stage and first > 0:
      r = self.stage_strides[first] // self.stage_strides[first - 1]
      finer = space_to_depth(stages[first - 1].astype(self.dtype), r)[:, :h, :w]
      x = x + self._conv(self.width, 1, 'temporal_finer')(finer)
    for index in range(first + 1, len(stages)):
      # Mean in float32: a bf16 sum over the time steps loses precision.
      deep = jnp.mean(stages[index].astype(jnp.float32), axis=1).astype(self.dtype)
      lateral = self._conv(self.width, 1, f'lateral_{index + 1}')(deep)
      x = x + upsample_bilinear(lateral, h, w).astype(self.dtype)
    x = nn.relu(self._conv(self.width, 3, 'conv')(x))

    head_init = nn.initializers.normal(HEAD_INIT_STD)
    bias = jnp.zeros(self.num_box_classes + 1).at[0].set(background_bias(self.num_box_classes))
    logits = self._conv(
      self.num_box_classes + 1,
      1,
      'cls',
      kernel_init=head_init,
      bias_init=lambda *_: bias,
    )(x)
    raw = self._conv(self.num_frames * 4, 1, 'box', kernel_init=head_init)(x)
    raw = raw.astype(jnp.float32).reshape(n, h, w, self.num_frames, 4)
    boxes = jnp.concatenate([raw[..., :2], nn.sigmoid(raw[..., 2:])], axis=-1)
    out = {'tubelet_logits': logits.astype(jnp.float32), 'tubelet_boxes': boxes}
    if self.presence:
      out['tubelet_presence'] = self._conv(
        self.num_frames,
        1,
        'presence',
        kernel_init=head_init,
        bias_init=nn.initializers.constant(presence_bias()),
      )(x).astype(jnp.float32)
    return out
