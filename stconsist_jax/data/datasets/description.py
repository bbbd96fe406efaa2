"""A dataset as the rest of the project reads it: its name, class names, splits, where its
frames come from, and each video's frame size, length and actor tubes (any sizes mixed).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import read_report

# Where a dataset's frames come from: one video file per video (`<name>.avi`, `.mp4`, ...),
# or one folder of numbered image files per video (`<name>/00001.jpg`, as ACT and MOC ship
# UCF101-24 and JHMDB-21).
FRAME_SOURCES = ('video_files', 'jpeg_folders')


class ReadAnnotations(NamedTuple):
  """What a reader of a split-less format (CVAT, CSV) gives: classes, videos, report."""

  class_names: tuple[str, ...]
  videos: dict[str, records_lib.AnnotatedVideo]
  report: read_report.ReadReport


@dataclasses.dataclass(frozen=True)
class Split:
  """The names of one split's training and test videos."""

  train: tuple[str, ...]
  test: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, 'train', tuple(self.train))
    object.__setattr__(self, 'test', tuple(self.test))


@dataclasses.dataclass(frozen=True)
class DatasetDescription:
  """Everything a build, the streams, evaluation and reports need to know of a dataset.

  `videos` maps each video's name to its `AnnotatedVideo` (frame size, length, tubes;
  tube labels index `class_names`); every video a split names is in `videos`.
  `splits` maps a split's name (`split1`, ...) to its train and test videos.
  """

  name: str
  class_names: tuple[str, ...]
  splits: Mapping[str, Split]
  frame_source: str
  videos: Mapping[str, records_lib.AnnotatedVideo]

  def __post_init__(self):
    object.__setattr__(self, 'class_names', tuple(self.class_names))
    object.__setattr__(self, 'splits', types.MappingProxyType(dict(self.splits)))
    object.__setattr__(self, 'videos', types.MappingProxyType(dict(sorted(self.videos.items()))))
    problem = _problem(self)
    if problem:
      raise ValueError(f'dataset {self.name!r}: {problem}')

  __hash__ = None  # type: ignore[assignment]

  def resolution(self, video: str) -> tuple[int, int]:
    """(width, height) of a video's frames."""
    v = self.videos[video]
    return v.width, v.height

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_boxes(self) -> int:
    return sum(v.num_boxes for v in self.videos.values())


def _problem(d: DatasetDescription) -> str | None:
  """Why a description is inconsistent (readers only build consistent ones), or None."""
  if d.frame_source not in FRAME_SOURCES:
    return f'frame source {d.frame_source!r} is not one of {", ".join(FRAME_SOURCES)}'
  if not d.class_names or len(set(d.class_names)) != len(d.class_names):
    return f'class names must be distinct and at least one, got {list(d.class_names)}'
  for name, video in d.videos.items():
    if name != video.name:
      return f'video {video.name!r} is filed under {name!r}'
    if video.width <= 0 or video.height <= 0 or video.num_frames <= 0:
      return f'video {name!r} is {video.width}x{video.height}, {video.num_frames} frames'
    for t in video.tubes:
      if not 0 <= t.label < len(d.class_names):
        return f'video {name!r} has a tube of label {t.label} of {len(d.class_names)} classes'
      if t.start < 0 or t.end > video.num_frames or t.end <= t.start:
        return f'video {name!r} has a tube on frames [{t.start}, {t.end}) of {video.num_frames}'
  for split_name, split in d.splits.items():
    unknown = [v for v in (*split.train, *split.test) if v not in d.videos]
    if unknown:
      return f'split {split_name!r} names {len(unknown)} unknown videos, e.g. {unknown[0]!r}'
  return None


def checked_splits(
  splits: Mapping[str, tuple[Sequence[str], Sequence[str]] | Split],
  videos: Mapping[str, records_lib.AnnotatedVideo],
  report: read_report.ReadReport,
  source: str,
) -> dict[str, Split]:
  """Splits without the videos `videos` does not know, each dropped with one line.

  A listed video known but without tubes is kept, with one line too.
  """
  out = {}
  reported_empty = set()
  for split_name, split in splits.items():
    train, test = (split.train, split.test) if isinstance(split, Split) else split
    kept = []
    for part, names in (('train', train), ('test', test)):
      kept.append(_known(names, videos, report, f'{source}: {split_name} {part}', reported_empty))
    out[split_name] = Split(*kept)
  return out


def _known(
  names: Iterable[str],
  videos: Mapping[str, records_lib.AnnotatedVideo],
  report: read_report.ReadReport,
  where: str,
  reported_empty: set[str],
) -> tuple[str, ...]:
  kept = []
  for name in names:
    if name not in videos:
      report.bad('video_missing', f'{where}: video {name!r}: listed, but not among the videos')
      continue
    if not videos[name].tubes and name not in reported_empty:
      reported_empty.add(name)
      report.bad('video_without_annotations', f'{where}: video {name!r}: listed, without tubes')
    kept.append(name)
  return tuple(kept)


def describe(
  name: str,
  class_names: Sequence[str],
  videos: Mapping[str, records_lib.AnnotatedVideo],
  splits: Mapping[str, tuple[Sequence[str], Sequence[str]] | Split],
  frame_source: str,
  report: read_report.ReadReport,
  source: str = 'split lists',
) -> DatasetDescription:
  """A description of read videos and split lists; listed videos not read are reported."""
  return DatasetDescription(
    name, tuple(class_names), checked_splits(splits, videos, report, source), frame_source, videos
  )
