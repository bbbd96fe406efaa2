"""CPU-sized demo: the tubelet detector on synthetic multi-actor videos in the UCF-101 layout.

tools/demo.py generates the videos described by `config.synthetic` (2-3 actors in most
videos, entering, leaving and crossing), builds them with the TFDS builder, fills in
data.data_dir, trains this config from scratch with CSD on the dense outputs and part of
the boxes withheld, evaluates whole test videos (a clip every 4 frames, each boxing every
actor on its 8 frames) and predicts a test video. configs/demo_one_box.py is the study's
one-box spatial head on the same data, the README's comparison row.
"""

import ml_collections

from stconsist_jax.configs import demo_one_box


def get_config() -> ml_collections.ConfigDict:
  config = demo_one_box.get_config()
  config.data.max_actors = 3
  config.model.box_head = 'tubelet'
  config.model.num_box_classes = 6  # the synthetic annotated classes
  config.model.tubelet_frames = 0  # K = T = 8: a box on every frame of the clip
  config.model.tubelet_stride = 8
  config.model.tubelet_width = 64
  config.model.tubelet_top_n = 6
  config.eval.evaluators = ('clips', 'tubelets')
  config.eval.tube_frame_stride = 4  # a quarter of the one-box heads' clip per frame
  config.eval.best_metric = 'frame_map'
  return config
