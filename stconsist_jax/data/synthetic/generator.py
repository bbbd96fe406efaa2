"""A synthetic dataset in the exact on-disk layout of UCF-101 + UCF101-24 annotations.

Classes are shapes moving in class-specific ways over a scrolling textured background
(drawn by `synthetic_video`); `pyannot.pkl` holds their exact pixel boxes in the real
file's format and dtypes. Its command line is `tools/generate_synthetic.py`.

The output folder holds `UCF-101/<Class>/v_<Class>_gGG_cCC.avi` (XviD, 320x240, 25 fps),
`ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt` and `pyannot.pkl`: exactly
what the TFDS builder reads from a user's download.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
import os
import pathlib
import pickle
import shutil
import tempfile
import time
from typing import Any
from collections.abc import Callable, Iterator, Sequence

from absl import logging
import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import split_lists
from stconsist_jax.data.ucf101 import videos
from stconsist_jax.data.ucf101 import annotations as ann
from stconsist_jax.data.synthetic import synthetic_video as video_lib


class SpecError(errors.UserError, ValueError):
  """A `SyntheticSpec` that cannot be generated (one-line message)."""


MAX_ACTORS = 3  # most actors of a multi-actor video
# Each actor of a multi-actor video keeps at least this share of its pixels uncovered by
# the actors drawn over it, on every frame: boxed actors are always visible.
MIN_VISIBLE_SHARE = 0.4
CROSSING_TRIES = 8  # draws of a later actor's path before the video goes without it
_MULTI_ACTOR_STREAM = 1  # seeds the multi-actor draws apart from the base plan's


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
  # Multi-actor videos, as UCF101-24's several people doing the video's one action: with
  # this chance a video has 2..max_actors actors of its class, each with its own tube over
  # exactly the frames it is drawn on (then the first actor's tube spans the video and
  # second_actor_prob's actor is not drawn). The later actors enter late or leave early,
  # cross the first one's path, and leave every actor below them at least
  # MIN_VISIBLE_SHARE visible. The other videos are exactly those of multi_actor_prob 0.
  multi_actor_prob: float = 0.0
  max_actors: int = 1

  def check(self) -> None:
    """Raises SpecError naming the first field out of range."""
    max_classes = len(video_lib.SHAPES) * len(video_lib.MOTIONS)
    if not 1 <= self.num_classes <= max_classes:
      raise SpecError(f'num_classes must be in [1, {max_classes}], got {self.num_classes}')
    if not 0 <= self.annotated_classes <= min(24, self.num_classes):
      raise SpecError(
        f'annotated_classes must be in [0, min(24, num_classes)], got {self.annotated_classes}'
      )
    for name in ('second_actor_prob', 'full_tube_prob', 'multi_actor_prob'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise SpecError(f'{name} must be in [0, 1], got {getattr(self, name)}')
    if self.videos_per_class < 1 or self.clips_per_group < 1:
      raise SpecError('videos_per_class and clips_per_group must be >= 1')
    if not 2 <= self.min_frames <= self.max_frames:
      raise SpecError(
        f'need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}'
      )
    if not 1 <= self.max_actors <= MAX_ACTORS:
      raise SpecError(f'max_actors must be in [1, {MAX_ACTORS}], got {self.max_actors}')
    if self.multi_actor_prob > 0 and self.max_actors < 2:
      raise SpecError(f'multi_actor_prob > 0 needs max_actors >= 2, got {self.max_actors}')


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
  records: dict[str, records_lib.VideoRecord]  # every video; exact drawn boxes (corners).
  splits: dict[int, tuple[list[str], list[str]]]  # split -> (train, test) paths.


def class_styles(num_classes: int) -> list[ClassStyle]:
  """Class i pairs shape i and motion i (+ i // 6): the first 6 differ in both."""
  styles = []
  for i in range(num_classes):
    shape = video_lib.SHAPES[i % len(video_lib.SHAPES)]
    motion = video_lib.MOTIONS[(i + i // len(video_lib.SHAPES)) % len(video_lib.MOTIONS)]
    hue = int(round((i * 0.618034 % 1.0) * 180)) % 180
    styles.append(ClassStyle(shape + motion, shape, motion, hue))
  return styles


def video_path(class_name: str, group: int, clip: int) -> str:
  return f'{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}'


def test_groups(split: int, num_groups: int) -> set[int]:
  """Synthetic rule: a third of the groups are test, a different third per split."""
  return {g for g in range(1, num_groups + 1) if (g - 1) % 3 == split - 1}


def _draw_actor(
  rng: np.random.Generator, style: ClassStyle, height: int, start: int, end: int
) -> video_lib.Actor:
  """An actor of the class: its colour, size, motion phase and speed, anchor and angle."""
  hue = (style.hue + int(rng.integers(-4, 5))) % 180
  return video_lib.Actor(
    shape=style.shape,
    motion=style.motion,
    rgb=video_lib.hsv_to_rgb(hue, int(rng.integers(200, 256)), int(rng.integers(220, 256))),
    r=float(rng.uniform(0.15, 0.2) * height),
    phase=float(rng.uniform(0, 1)),
    period=float(rng.uniform(18, 30)),
    anchor=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
    angle=float(rng.uniform(-0.25, 0.25)),
    start=start,
    end=end,
  )


def plan_video(
  spec: SyntheticSpec, class_index: int, video_index: int, annotated: bool
) -> video_lib.VideoPlan:
  """Deterministic plan of video `video_index` of generation-order class `class_index`."""
  style = class_styles(spec.num_classes)[class_index]
  rng = np.random.default_rng([spec.seed, class_index, video_index])
  n = int(rng.integers(spec.min_frames, spec.max_frames + 1))
  group = video_index // spec.clips_per_group + 1
  clip = video_index % spec.clips_per_group + 1
  path = video_path(style.name, group, clip)

  actors = [_draw_actor(rng, style, spec.height, 0, n)]
  if rng.uniform() < spec.second_actor_prob and n >= 8:
    a = int(rng.integers(0, n // 2))
    b = int(rng.integers(a + max(4, n // 4), n + 1))
    actors.append(_draw_actor(rng, style, spec.height, a, b))
  ranges = ()
  if annotated:
    if rng.uniform() < spec.full_tube_prob:
      first = (0, n)
    else:
      first = (int(rng.integers(0, n // 5 + 1)), n - int(rng.integers(0, n // 5 + 1)))
    ranges = (first,) + tuple((a.start, a.end) for a in actors[1:])
  scroll = (
    float(rng.uniform(1, 4) * rng.choice([-1, 1])),
    float(rng.uniform(0, 2) * rng.choice([-1, 1])),
  )
  plan = video_lib.VideoPlan(path, n, tuple(actors), ranges, scroll, int(rng.integers(2**31)))
  if spec.multi_actor_prob > 0:
    # Its own random stream: the base plan's draws, and so every single-actor video,
    # stay those of multi_actor_prob 0.
    multi_rng = np.random.default_rng([spec.seed, class_index, video_index, _MULTI_ACTOR_STREAM])
    if multi_rng.uniform() < spec.multi_actor_prob:
      plan = _multi_actor_plan(spec, plan, style, multi_rng)
  return plan


def _crossing_actor(
  rng: np.random.Generator,
  style: ClassStyle,
  size: tuple[int, int],
  first: video_lib.Actor,
  index: int,
  start: int,
  end: int,
) -> video_lib.Actor:
  """Actor `index` (>= 1) of a multi-actor video, on a path that crosses `first`'s.

  Odd actors run the class motion mirrored (the other way), even ones the same way at
  another phase and speed. The anchor lines the fixed coordinate of the path up with
  the first actor's; the path is then shifted by 0.9 to 1.3 actor radii along each axis,
  so that where the two meet their shapes overlap only in part (boxes cross, neither
  hides the other) and a circle path becomes another circle crossing the first.
  """
  height, width = size
  actor = _draw_actor(rng, style, height, start, end)
  mirror = index % 2 == 1
  ax, ay = first.anchor
  jitter = rng.uniform(-0.05, 0.05, 2)
  anchor = (
    float(np.clip((1.0 - ax if mirror else ax) + jitter[0], 0.0, 1.0)),
    float(np.clip(ay + jitter[1], 0.0, 1.0)),
  )
  offset = rng.uniform(0.9, 1.3, 2) * rng.choice([-1.0, 1.0], 2) * max(first.r, actor.r)
  shift = (float(offset[0] / width), float(offset[1] / height))
  return dataclasses.replace(actor, anchor=anchor, mirror=mirror, shift=shift)


def _multi_actor_plan(
  spec: SyntheticSpec,
  plan: video_lib.VideoPlan,
  style: ClassStyle,
  rng: np.random.Generator,
) -> video_lib.VideoPlan:
  """`plan` with 2..max_actors actors: the first on the whole video, the others crossing it.

  A later actor is present on a random stretch of at least half the video; its path is
  drawn again (up to CROSSING_TRIES times) while it would hide an actor below it beyond
  MIN_VISIBLE_SHARE on some frame. An annotated video boxes every actor on every frame it
  is drawn on.
  """
  n = plan.num_frames
  size = (spec.height, spec.width)
  actors = [plan.actors[0]]
  for index in range(1, int(rng.integers(2, spec.max_actors + 1))):
    length = int(rng.integers((n + 1) // 2, n + 1))
    start = int(rng.integers(0, n - length + 1))
    for _ in range(CROSSING_TRIES):
      actor = _crossing_actor(rng, style, size, actors[0], index, start, start + length)
      _, visible = video_lib.actor_geometry(actors + [actor], n, size)
      if np.nanmin(visible) >= MIN_VISIBLE_SHARE:
        actors.append(actor)
        break
  ranges = tuple((a.start, a.end) for a in actors) if plan.tube_ranges else ()
  return dataclasses.replace(plan, actors=tuple(actors), tube_ranges=ranges)


def _record(
  plan: video_lib.VideoPlan,
  boxes: list[np.ndarray],
  label101: int,
  label24: int | None,
  class_name: str,
) -> records_lib.VideoRecord:
  tubes = []
  if label24 is not None:
    for (s, e), b in zip(plan.tube_ranges, boxes):
      tubes.append(records_lib.AnnotatedTube(label24, s, e, b[s:e]))
  return records_lib.VideoRecord(plan.path, label101, class_name, plan.num_frames, tuple(tubes))


# --------------------------------------------------------------------------- folders


@contextlib.contextmanager
def _atomic_dir(output_dir: pathlib.Path, overwrite: bool) -> Iterator[pathlib.Path]:
  """A temp dir beside `output_dir`, renamed into place when the block completes.

  If the block raises, the temp dir is removed and `output_dir` is left as it was.
  """
  if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
    raise FileExistsError(
      f'{output_dir} exists and is not empty (pass overwrite=True, --overwrite, to replace it)'
    )
  output_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f'.{output_dir.name}.'))
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if output_dir.exists():
    shutil.rmtree(output_dir)
  os.replace(tmp, output_dir)


def _write_lists(
  root: pathlib.Path, class_names: Sequence[str], paths: Sequence[str], test_groups_of
) -> dict[int, tuple[list[str], list[str]]]:
  splits = {}
  list_dir = root / 'ucfTrainTestlist'
  split_lists.write_class_index(class_names, list_dir / 'classInd.txt')
  for s in (1, 2, 3):
    test = [p for p in paths if videos.group_of(p) in test_groups_of(s)]
    test_set = set(test)
    train = [p for p in paths if p not in test_set]
    split_lists.write_split_lists(list_dir, s, train, test, class_names)
    splits[s] = (train, test)
  return splits


def group_count(spec: SyntheticSpec) -> int:
  """Groups (gGG) per class."""
  return math.ceil(spec.videos_per_class / spec.clips_per_group)


def _class_names(spec: SyntheticSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(every class, the annotated classes), each sorted as classInd.txt and UCF101-24 are."""
  styles = class_styles(spec.num_classes)
  class_names = tuple(sorted((s.name for s in styles), key=str.lower))
  annotated = tuple(sorted((s.name for s in styles[: spec.annotated_classes]), key=str.lower))
  return class_names, annotated


def _planned_videos(
  spec: SyntheticSpec,
) -> Iterator[tuple[video_lib.VideoPlan, int, int | None, str]]:
  """(plan, 101-way label, 24-way label or None, class name) of every video, in order."""
  class_names, annotated = _class_names(spec)
  for ci, style in enumerate(class_styles(spec.num_classes)):
    label24 = annotated.index(style.name) if style.name in annotated else None
    for vi in range(spec.videos_per_class):
      plan = plan_video(spec, ci, vi, label24 is not None)
      yield plan, class_names.index(style.name), label24, style.name


def plan_records(spec: SyntheticSpec) -> dict[str, records_lib.VideoRecord]:
  """The records `generate(spec)` returns (and writes), from the plans alone: no pixels."""
  spec.check()
  records = {}
  for plan, label101, label24, name in _planned_videos(spec):
    boxes, _ = video_lib.actor_geometry(plan.actors, plan.num_frames, (spec.height, spec.width))
    records[plan.path] = _record(plan, list(boxes), label101, label24, name)
  return dict(sorted(records.items()))


def generate(
  output_dir: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec(), overwrite: bool = False
) -> SyntheticDataset:
  """Writes the synthetic UCF-101-layout folder and returns its ground truth."""
  spec.check()
  output_dir = pathlib.Path(output_dir)
  t0 = time.time()
  with _atomic_dir(output_dir, overwrite) as tmp:
    class_names, annotated = _class_names(spec)
    records = {}
    for plan, label101, label24, name in _planned_videos(spec):
      frames, boxes = video_lib.render(plan, (spec.height, spec.width))
      video_lib.write_video(frames, tmp / 'UCF-101' / f'{plan.path}.avi')
      records[plan.path] = _record(plan, boxes, label101, label24, name)
    records = dict(sorted(records.items()))
    num_groups = group_count(spec)
    splits = _write_lists(tmp, class_names, list(records), lambda s: test_groups(s, num_groups))
    ann.write_pyannot(records.values(), tmp / 'pyannot.pkl')
  logging.info(
    'wrote %d synthetic videos to %s in %.1f s', len(records), output_dir, time.time() - t0
  )
  return SyntheticDataset(output_dir, spec, class_names, annotated, records, splits)


def _official_test_groups(split: int) -> set[int]:
  """UCF-101's rule: split s tests on groups 7(s-1)+1 .. 7s."""
  return set(range(7 * (split - 1) + 1, 7 * split + 1))


@dataclasses.dataclass(frozen=True)
class _VideoTask:
  plan: video_lib.VideoPlan
  file: pathlib.Path
  size: tuple[int, int]


def _write_planned_video(task: _VideoTask) -> str:
  """Renders and writes one video frame by frame (a worker's job); returns its path."""
  frames = (frame for frame, _ in video_lib.render_frames(task.plan, task.size))
  video_lib.write_video(frames, task.file)
  return task.plan.path


def _run_all(fn: Callable[[Any], Any], tasks: Sequence[Any], num_workers: int) -> None:
  """fn(task) for every task: in this process (num_workers 0) or spawned workers."""
  start, done = time.time(), 0

  def progress() -> None:
    nonlocal done
    done += 1
    if done % 100 == 0 or done == len(tasks):
      logging.info(
        '%d/%d videos (%.1f videos/s)', done, len(tasks), done / max(time.time() - start, 1e-9)
      )

  if num_workers <= 0 or len(tasks) <= 1:
    for task in tasks:
      fn(task)
      progress()
    return
  # Spawned, not forked: a caller's threads or TensorFlow state never leak in.
  ctx = multiprocessing.get_context('spawn')
  pool = concurrent.futures.ProcessPoolExecutor(min(num_workers, len(tasks)), mp_context=ctx)
  try:
    for future in concurrent.futures.as_completed([pool.submit(fn, t) for t in tasks]):
      future.result()
      progress()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
  return os.cpu_count() or 1


def generate_from_annotations(
  output_dir: str | os.PathLike,
  annotations_path: str | os.PathLike,
  max_videos: int | None = 20,
  seed: int = 0,
  overwrite: bool = False,
  num_workers: int | None = None,
  frame_size: tuple[int, int] = videos.UCF101_FRAME_SIZE,
) -> SyntheticDataset:
  """Renders videos that follow the tubes of a real annotation file (real geometry).

  Each tube's actor is a filled rectangle exactly covering its box, with a
  class-specific inner shape, on frames of `frame_size` (height, width): the pixel
  frame the annotations' boxes are given in (UCF-101's 240x320). The output holds the
  original entries in the input's format: `pyannot.pkl`, or `UCF101v2-GT.pkl` (split 1
  lists) for an ACT/MOC file.
  `max_videos` videos evenly spread over the sorted names (None or 0: all of them),
  rendered by `num_workers` spawned processes (default: CPU count; 0: in this one).
  The output is the same for any worker count, and appears only when complete.

  Raises:
    FileNotFoundError, records.DataFileError: a missing or unusable annotation
      file (one-line messages naming it); FileExistsError: a non-empty output_dir.
  """
  raw = ann.load_raw(annotations_path)
  act = ann.detect_format(raw, annotations_path) == 'act'
  records = (
    ann.load_annotations(annotations_path)
    if act
    else ann.records_from_pyannot(raw, source=annotations_path)
  )
  keys = sorted(records)
  count = len(keys) if not max_videos or max_videos <= 0 else max_videos
  chosen = keys[:: max(1, len(keys) // count)][:count]
  num_workers = default_workers() if num_workers is None else num_workers
  output_dir = pathlib.Path(output_dir)
  t0 = time.time()
  with _atomic_dir(output_dir, overwrite) as tmp:
    rng = np.random.default_rng(seed)
    tasks = [
      _VideoTask(
        video_lib.annotation_plan(records[p], int(rng.integers(2**31))),
        tmp / 'UCF-101' / f'{p}.avi',
        frame_size,
      )
      for p in chosen
    ]
    _run_all(_write_planned_video, tasks, num_workers)
    splits = _write_lists(tmp, classes.UCF101_CLASSES, chosen, _official_test_groups)
    if act:
      ann.write_act(
        [records[p] for p in chosen],
        tmp / 'UCF101v2-GT.pkl',
        raw.get('labels') or classes.UCF24_CLASSES,
        *splits[1],
        frame_size,
      )
    else:
      subset = {p: raw[p] for p in chosen}
      fileio.atomic_write(tmp / 'pyannot.pkl', pickle.dumps(subset, protocol=2))
  logging.info(
    'wrote %d videos following %s to %s in %.1f s',
    len(chosen),
    annotations_path,
    output_dir,
    time.time() - t0,
  )
  return SyntheticDataset(
    output_dir,
    None,
    classes.UCF101_CLASSES,
    classes.UCF24_CLASSES,
    {p: records[p] for p in chosen},
    splits,
  )
