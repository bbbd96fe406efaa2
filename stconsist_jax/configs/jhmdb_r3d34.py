"""JHMDB-21 (one of its 3 splits): R3D-34 from the converted Kinetics weights, Model-2 box head.

Build it first: `python tools/build_dataset.py --dataset=jhmdb --manual_dir=JHMDB
--data_dir=DATA [--split=N]` (JHMDB-GT.pkl and Frames/ of the ACT / MOC download), then
`--config.data.data_dir=DATA [--config.data.split=N]`. Evaluation is ACT's for JHMDB:
frame-mAP over every frame of the test videos (each is annotated throughout) and video-mAP
of linked tubes; the report names the split.
"""

import ml_collections

from stconsist_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = 'jhmdb'
  config.data.split = 1  # 1, 2 or 3; ACT and MOC report the mean over the three.
  config.data.classes = 'all'  # 21 classes: every JHMDB video is one annotated actor.
  config.model.num_classes = 21
  config.init_from = 'pretrained/r3d34_K_200ep'  # tools/convert_torch_weights.py output
  # About 660 training videos of 15 to 40 frames: a short schedule.
  config.train.num_steps = 4000
  config.train.checkpoint_every = 500
  config.train.eval_every = 2000
  config.optimizer.warmup_steps = 200
  config.loss.rampup_steps = 1000
  config.eval.frame_ap_frames = 'all'
  config.eval.evaluators = ('clips', 'frames', 'tubes')
  config.eval.best_metric = 'frame_map'
  return config
