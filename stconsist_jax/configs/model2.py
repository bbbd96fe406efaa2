"""Study setting Model-2, unfrozen (protocol 1): all losses, every weight trains.

Initialized from the UCF-101 classification fine-tune (configs/finetune_cls.py workdir).
"""

import ml_collections

from stconsist_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.box_hidden = (256, 64, 8)
  config.init_from = 'workdirs/finetune_cls'
  return config
