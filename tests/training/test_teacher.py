"""Tests of the mean teacher's update rule against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np

from stconsist_jax.training import teacher


def test_ema_update_matches_hand_computation():
  old = {
    'params': {'w': jnp.array([1.0, 2.0]), 'b': jnp.array(4.0)},
    'batch_stats': {'mean': jnp.array([0.0, 10.0])},
  }
  new = {
    'params': {'w': jnp.array([3.0, -2.0]), 'b': jnp.array(0.0)},
    'batch_stats': {'mean': jnp.array([1.0, 0.0])},
  }
  out = teacher.ema_update(old, new, 0.75)
  # 0.75 * old + 0.25 * new, worked out by hand.
  np.testing.assert_allclose(out['params']['w'], [1.5, 1.0])
  np.testing.assert_allclose(out['params']['b'], 3.0)
  np.testing.assert_allclose(out['batch_stats']['mean'], [0.25, 7.5])


def test_ema_update_over_steps_and_under_jit():
  update = jax.jit(teacher.ema_update)
  t = {'w': jnp.array(0.0)}
  for _ in range(3):
    t = update(t, {'w': jnp.array(8.0)}, jnp.float32(0.5))
  # 0 -> 4 -> 6 -> 7: each step halves the distance to the student's 8.
  np.testing.assert_allclose(t['w'], 7.0)
  same = teacher.ema_update({'w': jnp.array(2.0)}, {'w': jnp.array(9.0)}, 1.0)
  np.testing.assert_allclose(same['w'], 2.0)  # decay 1: the teacher never moves.
