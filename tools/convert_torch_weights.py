"""Converts a 3D-ResNets-PyTorch checkpoint (2017 or 2020 release) into a Flax orbax checkpoint.

Detects the architecture from the tensors, refuses what does not fit, and writes the
output directory with its metadata.json last (the mark of a finished conversion).

  python tools/convert_torch_weights.py --input r3d34_K_200ep.pth --output weights/r3d34_k700 \
      [--drop-classifier] [--normalization PRESET] [--shortcut A|B] [--depth N]

--input and --output may be bucket URLs (gs://bucket/...); an input URL is copied to a
local temporary file first, since torch reads local files. Only this tool needs torch
(the `convert` extra); the mapping itself lives in `stconsist_jax.models.torch_mapping`.
Exit status 0 on success, 1 with a one-paragraph message on stderr when the file cannot
be converted (nothing is left behind). An unfinished output of an interrupted
conversion is replaced.
"""

import argparse
import collections
import contextlib
import hashlib
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator
import zipfile

from absl import logging
import numpy as np


from stconsist_jax.core import fileio
from stconsist_jax.models import detector
from stconsist_jax.models import param_trees
from stconsist_jax.models import pretrained
from stconsist_jax.models import resnet3d
from stconsist_jax.models import torch_mapping

ConversionError = pretrained.ConversionError


@contextlib.contextmanager
def local_input(path: str) -> Iterator[str]:
  """`path` itself, or for a bucket URL a local temporary copy (removed afterwards)."""
  if not fileio.is_remote(path):
    yield path
    return
  source = fileio.as_path(path)
  if not source.is_file():
    raise ConversionError(f'The input file {path} does not exist or is not a file.')
  with tempfile.TemporaryDirectory(prefix='convert_torch_weights_') as tmp:
    local = os.path.join(tmp, source.name)
    source.copy(local)
    yield local


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def load_torch_file(local_path: str, allow_pickle: bool, path: str | None = None) -> object:
  """torch.load with weights_only (tensors and simple types only) unless allowed.

  `path` is the name errors give (the input as the user named it); default `local_path`.
  """
  import torch  # pylint: disable=g-import-not-at-top

  path = path or local_path
  if not os.path.isfile(local_path):
    raise ConversionError(f'The input file {path} does not exist or is not a file.')
  try:
    if allow_pickle:
      return torch.load(local_path, map_location='cpu', weights_only=False)
    # Counter appears in 2020 scheduler states (MultiStepLR milestones); it is a plain dict.
    with torch.serialization.safe_globals([collections.Counter]):
      return torch.load(local_path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if 'weights_only' in str(e) or 'Unsupported global' in str(e):
      raise ConversionError(
        f'{path} holds Python objects beyond tensors and simple types, so it was not '
        f'unpickled ({first_line}). If you trust its source, rerun with --allow-pickle.'
      ) from None
    raise ConversionError(
      f'{path} is not a readable PyTorch checkpoint (unpickling failed: '
      f'{first_line}); the file may be truncated or of another kind.'
    ) from None
  except (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    zipfile.BadZipFile,
    KeyError,
    AttributeError,
    ImportError,
    IndexError,
    TypeError,
  ) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConversionError(
      f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: '
      f'{message}); the file may be truncated or of another kind. '
      'Download it again and compare its size.'
    ) from None


def extract_state_dict(obj: object, path: str) -> dict[str, np.ndarray]:
  """A raw state_dict or {'state_dict': ...} -> {key: float32 numpy array}."""
  import torch  # pylint: disable=g-import-not-at-top

  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict):
    raise ConversionError(
      f'{path} contains a {type(obj).__name__}, not a state_dict or a '
      "dict with a 'state_dict' entry."
    )
  arrays = {}
  for key, value in obj.items():
    if torch.is_tensor(value):
      arrays[str(key)] = (
        value.detach().cpu().float().numpy()
        if value.is_floating_point()
        else value.detach().cpu().numpy()
      )
  if not arrays:
    raise ConversionError(
      f'{path} holds a dict without tensors (keys: '
      f'{", ".join(map(str, list(obj)[:6])) or "none"}); it is not a '
      '3D-ResNets-PyTorch checkpoint.'
    )
  return arrays


def convert(
  input_path: str,
  output_dir: str,
  drop_classifier: bool = False,
  normalization: str | None = None,
  shortcut: str | None = None,
  depth: int | None = None,
  conv1_t_stride: int = 1,
  no_max_pool: bool = False,
  allow_pickle: bool = False,
) -> dict:
  """Converts one file; returns the metadata written.

  Raises:
    ConversionError: the file is no checkpoint of the family, or the output is taken.
    ParameterTreeMismatchError: its tensors do not fit the architecture.
  """
  if normalization is not None and normalization not in detector.NORMALIZATION_PRESETS:
    raise ConversionError(
      f'Unknown --normalization {normalization!r}; valid presets: '
      f'{", ".join(sorted(detector.NORMALIZATION_PRESETS))}.'
    )
  pretrained.check_output_dir(output_dir)
  with local_input(input_path) as local_path:
    raw = extract_state_dict(load_torch_file(local_path, allow_pickle, input_path), input_path)
    source_sha256 = sha256_of(local_path)
  state, had_prefix, had_nbt = torch_mapping.clean_state_dict(raw)
  shapes = {k: tuple(v.shape) for k, v in state.items()}
  arch = torch_mapping.detect_architecture(shapes, depth)
  generation = torch_mapping.generation_of(had_prefix, had_nbt, arch.shortcut_type)
  print(
    f'Found: depth {arch.depth} ({arch.block} blocks '
    f'{list(resnet3d.DEPTHS[arch.depth][1])}), shortcut {arch.shortcut_type}, '
    f'widen_factor {arch.widen_factor:g}, conv1_t_size {arch.conv1_t_size}, '
    f"classes {arch.num_classes}, 'module.' prefix {had_prefix}, "
    f'num_batches_tracked {had_nbt} -> generation {generation}.'
  )

  if shortcut is not None and shortcut != arch.shortcut_type:
    raise ConversionError(
      f'--shortcut {shortcut} was forced but the checkpoint uses shortcut '
      f'{arch.shortcut_type} ('
      + (
        'it has layerN.0.downsample.* keys'
        if arch.shortcut_type == 'B'
        else 'it has no layerN.0.downsample.* keys'
      )
      + '); a shortcut-B model needs those 1x1x1 conv + BN weights and a shortcut-A model '
      'has none. Nothing was written.'
    )
  backbone = arch.backbone_kwargs(conv1_t_stride, no_max_pool)
  what = (
    f'a depth-{arch.depth} 3D ResNet with shortcut {arch.shortcut_type} and '
    f'widen_factor {arch.widen_factor:g}'
  )
  torch_mapping.check_fit(shapes, torch_mapping.expected_shapes(backbone, arch.num_classes), what)

  variables = torch_mapping.state_dict_to_variables(state, drop_classifier)
  preset = normalization or torch_mapping.GENERATION_NORMALIZATION[generation]
  metadata = {
    'architecture': backbone,
    'normalization': preset,
    'num_classes': None if drop_classifier else arch.num_classes,
    'source_num_classes': arch.num_classes,
    'source_file': fileio.base_name(input_path),
    'source_sha256': source_sha256,
    'generation': generation,
    'drop_classifier': bool(drop_classifier),
  }
  pretrained.save_converted(output_dir, variables, metadata)
  print(
    f'Wrote {output_dir} (normalization {preset}'
    + (', classifier dropped' if drop_classifier else '')
    + ').'
  )
  return metadata


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='the .pth file (path or bucket URL)')
  parser.add_argument('--output', required=True, help='directory to create (path or bucket URL)')
  parser.add_argument(
    '--drop-classifier',
    action='store_true',
    help='leave out fc (for fine-tuning to another class count)',
  )
  parser.add_argument(
    '--normalization',
    default=None,
    help='input preset the weights expect; default by generation '
    '(2017: activitynet_0_255, 2020: kinetics)',
  )
  parser.add_argument(
    '--shortcut',
    choices=('A', 'B'),
    default=None,
    help='require this shortcut type; a mismatch is an error',
  )
  parser.add_argument(
    '--depth', type=int, default=None, help='require this depth instead of detecting it'
  )
  parser.add_argument(
    '--conv1-t-stride',
    type=int,
    default=1,
    help='not stored in the weights (default 1, both releases)',
  )
  parser.add_argument(
    '--no-max-pool', action='store_true', help='not stored in the weights (off in both releases)'
  )
  parser.add_argument(
    '--allow-pickle',
    action='store_true',
    help='full unpickling (runs code from the file); only for trusted files',
  )
  return parser.parse_args(argv)


def run(argv: list[str]) -> int:
  """The CLI without sys.exit: returns the exit status."""
  args = parse_args(argv)
  try:
    convert(
      args.input,
      args.output,
      drop_classifier=args.drop_classifier,
      normalization=args.normalization,
      shortcut=args.shortcut,
      depth=args.depth,
      conv1_t_stride=args.conv1_t_stride,
      no_max_pool=args.no_max_pool,
      allow_pickle=args.allow_pickle,
    )
  except (ConversionError, param_trees.ParameterTreeMismatchError) as e:
    print(f'error: cannot convert {args.input}: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  sys.exit(run(sys.argv[1:]))
