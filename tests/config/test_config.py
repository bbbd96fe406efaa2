"""Tests of config validation: every shipped config passes; bad values fail naming the key.

One check runs launch.py as a subprocess to see the command-line error.
"""

import importlib
import subprocess
import sys

import ml_collections
import pytest

from stconsist_jax.config import schema

from stconsist_jax.config import config_file
from stconsist_jax.metrics import tubelets

CONFIGS = ('default', 'model1', 'model2', 'model1_fixed', 'model2_fixed', 'finetune_cls', 'demo')


def _config(name='default'):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_shipped_configs_are_valid(name):
  config = _config(name)
  schema.validate(config, num_devices=8)
  assert config.data.classes in ('all', 'ucf24')


def test_study_settings():
  assert _config('model1').model.box_hidden == (16,)
  assert _config('model2').model.box_hidden == (256, 64, 8)
  fixed = _config('model2_fixed').train.stages
  assert fixed[0]['freeze_backbone'] and fixed[0]['loss_weights']['loc'] == 1.0
  assert fixed[0]['loss_weights']['cls'] == 0.0 and fixed[1]['num_steps'] == -1
  assert _config('finetune_cls').loss.loc_weight == 0.0


@pytest.mark.parametrize(
  'key, value, devices, pattern',
  [
    ('train.batch_size', 12, 8, 'train.batch_size.*divisible by the device count 8'),
    ('optimizer.name', 'lamb', None, "optimizer.name.*'sgd', 'adamw'"),
    ('optimizer.schedule', 'linear', None, 'optimizer.schedule'),
    ('model.box_head', 'conv', None, 'model.box_head'),
    ('model.normalization', 'kinetics2017', None, 'model.normalization'),
    ('data.box_label_fraction', 1.5, None, r'data.box_label_fraction.*<= 1'),
    ('data.box_label_fraction', -0.1, None, r'data.box_label_fraction.*>= 0'),
    ('model.num_classes', 0, None, r'model.num_classes.*>= 1'),
    ('data.classes', 'ucf101', None, r"data.classes.*'all', 'ucf24'"),
    ('optimizer.lr', '0.1', None, r"optimizer.lr.*must be int or float, got '0.1'"),
    ('loss.con_cls', 'kl', None, 'loss.con_cls'),
    ('data.scale_augment', (0.9, 0.5), None, 'data.scale_augment'),
    ('data.labeled_video_fraction', 1.2, None, r'data.labeled_video_fraction.*<= 1'),
    ('data.labeled_videos', 0, None, r'data.labeled_videos.*must be str'),
    ('loss.teacher_ema', 1.0, None, r'loss.teacher_ema.*\[0, 1\)'),
    ('loss.teacher_ema', -0.5, None, r'loss.teacher_ema.*>= 0'),
    ('loss.focal_gamma', -1.0, None, r'loss.focal_gamma.*>= 0'),
    ('loss.con_dense_box_weight', -1.0, None, r'loss.con_dense_box_weight.*>= 0'),
    ('loss.tubelet_presence_weight', -1.0, None, r'loss.tubelet_presence_weight.*>= 0'),
    ('data.max_actors', -1, None, r'data.max_actors.*>= 0'),
    ('data.max_actors', 2.0, None, r'data.max_actors.*must be int'),
  ],
)
def test_bad_values_name_the_key(key, value, devices, pattern):
  # Built from a plain dict, as a config read back from JSON would be (no type locks).
  raw = _config().to_dict()
  group, field = key.split('.')
  raw[group][field] = value
  with pytest.raises(schema.ConfigError, match=pattern):
    schema.validate(ml_collections.ConfigDict(raw), num_devices=devices)


@pytest.mark.parametrize(
  'field, value, pattern',
  [
    ('num_box_classes', 0, r'model.num_box_classes.*>= 1'),
    ('tubelet_frames', 17, r'model.tubelet_frames.*<= 16'),
    ('tubelet_frames', -1, r'model.tubelet_frames.*>= 0'),
    ('tubelet_stride', 32, r'model.tubelet_stride.*\[4, 8, 16\]'),
    ('tubelet_width', 0, r'model.tubelet_width.*>= 1'),
    ('tubelet_top_n', 0, r'model.tubelet_top_n.*>= 1'),
    ('tubelet_nms', 0.0, r'model.tubelet_nms.*> 0'),
    ('tubelet_nms', 1.5, r'model.tubelet_nms.*<= 1'),
    ('tubelet_width', 2.5, r'model.tubelet_width.*must be int'),
    ('tubelet_presence', 1, r'model.tubelet_presence.*must be bool'),
    ('tubelet_presence_threshold', 0.0, r'model.tubelet_presence_threshold.*> 0'),
    ('tubelet_presence_threshold', 1.5, r'model.tubelet_presence_threshold.*<= 1'),
  ],
)
def test_bad_tubelet_values_name_the_key(field, value, pattern):
  raw = _config().to_dict()
  raw['model']['box_head'] = 'tubelet'
  schema.validate(ml_collections.ConfigDict(raw))
  raw['model'][field] = value
  with pytest.raises(schema.ConfigError, match=pattern):
    schema.validate(ml_collections.ConfigDict(raw))


def test_tubelet_keys_only_read_by_the_tubelet_head():
  """A config written before the tubelet head (no such keys) stays valid for the others."""
  raw = _config().to_dict()
  for key in [k for k in raw['model'] if k.startswith('tubelet_') or k == 'num_box_classes']:
    del raw['model'][key]
  schema.validate(ml_collections.ConfigDict(raw))
  raw['model']['box_head'] = 'tubelet'
  with pytest.raises(schema.ConfigError, match='model.num_box_classes.*missing'):
    schema.validate(ml_collections.ConfigDict(raw))


@pytest.mark.parametrize(
  'field, value, pattern',
  [
    ('max_gap', 0, r'eval.tubes.max_gap.*>= 1'),
    ('iou_threshold', 1.5, r'eval.tubes.iou_threshold.*<= 1'),
  ],
)
def test_bad_linking_values_name_the_key(field, value, pattern):
  raw = _config().to_dict()
  raw['eval']['tubes'][field] = value
  with pytest.raises(schema.ConfigError, match=pattern):
    schema.validate(ml_collections.ConfigDict(raw))


def test_linking_defaults_are_acts():
  assert _config().eval.tubes.to_dict() == dict(
    iou_threshold=0.5, max_gap=1, min_length=15, min_score=0.005, nms_threshold=0.3, top_k=10
  )


def test_video_label_list_and_fraction_are_exclusive():
  config = _config()
  config.data.labeled_videos = 'data/label_lists/ucf24_split1_labeled_10.txt'
  schema.validate(config)
  config.data.labeled_video_fraction = 0.5
  with pytest.raises(schema.ConfigError, match='labeled_videos.*labeled_video_fraction'):
    schema.validate(config)


def test_stage_weights_accept_the_tubelet_terms():
  config = _config()
  config.train.stages = (
    {'num_steps': -1, 'loss_weights': {'con_dense_cls': 0.0, 'tubelet_giou': 2.0}},
  )
  schema.validate(config)
  config.train.stages = ({'num_steps': -1, 'loss_weights': {'tubelet_presence': 2.0}},)
  schema.validate(config)
  config.train.stages = ({'num_steps': -1, 'loss_weights': {'con_dense': 0.0}},)
  with pytest.raises(schema.ConfigError, match=r"unknown term 'con_dense'.*'con_dense_box'"):
    schema.validate(config)


def test_bad_stages_name_the_stage():
  config = _config()
  config.train.stages = ({'num_steps': 10, 'freeze_backbone': True, 'loss_weight': {}},)
  with pytest.raises(schema.ConfigError, match=r'train.stages\[0\].*loss_weight'):
    schema.validate(config)
  config.train.stages = ({'num_steps': -1}, {'num_steps': 5})
  with pytest.raises(schema.ConfigError, match=r'only the last stage'):
    schema.validate(config)
  config.train.stages = ({'num_steps': -1, 'freeze_backbone': 1},)
  with pytest.raises(schema.ConfigError, match=r'train.stages\[0\].freeze_backbone must be bool'):
    schema.validate(config)


@pytest.mark.parametrize(
  'field, value, pattern',
  [
    ('frame_weighting', 'gaussian', r"eval.tubelets.frame_weighting.*'uniform', 'triangular'"),
    ('overlap_weight', -0.5, r'eval.tubelets.overlap_weight.*>= 0'),
  ],
)
def test_bad_tubelet_linking_values_name_the_key(field, value, pattern):
  raw = _config().to_dict()
  raw['eval']['tubelets'][field] = value
  with pytest.raises(schema.ConfigError, match=pattern):
    schema.validate(ml_collections.ConfigDict(raw))
  assert schema.TUBELET_FRAME_WEIGHTINGS == tubelets.FRAME_WEIGHTINGS


def test_config_json_round_trip(tmp_path):
  config = _config('model2_fixed')
  config_file.save(config, tmp_path)
  loaded = config_file.load(tmp_path)
  assert loaded.train.stages[0]['num_steps'] == config.train.stages[0]['num_steps']
  assert loaded.model.box_hidden == (256, 64, 8)
  schema.validate(loaded)


def test_a_saved_config_without_later_keys_reads_as_it_trained(tmp_path):
  config = _config()
  raw = config.to_dict()
  del raw['data']['max_actors']  # saved before these keys existed
  del raw['model']['tubelet_presence'], raw['model']['tubelet_presence_threshold']
  del raw['model']['tubelet_finer_stage']
  del raw['loss']['tubelet_presence_weight']
  del raw['eval']['tubelets']['overlap_weight'], raw['eval']['tubelets']['frame_weighting']
  config_file.save(ml_collections.ConfigDict(raw), tmp_path)
  loaded = config_file.load(tmp_path)
  assert loaded.data.max_actors == 0
  assert loaded.model.tubelet_presence is False
  assert loaded.model.tubelet_finer_stage is False
  assert loaded.eval.tubelets.overlap_weight == 0.0
  assert loaded.eval.tubelets.frame_weighting == 'uniform'
  schema.validate(loaded)
  config.data.max_actors = 0
  # A resume of such a run with today's config sees no difference.
  assert config_file.config_differences(loaded, config) == []


@pytest.mark.parametrize(
  'override, message',
  [
    ('--config.optimizer.lrr=0.1', "config key 'optimizer.lrr' does not exist"),
    ('--config.optimizer.lr=fast', 'config.optimizer.lr'),
    ('--config.optimizer.name=lamb', "config key 'optimizer.name'"),
  ],
)
def test_launch_rejects_bad_overrides_before_compute(repo_root, tmp_path, override, message):
  proc = subprocess.run(
    [
      sys.executable,
      str(repo_root / 'launch.py'),
      '--config=configs/demo.py',
      f'--workdir={tmp_path}',
      override,
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert _lines_with(message, proc.stderr) == 1, 'the error must be printed once'
  assert not (tmp_path / 'checkpoints').exists()


def _lines_with(text, output):
  return sum(text in line for line in output.splitlines())


@pytest.mark.parametrize(
  'args, message',
  [
    (('--mode=eval',), 'does not exist'),
    (('--mode=train', '--config.data.data_dir=/nonexistent/tfds'), 'not found'),
  ],
)
def test_launch_reports_missing_workdir_or_dataset_in_one_line(repo_root, tmp_path, args, message):
  proc = subprocess.run(
    [
      sys.executable,
      str(repo_root / 'launch.py'),
      '--config=configs/demo.py',
      f'--workdir={tmp_path / "missing"}',
      *args,
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'error:' in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert _lines_with(message, proc.stderr) == 1, proc.stderr[-2000:]


def test_presence_loss_term_only_with_the_presence_output():
  assert 'tubelet_presence' not in schema.head_loss_terms('tubelet')
  assert schema.head_loss_terms('tubelet', presence=True)[-1] == 'tubelet_presence'
  assert 'tubelet_presence' not in schema.head_loss_terms('spatial', presence=True)
  config = _config()
  assert not schema.tubelet_presence(config)
  config.model.tubelet_presence = True
  assert not schema.tubelet_presence(config)  # not a tubelet head
  config.model.box_head = 'tubelet'
  assert schema.tubelet_presence(config)
