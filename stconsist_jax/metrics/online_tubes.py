"""Causal tube linking for live streams: ACT's per-frame linking (`tubes.link_video`) done one
frame at a time, each tube extended or ended as the frame arrives, its id fixed at its start.

Numpy only. Memory stays bounded however long the stream: a live tube is a few numbers
(its last box, score sum, length, first and last frame), not its boxes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.metrics import tubes as tubes_lib


@dataclasses.dataclass(frozen=True)
class EndedTube:
  """A tube that ended and passed the length and score filters."""

  id: int
  label: int
  start: int  # first frame
  end: int  # last frame with a detection
  score: float  # mean of its detections' scores of `label`
  detections: int  # frames that gave it a detection (fewer than end - start + 1 after a gap)


@dataclasses.dataclass
class _LiveTube:
  id: int
  label: int
  score_sum: float
  length: int
  last_step: int
  last_box: np.ndarray
  start: int
  end: int

  def ended(self) -> EndedTube:
    return EndedTube(
      self.id, self.label, self.start, self.end, self.score_sum / self.length, self.length
    )


@dataclasses.dataclass
class Step:
  """What one frame did to the tubes."""

  tube_ids: np.ndarray  # int64 (N, C): the tube detection n joined for class c; -1: none
  ended: list[EndedTube]  # tubes that ended at this frame and passed the filters


class OnlineLinker:
  """`tubes.link_video`'s linking (its steps 1 and 2, and the filters of step 3) with the
  frames given one at a time.

  Per class: the frame's `top_k` highest-scoring detections are the candidates (ties:
  lower index first); the live tubes, by mean score, descending (stable), each take the
  highest-scoring free candidate whose IoU with the tube's last box is >=
  `iou_threshold`; a tube that takes none and has gone `max_gap` steps (frames given to
  `update`) without a detection ends; candidates nobody took start tubes. Tube ids count
  all classes' tubes in the order they start (per frame: by class, then by score) and never
  change. An ended tube is reported when it spans at least `min_length` frames and its
  mean score reaches `min_score`; the others (most of the tubes every candidate starts)
  end silently. Fed a whole video, it links the tubes `link_video` finds before its 3D
  NMS, which needs ended tubes and is not done online.
  """

  def __init__(self, config: tubes_lib.LinkingConfig, num_classes: int):
    if num_classes < 1:
      raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    self.config = config
    self.num_classes = int(num_classes)
    self._live: list[list[_LiveTube]] = [[] for _ in range(self.num_classes)]
    self._step = 0
    self._last_frame = -1
    self._next_id = 0

  @property
  def num_live(self) -> int:
    return sum(len(c) for c in self._live)

  def live_tube(self, tube_id: int) -> EndedTube | None:
    """The live tube `tube_id` so far (its score the mean up to now); None if it ended."""
    for tubes in self._live:
      for tube in tubes:
        if tube.id == tube_id:
          return tube.ended()
    return None

  def _kept(self, tube: _LiveTube) -> bool:
    c = self.config
    return tube.end - tube.start + 1 >= c.min_length and tube.score_sum / tube.length >= (
      c.min_score
    )

  def update(self, frame: int, boxes: Any, scores: Any) -> Step:
    """Links the detections of `frame` (after every earlier one).

    Args:
      frame: its index, above the previous frame's (frames may be skipped: a dropped
        frame is no step, so `max_gap` counts the frames given).
      boxes: `(N, 4)` corner boxes (pixels with `plus_one`), N >= 0.
      scores: `(N, C)` the class scores of each box.
    """
    frame = int(frame)
    if frame <= self._last_frame:
      raise ValueError(f'frames must increase: {frame} after {self._last_frame}')
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(len(boxes), self.num_classes)
    if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
      raise ValueError('boxes and scores must be finite')
    cfg = self.config
    t = self._step
    tube_ids = np.full((len(boxes), self.num_classes), -1, np.int64)
    ended: list[EndedTube] = []
    everyone = [tube for tubes in self._live for tube in tubes]
    if everyone and len(boxes):
      last = np.stack([tube.last_box for tube in everyone])
      ious = boxes_lib.pairwise_iou_corners(last, boxes, plus_one=cfg.plus_one)
      linkable = {id(tube): row for tube, row in zip(everyone, ious >= cfg.iou_threshold)}
    else:
      linkable = {id(tube): np.zeros(len(boxes), bool) for tube in everyone}
    cands = np.argsort(-scores, axis=0, kind='stable')[: cfg.top_k].T  # (C, <= top_k)
    for c in range(self.num_classes):
      cand = cands[c].tolist()
      taken = [False] * len(cand)
      still_live = []
      for tube in sorted(self._live[c], key=lambda tube: -tube.score_sum / tube.length):
        row = linkable[id(tube)]
        k = next((k for k, d in enumerate(cand) if row[d] and not taken[k]), None)
        if k is not None:
          taken[k] = True
          d = cand[k]
          tube.score_sum += float(scores[d, c])
          tube.length += 1
          tube.last_step, tube.last_box, tube.end = t, boxes[d], frame
          tube_ids[d, c] = tube.id
          still_live.append(tube)
        elif t - tube.last_step >= cfg.max_gap:
          if self._kept(tube):
            ended.append(tube.ended())
        else:
          still_live.append(tube)
      for k, d in enumerate(cand):
        if not taken[k]:
          tube = _LiveTube(self._next_id, c, float(scores[d, c]), 1, t, boxes[d], frame, frame)
          self._next_id += 1
          tube_ids[d, c] = tube.id
          still_live.append(tube)
      self._live[c] = still_live
    self._step += 1
    self._last_frame = frame
    return Step(tube_ids, ended)

  def finish(self) -> list[EndedTube]:
    """Ends every live tube (the stream ended); the ones that pass the filters, by id."""
    found = [tube.ended() for tubes in self._live for tube in tubes if self._kept(tube)]
    self._live = [[] for _ in range(self.num_classes)]
    return sorted(found, key=lambda tube: tube.id)
