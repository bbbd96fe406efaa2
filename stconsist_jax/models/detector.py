"""Whole models on uint8 clips: normalization preset -> ResNet3D -> classifier (+ box head).

`VideoClassifier` returns logits; `Detector` adds one box per clip, `(x_left, y_top, w, h)`,
and with the dense tubelet head (tubelet_head.py) per-location tubelets and their decoding.

Both take uint8 (or 0..255 float) clips `N, T, H, W, 3` and normalize them on the device with
a named preset, so the host never ships float32 pixels. The classifier and the one-box
heads compute in float32 whatever the backbone's compute dtype, the tubelet head in the
model's dtype; every output is float32.

Freezing (a training stage's `freeze_backbone`): `__call__(..., freeze_backbone=True)` runs
the backbone's BatchNorm in inference mode (its statistics do not move) and applies
`stop_gradient` to the backbone outputs, so no gradient reaches backbone parameters. The
classifier still receives gradients from a classification loss; the train step freezes it
too by differentiating the loss with respect to the box head's parameters alone.
"""

from typing import Any
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stconsist_jax.config import schema
from stconsist_jax.models import resnet3d
from stconsist_jax.models import tubelet_decode
from stconsist_jax.models import tubelet_head

# The box head's parameter subtree: all that trains while the backbone is frozen.
BOX_HEAD_SCOPE = 'box_head'

# name -> (scale applied first, per-channel mean, per-channel std), RGB order.
NORMALIZATION_PRESETS: dict[str, tuple[float, tuple[float, ...], tuple[float, ...]]] = {
  # 2020 release (r3d*_K_200ep.pth): 0..1, Kinetics mean and std.
  'kinetics': (1 / 255, (0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737)),
  # 2017 release (resnet-*-kinetics.pth): 0..255 minus the ActivityNet mean, no std.
  'activitynet_0_255': (1.0, (114.7748, 107.7354, 99.4750), (1.0, 1.0, 1.0)),
  'imagenet': (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  # Only scales to 0..1.
  'scale_0_1': (1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
BOX_HEADS = schema.BOX_HEADS
ACTIVATIONS = {
  'none': lambda x: x,
  'relu': nn.relu,
  'gelu': nn.gelu,
  'tanh': jnp.tanh,
  'silu': nn.silu,
}


def check_normalization(name: str) -> None:
  if name not in NORMALIZATION_PRESETS:
    raise ValueError(
      f'Unknown normalization preset {name!r}; valid presets: '
      f'{", ".join(sorted(NORMALIZATION_PRESETS))}.'
    )


def normalize(clip: jax.Array, preset: str) -> jax.Array:
  """uint8 (or 0..255) pixels -> float32 as the preset's weights expect."""
  check_normalization(preset)
  scale, mean, std = NORMALIZATION_PRESETS[preset]
  x = clip.astype(jnp.float32) * scale
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown box_activation {name!r}; valid: {", ".join(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


class MLPBoxHead(nn.Module):
  """The study's heads on the pooled vector: Dense hidden... -> Dense 4 -> sigmoid.

  Model-1: hidden (16,); Model-2: hidden (256, 64, 8). `activation` goes after each
  hidden layer ('none' as the study found best).
  """

  hidden: Sequence[int] = (16,)
  activation: str = 'none'

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    act = _activation(self.activation)
    x = features.astype(jnp.float32)
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, name=f'hidden_{i}')(x))
    return nn.sigmoid(nn.Dense(4, name='out')(x))


def central_time_slice(feature_map: jax.Array) -> jax.Array:
  """(N, t, h, w, D) -> (N, h, w, D) at the clip's centre: the middle step, or the mean of
  the two middle steps when t is even (the box target is the mean of frames 7 and 8)."""
  t = feature_map.shape[1]
  if t % 2:
    return feature_map[:, t // 2]
  return feature_map[:, t // 2 - 1 : t // 2 + 1].mean(axis=1)


class SpatialBoxHead(nn.Module):
  """Regresses the box from the central time step of the last feature map.

  Per cell (i, j) of the h x w map, 1x1 convs predict a heatmap logit, a centre offset
  inside the cell and the box size. A softmax over cells turns the heatmap into weights;
  the box centre is the weighted mean of the per-cell centres
  `((j + sigmoid(dx)) / w, (i + sigmoid(dy)) / h)` (a soft-argmax with sub-cell offsets, so
  even a 2x2 map can place a box anywhere) and the size is the weighted mean of the
  per-cell `sigmoid` sizes. The output `(x_left, y_top, w, h)` keeps the box inside the
  frame: `x_left = clip(cx - w / 2, 0, 1 - w)`, so every number lies in [0, 1].
  """

  hidden: Sequence[int] = (16,)
  activation: str = 'none'

  @nn.compact
  def __call__(self, feature_map: jax.Array) -> jax.Array:
    act = _activation(self.activation)
    x = central_time_slice(feature_map.astype(jnp.float32))
    _, h, w, _ = x.shape
    for i, width in enumerate(self.hidden):
      x = act(nn.Conv(width, (1, 1), name=f'hidden_{i}')(x))
    out = nn.Conv(5, (1, 1), name='out')(x)
    heat, offsets, sizes = out[..., 0], out[..., 1:3], out[..., 3:5]
    n = heat.shape[0]
    weights = jax.nn.softmax(heat.reshape(n, h * w), axis=-1).reshape(n, h, w, 1)
    cols = jnp.arange(w, dtype=jnp.float32)[None, :]
    rows = jnp.arange(h, dtype=jnp.float32)[:, None]
    offsets = nn.sigmoid(offsets)
    cx_cell = (cols + offsets[..., 0]) / w
    cy_cell = (rows + offsets[..., 1]) / h
    centre = jnp.stack([cx_cell, cy_cell], axis=-1)
    centre = jnp.sum(weights * centre, axis=(1, 2))
    size = jnp.sum(weights * nn.sigmoid(sizes), axis=(1, 2))
    top_left = jnp.clip(centre - size / 2, 0.0, 1.0 - size)
    return jnp.concatenate([top_left, size], axis=-1)


class VideoClassifier(nn.Module):
  """uint8 clip -> logits (N, num_classes) float32. Tree {'backbone', 'classifier'}."""

  num_classes: int
  backbone_kwargs: dict[str, Any]
  normalization: str = 'kinetics'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clip: jax.Array, train: bool) -> jax.Array:
    x = normalize(clip, self.normalization)
    out = resnet3d.ResNet3D(**self.backbone_kwargs, dtype=self.dtype, name='backbone')(x, train)
    return nn.Dense(self.num_classes, name='classifier')(out['features'].astype(jnp.float32))


class Detector(nn.Module):
  """uint8 clip -> {'logits': (N, num_classes), 'boxes': (N, 4), ...} float32.

  Attributes:
    num_classes: classifier outputs.
    backbone_kwargs: ResNet3D keyword arguments (depth, shortcut_type, widen_factor,
      conv1_t_size, conv1_t_stride, no_max_pool).
    box_head: 'mlp' (the study's heads on the pooled vector), 'spatial'
      (`SpatialBoxHead` on the central feature map), 'tubelet' (the dense
      `tubelet_head.TubeletHead` on the backbone stages) or 'none' (boxes are zeros, no
      parameters).
    box_hidden: hidden sizes of the box head: Model-1 (16,), Model-2 (256, 64, 8).
    box_activation: activation after each hidden layer; 'none' by default.
    num_box_classes, tubelet_frames, tubelet_stride, tubelet_width, tubelet_top_n,
      tubelet_nms, tubelet_presence, tubelet_presence_threshold, tubelet_finer_stage: the
      tubelet head's settings (config.model's keys of those names); read only when
      box_head='tubelet'.
    tubelet_flip_test: at inference (train=False), also run the backbone and the tubelet
      head (the same parameters) on each clip's mirror image (W reversed) and average
      every box and presence logit with the mirror image's at the mirrored cell
      (`tubelet_decode.merge_mirrored`); the class logits, dense and clip-level, stay the
      clip's own. Twice the inference cost.
    normalization: a key of NORMALIZATION_PRESETS.
    dtype: backbone (and tubelet head) compute dtype; the other heads compute in float32.

  With box_head='tubelet' the outputs add `tubelet_logits (N, h, w, num_box_classes + 1)`
  and `tubelet_boxes (N, h, w, K, 4)`, and `boxes` is `tubelet_decode.centre_box`'s; when
  `train=False` also `det_boxes`, `det_scores`, `det_valid` (`tubelet_decode.decode`).
  With `tubelet_presence` they add `tubelet_presence (N, h, w, K)` logits and, when
  `train=False`, `det_present (N, top_n, K)`.

  Parameter tree: {'backbone', 'classifier', 'box_head'}; BatchNorm statistics in
  'batch_stats' (pass `mutable=['batch_stats']` when `train=True`).
  """

  num_classes: int
  backbone_kwargs: dict[str, Any]
  box_head: str = 'mlp'
  box_hidden: Sequence[int] = (16,)
  box_activation: str = 'none'
  num_box_classes: int = 24
  tubelet_frames: int = 0
  tubelet_stride: int = 8
  tubelet_width: int = 256
  tubelet_top_n: int = 10
  tubelet_nms: float = 0.5
  tubelet_presence: bool = False
  tubelet_presence_threshold: float = 0.5
  tubelet_finer_stage: bool = False
  tubelet_flip_test: bool = False
  normalization: str = 'kinetics'
  dtype: Any = jnp.float32

  def _flip_test(self, train: bool) -> bool:
    """Whether this call averages each clip's outputs with its mirror image's."""
    return self.box_head == 'tubelet' and self.tubelet_flip_test and not train

  def _tubelets(
    self,
    stages: list[jax.Array],
    num_frames: int,
    train: bool,
    mirror_stages: list[jax.Array] | None = None,
  ) -> dict:
    """The dense head on the backbone stages, its centre box and (inference) decoding;
    with the mirror image's stages, boxes and presence averaged with its outputs."""
    k, _ = tubelet_decode.output_frames(num_frames, self.tubelet_frames)
    head = tubelet_head.TubeletHead(
      num_box_classes=self.num_box_classes,
      num_frames=k,
      stride=self.tubelet_stride,
      width=self.tubelet_width,
      stage_strides=resnet3d.stage_strides(self.backbone_kwargs.get('no_max_pool', False)),
      presence=self.tubelet_presence,
      finer_stage=self.tubelet_finer_stage,
      dtype=self.dtype,
      name=BOX_HEAD_SCOPE,
    )
    dense = head(stages)
    if mirror_stages is not None:
      dense = tubelet_decode.merge_mirrored(dense, head(mirror_stages))
    logits, boxes = dense['tubelet_logits'], dense['tubelet_boxes']
    out = dict(dense, boxes=tubelet_decode.centre_box(logits, boxes))
    if not train:
      out.update(
        tubelet_decode.decode(
          logits,
          boxes,
          top_n=self.tubelet_top_n,
          nms_threshold=self.tubelet_nms,
          tubelet_presence=dense.get('tubelet_presence'),
          presence_threshold=self.tubelet_presence_threshold,
        )
      )
    return out

  @nn.compact
  def __call__(
    self, clip: jax.Array, train: bool, freeze_backbone: bool = False
  ) -> dict[str, jax.Array]:
    if self.box_head not in BOX_HEADS:
      raise ValueError(f'Unknown box_head {self.box_head!r}; valid: {", ".join(BOX_HEADS)}.')
    x = normalize(clip, self.normalization)
    backbone = resnet3d.ResNet3D(**self.backbone_kwargs, dtype=self.dtype, name='backbone')
    out = backbone(x, train and not freeze_backbone)
    if freeze_backbone:
      out = jax.tree_util.tree_map(jax.lax.stop_gradient, out)
    features = out['features'].astype(jnp.float32)
    logits = nn.Dense(self.num_classes, name='classifier')(features)
    hidden = tuple(self.box_hidden)
    if self.box_head == 'mlp':
      boxes = MLPBoxHead(hidden, self.box_activation, name=BOX_HEAD_SCOPE)(features)
    elif self.box_head == 'spatial':
      boxes = SpatialBoxHead(hidden, self.box_activation, name=BOX_HEAD_SCOPE)(out['feature_map'])
    elif self.box_head == 'tubelet':
      mirror = backbone(jnp.flip(x, axis=3), False)['stages'] if self._flip_test(train) else None
      return {'logits': logits, **self._tubelets(out['stages'], clip.shape[1], train, mirror)}
    else:
      boxes = jnp.zeros((clip.shape[0], 4), jnp.float32)
    return {'logits': logits, 'boxes': boxes.astype(jnp.float32)}


def parse_dtype(name: str) -> Any:
  """'float32' | 'bfloat16' -> the jnp dtype, with a clear error otherwise."""
  valid = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if str(name) not in valid:
    raise ValueError(f'model dtype must be one of {sorted(valid)}, got {name!r}.')
  return valid[str(name)]


def backbone_kwargs_from_config(config: Any) -> dict[str, Any]:
  """The ResNet3D keyword arguments found in a model config (ConfigDict or dict)."""
  get = config.get
  return dict(
    depth=int(get('depth', 34)),
    shortcut_type=str(get('shortcut_type', 'B')),
    widen_factor=float(get('widen_factor', 1.0)),
    conv1_t_size=int(get('conv1_t_size', 7)),
    conv1_t_stride=int(get('conv1_t_stride', 1)),
    no_max_pool=bool(get('no_max_pool', False)),
    conv_impl=str(get('conv_impl', 'auto')),
  )


def build_model(model_config: Any) -> Detector:
  """`config.model` -> Detector. Reads depth, widen_factor, shortcut_type, conv1_t_size,
  conv1_t_stride, no_max_pool, num_classes, box_head, box_hidden, box_activation,
  normalization, dtype ('float32' | 'bfloat16'), conv_impl ('auto' | 'xla' | 'conv2d'), and
  with box_head='tubelet' num_box_classes, tubelet_frames, tubelet_stride, tubelet_width,
  tubelet_top_n, tubelet_nms, tubelet_presence (configs saved before it: False),
  tubelet_presence_threshold, tubelet_finer_stage (configs saved before it: False),
  tubelet_flip_test (inference only; configs saved before it: False)."""
  kwargs = backbone_kwargs_from_config(model_config)
  get = model_config.get
  # The values are checked where they are used, when the model is initialized or applied
  # (ResNet3D's architecture, the presets, the heads); a run's config before any of it.
  normalization = str(get('normalization', 'kinetics'))
  box_head = str(get('box_head', 'mlp'))
  box_activation = str(get('box_activation', 'none'))
  tubelet = {}
  if box_head == 'tubelet':
    tubelet = dict(
      num_box_classes=int(get('num_box_classes', 24)),
      tubelet_frames=int(get('tubelet_frames', 0)),
      tubelet_stride=int(get('tubelet_stride', 8)),
      tubelet_width=int(get('tubelet_width', 256)),
      tubelet_top_n=int(get('tubelet_top_n', 10)),
      tubelet_nms=float(get('tubelet_nms', 0.5)),
      tubelet_presence=bool(get('tubelet_presence', False)),
      tubelet_presence_threshold=float(get('tubelet_presence_threshold', 0.5)),
      tubelet_finer_stage=bool(get('tubelet_finer_stage', False)),
      tubelet_flip_test=bool(get('tubelet_flip_test', False)),
    )
  return Detector(
    num_classes=int(get('num_classes', 101)),
    backbone_kwargs=kwargs,
    box_head=box_head,
    box_hidden=tuple(int(h) for h in np.atleast_1d(get('box_hidden', (16,)))),
    box_activation=box_activation,
    normalization=normalization,
    dtype=parse_dtype(get('dtype', 'float32')),
    **tubelet,
  )
