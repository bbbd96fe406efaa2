"""The JSON record of one predicted video: building it from the dense frame results and
tubes, its JSON schema and consistency checks, and its compact one-line-per-entry text.

A record's `frames` and `tubes` are `Entries`, built one at a time when read, so that a
long video's record is written to its file entry by entry (`write`) and never held
whole. Schema and field meanings: docs/predict.md.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Any, TextIO
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from stconsist_jax.core import clip_geometry
from stconsist_jax.prediction import frame_predictor

FORMAT = 'stconsist_jax.prediction/1'
NUM_DIGITS = 5  # Decimals of scores in the JSON; boxes get 2 (pixels).

_NUMBER = {'type': 'number'}
_INT = {'type': 'integer', 'minimum': 0}
_BOX = {'type': 'array', 'items': _NUMBER, 'minItems': 4, 'maxItems': 4}
_CLASS_SCORE = {
  'type': 'object',
  'required': ['label', 'class', 'score'],
  'additionalProperties': False,
  'properties': {'label': _INT, 'class': {'type': 'string'}, 'score': _NUMBER},
}

PREDICTION_SCHEMA: dict[str, Any] = {
  '$schema': 'https://json-schema.org/draft/2020-12/schema',
  'title': 'stconsist_jax prediction of one video',
  'type': 'object',
  'required': [
    'format',
    'video',
    'num_frames',
    'fps',
    'size',
    'classes',
    'frames',
    'tubes',
    'tubes_found',
    'top5',
    'model',
    'settings',
  ],
  'additionalProperties': False,
  'properties': {
    'format': {'type': 'string', 'enum': [FORMAT]},
    'video': {'type': 'string'},
    'num_frames': {'type': 'integer', 'minimum': 1},
    'fps': {'type': 'number', 'minimum': 0},
    'size': {
      'type': 'array',
      'items': {'type': 'integer', 'minimum': 1},
      'minItems': 2,
      'maxItems': 2,
    },
    'classes': {'type': 'array', 'items': {'type': 'string'}, 'minItems': 1},
    'frames': {
      'type': 'array',
      'items': {
        'type': 'object',
        'required': ['frame', 'box', 'scores', 'predicted'],
        'additionalProperties': False,
        'properties': {
          'frame': _INT,
          'box': {'anyOf': [_BOX, {'type': 'null'}]},
          'scores': {
            'anyOf': [{'type': 'array', 'items': _NUMBER}, {'type': 'array', 'items': _CLASS_SCORE}]
          },
          'predicted': {'type': 'boolean'},
        },
      },
    },
    'tubes': {
      'type': 'array',
      'items': {
        'type': 'object',
        'required': ['id', 'label', 'class', 'start', 'end', 'score', 'frames', 'boxes'],
        'additionalProperties': False,
        'properties': {
          'id': _INT,
          'label': _INT,
          'class': {'type': 'string'},
          'start': _INT,
          'end': _INT,
          'score': _NUMBER,
          'frames': {'type': 'array', 'items': _INT, 'minItems': 1},
          'boxes': {'type': 'array', 'items': _BOX, 'minItems': 1},
        },
      },
    },
    'tubes_found': _INT,
    'top5': {'type': 'array', 'items': _CLASS_SCORE, 'minItems': 1, 'maxItems': 5},
    'model': {
      'type': 'object',
      'required': ['source', 'path', 'step', 'architecture', 'classification_only', 'num_classes'],
      'properties': {
        'source': {'type': 'string', 'enum': ['workdir', 'init_from']},
        'path': {'type': 'string'},
        'step': {'anyOf': [_INT, {'type': 'string'}]},
        'architecture': {'type': 'string'},
        'classification_only': {'type': 'boolean'},
        'num_classes': {'type': 'integer', 'minimum': 1},
        'config_hash': {'type': ['string', 'null']},
      },
    },
    'settings': {
      'type': 'object',
      'required': [
        'clip_frames',
        'clip_frame_stride',
        'frame_size',
        'image_size',
        'frame_stride',
        'batch_size',
        'devices',
        'frame_top_k',
        'max_tubes',
        'linking',
        'placement',
      ],
      'properties': {
        'clip_frames': {'type': 'integer', 'minimum': 1},
        'clip_frame_stride': {'type': 'integer', 'minimum': 1},
        'frame_size': {'type': 'integer', 'minimum': 1},
        'image_size': {'type': 'integer', 'minimum': 1},
        'frame_stride': {'type': 'integer', 'minimum': 1},
        'batch_size': {'type': 'integer', 'minimum': 1},
        'devices': {'type': 'integer', 'minimum': 1},
        'frame_top_k': _INT,
        'max_tubes': _INT,
        'linking': {'type': 'object'},
        'placement': {'type': 'string'},
      },
    },
    'timing': {
      'type': 'object',
      'properties': {'predict_s': _NUMBER, 'write_s': _NUMBER, 'frames_per_s': _NUMBER},
    },
  },
}


class Entries(Sequence):
  """A read-only list of `count` JSON entries, each built by `make(i)` when it is read."""

  def __init__(self, count: int, make: Callable[[int], dict[str, Any]]):
    self._count = int(count)
    self._make = make

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: Any) -> Any:
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._count))]
    i = index + self._count if index < 0 else index
    if not 0 <= i < self._count:
      raise IndexError(f'entry {index} of {self._count}')
    return self._make(i)


_ARRAY = (list, Entries)
_TYPES = {'object': dict, 'array': _ARRAY, 'string': str, 'boolean': bool, 'null': type(None)}


def _type_ok(value: Any, name: str) -> bool:
  if name == 'integer':
    return isinstance(value, int) and not isinstance(value, bool)
  if name == 'number':
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: Mapping[str, Any], where: str = '$') -> list[str]:
  """Violations of the JSON-schema subset PREDICTION_SCHEMA uses (empty when valid)."""
  if 'anyOf' in schema:
    options = [schema_errors(value, s, where) for s in schema['anyOf']]
    return [] if any(not o for o in options) else min(options, key=len)
  types = schema.get('type')
  if types is not None:
    types = [types] if isinstance(types, str) else types
    if not any(_type_ok(value, t) for t in types):
      return [f'{where}: expected {" or ".join(types)}, got {type(value).__name__}']
  errors = []
  if 'enum' in schema and value not in schema['enum']:
    errors.append(f'{where}: {value!r} not one of {schema["enum"]}')
  if 'minimum' in schema and _type_ok(value, 'number') and value < schema['minimum']:
    errors.append(f'{where}: {value} < {schema["minimum"]}')
  if isinstance(value, dict):
    for key in schema.get('required', ()):
      if key not in value:
        errors.append(f'{where}: missing {key!r}')
    props = schema.get('properties', {})
    for key, item in value.items():
      if key in props:
        errors += schema_errors(item, props[key], f'{where}.{key}')
      elif schema.get('additionalProperties', True) is False:
        errors.append(f'{where}: unexpected key {key!r}')
  if isinstance(value, _ARRAY):
    if len(value) < schema.get('minItems', 0):
      errors.append(f'{where}: {len(value)} items, fewer than {schema["minItems"]}')
    if len(value) > schema.get('maxItems', math.inf):
      errors.append(f'{where}: {len(value)} items, more than {schema["maxItems"]}')
    if 'items' in schema:
      for i, item in enumerate(value):
        errors += schema_errors(item, schema['items'], f'{where}[{i}]')
        if len(errors) > 20:
          break
  return errors


def _consistency_errors(record: Mapping[str, Any]) -> list[str]:
  """What the schema cannot say: counts, frame order, indices and lengths agree."""
  errors = []
  n, classes = record['num_frames'], record['classes']
  k = len(classes)
  if len(record['frames']) != n:
    errors.append(f'$.frames: {len(record["frames"])} entries for num_frames={n}')
  for i, frame in enumerate(record['frames']):
    if frame['frame'] != i:
      errors.append(f'$.frames[{i}].frame is {frame["frame"]}')
      break
    scores = frame['scores']
    if scores and isinstance(scores[0], dict):
      bad = [s for s in scores if s['label'] >= k or s['class'] != classes[s['label']]]
    else:
      bad = [] if len(scores) == k else [f'{len(scores)} scores for {k} classes']
    if bad:
      errors.append(f'$.frames[{i}].scores: {bad[0]}')
      break
  for i, tube in enumerate(record['tubes']):
    where = f'$.tubes[{i}]'
    if not 0 <= tube['start'] <= tube['end'] < n:
      errors.append(f'{where}: start {tube["start"]} / end {tube["end"]} outside the video')
    if len(tube['frames']) != len(tube['boxes']):
      errors.append(f'{where}: {len(tube["frames"])} frames but {len(tube["boxes"])} boxes')
    elif tube['frames'][0] != tube['start'] or tube['frames'][-1] != tube['end']:
      errors.append(f'{where}: frames do not run from start to end')
    if tube['label'] >= k or tube['class'] != classes[tube['label']]:
      errors.append(f'{where}: label {tube["label"]} / class {tube["class"]!r} mismatch')
  if [t['id'] for t in record['tubes']] != list(range(len(record['tubes']))):
    errors.append('$.tubes: ids are not 0, 1, 2, ...')
  for entry in record['top5']:
    if entry['label'] >= k or entry['class'] != classes[entry['label']]:
      errors.append(f'$.top5: label {entry["label"]} / class {entry["class"]!r} mismatch')
  if record['model']['num_classes'] != k:
    errors.append(f'$.model.num_classes={record["model"]["num_classes"]} but {k} classes')
  return errors


def validate_prediction(record: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first problems unless `record` follows the schema."""
  errors = schema_errors(record, PREDICTION_SCHEMA)
  if not errors:
    errors = _consistency_errors(record)
  if errors:
    raise ValueError('invalid prediction record: ' + '; '.join(errors[:5]))


def _round(values: np.ndarray, digits: int) -> list[float]:
  return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]


def top_classes(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
  order = np.argsort(-probs, kind='stable')[:k]
  return [
    {'label': int(c), 'class': class_names[c], 'score': round(float(probs[c]), NUM_DIGITS)}
    for c in order
  ]


def frame_entries(
  results: frame_predictor.FrameResults,
  size: tuple[int, int],
  class_names: Sequence[str],
  top_k: int = 0,
) -> Entries:
  """The JSON `frames` list: pixel corner box, all scores or the top-k classes."""
  h, w = size
  scale = np.array([w, h, w, h], np.float64)

  def entry(f: int) -> dict[str, Any]:
    box = None
    if results.boxes is not None:
      box = _round(results.boxes[f] * scale, 2)
    scores = (
      top_classes(results.probs[f], class_names, top_k)
      if top_k > 0
      else _round(results.probs[f], NUM_DIGITS)
    )
    return {'frame': f, 'box': box, 'scores': scores, 'predicted': bool(results.predicted[f])}

  return Entries(results.num_frames, entry)


def tube_entries(tubes: Sequence[Any], class_names: Sequence[str]) -> Entries:
  """The JSON `tubes` list (ids in the order given: by score, best first)."""

  def entry(i: int) -> dict[str, Any]:
    t = tubes[i]
    return {
      'id': i,
      'label': int(t.label),
      'class': class_names[int(t.label)],
      'start': int(t.start),
      'end': int(t.end),
      'score': round(float(t.score), NUM_DIGITS),
      'frames': [int(f) for f in t.frames],
      'boxes': [_round(b, 2) for b in np.asarray(t.boxes)],
    }

  return Entries(len(tubes), entry)


def linking_dict(linking: Any) -> dict[str, Any]:
  """The record's `settings.linking`: the fields of a LinkingConfig (or any object)."""
  if dataclasses.is_dataclass(linking):
    return dataclasses.asdict(linking)
  return dict(vars(linking))


def write(record: Mapping[str, Any], out: TextIO) -> None:
  """Writes compact JSON: the header keys, then one line per tube and per frame.

  Entry by entry, so a record of `Entries` is never held whole. The first lines are
  `{`, `"format"` and `"video"` (`recorded_video` reads them).
  """
  out.write('{\n')
  for key, value in record.items():
    if key not in ('frames', 'tubes'):
      out.write(f'  {json.dumps(key)}: {json.dumps(value)},\n')
  _write_list(out, 'tubes', record['tubes'], ',')
  _write_list(out, 'frames', record['frames'], '')
  out.write('}\n')


def _write_list(out: TextIO, key: str, entries: Sequence[Any], end: str) -> None:
  if not len(entries):
    out.write(f'  {json.dumps(key)}: []{end}\n')
    return
  out.write(f'  {json.dumps(key)}: [\n')
  last = len(entries) - 1
  for i, entry in enumerate(entries):
    out.write(f'    {json.dumps(entry)}' + (',\n' if i < last else '\n'))
  out.write(f'  ]{end}\n')


def dumps(record: Mapping[str, Any]) -> str:
  """`write`'s text as one string (for small records)."""
  text = io.StringIO()
  write(record, text)
  return text.getvalue()


def recorded_video(path: str | os.PathLike) -> str | None:
  """The `video` of a prediction record file, from its first lines; None if it is none."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = [f.readline(1 << 16) for _ in range(3)]
  except (OSError, UnicodeDecodeError):
    return None
  if lines[0].strip() != '{':
    return None
  fields = {}
  for line in lines[1:]:
    try:
      fields.update(json.loads('{' + line.strip().rstrip(',') + '}'))
    except ValueError:
      return None
  video = fields.get('video')
  return video if fields.get('format') == FORMAT and isinstance(video, str) else None


def settings(
  predictor: frame_predictor.FramePredictor, linking: Any, every: int, top_k: int, max_tubes: int
) -> dict[str, Any]:
  """The record's `settings`: clips, batching, the JSON options and the linking."""
  p = predictor
  return {
    'clip_frames': p.num_frames,
    'clip_frame_stride': p.frame_stride,
    'frame_size': p.frame_size,
    'image_size': p.image_size,
    'frame_stride': every,
    'batch_size': p.batch_size,
    'devices': p.num_devices,
    'frame_top_k': top_k,
    'max_tubes': max_tubes,
    'linking': linking_dict(linking),
    'placement': clip_geometry.PLACEMENT,
    'interpolation': 'linear between predicted frames' if every > 1 else 'none',
  }


def make_record(
  video: str,
  results: frame_predictor.FrameResults,
  size: tuple[int, int],
  fps: float,
  class_names: Sequence[str],
  found: Sequence[Any],
  kept: Sequence[Any],
  model_info: Mapping[str, Any],
  settings: Mapping[str, Any],
  top_k: int,
) -> dict[str, Any]:
  """The record of one video (without `timing`): frames, the `kept` tubes of the `found`
  ones, the video's top 5 classes, the model and the settings."""
  return {
    'format': FORMAT,
    'video': video,
    'num_frames': results.num_frames,
    'fps': round(fps, 4),
    'size': list(size),
    'classes': list(class_names),
    'frames': frame_entries(results, size, class_names, top_k),
    'tubes': tube_entries(kept, class_names),
    'tubes_found': len(found),
    'top5': top_classes(results.probs.mean(0), class_names, 5),
    'model': dict(model_info),
    'settings': dict(settings),
  }
