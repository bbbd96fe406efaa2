"""Any dataset end to end, in process: your own .mp4 videos of two sizes with a CVAT export
built, trained, evaluated and predicted, and JHMDB-21's twin trained and evaluated on each split.
"""

import json

import jax
import numpy as np
import pytest

from stconsist_jax.config import schema
from stconsist_jax.configs import jhmdb_r3d34
from stconsist_jax.configs import own_videos as own_videos_config
from stconsist_jax.data.ucf101 import annotated_build
from stconsist_jax.evaluation import runner
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import predict
from stconsist_jax.prediction import record_schema
from stconsist_jax.training import distributed
from stconsist_jax.training import train

SIZE = 32  # stored frames and model input, every run
T = 4  # clip frames: also the tubelet's K and the whole-video pass's clip spacing
OWN_CLASSES = ['wave', 'jump']  # own_videos.DEFAULT_CLASSES, in label order


def _tiny(config, data_dir, num_classes, steps=2):
  """The dataset's config with a tiny tubelet detector from scratch: the same clip, input
  and model shapes (but the class count) in every run, so each compiles once."""
  config.init_from = ''
  config.data.data_dir = str(data_dir)
  config.data.frame_size = config.data.image_size = SIZE
  config.data.num_frames = T
  config.data.max_actors = 2
  config.data.shuffle_buffer = 8
  config.model.num_classes = config.model.num_box_classes = num_classes
  config.model.update(
    depth=10,
    widen_factor=0.125,
    shortcut_type='A',
    conv1_t_size=3,
    no_max_pool=True,
    box_head='tubelet',
    tubelet_frames=0,
    tubelet_stride=8,
    tubelet_width=16,
    tubelet_top_n=2,
  )
  config.train.update(
    batch_size=2, num_steps=steps, checkpoint_every=steps, eval_every=0, log_every=steps
  )
  config.optimizer.warmup_steps = 1
  config.loss.rampup_steps = 1
  config.eval.update(evaluators=('tubelets',), batch_size=4, tube_frame_stride=T)
  config.eval.tubelets.min_length = 2  # the videos are 6 to 16 frames long
  # Two steps from scratch leave each class near its prior (21 classes: below ACT's 0.005).
  config.eval.tubelets.min_score = 0.0
  return config


def _one_device():
  return distributed.make_mesh(jax.devices()[:1])


def _train_and_evaluate(config, workdir):
  """launch.py's --mode=train_and_eval: train, then evaluate the last step (report.json)."""
  mesh = _one_device()
  train.train_and_evaluate(
    config, str(workdir), evaluate_fn=runner.make_evaluate_fn(str(workdir)), mesh=mesh
  )
  step = config.train.num_steps
  return json.loads((workdir / 'eval' / str(step) / 'report.json').read_text())


def _test_truth(truth, test_names):
  """(tubes, boxes, annotated frames, frames) of the test videos, counted from the
  generator's own videos."""
  videos = [truth[n] for n in test_names]
  tubes = sum(len(v.tubes) for v in videos)
  boxes = sum(t.end - t.start for v in videos for t in v.tubes)
  annotated = sum(len({f for t in v.tubes for f in range(t.start, t.end)}) for v in videos)
  return tubes, boxes, annotated, sum(v.num_frames for v in videos)


# --------------------------------------------------------------------------- own videos


@pytest.fixture(scope='module')
def own_run(cvat_build, tmp_path_factory):
  config = _tiny(own_videos_config.get_config(), cvat_build.data_dir, len(OWN_CLASSES))
  workdir = tmp_path_factory.mktemp('own_run') / 'mine'
  return config, workdir, _train_and_evaluate(config, workdir)


def test_own_videos_train_and_evaluate_in_their_own_classes_and_pixels(own_run, cvat_build):
  config, workdir, report = own_run
  assert config.data.name == 'own' and cvat_build.builder.info.features['label'].names == (
    OWN_CLASSES
  )
  test = sorted(n for n in cvat_build.ready.description.splits['split1'].test if n != 'broken_01')
  truth = cvat_build.truth
  # The test split holds one video of each size: scoring in each one's own pixels matters.
  assert {(truth[n].width, truth[n].height) for n in test} == {(96, 64), (64, 80)}
  tubes, boxes, annotated, _ = _test_truth(truth, test)
  counts = report['counts']
  assert counts['num_videos_linked'] == len(test)
  assert (counts['num_gt_tubes'], counts['num_gt_boxes']) == (tubes, boxes)
  assert counts['num_frames_scored'] == annotated
  assert report['frame_map_frames'] == 'annotated'
  for key in ('frame_map', 'video_map@0.5'):
    assert np.isfinite(report[key]) and 0.0 <= report[key] <= 1.0, key
  assert counts['num_tubes'] > 0  # tubes were linked and scored
  assert list(report['per_class_ap']) == OWN_CLASSES
  assert list(report['tubes']['per_class_video_ap@0.5']) == OWN_CLASSES
  assert report['architecture'].startswith('R3D-10') and ', 2 classes,' in report['architecture']
  assert report['protocol']['split'].startswith('own split 1 test videos')
  assert 'UCF' not in json.dumps(report['protocol'])
  metrics = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [m['step'] for m in metrics if 'loss' in m] == [1, 2]
  assert np.isfinite([m['loss'] for m in metrics if 'loss' in m]).all()
  # UCF101-24's 24 classes are refused before any compute, naming the dataset's 2.
  ucf = config.copy_and_resolve_references()
  ucf.model.num_classes = ucf.model.num_box_classes = 24
  with pytest.raises(schema.ConfigError, match="the 2 labels that data 'own' yields"):
    train.check_num_classes(ucf)
  with pytest.raises(schema.ConfigError, match="the 2 annotated classes of data 'own'"):
    train.check_num_box_classes(ucf)


def test_own_videos_predict_each_size_with_their_class_names(
  own_run, cvat_build, tmp_path, monkeypatch
):
  # Two steps from scratch leave every actor's foreground probability near its 0.01 prior.
  monkeypatch.setattr(frame_predictor, 'ACTOR_MIN_SCORE', 0.0)
  _, workdir, _ = own_run
  loaded = predict.load(workdir, 'latest', batch_size=4, mesh=_one_device())
  assert loaded.class_names == OWN_CLASSES and loaded.box_class_names == OWN_CLASSES
  for name in ('garden_01', 'garden_02'):  # 96x64 and 64x80
    video = cvat_build.truth[name]
    result = predict.predict_video(
      loaded,
      cvat_build.root / 'videos' / f'{name}.mp4',
      tmp_path,
      write_annotated=False,
      every=T,
      progress=False,
    )
    record = json.loads(result.json_path.read_text())
    record_schema.validate_prediction(record)
    assert record['num_frames'] == video.num_frames == len(record['frames'])
    assert record['size'] == [video.height, video.width]
    assert record['classes'] == OWN_CLASSES and record['box_classes'] == OWN_CLASSES
    assert all(f['predicted'] and f['actors'] for f in record['frames'])
    for frame in record['frames']:
      for actor in frame['actors']:
        x1, y1, x2, y2 = actor['box']
        assert 0 <= x1 <= x2 <= video.width and 0 <= y1 <= y2 <= video.height
        assert actor['class'] in OWN_CLASSES
    assert record['tubes'] and {t['class'] for t in record['tubes']} <= set(OWN_CLASSES)


# --------------------------------------------------------------------------- JHMDB-21


def _count_frames(root, names):
  """Frames of these videos, counted as the PNG files in their Frames/ folders."""
  return sum(len(list((root / 'Frames' / n).glob('*.png'))) for n in names)


@pytest.mark.parametrize('split', [1, 2, 3])
def test_jhmdb_twin_trains_and_evaluates_every_frame_of_each_split(split, jhmdb_twin_dir, tmp_path):
  ready = annotated_build.jhmdb_inputs(jhmdb_twin_dir.root)
  annotated_build.build(ready, tmp_path / 'tfds', split=split, frame_size=SIZE, num_workers=0)
  config = jhmdb_r3d34.get_config()
  config.data.split = split
  config = _tiny(config, tmp_path / 'tfds', 21)
  assert config.eval.frame_ap_frames == 'all'
  report = _train_and_evaluate(config, tmp_path / 'run')
  test = jhmdb_twin_dir.gt['test_videos'][split - 1]
  assert report['protocol']['split'].startswith(f'jhmdb split {split} test videos')
  assert report['frame_map_frames'] == 'all'
  assert 'frames scored: every frame of the test videos' in report['protocol']['frame_map']
  frames = _count_frames(jhmdb_twin_dir.root, test)
  tubes, boxes, _, num_frames = _test_truth(jhmdb_twin_dir.videos, test)
  assert frames == num_frames
  counts = report['counts']
  assert counts['num_frames_scored'] == frames
  assert (counts['num_videos_linked'], counts['num_gt_tubes']) == (len(test), tubes)
  assert counts['num_gt_boxes'] == boxes == frames  # JHMDB: one actor on every frame
  for key in ('frame_map', 'video_map@0.5'):
    assert np.isfinite(report[key]) and 0.0 <= report[key] <= 1.0, key
  assert counts['num_tubes'] > 0  # tubes were linked and scored
  assert list(report['per_class_ap']) == jhmdb_twin_dir.gt['labels']  # JHMDB-GT.pkl's 21
  assert ', 21 classes,' in report['architecture']
  assert 'UCF' not in json.dumps(report['protocol'])
