"""Tests of the training loop: device-count invariance, the ramp across stages, NaN stop.

Tiny models (depth 10, widen 1/8, 4x16x16 clips) on simulated CPU devices.
"""

import math

import jax
import ml_collections
import numpy as np
import pytest

from stconsist_jax.configs import demo_one_box as demo
from stconsist_jax.training import checkpointing
from stconsist_jax.training import distributed
from stconsist_jax.training import summaries
from stconsist_jax.training import train
from stconsist_jax.data.pipeline import random_source


def tiny_config(num_steps: int = 3) -> ml_collections.ConfigDict:
  config = demo.get_config()
  config.data.name = 'random'
  config.data.frame_size = config.data.image_size = 16
  config.data.num_frames = 4
  config.model.widen_factor = 0.125
  config.model.box_hidden = (16,)
  config.train.batch_size = 8
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.optimizer.warmup_steps = 1
  config.optimizer.schedule = 'constant'
  config.loss.rampup_steps = 2
  config.loss.loc_weight = 1.0  # Pinned: tests assert about the weights, not the demo's.
  return config


def flat_tree(tree):
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
  }


def test_one_device_and_eight_devices_agree(tmp_path):
  config = tiny_config(num_steps=3)
  assert jax.device_count() == 8
  results = {}
  for n in (1, 8):
    mesh = distributed.make_mesh(jax.devices()[:n])
    state = train.train_and_evaluate(config, str(tmp_path / f'dev{n}'), mesh=mesh)
    results[n] = (
      summaries.read_metrics(tmp_path / f'dev{n}'),
      flat_tree(state.params),
      flat_tree(state.batch_stats),
    )
  m1, p1, b1 = results[1]
  m8, p8, b8 = results[8]
  assert sorted(m1) == sorted(m8) == [1, 2, 3]
  for step in m1:
    for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'grad_norm', 'iou'):
      np.testing.assert_allclose(
        m8[step][key], m1[step][key], rtol=2e-5, atol=1e-6, err_msg=f'{key} at step {step}'
      )
  # The model did move (otherwise equality would prove nothing).
  assert m1[3]['loss'] != m1[1]['loss']
  assert p1.keys() == p8.keys() and b1.keys() == b8.keys()
  for k in p1:
    np.testing.assert_allclose(p8[k], p1[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in b1:
    np.testing.assert_allclose(b8[k], b1[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_consistency_ramp_restarts_with_each_stage(tmp_path):
  config = tiny_config(num_steps=4)
  config.loss.rampup_steps = 2
  config.train.stages = (
    {
      'num_steps': 2,
      'freeze_backbone': True,
      'loss_weights': {'cls': 0.0, 'con_cls': 0.0, 'con_loc': 0.0},
    },
    {'num_steps': -1, 'freeze_backbone': False, 'loss_weights': {}},
  )
  train.train_and_evaluate(config, str(tmp_path), mesh=distributed.make_mesh(jax.devices()[:1]))
  w = {step: m['con_weight'] for step, m in summaries.read_metrics(tmp_path).items()}
  # Logged after step s (1-based) with the weight of global step s - 1; stage 2 starts at 2.
  ramp = lambda t: math.exp(-5.0 * (1.0 - t / 2) ** 2)  # noqa: E731
  expected = {1: 0.0, 2: ramp(1), 3: 0.0, 4: ramp(1)}
  for step, want in expected.items():
    assert math.isclose(w[step], want, rel_tol=1e-6, abs_tol=1e-7), (step, w[step], want)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(num_steps=8)
  config.train.log_every = 4

  def batches(cfg, start_step):
    step = start_step
    while True:
      batch = random_source.random_batch(cfg, step)
      if step == 4:  # The 5th step: a corrupt box target.
        batch['box'][batch['has_box']] = np.nan
      yield batch
      step += 1

  mesh = distributed.make_mesh(jax.devices()[:1])
  with pytest.raises(train.NonFiniteLossError) as err:
    train.train_and_evaluate(config, str(tmp_path), batch_iter_fn=batches, mesh=mesh)
  message = str(err.value)
  assert 'step 5' in message and 'loc' in message and 'step 4' in message, message
  _, variables, step = checkpointing.restore_for_eval(tmp_path, 'latest')
  assert step == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))
  assert sorted(summaries.read_metrics(tmp_path)) == [1, 2, 3, 4]
