"""PyTorch state_dict -> Flax tree for the 3D-ResNets-PyTorch family: key and array mapping,
architecture detection and the fit check, as the converter uses them.

`tools/convert_torch_weights.py` reads the `.pth` file with torch and hands plain numpy
arrays to the functions here; nothing in this module imports torch. Saving and loading
the converted directory is `stconsist_jax.models.pretrained`.
"""

import dataclasses
import re
from typing import Any
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from stconsist_jax.models import detector
from stconsist_jax.models import param_trees
from stconsist_jax.models import pretrained
from stconsist_jax.models import resnet3d

GENERATION_NORMALIZATION = {'2017': 'activitynet_0_255', '2020': 'kinetics', 'unknown': 'kinetics'}


_BN_TORCH_TO_FLAX = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}


_BN_FLAX_TO_TORCH = {v: k for k, v in _BN_TORCH_TO_FLAX.items()}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What a state_dict says about its network."""

  depth: int
  block: str
  shortcut_type: str
  widen_factor: float
  conv1_t_size: int
  num_classes: int | None  # None when the state_dict has no `fc`.

  def backbone_kwargs(self, conv1_t_stride: int = 1, no_max_pool: bool = False) -> dict[str, Any]:
    return dict(
      depth=self.depth,
      shortcut_type=self.shortcut_type,
      widen_factor=self.widen_factor,
      conv1_t_size=self.conv1_t_size,
      conv1_t_stride=conv1_t_stride,
      no_max_pool=no_max_pool,
    )


def clean_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], bool, bool]:
  """Strips `module.` prefixes (even repeated) and drops `num_batches_tracked`.

  Returns (clean dict, had a `module.` prefix, had `num_batches_tracked`).
  """
  clean, had_prefix, had_nbt = {}, False, False
  for key, value in state.items():
    while key.startswith('module.'):
      key = key[len('module.') :]
      had_prefix = True
    if key.endswith('num_batches_tracked'):
      had_nbt = True
      continue
    clean[key] = value
  return clean, had_prefix, had_nbt


_LAYER_KEY = re.compile(r'^layer([1-4])\.(\d+)\.(.+)$')


def torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...]]:
  """'layer2.0.downsample.1.running_mean' -> ('batch_stats', ('backbone', 'layer2_0',
  'downsample_bn', 'mean')). Raises KeyError for a key outside the family."""
  if key in ('fc.weight', 'fc.bias'):
    return 'params', ('classifier', 'kernel' if key.endswith('weight') else 'bias')
  prefix: tuple[str, ...] = ('backbone',)
  rest = key
  match = _LAYER_KEY.match(key)
  if match:
    prefix += (f'layer{match.group(1)}_{match.group(2)}',)
    rest = match.group(3)
    rest = rest.replace('downsample.0.', 'downsample_conv.').replace(
      'downsample.1.', 'downsample_bn.'
    )
  module, _, leaf = rest.rpartition('.')
  if re.fullmatch(r'(downsample_)?conv\d?', module) and leaf == 'weight':
    return 'params', prefix + (module, 'kernel')
  if re.fullmatch(r'(downsample_)?bn\d?', module) and leaf in _BN_TORCH_TO_FLAX:
    collection, name = _BN_TORCH_TO_FLAX[leaf]
    return collection, prefix + (module, name)
  raise KeyError(key)


def flax_path_to_torch(collection: str, path: tuple[str, ...]) -> str:
  """Inverse of `torch_key_to_flax`."""
  if path[0] == 'classifier':
    return 'fc.weight' if path[1] == 'kernel' else 'fc.bias'
  parts = list(path[1:])
  leaf = parts.pop()
  parts = [re.sub(r'^layer(\d)_(\d+)$', r'layer\1.\2', p) for p in parts]
  parts = [
    {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(p, p) for p in parts
  ]
  torch_leaf = 'weight' if leaf == 'kernel' else _BN_FLAX_TO_TORCH[(collection, leaf)]
  return '.'.join(parts + [torch_leaf])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Conv (T, H, W, I, O) -> (O, I, T, H, W); Dense (in, out) -> (out, in); else same."""
  if len(flax_shape) == 5:
    t, h, w, i, o = flax_shape
    return (o, i, t, h, w)
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def to_flax_array(array: np.ndarray) -> np.ndarray:
  if array.ndim == 5:
    return np.ascontiguousarray(np.transpose(array, (2, 3, 4, 1, 0)))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return np.asarray(array)


def block_counts(shapes: Mapping[str, Any]) -> list[int]:
  counts = [0, 0, 0, 0]
  for key in shapes:
    match = _LAYER_KEY.match(key)
    if match:
      stage, index = int(match.group(1)) - 1, int(match.group(2))
      counts[stage] = max(counts[stage], index + 1)
  return counts


def detect_architecture(
  shapes: Mapping[str, tuple[int, ...]], depth: int | None = None
) -> Architecture:
  """Reads depth, block type, shortcut, widen factor, conv1_t_size and classes off shapes.

  A given `depth` is taken as it is (with its block type): `check_fit` then lists the
  tensors that do not fit it.
  """
  if depth is not None and depth not in resnet3d.DEPTHS:
    raise pretrained.ConversionError(
      f'--depth must be one of {sorted(resnet3d.DEPTHS)}, got {depth}.'
    )
  if 'conv1.weight' not in shapes:
    sample = ', '.join(sorted(shapes)[:5]) or 'none'
    raise pretrained.ConversionError(
      "This is not a 3D-ResNets-PyTorch state_dict: there is no 'conv1.weight' tensor "
      f'(first keys: {sample}).'
    )
  conv1 = tuple(shapes['conv1.weight'])
  if len(conv1) != 5:
    raise pretrained.ConversionError(
      f"'conv1.weight' has shape {conv1}, expected a Conv3d weight (out, in, t, 7, 7): "
      'this is not a 3D ResNet.'
    )
  if depth is None:
    block = 'bottleneck' if 'layer1.0.conv3.weight' in shapes else 'basic'
    counts = tuple(block_counts(shapes))
    depth = next(
      (d for d, (b, layers) in resnet3d.DEPTHS.items() if b == block and layers == counts), None
    )
    if depth is None:
      known = ', '.join(f'{d}: {b} {list(layers)}' for d, (b, layers) in resnet3d.DEPTHS.items())
      raise pretrained.ConversionError(
        f'The state_dict has {block} blocks with {list(counts)} blocks per stage, which '
        f'is no depth of the 3D-ResNets-PyTorch family ({known}); the file is incomplete '
        'or from another model.'
      )
  fc = shapes.get('fc.weight')
  return Architecture(
    depth=depth,
    block=resnet3d.DEPTHS[depth][0],
    shortcut_type='B' if any('.downsample.' in k for k in shapes) else 'A',
    widen_factor=conv1[0] / 64,
    conv1_t_size=int(conv1[2]),
    num_classes=int(fc[0]) if fc is not None else None,
  )


def generation_of(had_prefix: bool, had_nbt: bool, shortcut_type: str) -> str:
  """'2017' (module. prefix, no num_batches_tracked, shortcut A), '2020' or 'unknown'."""
  if had_prefix and not had_nbt and shortcut_type == 'A':
    return '2017'
  if had_nbt:
    return '2020'
  return 'unknown'


def expected_shapes(
  backbone_kwargs: Mapping[str, Any], num_classes: int | None
) -> dict[str, tuple[int, ...]]:
  """torch key -> torch shape of every tensor the Flax model needs."""
  model = detector.VideoClassifier(
    num_classes=num_classes or 1, backbone_kwargs=dict(backbone_kwargs)
  )
  clip = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.uint8)
  abstract = jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clip)
  out = {}
  for collection, tree in flax.core.unfreeze(abstract).items():
    for path, leaf in flax.traverse_util.flatten_dict(tree).items():
      if num_classes is None and path[0] == 'classifier':
        continue
      out[flax_path_to_torch(collection, path)] = torch_shape(tuple(leaf.shape))
  return out


def check_fit(
  shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
  """Raises ParameterTreeMismatchError listing missing, unexpected and mis-shaped keys."""
  mismatch = param_trees.tree_mismatch(
    dict(sorted(expected.items())),
    dict(sorted(shapes.items())),
    found_name='file',
    expected_name='model',
    sep='.',
  )
  if mismatch:
    raise param_trees.ParameterTreeMismatchError(
      f'The checkpoint does not fit {what}: {mismatch}. Nothing was written; check '
      '--depth/--shortcut or the file.'
    )


def state_dict_to_variables(
  state: Mapping[str, np.ndarray], drop_classifier: bool
) -> dict[str, Any]:
  """Clean, already checked torch arrays -> {'params': ..., 'batch_stats': ...} (numpy)."""
  variables: dict[str, dict[tuple[str, ...], np.ndarray]] = {'params': {}, 'batch_stats': {}}
  for key, value in state.items():
    collection, path = torch_key_to_flax(key)
    if drop_classifier and path[0] == 'classifier':
      continue
    variables[collection][path] = to_flax_array(np.asarray(value, np.float32))
  return {c: flax.traverse_util.unflatten_dict(v) for c, v in variables.items()}
