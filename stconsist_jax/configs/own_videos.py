"""Your own videos (docs/own_videos.md): R3D-34 from the converted Kinetics weights, Model-2
box head, any class count; set the dataset's name, data dir and class count on the command line.

  python launch.py --config=configs/own_videos.py --workdir=workdirs/mine \
      --config.data.name=mine --config.data.data_dir=DATA --config.model.num_classes=N

tools/build_dataset.py prints that line for the dataset it built. Frame-mAP scores the
annotated frames of the test videos; video-mAP their linked tubes.
"""

import ml_collections

from stconsist_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = 'own'  # the --name given to tools/build_dataset.py
  config.data.split = 1
  config.data.classes = 'all'  # the annotated classes; a video's class is its boxes' class
  config.model.num_classes = 2  # set to your class count (the build prints it)
  config.init_from = 'pretrained/r3d34_K_200ep'  # tools/convert_torch_weights.py output
  config.train.num_steps = 4000
  config.train.checkpoint_every = 500
  config.train.eval_every = 2000
  config.optimizer.warmup_steps = 200
  config.loss.rampup_steps = 1000
  config.eval.evaluators = ('clips', 'frames', 'tubes')
  config.eval.best_metric = 'frame_map'
  return config
