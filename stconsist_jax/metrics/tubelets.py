"""Tubelets (K boxes on K frames, scored per class) into action tubes by ACT's linking
(`BuildTubes`), and into per-frame detections for frame-AP (ACT's `frameAP` on tubelets).

Plain numpy. One video's tubelets come in steps (clips): step s has N tubelets whose K
boxes lie on the frames `frames[s]` (the same for all N), each scored for every class.
ACT runs a clip at every frame (stride 1); here any start frames work, e.g. every s-th
frame with s <= K, and a clip clamped at the video's end may repeat its last frame.
A tubelet's box on a frame it covers several times is the mean of those boxes.
Boxes are pixel corner boxes under ACT's +1 IoU convention (see `metrics.tubes`).
Optionally each (tubelet, frame) pair says whether the tubelet's actor is present there
(a head's per-frame presence output): an absent pair gives no box to a tube or a frame.

Where this departs from ACT / MOC-Detector (whose `BuildTubes` and soft tubelet NMS
are followed; the per-frame NMS of frame-AP is ACT's hard `nms2d` at 0.3, MOC's is a
soft one at 0.6): ties in every ranking keep index order (ACT's `argsort` leaves them
unspecified); float64 throughout (ACT: float32); start frames need not be every frame,
so a tube ends when no tubelet was taken for `max_gap` (K) frames counted between
start frames, the overlap test uses the frames two tubelets share (ACT's slot
arithmetic, for consecutive clips), and frames of a tube that none of its tubelets
covers (stride > 1 after a miss) are left out where ACT would divide by zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple
from collections.abc import Callable

import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.metrics import tubes as tubes_lib


@dataclasses.dataclass(frozen=True)
class TubeletLinkingConfig:
  """Parameters of `link_tubelets`; the defaults are ACT's `BuildTubes` as in MOC-Detector
  (`ACT_build.py`) and the 3D NMS of its `videoAP`.

  Attributes:
    tubelet_nms_threshold: per step and class, the tubelets first go through MOC's soft
      tubelet NMS (`soft_nms_tubelets`) at this threshold on the mean IoU over the K
      boxes; None: no NMS (the candidates are the `top_k` highest scores).
    top_k: candidates kept per step and class after that NMS.
    iou_threshold: a live tube takes a candidate whose overlap with the tube's last
      tubelet is >= this: the mean IoU over the frames both cover, or, when they share
      no frame, the IoU of the candidate's first box with the last tubelet's last box.
    max_gap: a tube that takes nothing at a step whose start frame is >= `max_gap`
      frames after its last tubelet's start frame ends. None: K (ACT).
    min_length: tubes spanning fewer frames (first tubelet's start to last tubelet's
      last frame, inclusive; with presence, the first to the last frame where one of its
      tubelets is present) are dropped.
    min_score: tubes whose score (mean of their tubelets' scores) is below this are
      dropped.
    nms_threshold: 3D NMS among a class's tubes (`tubes.nms_tubes`, ACT's
      `nms3dt(tubes, 0.3)` in `videoAP`).
    plus_one: ACT's +1 pixel IoU (boxes in pixels); False for the continuous IoU.
    overlap_weight: a live tube takes, of the untaken candidates whose overlap passes
      `iou_threshold`, the one of highest `score + overlap_weight * overlap` (the linking
      energy of Gkioxari and Malik's action tubes); 0: ACT's highest score.
    frame_weighting: how a tube's box on a frame combines its tubelets' boxes on that
      frame: 'uniform', ACT's mean; 'triangular', a mean weighted by the frame's position
      k (0-based) in each tubelet, `min(k + 1, K - k)`, so that a clip's first and last
      frames, predicted with the least temporal context, count least.
  """

  tubelet_nms_threshold: float | None = 0.6
  top_k: int = 10
  iou_threshold: float = 0.5
  max_gap: int | None = None
  min_length: int = 15
  min_score: float = 0.005
  nms_threshold: float = 0.3
  plus_one: bool = True
  overlap_weight: float = 0.0
  frame_weighting: str = 'uniform'

  def __post_init__(self):
    if self.frame_weighting not in FRAME_WEIGHTINGS:
      raise ValueError(
        f'frame_weighting must be one of {list(FRAME_WEIGHTINGS)}, got {self.frame_weighting!r}'
      )
    if not self.overlap_weight >= 0:
      raise ValueError(f'overlap_weight must be >= 0, got {self.overlap_weight!r}')


FRAME_WEIGHTINGS = ('uniform', 'triangular')


def position_weights(frame_weighting: str, k: int) -> np.ndarray:
  """`(K,)` weight of a tubelet's box on its k-th frame (`TubeletLinkingConfig.frame_weighting`)."""
  positions = np.arange(k)
  if frame_weighting == 'triangular':
    return np.minimum(positions + 1, k - positions).astype(np.float64)
  return np.ones(k)


# Frames whose per-frame detections `frame_detections` gathers and NMS-es at once.
FRAME_BLOCK = 64


class FrameDetections(NamedTuple):
  """Per-frame detections of one video in the layout of `frame_ap.frame_map`.

  Attributes:
    frames: `(D,)` int64 video frame of each row (make keys with `frame_ap.frame_keys`).
    scores: `(D, C)` float64: the class scores of the row's tubelet.
    boxes: `(D, 4)` float64 corner boxes, in the units of the tubelets' boxes.
    valid: `(D, C)` bool: the row is a detection of class c (it survived that class's
      NMS on its frame); pass it as `frame_map(..., det_valid=valid)`.
  """

  frames: np.ndarray
  scores: np.ndarray
  boxes: np.ndarray
  valid: np.ndarray


def tubelet_frames(starts: Any, k: int, num_frames: int) -> np.ndarray:
  """`(S, K)` frames of clips starting at `starts`: `start + 0..K-1`, clamped to the last
  frame `num_frames - 1`."""
  starts = np.asarray(starts, np.int64).reshape(-1)
  return np.minimum(starts[:, None] + np.arange(k, dtype=np.int64), num_frames - 1)


# ----------------------------------------------------------------------------------
# Inputs.


def _check_tubelets(frames, boxes, scores, valid, fn_name, present=None):
  frames = np.asarray(frames)
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores, np.float64)
  if (
    frames.ndim != 2
    or boxes.ndim != 4
    or scores.ndim != 3
    or boxes.shape[0] != frames.shape[0]
    or boxes.shape[2:] != (frames.shape[1], 4)
    or scores.shape[:2] != boxes.shape[:2]
    or frames.shape[1] < 1
  ):
    raise ValueError(
      f'{fn_name}: expected frames (S, K), boxes (S, N, K, 4), scores (S, N, C) with '
      f'K >= 1, found {frames.shape}, {boxes.shape}, {scores.shape}'
    )
  if frames.size and not np.issubdtype(frames.dtype, np.integer):
    if not np.all(frames == np.round(frames)):
      raise ValueError(f'{fn_name}: frames must be integers')
  frames = frames.astype(np.int64)
  if frames.size and (
    frames.min() < 0 or np.any(np.diff(frames, axis=1) < 0) or np.any(np.diff(frames[:, 0]) <= 0)
  ):
    raise ValueError(
      f'{fn_name}: frames must be >= 0, non-decreasing along each clip and its first '
      f'frames strictly increasing, found {frames[:3].tolist()}...'
    )
  if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
    raise ValueError(f'{fn_name}: boxes and scores must be finite')
  if valid is None:
    valid = np.ones(boxes.shape[:2], bool)
  valid = np.asarray(valid)
  if valid.shape != boxes.shape[:2] or valid.dtype != np.bool_:
    raise ValueError(f'{fn_name}: expected valid bool {boxes.shape[:2]}, found {valid.shape}')
  if present is not None:
    present = np.asarray(present)
    if present.shape != boxes.shape[:3] or present.dtype != np.bool_:
      raise ValueError(
        f'{fn_name}: expected present bool {boxes.shape[:3]}, found {present.dtype} {present.shape}'
      )
  return frames, boxes, scores, valid, present


class _Distinct(NamedTuple):
  """Each clip's distinct frames and its tubelets' box on each (the mean of the boxes
  on that frame; the box itself when the frame occurs once), padded to K; a tubelet is
  present on a distinct frame when it is on any of that frame's copies."""

  frames: np.ndarray  # (S, K) int64 distinct frames, increasing, then -1
  boxes: np.ndarray  # (S, N, K, 4), zeros where padded
  count: np.ndarray  # (S,) distinct frames per clip
  present: np.ndarray  # (S, N, K) bool, False where padded
  weights: np.ndarray  # (S, K) position weight of each distinct frame (mean over its copies)

  def clip(self, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip s's `(U,)` frames and `(N, U, 4)` boxes."""
    u = int(self.count[s])
    return self.frames[s, :u], self.boxes[s, :, :u]


def _distinct(
  frames: np.ndarray, boxes: np.ndarray, present: np.ndarray | None, weights: np.ndarray
) -> _Distinct:
  """`weights`: `(K,)` the position weights (`position_weights`)."""
  num_steps, k = frames.shape
  if present is None:
    present = np.ones(boxes.shape[:3], bool)
  if k == 1 or np.all(np.diff(frames, axis=1) > 0):
    return _Distinct(
      frames, boxes, np.full(num_steps, k), present, np.broadcast_to(weights, frames.shape)
    )
  out = _Distinct(
    np.full((num_steps, k), -1, np.int64),
    np.zeros(boxes.shape),
    np.zeros(num_steps, int),
    np.zeros(boxes.shape[:3], bool),
    np.zeros(frames.shape),
  )
  for s in range(num_steps):
    distinct, inverse, counts = np.unique(frames[s], return_inverse=True, return_counts=True)
    u = len(distinct)
    sums = np.zeros((boxes.shape[1], u, 4))
    for j, i in enumerate(inverse.tolist()):
      sums[:, i] += boxes[s, :, j]
      out.present[s, :, i] |= present[s, :, j]
    out.frames[s, :u], out.boxes[s, :, :u], out.count[s] = distinct, sums / counts[None, :, None], u
    out.weights[s, :u] = np.bincount(inverse, weights, minlength=u) / counts
  return out


# ----------------------------------------------------------------------------------
# NMS.


def soft_nms_tubelets(
  boxes: np.ndarray,
  scores: np.ndarray,
  threshold: float | None,
  top_k: int,
  *,
  plus_one: bool = True,
  overlaps: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """MOC-Detector's `nms_tubelets` (the soft variant its `BuildTubes` calls).

  Tubelets are visited by score, descending; the current one rescales every remaining
  one whose summed IoU over the K boxes exceeds `threshold * K` by `1 - summed IoU`
  (MOC's weight: for K > 1 it is negative) and drops it from the visit. Then all are
  re-ranked by the rescaled scores and the `top_k` first returned. Ties keep index
  order (MOC's unstable `argsort` leaves them unspecified).

  Args:
    boxes: `(N, K, 4)` corner boxes.
    scores: `(N,)`, or `(N, C)`: each column (class) on its own.
    threshold: IoU threshold (mean over the K boxes); None: no rescaling.
    top_k: how many to return.
    plus_one: ACT's +1 pixel IoU.
    overlaps: `(N, N)` summed IoUs, when already computed (`summed_ious`).

  Returns:
    `(indices, rescaled scores)`, each `(M,)` (or `(M, C)`), M = min(N, top_k), by
    rescaled score.
  """
  scores = np.asarray(scores, np.float64)
  columns = scores.reshape(scores.shape[0], -1).T  # (C, N)
  weight = np.ones_like(columns)
  if threshold is not None and columns.size:
    if overlaps is None:
      overlaps = summed_ious(boxes, plus_one=plus_one)
    limit = threshold * boxes.shape[1]
    # All classes at once: at rank r each class visits its r-th tubelet, unless an
    # earlier one dropped it; a visit drops (and rescales) the later ones over the limit.
    order = np.argsort(-columns, axis=1, kind='stable')
    rank = np.argsort(order, axis=1)
    cls = np.arange(columns.shape[0])
    dropped = np.zeros(columns.shape, bool)
    for r in range(columns.shape[1]):
      visit = order[:, r]
      active = ~dropped[cls, visit]
      ious = overlaps[visit]  # (C, N)
      over = (ious > limit) & (rank > r) & ~dropped & active[:, None]
      weight[over] = 1.0 - ious[over]
      dropped |= over
  rescaled = columns * weight
  keep = np.argsort(-rescaled, axis=1, kind='stable')[:, :top_k]
  kept_scores = np.take_along_axis(rescaled, keep, axis=1)
  if scores.ndim == 1:
    return keep[0], kept_scores[0]
  return keep.T, kept_scores.T


def summed_ious(boxes: np.ndarray, *, plus_one: bool = True) -> np.ndarray:
  """`(N, N)` IoUs of tubelets `(N, K, 4)` summed over their K boxes, in order."""
  ious = boxes_lib.iou_corners(boxes[:, None], boxes[None, :], plus_one=plus_one)  # (N, N, K)
  return _sum_last(ious)


def _sum_last(values: np.ndarray) -> np.ndarray:
  """Sum over the last axis, one term after the other (as ACT's `sum([...])`; numpy's
  pairwise sum can round differently)."""
  total = np.zeros(values.shape[:-1])
  for k in range(values.shape[-1]):
    total += values[..., k]
  return total


def _nms_per_class(
  boxes: np.ndarray, scores: np.ndarray, eligible: np.ndarray, threshold: float, plus_one: bool
) -> np.ndarray:
  """`(R, C)` kept mask of greedy 2D NMS (ACT's `nms2d`) run for every class at once.

  Per class c, the eligible rows by score (descending, ties in row order): a row is
  kept unless a kept one of higher rank has IoU > `threshold` with it.
  """
  num_rows, num_classes = scores.shape
  ious = boxes_lib.pairwise_iou_corners(boxes, boxes, plus_one=plus_one)
  order = np.argsort(-scores, axis=0, kind='stable')  # (R, C)
  cls = np.arange(num_classes)
  suppressed = ~eligible.T.copy()  # (C, R)
  kept = np.zeros((num_classes, num_rows), bool)
  for rank in range(num_rows):
    rows = order[rank]
    take = ~suppressed[cls, rows]
    kept[cls[take], rows[take]] = True
    suppressed[cls[take], rows[take]] = True  # visited
    suppressed[take] |= ious[rows[take]] > threshold
    if suppressed.all():  # nothing left to visit in any class
      break
  return kept.T


# ----------------------------------------------------------------------------------
# Linking.


class _ClassLinker:
  """ACT's greedy linking of one class, one step at a time. A live tube is a list of
  `(step, tubelet, rescaled score)`; a tube that ends is built at once (`build`: a
  `Tube`, or None when the filters drop it), so that `finished` holds only the kept
  ones, in ACT's order, as arrays: not the members of every tube of a long video."""

  def __init__(
    self,
    iou_threshold: float,
    max_gap: int,
    build: Callable[[list[tuple[int, int, float]]], tubes_lib.Tube | None],
    overlap_weight: float = 0.0,
  ):
    self.iou_threshold = iou_threshold
    self.max_gap = max_gap
    self.overlap_weight = overlap_weight
    self.build = build
    self.live: list[list[Any]] = []  # [score sum, count, members]
    self.finished: list[tubes_lib.Tube] = []

  def step(self, b: int, cand: list[int], cand_scores: list[float], starts: list[int], overlaps):
    """Links step b's candidates (tubelets by rescaled score); `overlaps(a)` is the
    `(N, N)` linking overlap of step a's tubelets with step b's."""
    taken = [False] * len(cand)
    self.live.sort(key=lambda tube: -tube[0] / tube[1])  # stable: ties keep their order
    ended = []
    for it, tube in enumerate(self.live):
      a, i, _ = tube[2][-1]
      k = self._choose(overlaps(a)[i], cand, cand_scores, taken)
      if k is not None:
        taken[k] = True
        tube[0] += cand_scores[k]
        tube[1] += 1
        tube[2].append((b, cand[k], cand_scores[k]))
      elif starts[b] - starts[a] >= self.max_gap:
        ended.append(it)
    for it in reversed(ended):  # ACT appends the ended tubes in reverse
      self._finish(self.live.pop(it)[2])
    for k, n in enumerate(cand):
      if not taken[k]:
        self.live.append([cand_scores[k], 1, [(b, n, cand_scores[k])]])

  def _choose(
    self, row: list[float], cand: list[int], cand_scores: list[float], taken
  ) -> int | None:
    """The candidate a tube with linking overlaps `row` takes: ACT's first (highest
    score) untaken one that overlaps enough or, with `overlap_weight`, the one of highest
    score + overlap_weight * overlap (the first of equals); None if none overlaps enough."""
    passing = (k for k, n in enumerate(cand) if not taken[k] and row[n] >= self.iou_threshold)
    if not self.overlap_weight:
      return next(passing, None)
    energy = {k: cand_scores[k] + self.overlap_weight * row[cand[k]] for k in passing}
    return max(energy, key=energy.get, default=None)

  def _finish(self, members: list[tuple[int, int, float]]) -> None:
    tube = self.build(members)
    if tube is not None:
      self.finished.append(tube)

  def tubes(self) -> list[tubes_lib.Tube]:
    """Every kept tube: the ended ones, then the live ones (ACT's `FINISHED_TUBES`)."""
    for tube in self.live:
      self._finish(tube[2])
    self.live = []
    return self.finished


def _build_tube(
  label: int,
  members: list[tuple[int, int, float]],
  distinct: _Distinct,
  config: TubeletLinkingConfig,
) -> tubes_lib.Tube | None:
  """ACT's tube of linked tubelets, or None when it fails the score or length filter or
  none of its tubelets is present on any frame: per frame the mean box and mean score of
  its tubelets covering that frame (and present on it)."""
  score = math.fsum(s for _, _, s in members) / len(members)
  steps = np.array([step for step, _, _ in members])
  tubelets = [n for _, n, _ in members]
  frames = distinct.frames[steps]  # (M, K), -1 padded
  present = (frames >= 0) & distinct.present[steps, tubelets]
  if not present.any():
    return None
  # Without presence masks frames[0, 0] and frames.max(): ACT's span.
  begin, end = int(frames[present].min()), int(frames[present].max())
  if score < config.min_score or end + 1 - begin < config.min_length:
    return None
  # Every (tubelet, frame) contribution in ACT's order (tubelets in linking order, then
  # frames), summed per frame one after the other (`np.add.at` is unbuffered, in order).
  where = frames[present] - begin
  boxes = distinct.boxes[steps, tubelets][present]
  scores = np.broadcast_to(np.array([s for _, _, s in members])[:, None], frames.shape)[present]
  box_sum = np.zeros((end + 1 - begin, 4))
  score_sum = np.zeros(end + 1 - begin)
  count = np.bincount(where, minlength=end + 1 - begin)
  covered = np.nonzero(count)[0]  # a tube that skipped a step with s > 1 may miss frames
  # Uniform weights are 1.0: the same sums, in the same order, as ACT's plain mean.
  weights = distinct.weights[steps][present]
  np.add.at(box_sum, where, boxes * weights[:, None])
  box_weight = np.bincount(where, weights, minlength=end + 1 - begin)[covered, None]
  np.add.at(score_sum, where, scores)
  return tubes_lib.Tube(
    label,
    covered + begin,
    box_sum[covered] / box_weight,
    score_sum[covered] / count[covered],
    tube_score=score,
  )


def _step_overlaps(distinct: _Distinct, b: int, plus_one: bool):
  """`a -> ` the linking overlaps of step a's tubelets with step b's (nested lists
  `[N][N]`), each computed once and shared by the classes."""
  cache: dict[int, list[list[float]]] = {}

  def overlaps(a: int) -> list[list[float]]:
    if a not in cache:
      cache[a] = _linking_overlaps(distinct.clip(a), distinct.clip(b), plus_one).tolist()
    return cache[a]

  return overlaps


def _linking_overlaps(last: tuple, new: tuple, plus_one: bool) -> np.ndarray:
  """`(N_last, N_new)` ACT's linking overlap: mean IoU over the shared frames (summed in
  frame order, then divided, as ACT), else last box of `last` against first of `new`."""
  (last_frames, last_boxes), (new_frames, new_boxes) = last, new
  _, il, inew = np.intersect1d(last_frames, new_frames, assume_unique=True, return_indices=True)
  if not len(il):
    return boxes_lib.pairwise_iou_corners(last_boxes[:, -1], new_boxes[:, 0], plus_one=plus_one)
  ious = boxes_lib.iou_corners(  # (N_last, N_new, shared frames)
    last_boxes[:, None, il], new_boxes[None, :, inew], plus_one=plus_one
  )
  return _sum_last(ious) / len(il)


def link_tubelets(
  frames: Any,
  boxes: Any,
  scores: Any,
  config: TubeletLinkingConfig = TubeletLinkingConfig(),
  *,
  valid: Any = None,
  present: Any = None,
) -> list[tubes_lib.Tube]:
  """Links one video's tubelets into tubes, each class on its own (ACT's `BuildTubes`).

  Per class, steps in order of their start frame `frames[s, 0]`:
  1. Candidates: the step's valid tubelets with the class's score, through
     `soft_nms_tubelets` (`tubelet_nms_threshold`), the `top_k` by rescaled score.
  2. Live tubes sorted by score (mean of their tubelets' rescaled scores), descending
     (stable); each in turn takes the highest-scoring candidate not yet taken whose
     overlap with the tube's last tubelet is >= `iou_threshold` (mean IoU over the
     frames both cover; without a shared frame, the candidate's first box against the
     last tubelet's last box); with `overlap_weight` > 0, the one of highest
     score + overlap_weight * overlap among those. A tube that takes none ends once
     the step starts `max_gap` (default K) or more frames after its last tubelet.
     Candidates nobody took start tubes.
  3. Tubes with score < `min_score` or spanning < `min_length` frames are dropped. A
     tube's box and score on a frame are the means over its tubelets covering that
     frame (the box's weighted by position with `frame_weighting='triangular'`);
     frames none covers (possible only with stride > 1) are left out. The tube's
     score (`Tube.tube_score`) is the mean of its tubelets' rescaled scores.
  4. 3D NMS per class (`tubes.nms_tubes`, `nms_threshold`).

  With `present`, a (tubelet, frame) pair that is not present gives its tube's frame
  neither a box nor a score: a tube's frames are those where at least one of its
  tubelets is present, its span (`min_length`) runs from the first to the last of them,
  and a tube whose tubelets are present on no frame is dropped. The tubelet NMS, the
  linking overlaps and the tube's score still use every tubelet with all its K boxes.

  With K = 1, stride 1 and `tubelet_nms_threshold=None` this is `tubes.link_video`
  (same tubes, boxes and scores), except for the order of tubes of equal score that
  end at the same step: ACT (here) appends them in reverse, `link_video` in order.

  Args:
    frames: `(S, K)` integer frames of each step's K boxes (`tubelet_frames`); first
      frames strictly increasing, each row non-decreasing.
    boxes: `(S, N, K, 4)` corner boxes, pixels unless `config.plus_one` is False.
    scores: `(S, N, C)` class scores of each tubelet (background excluded).
    config: the linking parameters.
    valid: `(S, N)` bool, False for padding tubelets (left out); None: all valid.
    present: `(S, N, K)` bool, whether tubelet n of step s shows its actor on its k-th
      frame (a frame repeated within a clip: on any of its copies); None: everywhere.

  Returns:
    All classes' tubes by score, descending; equal scores keep class order, then NMS
    order.
  """
  frames, boxes, scores, valid, present = _check_tubelets(
    frames, boxes, scores, valid, 'link_tubelets', present
  )
  if config.plus_one and valid.any():
    # The valid boxes' extreme coordinates: the check without a copy of the boxes.
    extremes = np.array([boxes.min(axis=(2, 3))[valid].min(), boxes.max(axis=(2, 3))[valid].max()])
    tubes_lib.check_pixel_boxes(extremes, 'link_tubelets')
  num_steps, _, k, _ = boxes.shape
  num_classes = scores.shape[2]
  if num_steps == 0 or not valid.any():
    return []
  max_gap = k if config.max_gap is None else config.max_gap
  starts = frames[:, 0].tolist()
  distinct = _distinct(frames, boxes, present, position_weights(config.frame_weighting, k))

  linkers = [
    _ClassLinker(
      config.iou_threshold,
      max_gap,
      functools.partial(_build_tube, c, distinct=distinct, config=config),
      config.overlap_weight,
    )
    for c in range(num_classes)
  ]
  for b in range(num_steps):
    rows = np.nonzero(valid[b])[0]
    # The tubelet NMS, for every class: its summed IoUs, computed once; a step where no
    # pair overlaps enough (e.g. already NMS-ed by the detector) needs none.
    threshold, within = config.tubelet_nms_threshold, None
    if threshold is not None:
      within = summed_ious(boxes[b, rows], plus_one=config.plus_one)
      np.fill_diagonal(within, -np.inf)
      if not np.any(within > threshold * k):
        threshold = None
    overlaps = _step_overlaps(distinct, b, config.plus_one)
    keep, rescaled = soft_nms_tubelets(
      boxes[b, rows], scores[b, rows], threshold, config.top_k, overlaps=within
    )
    cand, cand_scores = rows[keep].T.tolist(), rescaled.T.tolist()
    for c in range(num_classes):
      linkers[c].step(b, cand[c], cand_scores[c], starts, overlaps)

  out: list[tubes_lib.Tube] = []
  for c in range(num_classes):
    built = linkers[c].tubes()
    keep = tubes_lib.nms_tubes(built, config.nms_threshold, plus_one=config.plus_one)
    out.extend(built[i] for i in keep)
  return sorted(out, key=lambda t: -t.score)


# ----------------------------------------------------------------------------------
# Frame detections.


def frame_detections(
  frames: Any,
  boxes: Any,
  scores: Any,
  *,
  valid: Any = None,
  present: Any = None,
  nms_threshold: float = 0.3,
  min_score: float = 0.0,
  plus_one: bool = True,
) -> FrameDetections:
  """Per-frame detections from one video's tubelets (ACT's `load_frame_detections`).

  Every frame gets the box of each valid tubelet that covers it (and, with `present`,
  is present on it), with the tubelet's class scores; then per frame and class a greedy
  2D NMS (ACT's `nms2d`, hard, at `nms_threshold`; ties in row order) over the rows
  whose class score is >= `min_score`. A row is kept when some class keeps it;
  `valid[d, c]` says which. Rows are ordered by frame, then step, then tubelet.

  ACT's detector had already dropped (tubelet, class) pairs scoring 0.01 or less;
  `min_score` does that here (default: keep all).

  The rows are gathered and NMS-ed `FRAME_BLOCK` frames at a time (each frame's rows
  come from the steps covering it), so that only the kept rows of a long video are
  held at once, not a row for every (tubelet, frame) pair.

  Args:
    frames, boxes, scores, valid, present: as `link_tubelets`.
    nms_threshold: a row is suppressed for a class by a kept higher-scoring one of
      the same frame at IoU > this (ACT: 0.3).
    min_score: class scores below this are no detection of that class.
    plus_one: ACT's +1 pixel IoU (boxes in pixels); False for the continuous IoU.

  Returns:
    `FrameDetections`. For `frame_ap.frame_map` with boxes in pixels and
    `protocol='act'`, pass `frame_sizes=(1, 1)` (and ground truth in pixels).
  """
  frames, boxes, scores, valid, present = _check_tubelets(
    frames, boxes, scores, valid, 'frame_detections', present
  )
  clips = _distinct(frames, boxes, present, np.ones(frames.shape[1]))
  parts = [_no_detections(scores.shape[2])]
  if frames.shape[0]:
    first, last = frames.min(axis=1), frames.max(axis=1)
    for lo in range(int(first.min()), int(last.max()) + 1, FRAME_BLOCK):
      steps = np.flatnonzero((last >= lo) & (first < lo + FRAME_BLOCK))
      parts.append(
        _block_detections(
          clips, scores, valid, steps, (lo, lo + FRAME_BLOCK), nms_threshold, min_score, plus_one
        )
      )
  return FrameDetections(*(np.concatenate(arrays) for arrays in zip(*parts)))


def _no_detections(num_classes: int) -> FrameDetections:
  return FrameDetections(
    np.zeros(0, np.int64),
    np.zeros((0, num_classes)),
    np.zeros((0, 4)),
    np.zeros((0, num_classes), bool),
  )


def _block_detections(
  clips: _Distinct,
  scores: np.ndarray,
  valid: np.ndarray,
  steps: np.ndarray,
  block: tuple[int, int],
  nms_threshold: float,
  min_score: float,
  plus_one: bool,
) -> FrameDetections:
  """`frame_detections` of the frames `lo <= f < hi` of `block`, from the `steps`
  (increasing) that cover them."""
  lo, hi = block
  row_frames, row_boxes, row_scores = [], [], []
  for s in steps.tolist():
    rows = np.nonzero(valid[s])[0]
    distinct, dboxes = clips.clip(s)
    inside = (distinct >= lo) & (distinct < hi)
    # Tubelet-major, as below.
    shown = (clips.present[s, rows, : len(distinct)] & inside).reshape(-1)
    dboxes = dboxes[rows]
    row_frames.append(np.repeat(distinct[None], len(rows), axis=0).reshape(-1)[shown])
    row_boxes.append(dboxes.reshape(-1, 4)[shown])
    row_scores.append(np.repeat(scores[s, rows], len(distinct), axis=0)[shown])
  if not row_frames:
    return _no_detections(scores.shape[2])
  all_frames = np.concatenate(row_frames)
  all_boxes = np.concatenate(row_boxes)
  all_scores = np.concatenate(row_scores)
  order = np.argsort(all_frames, kind='stable')  # step-major rows: step, tubelet order
  all_frames, all_boxes, all_scores = all_frames[order], all_boxes[order], all_scores[order]
  kept = np.zeros(all_scores.shape, bool)
  bounds = np.flatnonzero(np.diff(all_frames)) + 1
  for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(all_frames)].tolist()):
    if b > a:
      kept[a:b] = _nms_per_class(
        all_boxes[a:b], all_scores[a:b], all_scores[a:b] >= min_score, nms_threshold, plus_one
      )
  some = kept.any(axis=1)
  return FrameDetections(all_frames[some], all_scores[some], all_boxes[some], kept[some])
