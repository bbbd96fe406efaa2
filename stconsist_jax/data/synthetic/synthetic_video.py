"""Drawing one synthetic video: shapes moving over a scrolling texture, with exact boxes.

A `VideoPlan` fixes everything; `render` draws it frame by frame, `write_video` saves XviD.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import videos

SHAPES = ('Disc', 'Square', 'Triangle', 'Cross', 'Diamond', 'Ring')
MOTIONS = ('Sweep', 'Bounce', 'Circle', 'Zigzag', 'Pulse', 'Diagonal')
FPS = 25
FOURCC = 'XVID'


def _tri(u: float) -> float:
  """Triangle wave in [0, 1] with period 1."""
  return 1.0 - abs(2.0 * (u % 1.0) - 1.0)


def _shape_mask(
  shape: str, cx: float, cy: float, r: float, angle: float, size: tuple[int, int]
) -> np.ndarray:
  """A filled shape of half-size r drawn without anti-aliasing (exact pixel extent)."""
  h, w = size
  mask = np.zeros((h, w), np.uint8)
  center = (int(round(cx)), int(round(cy)))

  def poly(points: np.ndarray) -> None:
    c, s = math.cos(angle), math.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    pts = np.round(rot + [cx, cy]).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8)

  if shape == 'Disc':
    cv2.circle(mask, center, int(round(r)), 255, -1, lineType=cv2.LINE_8)
  elif shape == 'Ring':
    cv2.circle(mask, center, int(round(r)), 255, -1, lineType=cv2.LINE_8)
    cv2.circle(mask, center, int(round(0.55 * r)), 0, -1, lineType=cv2.LINE_8)
  elif shape == 'Square':
    poly(np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.85)
  elif shape == 'Triangle':
    poly(np.array([[0, -r], [0.95 * r, 0.75 * r], [-0.95 * r, 0.75 * r]]))
  elif shape == 'Diamond':
    poly(np.array([[0, -r], [0.7 * r, 0], [0, r], [-0.7 * r, 0]]))
  elif shape == 'Cross':
    a, b = r, 0.33 * r
    poly(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]))
    poly(np.array([[-b, -a], [b, -a], [b, a], [-b, a]]))
  else:
    raise ValueError(f'unknown shape {shape!r}')
  return mask


def _extent(mask: np.ndarray) -> np.ndarray:
  """Corner box [x1, y1, x2, y2) of the nonzero pixels (x2, y2 exclusive)."""
  cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


@dataclasses.dataclass(frozen=True)
class Actor:
  shape: str
  motion: str
  rgb: tuple[int, int, int]
  r: float
  phase: float
  period: float  # frames per motion cycle
  anchor: tuple[float, float]  # fixed coordinate(s), in [0, 1]
  angle: float
  start: int
  end: int  # drawn on [start, end)
  # The path mirrored left-right (the same motion the other way) and then moved by
  # `shift` (fractions of the frame's width and height), kept inside the frame: how
  # the extra actors of a multi-actor video cross the first one's path.
  mirror: bool = False
  shift: tuple[float, float] = (0.0, 0.0)

  def place(self, f: int, size: tuple[int, int]) -> tuple[float, float, float]:
    """(cx, cy, r) on frame f; the actor always stays inside the frame."""
    cx, cy, r = self._path(f, size)
    if not self.mirror and self.shift == (0.0, 0.0):
      return cx, cy, r
    h, w = size
    lo_x, hi_x, lo_y, hi_y = self.r + 2, w - self.r - 3, self.r + 2, h - self.r - 3
    if self.mirror:
      cx = lo_x + hi_x - cx
    cx = min(max(cx + self.shift[0] * w, lo_x), hi_x)
    cy = min(max(cy + self.shift[1] * h, lo_y), hi_y)
    return cx, cy, r

  def _path(self, f: int, size: tuple[int, int]) -> tuple[float, float, float]:
    """(cx, cy, r) of the class motion on frame f, before any mirror or shift."""
    h, w = size
    u = f / self.period + self.phase
    r = self.r
    if self.motion == 'Pulse':
      r = self.r * (0.6 + 0.4 * (0.5 + 0.5 * math.sin(2 * math.pi * u)))
    lo_x, hi_x, lo_y, hi_y = self.r + 2, w - self.r - 3, self.r + 2, h - self.r - 3
    ax, ay = self.anchor
    fx, fy = lo_x + ax * (hi_x - lo_x), lo_y + ay * (hi_y - lo_y)
    if self.motion == 'Sweep':
      return lo_x + _tri(u) * (hi_x - lo_x), fy, r
    if self.motion == 'Bounce':
      return fx, hi_y - abs(math.sin(math.pi * u)) * (hi_y - lo_y), r
    if self.motion == 'Circle':
      rad = 0.5 * min(hi_x - lo_x, hi_y - lo_y)
      cx0, cy0 = 0.5 * (lo_x + hi_x), 0.5 * (lo_y + hi_y)
      return (cx0 + rad * math.cos(2 * math.pi * u), cy0 + rad * math.sin(2 * math.pi * u), r)
    if self.motion == 'Zigzag':
      return (lo_x + _tri(u / 4) * (hi_x - lo_x), lo_y + _tri(u) * (hi_y - lo_y), r)
    if self.motion == 'Pulse':
      return fx, fy, r
    if self.motion == 'Diagonal':
      t = _tri(u)
      return lo_x + t * (hi_x - lo_x), lo_y + (t if ay < 0.5 else 1 - t) * (hi_y - lo_y), r
    raise ValueError(f'unknown motion {self.motion!r}')

  def mask(self, f: int, size: tuple[int, int]) -> np.ndarray:
    """The actor's pixels on frame f: uint8 (H, W), 255 inside."""
    cx, cy, r = self.place(f, size)
    return _shape_mask(self.shape, cx, cy, r, self.angle, size)

  def draw(self, frame: np.ndarray, f: int) -> np.ndarray:
    """Paints the actor on frame f; returns its exact corner box."""
    mask = self.mask(f, frame.shape[:2])
    frame[mask > 0] = self.rgb
    return _extent(mask)


@dataclasses.dataclass(frozen=True, eq=False)
class BoxActor:
  """An actor on given boxes: a filled rectangle with a label-specific inner shape."""

  label: int  # 24-way tube label: picks the colours and the inner shape
  start: int
  end: int  # drawn on [start, end)
  boxes: np.ndarray  # (end - start, 4) corner boxes in pixels

  def draw(self, frame: np.ndarray, f: int) -> np.ndarray:
    """Paints the box of frame f (and its inner shape); returns the painted box."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in np.clip(self.boxes[f - self.start], 0, [w, h, w, h]))
    hue = (self.label * 7) % 180
    frame[y1:y2, x1:x2] = hsv_to_rgb(hue, 230, 240)
    inner = _shape_mask(
      SHAPES[self.label % len(SHAPES)],
      (x1 + x2) / 2,
      (y1 + y2) / 2,
      0.35 * min(x2 - x1, y2 - y1),
      0.0,
      frame.shape[:2],
    )
    frame[inner > 0] = hsv_to_rgb((hue + 90) % 180, 200, 120)
    return np.array([x1, y1, x2, y2], np.float64)


def hsv_to_rgb(h: int, s: int, v: int) -> tuple[int, int, int]:
  px = cv2.cvtColor(np.array([[[h, s, v]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
  return int(px[0]), int(px[1]), int(px[2])


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  """A muted periodic texture: low-frequency noise plus faint stripes."""
  h, w = size
  small = rng.uniform(0, 1, (6, 8, 3)).astype(np.float32)
  noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
  yy, xx = np.mgrid[0:h, 0:w]
  k = rng.uniform(0.03, 0.08)
  theta = rng.uniform(0, math.pi)
  stripes = 0.5 + 0.5 * np.sin(k * (xx * math.cos(theta) + yy * math.sin(theta)))
  base = rng.uniform(70, 110, 3)
  tex = base + 35 * (noise - 0.5) + 18 * stripes[..., None]
  return np.clip(tex, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class VideoPlan:
  """Everything needed to render one video (from the seed)."""

  path: str
  num_frames: int
  actors: tuple[Actor | BoxActor, ...]
  tube_ranges: tuple[tuple[int, int], ...]  # per annotated actor; () if unannotated
  scroll: tuple[float, float]
  bg_seed: int


def render_frames(
  plan: VideoPlan, size: tuple[int, int] = videos.UCF101_FRAME_SIZE
) -> Iterator[tuple[np.ndarray, list[np.ndarray | None]]]:
  """Frame by frame: RGB uint8 (H, W, 3) and each actor's box (None where absent)."""
  tex = _background(np.random.default_rng(plan.bg_seed), size)
  for f in range(plan.num_frames):
    shift = (int(round(f * plan.scroll[1])), int(round(f * plan.scroll[0])))
    frame = np.roll(tex, shift, axis=(0, 1))
    yield frame, [a.draw(frame, f) if a.start <= f < a.end else None for a in plan.actors]


def render(
  plan: VideoPlan, size: tuple[int, int] = videos.UCF101_FRAME_SIZE
) -> tuple[np.ndarray, list[np.ndarray]]:
  """RGB frames uint8 (n, H, W, 3) and, per actor, its exact boxes (n, 4) (NaN if absent)."""
  h, w = size
  frames = np.empty((plan.num_frames, h, w, 3), np.uint8)
  boxes = [np.full((plan.num_frames, 4), np.nan) for _ in plan.actors]
  for f, (frame, frame_boxes) in enumerate(render_frames(plan, size)):
    frames[f] = frame
    for k, box in enumerate(frame_boxes):
      if box is not None:
        boxes[k][f] = box
  return frames, boxes


def actor_geometry(
  actors: Sequence[Actor], num_frames: int, size: tuple[int, int] = videos.UCF101_FRAME_SIZE
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes and visibility of shape actors, from their masks alone (no frame is drawn).

  Returns:
    `boxes` float64 (k, num_frames, 4): each actor's exact corner box, as `render` gives
    it, NaN where absent; `visible` float64 (k, num_frames): the share of its pixels that
    the actors drawn after it (on top) leave uncovered, NaN where absent.
  """
  h, w = size
  boxes = np.full((len(actors), num_frames, 4), np.nan)
  visible = np.full((len(actors), num_frames), np.nan)
  for f in range(num_frames):
    covered = np.zeros(size, bool)
    for k in reversed(range(len(actors))):  # the topmost actor first
      actor = actors[k]
      if not actor.start <= f < actor.end:
        continue
      # Every shape lies within 1.25 r of its centre: work on that window only.
      cx, cy, r = actor.place(f, size)
      reach = 1.25 * r + 3
      x0, y0 = max(int(cx - reach), 0), max(int(cy - reach), 0)
      x1, y1 = min(int(cx + reach) + 1, w), min(int(cy + reach) + 1, h)
      mask = actor.mask(f, size)[y0:y1, x0:x1] > 0
      boxes[k, f] = _extent(mask) + [x0, y0, x0, y0]
      below = covered[y0:y1, x0:x1]
      visible[k, f] = np.count_nonzero(mask & ~below) / np.count_nonzero(mask)
      below |= mask
  return boxes, visible


def write_video(frames_rgb: Iterable[np.ndarray], path: pathlib.Path, fps: int = FPS) -> None:
  """Writes RGB frames (an (n, H, W, 3) array or any iterable of frames) as XviD."""
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = None
  for frame in frames_rgb:
    if writer is None:
      h, w = frame.shape[:2]
      writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (w, h))
      if not writer.isOpened():
        raise RuntimeError(f'OpenCV cannot write {FOURCC} video {path} (no codec?)')
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  if writer is None:
    raise ValueError(f'no frames to write to {path}')
  writer.release()
  _tag_as_xvid(path)


def _tag_as_xvid(path: pathlib.Path) -> None:
  """Sets the AVI codec tags to XVID, as in UCF-101's files.

  OpenCV's FFmpeg backend encodes MPEG-4 Part 2 (what XviD is) but tags the stream
  `FMP4`; the tag lives in the stream headers at the start of the file.
  """
  with open(path, 'r+b') as f:
    head = f.read(8192)
    f.seek(0)
    f.write(head.replace(b'FMP4', b'XVID'))


def annotation_plan(record: records_lib.VideoRecord, bg_seed: int) -> VideoPlan:
  """The plan of a video that follows a real record: one box actor per tube."""
  actors = tuple(BoxActor(t.label, t.start, t.end, t.boxes) for t in record.tubes)
  return VideoPlan(
    record.path,
    record.num_frames,
    actors,
    tuple((t.start, t.end) for t in record.tubes),
    scroll=(2.0, 0.0),
    bg_seed=bg_seed,
  )
