"""ACT's ground-truth pickle (UCF101v2-GT, JHMDB-GT, MultiSports): labels, splits, frame
counts, resolutions and 1-based `frame x1 y1 x2 y2` tubes, loaded safely and validated.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.data import records as records_lib
from stconsist_jax.data import safe_pickle
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report
from stconsist_jax.data.datasets import tracks

PathLike = str | os.PathLike

KEYS = ('labels', 'gttubes', 'nframes', 'train_videos', 'test_videos', 'resolution')
_EXPECTED = f'expected an ACT ground-truth pickle with keys {", ".join(KEYS)}'


def _format_error(source: str, what: str) -> safe_pickle.AnnotationFileError:
  return safe_pickle.AnnotationFileError(f'{source}: {what}; {_EXPECTED}')


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _labels(data: Mapping[str, Any], source: str) -> tuple[str, ...]:
  labels = data['labels']
  if (
    not isinstance(labels, (list, tuple))
    or not labels
    or not all(isinstance(n, str) for n in labels)
    or len(set(labels)) != len(labels)
  ):
    raise _format_error(source, "'labels' is not a list of distinct class names")
  return tuple(labels)


def _splits(data: Mapping[str, Any], source: str) -> dict[str, tuple[list[str], list[str]]]:
  """`train_videos[i]`, `test_videos[i]` -> {'split{i+1}': (train, test)}."""
  train, test = data['train_videos'], data['test_videos']
  for key, lists in (('train_videos', train), ('test_videos', test)):
    if not isinstance(lists, (list, tuple)) or not all(
      isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names) for names in lists
    ):
      raise _format_error(source, f"'{key}' is not a list (one per split) of video name lists")
  if len(train) != len(test) or not train:
    raise _format_error(
      source, f"'train_videos' lists {len(train)} splits and 'test_videos' {len(test)}"
    )
  return {f'split{i + 1}': (list(tr), list(te)) for i, (tr, te) in enumerate(zip(train, test))}


def _video_info(
  data: Mapping[str, Any], video: str, report: read_report.ReadReport, source: str
) -> tracks.VideoInfo | None:
  """A video's (width, height, frames) from `nframes` and `resolution` (h, w), or None."""
  numf, size = data['nframes'].get(video), data['resolution'].get(video)
  ok = (
    _is_int(numf)
    and int(numf) > 0
    and isinstance(size, (tuple, list))
    and len(size) == 2
    and all(_is_int(s) and int(s) > 0 for s in size)
  )
  if not ok:
    report.bad(
      'video_missing',
      f'{source}: video {video!r}: nframes {numf!r} and resolution (h, w) {size!r} do not '
      'give its length and frame size (its tubes skipped)',
    )
    return None
  return tracks.VideoInfo(width=int(size[1]), height=int(size[0]), num_frames=int(numf))


def _video_tubes(
  by_label: Any,
  video: str,
  info: tracks.VideoInfo,
  num_classes: int,
  report: read_report.ReadReport,
  source: str,
) -> list[records_lib.AnnotatedTube]:
  if not isinstance(by_label, Mapping):
    report.bad('malformed_record', f'{source}: video {video!r}: gttubes entry is not a dict')
    return []
  tubes = []
  for label in sorted(by_label, key=lambda k: (not _is_int(k), str(k))):
    arrays = by_label[label]
    if not isinstance(arrays, (list, tuple)):
      arrays = [arrays]
    for arr in arrays:
      tubes += _tube(arr, label, video, info, num_classes, report, source)
  return tubes


def _tube(
  arr: Any,
  label: Any,
  video: str,
  info: tracks.VideoInfo,
  num_classes: int,
  report: read_report.ReadReport,
  source: str,
) -> list[records_lib.AnnotatedTube]:
  where = f'{source}: video {video!r}'
  rows = None
  if isinstance(arr, (np.ndarray, list, tuple)):
    try:
      rows = np.asarray(arr, np.float64)
    except (TypeError, ValueError):
      pass
  if rows is None or rows.ndim != 2 or rows.shape[1] != 5 or not len(rows):
    shape = getattr(rows, 'shape', type(arr).__name__)
    report.bad(
      'malformed_record',
      f'{where}: a tube of label {label!r} is not an (n, 5) array of numbers ({shape})',
    )
    return []
  first = f'{where} frame {rows[0, 0]:g}'
  if not _is_int(label) or not 0 <= int(label) < num_classes:
    report.bad(
      'unknown_label',
      f'{first}: label {label!r} of a tube of {len(rows)} boxes is not a class index '
      f'0..{num_classes - 1}',
    )
    return []
  if np.any(rows[:, 0] != np.round(rows[:, 0])):
    report.bad('malformed_record', f'{first}: a tube with frame numbers that are not whole')
    return []
  frames = rows[:, 0].astype(np.int64) - 1  # 1-based in the file.
  return tracks.tubes_from_track(
    frames,
    rows[:, 1:],
    int(label),
    info,
    report,
    lambda i: f'{where} frame {frames[i] + 1}',
  )


def description_from_act(
  data: Any, source: str, name: str, frame_source: str = 'jpeg_folders'
) -> tuple[description_lib.DatasetDescription, read_report.ReadReport]:
  """A loaded ACT ground-truth dict -> (description, report of what was skipped).

  Raises:
    AnnotationFileError: the dict lacks a key or a key's value has the wrong type (one
      line naming the file); bad videos and tubes are skipped and reported instead.
  """
  if not isinstance(data, Mapping) or any(k not in data for k in KEYS):
    missing = [k for k in KEYS if not isinstance(data, Mapping) or k not in data]
    raise _format_error(source, f'no {", ".join(repr(k) for k in missing)}')
  for key in ('gttubes', 'nframes', 'resolution'):
    if not isinstance(data[key], Mapping) or not all(isinstance(v, str) for v in data[key]):
      raise _format_error(source, f"'{key}' is not a dict keyed by video name")
  class_names = _labels(data, source)
  splits = _splits(data, source)
  report = read_report.ReadReport()
  videos = {}
  for video in sorted(data['nframes']):
    info = _video_info(data, video, report, source)
    if info is None:
      continue
    tubes = _video_tubes(
      data['gttubes'].get(video, {}), video, info, len(class_names), report, source
    )
    videos[video] = records_lib.AnnotatedVideo(video, *info, tuple(tubes))
  for video in sorted(set(data['gttubes']) - set(data['nframes'])):
    report.bad(
      'video_missing', f"{source}: video {video!r}: has tubes but no 'nframes' entry (skipped)"
    )
  description = description_lib.describe(
    name, class_names, videos, splits, frame_source, report, source
  )
  return description, report


def default_name(path: PathLike) -> str:
  """`JHMDB-GT.pkl` -> `JHMDB`."""
  stem = pathlib.Path(path).stem
  return stem[: -len('-GT')] if stem.endswith('-GT') else stem


def read_act_pickle(
  path: PathLike, name: str | None = None, frame_source: str = 'jpeg_folders'
) -> tuple[description_lib.DatasetDescription, read_report.ReadReport]:
  """Reads an ACT ground-truth pickle into (description, report), loading it safely.

  Splits are named `split1`, `split2`, ... after `train_videos[i]` / `test_videos[i]`.
  Frame numbers are 1-based in the file and 0-based in the description.

  Raises:
    FileNotFoundError: no file at `path`.
    AnnotationFileError: the file is unreadable, unsafe (`UnsafePickleError`, nothing of
      it runs) or not in ACT's structure; one line naming the file.
  """
  data = safe_pickle.load_pickle(path, expected=_EXPECTED)
  try:
    return description_from_act(data, os.fspath(path), name or default_name(path), frame_source)
  except safe_pickle.AnnotationFileError:
    raise
  except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
    raise _format_error(
      os.fspath(path), f'malformed ({type(e).__name__}: {errors.one_line(e)})'
    ) from None
