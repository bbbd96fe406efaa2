"""Session fixtures with tiny synthetic datasets: UCF-101-layout folders and a TFDS build,
your own videos built from a CVAT export, and JHMDB-21's synthetic twin.

Registered in conftest.py (`pytest_plugins`); each pytest worker builds them once.
"""

import pathlib
import types

import numpy as np
import pytest

# 6 classes (4 with boxes), 4 videos each, 24-48 frames: written in about a second.
SYNTHETIC_SPEC_KWARGS = dict(
  seed=0, num_classes=6, annotated_classes=4, videos_per_class=4, min_frames=24, max_frames=48
)
SYNTHETIC_FRAME_SIZE = 32
# The all-101-classes folder: 2 videos per class (groups 1 and 8: test and train in
# split 1), 3 frames of 32x24 each; the 24 UCF101-24 classes carry one tube each.
TINY_UCF101_GROUPS = (1, 8)
TINY_UCF101_FRAMES = 3
TINY_UCF101_SIZE = (24, 32)  # (height, width)


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
  """Ground truth (`synthetic.SyntheticDataset`) of a synthetic UCF-101 folder.

  `.root` is the folder: UCF-101/<Class>/*.avi, ucfTrainTestlist/, pyannot.pkl.
  """
  from stconsist_jax.data.synthetic import generator as synthetic

  spec = synthetic.SyntheticSpec(**SYNTHETIC_SPEC_KWARGS)
  return synthetic.generate(tmp_path_factory.mktemp('synthetic') / 'ucf101', spec)


def rendered_video(spec, path: str) -> tuple[np.ndarray, list[np.ndarray]]:
  """The RGB frames and per-actor boxes `generator.generate(..., spec)` drew for `path`.

  Plans the videos of the path's class as `generate` does (`plan_video`) and renders the
  one of that path with the same `synthetic_video.render`.
  """
  from stconsist_jax.data.synthetic import generator as synthetic
  from stconsist_jax.data.synthetic import synthetic_video

  names = [s.name for s in synthetic.class_styles(spec.num_classes)]
  ci = names.index(path.split('/')[0])
  plans = (
    synthetic.plan_video(spec, ci, vi, ci < spec.annotated_classes)
    for vi in range(spec.videos_per_class)
  )
  plan = next((p for p in plans if p.path == path), None)
  if plan is None:
    raise ValueError(f'{path!r} is not a video of this spec')
  return synthetic_video.render(plan, (spec.height, spec.width))


@pytest.fixture(scope='session')
def synthetic_tfds(synthetic_root, tmp_path_factory):
  """`synthetic_root` built with the TFDS builder, split 1, 32x32 frames.

  Fields: data_dir, config (the BuilderConfig), config_name, frame_size, split,
  builder_dir (for `tfds.builder_from_directory`), builder (ready to read), truth
  (the generator's ground truth: records with exact pixel boxes, splits, classes),
  manual_dir, num_classes.
  """
  from stconsist_jax.data.ucf101 import dataset_build

  data_dir = tmp_path_factory.mktemp('tfds')
  # In-process decoding: a worker pool's start-up would dominate such a tiny build.
  builder = dataset_build.build(
    synthetic_root.root, data_dir, split=1, frame_size=SYNTHETIC_FRAME_SIZE, num_workers=0
  )
  return types.SimpleNamespace(
    data_dir=data_dir,
    config=builder.builder_config,
    config_name=builder.builder_config.name,
    frame_size=SYNTHETIC_FRAME_SIZE,
    split=1,
    builder_dir=builder.data_dir,
    builder=builder,
    truth=synthetic_root,
    manual_dir=synthetic_root.root,
    num_classes=len(synthetic_root.class_names),
  )


def write_tiny_ucf101(root: pathlib.Path) -> dict:
  """Writes a folder of all 101 UCF-101 classes with tiny, very short videos.

  Each video is a flat class colour with a white box moving one pixel per frame; the
  videos of the UCF101-24 classes have that box as their one tube. Returns
  {path: VideoRecord} of every video (boxes in pixels of the 32x24 frame).
  """
  from stconsist_jax.data import records as records_lib
  from stconsist_jax.data.ucf101 import classes
  from stconsist_jax.data.ucf101 import split_lists
  from stconsist_jax.data.ucf101 import videos
  from stconsist_jax.data.ucf101 import annotations as ann
  from stconsist_jax.data.synthetic import generator as synthetic
  from stconsist_jax.data.synthetic import synthetic_video

  h, w = TINY_UCF101_SIZE
  records = {}
  for label, name in enumerate(classes.UCF101_CLASSES):
    for group in TINY_UCF101_GROUPS:
      path = synthetic.video_path(name, group, 1)
      frames = np.full((TINY_UCF101_FRAMES, h, w, 3), (label * 37 % 200, 90, 140), np.uint8)
      boxes = np.array([[4 + f, 5, 16 + f, 19] for f in range(TINY_UCF101_FRAMES)], np.float64)
      for f, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        frames[f, y1:y2, x1:x2] = 255
      synthetic_video.write_video(frames, root / 'UCF-101' / f'{path}.avi')
      tubes = ()
      if name in classes.UCF24_CLASSES:
        tubes = (
          records_lib.AnnotatedTube(
            classes.UCF24_CLASSES.index(name), 0, TINY_UCF101_FRAMES, boxes
          ),
        )
      records[path] = records_lib.VideoRecord(path, label, name, TINY_UCF101_FRAMES, tubes)
  list_dir = root / 'ucfTrainTestlist'
  split_lists.write_class_index(classes.UCF101_CLASSES, list_dir / 'classInd.txt')
  for split in (1, 2, 3):
    test = [p for p in records if videos.group_of(p) in range(7 * split - 6, 7 * split + 1)]
    train = [p for p in records if p not in set(test)]
    split_lists.write_split_lists(list_dir, split, train, test, classes.UCF101_CLASSES)
  ann.write_pyannot(records.values(), root / 'pyannot.pkl')
  return records


@pytest.fixture(scope='session')
def tiny_ucf101(tmp_path_factory):
  """A folder of all 101 classes (`write_tiny_ucf101`): fields root, records."""
  root = tmp_path_factory.mktemp('tiny_ucf101') / 'ucf101'
  return types.SimpleNamespace(root=root, records=write_tiny_ucf101(root))


# Your own videos: the CVAT build's stored frame size.
OWN_FRAME_SIZE = 32
# JHMDB-21's twin: 21 classes x 3 videos of 6-8 frames at 64x48 (width, height).
JHMDB_TWIN_KWARGS = dict(width=64, height=48, min_frames=6, max_frames=8)


@pytest.fixture(scope='session')
def cvat_build(tmp_path_factory):
  """The default own videos (96x64 and 64x80 .mp4, 12-16 frames, one video with two
  actors) and a corrupt .mp4 with a CVAT export of its own, built at 32x32 as the dataset
  'own' (half of each class held out for test).

  Fields: root (videos/, cvat/, boxes.csv), truth ({name: AnnotatedVideo} of the good
  videos), ready (the read inputs), builder, data_dir, frame_size.
  """
  from stconsist_jax.data.synthetic import own_videos
  from stconsist_jax.data.ucf101 import annotated_build

  root = tmp_path_factory.mktemp('own')
  truth = own_videos.generate(root)
  broken = own_videos.OwnVideo('broken_01', 96, 64, 12, ((0, 0, 12),))
  broken_truth = own_videos.truth_of(broken, [np.tile([10.0, 10.0, 30.0, 30.0], (12, 1))])
  (root / 'cvat' / 'broken_01.xml').write_text(
    own_videos.cvat_xml(broken_truth, own_videos.DEFAULT_CLASSES), encoding='utf-8'
  )
  (root / 'videos' / 'broken_01.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + b'\x07' * 300)
  ready = annotated_build.read_inputs(
    'cvat', root / 'cvat', root / 'videos', name='own', test_fraction=0.5, split_seed=0
  )
  data_dir = tmp_path_factory.mktemp('tfds')
  builder = annotated_build.build(ready, data_dir, frame_size=OWN_FRAME_SIZE, num_workers=0)
  return types.SimpleNamespace(
    root=root,
    truth=truth,
    ready=ready,
    builder=builder,
    data_dir=data_dir,
    frame_size=OWN_FRAME_SIZE,
  )


@pytest.fixture(scope='session')
def jhmdb_twin_dir(tmp_path_factory):
  """JHMDB-21's synthetic twin (`jhmdb_twin.JhmdbTwin`: root, gt, videos), every frame
  annotated, in the layout of the ACT / MOC release (JHMDB-GT.pkl, Frames/)."""
  from stconsist_jax.data.synthetic import jhmdb_twin

  spec = jhmdb_twin.JhmdbTwinSpec(**JHMDB_TWIN_KWARGS)
  return jhmdb_twin.generate(tmp_path_factory.mktemp('jhmdb') / 'JHMDB', spec)
