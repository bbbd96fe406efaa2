"""Tests of tools/semi_supervision.py: interval and paired-difference arithmetic, resuming.

The run function is replaced by a stub: nothing here trains.
"""

import importlib.util
import json
import math

import ml_collections
import pytest
from scipy import stats

from stconsist_jax.configs import demo_one_box as demo
from stconsist_jax.config import schema
from stconsist_jax.config import config_file


@pytest.fixture(scope='module')
def tool(repo_root):
  """tools/semi_supervision.py as a module (its flags are defined only when run)."""
  spec = importlib.util.spec_from_file_location(
    'semi_supervision_tool', repo_root / 'tools' / 'semi_supervision.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_t_quantile_matches_scipy(tool):
  for df in (1, 2, 4, 9, 29, 30, 31, 40, 100, 1000):
    assert math.isclose(tool.t_quantile_975(df), stats.t.ppf(0.975, df), rel_tol=2e-4), df


def test_mean_interval_by_hand(tool):
  # 1, 2, 3, 6: mean 3, sample variance (4 + 1 + 0 + 9) / 3 = 14 / 3.
  got = tool.mean_interval([1.0, 2.0, None, 3.0, 6.0, float('nan')])
  sd = math.sqrt(14 / 3)
  half = 3.1824 * sd / 2  # t_0.975(3) * sd / sqrt(4)
  assert got['n'] == 4 and got['mean'] == 3.0
  assert math.isclose(got['sd'], sd) and math.isclose(got['half_width'], half)
  assert math.isclose(got['low'], 3 - half) and math.isclose(got['high'], 3 + half)
  one = tool.mean_interval([0.5])
  assert one['mean'] == 0.5 and one['half_width'] is None
  assert tool.mean_interval([None]) is None


def test_summary_pairs_by_seed(tool):
  base = {0: 0.40, 1: 0.50, 2: 0.30}
  flip = {0: 0.45, 1: 0.60, 2: 0.32}  # differences 0.05, 0.10, 0.02
  runs = []
  for arm, values in (('no_consistency', base), ('flip', flip)):
    for seed, v in values.items():
      runs.append({'arm': arm, 'fraction': 0.1, 'seed': seed, 'mean_iou': v,
                   'frame_map': v / 2, 'video_map@0.5': None})  # fmt: skip
  runs.append({'arm': 'flip', 'fraction': 0.1, 'seed': 3, 'mean_iou': 0.9, 'frame_map': 0.1})
  summary = tool.summarize(runs)
  arm = summary['arms']['flip']['0.1']['mean_iou']
  assert arm['n'] == 4 and math.isclose(arm['mean'], (0.45 + 0.60 + 0.32 + 0.9) / 4)
  assert summary['arms']['flip']['0.1']['video_map@0.5'] is None
  diff = summary['paired']['flip']['0.1']['mean_iou']
  d = [0.05, 0.10, 0.02]
  mean = sum(d) / 3
  sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
  assert diff['n'] == 3  # seed 3 has no baseline: left out of the pairs
  assert math.isclose(diff['mean'], mean) and math.isclose(diff['sd'], sd)
  assert math.isclose(diff['half_width'], 4.3027 * sd / math.sqrt(3))
  assert math.isclose(summary['paired']['flip']['0.1']['frame_map']['mean'], mean / 2)
  assert 'no_consistency' not in summary['paired']
  lines = tool.report_lines(summary)
  assert any('flip' in line and '+0.057' in line for line in lines)
  table = tool.markdown_tables(summary).splitlines()
  assert table[2].startswith('| 10% | no_consistency | 3 | 0.400 [')
  assert table[3].startswith('| 10% | flip | 4 | 0.568 [')  # (0.45 + 0.6 + 0.32 + 0.9) / 4
  assert any(line.startswith('| 10% | flip | +0.057 [') for line in table)


def test_run_configs_are_paired_and_valid(tool):
  base = tool.sized_config(demo.get_config(), 30, 32, 4, 0)
  configs = {arm: tool.run_config(base, arm, 0.2, 3, 0.9) for arm in tool.ARMS}
  for config in configs.values():
    schema.validate(config)
    assert config.seed == 3 and config.data.labeled_video_fraction == 0.2
    assert config.data.image_size == config.data.frame_size == 32
  assert configs['no_consistency'].loss.con_cls_weight == 0.0
  assert configs['flip'].loss.con_cls_weight > 0 and configs['flip'].loss.teacher_ema == 0.0
  assert configs['flip_teacher'].loss.teacher_ema == 0.9
  # Apart from the arm's loss settings the runs of one seed are the same experiment.
  diffs = config_file.config_differences(configs['no_consistency'], configs['flip_teacher'])
  consistency = {'loss.con_cls_weight', 'loss.con_loc_weight', 'loss.con_dense_cls_weight',
                 'loss.con_dense_box_weight'}  # fmt: skip
  assert {k for k, _, _ in diffs} <= consistency | {'loss.teacher_ema'}
  boxes_only = configs['flip_boxes'].loss
  assert boxes_only.con_dense_cls_weight == boxes_only.con_cls_weight == 0.0
  assert boxes_only.con_dense_box_weight > 0


def test_finished_runs_are_read_back_not_redone(tool, tmp_path):
  calls = []

  def fake_run(config, workdir):
    calls.append((config.seed, workdir))
    return {'mean_iou': 0.5 + config.seed / 10, 'frame_map': 0.2, 'video_map@0.5': None}

  def configs(arm, fraction, seed):
    return ml_collections.ConfigDict({'seed': seed, 'arm': arm, 'fraction': fraction})

  plan = [('flip', 0.1, 0), ('flip', 0.1, 1)]
  settings = {'num_steps': 5}
  first = tool.run_study(plan[:1], configs, fake_run, tmp_path, tmp_path / 'wd', settings)
  assert len(calls) == 1 and calls[0][1].endswith('flip_f0.1_s0')
  again = tool.run_study(plan, configs, fake_run, tmp_path, tmp_path / 'wd', settings)
  assert len(calls) == 2 and calls[1][0] == 1  # only the new run trained
  assert again[0] == first[0]
  on_disk = json.loads((tmp_path / 'runs' / 'flip_f0.1_s1.json').read_text())
  assert on_disk['mean_iou'] == 0.6 and on_disk['settings'] == settings
  with pytest.raises(schema.ConfigError, match='other settings'):
    tool.run_study(plan, configs, fake_run, tmp_path, tmp_path / 'wd', {'num_steps': 6})
  # Runs stored before the linking options existed were linked as ACT: read back under
  # ACT's linking, refused under another ...
  act = {'num_steps': 5, 'tubelet_linking': {'frame_weighting': 'uniform', 'overlap_weight': 0.0}}
  assert tool.run_study(plan, configs, fake_run, tmp_path, tmp_path / 'wd', act) == again
  weighted = {**act, 'tubelet_linking': {'frame_weighting': 'triangular', 'overlap_weight': 1.0}}
  with pytest.raises(schema.ConfigError, match='other settings'):
    tool.run_study(plan, configs, fake_run, tmp_path, tmp_path / 'wd', weighted)
  # ... and trained without the finer stage.
  assert (
    tool.run_study(
      plan, configs, fake_run, tmp_path, tmp_path / 'wd', {**act, 'tubelet_finer_stage': False}
    )
    == again
  )
  with pytest.raises(schema.ConfigError, match='other settings'):
    finer = {**act, 'tubelet_finer_stage': True}
    tool.run_study(plan, configs, fake_run, tmp_path, tmp_path / 'wd', finer)
  assert len(calls) == 2
  summary = {'runs': again, **tool.summarize(again)}
  tool.plot(summary, tmp_path / 'study.png', 'test')
  assert (tmp_path / 'study.png').read_bytes()[:4] == b'\x89PNG'
  logged = [{**r, 'loss_log': {'step': [1, 2], 'loss': [1.0, 1.0], 'share_con_cls': [0.1, 0.2]}}
            for r in again]  # fmt: skip
  tool.plot_loss_shares(logged, tmp_path / 'shares.png', seed=0)
  tool.plot_curve([{'num_steps': 5, **again[0]}], tmp_path / 'curve.png')
  for png in ('shares.png', 'curve.png'):
    assert (tmp_path / png).read_bytes()[:4] == b'\x89PNG'


def test_loss_log_windows_and_shares_by_hand(tool):
  # Steps 1-4 in 2 windows; step 3 logged twice (a resume) keeps its last record.
  records = [
    {'step': 1, 'loss': 2.0, 'tubelet_cls': 1.0, 'share_con_dense_box': 0.0},
    {'step': 2, 'loss': 4.0, 'tubelet_cls': 3.0, 'share_con_dense_box': 0.2},
    {'step': 3, 'loss': 9.0, 'tubelet_cls': 9.0, 'share_con_dense_box': 0.9},
    {'step': 3, 'loss': 1.0, 'tubelet_cls': 0.5, 'share_con_dense_box': 0.1},
    {'step': 4, 'loss': 3.0, 'tubelet_cls': 0.5, 'share_con_dense_box': 0.3,
     'share_con_dense_cls': 0.1},
  ]  # fmt: skip
  log = tool.loss_log(records, points=2)
  assert log['step'] == [2, 4]
  assert log['loss'] == [3.0, 2.0] and log['tubelet_cls'] == [2.0, 0.5]
  # Shares are loss-weighted: sum(share * loss) / sum(loss), 0 where a step lacks the term.
  assert log['share_con_dense_box'] == [round(0.8 / 6, 4), 0.25]
  assert log['share_con_dense_cls'] == [None, 0.075]
  assert math.isclose(log['mean_share']['con_dense_box'], (0.8 + 0.1 + 0.9) / 10)
  assert math.isclose(log['mean_share']['con_dense_cls'], 0.3 / 10)
  assert math.isclose(log['mean_share']['total'], 0.18 + 0.03)
  runs = [
    {'arm': 'flip', 'fraction': 0.1, 'seed': 1, 'loss_log': log},
    {'arm': 'flip', 'fraction': 0.1, 'seed': 0, 'loss_log': log},
  ]
  (cell,) = tool.loss_shares_table(runs)['flip'].values()
  # Last window (steps 3, 4): weighted consistency 0.1 * 1 + 0.3 * 3 + 0.1 * 3 = 1.3
  # against tubelet_cls 0.5 + 0.5.
  assert cell['seed'] == 0 and math.isclose(cell['final_ratio'], 1.3)
  assert any('ratio 1.3' in line for line in tool.loss_share_lines({'flip': {'0.1': cell}}))
  table = tool.markdown_tables({'arms': {}, 'paired': {}, 'loss_shares': {'flip': {'0.1': cell}}})
  assert '| flip | 10% | 0 | 0.03 | 0.18 | 0.21 | 1.3 |' in table.splitlines()
