"""The config schema: every key's type, range and choices, checked once before any compute.

Every problem is reported as a ConfigError that names the offending key.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import ml_collections

from stconsist_jax.core import errors

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')
DTYPES = ('float32', 'bfloat16')
CON_CLS = ('js', 'csd')
DEPTHS = (10, 18, 34, 50, 101, 152, 200)
# metrics.tubelets.FRAME_WEIGHTINGS (that layer is above this one; a test keeps them equal).
TUBELET_FRAME_WEIGHTINGS = ('uniform', 'triangular')
# Loss terms (each weighted by config.loss.<term>_weight and in train.stages' loss_weights):
# the one-box heads' four, then the dense tubelet head's (which has no loc/con_loc), then
# the presence term of a tubelet head with model.tubelet_presence.
BASE_LOSS_TERMS = ('cls', 'loc', 'con_cls', 'con_loc')
TUBELET_LOSS_TERMS = (
  'tubelet_cls',
  'tubelet_box',
  'tubelet_giou',
  'con_dense_cls',
  'con_dense_box',
)
PRESENCE_LOSS_TERM = 'tubelet_presence'
LOSS_TERMS = BASE_LOSS_TERMS + TUBELET_LOSS_TERMS + (PRESENCE_LOSS_TERM,)
# The terms multiplied by the consistency ramp w(t).
CONSISTENCY_TERMS = ('con_cls', 'con_loc', 'con_dense_cls', 'con_dense_box')
STAGE_KEYS = ('num_steps', 'freeze_backbone', 'loss_weights')
# Names the models layer dispatches on (it imports them from here).
BOX_HEADS = ('mlp', 'spatial', 'none', 'tubelet')
TUBELET_STRIDES = (4, 8, 16)
BOX_ACTIVATIONS = ('none', 'relu', 'gelu', 'tanh', 'silu')
NORMALIZATIONS = ('activitynet_0_255', 'imagenet', 'kinetics', 'scale_0_1')
CONV_IMPLS = ('auto', 'xla', 'conv2d')
MAX_ACTORS = 64  # data.max_actors: actors per training clip (UCF101-24 videos have fewer)


class ConfigError(errors.UserError, ValueError):
  """An invalid configuration value; the message names the key."""


def head_loss_terms(box_head: str, presence: bool = False) -> tuple[str, ...]:
  """The loss terms a model with `box_head` yields: the dense head's ('tubelet', with
  `tubelet_presence` when `presence`) or the four."""
  if box_head != 'tubelet':
    return BASE_LOSS_TERMS
  return ('cls', 'con_cls') + TUBELET_LOSS_TERMS + ((PRESENCE_LOSS_TERM,) if presence else ())


def tubelet_presence(config: Any) -> bool:
  """Whether a tubelet detector has the per-frame presence output (`model.tubelet_presence`;
  configs saved before it: no); False for the other heads."""
  model = config.get('model', None) or {}
  return str(model.get('box_head', 'mlp')) == 'tubelet' and bool(
    model.get('tubelet_presence', False)
  )


def _get(config: Any, key: str) -> Any:
  node = config
  for part in key.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f'config key {key!r} is missing') from None
  return node


def _check_type(config: Any, key: str, types: type | tuple[type, ...]) -> Any:
  value = _get(config, key)
  types = types if isinstance(types, tuple) else (types,)
  # bool is an int subclass: never accept it where a number is expected.
  ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
  if not ok:
    names = ' or '.join(t.__name__ for t in types)
    raise ConfigError(f'config key {key!r} must be {names}, got {value!r} ({type(value).__name__})')
  return value


def _check_choice(config: Any, key: str, choices: tuple[Any, ...]) -> Any:
  value = _get(config, key)
  if value not in choices:
    raise ConfigError(f'config key {key!r} must be one of {list(choices)}, got {value!r}')
  return value


def _check_range(
  config: Any, key: str, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
  value = _check_type(config, key, (int, float))
  if low is not None and (value < low or (low_open and value == low)):
    bound = f'> {low}' if low_open else f'>= {low}'
    raise ConfigError(f'config key {key!r} must be {bound}, got {value!r}')
  if high is not None and value > high:
    raise ConfigError(f'config key {key!r} must be <= {high}, got {value!r}')
  return value


def _check_stages(config: Any) -> None:
  stages = _check_type(config, 'train.stages', (tuple, list))
  for i, stage in enumerate(stages):
    key = f'train.stages[{i}]'
    if not isinstance(stage, Mapping) and not isinstance(stage, ml_collections.ConfigDict):
      raise ConfigError(f'config key {key!r} must be a dict, got {stage!r}')
    unknown = sorted(set(stage.keys()) - set(STAGE_KEYS))
    if unknown:
      raise ConfigError(
        f'config key {key!r} has unknown fields {unknown}; allowed: {list(STAGE_KEYS)}'
      )
    num_steps = stage.get('num_steps')
    if (
      not isinstance(num_steps, int)
      or isinstance(num_steps, bool)
      or (num_steps < 1 and num_steps != -1)
    ):
      raise ConfigError(
        f'config key {key}.num_steps must be a positive int or -1, got {num_steps!r}'
      )
    if num_steps == -1 and i != len(stages) - 1:
      raise ConfigError(f'config key {key}.num_steps: only the last stage may use -1')
    if not isinstance(stage.get('freeze_backbone', False), bool):
      raise ConfigError(
        f'config key {key}.freeze_backbone must be bool, got {stage.get("freeze_backbone")!r}'
      )
    weights = stage.get('loss_weights', {}) or {}
    for name, value in dict(weights).items():
      if name not in LOSS_TERMS:
        raise ConfigError(
          f'config key {key}.loss_weights has unknown term {name!r}; allowed: {list(LOSS_TERMS)}'
        )
      if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(
          f'config key {key}.loss_weights.{name} must be a number >= 0, got {value!r}'
        )
  fixed = [s for s in stages if s.get('num_steps') != -1]
  total = sum(s['num_steps'] for s in fixed)
  if stages and total > config.train.num_steps:
    raise ConfigError(
      f'config key train.stages: the stages take {total} steps, more than '
      f'train.num_steps={config.train.num_steps}'
    )


CLIP_KEYS = ('data.frame_size', 'data.image_size', 'data.num_frames', 'data.frame_stride')


def tubelet_frames(config: Any) -> int:
  """K, the output frames per clip of a tubelet detector (`model.tubelet_frames`, 0 = the
  whole clip); 0 for the other heads."""
  model = config.get('model', None) or {}
  if str(model.get('box_head', 'mlp')) != 'tubelet':
    return 0
  k = int(model.get('tubelet_frames', 0) or 0)
  return k or int(config.data.num_frames)


def check_clip_settings(config: Any) -> None:
  """The clip settings a model is applied with: positive ints (prediction checks only these)."""
  for key in CLIP_KEYS:
    _check_type(config, key, int)
    _check_range(config, key, 1)


def _check_data(config: Any, num_processes: int) -> None:
  """The `data` group: the one place its values are checked (the data layer trusts it)."""
  _check_type(config, 'data.name', str)
  _check_type(config, 'data.data_dir', str)
  _check_choice(config, 'data.split', (1, 2, 3))
  check_clip_settings(config)
  _check_type(config, 'data.shuffle_buffer', int)
  _check_range(config, 'data.shuffle_buffer', 1)
  # The box target averages the window's two central frames.
  _check_range(config, 'data.num_frames', 2)
  _check_choice(config, 'data.classes', ('all', 'ucf24'))
  _check_type(config, 'data.host_flip', bool)
  _check_type(config, 'data.device_prefetch', int)
  _check_range(config, 'data.device_prefetch', 0)
  _check_range(config, 'data.box_label_fraction', 0.0, 1.0)
  _check_type(config, 'data.max_actors', int)
  _check_range(config, 'data.max_actors', 0, MAX_ACTORS)
  labeled = _check_type(config, 'data.labeled_per_batch', int)
  _check_range(config, 'data.labeled_per_batch', 0)
  per_host = _check_type(config, 'train.batch_size', int) // num_processes
  if labeled > per_host:
    raise ConfigError(
      f'config key data.labeled_per_batch={labeled} exceeds the per-host '
      f'batch {per_host} (train.batch_size over {num_processes} processes)'
    )
  if labeled and config.data.box_label_fraction <= 0:
    raise ConfigError('config key data.labeled_per_batch > 0 needs data.box_label_fraction > 0')
  video_fraction = _check_range(config, 'data.labeled_video_fraction', 0.0, 1.0)
  video_list = _check_type(config, 'data.labeled_videos', str)
  if video_list and video_fraction < 1.0:
    raise ConfigError(
      f'config keys data.labeled_videos={video_list!r} and data.labeled_video_fraction='
      f'{video_fraction} both choose the labelled videos: set one (the fraction to 1.0 '
      "or the list to '')"
    )
  if labeled and not video_list and video_fraction <= 0:
    raise ConfigError('config key data.labeled_per_batch > 0 needs data.labeled_video_fraction > 0')
  scale = _check_type(config, 'data.scale_augment', (tuple, list))
  if not (
    len(scale) == 2
    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
    and 0 < scale[0] <= scale[1] <= 1
  ):
    raise ConfigError(
      f'config key data.scale_augment must be (min, max) with 0 < min <= max <= 1, got {scale!r}'
    )
  if config.data.image_size > config.data.frame_size:
    raise ConfigError(
      f'config key data.image_size={config.data.image_size} exceeds '
      f'data.frame_size={config.data.frame_size}'
    )


def _check_evaluators(config: Any) -> None:
  names = _check_type(config, 'eval.evaluators', (tuple, list))
  if not names or any(not isinstance(n, str) or not n.isidentifier() for n in names):
    raise ConfigError(
      f'config key eval.evaluators must be a non-empty tuple of evaluator names, got {names!r}'
    )
  if len(set(names)) != len(names):
    raise ConfigError(f'config key eval.evaluators names an evaluator twice: {names!r}')
  if 'tubes' in names and ('frames' not in names or names.index('frames') > names.index('tubes')):
    raise ConfigError(
      "config key eval.evaluators: 'tubes' needs 'frames' before it (it reports beside its "
      f'frame-AP), got {names!r}'
    )
  if 'tubelets' in names and config.model.box_head != 'tubelet':
    raise ConfigError(
      "config key eval.evaluators: 'tubelets' scores a tubelet detector "
      f"(model.box_head='tubelet'), found box_head={config.model.box_head!r}"
    )
  if config.eval.frame_ap_frames == 'all' and not {'tubes', 'tubelets'} & set(names):
    raise ConfigError(
      "config key eval.frame_ap_frames='all' scores frames of the whole-video pass: it "
      "needs 'tubes' (or 'tubelets') in eval.evaluators"
    )


def _check_tubelet_head(config: Any) -> None:
  """The dense tubelet head's keys (read only when model.box_head='tubelet')."""
  for key in ('num_box_classes', 'tubelet_frames', 'tubelet_width', 'tubelet_top_n'):
    _check_type(config, f'model.{key}', int)
  _check_range(config, 'model.num_box_classes', 1)
  _check_range(config, 'model.tubelet_frames', 0, config.data.num_frames)
  _check_choice(config, 'model.tubelet_stride', TUBELET_STRIDES)
  _check_range(config, 'model.tubelet_width', 1)
  _check_range(config, 'model.tubelet_top_n', 1)
  _check_range(config, 'model.tubelet_nms', 0.0, 1.0, low_open=True)
  _check_type(config, 'model.tubelet_presence', bool)
  _check_type(config, 'model.tubelet_finer_stage', bool)
  _check_type(config, 'model.tubelet_flip_test', bool)
  _check_range(config, 'model.tubelet_presence_threshold', 0.0, 1.0, low_open=True)
  if config.data.frame_stride != 1:
    raise ConfigError(
      f'config key data.frame_stride={config.data.frame_stride}: a tubelet detector predicts '
      'a box on each of consecutive frames, so its clips need frame_stride 1'
    )
  k = tubelet_frames(config)
  if not 1 <= config.eval.tube_frame_stride <= k:
    raise ConfigError(
      f'config key eval.tube_frame_stride={config.eval.tube_frame_stride} must be in 1..{k} '
      '(model.tubelet_frames K): clips farther apart than K frames leave frames without boxes'
    )


def validate(
  config: ml_collections.ConfigDict, num_devices: int | None = None, num_processes: int = 1
) -> None:
  """Checks types, ranges and consistency; raises ConfigError naming the key."""
  _check_type(config, 'seed', int)
  _check_range(config, 'seed', 0, 2**31 - 1)
  _check_data(config, num_processes)
  # Model.
  _check_choice(config, 'model.depth', DEPTHS)
  _check_range(config, 'model.widen_factor', 0.0, low_open=True)
  _check_choice(config, 'model.shortcut_type', ('A', 'B'))
  _check_type(config, 'model.conv1_t_size', int)
  _check_range(config, 'model.conv1_t_size', 1)
  _check_type(config, 'model.conv1_t_stride', int)
  _check_range(config, 'model.conv1_t_stride', 1)
  _check_type(config, 'model.no_max_pool', bool)
  _check_type(config, 'model.num_classes', int)
  _check_range(config, 'model.num_classes', 1)
  _check_choice(config, 'model.box_head', BOX_HEADS)
  hidden = _check_type(config, 'model.box_hidden', (tuple, list))
  if not hidden or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
    raise ConfigError(
      f'config key model.box_hidden must be a non-empty tuple of positive ints, got {hidden!r}'
    )
  _check_choice(config, 'model.box_activation', BOX_ACTIVATIONS)
  if config.model.box_head == 'tubelet':
    _check_tubelet_head(config)
  _check_choice(config, 'model.normalization', NORMALIZATIONS)
  _check_choice(config, 'model.dtype', DTYPES)
  _check_choice(config, 'model.conv_impl', CONV_IMPLS)
  # Loss.
  for term in LOSS_TERMS:
    _check_range(config, f'loss.{term}_weight', 0.0)
  _check_range(config, 'loss.focal_gamma', 0.0)
  _check_choice(config, 'loss.con_cls', CON_CLS)
  for key in ('loss.rampup_steps', 'loss.rampdown_steps'):
    _check_type(config, key, int)
    _check_range(config, key, 0)
  teacher = _check_range(config, 'loss.teacher_ema', 0.0)
  if teacher >= 1.0:
    raise ConfigError(
      f'config key loss.teacher_ema must be in [0, 1) (0 = no teacher), got {teacher!r}'
    )
  # Optimizer.
  _check_choice(config, 'optimizer.name', OPTIMIZERS)
  _check_range(config, 'optimizer.lr', 0.0, low_open=True)
  _check_range(config, 'optimizer.momentum', 0.0, 1.0)
  _check_type(config, 'optimizer.nesterov', bool)
  _check_range(config, 'optimizer.b1', 0.0, 1.0)
  _check_range(config, 'optimizer.b2', 0.0, 1.0)
  _check_range(config, 'optimizer.eps', 0.0, low_open=True)
  _check_range(config, 'optimizer.weight_decay', 0.0)
  _check_range(config, 'optimizer.grad_clip_norm', 0.0)
  _check_choice(config, 'optimizer.schedule', SCHEDULES)
  _check_type(config, 'optimizer.warmup_steps', int)
  _check_range(config, 'optimizer.warmup_steps', 0)
  boundaries = _check_type(config, 'optimizer.decay_steps', (tuple, list))
  if any(not isinstance(b, int) or b < 1 for b in boundaries) or list(boundaries) != sorted(
    boundaries
  ):
    raise ConfigError(
      f'config key optimizer.decay_steps must be increasing positive ints, got {boundaries!r}'
    )
  _check_range(config, 'optimizer.decay_factor', 0.0, low_open=True)
  # Train.
  for key in ('train.batch_size', 'train.num_steps', 'train.log_every'):
    _check_type(config, key, int)
    _check_range(config, key, 1)
  for key in ('train.checkpoint_every', 'train.keep_checkpoints', 'train.eval_every'):
    _check_type(config, key, int)
    _check_range(config, key, 0)
  _check_range(config, 'train.storage_timeout_seconds', 0.0, low_open=True)
  if config.optimizer.warmup_steps > config.train.num_steps:
    raise ConfigError(
      f'config key optimizer.warmup_steps={config.optimizer.warmup_steps} '
      f'exceeds train.num_steps={config.train.num_steps}: pass a shorter '
      f'warm-up (e.g. --config.optimizer.warmup_steps='
      f'{config.train.num_steps // 10}) or more steps'
    )
  profile = _check_type(config, 'train.profile_steps', (tuple, list))
  if len(profile) != 2 or any(
    not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in profile
  ):
    raise ConfigError(
      f'config key train.profile_steps must be (first step, number of '
      f'steps), two ints >= 0, got {profile!r}'
    )
  _check_stages(config)
  if num_devices is not None and config.train.batch_size % num_devices:
    raise ConfigError(
      f'config key train.batch_size={config.train.batch_size} is not '
      f'divisible by the device count {num_devices}'
    )
  if config.train.batch_size % num_processes:
    raise ConfigError(
      f'config key train.batch_size={config.train.batch_size} is not '
      f'divisible by the process count {num_processes}'
    )
  # Eval.
  for key in ('eval.clips_per_video', 'eval.frame_stride', 'eval.batch_size'):
    _check_type(config, key, int)
    _check_range(config, key, 1)
  _check_type(config, 'eval.max_videos', int)
  _check_range(config, 'eval.max_videos', 0)
  _check_choice(config, 'eval.frame_ap_protocol', ('act', 'voc'))
  _check_choice(config, 'eval.frame_ap_frames', ('annotated', 'all'))
  _check_evaluators(config)
  _check_type(config, 'eval.tube_frame_stride', int)
  _check_range(config, 'eval.tube_frame_stride', 1)
  for key in ('iou_threshold', 'nms_threshold'):
    _check_range(config, f'eval.tubes.{key}', 0.0, 1.0)
  _check_range(config, 'eval.tubes.min_score', 0.0)
  for key in ('max_gap', 'min_length', 'top_k'):
    _check_type(config, f'eval.tubes.{key}', int)
    _check_range(config, f'eval.tubes.{key}', 1)
  if config.eval.get('tubelets', None) is not None:
    for key in ('tubelet_nms_threshold', 'iou_threshold', 'nms_threshold', 'frame_nms_threshold'):
      _check_range(config, f'eval.tubelets.{key}', 0.0, 1.0)
    _check_range(config, 'eval.tubelets.min_score', 0.0)
    _check_range(config, 'eval.tubelets.overlap_weight', 0.0)
    _check_choice(config, 'eval.tubelets.frame_weighting', TUBELET_FRAME_WEIGHTINGS)
    for key, low in (('max_gap', 0), ('min_length', 1), ('top_k', 1)):
      _check_type(config, f'eval.tubelets.{key}', int)
      _check_range(config, f'eval.tubelets.{key}', low)
  if num_devices is not None and config.eval.batch_size % num_devices:
    raise ConfigError(
      f'config key eval.batch_size={config.eval.batch_size} is not '
      f'divisible by the device count {num_devices}'
    )
  _check_type(config, 'eval.best_metric', str)
  _check_choice(config, 'eval.best_mode', ('max', 'min'))
  checkpoint_step(_check_type(config, 'eval.checkpoint_step', str))
  _check_type(config, 'eval.sheet_clips', int)
  _check_range(config, 'eval.sheet_clips', 0)
  _check_type(config, 'init_from', str)


# Named steps a workdir can be evaluated at; 'init_from' is config.init_from's weights.
NAMED_STEPS = ('latest', 'best', 'init_from')


def checkpoint_step(value: Any) -> int | str:
  """A step to evaluate: a step number (int or digits) -> int, or one of NAMED_STEPS."""
  if isinstance(value, str) and value.isdigit():
    value = int(value)
  if isinstance(value, bool) or not (
    (isinstance(value, int) and value >= 0) or value in NAMED_STEPS
  ):
    raise ConfigError(
      f"config key 'eval.checkpoint_step' must be 'latest', 'best', 'init_from' or a "
      f'step number >= 0, got {value!r}'
    )
  return value
