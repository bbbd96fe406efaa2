"""A synthetic dataset in the exact on-disk layout of UCF-101 + UCF101-24 annotations.

Classes are shapes moving in class-specific ways over a scrolling textured background;
`pyannot.pkl` holds their exact pixel boxes in the real file's format and dtypes.

  python -m stconsist_jax.data.synthetic --output DIR [--seed 0] [--num-classes 6]
      [--annotated-classes 4] [--videos-per-class 4] [--min-frames 24] [--max-frames 60]
  python -m stconsist_jax.data.synthetic --output DIR \
      --from-annotations pyannot.pkl --max-videos 20 [--num-workers N]

The output folder holds `UCF-101/<Class>/v_<Class>_gGG_cCC.avi` (XviD, 320x240, 25 fps),
`ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt` and `pyannot.pkl`: exactly
what the TFDS builder reads from a user's download.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import pathlib
import pickle
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

from stconsist_jax import cli
from stconsist_jax import fileio
from stconsist_jax.data import annotations as ann

SHAPES = ("Disc", "Square", "Triangle", "Cross", "Diamond", "Ring")
MOTIONS = ("Sweep", "Bounce", "Circle", "Zigzag", "Pulse", "Diagonal")
FPS = 25
FOURCC = "XVID"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate; everything follows deterministically from these fields."""
  seed: int = 0
  num_classes: int = 6
  annotated_classes: int = 4
  videos_per_class: int = 4
  min_frames: int = 24
  max_frames: int = 60
  clips_per_group: int = 1
  second_actor_prob: float = 0.3
  # Chance that the primary actor's tube spans the whole video; otherwise up to a fifth
  # of the frames at each end stay unannotated although the actor is visible (as real
  # UCF101-24 tubes bound the action, not the person).
  full_tube_prob: float = 0.3
  width: int = 320
  height: int = 240

  def check(self) -> None:
    max_classes = len(SHAPES) * len(MOTIONS)
    if not 1 <= self.num_classes <= max_classes:
      raise ValueError(f"num_classes must be in [1, {max_classes}], got {self.num_classes}")
    if not 0 <= self.annotated_classes <= min(24, self.num_classes):
      raise ValueError(f"annotated_classes must be in [0, min(24, num_classes)], "
                       f"got {self.annotated_classes}")
    for name in ("second_actor_prob", "full_tube_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
    if self.videos_per_class < 1 or self.clips_per_group < 1:
      raise ValueError("videos_per_class and clips_per_group must be >= 1")
    if not 2 <= self.min_frames <= self.max_frames:
      raise ValueError(f"need 2 <= min_frames <= max_frames, got "
                       f"{self.min_frames}, {self.max_frames}")


@dataclasses.dataclass(frozen=True)
class ClassStyle:
  name: str  # e.g. 'DiscSweep'
  shape: str
  motion: str
  hue: int  # OpenCV hue, 0..179


@dataclasses.dataclass
class SyntheticDataset:
  """Ground truth of a generated folder."""
  root: pathlib.Path
  spec: SyntheticSpec | None
  class_names: tuple[str, ...]  # classInd.txt order (101-way labels).
  annotated_class_names: tuple[str, ...]  # 24-way label order.
  records: dict[str, ann.VideoRecord]  # every video; exact drawn boxes (corners).
  splits: dict[int, tuple[list[str], list[str]]]  # split -> (train, test) paths.

  @property
  def manual_dir(self) -> pathlib.Path:
    return self.root


def class_styles(num_classes: int) -> list[ClassStyle]:
  """Class i pairs shape i and motion i (+ i // 6): the first 6 differ in both."""
  styles = []
  for i in range(num_classes):
    shape = SHAPES[i % len(SHAPES)]
    motion = MOTIONS[(i + i // len(SHAPES)) % len(MOTIONS)]
    hue = int(round((i * 0.618034 % 1.0) * 180)) % 180
    styles.append(ClassStyle(shape + motion, shape, motion, hue))
  return styles


def video_path(class_name: str, group: int, clip: int) -> str:
  return f"{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}"


def test_groups(split: int, num_groups: int) -> set[int]:
  """Synthetic rule: a third of the groups are test, a different third per split."""
  return {g for g in range(1, num_groups + 1) if (g - 1) % 3 == split - 1}


# --------------------------------------------------------------------------- drawing


def _tri(u: float) -> float:
  """Triangle wave in [0, 1] with period 1."""
  return 1.0 - abs(2.0 * (u % 1.0) - 1.0)


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float,
                size: tuple[int, int]) -> np.ndarray:
  """A filled shape of half-size r drawn without anti-aliasing (exact pixel extent)."""
  h, w = size
  mask = np.zeros((h, w), np.uint8)
  center = (int(round(cx)), int(round(cy)))

  def poly(points: np.ndarray) -> None:
    c, s = math.cos(angle), math.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    pts = np.round(rot + [cx, cy]).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8)

  if shape == "Disc":
    cv2.circle(mask, center, int(round(r)), 255, -1, lineType=cv2.LINE_8)
  elif shape == "Ring":
    cv2.circle(mask, center, int(round(r)), 255, -1, lineType=cv2.LINE_8)
    cv2.circle(mask, center, int(round(0.55 * r)), 0, -1, lineType=cv2.LINE_8)
  elif shape == "Square":
    poly(np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.85)
  elif shape == "Triangle":
    poly(np.array([[0, -r], [0.95 * r, 0.75 * r], [-0.95 * r, 0.75 * r]]))
  elif shape == "Diamond":
    poly(np.array([[0, -r], [0.7 * r, 0], [0, r], [-0.7 * r, 0]]))
  elif shape == "Cross":
    a, b = r, 0.33 * r
    poly(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]))
    poly(np.array([[-b, -a], [b, -a], [b, a], [-b, a]]))
  else:
    raise ValueError(f"unknown shape {shape!r}")
  return mask


def _extent(mask: np.ndarray) -> np.ndarray:
  """Corner box [x1, y1, x2, y2) of the nonzero pixels (x2, y2 exclusive)."""
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


@dataclasses.dataclass(frozen=True)
class _Actor:
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

  def place(self, f: int, size: tuple[int, int]) -> tuple[float, float, float]:
    """(cx, cy, r) on frame f; the actor always stays inside the frame."""
    h, w = size
    u = f / self.period + self.phase
    r = self.r
    if self.motion == "Pulse":
      r = self.r * (0.6 + 0.4 * (0.5 + 0.5 * math.sin(2 * math.pi * u)))
    lo_x, hi_x, lo_y, hi_y = self.r + 2, w - self.r - 3, self.r + 2, h - self.r - 3
    ax, ay = self.anchor
    fx, fy = lo_x + ax * (hi_x - lo_x), lo_y + ay * (hi_y - lo_y)
    if self.motion == "Sweep":
      return lo_x + _tri(u) * (hi_x - lo_x), fy, r
    if self.motion == "Bounce":
      return fx, hi_y - abs(math.sin(math.pi * u)) * (hi_y - lo_y), r
    if self.motion == "Circle":
      rad = 0.5 * min(hi_x - lo_x, hi_y - lo_y)
      cx0, cy0 = 0.5 * (lo_x + hi_x), 0.5 * (lo_y + hi_y)
      return (cx0 + rad * math.cos(2 * math.pi * u), cy0 + rad * math.sin(2 * math.pi * u), r)
    if self.motion == "Zigzag":
      return (lo_x + _tri(u / 4) * (hi_x - lo_x), lo_y + _tri(u) * (hi_y - lo_y), r)
    if self.motion == "Pulse":
      return fx, fy, r
    if self.motion == "Diagonal":
      t = _tri(u)
      return lo_x + t * (hi_x - lo_x), lo_y + (t if ay < 0.5 else 1 - t) * (hi_y - lo_y), r
    raise ValueError(f"unknown motion {self.motion!r}")

  def draw(self, frame: np.ndarray, f: int) -> np.ndarray:
    """Paints the actor on frame f; returns its exact corner box."""
    size = frame.shape[:2]
    cx, cy, r = self.place(f, size)
    mask = _shape_mask(self.shape, cx, cy, r, self.angle, size)
    frame[mask > 0] = self.rgb
    return _extent(mask)


@dataclasses.dataclass(frozen=True, eq=False)
class _BoxActor:
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
    frame[y1:y2, x1:x2] = _hsv_to_rgb(hue, 230, 240)
    inner = _shape_mask(SHAPES[self.label % len(SHAPES)], (x1 + x2) / 2, (y1 + y2) / 2,
                        0.35 * min(x2 - x1, y2 - y1), 0.0, frame.shape[:2])
    frame[inner > 0] = _hsv_to_rgb((hue + 90) % 180, 200, 120)
    return np.array([x1, y1, x2, y2], np.float64)


def _hsv_to_rgb(h: int, s: int, v: int) -> tuple[int, int, int]:
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
  actors: tuple[_Actor | _BoxActor, ...]
  tube_ranges: tuple[tuple[int, int], ...]  # per annotated actor; () if unannotated
  scroll: tuple[float, float]
  bg_seed: int


def plan_video(spec: SyntheticSpec, class_index: int, video_index: int,
               annotated: bool) -> VideoPlan:
  """Deterministic plan of video `video_index` of generation-order class `class_index`."""
  style = class_styles(spec.num_classes)[class_index]
  rng = np.random.default_rng([spec.seed, class_index, video_index])
  n = int(rng.integers(spec.min_frames, spec.max_frames + 1))
  group = video_index // spec.clips_per_group + 1
  clip = video_index % spec.clips_per_group + 1
  path = video_path(style.name, group, clip)
  h = spec.height

  def actor(start: int, end: int) -> _Actor:
    hue = (style.hue + int(rng.integers(-4, 5))) % 180
    return _Actor(
        shape=style.shape, motion=style.motion,
        rgb=_hsv_to_rgb(hue, int(rng.integers(200, 256)), int(rng.integers(220, 256))),
        r=float(rng.uniform(0.15, 0.2) * h), phase=float(rng.uniform(0, 1)),
        period=float(rng.uniform(18, 30)),
        anchor=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
        angle=float(rng.uniform(-0.25, 0.25)), start=start, end=end)

  actors = [actor(0, n)]
  if rng.uniform() < spec.second_actor_prob and n >= 8:
    a = int(rng.integers(0, n // 2))
    b = int(rng.integers(a + max(4, n // 4), n + 1))
    actors.append(actor(a, b))
  ranges = ()
  if annotated:
    if rng.uniform() < spec.full_tube_prob:
      first = (0, n)
    else:
      first = (int(rng.integers(0, n // 5 + 1)), n - int(rng.integers(0, n // 5 + 1)))
    ranges = (first,) + tuple((a.start, a.end) for a in actors[1:])
  scroll = (float(rng.uniform(1, 4) * rng.choice([-1, 1])),
            float(rng.uniform(0, 2) * rng.choice([-1, 1])))
  return VideoPlan(path, n, tuple(actors), ranges, scroll, int(rng.integers(2**31)))


def render_frames(plan: VideoPlan, size: tuple[int, int] = ann.UCF101_FRAME_SIZE
                  ) -> Iterator[tuple[np.ndarray, list[np.ndarray | None]]]:
  """Frame by frame: RGB uint8 (H, W, 3) and each actor's box (None where absent)."""
  tex = _background(np.random.default_rng(plan.bg_seed), size)
  for f in range(plan.num_frames):
    shift = (int(round(f * plan.scroll[1])), int(round(f * plan.scroll[0])))
    frame = np.roll(tex, shift, axis=(0, 1))
    yield frame, [a.draw(frame, f) if a.start <= f < a.end else None
                  for a in plan.actors]


def render(plan: VideoPlan, size: tuple[int, int] = ann.UCF101_FRAME_SIZE
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


def write_video(frames_rgb: Iterable[np.ndarray], path: pathlib.Path, fps: int = FPS
                ) -> None:
  """Writes RGB frames (an (n, H, W, 3) array or any iterable of frames) as XviD."""
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = None
  for frame in frames_rgb:
    if writer is None:
      h, w = frame.shape[:2]
      writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (w, h))
      if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {FOURCC} video {path} (no codec?)")
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  if writer is None:
    raise ValueError(f"no frames to write to {path}")
  writer.release()
  _tag_as_xvid(path)


def _tag_as_xvid(path: pathlib.Path) -> None:
  """Sets the AVI codec tags to XVID, as in UCF-101's files.

  OpenCV's FFmpeg backend encodes MPEG-4 Part 2 (what XviD is) but tags the stream
  `FMP4`; the tag lives in the stream headers at the start of the file.
  """
  with open(path, "r+b") as f:
    head = f.read(8192)
    f.seek(0)
    f.write(head.replace(b"FMP4", b"XVID"))


def _record(plan: VideoPlan, boxes: list[np.ndarray], label101: int, label24: int | None,
            class_name: str) -> ann.VideoRecord:
  tubes = []
  if label24 is not None:
    for (s, e), b in zip(plan.tube_ranges, boxes):
      tubes.append(ann.Tube(label24, s, e, b[s:e]))
  return ann.VideoRecord(plan.path, label101, class_name, plan.num_frames, tuple(tubes))


# --------------------------------------------------------------------------- folders


def _atomic_dir(output_dir: pathlib.Path, overwrite: bool):
  """A temp dir beside `output_dir`; `commit()` renames it into place."""
  if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty (pass overwrite=True, "
                          "--overwrite, to replace it)")
  output_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))

  def commit() -> None:
    if output_dir.exists():
      shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)

  return tmp, commit


def _write_lists(root: pathlib.Path, class_names: Sequence[str], paths: Sequence[str],
                 test_groups_of) -> dict[int, tuple[list[str], list[str]]]:
  splits = {}
  list_dir = root / "ucfTrainTestlist"
  ann.write_class_index(class_names, list_dir / "classInd.txt")
  for s in (1, 2, 3):
    test = [p for p in paths if ann.group_of(p) in test_groups_of(s)]
    test_set = set(test)
    train = [p for p in paths if p not in test_set]
    ann.write_split_lists(list_dir, s, train, test, class_names)
    splits[s] = (train, test)
  return splits


def generate(output_dir: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec(),
             overwrite: bool = False) -> SyntheticDataset:
  """Writes the synthetic UCF-101-layout folder and returns its ground truth."""
  spec.check()
  output_dir = pathlib.Path(output_dir)
  tmp, commit = _atomic_dir(output_dir, overwrite)
  t0 = time.time()
  try:
    styles = class_styles(spec.num_classes)
    class_names = tuple(sorted((s.name for s in styles), key=str.lower))
    annotated = tuple(sorted((s.name for s in styles[:spec.annotated_classes]),
                             key=str.lower))
    records = {}
    for ci, style in enumerate(styles):
      label24 = annotated.index(style.name) if style.name in annotated else None
      for vi in range(spec.videos_per_class):
        plan = plan_video(spec, ci, vi, label24 is not None)
        frames, boxes = render(plan, (spec.height, spec.width))
        write_video(frames, tmp / "UCF-101" / f"{plan.path}.avi")
        records[plan.path] = _record(plan, boxes, class_names.index(style.name), label24,
                                     style.name)
    records = dict(sorted(records.items()))
    num_groups = math.ceil(spec.videos_per_class / spec.clips_per_group)
    splits = _write_lists(tmp, class_names, list(records),
                          lambda s: test_groups(s, num_groups))
    ann.write_pyannot(records.values(), tmp / "pyannot.pkl")
    commit()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("wrote %d synthetic videos to %s in %.1f s", len(records), output_dir,
               time.time() - t0)
  return SyntheticDataset(output_dir, spec, class_names, annotated, records, splits)


def render_video(spec: SyntheticSpec, path: str) -> tuple[np.ndarray, list[np.ndarray]]:
  """Re-renders one video of `generate(..., spec)` (RGB frames, per-actor boxes)."""
  styles = class_styles(spec.num_classes)
  names = [s.name for s in styles]
  class_name = ann.class_of(path)
  ci = names.index(class_name)
  group, clip = ann.group_of(path), int(path.rsplit("_c", 1)[1])
  vi = (group - 1) * spec.clips_per_group + clip - 1
  plan = plan_video(spec, ci, vi, ci < spec.annotated_classes)
  if plan.path != path:
    raise ValueError(f"{path!r} is not a video of this spec")
  return render(plan, (spec.height, spec.width))


def _official_test_groups(split: int) -> set[int]:
  """UCF-101's rule: split s tests on groups 7(s-1)+1 .. 7s."""
  return set(range(7 * (split - 1) + 1, 7 * split + 1))


def annotation_plan(record: ann.VideoRecord, bg_seed: int) -> VideoPlan:
  """The plan of a video that follows a real record: one box actor per tube."""
  actors = tuple(_BoxActor(t.label, t.start, t.end, t.boxes) for t in record.tubes)
  return VideoPlan(record.path, record.num_frames, actors,
                   tuple((t.start, t.end) for t in record.tubes), scroll=(2.0, 0.0),
                   bg_seed=bg_seed)


@dataclasses.dataclass(frozen=True)
class _VideoTask:
  plan: VideoPlan
  file: pathlib.Path
  size: tuple[int, int]


def _write_planned_video(task: _VideoTask) -> str:
  """Renders and writes one video frame by frame (a worker's job); returns its path."""
  write_video((frame for frame, _ in render_frames(task.plan, task.size)), task.file)
  return task.plan.path


def _run_all(fn: Callable[[Any], Any], tasks: Sequence[Any], num_workers: int) -> None:
  """fn(task) for every task: in this process (num_workers 0) or spawned workers."""
  start, done = time.time(), 0

  def progress() -> None:
    nonlocal done
    done += 1
    if done % 100 == 0 or done == len(tasks):
      logging.info("%d/%d videos (%.1f videos/s)", done, len(tasks),
                   done / max(time.time() - start, 1e-9))

  if num_workers <= 0 or len(tasks) <= 1:
    for task in tasks:
      fn(task)
      progress()
    return
  # Spawned, not forked: a caller's threads or TensorFlow state never leak in.
  ctx = multiprocessing.get_context("spawn")
  pool = concurrent.futures.ProcessPoolExecutor(min(num_workers, len(tasks)),
                                                mp_context=ctx)
  try:
    for future in concurrent.futures.as_completed([pool.submit(fn, t) for t in tasks]):
      future.result()
      progress()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
  return os.cpu_count() or 1


def generate_from_annotations(output_dir: str | os.PathLike, annotations_path: str |
                              os.PathLike, max_videos: int | None = 20, seed: int = 0,
                              overwrite: bool = False,
                              num_workers: int | None = None) -> SyntheticDataset:
  """Renders videos that follow the tubes of a real annotation file (real geometry).

  Each tube's actor is a filled rectangle exactly covering its box, with a
  class-specific inner shape. The output holds the original entries in the input's
  format: `pyannot.pkl`, or `UCF101v2-GT.pkl` (split 1 lists) for an ACT/MOC file.
  `max_videos` videos evenly spread over the sorted names (None or 0: all of them),
  rendered by `num_workers` spawned processes (default: CPU count; 0: in this one).
  The output is the same for any worker count, and appears only when complete.

  Raises:
    FileNotFoundError, annotations.DataFileError: a missing or unusable annotation
      file (one-line messages naming it); FileExistsError: a non-empty output_dir.
  """
  raw = ann.load_pickle(annotations_path)
  act = ann.detect_format(raw, annotations_path) == "act"
  records = ann.load_annotations(annotations_path) if act else ann.records_from_pyannot(
      raw, source=annotations_path)
  keys = sorted(records)
  count = len(keys) if not max_videos or max_videos <= 0 else max_videos
  chosen = keys[::max(1, len(keys) // count)][:count]
  num_workers = default_workers() if num_workers is None else num_workers
  output_dir = pathlib.Path(output_dir)
  tmp, commit = _atomic_dir(output_dir, overwrite)
  t0 = time.time()
  try:
    rng = np.random.default_rng(seed)
    size = ann.UCF101_FRAME_SIZE  # The annotations' own pixel frame.
    tasks = [_VideoTask(annotation_plan(records[p], int(rng.integers(2**31))),
                        tmp / "UCF-101" / f"{p}.avi", size) for p in chosen]
    _run_all(_write_planned_video, tasks, num_workers)
    splits = _write_lists(tmp, ann.UCF101_CLASSES, chosen, _official_test_groups)
    if act:
      ann.write_act([records[p] for p in chosen], tmp / "UCF101v2-GT.pkl",
                    raw.get("labels") or ann.UCF24_CLASSES, *splits[1])
    else:
      subset = {p: raw[p] for p in chosen}
      fileio.atomic_write(tmp / "pyannot.pkl", pickle.dumps(subset, protocol=2))
    commit()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("wrote %d videos following %s to %s in %.1f s", len(chosen),
               annotations_path, output_dir, time.time() - t0)
  return SyntheticDataset(output_dir, None, ann.UCF101_CLASSES, ann.UCF24_CLASSES,
                          {p: records[p] for p in chosen}, splits)


# --------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_string("output", None, "Folder to write (must not exist or be empty).")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_integer("num_classes", 6, "Classes (shape x motion).")
  flags.DEFINE_integer("annotated_classes", 4, "Classes with boxes.")
  flags.DEFINE_integer("videos_per_class", 4, "Videos per class.")
  flags.DEFINE_integer("min_frames", 24, "Shortest video.")
  flags.DEFINE_integer("max_frames", 60, "Longest video.")
  flags.DEFINE_integer("clips_per_group", 1, "Clips per group (gGG).")
  flags.DEFINE_string("from_annotations", None, "Render videos following this real "
                      "pyannot.pkl (or UCF101v2-GT.pkl) instead.")
  flags.DEFINE_integer("max_videos", 20, "With --from_annotations (0: all videos).")
  flags.DEFINE_integer("num_workers", None, "With --from_annotations: rendering "
                       "processes (default: CPU count; 0: in this process).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.")
  flags.mark_flag_as_required("output")


class _FlagError(ValueError):
  """A flag value the generator cannot use."""


def _generate_from_flags() -> SyntheticDataset:
  if FLAGS.from_annotations:
    return generate_from_annotations(FLAGS.output, FLAGS.from_annotations,
                                     FLAGS.max_videos, FLAGS.seed, FLAGS.overwrite,
                                     FLAGS.num_workers)
  spec = SyntheticSpec(seed=FLAGS.seed, num_classes=FLAGS.num_classes,
                       annotated_classes=FLAGS.annotated_classes,
                       videos_per_class=FLAGS.videos_per_class,
                       min_frames=FLAGS.min_frames, max_frames=FLAGS.max_frames,
                       clips_per_group=FLAGS.clips_per_group)
  try:
    spec.check()
  except ValueError as e:
    raise _FlagError(str(e)) from None
  return generate(FLAGS.output, spec, FLAGS.overwrite)


def main(argv: Sequence[str]) -> int:
  """Writes the folder; a problem with the inputs is one line on stderr, status 2."""
  del argv
  try:
    ds = _generate_from_flags()
  except (OSError, ann.DataFileError, _FlagError) as e:  # Inputs, not bugs.
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  annotated = sum(bool(r.tubes) for r in ds.records.values())
  print(f"wrote {len(ds.records)} videos ({annotated} annotated) of "
        f"{len(ds.class_names)} classes to {ds.root}")
  return 0


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing that also accepts `--num-classes` for `--num_classes`."""
  fixed = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("---"):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    fixed.append(arg)
  return FLAGS(fixed)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
