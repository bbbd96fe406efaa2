"""Tests of the loss terms against independent numpy/scipy references.

Covers values, gradients that must vanish (stop-gradient, masks) and the ramp schedule.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import distance as scipy_distance
from scipy.special import softmax as np_softmax

from stconsist_jax.training import losses


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_softmax_cross_entropy_matches_numpy():
  rng = _rng()
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=6)
  probs = np_softmax(logits.astype(np.float64), axis=-1)
  ce = -np.log(probs[np.arange(6), labels])
  np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), ce.mean(), rtol=1e-5)
  w = np.array([1, 0, 1, 1, 0, 2], np.float32)
  np.testing.assert_allclose(
    losses.softmax_cross_entropy(logits, labels, w), (w * ce).sum() / w.sum(), rtol=1e-5
  )


def test_softmax_cross_entropy_zero_weight_rows_get_no_gradient():
  rng = _rng(1)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 0])
  w = np.array([1, 0, 1, 0], np.float32)
  g = jax.grad(lambda x: losses.softmax_cross_entropy(x, labels, w))(logits)
  np.testing.assert_array_equal(np.asarray(g)[[1, 3]], 0.0)
  assert np.all(np.abs(np.asarray(g)[[0, 2]]).sum(-1) > 0)


def test_box_mse_mean_over_boxed_clips_only():
  rng = _rng(2)
  pred = rng.uniform(size=(5, 4)).astype(np.float32)
  target = rng.uniform(size=(5, 4)).astype(np.float32)
  target[3] = np.nan  # garbage where there is no box must not leak
  mask = np.array([True, False, True, False, True])
  expected = np.mean([np.mean((pred[i] - target[i]) ** 2) for i in (0, 2, 4)])
  np.testing.assert_allclose(losses.box_mse(pred, target, mask), expected, rtol=1e-5)
  g = np.asarray(jax.grad(lambda p: losses.box_mse(p, target, mask))(pred))
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(g[[1, 3]], 0.0)
  # d/dp of mean_i mean_j (p - t)^2 = 2 (p - t) / (4 * 3) on boxed rows.
  np.testing.assert_allclose(g[0], 2 * (pred[0] - target[0]) / 12, rtol=1e-5)


def test_box_mse_no_box_batch_is_zero_with_zero_gradient():
  pred = np.full((3, 4), 0.3, np.float32)
  target = np.zeros((3, 4), np.float32)
  mask = np.zeros(3, bool)
  value, g = jax.value_and_grad(lambda p: losses.box_mse(p, target, mask))(pred)
  assert float(value) == 0.0
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_js_divergence_matches_scipy():
  rng = _rng(3)
  lp = rng.normal(size=(7, 11)).astype(np.float32) * 2
  lq = rng.normal(size=(7, 11)).astype(np.float32) * 2
  p = np_softmax(lp.astype(np.float64), -1)
  q = np_softmax(lq.astype(np.float64), -1)
  # scipy returns the Jensen-Shannon *distance* (sqrt of the divergence), natural log
  # when base is None.
  ref = np.array([scipy_distance.jensenshannon(p[i], q[i]) ** 2 for i in range(7)])
  got = np.asarray(losses.js_divergence(lp, lq))
  assert got.shape == (7,)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
  # Symmetric, zero on identical inputs, bounded by log 2.
  np.testing.assert_allclose(losses.js_divergence(lq, lp), got, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(losses.js_divergence(lp, lp), 0.0, atol=1e-6)
  far = np.asarray(losses.js_divergence(np.array([[50.0, -50.0]]), np.array([[-50.0, 50.0]])))
  np.testing.assert_allclose(far, math.log(2), rtol=1e-5)


def test_js_divergence_gradient_finite_on_saturated_softmax():
  lp = np.array([[200.0, -200.0, 0.0]], np.float32)
  lq = np.array([[-200.0, 200.0, 0.0]], np.float32)
  g = jax.grad(lambda a, b: losses.js_divergence(a, b).sum(), argnums=(0, 1))(lp, lq)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def _csd_numpy(lp, lq, eps=1e-7):
  """SPEC.md section 4: 1/2 (KL(q || p) + KL(p || q)), eps added to both."""
  p = np_softmax(lp.astype(np.float64), -1) + eps
  q = np_softmax(lq.astype(np.float64), -1) + eps
  kl_qp = np.sum(q * (np.log(q) - np.log(p)), -1)
  kl_pq = np.sum(p * (np.log(p) - np.log(q)), -1)
  return 0.5 * (kl_qp + kl_pq)


def test_csd_consistency_matches_numpy():
  rng = _rng(4)
  lp = rng.normal(size=(5, 9)).astype(np.float32) * 2
  lq = rng.normal(size=(5, 9)).astype(np.float32) * 2
  np.testing.assert_allclose(
    losses.csd_consistency(lp, lq), _csd_numpy(lp, lq), rtol=1e-4, atol=1e-7
  )


def test_csd_consistency_gradient_only_through_the_non_target_side():
  """With stop-gradient targets, d/dp only comes from KL(sg(q) || p).

  The gradient w.r.t. p-logits of KL(q || p) with q fixed is softmax(p) * sum(q) - q
  (eps-shifted); the KL(p || q) term, whose p is a target, must add nothing.
  """
  rng = _rng(5)
  lp = rng.normal(size=(3, 4)).astype(np.float32)
  lq = rng.normal(size=(3, 4)).astype(np.float32)
  eps = 1e-7
  g_p = np.asarray(jax.grad(lambda a: losses.csd_consistency(a, lq, eps).sum())(lp))
  # Reference: numerical gradient of 1/2 KL(q_fixed || p) alone.
  q = np_softmax(lq.astype(np.float64), -1) + eps

  def half_kl_q_p(a):
    p = np_softmax(a, -1) + eps
    return 0.5 * np.sum(q * (np.log(q) - np.log(p)))

  num = np.zeros_like(lp, np.float64)
  h = 1e-5
  for idx in np.ndindex(lp.shape):
    d = np.zeros_like(lp, np.float64)
    d[idx] = h
    num[idx] = (half_kl_q_p(lp + d) - half_kl_q_p(lp - d)) / (2 * h)
  np.testing.assert_allclose(g_p, num, rtol=1e-3, atol=1e-6)
  # The full (no stop-gradient) gradient differs, so the test can tell them apart.
  full = np.zeros_like(num)
  for idx in np.ndindex(lp.shape):
    d = np.zeros_like(lp, np.float64)
    d[idx] = h
    full[idx] = (_csd_numpy(lp + d, lq).sum() - _csd_numpy(lp - d, lq).sum()) / (2 * h)
  assert np.max(np.abs(full - num)) > 1e-3


def test_classification_consistency_dispatch_and_bad_kind():
  lp = np.array([[1.0, 2.0, 0.5]], np.float32)
  lq = np.array([[0.0, 1.0, 2.0]], np.float32)
  np.testing.assert_allclose(
    losses.classification_consistency(lp, lq, 'js'), losses.js_divergence(lp, lq)
  )
  np.testing.assert_allclose(
    losses.classification_consistency(lp, lq, 'csd'), losses.csd_consistency(lp, lq)
  )
  with pytest.raises(ValueError, match="'kl'"):
    losses.classification_consistency(lp, lq, 'kl')


def _flip(boxes):
  out = boxes.copy()
  out[:, 0] = 1 - boxes[:, 0] - boxes[:, 2]
  return out


def test_box_consistency_zero_for_flip_equivariant_prediction():
  rng = _rng(6)
  xy = rng.uniform(0, 0.5, size=(8, 2))
  wh = rng.uniform(0.05, 0.5, size=(8, 2))
  boxes = np.concatenate([xy, wh], -1).astype(np.float32)
  np.testing.assert_allclose(losses.box_consistency(boxes, _flip(boxes)), 0.0, atol=1e-7)


def test_box_consistency_matches_hand_computed():
  b = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
  bf = np.array([[0.5, 0.25, 0.2, 0.4]], np.float32)
  # centres: (0.25, 0.4) and (0.6, 0.45); mirrored cx' = 0.4.
  expected = ((0.25 - 0.4) ** 2 + (0.4 - 0.45) ** 2 + (0.3 - 0.2) ** 2 + 0.0) / 4
  np.testing.assert_allclose(losses.box_consistency(b, bf), [expected], rtol=1e-5)


def test_consistency_ramp_values():
  t_up = 100
  assert float(losses.consistency_ramp(0, t_up)) == 0.0
  for t in (1, 25, 50, 99):
    np.testing.assert_allclose(
      losses.consistency_ramp(t, t_up), math.exp(-5 * (1 - t / t_up) ** 2), rtol=1e-6
    )
  for t in (100, 101, 10_000):
    assert float(losses.consistency_ramp(t, t_up)) == 1.0
  # No ramp-up: 1 from the start.
  assert float(losses.consistency_ramp(0, 0)) == 1.0
  # Ramp-down in the last 20 of 200 steps.
  kw = dict(rampup_steps=10, total_steps=200, rampdown_steps=20)
  assert float(losses.consistency_ramp(150, **kw)) == 1.0
  assert float(losses.consistency_ramp(180, **kw)) == 1.0
  for t in (181, 190, 200):
    np.testing.assert_allclose(
      losses.consistency_ramp(t, **kw), math.exp(-12.5 * (1 - (200 - t) / 20) ** 2), rtol=1e-6
    )
  # Traced step under jit gives the same values.
  jitted = jax.jit(lambda s: losses.consistency_ramp(s, t_up))
  np.testing.assert_allclose(jitted(jnp.int32(50)), math.exp(-5 * 0.25), rtol=1e-6)
  with pytest.raises(ValueError, match='total_steps'):
    losses.consistency_ramp(5, 10, rampdown_steps=3)


def _csd_rampweight(iteration, ramp_up_end, total, ramp_down):
  """CSD-SSD's `rampweight` (train_csd.py), its constants made arguments."""
  ramp_down_start = total - ramp_down
  if iteration < ramp_up_end:
    ramp_weight = math.exp(-5 * math.pow((1 - iteration / ramp_up_end), 2))
  elif iteration > ramp_down_start:
    ramp_weight = math.exp(-12.5 * math.pow((1 - (total - iteration) / ramp_down), 2))
  else:
    ramp_weight = 1
  if iteration == 0:
    ramp_weight = 0
  return ramp_weight


@pytest.mark.parametrize(
  'ramp_up,total,ramp_down',
  [
    (32000, 120000, 20000),  # CSD-SSD's own setting: the ramps do not meet.
    (80, 100, 40),  # Overlapping: ramp-up still running when ramp-down would start.
    (100, 100, 100),  # Overlapping over the whole run.
    (10, 50, 10),  # Meeting in the middle with a flat part between.
  ],
)
def test_consistency_ramp_equals_csd_rampweight(ramp_up, total, ramp_down):
  edges = {
    0,
    1,
    ramp_up - 1,
    ramp_up,
    ramp_up + 1,
    total - ramp_down,
    total - ramp_down + 1,
    total - 1,
    total,
  }
  steps = sorted(
    t for t in edges | set(range(0, total + 1, max(total // 37, 1))) if 0 <= t <= total
  )
  for t in steps:
    np.testing.assert_allclose(
      losses.consistency_ramp(t, ramp_up, total, ramp_down),
      _csd_rampweight(t, ramp_up, total, ramp_down),
      rtol=1e-5,
      atol=1e-7,
      err_msg=f'step {t}',
    )


def test_overlapping_ramps_let_the_ramp_up_win():
  """The example of the issue: ramp-up 80, total 100, ramp-down 40, step 70."""
  np.testing.assert_allclose(
    losses.consistency_ramp(70, 80, 100, 40), math.exp(-5 * (1 - 70 / 80) ** 2), rtol=1e-6
  )  # 0.925
  np.testing.assert_allclose(
    losses.consistency_ramp(90, 80, 100, 40), math.exp(-12.5 * (1 - 10 / 40) ** 2), rtol=1e-6
  )


def test_total_loss_weights_each_term():
  terms = {'cls': jnp.float32(2.0), 'loc': jnp.float32(0.5), 'con': jnp.float32(0.1)}
  w = {'cls': 1.0, 'loc': 2.0, 'con': jnp.float32(0.5) * 10}
  np.testing.assert_allclose(losses.total_loss(terms, w), 2.0 + 1.0 + 0.5, rtol=1e-6)
  with pytest.raises(KeyError, match='con'):
    losses.total_loss(terms, {'cls': 1.0, 'loc': 1.0})
