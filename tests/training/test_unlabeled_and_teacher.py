"""Tests of the video-level label protocol in the step and of the mean teacher's wiring.

Unlabelled clips (`has_label` false) add exactly nothing to the classification and box
losses, yet count in the consistency terms; with `loss.teacher_ema` the teacher starts
as the student, gives the consistency targets and follows the student by its EMA.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stconsist_jax.training import distributed
from stconsist_jax.training import losses
from stconsist_jax import models
from stconsist_jax.training import train_step
from stconsist_jax.data.pipeline import random_source
from stconsist_jax.models import detector

import test_train  # pylint: disable=g-bad-import-order

UNLABELED = np.array([False, True, False, False, True, False, True, False])


class PerClipDetector(nn.Module):
  """A detector without BatchNorm: each clip's outputs depend on that clip alone.

  (The real network normalizes over the batch, so there no clip is independent of the
  others and the comparison with a smaller batch cannot be exact.)
  """

  num_classes: int

  @nn.compact
  def __call__(self, clip, train, freeze_backbone=False):
    del freeze_backbone
    calls = self.variable('batch_stats', 'calls', lambda: jnp.zeros((), jnp.float32))
    if train and not self.is_initializing():
      calls.value = calls.value + 1.0
    x = clip.astype(jnp.float32).reshape(clip.shape[0], -1) / 255.0
    h = jnp.tanh(nn.Dense(8, name='backbone')(x))
    return {
      'logits': nn.Dense(self.num_classes, name='classifier')(h),
      'boxes': jax.nn.sigmoid(nn.Dense(4, name=detector.BOX_HEAD_SCOPE)(h)),
    }


def _config(teacher_ema=0.0):
  config = test_train.tiny_config()
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.optimizer.warmup_steps = 0
  config.optimizer.lr = 0.5
  config.loss.rampup_steps = 0
  config.loss.teacher_ema = teacher_ema
  return config


def _batch_with_unlabeled(config):
  batch = random_source.random_batch(config, 0)
  batch['has_label'] = ~UNLABELED
  batch['label'] = np.where(UNLABELED, -1, batch['label']).astype(np.int32)
  batch['has_box'] = batch['has_box'] & ~UNLABELED
  batch['has_box'][0] = True  # at least one box among the labelled clips
  batch['box'] = np.where(batch['has_box'][:, None], batch['box'], 0.0).astype(np.float32)
  batch['box'][0] = [0.2, 0.3, 0.4, 0.3]
  return batch


def _rows(batch, keep):
  return {k: v[keep] for k, v in batch.items()}


@functools.partial(jax.jit, static_argnums=0)
def _supervised_grads(model, variables, batch, con_weight):
  """One jitted program per model and batch size (con_weight is traced, not baked in)."""
  weights = {'cls': 1.0, 'loc': 1.0, 'con_cls': con_weight, 'con_loc': con_weight}

  def loss(params):
    out, out_flip, _ = train_step.forward_pair(
      model,
      {'params': params, 'batch_stats': variables['batch_stats']},
      jnp.asarray(batch['clip']),
      None,
      train=True,
      freeze_backbone=False,
    )
    return losses.total_loss(train_step.loss_terms(out, out_flip, batch, 'js'), weights)

  return jax.grad(loss)(variables['params'])


def test_unlabeled_clips_add_nothing_to_class_and_box_gradients():
  config = _config()
  model = PerClipDetector(config.model.num_classes)
  variables = train_step.init_variables(model, config, jax.random.key(0))
  batch = _batch_with_unlabeled(config)
  with_unlabeled = _supervised_grads(model, variables, batch, 0.0)
  without = _supervised_grads(model, variables, _rows(batch, ~UNLABELED), 0.0)
  a, b = test_train.flat_tree(with_unlabeled), test_train.flat_tree(without)
  assert a.keys() == b.keys()
  assert any(np.abs(v).max() > 0 for v in a.values())
  for k in a:
    # The same sums over 8 and over 6 rows round differently in float32 (jax 0.10's XLA
    # CPU gave 7e-8 on kernel entries up to 0.2): float32 tolerance at the tensor's scale.
    scale = float(np.abs(b[k]).max())
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6 * scale, err_msg=k)
  # The consistency terms do see the unlabelled clips: their gradient now differs.
  con = test_train.flat_tree(_supervised_grads(model, variables, batch, 1.0))
  con_without = test_train.flat_tree(
    _supervised_grads(model, variables, _rows(batch, ~UNLABELED), 1.0)
  )
  assert any(not np.allclose(con[k], con_without[k], rtol=1e-4) for k in con)


def test_loss_terms_mask_per_clip_exactly():
  # At the outputs the masking is exact: zero gradient on unlabelled rows and, on the
  # labelled rows, bit for bit the gradient of the batch without them.
  config = _config()
  batch = _batch_with_unlabeled(config)
  rng = np.random.default_rng(1)
  n, k = len(UNLABELED), config.model.num_classes
  out = {
    'logits': jnp.asarray(rng.normal(size=(n, k)), jnp.float32),
    'boxes': jnp.asarray(rng.uniform(size=(n, 4)), jnp.float32),
  }
  out_flip = {
    'logits': jnp.asarray(rng.normal(size=(n, k)), jnp.float32),
    'boxes': jnp.asarray(rng.uniform(size=(n, 4)), jnp.float32),
  }

  def supervised(o, o_flip, b):
    terms = train_step.loss_terms(o, o_flip, b, 'js')
    return terms['cls'] + terms['loc']

  grad_fn = jax.jit(jax.grad(supervised))  # Eagerly, each op would compile on its own.
  grads = grad_fn(out, out_flip, batch)
  sub = _rows(batch, ~UNLABELED)
  sub_out, sub_flip = ({key: v[~UNLABELED] for key, v in o.items()} for o in (out, out_flip))
  sub_grads = grad_fn(sub_out, sub_flip, sub)
  for key in ('logits', 'boxes'):
    g = np.asarray(grads[key])
    assert not g[UNLABELED].any(), key
    np.testing.assert_array_equal(g[~UNLABELED], np.asarray(sub_grads[key]), err_msg=key)
  terms = train_step.loss_terms(out, out_flip, batch, 'js')
  every_clip = losses.js_divergence(out['logits'], out_flip['logits']).mean()
  np.testing.assert_allclose(terms['con_cls'], every_clip, rtol=1e-6)
  assert float(terms['cls']) > 0 and float(terms['loc']) > 0


def test_step_metrics_count_labelled_clips():
  config = _config()
  mesh = distributed.make_mesh(jax.devices()[:1])
  model = PerClipDetector(config.model.num_classes)
  state = train_step.create_train_state(config, model, mesh)
  stage = train_step.resolve_stages(config)[0]
  step_fn = train_step.make_train_step(config, model, mesh, stage)
  batch = _batch_with_unlabeled(config)
  _, metrics = step_fn(state, distributed.shard_batch(batch, mesh))
  assert float(metrics['labeled_videos']) == (~UNLABELED).mean()
  assert float(metrics['labeled']) == batch['has_box'].sum()


def test_without_teacher_and_with_all_labels_the_step_is_the_studys():
  # has_label all true (the default protocol) gives the step of a batch without the key.
  # The key is read by the step and its losses alone, whatever the model: the per-clip
  # detector compiles the two steps in a fraction of the ResNet's time.
  config = _config()
  assert train_step.teacher_ema(config.loss) == 0
  mesh = distributed.make_mesh(jax.devices()[:1])
  model = PerClipDetector(config.model.num_classes)
  stage = train_step.resolve_stages(config)[0]
  step_fn = train_step.make_train_step(config, model, mesh, stage)
  batch = random_source.random_batch(config, 0)
  assert batch['has_label'].all()
  old_format = {k: v for k, v in batch.items() if k != 'has_label'}
  results = []
  for b in (batch, old_format):
    state = train_step.create_train_state(config, model, mesh)
    assert state.teacher is None
    state, metrics = step_fn(state, distributed.shard_batch(b, mesh))
    assert state.teacher is None
    results.append((test_train.flat_tree(state.params), jax.device_get(metrics)))
  (p1, m1), (p2, m2) = results
  for key in ('loss', 'cls', 'loc', 'con_cls', 'con_loc', 'accuracy'):
    np.testing.assert_allclose(m1[key], m2[key], rtol=1e-6, err_msg=key)
  for k in p1:
    np.testing.assert_allclose(p1[k], p2[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_teacher_gives_targets_and_follows_the_student_by_its_ema():
  decay = 0.75
  config = _config(teacher_ema=decay)
  mesh = distributed.make_mesh(jax.devices()[:1])
  model = models.build_model(config.model)
  state = train_step.create_train_state(config, model, mesh)
  start = {'params': state.params, 'batch_stats': state.batch_stats}
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(state.teacher)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # a copy of the student
  teacher0 = jax.tree.map(np.asarray, jax.device_get(state.teacher))
  batch = random_source.random_batch(config, 0)

  # The targets by hand: the teacher in inference mode on the flipped clip, against the
  # student in training mode on the clip (one jit: eagerly, each op would compile alone).
  @jax.jit
  def consistency_by_hand(variables, clip, clip_flip):
    student_out, _ = model.apply(variables, clip, train=True, mutable=['batch_stats'])
    target = model.apply(variables, clip_flip, train=False)
    return losses.js_divergence(student_out['logits'], target['logits']).mean()

  want_con = consistency_by_hand(teacher0, batch['clip'], batch['clip'][:, :, :, ::-1])
  stage = train_step.resolve_stages(config)[0]
  step_fn = train_step.make_train_step(config, model, mesh, stage)
  state, metrics = step_fn(state, distributed.shard_batch(batch, mesh))
  np.testing.assert_allclose(metrics['con_cls'], want_con, rtol=1e-4)
  student = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  teacher1 = jax.device_get(state.teacher)
  paths = test_train.flat_tree(teacher1).keys()
  old, new, got = (test_train.flat_tree(t) for t in (teacher0, student, teacher1))
  moved = 0
  for k in paths:
    want = np.float32(decay) * old[k] + np.float32(1 - decay) * new[k]
    np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-8, err_msg=k)
    moved += not np.array_equal(old[k], new[k])
  assert moved  # the student did move, so the check above is not vacuous
  # One leaf by hand: the classifier bias.
  leaf = "['params']['classifier']['bias']"
  np.testing.assert_allclose(got[leaf], 0.75 * old[leaf] + 0.25 * new[leaf], rtol=1e-6, atol=1e-8)
