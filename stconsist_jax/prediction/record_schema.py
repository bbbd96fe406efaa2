"""The JSON schema of a prediction record and the checks of a record against it: the
schema's types, keys and bounds, then what a schema cannot say (counts, order, indices).

`PREDICTION_SCHEMA` is draft 2020-12; `schema_errors` checks the subset of it that the
schema uses, reading `Entries` lists as arrays. Field meanings: docs/predict.md.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping

from stconsist_jax.prediction import prediction_record

_NUMBER = {'type': 'number'}
_INT = {'type': 'integer', 'minimum': 0}
_BOX = {'type': 'array', 'items': _NUMBER, 'minItems': 4, 'maxItems': 4}
_CLASS_SCORE = {
  'type': 'object',
  'required': ['label', 'class', 'score'],
  'additionalProperties': False,
  'properties': {'label': _INT, 'class': {'type': 'string'}, 'score': _NUMBER},
}

_ACTOR = {
  'type': 'object',
  'required': ['box', 'label', 'class', 'score', 'tube'],
  'additionalProperties': False,
  'properties': {
    'box': _BOX,
    'label': _INT,
    'class': {'type': 'string'},
    'score': _NUMBER,
    'tube': {'anyOf': [_INT, {'type': 'null'}]},
  },
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
    'box_classes',
    'frames',
    'tubes',
    'tubes_found',
    'top5',
    'model',
    'settings',
  ],
  'additionalProperties': False,
  'properties': {
    'format': {'type': 'string', 'enum': [prediction_record.FORMAT]},
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
    'box_classes': {'type': 'array', 'items': {'type': 'string'}, 'minItems': 1},
    'frames': {
      'type': 'array',
      'items': {
        'type': 'object',
        'required': ['frame', 'box', 'scores', 'predicted', 'actors'],
        'additionalProperties': False,
        'properties': {
          'frame': _INT,
          'box': {'anyOf': [_BOX, {'type': 'null'}]},
          'scores': {
            'anyOf': [{'type': 'array', 'items': _NUMBER}, {'type': 'array', 'items': _CLASS_SCORE}]
          },
          'predicted': {'type': 'boolean'},
          'actors': {'type': 'array', 'items': _ACTOR},
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
        # Predicted through an export (predict --model): its format, file and digest.
        'export': {
          'type': 'object',
          'required': ['format', 'path', 'sha256'],
          'properties': {
            'format': {'type': 'string'},
            'path': {'type': 'string'},
            'sha256': {'type': 'string'},
          },
        },
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
      'properties': {
        'predict_s': _NUMBER,
        'write_s': _NUMBER,
        'frames_per_s': _NUMBER,
        'clips': _INT,
      },
    },
  },
}


_ARRAY = (list, prediction_record.Entries)
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
  n, classes, box_classes = record['num_frames'], record['classes'], record['box_classes']
  k = len(classes)
  num_tubes = len(record['tubes'])
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
    bad = [
      a
      for a in frame['actors']
      if a['label'] >= len(box_classes)
      or a['class'] != box_classes[a['label']]
      or (a['tube'] is not None and a['tube'] >= num_tubes)
    ]
    if bad:
      errors.append(f'$.frames[{i}].actors: label/class/tube mismatch in {bad[0]}')
      break
  for i, tube in enumerate(record['tubes']):
    where = f'$.tubes[{i}]'
    if not 0 <= tube['start'] <= tube['end'] < n:
      errors.append(f'{where}: start {tube["start"]} / end {tube["end"]} outside the video')
    if len(tube['frames']) != len(tube['boxes']):
      errors.append(f'{where}: {len(tube["frames"])} frames but {len(tube["boxes"])} boxes')
    elif tube['frames'][0] != tube['start'] or tube['frames'][-1] != tube['end']:
      errors.append(f'{where}: frames do not run from start to end')
    if tube['label'] >= len(box_classes) or tube['class'] != box_classes[tube['label']]:
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
