"""Classification-only fine-tuning of the Kinetics R3D-34 on UCF-101 split 1.

Starts from a converted Kinetics checkpoint (tools/convert_torch_weights.py output; the
classifier is replaced since 400/700 != 101 classes); box and consistency losses off.
"""

import ml_collections

from stconsist_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.loss.loc_weight = 0.0
  config.loss.con_cls_weight = 0.0
  config.loss.con_loc_weight = 0.0
  config.loss.rampup_steps = 0
  config.optimizer.lr = 0.005
  config.optimizer.schedule = 'step'
  config.optimizer.warmup_steps = 0
  config.optimizer.decay_steps = (6000, 9000)
  config.train.num_steps = 10000
  config.init_from = 'pretrained/r3d34_K_200ep'
  return config
