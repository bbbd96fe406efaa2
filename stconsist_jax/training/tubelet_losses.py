"""Loss terms of the dense tubelet head: focal class loss, L1 and GIoU box losses, per-frame
presence BCE, and CSD's flip consistency on the dense outputs; pure jax.numpy functions.

Notation: logits (B, h, w, C + 1) (index 0 background), boxes (B, h, w, K, 4) in the
contract's (dx, dy, bw, bh) form; targets from `tubelet_targets`. All sums run over the
whole (global) batch.

- tubelet_cls: softmax focal loss at every location of the `dense_labeled` clips,
  FL = -(1 - p_t)^gamma log p_t with p_t the softmax probability of the target class
  (0 at background cells), summed and divided by max(number of positive cells, 1);
  gamma = `loss.focal_gamma`, 0 = cross-entropy. No alpha balancing.
- tubelet_box: L1 on the four numbers (dx, dy, bw, bh): sum over positive cells and
  the output frames where their actor is present (`box_mask`) of sum_c |pred_c - target_c|,
  divided by max(number of such (cell, frame) pairs, 1) (DETR's form: summed over the 4
  numbers, averaged over boxes).
- tubelet_giou: the mean of 1 - GIoU over the same (cell, frame) pairs, on corner boxes
  decoded from the offsets: centre ((j + 0.5 + dx) / w, (i + 0.5 + dy) / h), size (bw, bh).
- tubelet_presence (only for a head with the presence output, presence logits
  (B, h, w, K)): sigmoid binary cross-entropy of the logit z against the target y =
  `box_mask` (the cell's actor is present at output frame k), -(y log s(z) + (1 - y)
  log(1 - s(z))), summed over the positive cells of the `dense_labeled` clips and all K
  of their frames, divided by max(positives * K, 1) (0 when there is no positive cell).
  Background cells have no presence target. It has no flip-consistency term: presence
  is learnt from the labelled clips only (a mirrored squared difference of the presence
  probabilities on CSD's kept locations would be the natural one, left out for now).
- con_dense_cls, con_dense_box (CSD-SSD's `train_csd.py` on dense locations): the flipped
  clip's outputs are brought to the original's cells by reversing the w axis (cell (i, j)
  of the clip meets cell (i, w - 1 - j) of the flipped clip); no sign changes. Background
  elimination keeps the locations where the clip's (not the flipped clip's) best
  foreground probability exceeds its background probability (no gradient through the
  choice). With p, q the softmax probabilities of the clip and of the mirrored flipped
  clip, eps = 1e-7:
    con_dense_cls = mean over kept locations of
      (KL(sg(q) + eps || p + eps) + KL(sg(p) + eps || q + eps)) / 2, KLs summed over classes;
    con_dense_box = mean over kept locations and the K frames of
      ((dx + dx')^2 + (dy - dy')^2 + (bw - bw')^2 + (bh - bh')^2) / 4,
  where (dx', dy', bw', bh') is the flipped clip's raw output at the mirrored cell (the
  sign of dx' NOT changed, as CSD-SSD's loc_flip), so dx + dx' = 0 when the two
  predictions mirror each other exactly. The means run over the kept locations of the
  whole batch (CSD-SSD's mean over its batch's kept anchors); both terms are 0, with a
  zero gradient, when no location is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from stconsist_jax.core import errors
from stconsist_jax.training import losses
from stconsist_jax.training import tubelet_targets as targets_lib

Array = jax.Array

# Model output keys of the dense head (contract).
TUBELET_LOGITS = 'tubelet_logits'
TUBELET_BOXES = 'tubelet_boxes'
TUBELET_PRESENCE = 'tubelet_presence'
ACTOR_KEYS = ('actor_boxes', 'actor_present', 'actor_labels', 'dense_labeled')
CSD_EPS = 1e-7
_GIOU_EPS = 1e-7


def focal_loss(logits: Array, cls_target: Array, labeled: Array, gamma: float) -> Array:
  """Softmax focal loss summed over the locations of labeled clips / max(positives, 1).

  Args:
    logits: (B, h, w, C + 1).
    cls_target: (B, h, w) int, 0 = background.
    labeled: (B,) bool, the clips whose dense targets are known.
    gamma: focusing parameter >= 0 (0: cross-entropy).
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_pt = jnp.take_along_axis(log_p, cls_target[..., None].astype(jnp.int32), axis=-1)[..., 0]
  per_location = -log_pt
  if gamma > 0:
    # 1 - p_t from log p_t without cancellation; floored so that (1 - p_t)^gamma keeps a
    # finite gradient for gamma < 1 when p_t rounds to 1.
    one_minus = jnp.maximum(-jnp.expm1(log_pt), 1e-12)
    per_location = jnp.power(one_minus, gamma) * per_location
  mask = jnp.asarray(labeled, bool)[:, None, None]
  positives = jnp.sum(((cls_target > 0) & mask).astype(jnp.float32))
  return jnp.sum(jnp.where(mask, per_location, 0.0)) / jnp.maximum(positives, 1.0)


def box_l1(pred: Array, target: Array, mask: Array) -> Array:
  """sum over masked (cell, frame) pairs of the L1 over the 4 numbers / max(pairs, 1).

  Unmasked pairs get neither value nor gradient (even with NaN targets there).
  """
  diff = jnp.where(mask[..., None], pred.astype(jnp.float32) - target.astype(jnp.float32), 0.0)
  count = jnp.sum(mask.astype(jnp.float32))
  return jnp.sum(jnp.abs(diff)) / jnp.maximum(count, 1.0)


def presence_loss(logits: Array, target: Array, positive: Array) -> Array:
  """Mean sigmoid BCE of presence logits (B, h, w, K) against bool targets (B, h, w, K)
  over the K frames of the `positive` (B, h, w) cells (0 when none)."""
  logits = logits.astype(jnp.float32)
  # -(y log s(z) + (1 - y) log(1 - s(z))) = softplus(z) - y z, stable for any z.
  per_pair = jax.nn.softplus(logits) - target.astype(jnp.float32) * logits
  mask = jnp.broadcast_to(positive[..., None], logits.shape)
  count = jnp.sum(mask.astype(jnp.float32))
  return jnp.sum(jnp.where(mask, per_pair, 0.0)) / jnp.maximum(count, 1.0)


def decode_corners(offsets: Array) -> Array:
  """(B, h, w, K, 4) (dx, dy, bw, bh) -> normalized corners (x1, y1, x2, y2), unclipped."""
  h, w = offsets.shape[1], offsets.shape[2]
  offsets = offsets.astype(jnp.float32)
  rows = jnp.arange(h, dtype=jnp.float32)[:, None, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :, None]
  cx = (cols + 0.5 + offsets[..., 0]) / w
  cy = (rows + 0.5 + offsets[..., 1]) / h
  half_w, half_h = offsets[..., 2] / 2, offsets[..., 3] / 2
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def generalized_iou(a: Array, b: Array) -> Array:
  """GIoU of corner boxes (..., 4), elementwise; boxes of non-positive size have area 0.

  GIoU = IoU - (C - U) / C with U the union and C the area of the smallest enclosing box;
  a small epsilon in both denominators keeps degenerate pairs finite.
  """

  def area(box):
    return jnp.maximum(box[..., 2] - box[..., 0], 0.0) * jnp.maximum(box[..., 3] - box[..., 1], 0.0)

  lo = jnp.maximum(a[..., :2], b[..., :2])
  hi = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.maximum(hi - lo, 0.0), axis=-1)
  union = area(a) + area(b) - inter
  enclose = jnp.prod(
    jnp.maximum(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]), 0.0),
    axis=-1,
  )
  return inter / (union + _GIOU_EPS) - (enclose - union) / (enclose + _GIOU_EPS)


def giou_loss(pred: Array, target: Array, mask: Array) -> Array:
  """Mean of 1 - GIoU over masked (cell, frame) pairs of decoded offsets (0 when none)."""
  target = jnp.where(mask[..., None], target.astype(jnp.float32), 0.0)
  per_pair = 1.0 - generalized_iou(decode_corners(pred), decode_corners(target))
  count = jnp.sum(mask.astype(jnp.float32))
  return jnp.sum(jnp.where(mask, per_pair, 0.0)) / jnp.maximum(count, 1.0)


def foreground_mask(logits: Array) -> Array:
  """CSD's background elimination: (B, h, w) bool, max_c>0 p_c > p_0 (no gradient)."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
  return jnp.max(probs[..., 1:], axis=-1) > probs[..., 0]


def dense_consistency(
  logits: Array, boxes: Array, logits_flip: Array, boxes_flip: Array, eps: float = CSD_EPS
) -> tuple[Array, Array]:
  """(con_dense_cls, con_dense_box), see the module docstring.

  Args:
    logits, boxes: the clip's dense outputs (B, h, w, C + 1) and (B, h, w, K, 4).
    logits_flip, boxes_flip: the flipped clip's outputs as the model gave them (not
      mirrored): this function reverses their w axis.
    eps: added to both probability vectors (CSD-SSD's 1e-7).
  """
  keep = foreground_mask(logits)
  kept = jnp.sum(keep.astype(jnp.float32))
  denominator = jnp.maximum(kept, 1.0)
  q_logits = targets_lib.mirror_map(logits_flip.astype(jnp.float32))
  per_location = losses.csd_consistency(logits.astype(jnp.float32), q_logits, eps=eps)
  cls = jnp.sum(jnp.where(keep, per_location, 0.0)) / denominator
  mirrored = targets_lib.mirror_map(boxes_flip.astype(jnp.float32))
  boxes = boxes.astype(jnp.float32)
  # (dx + dx') for the raw flipped offset: the x offset changes sign under the mirror.
  diff = jnp.concatenate(
    [boxes[..., :1] + mirrored[..., :1], boxes[..., 1:] - mirrored[..., 1:]], -1
  )
  per_frame = jnp.mean(jnp.square(diff), axis=-1)  # (B, h, w, K)
  per_location_box = jnp.mean(per_frame, axis=-1)
  box = jnp.sum(jnp.where(keep, per_location_box, 0.0)) / denominator
  return cls, box


def tubelet_loss_terms(
  out: Mapping[str, Array],
  out_flip: Mapping[str, Array],
  batch: Mapping[str, Any],
  focal_gamma: float,
) -> dict[str, Array]:
  """The five dense terms of a batch: tubelet_cls, tubelet_box, tubelet_giou,
  con_dense_cls, con_dense_box; and tubelet_presence when `out` holds `tubelet_presence`.

  `out` and `out_flip` hold the contract's `tubelet_logits` and `tubelet_boxes` of the
  clips and of their flipped copies (student or teacher); the batch the actor fields.
  """
  missing = [k for k in ACTOR_KEYS if k not in batch]
  if missing:
    raise errors.UserError(
      f'the tubelet head needs actor fields in the batch (missing {missing}): '
      'set config.data.max_actors > 0'
    )
  logits = out[TUBELET_LOGITS].astype(jnp.float32)
  boxes = out[TUBELET_BOXES].astype(jnp.float32)
  _, h, w, k, _ = boxes.shape
  t = targets_lib.batch_targets(batch, (h, w), k)
  con_cls, con_box = dense_consistency(
    logits, boxes, out_flip[TUBELET_LOGITS], out_flip[TUBELET_BOXES]
  )
  terms = {
    'tubelet_cls': focal_loss(logits, t.cls, batch['dense_labeled'], focal_gamma),
    'tubelet_box': box_l1(boxes, t.boxes, t.box_mask),
    'tubelet_giou': giou_loss(boxes, t.boxes, t.box_mask),
    'con_dense_cls': con_cls,
    'con_dense_box': con_box,
  }
  if TUBELET_PRESENCE in out:
    # `positive` is already False outside the dense_labeled clips (tubelet_targets).
    terms[TUBELET_PRESENCE] = presence_loss(out[TUBELET_PRESENCE], t.box_mask, t.positive)
  return terms
