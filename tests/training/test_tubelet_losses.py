"""Tests of the dense tubelet losses against numpy and PyTorch references and hand values.

The dense consistency is checked against a PyTorch replica of CSD-SSD's train_csd.py
(its per-anchor computation, one anchor per location for the classes and per location
and frame for the boxes), values and gradients.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax as np_log_softmax

from stconsist_jax.core import errors
from stconsist_jax.training import tubelet_losses as tl


def _rng(seed=0):
  return np.random.default_rng(seed)


focal = jax.jit(tl.focal_loss, static_argnums=3)


# --------------------------------------------------------------------------- focal loss


def _focal_reference(logits, target, labeled, gamma):
  log_p = np_log_softmax(logits.astype(np.float64), axis=-1)
  total, positives = 0.0, 0
  for b, i, j in np.ndindex(*target.shape):
    if not labeled[b]:
      continue
    lp = log_p[b, i, j, target[b, i, j]]
    total += -((1 - np.exp(lp)) ** gamma) * lp
    positives += int(target[b, i, j] > 0)
  return total / max(positives, 1)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
def test_focal_loss_matches_numpy(gamma):
  rng = _rng(1)
  logits = (rng.normal(size=(3, 2, 3, 4)) * 2).astype(np.float32)
  target = rng.integers(0, 4, (3, 2, 3))
  target[:, 0] = 0  # plenty of background
  labeled = np.array([True, False, True])
  got = focal(logits, target, labeled, gamma)
  np.testing.assert_allclose(got, _focal_reference(logits, target, labeled, gamma), rtol=1e-5)


def test_focal_loss_gamma_0_is_cross_entropy_over_positives_and_masks_clips():
  # One clip, 1x2 map, classes (bg, a): logits give p = (0.5, 0.5) and (0.2, 0.8);
  # targets: bg at cell 0, class a at cell 1 -> (-log 0.5 - log 0.8) / 1 positive.
  logits = np.log(np.array([[[[0.5, 0.5], [0.2, 0.8]]]], np.float32))
  target = np.array([[[0, 1]]])
  got = focal(logits, target, np.array([True]), 0.0)
  np.testing.assert_allclose(got, -math.log(0.5) - math.log(0.8), rtol=1e-6)
  # gamma 2: (1 - 0.5)^2 (-log 0.5) + (1 - 0.8)^2 (-log 0.8).
  got2 = focal(logits, target, np.array([True]), 2.0)
  np.testing.assert_allclose(got2, -0.25 * math.log(0.5) - 0.04 * math.log(0.8), rtol=1e-5)
  g = jax.jit(jax.grad(lambda x: tl.focal_loss(x, target, np.array([False]), 2.0)))(logits)
  assert float(focal(logits, target, np.array([False]), 2.0)) == 0.0
  np.testing.assert_array_equal(g, 0.0)


def test_focal_loss_gradient_is_finite_for_a_certain_prediction():
  logits = np.array([[[[60.0, 0.0]]]], np.float32)  # p_t rounds to 1
  for gamma in (0.5, 2.0):
    g = jax.jit(
      jax.grad(lambda x, gamma=gamma: tl.focal_loss(x, np.zeros((1, 1, 1), int), [True], gamma))
    )(logits)
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- L1, GIoU


def test_box_l1_sums_four_numbers_and_averages_pairs():
  rng = _rng(2)
  pred = rng.normal(size=(2, 2, 2, 3, 4)).astype(np.float32)
  target = rng.normal(size=(2, 2, 2, 3, 4)).astype(np.float32)
  mask = rng.random((2, 2, 2, 3)) < 0.4
  target[~mask] = np.nan  # no target there must not leak
  want = np.abs(pred - target)[mask].sum() / mask.sum()
  np.testing.assert_allclose(tl.box_l1(pred, target, mask), want, rtol=1e-5)
  g = np.asarray(jax.grad(lambda p: tl.box_l1(p, target, mask))(pred))
  np.testing.assert_array_equal(g[~mask], 0.0)
  np.testing.assert_allclose(g[mask], np.sign(pred - target)[mask] / mask.sum(), rtol=1e-6)


def test_generalized_iou_hand_values():
  a = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
  # Disjoint: IoU 0, union 2, enclosing 3 x 1 -> GIoU = -(3 - 2) / 3.
  np.testing.assert_allclose(
    tl.generalized_iou(a, np.array([2.0, 0.0, 3.0, 1.0])), -1 / 3, rtol=1e-5
  )
  # Overlap: inter 0.5, union 1.5, enclosing 1.5 x 1 -> GIoU = 1/3 - 0.
  np.testing.assert_allclose(
    tl.generalized_iou(a, np.array([0.5, 0.0, 1.5, 1.0])), 1 / 3, rtol=1e-5
  )
  np.testing.assert_allclose(tl.generalized_iou(a, a), 1.0, rtol=1e-6)


def test_decode_corners_by_hand():
  # 2x4 map, cell (1, 2), dx = 0.5, dy = -0.5: centre ((2 + 0.5 + 0.5) / 4, (1 + 0.5 - 0.5) / 2)
  # = (0.75, 0.5), size (0.2, 0.4) -> (0.65, 0.3, 0.85, 0.7).
  offsets = np.zeros((1, 2, 4, 1, 4), np.float32)
  offsets[0, 1, 2, 0] = [0.5, -0.5, 0.2, 0.4]
  got = np.asarray(tl.decode_corners(offsets))[0, 1, 2, 0]
  np.testing.assert_allclose(got, [0.65, 0.3, 0.85, 0.7], atol=1e-6)


def test_giou_loss_mean_over_masked_pairs_with_finite_gradient():
  pred = np.zeros((1, 1, 2, 2, 4), np.float32)  # zero-size predictions are allowed
  target = np.zeros_like(pred)
  # Cell (0, 0), frame 0: the predicted box equals the target -> 1 - GIoU = 0; frame 1:
  # target and prediction disjoint on the 1x2 map as in the hand value above.
  pred[0, 0, 0, 0] = target[0, 0, 0, 0] = [0.1, 0.0, 0.3, 0.5]
  # Centre x = (0.5 + dx) / 2 on the 1x2 map: prediction x in [0, 0.5], target x in
  # [1, 1.5], both y in [0, 1]: IoU 0, union 1, enclosing 1.5 -> 1 - GIoU = 1 + 0.5 / 1.5.
  pred[0, 0, 0, 1] = [-0.25, 0.0, 0.5, 1.0]
  target[0, 0, 0, 1] = [1.75, 0.0, 0.5, 1.0]
  mask = np.array([[[[True, True], [False, False]]]])
  want = (0.0 + (1.0 + 0.5 / 1.5)) / 2
  np.testing.assert_allclose(jax.jit(tl.giou_loss)(pred, target, mask), want, rtol=1e-5)
  g = np.asarray(jax.jit(jax.grad(lambda p: tl.giou_loss(p, target, mask)))(pred))
  assert np.all(np.isfinite(g)) and np.all(g[0, 0, 1] == 0)


# ----------------------------------------------------------------- dense consistency


def _csd_ssd_replica(logits, boxes, logits_flip, boxes_flip):
  """CSD-SSD train_csd.py's consistency, in PyTorch, on (N, h, w, C) / (N, h, w, K, 4).

  As in csd.py, the flipped outputs are flipped on the width axis (no sign change) and
  the classes soft-maxed; then train_csd.py's sampling, KLDivLoss and loc terms.
  """
  import torch  # pylint: disable=g-import-not-at-top

  n, _, _, c = logits.shape
  k = boxes.shape[3]
  t = {
    name: torch.tensor(v, dtype=torch.float64, requires_grad=True)
    for name, v in dict(
      logits=logits, boxes=boxes, logits_flip=logits_flip, boxes_flip=boxes_flip
    ).items()
  }
  conf = torch.softmax(t['logits'].reshape(n, -1, c), dim=-1)
  conf_flip = torch.softmax(torch.flip(t['logits_flip'], [2]).reshape(n, -1, c), dim=-1)
  loc = t['boxes'].reshape(n, -1, 4)  # anchor = (location, frame)
  loc_flip = torch.flip(t['boxes_flip'], [2]).reshape(n, -1, 4)
  each_val, _ = torch.max(conf[:, :, 1:], dim=2)
  mask_val = (each_val > conf[:, :, 0]).data
  mask_conf = mask_val.unsqueeze(2).expand_as(conf)
  mask_loc = mask_val.repeat_interleave(k, dim=1).unsqueeze(2).expand_as(loc)
  conf_sampled = conf[mask_conf].view(-1, c)
  conf_sampled_flip = conf_flip[mask_conf].view(-1, c)
  loc_sampled = loc[mask_loc].view(-1, 4)
  loc_sampled_flip = loc_flip[mask_loc].view(-1, 4)
  criterion = torch.nn.KLDivLoss(reduction='none')
  conf_sampled_flip = conf_sampled_flip + 1e-7
  conf_sampled = conf_sampled + 1e-7
  loss_a = criterion(conf_sampled.log(), conf_sampled_flip.detach()).sum(-1).mean()
  loss_b = criterion(conf_sampled_flip.log(), conf_sampled.detach()).sum(-1).mean()
  con_cls = (loss_a + loss_b) / 2
  x = torch.mean((loc_sampled[:, 0] + loc_sampled_flip[:, 0]) ** 2)
  y = torch.mean((loc_sampled[:, 1] - loc_sampled_flip[:, 1]) ** 2)
  w = torch.mean((loc_sampled[:, 2] - loc_sampled_flip[:, 2]) ** 2)
  h = torch.mean((loc_sampled[:, 3] - loc_sampled_flip[:, 3]) ** 2)
  con_box = (x + y + w + h) / 4
  grads = torch.autograd.grad(con_cls + con_box, list(t.values()))
  kept = int(mask_val.sum())
  return con_cls.item(), con_box.item(), [g.numpy() for g in grads], kept


def _random_dense(seed, n=2, h=3, w=4, c=4, k=2):
  rng = _rng(seed)
  logits = rng.normal(size=(n, h, w, c)).astype(np.float32) * 1.5
  logits[..., 0] += 0.5  # some locations are background, some not
  boxes = rng.normal(size=(n, h, w, k, 4)).astype(np.float32) * 0.5
  logits_flip = rng.normal(size=(n, h, w, c)).astype(np.float32) * 1.5
  boxes_flip = rng.normal(size=(n, h, w, k, 4)).astype(np.float32) * 0.5
  return logits, boxes, logits_flip, boxes_flip


def test_dense_consistency_matches_a_replica_of_csd_ssd():
  pytest.importorskip('torch')
  values = jax.jit(tl.dense_consistency)
  grads = jax.jit(jax.grad(lambda *a: sum(tl.dense_consistency(*a)), argnums=(0, 1, 2, 3)))
  for seed in range(3):
    args = _random_dense(seed)
    want_cls, want_box, want_grads, kept = _csd_ssd_replica(*args)
    assert 0 < kept < 24  # elimination keeps some, drops some
    got_cls, got_box = values(*args)
    np.testing.assert_allclose(got_cls, want_cls, rtol=1e-5)
    np.testing.assert_allclose(got_box, want_box, rtol=1e-5)
    got_grads = grads(*args)
    for got, want in zip(got_grads, want_grads):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_dense_consistency_is_exactly_zero_for_mirrored_outputs():
  logits, boxes, _, _ = _random_dense(4)
  logits_flip = logits[:, :, ::-1]
  boxes_flip = boxes[:, :, ::-1].copy()
  boxes_flip[..., 0] *= -1  # the flipped clip's raw dx' = -dx
  assert tl.foreground_mask(logits).any()
  con_cls, con_box = jax.jit(tl.dense_consistency)(logits, boxes, logits_flip, boxes_flip)
  assert float(con_cls) == 0.0 and float(con_box) == 0.0


def test_dense_consistency_by_hand_on_a_1x2_map():
  # Classes (bg, a), K = 1. The clip: cell 0 p = (0.25, 0.75) (kept), cell 1 p = (0.8, 0.2)
  # (background, dropped). The flipped clip's cell 1 mirrors onto cell 0: q = (0.5, 0.5).
  # KL(q || p) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3) = 0.143841;
  # KL(p || q) = 0.25 ln 0.5 + 0.75 ln 1.5 = 0.130812; mean of the two: 0.137327.
  # Boxes: cell 0 (0.1, 0.2, 0.3, 0.4), flipped cell 1 raw (0.1, 0.0, 0.3, 0.6):
  # ((0.1 + 0.1)^2 + (0.2 - 0)^2 + 0 + (0.4 - 0.6)^2) / 4 = 0.12 / 4 = 0.03.
  logits = np.log(np.array([[[[0.25, 0.75], [0.8, 0.2]]]], np.float32))
  logits_flip = np.log(np.array([[[[0.9, 0.1], [0.5, 0.5]]]], np.float32))
  boxes = np.zeros((1, 1, 2, 1, 4), np.float32)
  boxes_flip = np.zeros((1, 1, 2, 1, 4), np.float32)
  boxes[0, 0, 0, 0] = [0.1, 0.2, 0.3, 0.4]
  boxes[0, 0, 1, 0] = [5.0, 5.0, 5.0, 5.0]  # at a dropped location: no effect
  boxes_flip[0, 0, 1, 0] = [0.1, 0.0, 0.3, 0.6]
  con_cls, con_box = jax.jit(tl.dense_consistency)(logits, boxes, logits_flip, boxes_flip)
  hand = (0.5 * math.log(4 / 3) + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
  assert abs(hand - 0.137327) < 1e-6
  np.testing.assert_allclose(con_cls, hand, rtol=1e-5)
  np.testing.assert_allclose(con_box, 0.03, rtol=1e-5)


def test_dense_consistency_is_zero_with_zero_gradient_when_nothing_is_kept():
  logits, boxes, logits_flip, boxes_flip = _random_dense(5)
  logits[..., 0] = 50.0  # background everywhere
  assert not tl.foreground_mask(logits).any()
  values = jax.jit(tl.dense_consistency)(logits, boxes, logits_flip, boxes_flip)
  assert [float(v) for v in values] == [0.0, 0.0]
  grads = jax.jit(jax.grad(lambda *a: sum(tl.dense_consistency(*a)), argnums=(0, 1, 2, 3)))(
    logits, boxes, logits_flip, boxes_flip
  )
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


# --------------------------------------------------------------------------- the terms


def _batch_with_one_actor():
  # T = 3, K = 1 (p0 = 1), 1x2 map; actor of class 0 centred in cell 1 at frame 1.
  boxes = np.zeros((1, 3, 1, 4), np.float32)
  boxes[0, 1, 0] = [0.6, 0.25, 0.2, 0.5]  # centre (0.7, 0.5): dx = 1.4 - 1.5 = -0.1, dy = 0
  return {
    'actor_boxes': boxes,
    'actor_present': np.array([[[False], [True], [False]]]),
    'actor_labels': np.array([[0]], np.int32),
    'dense_labeled': np.array([True]),
  }


def test_tubelet_loss_terms_by_hand():
  logits = np.log(np.array([[[[0.5, 0.5], [0.2, 0.8]]]], np.float32))
  boxes = np.zeros((1, 1, 2, 1, 4), np.float32)
  boxes[0, 0, 1, 0] = [0.1, 0.0, 0.2, 0.5]  # L1 |0.1 - (-0.1)| = 0.2
  out = {'tubelet_logits': jnp.asarray(logits), 'tubelet_boxes': jnp.asarray(boxes)}
  out_flip = {
    'tubelet_logits': jnp.asarray(logits[:, :, ::-1]),
    'tubelet_boxes': jnp.asarray(boxes),
  }
  terms = jax.jit(tl.tubelet_loss_terms, static_argnums=3)(
    out, out_flip, _batch_with_one_actor(), 0.0
  )
  assert sorted(terms) == sorted(
    ['tubelet_cls', 'tubelet_box', 'tubelet_giou', 'con_dense_cls', 'con_dense_box']
  )
  np.testing.assert_allclose(terms['tubelet_cls'], -math.log(0.5) - math.log(0.8), rtol=1e-5)
  np.testing.assert_allclose(terms['tubelet_box'], 0.2, rtol=1e-5)
  # Boxes x in [0.6, 0.8] (target) and [0.7, 0.9] (prediction), same y extent 0.5:
  # IoU = 0.05 / 0.15 = 1/3, enclosing = union -> 1 - GIoU = 2/3.
  np.testing.assert_allclose(terms['tubelet_giou'], 2 / 3, rtol=1e-5)
  # Kept: cell 1 only (p = (0.2, 0.8) there; cell 0 is a tie, not kept); the flip's
  # logits mirror these exactly; box: dx + dx' = 0.1 + 0 at cell 1 (flip's cell 0 has zeros)
  # and bw, bh differ by 0.2, 0.5: (0.01 + 0 + 0.04 + 0.25) / 4.
  assert float(terms['con_dense_cls']) == 0.0
  np.testing.assert_allclose(terms['con_dense_box'], 0.3 / 4, rtol=1e-5)


def test_tubelet_loss_terms_need_actor_fields():
  out = {'tubelet_logits': jnp.zeros((1, 1, 2, 2)), 'tubelet_boxes': jnp.zeros((1, 1, 2, 1, 4))}
  with pytest.raises(errors.UserError, match='data.max_actors'):
    tl.tubelet_loss_terms(out, out, {'dense_labeled': np.array([True])}, 2.0)


# ---------------------------------------------------------------------------- presence


def test_presence_loss_by_hand_on_a_1x2_map():
  # K = 2. Cell 1 is positive, its actor present on frame 0 only; cell 0 is background
  # (no presence target: its logits, whatever they are, add nothing).
  # Cell 1's logits give s = 0.8 (frame 0) and 0.25 (frame 1):
  # BCE = (-log 0.8 - log(1 - 0.25)) / 2 pairs.
  logits = np.array([[[[-7.0, 9.0], [math.log(4.0), math.log(1 / 3)]]]], np.float32)
  target = np.array([[[[False, False], [True, False]]]])
  positive = np.array([[[False, True]]])
  got = jax.jit(tl.presence_loss)(logits, target, positive)
  np.testing.assert_allclose(got, (-math.log(0.8) - math.log(0.75)) / 2, rtol=1e-6)
  # No positive cell: 0, and no gradient.
  none = np.zeros_like(positive)
  assert float(jax.jit(tl.presence_loss)(logits, target, none)) == 0.0
  g = jax.jit(jax.grad(tl.presence_loss))(logits, target, none)
  np.testing.assert_array_equal(g, 0.0)
  # Only the positive cell's logits get a gradient: (s - y) / pairs.
  g = np.asarray(jax.jit(jax.grad(tl.presence_loss))(logits, target, positive))
  np.testing.assert_allclose(g[0, 0, 1], [(0.8 - 1) / 2, 0.25 / 2], rtol=1e-5)
  np.testing.assert_array_equal(g[0, 0, 0], 0.0)


def test_presence_term_targets_the_actors_frames_in_labelled_clips():
  # T = K = 2 (p0 = 0), 1x2 map. Clip 0: an actor centred in cell 1 at frame 0 (absent at
  # frame 1): presence targets (True, False) at cell 1. Clip 1 has the same actor but is
  # not dense_labeled: no term. Presence logits as the previous test's at cell 1.
  boxes = np.zeros((2, 2, 1, 4), np.float32)
  boxes[:, 0, 0] = [0.6, 0.25, 0.2, 0.5]  # centre (0.7, 0.5): cell (0, 1)
  batch = {
    'actor_boxes': boxes,
    'actor_present': np.array([[[True], [False]]] * 2),
    'actor_labels': np.array([[0], [0]], np.int32),
    'dense_labeled': np.array([True, False]),
  }
  presence = np.zeros((2, 1, 2, 2), np.float32)
  presence[0, 0, 1] = [math.log(4.0), math.log(1 / 3)]
  presence[1] = 3.0  # the unlabelled clip: no target
  out = {
    'tubelet_logits': jnp.zeros((2, 1, 2, 2)),
    'tubelet_boxes': jnp.zeros((2, 1, 2, 2, 4)),
    'tubelet_presence': jnp.asarray(presence),
  }
  terms = jax.jit(tl.tubelet_loss_terms, static_argnums=3)(out, out, batch, 0.0)
  assert sorted(terms) == sorted(
    ['tubelet_cls', 'tubelet_box', 'tubelet_giou', 'con_dense_cls', 'con_dense_box']
    + ['tubelet_presence']
  )
  np.testing.assert_allclose(
    terms['tubelet_presence'], (-math.log(0.8) - math.log(0.75)) / 2, rtol=1e-6
  )
