"""Dense tubelet targets: a batch's actor tubes -> per-location class and per-frame box targets.

Pure jax.numpy (jittable); CenterNet/MOC-style assignment of each actor to one cell of the map.

Assignment. The K output frames are clip positions p0 .. p0+K-1. An actor (a real one:
label >= 0) takes part when it has a box on at least one output frame and the clip is
`dense_labeled`. Its key frame is the present output frame nearest the central output
frame kc = K // 2 (kc itself when present; the earlier of two equally near frames);
it is assigned to the cell (i, j) = (floor(cy * h), floor(cx * w)) (clipped to the map)
that holds its key-frame box centre (cx, cy). When several actors fall in one cell the
one with the larger key-frame box area wins (equal areas: the lower actor index); the
others get no target in that clip.

Targets of a cell (i, j) with an actor: class = label + 1 (0 = background everywhere
else); for each output frame k where that actor is present, the box in the model's form
(contract): dx = cx_k * w - (j + 0.5), dy = cy_k * h - (i + 0.5), bw = w_k, bh = h_k
(normalized width/height); frames where it is absent have no box target.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class TubeletTargets(NamedTuple):
  """Per-location targets of a batch on an (h, w) map with K output frames.

  Attributes:
    cls: (B, h, w) int32; 0 background, c + 1 for box class c.
    positive: (B, h, w) bool; an actor is assigned to the cell (only in dense_labeled clips).
    boxes: (B, h, w, K, 4) float32 (dx, dy, bw, bh); zeros where `box_mask` is false.
    box_mask: (B, h, w, K) bool; positive and its actor present at output frame k.
  """

  cls: Array
  positive: Array
  boxes: Array
  box_mask: Array


def output_frames(num_frames: int, tubelet_frames: int) -> tuple[int, int]:
  """(K, p0): K output frames (0 = all clip frames), the central K positions from p0."""
  k = num_frames if tubelet_frames == 0 else tubelet_frames
  if not 1 <= k <= num_frames:
    raise ValueError(f'tubelet frames: expected 1 <= K <= {num_frames} clip frames, got {k}')
  return k, (num_frames - k) // 2


def center_frame(k: int) -> int:
  """The central output frame: the middle one for odd K, the later middle one for even K."""
  return k // 2


def key_frame(present: Array) -> Array:
  """(..., K) bool -> (...,) int32: the present frame nearest `center_frame(K)`.

  Ties (kc - d and kc + d) go to the earlier frame; 0 where no frame is present.
  """
  k = present.shape[-1]
  frames = jnp.arange(k)
  # 2 * distance, +1 for frames after the centre: the earlier one wins a tie.
  rank = 2 * jnp.abs(frames - center_frame(k)) + (frames > center_frame(k))
  return jnp.argmin(jnp.where(present, rank, 2 * k + 2), axis=-1).astype(jnp.int32)


def _centres(boxes: Array) -> tuple[Array, Array]:
  return boxes[..., 0] + boxes[..., 2] / 2, boxes[..., 1] + boxes[..., 3] / 2


def tubelet_targets(
  actor_boxes: Array,
  actor_present: Array,
  actor_labels: Array,
  dense_labeled: Array,
  map_size: tuple[int, int],
  tubelet_frames: int,
  p0: int,
) -> TubeletTargets:
  """The targets of a batch (see the module docstring for the assignment rule).

  Args:
    actor_boxes: (B, T, A, 4) normalized xywh boxes (anything where absent).
    actor_present: (B, T, A) bool.
    actor_labels: (B, A) int, box class; -1 = padding.
    dense_labeled: (B,) bool; false clips get no positives (all masks false, class 0).
    map_size: (h, w) of the dense map.
    tubelet_frames: K (>= 1; resolve 0 with `output_frames` first).
    p0: the first output frame's clip position.
  """
  h, w = map_size
  k = tubelet_frames
  boxes = jnp.asarray(actor_boxes, jnp.float32)[:, p0 : p0 + k]  # (B, K, A, 4)
  labels = jnp.asarray(actor_labels, jnp.int32)
  present = jnp.asarray(actor_present, bool)[:, p0 : p0 + k]
  present = present & (labels >= 0)[:, None, :] & jnp.asarray(dense_labeled, bool)[:, None, None]
  boxes = jnp.moveaxis(boxes, 1, 2)  # (B, A, K, 4)
  present = jnp.moveaxis(present, 1, 2)  # (B, A, K)
  takes_part = jnp.any(present, axis=-1)  # (B, A)

  key = key_frame(present)
  key_box = jnp.take_along_axis(boxes, key[:, :, None, None], axis=2)[:, :, 0]  # (B, A, 4)
  cx, cy = _centres(key_box)
  col = jnp.clip(jnp.floor(cx * w), 0, w - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(cy * h), 0, h - 1).astype(jnp.int32)
  cell = row * w + col  # (B, A)
  in_cell = (cell[:, :, None] == jnp.arange(h * w)) & takes_part[:, :, None]  # (B, A, hw)
  area = key_box[..., 2] * key_box[..., 3]
  # argmax keeps the first maximum: equal areas go to the lower actor index.
  winner = jnp.argmax(jnp.where(in_cell, area[:, :, None], -1.0), axis=1)  # (B, hw)
  positive = jnp.any(in_cell, axis=1)  # (B, hw)

  cls = jnp.where(positive, jnp.take_along_axis(labels, winner, axis=1) + 1, 0)
  tube = jnp.take_along_axis(boxes, winner[:, :, None, None], axis=1)  # (B, hw, K, 4)
  box_mask = jnp.take_along_axis(present, winner[:, :, None], axis=1) & positive[:, :, None]
  rows = (jnp.arange(h * w) // w).astype(jnp.float32)[:, None]
  cols = (jnp.arange(h * w) % w).astype(jnp.float32)[:, None]
  tcx, tcy = _centres(tube)
  offsets = jnp.stack(
    [tcx * w - (cols + 0.5), tcy * h - (rows + 0.5), tube[..., 2], tube[..., 3]], axis=-1
  )
  offsets = jnp.where(box_mask[..., None], offsets, 0.0)
  b = boxes.shape[0]
  return TubeletTargets(
    cls=cls.reshape(b, h, w).astype(jnp.int32),
    positive=positive.reshape(b, h, w),
    boxes=offsets.reshape(b, h, w, k, 4),
    box_mask=box_mask.reshape(b, h, w, k),
  )


def batch_targets(
  batch: dict[str, Array], map_size: tuple[int, int], tubelet_frames: int
) -> TubeletTargets:
  """`tubelet_targets` of a training batch for a map of `map_size` and K output frames."""
  num_frames = batch['actor_boxes'].shape[1]
  k, p0 = output_frames(num_frames, tubelet_frames)
  return tubelet_targets(
    batch['actor_boxes'],
    batch['actor_present'],
    batch['actor_labels'],
    batch['dense_labeled'],
    map_size,
    k,
    p0,
  )


# ------------------------------------------------------------------------------ mirror


def mirror_map(x: Array) -> Array:
  """A (B, h, w, ...) map of the flipped clip at the original's cells: reverse the w axis."""
  return jnp.flip(x, axis=2)


def mirror_offsets(boxes: Array) -> Array:
  """(B, h, w, ..., 4) (dx, dy, bw, bh) of the flipped clip -> the original's: w reversed, dx -> -dx.

  Cell (i, j) of a w-wide map mirrors to (i, w - 1 - j), and the centre
  (j + 0.5 + dx) / w mirrors to 1 - that = (w - 1 - j + 0.5 - dx) / w.
  """
  boxes = mirror_map(boxes)
  return jnp.concatenate([-boxes[..., :1], boxes[..., 1:]], axis=-1)


def flip_targets(targets: TubeletTargets) -> TubeletTargets:
  """The targets of the horizontally flipped clip, from those of the clip."""
  return TubeletTargets(
    cls=mirror_map(targets.cls),
    positive=mirror_map(targets.positive),
    boxes=mirror_offsets(targets.boxes),
    box_mask=mirror_map(targets.box_mask),
  )
