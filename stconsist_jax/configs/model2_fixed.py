"""Study setting Model-2, fixed weights first (protocol 2).

Stage 1 trains the box head alone with the localization loss (backbone and classifier
frozen, BatchNorm in inference mode) for about 15 epochs of UCF-101 split 1 (9537
videos / 64 clips per batch ~ 149 steps per epoch); stage 2 trains everything with all
losses (protocol 1) for the remaining steps.
"""

import ml_collections

from stconsist_jax.configs import model2

STEPS_PER_EPOCH = 149
BOX_HEAD_EPOCHS = 15


def get_config() -> ml_collections.ConfigDict:
  config = model2.get_config()
  config.train.stages = (
    {
      'num_steps': BOX_HEAD_EPOCHS * STEPS_PER_EPOCH,
      'freeze_backbone': True,
      'loss_weights': {'cls': 0.0, 'loc': 1.0, 'con_cls': 0.0, 'con_loc': 0.0},
    },
    {'num_steps': -1, 'freeze_backbone': False, 'loss_weights': {}},
  )
  return config
