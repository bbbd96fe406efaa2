"""Action tubes: the `Tube` type, ACT's linking of per-frame detections into tubes with
its spatio-temporal IoU and 3D NMS, and the linking settings.

Plain numpy (no JAX, no TensorFlow). A `Tube` is one actor's (or one detector track's)
corner boxes on increasing 0-based frames; ground-truth tubes use the same type with
scores of one (`ground_truth_tube`). Scoring tubes (video-AP) is `video_ap`.

Box units and IoU: following ACT (`ACT_utils.iou2d` / `iou3dt`, used both for linking
and for the tube IoU of NMS and video-AP), IoUs here use the +1 pixel convention
(width = x2 - x1 + 1) by default, so boxes must be in PIXELS: convert normalized boxes
with `metrics.normalized_to_pixels` first. `plus_one=False` (a `LinkingConfig` field
and a keyword of the IoU / AP functions) gives the continuous IoU for any units.
`link_video` and `video_ap.video_map` refuse, with the +1 convention, boxes that all lie
in [0, 1] (normalized boxes by mistake).
"""

import array
import dataclasses
import functools
import math
from typing import Any
from collections.abc import Sequence

import numpy as np

from stconsist_jax.core import boxes as boxes_lib


# ----------------------------------------------------------------------------------
# Types.


@dataclasses.dataclass(frozen=True, eq=False)
class Tube:
  """One tube: a box and a class score on each of its frames.

  Fields are validated and stored as read-only copies; a field that is already one (a
  read-only array owning its data, such as another tube's) is shared, not copied.
  Equality and hashing are by identity (the fields are arrays).

  Attributes:
    label: class index (column of the score matrix).
    frames: int64 `(n,)` strictly increasing 0-based frame indices, n >= 1. Frames
      need not be consecutive (a tube linked across a gap has none on the gap).
    boxes: float64 `(n, 4)` corner boxes `x1, y1, x2, y2` (units of the input).
    scores: float64 `(n,)` the score of `label` on each of those frames.
    tube_score: the tube's score when it is not the mean of `scores`, else None.
      Tubes linked from tubelets (`metrics.tubelets`) set it to ACT's score, the mean
      of the linked tubelets' scores, while `scores` holds each frame's mean over the
      tubelets that cover it.
  """

  label: int
  frames: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  tube_score: float | None = None

  def __post_init__(self):
    frames = _read_only(self.frames, np.int64, flat=True)
    boxes = _read_only(self.boxes, np.float64)
    scores = _read_only(self.scores, np.float64, flat=True)
    n = frames.shape[0]
    if n == 0:
      raise ValueError('Tube: a tube needs at least one frame')
    if boxes.shape != (n, 4) or scores.shape != (n,):
      raise ValueError(
        f'Tube: expected boxes ({n}, 4) and scores ({n},) for {n} '
        f'frames, found {boxes.shape} and {scores.shape}'
      )
    if frames[0] < 0 or np.any(np.diff(frames) <= 0):
      raise ValueError(
        f'Tube: frames must be strictly increasing and >= 0, found '
        f'{frames[:10].tolist()}{"..." if n > 10 else ""}'
      )
    if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
      raise ValueError('Tube: boxes and scores must be finite')
    if self.tube_score is not None:
      if not math.isfinite(self.tube_score):
        raise ValueError(f'Tube: tube_score must be finite, found {self.tube_score}')
      object.__setattr__(self, 'tube_score', float(self.tube_score))
    for name, arr in (('frames', frames), ('boxes', boxes), ('scores', scores)):
      object.__setattr__(self, name, arr)
    object.__setattr__(self, 'label', int(self.label))

  @property
  def start(self) -> int:
    """First frame."""
    return int(self.frames[0])

  @property
  def end(self) -> int:
    """Last frame (inclusive)."""
    return int(self.frames[-1])

  @functools.cached_property
  def score(self) -> float:
    """ACT's tube score: `tube_score` when set, else the mean of the per-frame scores
    (from an exactly rounded sum, computed once)."""
    if self.tube_score is not None:
      return self.tube_score
    return math.fsum(self.scores.tolist()) / len(self.scores)

  def __len__(self) -> int:
    return int(self.frames.shape[0])


def _read_only(values: Any, dtype: Any, flat: bool = False) -> np.ndarray:
  """`values` as a read-only array of `dtype` (1-D with `flat`) that owns its data: the
  array itself when it already is one, else a copy."""
  if (
    isinstance(values, np.ndarray)
    and values.dtype == dtype
    and values.base is None
    and not values.flags.writeable
    and (values.ndim == 1 or not flat)
  ):
    return values
  arr = np.array(values, dtype=dtype)
  if flat and arr.ndim != 1:
    arr = arr.reshape(-1).copy()
  arr.setflags(write=False)
  return arr


def ground_truth_tube(label: int, frames: Any, boxes: Any) -> Tube:
  """A ground-truth `Tube` (scores of one)."""
  frames = np.asarray(frames).reshape(-1)
  return Tube(label, frames, boxes, np.ones(frames.shape[0]))


@dataclasses.dataclass(frozen=True)
class LinkingConfig:
  """Parameters of `link_video` (defaults: ACT / MMAction2 `link_tubes` with K = 1).

  These defaults are the config's too (`configs/default.py` reads them); the config
  schema checks the values a run sets.

  Attributes:
    iou_threshold: a live tube extends with a detection of the next frame at IoU >=
      this (IoU with the tube's last box).
    max_gap: K: a tube left unmatched for K consecutive frames ends. Counted in entries
      of `link_video`'s `frames` (linking steps), not in frame-index units. 1 (ACT):
      a tube ends at its first miss, so tubes have no gaps.
    min_length: tubes shorter than this (in frames, `end - start + 1`, gap frames
      included, as ACT's `endframe + 1 - beginframe`) are dropped.
    min_score: tubes whose mean score is below this are dropped (ACT: 0.005).
    nms_threshold: 3D NMS between the tubes of a class: a tube is suppressed by a
      higher-scoring kept one when their `spatiotemporal_iou` exceeds this (ACT's
      `nms3dt(tubes, 0.3)`, applied in its `videoAP`).
    top_k: detections per frame and class considered (the highest scores).
    plus_one: ACT's +1 pixel IoU (boxes in pixels); False for the continuous IoU.
  """

  iou_threshold: float = 0.5
  max_gap: int = 1
  min_length: int = 15
  min_score: float = 0.005
  nms_threshold: float = 0.3
  top_k: int = 10
  plus_one: bool = True


def linking_config(config: Any) -> LinkingConfig:
  """LinkingConfig from `config.eval.tubes`, the fields it sets (the others: defaults).

  `config` is an experiment config or None; a missing `eval` or `eval.tubes` group
  (a converted classifier's settings) gives the defaults.
  """
  group = {}
  if config is not None:
    group = (config.get('eval', None) or {}).get('tubes', None) or {}
  defaults = LinkingConfig()
  values = {}
  for field in dataclasses.fields(defaults):
    if group.get(field.name) is not None:
      values[field.name] = type(getattr(defaults, field.name))(group[field.name])
  return LinkingConfig(**values)


# ----------------------------------------------------------------------------------
# Spatio-temporal IoU and NMS.


def check_pixel_boxes(boxes: np.ndarray, where: str) -> None:
  """Refuses all-in-[0, 1] boxes under the +1 convention (they look normalized)."""
  if boxes.size and np.all(boxes >= 0.0) and np.all(boxes <= 1.0):
    raise ValueError(
      f'{where}: every box coordinate lies in [0, 1]: these look like '
      'normalized boxes, but the +1 IoU convention needs pixels. '
      'Convert them with metrics.normalized_to_pixels, or use '
      'plus_one=False for the continuous IoU'
    )


def spatiotemporal_iou(a: Tube, b: Tube, *, plus_one: bool = True) -> float:
  """Temporal IoU (inclusive frame counts) x mean per-frame IoU over the time overlap.

  As ACT's `iou3dt`: with `[s, e]` the overlap of the two frame spans, the temporal
  IoU is `(e - s + 1) / (max(ends) - min(starts) + 1)` and the spatial term is the
  mean 2D IoU over the frames `s..e`; 0 when the spans do not overlap. ACT assumes
  tubes without gaps; here a frame of `s..e` on which only one of the tubes has a box
  counts IoU 0, and a frame on which neither has one is skipped (for tubes without
  gaps all of these agree). Labels are not compared.

  Args:
    a, b: the tubes.
    plus_one: the +1 pixel convention of ACT (boxes in pixels); False: continuous IoU.
  """
  s, e = max(a.start, b.start), min(a.end, b.end)
  if e < s:
    return 0.0
  temporal = (e - s + 1) / (max(a.end, b.end) - min(a.start, b.start) + 1)
  ia = np.nonzero((a.frames >= s) & (a.frames <= e))[0]
  ib = np.nonzero((b.frames >= s) & (b.frames <= e))[0]
  common, ca, cb = np.intersect1d(
    a.frames[ia], b.frames[ib], assume_unique=True, return_indices=True
  )
  num_frames = len(ia) + len(ib) - len(common)
  ious = boxes_lib.iou_corners(a.boxes[ia[ca]], b.boxes[ib[cb]], plus_one=plus_one)
  spatial = np.sum(ious) / num_frames  # np.mean(ious) for tubes without gaps
  # ACT's order, `mean * (inter / union)`: IoUs at exact thresholds round the same way.
  return float(spatial * temporal)


def nms_tubes(tubes: Sequence[Tube], threshold: float, *, plus_one: bool = True) -> list[int]:
  """Greedy 3D NMS (ACT's `nms3dt`): indices of the kept tubes, highest score first.

  Tubes are visited by score, descending (stable: equal scores keep their order in
  `tubes`); each kept tube removes the remaining ones whose `spatiotemporal_iou` with
  it exceeds `threshold` (ACT keeps those at IoU <= threshold). Labels are ignored:
  call it per class.
  """
  order = sorted(range(len(tubes)), key=lambda i: -tubes[i].score)
  keep: list[int] = []
  while order:
    i = order.pop(0)
    keep.append(i)
    order = [
      j for j in order if spatiotemporal_iou(tubes[i], tubes[j], plus_one=plus_one) <= threshold
    ]
  return keep


# ----------------------------------------------------------------------------------
# Linking.


def check_video_arrays(frames, boxes, scores, fn_name):
  frames = np.asarray(frames)
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores, np.float64)
  if frames.ndim != 1 or boxes.ndim != 3 or scores.ndim != 3:
    raise ValueError(
      f'{fn_name}: expected frames (F,), boxes (F, N, 4), scores '
      f'(F, N, C), found {frames.shape}, {boxes.shape}, {scores.shape}'
    )
  f = frames.shape[0]
  if boxes.shape[0] != f or boxes.shape[2] != 4 or scores.shape[:2] != boxes.shape[:2]:
    raise ValueError(
      f'{fn_name}: expected frames (F,), boxes (F, N, 4), scores '
      f'(F, N, C) with the same F and N, found {frames.shape}, '
      f'{boxes.shape}, {scores.shape}'
    )
  if frames.size and not np.issubdtype(frames.dtype, np.integer):
    if not np.all(frames == np.round(frames)):
      raise ValueError(f'{fn_name}: frames must be integers')
  frames = frames.astype(np.int64)
  if f and (frames[0] < 0 or np.any(np.diff(frames) <= 0)):
    raise ValueError(
      f'{fn_name}: frames must be strictly increasing and >= 0, found {frames[:10].tolist()}'
    )
  if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
    raise ValueError(f'{fn_name}: boxes and scores must be finite')
  return frames, boxes, scores


def _link_all_classes(
  frames: np.ndarray, boxes: np.ndarray, scores: np.ndarray, config: LinkingConfig
) -> list[list[Tube]]:
  """ACT's greedy linking of every class, and the length and score filters (not NMS).

  Classes are linked independently; they share, per frame, the IoUs of that frame's
  boxes with the boxes of the `max_gap` frames before (the only ones a live tube can
  end on), computed once. A live tube is `[score sum, length, last step, last detection,
  id]` (ids count a class's tubes in creation order).

  Memory per frame is fixed and small, whatever the video's length: which tube each
  detection joined is one int32 array `(F, N, C)` (4 bytes per detection and class);
  besides it only the live tubes (at most `max_gap * top_k` per class) and the ids of
  the ended ones (4 bytes each) are kept, and a `Tube` is built only for the tubes that
  pass `min_length` and `min_score`. (Python lists of `(step, detection)` per tube and
  of candidates and scores per frame held about 250 bytes per frame and class.)

  Returns:
    Per class, its kept tubes: those that ended, in ending order, then the live ones.
  """
  num_steps, num_dets, num_classes = scores.shape
  owner = np.full((num_steps, num_dets, num_classes), -1, np.int32)
  live: list[list[list[Any]]] = [[] for _ in range(num_classes)]
  ended = [array.array('i') for _ in range(num_classes)]
  next_id = [0] * num_classes
  for t in range(num_steps):
    # Per class, the top_k detections of this step by score (stable: lower index first).
    cands = np.argsort(-scores[t], axis=0, kind='stable')[: config.top_k].T.tolist()
    score_t = scores[t].tolist()  # [detection][class]
    # linkable[g][i][j]: box i of step t - 1 - g and box j of step t are linkable.
    prev = boxes[max(t - config.max_gap, 0) : t][::-1]
    linkable = (
      boxes_lib.pairwise_iou_corners(prev.reshape(-1, 4), boxes[t], plus_one=config.plus_one)
      >= config.iou_threshold
    )
    linkable = linkable.reshape(len(prev), num_dets, num_dets).tolist()
    owner_t = owner[t]
    for c in range(num_classes):
      cand = cands[c]
      taken = [False] * len(cand)
      # Live tubes by mean score, descending; the sort is stable.
      tubes_c = sorted(live[c], key=lambda tube: -tube[0] / tube[1])
      still_live = []
      for tube in tubes_c:
        last_t, last_d = tube[2], tube[3]
        row = linkable[t - 1 - last_t][last_d]
        # `cand` is in score order, so the first free linkable one scores highest.
        k = next((k for k, d in enumerate(cand) if row[d] and not taken[k]), None)
        if k is not None:
          taken[k] = True
          d = cand[k]
          tube[0] += score_t[d][c]
          tube[1] += 1
          tube[2], tube[3] = t, d
          owner_t[d, c] = tube[4]
          still_live.append(tube)
        elif t - last_t >= config.max_gap:
          ended[c].append(tube[4])
        else:
          still_live.append(tube)
      for k, d in enumerate(cand):
        if not taken[k]:
          owner_t[d, c] = next_id[c]
          still_live.append([score_t[d][c], 1, t, d, next_id[c]])
          next_id[c] += 1
      live[c] = still_live
  return [
    _kept_tubes(c, ended[c], live[c], owner[:, :, c], frames, boxes, scores, config)
    for c in range(num_classes)
  ]


def _kept_tubes(
  label: int,
  ended: array.array,
  live: list[list[Any]],
  owner: np.ndarray,
  frames: np.ndarray,
  boxes: np.ndarray,
  scores: np.ndarray,
  config: LinkingConfig,
) -> list[Tube]:
  """The tubes of one class from its `(F, N)` tube ids, ended ones first, that pass the
  length (`end - start + 1`, in frames) and mean score filters."""
  num_dets = owner.shape[1]
  flat = owner.reshape(-1)
  where = np.flatnonzero(flat >= 0)  # step-major: each tube's detections in step order
  ids = flat[where]
  where = where[np.argsort(ids, kind='stable')]
  bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=len(ended) + len(live)))])
  order = np.concatenate([np.frombuffer(ended, np.int32), [tube[4] for tube in live]])
  out = []
  for i in order.astype(np.int64):
    members = where[bounds[i] : bounds[i + 1]]
    steps, dets = members // num_dets, members % num_dets
    if frames[steps[-1]] - frames[steps[0]] + 1 < config.min_length:
      continue
    tube = Tube(label, frames[steps], boxes[steps, dets], scores[steps, dets, label])
    if tube.score >= config.min_score:
      out.append(tube)
  return out


def link_video(
  frames: np.ndarray,
  boxes: np.ndarray,
  scores: np.ndarray,
  config: LinkingConfig = LinkingConfig(),
  *,
  in_pixels: bool = False,
) -> list[Tube]:
  """Links the per-frame detections of one video into tubes, each class on its own.

  ACT's `BuildTubes` (MMAction2's `link_tubes`) with tubelets of length 1, per class:
  1. Candidates: the `top_k` highest-scoring detections of each frame (all N boxes
     are offered to every class, with that class's score). ACT first applies a soft
     per-frame NMS (`nms_tubelets`, 0.6); that step is not done here.
  2. Frames in order; the first one starts one tube per candidate. At each later
     frame the live tubes are sorted by mean score, descending (stable: ties keep
     their previous order, older tubes first); each in turn takes, among the
     candidates not yet taken, the highest-scoring one (ties: lower detection index)
     whose IoU with the tube's last box is >= `iou_threshold`. A tube that takes none
     and has now gone `max_gap` frames (linking steps) without a match ends.
     Candidates nobody took start new tubes.
  3. Tubes of extent `end - start + 1 < min_length` or mean score `< min_score` are
     dropped; 3D NMS (`nms_tubes`, `nms_threshold`) among the remaining ones.

  Args:
    frames: `(F,)` strictly increasing 0-based frame indices of the detections (e.g.
      every frame after `fill_frames`).
    boxes: `(F, N, 4)` corner boxes, in pixels unless `config.plus_one` is False.
    scores: `(F, N, C)` per-class scores of each box.
    config: the linking parameters.
    in_pixels: the caller converted `boxes` to pixels itself, so boxes that all lie in
      [0, 1] are a model's collapsed boxes, not normalized ones (no check).

  Returns:
    All classes' tubes, sorted by score (mean per-frame score), descending; equal
    scores keep class order, then the order in which the tubes were kept by NMS.
  """
  frames, boxes, scores = check_video_arrays(frames, boxes, scores, 'link_video')
  if config.plus_one and not in_pixels:
    check_pixel_boxes(boxes, 'link_video')
  if frames.shape[0] == 0 or boxes.shape[1] == 0:
    return []
  out: list[Tube] = []
  for kept in _link_all_classes(frames, boxes, scores, config):
    keep = nms_tubes(kept, config.nms_threshold, plus_one=config.plus_one)
    out.extend(kept[i] for i in keep)
  return sorted(out, key=lambda t: -t.score)
