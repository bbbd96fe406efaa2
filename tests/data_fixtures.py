"""Session fixtures with a tiny synthetic UCF-101-layout folder and its TFDS build.

Registered in conftest.py (`pytest_plugins`); each pytest worker builds them once.
"""

import types

import pytest

# 6 classes (4 with boxes), 4 videos each, 24-48 frames: written in about a second.
SYNTHETIC_SPEC_KWARGS = dict(seed=0, num_classes=6, annotated_classes=4,
                             videos_per_class=4, min_frames=24, max_frames=48)
SYNTHETIC_FRAME_SIZE = 32


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
  """Ground truth (`synthetic.SyntheticDataset`) of a synthetic UCF-101 folder.

  `.root` is the folder: UCF-101/<Class>/*.avi, ucfTrainTestlist/, pyannot.pkl.
  """
  from stconsist_jax.data import synthetic
  spec = synthetic.SyntheticSpec(**SYNTHETIC_SPEC_KWARGS)
  return synthetic.generate(tmp_path_factory.mktemp("synthetic") / "ucf101", spec)


@pytest.fixture(scope="session")
def synthetic_tfds(synthetic_root, tmp_path_factory):
  """`synthetic_root` built with the TFDS builder, split 1, 32x32 frames.

  Fields: data_dir, config (the BuilderConfig), config_name, frame_size, split,
  builder_dir (for `tfds.builder_from_directory`), builder (ready to read), truth
  (the generator's ground truth: records with exact pixel boxes, splits, classes),
  manual_dir, num_classes.
  """
  from stconsist_jax.data import tfds_builder
  data_dir = tmp_path_factory.mktemp("tfds")
  # In-process decoding: a worker pool's start-up would dominate such a tiny build.
  builder = tfds_builder.build(synthetic_root.root, data_dir, split=1,
                               frame_size=SYNTHETIC_FRAME_SIZE, num_workers=0)
  return types.SimpleNamespace(
      data_dir=data_dir, config=builder.builder_config,
      config_name=builder.builder_config.name, frame_size=SYNTHETIC_FRAME_SIZE, split=1,
      builder_dir=builder.data_dir, builder=builder, truth=synthetic_root,
      manual_dir=synthetic_root.root, num_classes=len(synthetic_root.class_names))
