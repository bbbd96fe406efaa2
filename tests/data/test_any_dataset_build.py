"""Builds of any dataset description: CVAT-annotated .mp4 videos of mixed sizes read back by the
training and evaluation streams in each video's own pixels, JHMDB-21's synthetic twin with its
published classes and splits, missing and corrupt videos counted, the command line, the configs.
"""

import collections
import importlib
import importlib.util
import io
import pickle
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from stconsist_jax.config import schema
from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import jhmdb
from stconsist_jax.data.datasets import split_choice
from stconsist_jax.data.pipeline import eval_streams
from stconsist_jax.data.pipeline import train_stream
from stconsist_jax.data.ucf101 import annotated_build
from stconsist_jax.data.ucf101 import tfds_builder
from stconsist_jax.data.ucf101 import video_decode
from stconsist_jax.evaluation import description as eval_description

SIZE = 32  # stored frame size (the cvat_build fixture's)
T = 4  # clip frames
# JHMDB-21's classes in label order, copied from wei-tim/YOWO data/jhmdb21.names (commit
# 183bbad5eb64773519c7806ed74883ff21f9a929): the `labels` of ACT's JHMDB-GT.pkl.
YOWO_JHMDB21_NAMES = """brush_hair catch clap climb_stairs golf jump kick_ball pick pour pullup
push run shoot_ball shoot_bow shoot_gun sit stand swing_baseball throw walk wave""".split()


def _read_all(builder, split):
  return {
    ex['name'].decode(): ex
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  }


def _cvat_config(data_dir, name='own'):
  config = ml_collections.ConfigDict()
  config.seed = 1
  config.data = ml_collections.ConfigDict(
    dict(
      name=name,
      data_dir=str(data_dir),
      split=1,
      frame_size=SIZE,
      image_size=SIZE,
      num_frames=T,
      frame_stride=1,
      classes='all',
      box_label_fraction=1.0,
      labeled_video_fraction=1.0,
      labeled_videos='',
      labeled_per_batch=0,
      scale_augment=(1.0, 1.0),
      shuffle_buffer=8,
      host_flip=False,
    )
  )
  config.train = ml_collections.ConfigDict(dict(batch_size=4))
  config.eval = ml_collections.ConfigDict(
    dict(clips_per_video=2, frame_stride=1, batch_size=4, max_videos=0, tube_frame_stride=1)
  )
  return config


def test_cvat_videos_of_two_sizes_are_stored_in_their_own_pixels(cvat_build):
  b, truth = cvat_build.builder, cvat_build.truth
  assert b.info.features['label'].names == ['wave', 'jump']
  assert list(b.info.metadata['annotated_class_names']) == ['wave', 'jump']
  assert (b.info.metadata['dataset'], b.info.metadata['split']) == ('own', 'split1')
  got = {**_read_all(b, 'train'), **_read_all(b, 'test')}
  assert set(got) == set(truth)  # every video but the corrupt one
  # Each video's class is that of most of its boxes: yard_01 has 14 'jump' and 10 'wave'.
  classes = {'garden_01': 0, 'garden_02': 1, 'yard_01': 1, 'yard_02': 0}
  for name, ex in got.items():
    video = truth[name]
    assert tuple(ex['original_size']) == (video.height, video.width)
    assert ex['frames'].shape == (video.num_frames, SIZE, SIZE, 3)
    assert ex['label'] == classes[name] and bool(ex['annotated'])
    np.testing.assert_array_equal(ex['tube_labels'], [t.label for t in video.tubes])
    scale = [video.width, video.height, video.width, video.height]
    for k, tube in enumerate(video.tubes):
      present = np.zeros(video.num_frames, bool)
      present[tube.start : tube.end] = True
      np.testing.assert_array_equal(ex['tube_present'][k], present)
      np.testing.assert_allclose(
        ex['tube_boxes'][k, tube.start : tube.end] * scale, tube.boxes, atol=1e-3
      )
  # Half of each class held out (split_choice.by_fraction): 1.5 -> 2 of the 3 'wave'
  # videos (broken_01 is one), 1 of the 2 'jump' ones.
  split = cvat_build.ready.description.splits['split1']
  held = collections.Counter({**classes, 'broken_01': 0}[n] for n in split.test)
  assert held == {0: 2, 1: 1} and len(split.train) == 2


def test_corrupt_video_is_skipped_and_counted(cvat_build):
  report = tfds_builder.read_report(cvat_build.builder)
  skipped = [s for v in report['skipped'].values() for s in v]
  assert [(s['video'], s['kind']) for s in skipped] == [('broken_01', 'video_unreadable')]
  assert report['videos_skipped_by_kind'] == {'video_unreadable': 1}
  assert sum(report['videos_written'].values()) == 4
  assert report['annotation_problems']['bad_records'] == {}
  assert report['source']['options']['format'] == 'cvat'


def _train_box_targets(truth, names):
  """Every box target a clip of the training videos can have: tube 0's corners averaged
  over the window's two central frames (positions 1 and 2 of 4), normalized, as xywh."""
  targets = []
  for name in names:
    video = truth[name]
    tube = video.tubes[0]
    scale = np.array([video.width, video.height] * 2, np.float64)
    for start in range(video.num_frames - T + 1):
      frames = [f for f in (start + 1, start + 2) if tube.start <= f < tube.end]
      if frames:
        x1, y1, x2, y2 = tube.boxes[np.array(frames) - tube.start].mean(0) / scale
        targets.append([x1, y1, x2 - x1, y2 - y1])
  return np.array(targets)


def test_training_batch_and_eval_truth_follow_the_annotation(cvat_build):
  config = _cvat_config(cvat_build.data_dir)
  truth = cvat_build.truth
  batch = next(train_stream.train_iterator(config))
  assert batch['clip'].shape == (4, T, SIZE, SIZE, 3)
  train_names = cvat_build.builder.info.splits['train'].num_examples
  assert train_names == 2
  split = cvat_build.ready.description.splits['split1']
  targets = _train_box_targets(truth, [n for n in split.train if n in truth])
  assert batch['has_box'].all()  # tube 0 covers the central frames of every window
  for box in batch['box']:
    assert np.abs(targets - box).max(axis=1).min() < 1e-5
  # The evaluation's ground truth: each test video's tubes in its own pixels.
  videos = eval_streams.video_ground_truth(config)
  assert sorted(v.name for v in videos) == sorted(n for n in split.test if n in truth)
  for v in videos:
    video = truth[v.name]
    assert v.original_size == (video.height, video.width)
    scale = [video.width, video.height, video.width, video.height]
    for k, tube in enumerate(video.tubes):
      np.testing.assert_allclose(
        v.tube_boxes[k, tube.start : tube.end] * scale, tube.boxes, atol=1e-3
      )
  frames, _ = eval_streams.make_eval_frame_dataset(config)
  names = {v.video_id: v.name for v in videos}
  for b in frames.as_numpy_iterator():
    for i in np.flatnonzero(b['valid']):
      video = truth[names[int(b['video_id'][i])]]
      assert tuple(b['original_size'][i]) == (video.height, video.width)


def test_csv_of_the_same_videos_builds_from_the_command_line(cvat_build, repo_root, tmp_path):
  spec = importlib.util.spec_from_file_location(
    'build_tool', repo_root / 'tools' / 'build_dataset.py'
  )
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  out, err = io.StringIO(), io.StringIO()
  rc = tool.run_described(
    str(tmp_path / 'tfds'),
    annotations=str(cvat_build.root / 'boxes.csv'),
    fmt='csv',
    videos=str(cvat_build.root / 'videos'),
    name='own_csv',
    frame_size=16,
    num_workers=0,
    out=out,
    err=err,
  )
  assert rc == 0, err.getvalue()
  text = out.getvalue()
  assert 'skipped by kind: video_unreadable 1' in text  # broken_01.mp4: no CSV rows, unreadable
  assert '--config.data.name=own_csv' in text and '--config.model.num_classes=2' in text
  b = tfds.builder_from_directory(str(tmp_path / 'tfds' / 'own_csv' / 'split1_16' / '1.0.0'))
  got = {**_read_all(b, 'train'), **_read_all(b, 'test')}
  truth = cvat_build.truth
  assert set(got) == set(truth)
  for name, ex in got.items():
    video = truth[name]
    scale = [video.width, video.height, video.width, video.height]
    # The CSV reader orders a video's tubes by start frame.
    tubes = sorted(video.tubes, key=lambda t: t.start)
    for k, tube in enumerate(tubes):
      np.testing.assert_allclose(
        ex['tube_boxes'][k, tube.start : tube.end] * scale, tube.boxes, atol=1e-3
      )
  rc = tool.run_described(str(tmp_path / 'x'), fmt='csv', out=out, err=err)
  assert rc == 2 and err.getvalue().strip() == (
    'error: your own videos need --annotations, --videos (docs/own_videos.md)'
  )


# --------------------------------------------------------------------------- JHMDB-21


def test_jhmdb_classes_and_splits_are_as_published(jhmdb_twin_dir):
  assert jhmdb.CLASSES == tuple(YOWO_JHMDB21_NAMES) and len(jhmdb.CLASSES) == 21
  with open(jhmdb_twin_dir.root / 'JHMDB-GT.pkl', 'rb') as f:
    gt = pickle.load(f)
  assert gt['labels'] == YOWO_JHMDB21_NAMES
  description, report = jhmdb.read_jhmdb(jhmdb_twin_dir.root / 'JHMDB-GT.pkl')
  assert report.ok and description.class_names == tuple(YOWO_JHMDB21_NAMES)
  assert list(description.splits) == ['split1', 'split2', 'split3']
  everything = set(gt['nframes'])
  for split in description.splits.values():
    # As MOC asserts: each split's train and test lists together are all the videos.
    assert set(split.train) | set(split.test) == everything
    assert not set(split.train) & set(split.test)
  for name, video in description.videos.items():
    assert (video.width, video.height) == (64, 48)
    assert [(t.start, t.end) for t in video.tubes] == [(0, video.num_frames)]  # every frame
    assert video.tubes[0].label == YOWO_JHMDB21_NAMES.index(name.split('/')[0])


def test_jhmdb_pickle_of_other_classes_is_refused_in_one_line(jhmdb_twin_dir, tmp_path):
  with open(jhmdb_twin_dir.root / 'JHMDB-GT.pkl', 'rb') as f:
    gt = pickle.load(f)
  gt['labels'] = sorted(gt['labels'], reverse=True)
  with open(tmp_path / 'JHMDB-GT.pkl', 'wb') as f:
    pickle.dump(gt, f)
  with pytest.raises(records_lib.DataFileError, match="not JHMDB-21's 21 classes") as e:
    jhmdb.read_jhmdb(tmp_path / 'JHMDB-GT.pkl')
  assert '\n' not in str(e.value)


def test_jhmdb_twin_builds_split_2_counting_missing_and_corrupt_folders(jhmdb_twin_dir, tmp_path):
  root = tmp_path / 'JHMDB'
  shutil.copytree(jhmdb_twin_dir.root, root)
  gt = jhmdb_twin_dir.gt
  train2, test2 = gt['train_videos'][1], gt['test_videos'][1]
  missing, corrupt = train2[0], test2[0]
  shutil.rmtree(root / 'Frames' / missing)
  (root / 'Frames' / corrupt / '00002.png').write_bytes(b'not a png')
  ready = annotated_build.jhmdb_inputs(root)
  b = annotated_build.build(ready, tmp_path / 'tfds', split=2, frame_size=16, num_workers=0)
  assert b.data_dir.endswith('jhmdb/split2_16/1.0.0')
  assert (b.info.metadata['dataset'], b.info.metadata['split']) == ('jhmdb', 'split2')
  report = tfds_builder.read_report(b)
  assert report['videos_skipped_by_kind'] == {'video_missing': 1, 'video_unreadable': 1}
  kinds = {s['video']: s['kind'] for v in report['skipped'].values() for s in v}
  assert kinds == {missing: 'video_missing', corrupt: 'video_unreadable'}
  train, test = _read_all(b, 'train'), _read_all(b, 'test')
  assert set(train) == set(train2) - {missing} and set(test) == set(test2) - {corrupt}
  for name, ex in {**train, **test}.items():
    video = jhmdb_twin_dir.videos[name]
    assert tuple(ex['original_size']) == (48, 64) and ex['label'] == video.tubes[0].label
    assert ex['tube_present'].all()
    np.testing.assert_allclose(
      ex['tube_boxes'][0] * [64, 48, 64, 48], video.tubes[0].boxes, atol=1e-3
    )


# --------------------------------------------------------------------------- small parts


def test_frame_folder_numbering(tmp_path):
  for name in ('00001.png', '00002.png', '00004.png', 'notes.txt'):
    (tmp_path / name).write_bytes(b'')
  assert video_decode.numbered_frames(str(tmp_path)).endswith('lacks frame 3 of 1..4')
  (tmp_path / '3.jpg').write_bytes(b'')
  got = video_decode.numbered_frames(str(tmp_path))
  assert [p.rsplit('/', 1)[1] for p in got] == ['00001.png', '00002.png', '3.jpg', '00004.png']


def test_split_by_fraction_holds_out_a_share_of_each_class():
  classes = {f'a{i}': 0 for i in range(5)} | {f'b{i}': 1 for i in range(2)} | {'c0': 2}
  train, test = split_choice.by_fraction(classes, 0.2, seed=3)
  held = collections.Counter(classes[n] for n in test)
  # round(0.2 * 5) = 1 of class 0, at least 1 of the 2 of class 1, none of the lone class 2.
  assert held == {0: 1, 1: 1} and sorted(train + test) == sorted(classes)
  assert split_choice.by_fraction(classes, 0.2, seed=3) == (train, test)


def test_split_lists_name_known_videos(tmp_path):
  (tmp_path / 'train.txt').write_text('# mine\nclip1.mp4\nclip2 walk\n\n')
  train, test = split_choice.from_lists({'clip1', 'clip2', 'clip3'}, tmp_path / 'train.txt', None)
  assert (train, test) == (['clip1', 'clip2'], ['clip3'])
  (tmp_path / 'bad.txt').write_text('clip9\n')
  with pytest.raises(records_lib.DataFileError, match=r"bad.txt line 1: video 'clip9'"):
    split_choice.from_lists({'clip1'}, None, tmp_path / 'bad.txt')


@pytest.mark.parametrize('name', ['jhmdb_r3d34', 'own_videos'])
def test_dataset_configs_are_valid(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  schema.validate(config, num_devices=8)
  assert config.init_from and config.model.depth == 34 and 'tubes' in config.eval.evaluators
  if name == 'jhmdb_r3d34':
    assert (config.data.name, config.model.num_classes) == ('jhmdb', 21)
    assert config.eval.frame_ap_frames == 'all'  # ACT's JHMDB frame-mAP: every frame
    config.data.split = 3
    text = eval_description.protocol_of(config)['split']
    assert text.startswith('jhmdb split 3 test videos')


def test_collapsed_pixel_boxes_still_link():
  """An untrained model's boxes can all lie below one pixel after conversion; the tube
  evaluator says they are pixels, so linking takes them (min_length 15 frames)."""
  from stconsist_jax.metrics import tubes

  boxes = np.zeros((20, 1, 4))
  boxes[..., 2:] = 0.5
  scores = np.full((20, 1, 1), 0.9)
  with pytest.raises(ValueError, match='look like normalized boxes'):
    tubes.link_video(np.arange(20), boxes, scores)
  (tube,) = tubes.link_video(np.arange(20), boxes, scores, in_pixels=True)
  np.testing.assert_array_equal(tube.frames, np.arange(20))
