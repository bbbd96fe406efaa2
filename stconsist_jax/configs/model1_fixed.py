"""Study setting Model-1, fixed weights first (protocol 2).

The staged schedule of configs/model2_fixed.py with Model-1's box head.
"""

import ml_collections

from stconsist_jax.configs import model2_fixed


def get_config() -> ml_collections.ConfigDict:
  config = model2_fixed.get_config()
  config.model.box_hidden = (16,)
  return config
