"""UCF-101's class index (`classInd.txt`) and official train/test split lists: read in the
three formats in use, and written in the official one (for synthetic folders).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from stconsist_jax.core import fileio
from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import videos

PathLike = str | os.PathLike


def _read_lines(path: PathLike) -> list[str]:
  try:
    text = pathlib.Path(path).read_text(encoding='utf-8', errors='strict')
  except UnicodeDecodeError as e:
    raise records_lib.DataFileError(
      f'{path} is not a UTF-8 text list ({e.reason} at byte {e.start})'
    ) from None
  return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_index(path: PathLike) -> tuple[str, ...]:
  """Reads `classInd.txt` (`1 ApplyEyeMakeup` ...) into 0-based class names."""
  names = []
  for n, line in enumerate(_read_lines(path), start=1):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != n:
      raise ValueError(f"{path}: line {n} should be '{n} ClassName', found {line!r}")
    names.append(parts[1])
  if not names:
    raise ValueError(f'{path}: no classes listed')
  return tuple(names)


def read_split_list(path: PathLike) -> list[str]:
  """Reads a split list into video paths without extension.

  Accepts the three formats in use: `trainlist0N.txt` (`Class/v_X.avi label`),
  `testlist0N.txt` (`Class/v_X.avi`) and the UCF101-24 lists (`Class/v_X`).
  """
  paths = []
  for n, line in enumerate(_read_lines(path), start=1):
    parts = line.split()
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
      raise records_lib.DataFileError(
        f"{path}: line {n} should be 'Class/v_X.avi [label]', found {line!r}"
      )
    try:
      videos.class_of(parts[0])
    except ValueError as e:
      raise records_lib.DataFileError(f'{path}: line {n}: {e}') from None
    paths.append(videos.strip_extension(parts[0].replace('\\', '/')))
  return paths


def read_labeled_split_list(path: PathLike) -> list[tuple[str, int]]:
  """Reads `trainlist0N.txt` into (path, 0-based label) pairs."""
  pairs = []
  for n, line in enumerate(_read_lines(path), start=1):
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit():
      raise records_lib.DataFileError(
        f"{path}: line {n} should be 'Class/v_X.avi label', found {line!r}"
      )
    pairs.append((videos.strip_extension(parts[0]), int(parts[1]) - 1))
  return pairs


def official_split(list_dir: PathLike, split: int) -> tuple[list[str], list[str]]:
  """(train paths, test paths) of split 1, 2 or 3 from `ucfTrainTestlist/`."""
  if split not in (1, 2, 3):
    raise ValueError(f'split must be 1, 2 or 3, got {split}')
  list_dir = pathlib.Path(list_dir)
  return (
    read_split_list(list_dir / f'trainlist0{split}.txt'),
    read_split_list(list_dir / f'testlist0{split}.txt'),
  )


def write_class_index(class_names: Sequence[str], path: PathLike) -> None:
  fileio.atomic_write(path, ''.join(f'{i} {c}\n' for i, c in enumerate(class_names, start=1)))


def write_split_lists(
  list_dir: PathLike,
  split: int,
  train: Sequence[str],
  test: Sequence[str],
  class_names: Sequence[str],
) -> None:
  """Writes `trainlist0N.txt` / `testlist0N.txt` in the official format."""
  index = {c: i for i, c in enumerate(class_names)}
  list_dir = pathlib.Path(list_dir)
  fileio.atomic_write(
    list_dir / f'trainlist0{split}.txt',
    ''.join(f'{p}.avi {index[videos.class_of(p)] + 1}\n' for p in train),
  )
  fileio.atomic_write(list_dir / f'testlist0{split}.txt', ''.join(f'{p}.avi\n' for p in test))
