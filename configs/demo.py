"""CPU-sized demo: synthetic UCF-101-layout data, a tiny 3D ResNet, a few hundred steps.

data.data_dir is filled in by the demo script (where it generated the synthetic data).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = 'synthetic'
  config.data.frame_size = 32
  config.data.image_size = 32
  config.data.num_frames = 8
  config.data.shuffle_buffer = 64
  config.model.depth = 10
  config.model.widen_factor = 0.25
  config.model.shortcut_type = 'A'
  config.model.conv1_t_size = 3
  config.model.no_max_pool = True
  config.loss.rampup_steps = 100
  config.optimizer.lr = 0.05
  config.optimizer.weight_decay = 1e-4
  config.optimizer.warmup_steps = 20
  config.train.batch_size = 16
  config.train.num_steps = 300
  config.train.log_every = 20
  config.train.checkpoint_every = 100
  config.train.eval_every = 0
  config.eval.clips_per_video = 2
  config.eval.batch_size = 16
  return config
