"""The field's detector on UCF101-24: R3D-34 from the converted Kinetics weights with the
dense tubelet head (every actor, a box on each of the clip's 16 frames), CSD on its outputs.

  python tools/convert_torch_weights.py --checkpoint=r3d34_K_200ep.pth --output=weights/r3d34_k700
  python launch.py --config=configs/tubelet_r3d34.py --workdir=workdirs/tubelet_r3d34

Whole videos cost one forward pass per 8 frames (eval.tube_frame_stride 8 <= K = 16), a
quarter or less of the one-box heads' pass per frame.
"""

import ml_collections

from stconsist_jax.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.classes = 'ucf24'  # the annotated videos, labelled by their tube class
  config.data.max_actors = 4  # UCF101-24 test videos hold up to 10 tubes, rarely > 4 at once
  config.model.num_classes = 24
  config.model.num_box_classes = 24
  config.model.box_head = 'tubelet'
  config.model.tubelet_frames = 0  # K = 16: a box on every frame of the clip
  config.model.tubelet_stride = 8  # layer2 of R3D-34: a 16x16 map at 128x128
  config.model.tubelet_width = 256
  config.eval.evaluators = ('clips', 'tubelets')
  config.eval.tube_frame_stride = 8
  config.eval.best_metric = 'frame_map'
  # The full-scale rehearsal (from scratch, batch 2, a 2-step warm-up) diverged without
  # clipping: the focal loss reached 1e20 by step 5 and NaN at step 6; clipped at 1.0 its
  # 20 steps stay finite (docs/rehearsal.md).
  config.optimizer.grad_clip_norm = 1.0
  config.init_from = 'weights/r3d34_k700'
  return config
