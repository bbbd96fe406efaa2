"""Tests of the sharded train step: device-count invariance, freezing, optimizer, NaN stop.

Tiny models (depth 10, widen 1/8, 4x16x16 clips) on simulated CPU devices.
"""

import math

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import demo
from stconsist_jax import checkpointing
from stconsist_jax import distributed
from stconsist_jax import logging_utils
from stconsist_jax import models
from stconsist_jax import train


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


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def test_one_device_and_eight_devices_agree(tmp_path):
  config = tiny_config(num_steps=3)
  assert jax.device_count() == 8
  results = {}
  for n in (1, 8):
    mesh = distributed.make_mesh(jax.devices()[:n])
    state = train.train_and_evaluate(config, str(tmp_path / f'dev{n}'), mesh=mesh)
    results[n] = (logging_utils.read_metrics(tmp_path / f'dev{n}'), _flat(state.params),
                  _flat(state.batch_stats))
  m1, p1, b1 = results[1]
  m8, p8, b8 = results[8]
  assert sorted(m1) == sorted(m8) == [1, 2, 3]
  for step in m1:
    for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'grad_norm', 'iou'):
      np.testing.assert_allclose(m8[step][key], m1[step][key], rtol=2e-5, atol=1e-6,
                                 err_msg=f'{key} at step {step}')
  # The model did move (otherwise equality would prove nothing).
  assert m1[3]['loss'] != m1[1]['loss']
  assert p1.keys() == p8.keys() and b1.keys() == b8.keys()
  for k in p1:
    np.testing.assert_allclose(p8[k], p1[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in b1:
    np.testing.assert_allclose(b8[k], b1[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_fix_weights_trains_only_the_box_head():
  config = tiny_config()
  config.loss.rampup_steps = 0  # Consistency terms fully on: they must not move the body.
  mesh = distributed.make_mesh(jax.devices()[:1])
  model = models.build_model(config.model)
  state = train.create_train_state(config, model, mesh)
  before = (_flat(state.params), _flat(state.batch_stats), _flat(state.opt_state))
  stage = train.resolve_stages(config)[0]
  stage = train.Stage(0, 2, True, stage.loss_weights)
  step_fn = train.make_train_step(config, model, mesh, stage)
  for step in range(2):
    batch = distributed.shard_batch(train.random_batch(config, step), mesh)
    state, metrics = step_fn(state, batch)
    assert np.isfinite(float(metrics['loss']))
  params, stats, opt = _flat(state.params), _flat(state.batch_stats), _flat(state.opt_state)
  moved = []
  for k, v in before[0].items():
    if 'box_head' in k:
      moved.append(not np.array_equal(v, params[k]))
    else:
      assert np.array_equal(v, params[k]), f'frozen parameter {k} changed'
  assert moved and all(moved), 'every box-head tensor should train'
  assert stats.keys() == before[1].keys() and stats
  for k, v in before[1].items():
    assert np.array_equal(v, stats[k]), f'BatchNorm statistic {k} changed'
  for k, v in before[2].items():
    if "'body'" in k:
      assert np.array_equal(v, opt[k]), f'frozen optimizer state {k} changed'


def test_device_flip_equals_host_flip():
  # Without `clip_flip` the step mirrors the clip itself; with a host-made numpy
  # mirror it must compute exactly the same step.
  config = tiny_config()
  mesh = distributed.make_mesh(jax.devices()[:2])
  model = models.build_model(config.model)
  stage = train.resolve_stages(config)[0]
  step_fn = train.make_train_step(config, model, mesh, stage)
  batch = train.random_batch(config, 0)
  assert 'clip_flip' not in batch
  host_flipped = dict(batch, clip_flip=np.ascontiguousarray(batch['clip'][:, :, :, ::-1]))
  results = []
  for b in (batch, host_flipped):
    state = train.create_train_state(config, model, mesh)
    state, metrics = step_fn(state, distributed.shard_batch(b, mesh))
    results.append((_flat(state.params), jax.device_get(metrics)))
  (p_dev, m_dev), (p_host, m_host) = results
  assert m_dev['con_cls'] > 0  # the flipped clip really differs from the clip
  for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc'):
    assert m_dev[key] == m_host[key], key
  for k in p_dev:
    np.testing.assert_array_equal(p_dev[k], p_host[k], err_msg=k)


def test_sgd_matches_pytorch_momentum_rule():
  # PyTorch SGD: g <- g + wd * p; buf <- m * buf + g; p <- p - lr * buf.
  opt = tiny_config().optimizer
  opt.name, opt.weight_decay, opt.momentum, lr = 'sgd', 0.1, 0.9, 0.5
  tx = train.make_optimizer(opt)
  p = np.array([1.0, -2.0], np.float32)
  grads = [np.array([0.3, 0.1], np.float32), np.array([-0.2, 0.4], np.float32)]
  state, ref_p, buf = tx.init(p), p.copy(), np.zeros(2, np.float32)
  for g in grads:
    u, state = tx.update(g, state, p)
    p = p - lr * np.asarray(u)
    d = g + 0.1 * ref_p
    buf = 0.9 * buf + d
    ref_p = ref_p - lr * buf
  np.testing.assert_allclose(p, ref_p, rtol=1e-6)


def test_lr_schedules_hand_values():
  opt = tiny_config().optimizer
  opt.lr, opt.warmup_steps = 0.1, 10
  opt.schedule = 'step'
  opt.decay_steps, opt.decay_factor = (20, 30), 0.1
  fn = train.make_lr_schedule(opt, 40)
  for step, want in [(0, 0.0), (5, 0.05), (10, 0.1), (19, 0.1), (20, 0.01), (35, 0.001)]:
    assert math.isclose(float(fn(step)), want, rel_tol=1e-5, abs_tol=1e-9), step
  opt.schedule = 'cosine'
  fn = train.make_lr_schedule(opt, 40)
  for step in (10, 17, 25, 40):
    want = 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 30))
    assert math.isclose(float(fn(step)), want, rel_tol=1e-5, abs_tol=1e-9), step


def test_resolve_stages_protocol_2():
  config = tiny_config(num_steps=10)
  config.train.stages = (
      {'num_steps': 4, 'fix_weights': True,
       'loss_weights': {'cls': 0.0, 'con_cls': 0.0, 'con_loc': 0.0}},
      {'num_steps': -1, 'fix_weights': False, 'loss_weights': {}})
  first, second = train.resolve_stages(config)
  assert (first.start, first.end, first.fix_weights) == (0, 4, True)
  assert dict(first.loss_weights) == {'cls': 0.0, 'loc': 1.0, 'con_cls': 0.0, 'con_loc': 0.0}
  assert (second.start, second.end, second.fix_weights) == (4, 10, False)
  assert dict(second.loss_weights) == {'cls': 1.0, 'loc': 1.0, 'con_cls': 1.0, 'con_loc': 1.0}
  assert [train.stage_at([first, second], s) for s in (0, 3, 4, 9)] == [0, 0, 1, 1]


def test_consistency_ramp_restarts_with_each_stage(tmp_path):
  config = tiny_config(num_steps=4)
  config.loss.rampup_steps = 2
  config.train.stages = (
      {'num_steps': 2, 'fix_weights': True,
       'loss_weights': {'cls': 0.0, 'con_cls': 0.0, 'con_loc': 0.0}},
      {'num_steps': -1, 'fix_weights': False, 'loss_weights': {}})
  train.train_and_evaluate(config, str(tmp_path),
                           mesh=distributed.make_mesh(jax.devices()[:1]))
  w = {step: m['w'] for step, m in logging_utils.read_metrics(tmp_path).items()}
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
      batch = train.random_batch(cfg, step)
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
  assert sorted(logging_utils.read_metrics(tmp_path)) == [1, 2, 3, 4]
