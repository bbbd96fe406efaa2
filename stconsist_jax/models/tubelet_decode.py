"""The dense tubelet head's geometry and decoding, in pure jax.numpy (jittable).

Dense outputs `(dx, dy, bw, bh)` per cell and frame -> corner boxes; tubelet overlap; top-N NMS;
with a presence output, the chosen cells' per-frame presence.

Geometry (the tubelet contract): on an h x w map, cell (i, j) and output frame k carry
`(dx, dy, bw, bh)`; the box centre is `((j + 0.5 + dx) / w, (i + 0.5 + dy) / h)` and its
size `(bw, bh)`, all normalized by the frame. A tubelet is the K boxes of one cell.
"""

from typing import Any

import jax
import jax.numpy as jnp

from stconsist_jax.core import boxes as boxes_lib

# Candidates per requested detection when `decode` is not told how many to consider.
CANDIDATES_PER_DETECTION = 4


def output_frames(num_frames: int, tubelet_frames: int) -> tuple[int, int]:
  """`(K, p0)`: the head's output frames (0 = all `num_frames`) and the clip position of the
  first one; the K outputs are the central clip positions p0 .. p0 + K - 1."""
  if not 0 <= tubelet_frames <= num_frames:
    raise ValueError(
      f'tubelet_frames must be in 0..{num_frames} (the clip frames), got {tubelet_frames!r}.'
    )
  k = tubelet_frames or num_frames
  return k, (num_frames - k) // 2


def tubelet_corners(tubelet_boxes: jax.Array, clip: bool = False) -> jax.Array:
  """`(..., h, w, K, 4)` dense `(dx, dy, bw, bh)` -> `(..., h, w, K, 4)` corners
  `(x1, y1, x2, y2)` normalized; `clip` clips them to [0, 1]."""
  h, w = tubelet_boxes.shape[-4:-2]
  cols = jnp.arange(w, dtype=jnp.float32)[:, None]  # (w, 1): broadcasts over K.
  rows = jnp.arange(h, dtype=jnp.float32)[:, None, None]  # (h, 1, 1)
  cx = (cols + 0.5 + tubelet_boxes[..., 0]) / w
  cy = (rows + 0.5 + tubelet_boxes[..., 1]) / h
  half_w, half_h = tubelet_boxes[..., 2] / 2, tubelet_boxes[..., 3] / 2
  corners = jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
  return jnp.clip(corners, 0.0, 1.0) if clip else corners


def tubelet_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Tubelet overlap (ACT's): the mean over the K frames of the per-frame IoU of corner
  boxes `a (..., K, 4)` and `b (..., K, 4)`, broadcast against each other -> `(...)`."""
  return jnp.mean(boxes_lib.iou_corners(a, b, xp=jnp), axis=-1)


def foreground_scores(tubelet_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(..., C + 1)` logits -> (foreground probabilities `(..., C)`, their maximum `(...)`);
  the softmax runs over background (index 0) and the C box classes."""
  probs = jax.nn.softmax(tubelet_logits.astype(jnp.float32), axis=-1)[..., 1:]
  return probs, jnp.max(probs, axis=-1)


def centre_box(tubelet_logits: jax.Array, tubelet_boxes: jax.Array) -> jax.Array:
  """`(N, h, w, C + 1)`, `(N, h, w, K, 4)` -> `(N, 4)` xywh: the box of the location with the
  highest foreground probability at the centre output frame (the mean of the two central
  frames when K is even, as the one-box target averages the clip's two central frames),
  clipped to the frame."""
  n, h, w, k = tubelet_boxes.shape[:4]
  _, best = foreground_scores(tubelet_logits)
  location = jnp.argmax(best.reshape(n, h * w), axis=-1)
  corners = tubelet_corners(tubelet_boxes.astype(jnp.float32), clip=True).reshape(n, h * w, k, 4)
  tubelet = jnp.take_along_axis(corners, location[:, None, None, None], axis=1)[:, 0]
  centre = tubelet[:, (k - 1) // 2 : k // 2 + 1].mean(axis=1)
  return boxes_lib.corners_to_xywh(centre, xp=jnp)


def merge_mirrored(
  dense: dict[str, jax.Array], mirror: dict[str, jax.Array]
) -> dict[str, jax.Array]:
  """The dense outputs of clips, with boxes and presence averaged with those of the clips'
  mirror images (W reversed; flip test-time augmentation).

  Cell (i, j) of a clip meets cell (i, w - 1 - j) of its mirror image, whose boxes come
  back with dx negated (the tubelet contract's geometry: the mirrored centre is 1 - x
  exactly); dy, the sizes and the presence logits are averaged as they are. The class
  logits stay the clip's own: an action's mirror image need not be the same action (on
  data seed 1's split, averaging them too lowered video accuracy for 3 of 5 seeds).
  """
  merged = dict(dense)
  for key in ('tubelet_boxes', 'tubelet_presence'):
    if key not in dense:
      continue
    mirrored = jnp.flip(mirror[key], axis=2)  # (N, h, w, ...): w is axis 2
    if key == 'tubelet_boxes':
      mirrored = mirrored * jnp.array([-1.0, 1.0, 1.0, 1.0], mirrored.dtype)
    merged[key] = (dense[key] + mirrored) / 2
  return merged


def greedy_nms(overlaps: jax.Array, threshold: Any) -> jax.Array:
  """`(N, M, M)` overlaps of M candidates sorted by decreasing score -> `(N, M)` bool kept.

  In score order, a candidate is kept unless a kept higher-scoring one overlaps it by more
  than `threshold`. The M steps are unrolled (M is a few dozen candidates): a `fori_loop`
  closing over the overlaps does not convert to ONNX (jax2onnx 0.17), a plain graph does.
  """
  m = overlaps.shape[1]
  index = jnp.arange(m)
  keep = jnp.ones(overlaps.shape[:2], bool)
  for i in range(m):
    suppress = keep[:, i : i + 1] & (overlaps[:, i] > threshold) & (index > i)
    keep = keep & ~suppress
  return keep


def decode(
  tubelet_logits: jax.Array,
  tubelet_boxes: jax.Array,
  *,
  top_n: int,
  nms_threshold: Any,
  candidates: int | None = None,
  tubelet_presence: jax.Array | None = None,
  presence_threshold: Any = 0.5,
) -> dict[str, jax.Array]:
  """Dense outputs -> at most `top_n` tubelets per clip, class-agnostic tubelet NMS.

  The NMS uses all K boxes of a tubelet, present or not.

  Args:
    tubelet_logits: `(N, h, w, C + 1)` class logits, index 0 background.
    tubelet_boxes: `(N, h, w, K, 4)` dense `(dx, dy, bw, bh)`.
    top_n: detections kept per clip (static).
    nms_threshold: a candidate is suppressed when its tubelet overlap (`tubelet_iou`) with
      a kept, higher-scoring one exceeds this.
    candidates: the locations with the best foreground probability that enter the NMS
      (static); default `CANDIDATES_PER_DETECTION * top_n`, at most h * w.
    tubelet_presence: `(N, h, w, K)` presence logits, or None (a head without presence).
    presence_threshold: a detection is present on frame k when the sigmoid of its cell's
      presence logit there is >= this.

  Returns:
    `det_boxes (N, top_n, K, 4)` corners clipped to [0, 1], `det_scores (N, top_n, C)` the
    location's foreground probabilities and `det_valid (N, top_n)` bool, in decreasing
    best-foreground order; rows past the survivors are invalid and hold zeros. With
    `tubelet_presence` also `det_present (N, top_n, K)` bool (False on invalid rows).
  """
  if top_n < 1:
    raise ValueError(f'top_n must be >= 1, got {top_n!r}.')
  n, h, w, k = tubelet_boxes.shape[:4]
  probs, best = foreground_scores(tubelet_logits)
  num_classes = probs.shape[-1]
  pool = min(candidates or CANDIDATES_PER_DETECTION * top_n, h * w)
  order = jnp.argsort(-best.reshape(n, h * w), axis=-1, stable=True)[:, :pool]
  corners = tubelet_corners(tubelet_boxes.astype(jnp.float32), clip=True).reshape(n, h * w, k, 4)
  cand_boxes = jnp.take_along_axis(corners, order[:, :, None, None], axis=1)
  cand_scores = jnp.take_along_axis(probs.reshape(n, h * w, num_classes), order[:, :, None], 1)
  overlaps = tubelet_iou(cand_boxes[:, :, None], cand_boxes[:, None, :])  # (N, pool, pool)
  keep = greedy_nms(overlaps, nms_threshold)
  # Survivors first, each group in score order; then the first top_n of them.
  rank = jnp.where(keep, 0, pool) + jnp.arange(pool)
  chosen = jnp.argsort(rank, axis=-1)[:, : min(top_n, pool)]
  valid = jnp.take_along_axis(keep, chosen, axis=1)
  det_boxes = jnp.take_along_axis(cand_boxes, chosen[:, :, None, None], axis=1)
  det_scores = jnp.take_along_axis(cand_scores, chosen[:, :, None], axis=1)
  pad = top_n - chosen.shape[1]
  if pad:
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
    det_boxes = jnp.pad(det_boxes, ((0, 0), (0, pad), (0, 0), (0, 0)))
    det_scores = jnp.pad(det_scores, ((0, 0), (0, pad), (0, 0)))
  out = {
    'det_boxes': jnp.where(valid[:, :, None, None], det_boxes, 0.0),
    'det_scores': jnp.where(valid[:, :, None], det_scores, 0.0),
    'det_valid': valid,
  }
  if tubelet_presence is not None:
    cells = jnp.take_along_axis(order, chosen, axis=1)  # (N, top_n'): the chosen locations
    logits = tubelet_presence.astype(jnp.float32).reshape(n, h * w, k)
    present = jax.nn.sigmoid(jnp.take_along_axis(logits, cells[:, :, None], axis=1))
    present = present >= presence_threshold
    if pad:
      present = jnp.pad(present, ((0, 0), (0, pad), (0, 0)))
    out['det_present'] = present & valid[:, :, None]
  return out
