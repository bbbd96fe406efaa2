"""The metadata.json beside an exported model (tools/export.py): what it holds, a checker
that refuses a corrupt or mismatched one in one line, and a bounded reader for it.

Standard library only, so that prediction from an export (onnxruntime, OpenCV and numpy,
no JAX) reads it too. The file is untrusted input: JSON only, at most MAX_BYTES, every
field checked before use. Format: docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any
from collections.abc import Mapping, Sequence

from stconsist_jax.core import errors

FORMAT_VERSION = 1
FILENAME = 'metadata.json'
MAX_BYTES = 1 << 20  # Class names and settings: kilobytes; more is not a metadata file.
# format -> the model's file (or folder) name in the export folder.
MODEL_FILES = {'onnx': 'model.onnx', 'savedmodel': 'saved_model', 'stablehlo': 'model.stablehlo'}
BATCH = 'batch'  # The dynamic batch dimension in `input.shape` and `outputs[].shape`.
INPUT_NAME = 'clip'
# The clip settings prediction reads (config.data's keys of the same names).
CLIP_FIELDS = ('num_frames', 'frame_stride', 'frame_size', 'image_size')
BOX_HEADS = ('none', 'mlp', 'spatial', 'tubelet')
# What each output of the Detector holds, for the readers of an export (no JAX there).
OUTPUT_LAYOUTS = {
  'logits': 'class logits (batch, num_classes); softmax gives the class_names probabilities',
  'boxes': 'one box per clip (batch, 4): x_left, y_top, width, height, normalized to [0, 1], '
  'for the clip centre frame',
  'tubelet_logits': 'per map cell (batch, h, w, num_box_classes + 1) logits, softmax over the '
  'last axis, index 0 background',
  'tubelet_boxes': 'per map cell and output frame (batch, h, w, K, 4): dx, dy, bw, bh '
  '(docs/DESIGN.md, tubelet head)',
  'det_boxes': 'decoded detections (batch, top_n, K, 4): x1, y1, x2, y2 normalized to [0, 1] '
  'for the K central clip frames',
  'det_scores': 'decoded detections (batch, top_n, num_box_classes): foreground probabilities',
  'det_valid': 'decoded detections (batch, top_n): false rows are padding (zeros)',
  'tubelet_presence': 'per map cell and output frame (batch, h, w, K): presence logits, '
  "sigmoid gives the probability that the cell's actor is on the frame",
  'det_present': 'decoded detections (batch, top_n, K): the actor is on output frame k '
  '(false on padding rows); an absent frame gives no box to tubes or frames',
}
DTYPES = ('float32', 'bool', 'int32', 'uint8')
# The decoded detections of a tubelet head, what prediction reads of it.
TUBELET_OUTPUTS = ('det_boxes', 'det_scores', 'det_valid')
# A tubelet head with the per-frame presence output adds this decoded output.
PRESENCE_OUTPUT = 'det_present'
# onnxruntime's type names of these dtypes (for `check_signature` on a session).
ONNXRUNTIME_DTYPES = {
  'tensor(float)': 'float32',
  'tensor(bool)': 'bool',
  'tensor(int32)': 'int32',
  'tensor(uint8)': 'uint8',
}


class MetadataError(errors.UserError):
  """An export's metadata is unreadable, corrupt or does not fit its model."""


# ----------------------------------------------------------------------------------
# Checking a metadata dict.


def _get(meta: Mapping[str, Any], key: str) -> Any:
  value: Any = meta
  for part in key.split('.'):
    if not isinstance(value, Mapping) or part not in value:
      raise MetadataError(f'metadata: {key} is missing')
    value = value[part]
  return value


def _typed(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
  value = _get(meta, key)
  kinds = kind if isinstance(kind, tuple) else (kind,)
  # bool is an int in Python; a count given as true is still wrong.
  if isinstance(value, bool) and bool not in kinds:
    value_ok = False
  elif float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
    value_ok = math.isfinite(value)
  else:
    value_ok = isinstance(value, kinds)
  if not value_ok:
    names = ' or '.join(k.__name__ for k in kinds)
    raise MetadataError(f'metadata: {key} must be {names}, found {_short(value)}')
  return value


def _positive(meta: Mapping[str, Any], key: str) -> int:
  value = _typed(meta, key, int)
  if value < 1:
    raise MetadataError(f'metadata: {key} must be >= 1, found {value}')
  return value


def _short(value: Any) -> str:
  text = json.dumps(value) if not isinstance(value, str) else repr(value)
  return text if len(text) <= 60 else text[:57] + '...'


def _check_shape(key: str, shape: Any, dynamic_ok: bool) -> list[int | str]:
  if not isinstance(shape, list) or not shape:
    raise MetadataError(f'metadata: {key} must be a non-empty list, found {_short(shape)}')
  for i, dim in enumerate(shape):
    first_dynamic = i == 0 and dynamic_ok and dim == BATCH
    if not first_dynamic and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
      raise MetadataError(f'metadata: {key}[{i}] must be a size >= 1, found {_short(dim)}')
  return shape


def validate(meta: Any) -> dict[str, Any]:
  """`meta` if it is a complete, self-consistent metadata dict; else MetadataError."""
  if not isinstance(meta, dict):
    raise MetadataError(f'metadata: expected a JSON object, found {type(meta).__name__}')
  version = _typed(meta, 'format_version', int)
  if version != FORMAT_VERSION:
    raise MetadataError(
      f'metadata: format_version {version} is not {FORMAT_VERSION} (another version of '
      'stconsist_jax wrote it: export the model again)'
    )
  fmt = _typed(meta, 'format', str)
  if fmt not in MODEL_FILES:
    raise MetadataError(f'metadata: format {fmt!r} is not one of {sorted(MODEL_FILES)}')
  model_file = _typed(meta, 'model_file', str)
  if model_file != MODEL_FILES[fmt]:
    raise MetadataError(
      f'metadata: model_file {model_file!r} is not {MODEL_FILES[fmt]!r} of a {fmt} export'
    )
  digest = _typed(meta, 'model_sha256', str)
  if len(digest) != 64 or any(c not in '0123456789abcdef' for c in digest):
    raise MetadataError(f'metadata: model_sha256 is not a SHA-256 hex digest: {_short(digest)}')
  _typed(meta, 'project.name', str)
  _typed(meta, 'project.version', str)
  _typed(meta, 'exported_with', dict)
  kind = _typed(meta, 'source.kind', str)
  if kind not in ('workdir', 'init_from'):
    raise MetadataError(f'metadata: source.kind {kind!r} is not workdir or init_from')
  _typed(meta, 'source.step', (int, str))
  _typed(meta, 'source.config_hash', (str, type(None)))
  _check_model(meta)
  _check_clip_and_input(meta)
  _check_outputs(meta)
  _typed(meta, 'linking', dict)
  _typed(meta, 'checked', (dict, type(None)))
  return meta


def _check_model(meta: Mapping[str, Any]) -> None:
  head = _typed(meta, 'model.box_head', str)
  if head not in BOX_HEADS:
    raise MetadataError(f'metadata: model.box_head {head!r} is not one of {list(BOX_HEADS)}')
  num_classes = _positive(meta, 'model.num_classes')
  _typed(meta, 'model.classification_only', bool)
  _typed(meta, 'model.architecture', str)
  names = _typed(meta, 'class_names', list)
  if len(names) != num_classes or not all(isinstance(n, str) for n in names):
    raise MetadataError(
      f'metadata: class_names must be {num_classes} strings (model.num_classes), found '
      f'{len(names)} entries'
    )
  _typed(meta, 'normalization.preset', str)
  _typed(meta, 'normalization.scale', float)
  for key in ('normalization.mean', 'normalization.std'):
    values = _typed(meta, key, list)
    if len(values) != 3 or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
      raise MetadataError(f'metadata: {key} must be 3 numbers, found {_short(values)}')
  if head == 'tubelet':
    for key in ('tubelet.frames', 'tubelet.stride', 'tubelet.top_n', 'tubelet.frame_stride'):
      _positive(meta, key)
    _typed(meta, 'tubelet.nms', float)
    if 'presence_threshold' in meta['tubelet']:  # a head with the presence output
      _typed(meta, 'tubelet.presence_threshold', float)
    _typed(meta, 'tubelet.frame_nms', float)
    if meta['tubelet']['frame_stride'] > meta['tubelet']['frames']:
      raise MetadataError(
        f'metadata: tubelet.frame_stride {meta["tubelet"]["frame_stride"]} leaves frames '
        f'between the clips uncovered (K = tubelet.frames {meta["tubelet"]["frames"]})'
      )
    names = _typed(meta, 'tubelet.box_class_names', list)
    if not names or not all(isinstance(n, str) for n in names):
      raise MetadataError('metadata: tubelet.box_class_names must be a list of strings')
  elif meta.get('tubelet') is not None:
    raise MetadataError(f'metadata: tubelet settings for a {head!r} box head')


def _check_clip_and_input(meta: Mapping[str, Any]) -> None:
  clip = {k: _positive(meta, f'clip.{k}') for k in CLIP_FIELDS}
  if _typed(meta, 'input.name', str) != INPUT_NAME:
    raise MetadataError(f'metadata: input.name must be {INPUT_NAME!r}')
  if _typed(meta, 'input.dtype', str) != 'uint8':
    raise MetadataError('metadata: input.dtype must be uint8 (pixels; the model normalizes)')
  shape = _check_shape('input.shape', _get(meta, 'input.shape'), dynamic_ok=True)
  size = clip['image_size']
  if shape[1:] != [clip['num_frames'], size, size, 3]:
    raise MetadataError(
      f'metadata: input.shape {shape} does not fit the clip settings (batch, '
      f'{clip["num_frames"]}, {size}, {size}, 3)'
    )


def _check_outputs(meta: Mapping[str, Any]) -> None:
  outputs = _typed(meta, 'outputs', list)
  batch = _get(meta, 'input.shape')[0]
  seen = set()
  for i, out in enumerate(outputs):
    if not isinstance(out, dict):
      raise MetadataError(f'metadata: outputs[{i}] must be an object')
    name = _typed(out, 'name', str)
    if name in seen:
      raise MetadataError(f'metadata: output {name!r} is listed twice')
    seen.add(name)
    if _typed(out, 'dtype', str) not in DTYPES:
      raise MetadataError(f'metadata: output {name!r} has dtype {out["dtype"]!r}')
    shape = _check_shape(f'outputs[{i}].shape', out['shape'], dynamic_ok=True)
    if shape[0] != batch:
      raise MetadataError(f'metadata: output {name!r} batch {shape[0]!r} is not {batch!r}')
    _typed(out, 'layout', str)
  logits = next((o for o in outputs if o['name'] == 'logits'), None)
  num_classes = meta['model']['num_classes']
  if logits is None or logits['shape'][1:] != [num_classes]:
    raise MetadataError(f'metadata: outputs lack logits of shape (batch, {num_classes})')
  if meta['model']['box_head'] != 'tubelet':
    return
  by_name = {o['name']: o for o in outputs}
  missing = [name for name in TUBELET_OUTPUTS if name not in by_name]
  if missing:
    raise MetadataError(f'metadata: a tubelet head without the outputs {missing}')
  tubelet = meta['tubelet']
  top_n, k = tubelet['top_n'], tubelet['frames']
  c = len(tubelet['box_class_names'])
  for name, shape in (
    ('det_boxes', [top_n, k, 4]),
    ('det_scores', [top_n, c]),
    ('det_valid', [top_n]),
    (PRESENCE_OUTPUT, [top_n, k]),
  ):
    if name not in by_name:  # only det_present is optional (a head without presence)
      continue
    if by_name[name]['shape'][1:] != shape:
      raise MetadataError(
        f'metadata: output {name!r} has shape {by_name[name]["shape"]}, the tubelet settings '
        f'(top_n {top_n}, frames {k}, {c} box classes) give [batch, {", ".join(map(str, shape))}]'
      )


# ----------------------------------------------------------------------------------
# Files.


def dumps(meta: Mapping[str, Any]) -> str:
  """The metadata as the JSON text of metadata.json (checked first)."""
  return json.dumps(validate(dict(meta)), indent=1, allow_nan=False) + '\n'


def _refuse_constant(name: str) -> Any:
  raise ValueError(f'{name} is not JSON')


def loads(text: str | bytes, where: str = FILENAME) -> dict[str, Any]:
  """Parses and checks metadata text; MetadataError (one line, naming `where`) if bad."""
  if len(text) > MAX_BYTES:
    raise MetadataError(f'{where}: larger than {MAX_BYTES} bytes: not an export metadata file')
  try:
    meta = json.loads(text, parse_constant=_refuse_constant)
  except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError.
    raise MetadataError(f'{where}: not valid JSON ({errors.describe(e, 120)})') from None
  try:
    return validate(meta)
  except MetadataError as e:
    raise MetadataError(f'{where}: {str(e).removeprefix("metadata: ")}') from None


def metadata_path(path: str | os.PathLike) -> str:
  """The metadata file of an export: `path` itself, or `path/metadata.json` for a folder
  (an export folder, or a model's folder: saved_model/ sits in it)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    if os.path.basename(os.path.normpath(path)) == MODEL_FILES['savedmodel']:
      path = os.path.dirname(os.path.normpath(path))
    return os.path.join(path, FILENAME)
  if os.path.basename(path) in MODEL_FILES.values():
    return os.path.join(os.path.dirname(path), FILENAME)
  return path


def read(path: str | os.PathLike) -> dict[str, Any]:
  """The checked metadata of an export folder, its model file, or a metadata.json."""
  where = metadata_path(path)
  try:
    with open(where, 'rb') as f:
      text = f.read(MAX_BYTES + 1)
  except OSError as e:
    raise MetadataError(f'{where}: cannot read the export metadata ({e.strerror or e})') from None
  return loads(text, where)


def model_digest(path: str | os.PathLike) -> str:
  """SHA-256 of a model file, or of a model folder (its files' relative paths and bytes)."""
  digest = hashlib.sha256()
  path = os.fspath(path)
  if os.path.isdir(path):
    files = sorted(
      os.path.relpath(os.path.join(root, name), path)
      for root, _, names in os.walk(path)
      for name in names
    )
  else:
    files = [None]
  for rel in files:
    if rel is not None:
      digest.update(rel.replace(os.sep, '/').encode() + b'\0')
    with open(path if rel is None else os.path.join(path, rel), 'rb') as f:
      for chunk in iter(lambda f=f: f.read(1 << 20), b''):
        digest.update(chunk)
  return digest.hexdigest()


def check_model_file(meta: Mapping[str, Any], directory: str | os.PathLike) -> str:
  """The model's path in `directory`; MetadataError unless its bytes are the metadata's."""
  path = os.path.join(os.fspath(directory), meta['model_file'])
  if not os.path.exists(path):
    raise MetadataError(f'{path}: missing (the metadata names it as the {meta["format"]} model)')
  if model_digest(path) != meta['model_sha256']:
    raise MetadataError(
      f"{path}: does not match its metadata.json (another export's metadata, or a changed "
      'model file): export again'
    )
  return path


def check_signature(
  meta: Mapping[str, Any],
  inputs: Sequence[tuple[str, str, Sequence[int | str | None]]],
  outputs: Sequence[tuple[str, str, Sequence[int | str | None]]],
) -> None:
  """Refuses (MetadataError) a runtime model whose inputs/outputs are not the metadata's.

  `inputs` and `outputs` are `(name, dtype, shape)` as the runtime reports them (e.g.
  onnxruntime's session); a dimension that is not an int (None, a symbol) counts as
  dynamic and matches `batch` or any size.
  """
  expected_in = [(meta['input']['name'], meta['input']['dtype'], meta['input']['shape'])]
  expected_out = [(o['name'], o['dtype'], o['shape']) for o in meta['outputs']]
  for what, expected, found in (
    ('inputs', expected_in, inputs),
    ('outputs', expected_out, outputs),
  ):
    want = {name: (dtype, shape) for name, dtype, shape in expected}
    have = {name: (dtype, list(shape)) for name, dtype, shape in found}
    if sorted(want) != sorted(have):
      raise MetadataError(
        f'the model {what} {sorted(have)} are not those of its metadata {sorted(want)}'
      )
    for name, (dtype, shape) in want.items():
      got_dtype, got_shape = have[name]
      if got_dtype != dtype or not _shapes_fit(shape, got_shape):
        raise MetadataError(
          f'the model {what[:-1]} {name!r} is {got_dtype} {got_shape}, its metadata says '
          f'{dtype} {shape}'
        )


def _shapes_fit(expected: Sequence[Any], found: Sequence[Any]) -> bool:
  if len(expected) != len(found):
    return False
  # A dynamic dimension of the model fits any size; a fixed one only the same size.
  return all(not isinstance(f, int) or e == f for e, f in zip(expected, found))
