"""Loss terms of consistency-based semi-supervised action localization.

Pure jax.numpy functions of arrays (no TensorFlow): classification cross-entropy, masked
box regression, the flip-consistency terms (Jensen-Shannon or the CSD-SSD variant, and
the mirrored box term), the consistency ramp w(t) and the weighted total.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
Scalar = float | Array

CLASSIFICATION_CONSISTENCY_KINDS = ('js', 'csd')


def softmax_cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
  """Weighted mean of the softmax cross-entropy.

  Args:
    logits: `(N, K)` unnormalized class scores.
    labels: `(N,)` integer class indices in `[0, K)`.
    weights: optional `(N,)` per-example weights (e.g. the eval `valid` mask); the
      result is `sum(w * ce) / max(sum(w), tiny)`, so an all-zero weight vector gives 0.

  Returns:
    A scalar.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  labels = labels.astype(jnp.int32)
  ce = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  if weights is None:
    return jnp.mean(ce)
  weights = weights.astype(jnp.float32)
  return jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1e-12)


def box_mse(pred: Array, target: Array, mask: Array) -> Array:
  """Mean over clips with a box of the mean squared error over the 4 box numbers.

  Clips where `mask` is false contribute neither value nor gradient. When no clip has a
  box the result is exactly 0 with a zero (finite) gradient.

  Args:
    pred: `(N, 4)` predicted boxes.
    target: `(N, 4)` target boxes (anything where `mask` is false).
    mask: `(N,)` bool, whether the clip has a box target.
  """
  mask_f = mask.astype(jnp.float32)
  # The difference is masked before squaring (not the square after) so that garbage
  # targets on masked rows, even NaN, reach neither the value nor the gradient.
  diff = jnp.where(mask[:, None], pred.astype(jnp.float32) - target.astype(jnp.float32), 0.0)
  per_clip = jnp.mean(jnp.square(diff), axis=-1)
  return jnp.sum(per_clip) / jnp.maximum(jnp.sum(mask_f), 1.0)


def _kl(p: Array, log_p: Array, log_q: Array) -> Array:
  """KL(p || q) summed over the last axis, with 0 log 0 = 0."""
  return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def js_divergence(logits_p: Array, logits_q: Array) -> Array:
  """Jensen-Shannon divergence (natural log) between softmax(p) and softmax(q).

  JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2; in [0, log 2].

  Returns:
    `(N,)` per-example divergences.
  """
  log_p = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  # log m computed stably from the log-probabilities.
  log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
  return 0.5 * _kl(p, log_p, log_m) + 0.5 * _kl(q, log_q, log_m)


def csd_consistency(logits_p: Array, logits_q: Array, eps: float = 1e-7) -> Array:
  """The CSD-SSD classification consistency: 1/2 (KL(q || p) + KL(p || q)).

  As in the CSD-SSD code: `eps` is added to both probability vectors (without
  renormalizing) and the target side of each KL is under stop_gradient, so
  KL(sg(q) || p) sends gradient only to p and KL(sg(p) || q) only to q.

  Returns:
    `(N,)` per-example values.
  """
  p = jax.nn.softmax(logits_p.astype(jnp.float32), axis=-1) + eps
  q = jax.nn.softmax(logits_q.astype(jnp.float32), axis=-1) + eps
  p_t, q_t = jax.lax.stop_gradient(p), jax.lax.stop_gradient(q)
  kl_q_p = jnp.sum(q_t * (jnp.log(q_t) - jnp.log(p)), axis=-1)
  kl_p_q = jnp.sum(p_t * (jnp.log(p_t) - jnp.log(q)), axis=-1)
  return 0.5 * (kl_q_p + kl_p_q)


def classification_consistency(
  logits: Array, logits_flip: Array, kind: str = 'js', eps: float = 1e-7
) -> Array:
  """Per-example classification consistency of the chosen `kind` ('js' or 'csd')."""
  if kind == 'js':
    return js_divergence(logits, logits_flip)
  if kind == 'csd':
    return csd_consistency(logits, logits_flip, eps=eps)
  raise ValueError(
    f'loss consistency kind: expected one of {CLASSIFICATION_CONSISTENCY_KINDS}, found {kind!r}'
  )


def box_consistency(boxes: Array, boxes_flip: Array) -> Array:
  """Localization consistency between a clip's box and its flipped copy's box.

  Boxes are `(x_left, y_top, w, h)`; both go to centre form and the flipped centre is
  mirrored back (cx' -> 1 - cx'):
  ((cx - (1 - cx'))^2 + (cy - cy')^2 + (w - w')^2 + (h - h')^2) / 4.

  Returns:
    `(N,)` per-example values.
  """
  boxes = boxes.astype(jnp.float32)
  boxes_flip = boxes_flip.astype(jnp.float32)
  x, y, w, h = jnp.moveaxis(boxes, -1, 0)
  xf, yf, wf, hf = jnp.moveaxis(boxes_flip, -1, 0)
  cx, cy = x + w / 2, y + h / 2
  cxf, cyf = xf + wf / 2, yf + hf / 2
  return (
    jnp.square(cx - (1.0 - cxf)) + jnp.square(cy - cyf) + jnp.square(w - wf) + jnp.square(h - hf)
  ) / 4.0


def consistency_ramp(
  step: int | Array, rampup_steps: int, total_steps: int | None = None, rampdown_steps: int = 0
) -> Array:
  """The consistency weight w(t) of CSD-SSD (its `rampweight`), in steps.

  w(0) = 0; w(t) = exp(-5 (1 - t / T_up)^2) for 0 < t < T_up; else, with
  `rampdown_steps` = T_down > 0 (and `total_steps` = T_end), w(t) =
  exp(-12.5 (1 - (T_end - t) / T_down)^2) for t > T_end - T_down; else 1.
  `rampup_steps` == 0 means no ramp-up: w = 1 from step 0. When the two ramps overlap
  (T_up > T_end - T_down) the ramp-up wins until T_up, as in CSD-SSD's if/elif.

  Args:
    step: the current step (Python int or a traced integer scalar).
    rampup_steps: T_up >= 0.
    total_steps: T_end; required when `rampdown_steps` > 0.
    rampdown_steps: T_down >= 0.

  Returns:
    A float32 scalar in [0, 1].
  """
  if rampup_steps < 0 or rampdown_steps < 0:
    raise ValueError(
      f'consistency ramp: expected rampup_steps >= 0 and '
      f'rampdown_steps >= 0, found {rampup_steps}, {rampdown_steps}'
    )
  if rampdown_steps > 0 and total_steps is None:
    raise ValueError('consistency ramp: rampdown_steps > 0 needs total_steps')
  t = jnp.asarray(step, jnp.float32)
  w = jnp.float32(1.0)
  if rampup_steps > 0:
    up = jnp.exp(-5.0 * jnp.square(1.0 - t / rampup_steps))
    w = jnp.where(t < rampup_steps, up, w)
    w = jnp.where(t <= 0, 0.0, w)
  if rampdown_steps > 0:
    down = jnp.exp(-12.5 * jnp.square(1.0 - (total_steps - t) / rampdown_steps))
    in_rampdown = (t > total_steps - rampdown_steps) & (t >= rampup_steps)
    w = jnp.where(in_rampdown, down, w)
  return w.astype(jnp.float32)


def total_loss(terms: Mapping[str, Array], weights: Mapping[str, Scalar]) -> Array:
  """sum_k weights[k] * terms[k], e.g. L = cls + loc + w(t) * con.

  Every term needs a weight (a float or a traced scalar such as w(t) * lambda_con);
  weights for absent terms are ignored, so one config can serve runs without a term.
  """
  missing = sorted(set(terms) - set(weights))
  if missing:
    raise KeyError(
      f'total_loss: no weight for term(s) {missing}; weights given for {sorted(weights)}'
    )
  total = jnp.float32(0.0)
  for name in sorted(terms):
    total = total + jnp.asarray(weights[name], jnp.float32) * terms[name]
  return total
