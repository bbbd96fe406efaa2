"""The 3D-ResNets-PyTorch family (kenshohara/3D-ResNets-PyTorch) as a pure Flax module.

Tensor for tensor the same network, so that its checkpoints convert exactly; inputs are NTHWC.

Submodules are named after the PyTorch keys (`conv1`, `bn1`, `layer2_0/conv1`,
`layer2_0/downsample_conv`, ...) so that the weight mapping stays obvious. Parameters are
float32; `dtype` is the compute dtype (bfloat16 on accelerators).
"""

from typing import Any
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stconsist_jax.models import conv as conv_lib

# depth -> (block type, blocks per stage).
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
  10: ('basic', (1, 1, 1, 1)),
  18: ('basic', (2, 2, 2, 2)),
  34: ('basic', (3, 4, 6, 3)),
  50: ('bottleneck', (3, 4, 6, 3)),
  101: ('bottleneck', (3, 4, 23, 3)),
  152: ('bottleneck', (3, 8, 36, 3)),
  200: ('bottleneck', (3, 24, 36, 3)),
}
BASE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {'basic': 1, 'bottleneck': 4}
SHORTCUT_TYPES = ('A', 'B')
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
BN_EPSILON = 1e-5


def stage_widths(widen_factor: float) -> tuple[int, ...]:
  """Per-stage `planes`, truncated like PyTorch's `int(x * widen_factor)`."""
  return tuple(int(w * widen_factor) for w in BASE_WIDTHS)


def stage_strides(no_max_pool: bool) -> tuple[int, ...]:
  """Spatial stride (input pixels per map cell) of layer1..layer4: conv1 halves the frame,
  the max-pool (unless skipped) halves it again, layer2..layer4 halve it each."""
  first = 2 if no_max_pool else 4
  return tuple(first * 2**stage for stage in range(len(BASE_WIDTHS)))


def validate_architecture(
  depth: int, shortcut_type: str, widen_factor: float, conv1_t_size: int, conv1_t_stride: int
) -> None:
  """Raises ValueError naming the bad argument of a ResNet3D."""
  if depth not in DEPTHS:
    raise ValueError(f'ResNet3D depth must be one of {sorted(DEPTHS)}, got {depth!r}.')
  if shortcut_type not in SHORTCUT_TYPES:
    raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}.")
  if min(stage_widths(widen_factor)) < 1:
    raise ValueError(f'widen_factor {widen_factor!r} leaves a stage with no channels.')
  if conv1_t_size < 1 or conv1_t_stride < 1:
    raise ValueError(
      f'conv1_t_size and conv1_t_stride must be >= 1, got {conv1_t_size!r} and {conv1_t_stride!r}.'
    )


def _conv(
  features: int,
  kernel: Sequence[int],
  stride: Sequence[int] | int,
  padding: Sequence[int],
  dtype: Any,
  name: str,
  conv_impl: str = 'auto',
) -> nn.Conv:
  """A bias-free Conv3d with explicit symmetric padding (never 'SAME')."""
  if isinstance(stride, int):
    stride = (stride,) * 3
  return nn.Conv(
    features,
    kernel_size=tuple(kernel),
    strides=tuple(stride),
    padding=[(p, p) for p in padding],
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
    conv_general_dilated=conv_lib.resolve_conv_impl(conv_impl),
  )


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def shortcut_a(x: jax.Array, out_channels: int, stride: int) -> jax.Array:
  """Parameter-free shortcut A: every `stride`-th voxel in T, H, W, new channels zero.

  Matches PyTorch's `F.avg_pool3d(x, kernel_size=1, stride=stride)` followed by
  concatenating zeros along channels. (The PyTorch code concatenates `out.data`, which
  also cuts the gradient through this shortcut; here the gradient flows, as intended.)
  """
  x = x[:, ::stride, ::stride, ::stride, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise ValueError(f'shortcut A cannot shrink channels {x.shape[-1]} -> {out_channels}.')
  return jnp.pad(x, [(0, 0)] * 4 + [(0, extra)])


class Block(nn.Module):
  """A BasicBlock (two 3x3x3 convs) or Bottleneck (1x1x1, 3x3x3, 1x1x1 to 4x width)."""

  block: str
  planes: int
  stride: int
  downsample: str | None  # None, 'A' or 'B'.
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_channels = self.planes * EXPANSION[self.block]
    if self.block == 'basic':
      y = _conv(
        self.planes, (3, 3, 3), self.stride, (1, 1, 1), self.dtype, 'conv1', self.conv_impl
      )(x)
      y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
      y = _conv(self.planes, (3, 3, 3), 1, (1, 1, 1), self.dtype, 'conv2', self.conv_impl)(y)
      y = _batch_norm(train, self.dtype, 'bn2')(y)
    else:
      y = _conv(self.planes, (1, 1, 1), 1, (0, 0, 0), self.dtype, 'conv1', self.conv_impl)(x)
      y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
      y = _conv(
        self.planes, (3, 3, 3), self.stride, (1, 1, 1), self.dtype, 'conv2', self.conv_impl
      )(y)
      y = nn.relu(_batch_norm(train, self.dtype, 'bn2')(y))
      y = _conv(out_channels, (1, 1, 1), 1, (0, 0, 0), self.dtype, 'conv3', self.conv_impl)(y)
      y = _batch_norm(train, self.dtype, 'bn3')(y)

    if self.downsample == 'A':
      residual = shortcut_a(x, out_channels, self.stride).astype(y.dtype)
    elif self.downsample == 'B':
      residual = _conv(
        out_channels,
        (1, 1, 1),
        self.stride,
        (0, 0, 0),
        self.dtype,
        'downsample_conv',
        self.conv_impl,
      )(x)
      residual = _batch_norm(train, self.dtype, 'downsample_bn')(residual)
    else:
      residual = x
    return nn.relu(y + residual)


def max_pool_3d(x: jax.Array) -> jax.Array:
  """3x3x3 max-pool, stride 2, padding 1 on NTHWC: nn.max_pool's numbers and gradients.

  The padding is an explicit -inf pad (what reduce_window pads with; XLA folds it back
  into the pool) followed by a 'VALID' pool with the window as a keyword: jax2onnx
  replaces nn.max_pool while it converts by a plugin that takes only 'SAME'/'VALID'
  padding and a keyword window, and lowers it to one ONNX MaxPool.
  """
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, window_shape=(3, 3, 3), strides=(2, 2, 2), padding='VALID')


class ResNet3D(nn.Module):
  """The 3D ResNet backbone, without the classifier.

  Attributes:
    depth: 10, 18, 34 (BasicBlock) or 50, 101, 152, 200 (Bottleneck).
    shortcut_type: 'A' (subsample + zero channels) or 'B' (1x1x1 conv + BN).
    widen_factor: multiplies the stage widths 64/128/256/512.
    conv1_t_size: temporal kernel of conv1 (padding conv1_t_size // 2).
    conv1_t_stride: temporal stride of conv1.
    no_max_pool: skip the 3x3x3 stride-2 max-pool after conv1.
    dtype: compute dtype; parameters and BatchNorm statistics stay float32.
    conv_impl: 'xla' (lax 3D convolutions), 'conv2d' (the same sums as 2D convolutions
      over temporal taps, several times faster on XLA:CPU) or 'auto' (conv2d on CPU).

  `__call__(x, train)` takes float `N, T, H, W, C` (already normalized) and returns, in
  `dtype`, `{'features': (N, D) globally average-pooled, 'feature_map': (N, t, h, w, D)
  (the last stage's output), 'stages': [layer1, ..., layer4 outputs (N, t_s, h_s, w_s, D_s)]}`;
  `stage_strides(no_max_pool)` gives the stages' spatial strides.
  """

  depth: int = 34
  shortcut_type: str = 'B'
  widen_factor: float = 1.0
  conv1_t_size: int = 7
  conv1_t_stride: int = 1
  no_max_pool: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    validate_architecture(
      self.depth, self.shortcut_type, self.widen_factor, self.conv1_t_size, self.conv1_t_stride
    )
    block, layers = DEPTHS[self.depth]
    widths = stage_widths(self.widen_factor)
    x = x.astype(self.dtype)
    x = _conv(
      widths[0],
      (self.conv1_t_size, 7, 7),
      (self.conv1_t_stride, 2, 2),
      (self.conv1_t_size // 2, 3, 3),
      self.dtype,
      'conv1',
      self.conv_impl,
    )(x)
    x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
    if not self.no_max_pool:
      x = max_pool_3d(x)

    in_planes = widths[0]
    stages = []
    for stage, (planes, num_blocks) in enumerate(zip(widths, layers)):
      stride = 1 if stage == 0 else 2
      out_planes = planes * EXPANSION[block]
      needs_downsample = stride != 1 or in_planes != out_planes
      for i in range(num_blocks):
        x = Block(
          block=block,
          planes=planes,
          stride=stride if i == 0 else 1,
          downsample=self.shortcut_type if (i == 0 and needs_downsample) else None,
          dtype=self.dtype,
          conv_impl=self.conv_impl,
          name=f'layer{stage + 1}_{i}',
        )(x, train)
      stages.append(x)
      in_planes = out_planes

    # Mean in float32: a bf16 sum over many voxels loses precision.
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3)).astype(self.dtype)
    return {'features': features, 'feature_map': x, 'stages': stages}
