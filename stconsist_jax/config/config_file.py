"""config.json beside a run: save and load it, and the differences a resumed run may have.

A resumed run must match its saved config outside run length, logging, evaluation and data location.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath
import ml_collections

from stconsist_jax.config.schema import ConfigError
from stconsist_jax.core import fileio

CONFIG_FILENAME = 'config.json'


# Keys a resumed run may change: how long it runs, how it logs and evaluates, where the
# data lives, how a computation is lowered (model.conv_impl: the same numbers by another
# XLA program). Any other difference would silently mix two experiments in one workdir.
RESUMABLE_PREFIXES = (
  'model.conv_impl',
  'train.num_steps',
  'train.log_every',
  'train.checkpoint_every',
  'train.keep_checkpoints',
  'train.eval_every',
  'train.profile_steps',
  'train.storage_timeout_seconds',
  'eval.',
  'data.data_dir',
  'data.device_prefetch',
  'init_from',
)


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b': value} of a nested ConfigDict/dict, values normalized to JSON text."""
  items = config.items() if hasattr(config, 'items') else ()
  out = {}
  for key, value in items:
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      out.update(flatten(value, f'{name}.'))
    else:
      out[name] = json.dumps(value, sort_keys=True, default=str)
  return out


def config_differences(saved: Any, new: Any) -> list[tuple[str, str | None, str | None]]:
  """(key, saved value, new value) for every leaf that differs (None: absent)."""
  a, b = flatten(saved), flatten(new)
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# Model keys that leave the stored parameters as they are (float32 whatever the compute
# dtype) but change the numbers: a resume may change them with --allow_config_change.
MODEL_KEYS_CHANGEABLE_WITH_CONSENT = ('model.dtype',)


def is_resumable_change(key: str) -> bool:
  return any(key == p or (p.endswith('.') and key.startswith(p)) for p in RESUMABLE_PREFIXES)


def is_architecture_change(key: str) -> bool:
  """Whether a changed `key` makes other parameters: never resumable, even with consent."""
  return (
    key.startswith('model.')
    and not is_resumable_change(key)
    and key not in MODEL_KEYS_CHANGEABLE_WITH_CONSENT
  )


def describe_differences(diffs: list[tuple[str, str | None, str | None]], limit: int = 6) -> str:
  shown = [
    f'{k}: {old if old is not None else "(absent)"} -> {new if new is not None else "(absent)"}'
    for k, old, new in diffs[:limit]
  ]
  more = f' and {len(diffs) - limit} more' if len(diffs) > limit else ''
  return '; '.join(shown) + more


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json(indent=2, sort_keys=True)


def save(config: ml_collections.ConfigDict, directory: str | os.PathLike) -> epath.Path:
  """Writes `config.json` into `directory` (local or a bucket) whole."""
  return fileio.atomic_write(fileio.as_path(directory) / CONFIG_FILENAME, to_json(config))


def _lists_to_tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(v) for v in value)
  return value


def load(directory: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads the `config.json` saved by `save` (lists come back as tuples)."""
  path = fileio.as_path(directory) / CONFIG_FILENAME
  if not path.exists():
    raise FileNotFoundError(f'no {CONFIG_FILENAME} in {directory}: not a training workdir')
  try:
    data = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(
      f'{path} is not a readable config ({e}); it was not written by this project or was damaged'
    ) from None
  if not isinstance(data, dict):
    raise ConfigError(f'{path} does not hold a config object')
  return ml_collections.ConfigDict(_lists_to_tuples(upgrade(data)))


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
  """A config of an earlier version in today's schema (`eval.video_map` -> `eval.evaluators`;
  no `data.max_actors` -> 0, no actor targets, as such runs trained; no tubelet presence
  keys -> no presence output, as such runs trained; no `model.tubelet_finer_stage` -> the
  head without it; no `model.tubelet_flip_test` -> no flip at inference; no tubelet
  linking energy or frame weighting -> ACT's linking, as such runs were evaluated)."""
  evaluation = data.get('eval')
  if isinstance(evaluation, dict) and 'video_map' in evaluation and 'evaluators' not in evaluation:
    with_tubes = evaluation.pop('video_map')
    evaluation['evaluators'] = ['clips', 'frames'] + (['tubes'] if with_tubes else [])
  if isinstance(data.get('data'), dict):
    data['data'].setdefault('max_actors', 0)
  if isinstance(data.get('model'), dict):
    data['model'].setdefault('tubelet_presence', False)
    data['model'].setdefault('tubelet_presence_threshold', 0.5)
    data['model'].setdefault('tubelet_finer_stage', False)
    data['model'].setdefault('tubelet_flip_test', False)
  if isinstance(data.get('loss'), dict):
    data['loss'].setdefault('tubelet_presence_weight', 1.0)
  if isinstance(evaluation, dict) and isinstance(evaluation.get('tubelets'), dict):
    evaluation['tubelets'].setdefault('overlap_weight', 0.0)
    evaluation['tubelets'].setdefault('frame_weighting', 'uniform')
  return data
