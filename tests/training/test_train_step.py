"""Tests of the sharded train step: freezing, host vs device flip, optimizer, schedules, stages.

Tiny models (depth 10, widen 1/8, 4x16x16 clips) on simulated CPU devices.
"""

import math

import jax
import numpy as np

from stconsist_jax.training import distributed
from stconsist_jax import models
from stconsist_jax.training import train_step
from stconsist_jax.data.pipeline import random_source

import test_train  # pylint: disable=g-bad-import-order


def test_freeze_backbone_trains_only_the_box_head():
  config = test_train.tiny_config()
  config.loss.rampup_steps = 0  # Consistency terms fully on: they must not move the rest.
  mesh = distributed.make_mesh(jax.devices()[:1])
  model = models.build_model(config.model)
  state = train_step.create_train_state(config, model, mesh)
  before = tuple(
    test_train.flat_tree(t) for t in (state.params, state.batch_stats, state.opt_state)
  )
  stage = train_step.resolve_stages(config)[0]
  stage = train_step.Stage(0, 2, True, stage.loss_weights)
  step_fn = train_step.make_train_step(config, model, mesh, stage)
  for step in range(2):
    batch = distributed.shard_batch(random_source.random_batch(config, step), mesh)
    state, metrics = step_fn(state, batch)
    assert np.isfinite(float(metrics['loss']))
  params, stats, opt = (
    test_train.flat_tree(t) for t in (state.params, state.batch_stats, state.opt_state)
  )
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
    if "'rest'" in k:
      assert np.array_equal(v, opt[k]), f'frozen optimizer state {k} changed'


def test_device_flip_equals_host_flip():
  # Without `clip_flip` the step mirrors the clip itself; with a host-made numpy
  # mirror it must compute exactly the same step.
  config = test_train.tiny_config()
  mesh = distributed.make_mesh(jax.devices()[:2])
  model = models.build_model(config.model)
  stage = train_step.resolve_stages(config)[0]
  step_fn = train_step.make_train_step(config, model, mesh, stage)
  batch = random_source.random_batch(config, 0)
  assert 'clip_flip' not in batch
  host_flipped = dict(batch, clip_flip=np.ascontiguousarray(batch['clip'][:, :, :, ::-1]))
  results = []
  for b in (batch, host_flipped):
    state = train_step.create_train_state(config, model, mesh)
    state, metrics = step_fn(state, distributed.shard_batch(b, mesh))
    results.append((test_train.flat_tree(state.params), jax.device_get(metrics)))
  (p_dev, m_dev), (p_host, m_host) = results
  assert m_dev['con_cls'] > 0  # the flipped clip really differs from the clip
  for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc'):
    assert m_dev[key] == m_host[key], key
  for k in p_dev:
    np.testing.assert_array_equal(p_dev[k], p_host[k], err_msg=k)


def test_a_configuration_seen_before_gets_its_jitted_step_back():
  """The same (model, optimizer, loss, steps, stage, mesh) in one process: the same jitted
  function, so a second run traces nothing again; any difference: another function."""
  config = test_train.tiny_config()
  stage = train_step.resolve_stages(config)[0]
  one_device = distributed.make_mesh(jax.devices()[:1])

  def step_fn(cfg, mesh=one_device):
    return train_step.make_train_step(cfg, models.build_model(cfg.model), mesh, stage)

  first = step_fn(config)
  assert step_fn(test_train.tiny_config()) is first
  other_loss = test_train.tiny_config()
  other_loss.loss.loc_weight += 1.0
  other_model = test_train.tiny_config()
  other_model.model.widen_factor /= 2
  longer = test_train.tiny_config(num_steps=config.train.num_steps + 1)
  others = [step_fn(c) for c in (other_loss, other_model, longer)]
  others.append(step_fn(config, distributed.make_mesh(jax.devices()[:2])))
  assert all(fn is not first for fn in others) and len({id(fn) for fn in others}) == 4


def test_the_flip_test_is_not_trained_with():
  """The flip test is an inference option: the train step (and a mean teacher's targets)
  run the model without it, the very step of the same configuration without it."""
  config = test_train.tiny_config()
  config.model.box_head = 'tubelet'
  flipped = models.build_model({**config.model.to_dict(), 'tubelet_flip_test': True})
  plain = models.build_model(config.model)
  assert flipped.tubelet_flip_test and not train_step.training_view(flipped).tubelet_flip_test
  assert repr(train_step.training_view(flipped)) == repr(plain)
  assert train_step.training_view(plain) is plain
  mesh = distributed.make_mesh(jax.devices()[:1])
  stage = train_step.resolve_stages(config)[0]
  assert train_step.make_train_step(config, flipped, mesh, stage) is train_step.make_train_step(
    config, plain, mesh, stage
  )


def test_sgd_matches_pytorch_momentum_rule():
  # PyTorch SGD: g <- g + wd * p; buf <- m * buf + g; p <- p - lr * buf.
  opt = test_train.tiny_config().optimizer
  opt.name, opt.weight_decay, opt.momentum, lr = 'sgd', 0.1, 0.9, 0.5
  tx = train_step.make_optimizer(opt)
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
  opt = test_train.tiny_config().optimizer
  opt.lr, opt.warmup_steps = 0.1, 10
  opt.schedule = 'step'
  opt.decay_steps, opt.decay_factor = (20, 30), 0.1
  fn = train_step.make_lr_schedule(opt, 40)
  for step, want in [(0, 0.0), (5, 0.05), (10, 0.1), (19, 0.1), (20, 0.01), (35, 0.001)]:
    assert math.isclose(float(fn(step)), want, rel_tol=1e-5, abs_tol=1e-9), step
  opt.schedule = 'cosine'
  fn = train_step.make_lr_schedule(opt, 40)
  for step in (10, 17, 25, 40):
    want = 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 30))
    assert math.isclose(float(fn(step)), want, rel_tol=1e-5, abs_tol=1e-9), step


def test_resolve_stages_protocol_2():
  config = test_train.tiny_config(num_steps=10)
  config.train.stages = (
    {
      'num_steps': 4,
      'freeze_backbone': True,
      'loss_weights': {'cls': 0.0, 'con_cls': 0.0, 'con_loc': 0.0},
    },
    {'num_steps': -1, 'freeze_backbone': False, 'loss_weights': {}},
  )
  first, second = train_step.resolve_stages(config)
  assert (first.start, first.end, first.freeze_backbone) == (0, 4, True)
  assert dict(first.loss_weights) == {'cls': 0.0, 'loc': 1.0, 'con_cls': 0.0, 'con_loc': 0.0}
  assert (second.start, second.end, second.freeze_backbone) == (4, 10, False)
  assert dict(second.loss_weights) == {'cls': 1.0, 'loc': 1.0, 'con_cls': 1.0, 'con_loc': 1.0}
  assert [train_step.stage_at([first, second], s) for s in (0, 3, 4, 9)] == [0, 0, 1, 1]
