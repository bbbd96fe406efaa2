"""The train/test split of a dataset whose annotations give none (CVAT, CSV): from the user's
list files, or a fixed-seed share of each class's videos held out for testing.
"""

from __future__ import annotations

import collections
import os
import pathlib
from collections.abc import Collection, Mapping

import numpy as np

from stconsist_jax.data import records as records_lib

PathLike = str | os.PathLike
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 0


def read_video_list(path: PathLike, known: Collection[str]) -> list[str]:
  """The video names a list file gives, one per line, each one of `known`.

  A line may add a file extension (`clip7.mp4`) or text after a space (a label, as in
  UCF-101's lists); blank lines and lines starting with `#` are skipped.

  Raises:
    DataFileError: the file is missing, or a line names no known video (one line naming
      the file, the line and the video).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise records_lib.DataFileError(f'video list {path} not found')
  names = []
  for number, line in enumerate(path.read_text(encoding='utf-8-sig').splitlines(), 1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    word = line.split()[0]
    stem = str(pathlib.PurePosixPath(word).with_suffix('')) if '.' in word else word
    name = word if word in known else stem if stem in known else None
    if name is None:
      raise records_lib.DataFileError(
        f'{path} line {number}: video {word!r} is not one of the {len(known)} annotated videos'
      )
    names.append(name)
  return names


def from_lists(
  videos: Collection[str], train_list: PathLike | None, test_list: PathLike | None
) -> tuple[list[str], list[str]]:
  """(train, test) from one or both list files; with one, the other is every other video.

  Raises:
    DataFileError: a list names an unknown video, or a video is in both lists.
  """
  if train_list is None and test_list is None:
    raise ValueError('from_lists needs a train list, a test list or both')
  train = read_video_list(train_list, videos) if train_list is not None else None
  test = read_video_list(test_list, videos) if test_list is not None else None
  if train is None:
    train = sorted(set(videos) - set(test))
  if test is None:
    test = sorted(set(videos) - set(train))
  both = sorted(set(train) & set(test))
  if both:
    raise records_lib.DataFileError(
      f'{len(both)} videos are in both the train and the test list, e.g. {both[0]!r}'
    )
  return list(dict.fromkeys(train)), list(dict.fromkeys(test))


def by_fraction(
  video_classes: Mapping[str, int],
  test_fraction: float = DEFAULT_TEST_FRACTION,
  seed: int = DEFAULT_SEED,
) -> tuple[list[str], list[str]]:
  """(train, test): `test_fraction` of each class's videos held out, chosen with `seed`.

  `video_classes` maps each video to its class (`video_class`). Per class, the
  videos in name order are shuffled by a generator seeded with `seed` and the first
  `test_fraction * n` rounded (halves up) go to test, at least one when the class has two or more
  videos and the fraction is above 0, never all of them. The same inputs give the same
  split on any machine.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction}')
  by_class = collections.defaultdict(list)
  for name in sorted(video_classes):
    by_class[video_classes[name]].append(name)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in sorted(by_class):
    names = by_class[label]
    order = rng.permutation(len(names))
    n = len(names)
    k = min(max(int(test_fraction * n + 0.5), int(test_fraction > 0 and n >= 2)), n - 1)
    test += [names[i] for i in order[:k]]
    train += [names[i] for i in order[k:]]
  return sorted(train), sorted(test)


def describe_choice(
  train_list: PathLike | None, test_list: PathLike | None, test_fraction: float, seed: int
) -> dict[str, object]:
  """How the split was chosen, for the build's recorded source."""
  if train_list is not None or test_list is not None:
    return {'split_from': 'lists'}
  return {'split_from': 'fraction', 'test_fraction': test_fraction, 'split_seed': seed}


def video_class(video: records_lib.AnnotatedVideo) -> int:
  """A video's one class, the label a build stores for it: the class of most of its boxes
  (ties: the lowest label). Raises ValueError for a video without tubes."""
  if not video.tubes:
    raise ValueError(f'video {video.name!r} has no tubes, hence no class')
  boxes = collections.Counter()
  for t in video.tubes:
    boxes[t.label] += t.num_boxes
  return min(boxes, key=lambda label: (-boxes[label], label))


def video_classes(videos: Mapping[str, records_lib.AnnotatedVideo]) -> dict[str, int]:
  """Each video with tubes -> its class (`video_class`)."""
  return {name: video_class(v) for name, v in videos.items() if v.tubes}
