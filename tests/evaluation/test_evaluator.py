"""The evaluator interface: names from the config, summary keys, the best metric's check,
and the report built from what evaluators yield (no model: hand-made fields)."""

import types

import ml_collections
import numpy as np
import pytest

from stconsist_jax.config import schema
from stconsist_jax.configs import default
from stconsist_jax.evaluation import evaluator
from stconsist_jax.evaluation import report as report_lib
from stconsist_jax.evaluation.evaluators import tubes as tubes_evaluator


def _config(**eval_fields):
  config = default.get_config()
  for key, value in eval_fields.items():
    config.eval[key] = value
  return config


def test_evaluators_come_from_the_config_in_order():
  names = [e.name for e in evaluator.from_config(_config(evaluators=('clips', 'frames')))]
  assert names == ['clips', 'frames']
  assert evaluator.summary_keys(evaluator.from_config(_config())) == (
    'clip_accuracy',
    'clip_top5',
    'video_accuracy',
    'mean_iou',
    'frame_map',
    'video_map@0.5',
  )


@pytest.mark.parametrize('name', ['boxes', 'os.path', '../clips'])
def test_an_unknown_evaluator_is_one_config_error(name):
  with pytest.raises(schema.ConfigError, match='eval.evaluators'):
    evaluator.evaluator_class(name)


def test_best_metric_must_be_a_summary_key():
  evaluator.check_best_metric(_config(best_metric='frame_map'))
  with pytest.raises(schema.ConfigError, match=r"eval.best_metric.*'video_map@0.5'"):
    evaluator.check_best_metric(_config(best_metric='video_map@0.5', evaluators=('clips',)))


@pytest.mark.parametrize(
  'evaluators, frames, pattern',
  [
    (('clips', 'tubes', 'frames'), 'annotated', "'tubes' needs 'frames' before it"),
    (('clips', 'tubes'), 'annotated', "'tubes' needs 'frames' before it"),
    (('clips', 'clips'), 'annotated', 'twice'),
    ((), 'annotated', 'non-empty'),
    (('clips', 'frames'), 'all', "needs 'tubes'"),
  ],
)
def test_evaluator_lists_the_schema_refuses(evaluators, frames, pattern):
  config = _config(evaluators=evaluators, frame_ap_frames=frames)
  with pytest.raises(schema.ConfigError, match=pattern):
    schema.validate(config)


def test_report_is_built_from_the_yielded_fields():
  config = _config(evaluators=('clips',))
  restored = types.SimpleNamespace(step=7, source_config=None, classification_only=False)
  fields = {
    'clip_accuracy': 0.5,
    'mean_iou': float('nan'),
    'num_clips': 4,
    'timing': {'clips_seconds': 1.23456},
  }
  report = report_lib.build_report(config, restored, fields, run_name='run')
  assert report['clip_accuracy'] == 0.5 and report['mean_iou'] is None
  assert report['counts'] == {'num_clips': 4} and 'num_clips' not in report
  assert report['timing'] == {'clips_seconds': 1.235}
  assert report['checkpoint_step'] == 7 and report['run'] == 'run'
  assert 'UCF-101 split 1 test list' in report['protocol']['split']


def test_tubes_every_frame_pass_replaces_the_headline_frame_map():
  video = {
    'video_map@0.2': 0.9,
    'video_map@0.5': 0.8,
    'video_map@0.75': 0.1,
    'video_map@0.5:0.95': 0.3,
    'tube_video_accuracy': 1.0,
    'num_tubes': 3,
    'all_frames': {
      'frame_map': 0.4,
      'frame_map_protocol': 'act',
      'frame_map_by_protocol': {'act': 0.4, 'voc': 0.45},
      'per_class_ap': {'a': 0.4},
      'num_frames_scored': 99,
    },
  }
  earlier = {'frame_map_by_protocol': {'act': 0.6, 'voc': 0.65}}
  fields = tubes_evaluator.report_fields(video, earlier)
  assert fields['frame_map'] == 0.4 and fields['frame_map_frames'] == 'all'
  assert fields['frame_map_annotated_frames'] == {'act': 0.6, 'voc': 0.65}
  assert fields['tubes'] == {'tube_video_accuracy': 1.0}
  assert fields['num_tubes'] == 3 and 'num_frames_scored' not in fields
  assert np.isclose(fields['video_map@0.5'], 0.8)


def test_configs_saved_before_the_evaluators_load_as_their_list(tmp_path):
  from stconsist_jax.config import config_file

  for video_map, expected in ((True, ('clips', 'frames', 'tubes')), (False, ('clips', 'frames'))):
    raw = default.get_config().to_dict()
    del raw['eval']['evaluators']
    raw['eval']['video_map'] = video_map
    config_file.save(ml_collections.ConfigDict(raw), tmp_path)
    loaded = config_file.load(tmp_path)
    assert loaded.eval.evaluators == expected and 'video_map' not in loaded.eval
    schema.validate(loaded)
