"""A synthetic JHMDB-21 in the layout of its ACT / MOC download: `Frames/<class>/<video>/00001.png`
folders and a `JHMDB-GT.pkl` in ACT's structure (plain pickle of dicts, lists, numpy arrays).

`generate` draws a tiny one (tests, demos): the 21 classes, 3 splits, one actor per video
on every frame. `generate_from_annotations` renders a twin of a real `JHMDB-GT.pkl`
(every video's real size, length, splits and boxes) for `tools/rehearse.py --dataset=jhmdb`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import jhmdb
from stconsist_jax.data.synthetic import synthetic_video as video_lib


@dataclasses.dataclass(frozen=True)
class JhmdbTwinSpec:
  """What to draw: `videos_per_class` videos of each class, 3 splits as JHMDB's."""

  seed: int = 0
  videos_per_class: int = 3
  min_frames: int = 12
  max_frames: int = 20
  width: int = jhmdb.FRAME_SIZE[0]
  height: int = jhmdb.FRAME_SIZE[1]


@dataclasses.dataclass
class JhmdbTwin:
  """A written twin: its folder and the ground truth it holds."""

  root: pathlib.Path
  gt: dict[str, Any]  # what JHMDB-GT.pkl holds
  videos: dict[str, records_lib.AnnotatedVideo]  # exact drawn boxes, 0-based frames


def gt_dict(
  class_names: Sequence[str],
  videos: Mapping[str, records_lib.AnnotatedVideo],
  splits: Sequence[tuple[Sequence[str], Sequence[str]]],
) -> dict[str, Any]:
  """ACT's ground-truth structure: 1-based `frame x1 y1 x2 y2` float32 tube arrays."""
  gttubes = {}
  for name, video in videos.items():
    by_label: dict[int, list[np.ndarray]] = {}
    for t in video.tubes:
      frames = np.arange(t.start, t.end, dtype=np.float32)[:, None] + 1
      by_label.setdefault(t.label, []).append(
        np.concatenate([frames, t.boxes.astype(np.float32)], axis=1)
      )
    gttubes[name] = by_label
  return {
    'labels': list(class_names),
    'gttubes': gttubes,
    'nframes': {n: v.num_frames for n, v in videos.items()},
    'train_videos': [sorted(train) for train, _ in splits],
    'test_videos': [sorted(test) for _, test in splits],
    'resolution': {n: (v.height, v.width) for n, v in videos.items()},
  }


def write_frames(frames_rgb: Sequence[np.ndarray], folder: pathlib.Path) -> None:
  """`folder/00001.png`, ... as the JHMDB download names them."""
  folder.mkdir(parents=True, exist_ok=True)
  for i, frame in enumerate(frames_rgb, 1):
    if not cv2.imwrite(str(folder / f'{i:05d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
      raise OSError(f'cannot write {folder / f"{i:05d}.png"}')


def _plan(spec: JhmdbTwinSpec, label: int, index: int, name: str) -> video_lib.VideoPlan:
  rng = np.random.default_rng([spec.seed, label, index])
  n = int(rng.integers(spec.min_frames, spec.max_frames + 1))
  actor = video_lib.Actor(
    shape=video_lib.SHAPES[label % len(video_lib.SHAPES)],
    motion=video_lib.MOTIONS[(label + label // len(video_lib.SHAPES)) % len(video_lib.MOTIONS)],
    rgb=video_lib.hsv_to_rgb(int(label * 180 / len(jhmdb.CLASSES)), 220, 235),
    r=float(rng.uniform(0.08, 0.12) * min(spec.width, spec.height)),
    phase=float(rng.uniform()),
    period=float(rng.uniform(12, 24)),
    anchor=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
    angle=0.0,
    start=0,
    end=n,
  )
  return video_lib.VideoPlan(
    name, n, (actor,), ((0, n),), (float(rng.uniform(-2, 2)), 0.0), int(rng.integers(2**31))
  )


def twin_splits(names_by_class: Sequence[Sequence[str]]) -> list[tuple[list[str], list[str]]]:
  """3 splits: in split s, each class's videos i with i % 3 == s are test, the rest train."""
  splits = []
  for s in range(jhmdb.NUM_SPLITS):
    train = [n for names in names_by_class for i, n in enumerate(names) if i % 3 != s]
    test = [n for names in names_by_class for i, n in enumerate(names) if i % 3 == s]
    splits.append((train, test))
  return splits


def write_gt(gt: Mapping[str, Any], root: pathlib.Path) -> None:
  with open(root / jhmdb.GT_FILE, 'wb') as f:
    pickle.dump(dict(gt), f, protocol=2)


def generate(output_dir: str | os.PathLike, spec: JhmdbTwinSpec = JhmdbTwinSpec()) -> JhmdbTwin:
  """Draws the tiny twin: 21 classes x `videos_per_class` videos, every frame annotated."""
  root = pathlib.Path(output_dir)
  videos, names_by_class = {}, []
  for label, cls in enumerate(jhmdb.CLASSES):
    names = [f'{cls}/{cls}_twin_{i:02d}' for i in range(spec.videos_per_class)]
    names_by_class.append(names)
    for i, name in enumerate(names):
      plan = _plan(spec, label, i, name)
      frames, boxes = video_lib.render(plan, (spec.height, spec.width))
      write_frames(frames, root / jhmdb.FRAMES_DIR / name)
      tube = records_lib.AnnotatedTube(label, 0, plan.num_frames, boxes[0])
      videos[name] = records_lib.AnnotatedVideo(
        name, spec.width, spec.height, plan.num_frames, (tube,)
      )
  gt = gt_dict(jhmdb.CLASSES, videos, twin_splits(names_by_class))
  write_gt(gt, root)
  return JhmdbTwin(root, gt, videos)


def _render_following(video: records_lib.AnnotatedVideo, folder: str, seed: int) -> str:
  """Draws one video on its real tubes' boxes into `folder` (in a worker process)."""
  plan = video_lib.annotation_plan(
    records_lib.VideoRecord(video.name, 0, '', video.num_frames, video.tubes), seed
  )
  frames = (f for f, _ in video_lib.render_frames(plan, (video.height, video.width)))
  write_frames(list(frames), pathlib.Path(folder))
  return video.name


def generate_from_annotations(
  output_dir: str | os.PathLike,
  gt_file: str | os.PathLike,
  max_videos: int = 0,
  num_workers: int | None = None,
) -> JhmdbTwin:
  """A twin of a real `JHMDB-GT.pkl`: its videos' sizes, lengths, splits and boxes.

  `max_videos` > 0 keeps that many videos, evenly spaced over the file's sorted names
  (the splits keep those). Frames are drawn in `num_workers` processes (default: CPUs).
  """
  description, _ = jhmdb.read_jhmdb(gt_file)
  names = sorted(description.videos)
  if 0 < max_videos < len(names):
    names = [names[i] for i in np.unique(np.arange(max_videos) * len(names) // max_videos)]
  kept = {n: description.videos[n] for n in names}
  root = pathlib.Path(output_dir)
  workers = (os.cpu_count() or 1) if num_workers is None else num_workers
  jobs = [(kept[n], os.fspath(root / jhmdb.FRAMES_DIR / n), i) for i, n in enumerate(names)]
  if workers <= 0:
    for job in jobs:
      _render_following(*job)
  else:
    context = multiprocessing.get_context('spawn')  # no inherited state of the caller
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      list(pool.map(_render_following, *zip(*jobs)))
  splits = [
    ([n for n in split.train if n in kept], [n for n in split.test if n in kept])
    for split in description.splits.values()
  ]
  gt = gt_dict(description.class_names, kept, splits)
  write_gt(gt, root)
  return JhmdbTwin(root, gt, kept)
