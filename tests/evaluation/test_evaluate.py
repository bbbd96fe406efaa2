"""Tests of restore -> evaluate -> reports on a tiny model and the synthetic TFDS dataset.

Checks determinism (twice, and 1 vs 8 simulated devices), report contents and counts
against the dataset's ground truth, the error cases, and tools/compare_reports.py.
"""

import functools
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from stconsist_jax.configs import demo_one_box as demo
from stconsist_jax.training import checkpointing
from stconsist_jax.config import config_file
from stconsist_jax.training import distributed
from stconsist_jax.data.pipeline import eval_inputs
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.evaluation import description
from stconsist_jax.evaluation import evaluator
from stconsist_jax.evaluation import report as report_lib
from stconsist_jax.evaluation import runner
from stconsist_jax.core import fileio
from stconsist_jax import models
from stconsist_jax.training import train_step
from stconsist_jax.metrics import video_ap


def _config(tfds_fixture, box_hidden=(8,)):
  config = demo.get_config()
  config.data.name = f'ucf101_stconsist/{tfds_fixture.config_name}'
  config.data.data_dir = str(tfds_fixture.data_dir)
  config.data.frame_size = tfds_fixture.frame_size
  config.data.image_size = 32
  config.data.num_frames = 8
  config.model.num_classes = tfds_fixture.num_classes
  config.model.box_head = 'mlp'  # The study's head: its names appear in the messages.
  config.model.box_hidden = box_hidden
  config.model.widen_factor = 0.125  # Reports are checked, not accuracy: the smallest net.
  config.eval.batch_size = 8
  config.eval.clips_per_video = 2
  config.eval.frame_stride = 4
  return config


def _make_workdir(path, config, steps=(1, 2)):
  """A training workdir with checkpoints at `steps` (freshly initialized weights)."""
  mesh = distributed.make_mesh()
  model = models.build_model(config.model)
  state = train_step.create_train_state(config, model, mesh)
  config_file.save(config, path)
  ckpt = checkpointing.Checkpointer(path, keep=5, async_save=False)
  for s in steps:
    ckpt.save(s, state)
  ckpt.wait()
  ckpt.close()
  (path / 'metrics.jsonl').write_text(
    ''.join(
      json.dumps({'step': s, 'loss': 2.0 / s, 'cls': 1.5 / s, 'con_weight': s / 10}) + '\n'
      for s in range(1, 11)
    )
  )
  return path


def _streams(config, tfds_fixture):
  return eval_inputs.pipeline_streams(
    config, annotated_class_names=tfds_fixture.truth.annotated_class_names
  )


@pytest.fixture(scope='module')
def run(synthetic_tfds, tmp_path_factory):
  config = _config(synthetic_tfds)
  workdir = _make_workdir(tmp_path_factory.mktemp('run') / 'tiny_run', config)
  return config, workdir


def test_evaluate_writes_reports_and_is_deterministic(run, synthetic_tfds):
  config, workdir = run
  streams = _streams(config, synthetic_tfds)
  report = runner.evaluate(config, workdir, 'latest', streams=streams)
  out_dir = workdir / 'eval' / '2'
  assert sorted(p.name for p in out_dir.iterdir()) == [
    'COMMITTED',
    'clips.png',
    'curves.png',
    'report.json',
    'report.md',
  ]
  on_disk = json.loads((out_dir / 'report.json').read_text())
  assert on_disk == json.loads(json.dumps(report))
  for key in (
    'clip_accuracy',
    'clip_top5',
    'video_accuracy',
    'mean_iou',
    'frame_map',
    'per_class_ap',
    'per_class_accuracy',
    'protocol',
    'checkpoint_step',
    'config_hash',
  ):
    assert key in on_disk, key
  assert on_disk['checkpoint_step'] == 2
  # Counts from the dataset's own ground truth: every test video once, K clips each.
  truth = synthetic_tfds.truth
  test_videos = synthetic_tfds.builder.info.splits['test'].num_examples
  counts = on_disk['counts']
  assert counts['num_videos'] == test_videos
  assert counts['num_clips'] == 2 * test_videos
  assert set(on_disk['per_class_ap']) == set(truth.annotated_class_names)
  for key in ('clip_accuracy', 'clip_top5', 'video_accuracy', 'mean_iou', 'frame_map'):
    assert 0.0 <= on_disk[key] <= 1.0, key
  assert on_disk['clip_top5'] >= on_disk['clip_accuracy']
  cm = np.array(on_disk['confusion_matrix'])
  assert cm.sum() == counts['num_clips']
  assert np.trace(cm) / cm.sum() == pytest.approx(on_disk['clip_accuracy'])
  md = (out_dir / 'report.md').read_text()
  assert 'frame-mAP' in md and 'clips.png' in md
  sheet = np.asarray(Image.open(out_dir / 'clips.png').convert('RGB'))
  assert sheet.ndim == 3 and sheet.std() > 5
  # Green ground-truth and red predicted outlines are drawn.
  assert np.all(sheet == (0, 255, 0), axis=-1).sum() > 0
  assert np.all(sheet == (255, 0, 0), axis=-1).sum() > 0

  # The same restore and evaluation again: identical numbers.
  again = runner.evaluate(config, workdir, 'latest', streams=streams, write=False)
  assert set(report['timing']) == {'clips_seconds', 'frames_seconds', 'tubes_seconds'}
  for key in video_ap.VIDEO_MAP_KEYS:
    assert 0.0 <= on_disk[key] <= 1.0, key
  assert set(on_disk['frame_map_by_protocol']) == {'act', 'voc'}
  assert on_disk['frame_map'] == on_disk['frame_map_by_protocol']['act']
  assert on_disk['counts']['num_videos_linked'] == sum(
    1 for r in truth.records.values() if r.tubes and r.path in truth.splits[1][1]
  )

  def untimed(r):
    return json.dumps({k: v for k, v in r.items() if k != 'timing'})

  assert untimed(again) == untimed(report)

  # On one device instead of eight: the same numbers.
  one = runner.evaluate(
    config, workdir, 2, streams=streams, write=False, mesh=distributed.make_mesh(jax.devices()[:1])
  )
  assert jax.device_count() == 8
  assert one['devices'] == report['devices']  # device_count, not the mesh size
  for key in (
    'clip_accuracy',
    'clip_top5',
    'video_accuracy',
    'per_class_accuracy',
    'confusion_matrix',
    'counts',
  ):
    assert one[key] == report[key], key
  for key in ('mean_iou', 'frame_map'):
    assert one[key] == pytest.approx(report[key], rel=1e-6, abs=1e-9), key
  for name, ap in report['per_class_ap'].items():
    if ap is None:
      assert one['per_class_ap'][name] is None
    else:
      assert one['per_class_ap'][name] == pytest.approx(ap, rel=1e-6, abs=1e-9)


def test_named_step_and_bad_step(run, synthetic_tfds):
  config, workdir = run
  restored = restore_lib.restore(config, workdir, 1)
  assert restored.step == 1
  with pytest.raises(FileNotFoundError, match=r'step 7; found steps \[1, 2\]'):
    restore_lib.restore(config, workdir, 7)
  with pytest.raises(ValueError, match='eval.checkpoint_step'):
    restore_lib.restore(config, workdir, 'newest')
  config = config.copy_and_resolve_references()
  config.eval.checkpoint_step = '1'  # a string field: "1" names step 1
  assert restore_lib.restore(config, workdir).step == 1


def test_missing_workdir_error(run, tmp_path):
  config, _ = run
  with pytest.raises(FileNotFoundError, match='does not exist'):
    runner.evaluate(config, tmp_path / 'nope')


def test_workdir_without_checkpoints_error(run, tmp_path):
  config, _ = run
  config_file.save(config, tmp_path)
  with pytest.raises(FileNotFoundError, match='has no checkpoints'):
    runner.evaluate(config, tmp_path)
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(FileNotFoundError, match='has no checkpoints.*found none'):
    runner.evaluate(config, tmp_path)


def test_checkpoint_of_another_architecture_error(run, synthetic_tfds):
  _, workdir = run  # trained with box head (8,)
  other = _config(synthetic_tfds, box_hidden=(16,))
  with pytest.raises(models.ParameterTreeMismatchError) as e:
    runner.evaluate(other, workdir)
  msg = str(e.value)
  assert 'expected R3D-10' in msg and 'box head Model-1' in msg
  assert 'found R3D-10' in msg and 'box head mlp [8]' in msg
  assert 'box_head' in msg and '(64, 16)' in msg and '(64, 8)' in msg  # 512 x 0.125 features


@functools.cache
def _compare_module(repo_root):
  spec = importlib.util.spec_from_file_location(
    'compare_reports', repo_root / 'tools' / 'compare_reports.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compare_reports_table(repo_root, tmp_path):
  compare = _compare_module(repo_root)
  reports = [
    {
      'run': 'm1',
      'model': 'Model-1',
      'freeze_backbone': False,
      'video_accuracy': 0.83,
      'mean_iou': 0.11,
      'frame_map': None,
      'clip_accuracy': 0.8,
      'checkpoint_step': 9,
    },
    {
      'run': 'm2f',
      'model': 'Model-2',
      'freeze_backbone': True,
      'video_accuracy': 0.96,
      'mean_iou': 0.2149,
      'frame_map': 0.123,
      'clip_accuracy': 0.9,
      'checkpoint_step': 10,
    },
  ]
  for r in reports:
    d = tmp_path / r['run'] / 'eval' / str(r['checkpoint_step'])
    fileio.write_committed_dir(d, {'report.json': json.dumps(r)})
  # A newer evaluation that was interrupted (no commit file) is skipped.
  unfinished = tmp_path / 'm1' / 'eval' / '20'
  unfinished.mkdir()
  (unfinished / 'report.json').write_text(json.dumps(dict(reports[0], checkpoint_step=20)))
  loaded = [compare.load_report(tmp_path / r['run']) for r in reports]
  md = compare.render(loaded, 'markdown').splitlines()
  assert md[0] == (
    '| run | model | freeze_backbone | accuracy | mean IoU | frame-mAP | clip acc | step |'
  )
  assert md[2] == '| m1 | Model-1 | no | 83.0% | 0.110 | - | 80.0% | 9 |'
  assert md[3] == '| m2f | Model-2 | yes | 96.0% | 0.215 | 12.3% | 90.0% | 10 |'
  text = compare.render(loaded, 'text').splitlines()
  assert text[0].split() == [
    'run',
    'model',
    'freeze_backbone',
    'accuracy',
    'mean',
    'IoU',
    'frame-mAP',
    'clip',
    'acc',
    'step',
  ]
  with pytest.raises(FileNotFoundError, match='no report.json'):
    compare.find_report(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='no finished report'):
    compare.find_report(unfinished)


def test_compare_reports_on_a_bucket(repo_root, gcs_bucket):
  compare = _compare_module(repo_root)
  report = {
    'model': 'Model-2',
    'freeze_backbone': True,
    'video_accuracy': 0.5,
    'checkpoint_step': 4,
  }
  fileio.write_committed_dir(f'{gcs_bucket}/m2/eval/4', {'report.json': json.dumps(report)})
  fileio.atomic_write(
    f'{gcs_bucket}/m2/eval/9/report.json',  # interrupted: no commit file
    json.dumps(dict(report, checkpoint_step=9)),
  )
  loaded = compare.load_report(f'{gcs_bucket}/m2')
  assert loaded['run'] == 'm2' and loaded['checkpoint_step'] == 4
  assert compare.render([loaded], 'csv').splitlines()[1] == 'm2,Model-2,yes,50.0%,-,-,-,4'
  with pytest.raises(FileNotFoundError, match='no finished report'):
    compare.find_report(f'{gcs_bucket}/m2/eval/9')


def test_make_evaluate_fn_for_train_and_eval(run, synthetic_tfds, tmp_path):
  config, workdir = run
  restored = restore_lib.restore(config, workdir, 2)
  mesh = distributed.make_mesh()
  variables = distributed.replicate(
    {k: restored.variables[k] for k in ('params', 'batch_stats')}, mesh
  )
  fn = runner.make_evaluate_fn(tmp_path, streams_fn=lambda c: _streams(c, synthetic_tfds))
  got = fn(config, variables, 2, mesh)
  written = json.loads((tmp_path / 'eval' / '2' / 'report.json').read_text())
  summary_keys = evaluator.summary_keys(evaluator.from_config(config))
  assert summary_keys == (
    'clip_accuracy',
    'clip_top5',
    'video_accuracy',
    'mean_iou',
    'frame_map',
    'video_map@0.5',
  )
  assert set(got) == set(summary_keys)
  for key in summary_keys:
    assert got[key] == written[key], key
  # The same numbers as restoring the checkpoint through evaluate().
  direct = runner.evaluate(
    config, workdir, 2, streams=_streams(config, synthetic_tfds), write=False
  )
  for key in summary_keys:
    assert got[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key


def test_read_only_workdir_fails_before_compute_and_eval_dir_works(
  run, synthetic_tfds, tmp_path, monkeypatch
):
  config, workdir = run
  computed = []
  monkeypatch.setattr(
    runner,
    'run_evaluators',
    lambda *a, **k: (
      computed.append(1)
      or (_ for _ in ()).throw(AssertionError('computed before checking the output'))
    ),
  )
  target = tmp_path / 'ro'
  target.mkdir()
  target.chmod(0o500)
  try:
    if os.access(target, os.W_OK):  # root ignores the mode: make the check fail another way
      monkeypatch.setattr(
        report_lib.fileio,
        'atomic_write',
        lambda *a: (_ for _ in ()).throw(PermissionError(13, 'read-only')),
      )
    with pytest.raises(PermissionError, match='--eval_dir'):
      runner.evaluate(config, workdir, 2, eval_dir=target / 'eval')
  finally:
    target.chmod(0o700)
  assert not computed
  monkeypatch.undo()
  out = tmp_path / 'elsewhere'
  runner.evaluate(config, workdir, 2, streams=_streams(config, synthetic_tfds), eval_dir=out)
  assert (out / '2' / 'report.json').exists()


def test_max_videos_evaluates_an_evenly_spaced_subset(run, synthetic_tfds):
  from stconsist_jax.data.pipeline import eval_streams  # pylint: disable=g-import-not-at-top

  np.testing.assert_array_equal(eval_streams.eval_subset(10, 4), [0, 2, 5, 7])
  np.testing.assert_array_equal(eval_streams.eval_subset(3, 5), [0, 1, 2])
  np.testing.assert_array_equal(eval_streams.eval_subset(7, 0), np.arange(7))
  config, workdir = run
  config = config.copy_and_resolve_references()
  config.eval.max_videos = 3
  report = runner.evaluate(
    config, workdir, 2, streams=_streams(config, synthetic_tfds), write=False
  )
  assert report['counts']['num_videos'] == 3
  assert report['counts']['num_clips'] == 3 * config.eval.clips_per_video
  assert 'at most 3 test videos' in report['protocol']['videos']
  # Eight hosts' shares of the subset cover it exactly once.
  shares = [eval_streams.host_videos(20, 3, i, 8) for i in range(8)]
  np.testing.assert_array_equal(np.concatenate(shares), eval_streams.eval_subset(20, 3))


def test_compare_reports_refuses_what_is_not_a_report_in_one_line(repo_root, tmp_path, capsys):
  compare = _compare_module(repo_root)
  prediction = tmp_path / 'v_X.json'  # what tools/demo.py and predict write per video
  prediction.write_text(json.dumps({'format': 'stconsist_jax.prediction/2', 'video': 'v_X'}))
  for path, said in (
    (prediction, 'is not an evaluation report'),
    (tmp_path / 'nope', 'no report.json found at'),
  ):
    with pytest.raises(SystemExit) as info:
      compare.main(['compare_reports.py', str(path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and said in err and str(path) in err
    assert err.count('\n') == 1, err


def _measured_report(run, **config_changes):
  """A report of `run` whose protocol is the one evaluation writes for the changed config."""
  config = demo.get_config()
  for key, value in config_changes.items():
    group, field = key.split('.')
    config[group][field] = value
  return {
    'run': run,
    'checkpoint_step': 1,
    'video_accuracy': 0.5,
    'frame_map_protocol': config.eval.frame_ap_protocol,
    'protocol': description.protocol_of(config),
  }


@pytest.mark.parametrize(
  'change, field, values',
  [
    ({'data.split': 2}, 'split', ('1', '2')),
    ({'data.name': 'ucf101_stconsist/split1_64'}, 'dataset', ('synthetic',)),
    ({'eval.frame_ap_protocol': 'voc'}, 'frame-AP rule', ('a: act', 'b: voc')),
    ({'eval.frame_ap_frames': 'all'}, 'frames scored', ('every frame of the test videos',)),
  ],
)
def test_compare_reports_warns_when_reports_were_measured_differently(
  repo_root, change, field, values
):
  compare = _compare_module(repo_root)
  same = [_measured_report('a'), _measured_report('b')]
  assert compare.differences(same) == []
  (warning,) = compare.differences([_measured_report('a'), _measured_report('b', **change)])
  assert warning.startswith(f'warning: these reports differ in {field} (a: ')
  assert '; b: ' in warning and all(v in warning for v in values), warning
  # Reports that do not say (older or hand-written ones) are not guessed about.
  assert compare.differences([_measured_report('a', **change), {'run': 'c'}]) == []
