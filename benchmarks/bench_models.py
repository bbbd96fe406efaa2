"""The models the prediction and export benchmarks run: named settings, random weights.

No flags here, so each benchmark script imports it as a sibling and defines its own.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from stconsist_jax import models
from stconsist_jax.configs import default as default_config
from stconsist_jax.configs import demo as demo_config
from stconsist_jax.configs import demo_one_box
from stconsist_jax.configs import tubelet_r3d34
from stconsist_jax.evaluation import description
from stconsist_jax.models import resnet3d
from stconsist_jax.prediction import class_names
from stconsist_jax.prediction import predict

SETTINGS = ('demo', 'demo_one_box', 'r3d34', 'r3d34_spatial', 'r3d34_tubelet')
SETTINGS_HELP = (
  'demo: configs/demo.py (R3D-10/4, 8x48x48, tubelet head, 8 classes); demo_one_box: the '
  'same with the spatial head; r3d34: R3D-34, 16x128x128, Model-2 head, 101 classes; '
  'r3d34_spatial: the same with the spatial head; r3d34_tubelet: configs/tubelet_r3d34.py (R3D-34, 16x128x128, tubelet head, 24 classes).'
)


def bench_config(setting: str) -> ml_collections.ConfigDict:
  """The config a setting names (random weights; data settings only for the clips)."""
  if setting == 'demo':
    config = demo_config.get_config()
  elif setting == 'demo_one_box':
    config = demo_one_box.get_config()
  elif setting in ('r3d34', 'r3d34_spatial', 'r3d34_tubelet'):
    config = (tubelet_r3d34 if setting == 'r3d34_tubelet' else default_config).get_config()
    if setting == 'r3d34_spatial':
      config.model.box_head = 'spatial'
    config.data.num_frames = 16
    config.data.frame_size = config.data.image_size = 128
  else:
    raise ValueError(f'unknown setting {setting!r}; known: {", ".join(SETTINGS)}')
  config.data.name = 'random'
  return config


def random_clips(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> np.ndarray:
  d = config.data
  shape = (batch, d.num_frames, d.image_size, d.image_size, 3)
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def random_variables(model: Any, config: ml_collections.ConfigDict) -> dict[str, Any]:
  d = config.data
  clip = np.zeros((1, d.num_frames, d.image_size, d.image_size, 3), np.uint8)
  init = jax.jit(lambda rng, x: model.init(rng, x, train=False))
  return jax.tree.map(np.asarray, jax.device_get(dict(init(jax.random.key(0, impl='rbg'), clip))))


def calibrate_batchnorm(model: Any, variables: dict[str, Any], clips: np.ndarray) -> dict:
  """`variables` with each BatchNorm's running statistics set to its batch statistics on
  `clips`, as training sets them (one train-mode pass, flax's EMA update inverted)."""
  _, updates = jax.jit(lambda v, c: model.apply(v, c, train=True, mutable=['batch_stats']))(
    variables, clips
  )
  m = resnet3d.BN_MOMENTUM
  stats = jax.tree.map(
    lambda new, old: np.asarray((new - m * old) / (1 - m)),
    jax.device_get(updates['batch_stats']),
    variables['batch_stats'],
  )
  return dict(variables, batch_stats=stats)


def random_model(setting: str, calibrate: bool = False) -> predict.RestoredModel:
  """The setting's model with random weights, as prediction holds a restored one."""
  return random_model_from_config(bench_config(setting), calibrate)


def random_model_from_config(
  config: ml_collections.ConfigDict, calibrate: bool = False
) -> predict.RestoredModel:
  """`config`'s model with random weights, as prediction holds a restored one.

  calibrate: BatchNorm statistics from a train-mode pass on random clips; otherwise
  flax's initial ones (mean 0, variance 1), under which activations grow with depth.
  """
  model = models.build_model(config.model)
  variables = random_variables(model, config)
  if calibrate and 'batch_stats' in variables:
    variables = calibrate_batchnorm(model, variables, random_clips(config, 4, seed=1))
  num_classes = int(config.model.num_classes)
  info = {
    'source': 'workdir',
    'path': '',
    'step': 0,
    'architecture': description.describe_model(config.model),
    'classification_only': False,
    'num_classes': num_classes,
    'config_hash': None,
  }
  names = class_names.generic_class_names(num_classes)
  return predict.RestoredModel(config, model, variables, True, names, info)
