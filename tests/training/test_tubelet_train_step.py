"""The train step with a dense tubelet head: a tiny stand-in model with the contract's
outputs takes jitted steps with and without a mean teacher; every term is finite.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stconsist_jax.config import schema
from stconsist_jax.data.pipeline import random_source
from stconsist_jax.models import detector
from stconsist_jax.training import distributed
from stconsist_jax.training import train_step
from stconsist_jax.training import tubelet_losses as tl

import test_train  # pylint: disable=g-bad-import-order

NUM_BOX_CLASSES = 2
K = 2
ACTORS = 2
TUBELET_TERMS = ('tubelet_cls', 'tubelet_box', 'tubelet_giou', 'con_dense_cls', 'con_dense_box')


class _Backbone(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(8, (1, 3, 3), strides=(1, 4, 4))(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


class _DenseHead(nn.Module):
  presence: bool = False

  @nn.compact
  def __call__(self, feats):
    t = feats.shape[1]
    p0 = (t - K) // 2
    logits = nn.Dense(NUM_BOX_CLASSES + 1)(feats.mean(axis=1))  # (N, h, w, C + 1)
    raw = jnp.moveaxis(nn.Dense(4)(feats[:, p0 : p0 + K]), 1, 3)  # (N, h, w, K, 4)
    boxes = jnp.concatenate([raw[..., :2], nn.sigmoid(raw[..., 2:])], axis=-1)
    if not self.presence:
      return logits, boxes, None
    presence = jnp.moveaxis(nn.Dense(1)(feats[:, p0 : p0 + K])[..., 0], 1, 3)  # (N, h, w, K)
    return logits, boxes, presence


class TinyTubeletModel(nn.Module):
  """A conv 'backbone' on the clip, a classifier and the contract's dense outputs."""

  num_classes: int
  presence: bool = False

  @nn.compact
  def __call__(self, clip, train=False, freeze_backbone=False):
    x = clip.astype(jnp.float32) / 255.0
    feats = _Backbone(name='backbone')(x, train and not freeze_backbone)  # (N, T, h, w, 8)
    logits = nn.Dense(self.num_classes, name='classifier')(feats.mean(axis=(1, 2, 3)))
    dense_logits, dense_boxes, presence = _DenseHead(self.presence, name=detector.BOX_HEAD_SCOPE)(
      feats
    )
    n, h, w = dense_logits.shape[:3]
    # `boxes`: the centre output frame's box of the most foreground location, as xywh.
    fg = 1.0 - jax.nn.softmax(dense_logits, axis=-1)[..., 0]
    best = jnp.argmax(fg.reshape(n, -1), axis=-1)
    i, j = best // w, best % w
    dx, dy, bw, bh = jnp.moveaxis(dense_boxes[jnp.arange(n), i, j, K // 2], -1, 0)
    cx, cy = (j + 0.5 + dx) / w, (i + 0.5 + dy) / h
    out = {
      'logits': logits,
      'boxes': jnp.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=-1),
      'tubelet_logits': dense_logits,
      'tubelet_boxes': dense_boxes,
    }
    if presence is not None:
      out['tubelet_presence'] = presence
    return out


def _config(teacher_ema=0.0):
  config = test_train.tiny_config()
  config.model.box_head = 'tubelet'
  config.loss.rampup_steps = 0  # w(t) = 1: the consistency terms count from step 0
  config.loss.teacher_ema = teacher_ema
  config.optimizer.warmup_steps = 0  # lr > 0 at step 0: the first step moves the weights
  return config


def _batch(config, step=0):
  batch = random_source.random_batch(config, step)
  n, t = config.train.batch_size, config.data.num_frames
  rng = np.random.default_rng(step)
  xy = rng.uniform(0.0, 0.6, (n, t, ACTORS, 2))
  wh = rng.uniform(0.1, 0.4, (n, t, ACTORS, 2))
  present = rng.random((n, t, ACTORS)) < 0.8
  boxes = np.where(present[..., None], np.concatenate([xy, wh], -1), 0.0).astype(np.float32)
  batch.update(
    actor_boxes=boxes,
    actor_present=present,
    actor_labels=rng.integers(0, NUM_BOX_CLASSES, (n, ACTORS)).astype(np.int32),
    dense_labeled=np.arange(n) % 4 != 3,
  )
  return batch


def _step(config, batch, mesh):
  model = TinyTubeletModel(config.model.num_classes, config.model.tubelet_presence)
  state = train_step.create_train_state(config, model, mesh)
  stage = train_step.resolve_stages(config)[0]
  step_fn = train_step.make_train_step(config, model, mesh, stage)
  before = jax.device_get((state.params, state.teacher))
  new_state, metrics = step_fn(state, distributed.shard_batch(batch, mesh))
  return model, before, new_state, jax.device_get(metrics)


def test_tubelet_stages_weigh_the_dense_terms_not_loc():
  config = _config()
  config.train.stages = ({'num_steps': -1, 'loss_weights': {'con_dense_box': 0.5}},)
  (stage,) = train_step.resolve_stages(config)
  assert dict(stage.loss_weights) == {
    'cls': 1.0,
    'con_cls': 1.0,
    'tubelet_cls': 1.0,
    'tubelet_box': 1.0,
    'tubelet_giou': 1.0,
    'con_dense_cls': 1.0,
    'con_dense_box': 0.5,
  }
  assert set(TUBELET_TERMS) <= set(schema.LOSS_TERMS)


@pytest.mark.parametrize('teacher_ema', [0.0, 0.9])
def test_one_jitted_step_with_every_term_finite(teacher_ema):
  config = _config(teacher_ema)
  mesh = distributed.make_mesh(jax.devices()[:2])
  batch = _batch(config)
  model, (params0, teacher0), state, metrics = _step(config, batch, mesh)
  assert 'loc' not in metrics and 'con_loc' not in metrics
  for key in ('loss', 'cls', 'con_cls', 'grad_norm') + TUBELET_TERMS:
    assert np.isfinite(metrics[key]), key
  for key in ('tubelet_cls', 'tubelet_box', 'tubelet_giou', 'con_dense_cls', 'con_dense_box'):
    assert metrics[key] > 0, key
  # Every weight is 1 and w(t) = 1: the loss is the plain sum of the seven terms.
  want = sum(float(metrics[k]) for k in ('cls', 'con_cls') + TUBELET_TERMS)
  np.testing.assert_allclose(metrics['loss'], want, rtol=1e-5)
  for name in ('con_cls', 'con_dense_cls', 'con_dense_box'):
    share = metrics[f'share_{name}']
    np.testing.assert_allclose(share, metrics[name] / metrics['loss'], rtol=1e-5)
  head0 = test_train.flat_tree(params0[detector.BOX_HEAD_SCOPE])
  head1 = test_train.flat_tree(jax.device_get(state.params)[detector.BOX_HEAD_SCOPE])
  assert all(not np.array_equal(head0[k], head1[k]) for k in head0), 'the dense head trains'
  if not teacher_ema:
    assert state.teacher is None
    return
  # The targets are the teacher's outputs on the flipped clip (inference mode), against
  # the student's on the clip, computed here outside the step.
  # The teacher starts as a copy of the student, so its BatchNorm statistics are the student's.
  out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
    {'params': params0, 'batch_stats': teacher0['batch_stats']}, batch['clip']
  )
  target = jax.jit(lambda v, x: model.apply(v, x, train=False))(
    teacher0, batch['clip'][:, :, :, ::-1]
  )
  want_cls, want_box = jax.jit(tl.dense_consistency)(
    out['tubelet_logits'], out['tubelet_boxes'], target['tubelet_logits'], target['tubelet_boxes']
  )
  np.testing.assert_allclose(metrics['con_dense_cls'], want_cls, rtol=1e-4)
  np.testing.assert_allclose(metrics['con_dense_box'], want_box, rtol=1e-4)
  moved = jax.device_get(state.teacher)
  assert not np.array_equal(
    test_train.flat_tree(moved['params'])["['classifier']['kernel']"],
    test_train.flat_tree(teacher0['params'])["['classifier']['kernel']"],
  )


def test_presence_adds_its_term_weighted_and_trained():
  config = _config()
  config.model.tubelet_presence = True
  config.loss.tubelet_presence_weight = 0.5
  (stage,) = train_step.resolve_stages(config)
  assert dict(stage.loss_weights)['tubelet_presence'] == 0.5
  mesh = distributed.make_mesh(jax.devices()[:2])
  _, (params0, _), state, metrics = _step(config, _batch(config), mesh)
  assert np.isfinite(metrics['tubelet_presence']) and metrics['tubelet_presence'] > 0
  for key in ('loss', 'cls', 'con_cls', 'grad_norm') + TUBELET_TERMS:
    assert np.isfinite(metrics[key]), key
  # Every other weight is 1 and w(t) = 1.
  want = sum(float(metrics[k]) for k in ('cls', 'con_cls') + TUBELET_TERMS)
  np.testing.assert_allclose(metrics['loss'], want + 0.5 * metrics['tubelet_presence'], rtol=1e-5)
  head0 = test_train.flat_tree(params0[detector.BOX_HEAD_SCOPE])
  head1 = test_train.flat_tree(jax.device_get(state.params)[detector.BOX_HEAD_SCOPE])
  presence_keys = [k for k in head0 if 'Dense_2' in k]
  assert len(presence_keys) == 2, sorted(head0)
  assert all(not np.array_equal(head0[k], head1[k]) for k in presence_keys), 'presence trains'
