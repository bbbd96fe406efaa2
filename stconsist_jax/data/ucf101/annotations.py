"""UCF101-24's annotation pickles, `pyannot.pkl` and ACT/MOC's `UCF101v2-GT.pkl`: read into
VideoRecords (either format, detected) and written from them with the real files' dtypes.
"""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.data import records as records_lib
from stconsist_jax.data import safe_pickle
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import videos

PathLike = str | os.PathLike

_EXPECTED_FILE = 'expected pyannot.pkl or UCF101v2-GT.pkl as downloaded'


def _class_label(path: str, index: Mapping[str, int], source: PathLike) -> int:
  name = videos.class_of(path)
  if name not in index:
    raise safe_pickle.AnnotationFileError(
      f'{source}: video {path!r} is of class {name!r}, which is not among '
      f'the {len(index)} known classes'
    )
  return index[name]


def detect_format(data: Any, source: PathLike = 'annotation file') -> str:
  """'pyannot' or 'act' for a loaded annotation pickle."""
  if isinstance(data, dict) and 'gttubes' in data and 'nframes' in data:
    return 'act'
  if isinstance(data, dict) and all(
    isinstance(v, dict) and 'annotations' in v for v in data.values()
  ):
    return 'pyannot'
  raise safe_pickle.AnnotationFileError(
    f"{source}: unknown annotation format: expected pyannot.pkl (video -> {{'label', "
    "'numf', 'annotations'}) or UCF101v2-GT.pkl (keys 'gttubes', 'nframes')"
  )


# Both readers cast every array to float64/int64 before any arithmetic: the real files
# store boxes and frame counts as uint8/uint16, where `x + w` silently wraps around.
def records_from_pyannot(
  data: Mapping[str, Any],
  class_names: Sequence[str] = classes.UCF101_CLASSES,
  source: PathLike = 'pyannot.pkl',
) -> dict[str, records_lib.VideoRecord]:
  """pyannot dict -> {path: VideoRecord}, sorted by path."""
  index = {c: i for i, c in enumerate(class_names)}
  records = {}
  for path in sorted(data):
    entry = data[path]
    try:
      num_frames = int(np.int64(entry['numf']))
      tubes = []
      for t in entry['annotations']:
        start, end = int(np.int64(t['sf'])), int(np.int64(t['ef']))
        xywh = np.asarray(t['boxes']).astype(np.float64).reshape(-1, 4)
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        tubes.append(records_lib.AnnotatedTube(int(t['label']), start, end, corners))
    except (KeyError, TypeError, ValueError) as e:
      raise safe_pickle.AnnotationFileError(
        f'{source}: malformed entry for video {path!r}: {errors.one_line(e)}'
      ) from None
    records[path] = records_lib.VideoRecord(
      path, _class_label(path, index, source), videos.class_of(path), num_frames, tuple(tubes)
    )
  return records


def records_from_act(
  data: Mapping[str, Any],
  class_names: Sequence[str] = classes.UCF101_CLASSES,
  source: PathLike = 'UCF101v2-GT.pkl',
) -> dict[str, records_lib.VideoRecord]:
  """ACT/MOC dict (1-based frames, `frame x1 y1 x2 y2` rows) -> {path: VideoRecord}."""
  index = {c: i for i, c in enumerate(class_names)}
  records = {}
  for path in sorted(data['gttubes']):
    tubes = []
    for label in sorted(data['gttubes'][path]):
      for arr in data['gttubes'][path][label]:
        arr = np.asarray(arr).astype(np.float64).reshape(-1, 5)
        frames = arr[:, 0].astype(np.int64) - 1
        if len(frames) == 0 or np.any(np.diff(frames) != 1):
          raise safe_pickle.AnnotationFileError(
            f'{source}: tube of video {path!r} (label {label}) does not cover consecutive frames'
          )
        tubes.append(
          records_lib.AnnotatedTube(int(label), int(frames[0]), int(frames[-1]) + 1, arr[:, 1:])
        )
    if path not in data['nframes']:
      raise safe_pickle.AnnotationFileError(
        f"{source}: video {path!r} has tubes but no 'nframes' entry"
      )
    records[path] = records_lib.VideoRecord(
      path,
      _class_label(path, index, source),
      videos.class_of(path),
      int(np.int64(data['nframes'][path])),
      tuple(tubes),
    )
  return records


def load_raw(path: PathLike) -> Any:
  """The unconverted contents of `pyannot.pkl` or `UCF101v2-GT.pkl`, loaded safely.

  Raises:
    FileNotFoundError, AnnotationFileError: as `safe_pickle.load_pickle`.
  """
  return safe_pickle.load_pickle(path, expected=_EXPECTED_FILE)


def load_annotations(
  path: PathLike, class_names: Sequence[str] = classes.UCF101_CLASSES
) -> dict[str, records_lib.VideoRecord]:
  """Reads `pyannot.pkl` or `UCF101v2-GT.pkl` (detected) into {path: VideoRecord}.

  Raises:
    FileNotFoundError: no file at `path`.
    AnnotationFileError: the file is unreadable, unsafe (`UnsafePickleError`) or not
      in either format; the message is one line naming the file.
  """
  data = load_raw(path)
  convert = records_from_act if detect_format(data, path) == 'act' else records_from_pyannot
  try:
    return convert(data, class_names, source=path)
  except safe_pickle.AnnotationFileError:
    raise
  except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
    raise safe_pickle.AnnotationFileError(
      f'{path}: malformed annotations ({type(e).__name__}: {errors.one_line(e)}); {_EXPECTED_FILE}'
    ) from None


def _uint_dtype(max_value: float) -> type:
  return np.uint8 if max_value < 256 else np.uint16


def to_pyannot(records: Iterable[records_lib.VideoRecord]) -> dict[str, dict[str, Any]]:
  """Records with tubes -> the pyannot dict, with the real file's dtypes.

  Boxes must be whole pixels (they are stored as uint8/uint16 `[x, y, w, h]`).
  """
  out = {}
  for r in records:
    if not r.tubes:
      continue
    annotations = []
    for t in r.tubes:
      xywh = np.concatenate([t.boxes[:, :2], t.boxes[:, 2:] - t.boxes[:, :2]], axis=1)
      if np.any(xywh != np.round(xywh)) or np.any(xywh < 0):
        raise ValueError(f'video {r.path!r}: pyannot boxes must be non-negative whole pixels')
      annotations.append(
        {
          'label': int(t.label),
          'sf': int(t.start),
          'ef': int(t.end),
          'boxes': xywh.astype(_uint_dtype(xywh.max(initial=0))),
        }
      )
    numf = _uint_dtype(r.num_frames)(r.num_frames)
    out[r.path] = {'label': int(r.tubes[0].label), 'numf': numf, 'annotations': annotations}
  return out


def write_pyannot(records: Iterable[records_lib.VideoRecord], path: PathLike) -> None:
  """Writes `pyannot.pkl` (protocol 2, as the Python 2 original) atomically."""
  fileio.atomic_write(path, pickle.dumps(to_pyannot(records), protocol=2))


def to_act(
  records: Iterable[records_lib.VideoRecord],
  labels: Sequence[str],
  train_videos: Sequence[str],
  test_videos: Sequence[str],
  frame_size: tuple[int, int] = videos.UCF101_FRAME_SIZE,
) -> dict[str, Any]:
  """Records -> the ACT/MOC `UCF101v2-GT.pkl` dict (split 1 only, like the original)."""
  records = list(records)
  gttubes = {}
  for r in records:
    by_label = collections.defaultdict(list)
    for t in r.tubes:
      frames = np.arange(t.start, t.end, dtype=np.float64)[:, None] + 1
      by_label[int(t.label)].append(np.concatenate([frames, t.boxes], axis=1))
    gttubes[r.path] = dict(by_label)
  return {
    'labels': list(labels),
    'train_videos': [list(train_videos)],
    'test_videos': [list(test_videos)],
    'nframes': {r.path: int(r.num_frames) for r in records},
    'resolution': {r.path: tuple(frame_size) for r in records},
    'gttubes': gttubes,
  }


def write_act(
  records: Iterable[records_lib.VideoRecord],
  path: PathLike,
  labels: Sequence[str],
  train_videos: Sequence[str],
  test_videos: Sequence[str],
  frame_size: tuple[int, int] = videos.UCF101_FRAME_SIZE,
) -> None:
  data = to_act(records, labels, train_videos, test_videos, frame_size)
  fileio.atomic_write(path, pickle.dumps(data, protocol=2))
