"""Study setting Model-1, unfrozen (protocol 1): all losses, every weight trains.

Model-1's box head is Dense 16 -> Dense 4 -> sigmoid.
"""

import ml_collections

from stconsist_jax.configs import model2


def get_config() -> ml_collections.ConfigDict:
  config = model2.get_config()
  config.model.box_hidden = (16,)
  return config
