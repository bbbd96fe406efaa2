"""Plain CSV annotations, `video,frame,actor_id,label,x1,y1,x2,y2` with a header: pixel or
normalized corners, 0- or 1-based frames as stated, read into validated tubes.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report
from stconsist_jax.data.datasets import tracks

PathLike = str | os.PathLike

COLUMNS = ('video', 'frame', 'actor_id', 'label', 'x1', 'y1', 'x2', 'y2')
COORDS = ('pixels', 'normalized')
MAX_CSV_BYTES = 256 * 2**20
EXPECTED = f'expected a CSV file with the header {",".join(COLUMNS)}'


def _read_text(path: pathlib.Path) -> str:
  try:
    f = open(path, 'rb')
  except FileNotFoundError:
    raise FileNotFoundError(f'annotation file {path} not found: {EXPECTED}') from None
  with f:
    size = os.fstat(f.fileno()).st_size
    data = f.read(min(size, MAX_CSV_BYTES) + 1)
  if len(data) > MAX_CSV_BYTES:
    raise records_lib.DataFileError(
      f'{path} is over {MAX_CSV_BYTES // 2**20} MiB, far more than any annotation file'
    )
  try:
    return data.decode('utf-8-sig')  # Spreadsheets start UTF-8 CSV with a byte-order mark.
  except UnicodeDecodeError as e:
    raise records_lib.DataFileError(
      f'{path} is not UTF-8 text ({e.reason} at byte {e.start}); {EXPECTED}'
    ) from None


def _header(row: list[str] | None, path: pathlib.Path) -> dict[str, int]:
  names = [c.strip().lower() for c in row or []]
  missing = [c for c in COLUMNS if c not in names]
  if missing:
    raise records_lib.DataFileError(
      f'{path}: the header {",".join(names) or "(empty file)"} lacks {",".join(missing)}; '
      f'{EXPECTED}'
    )
  return {c: names.index(c) for c in COLUMNS}


def _video_name(name: str, video_info: Mapping[str, Sequence[int]]) -> str | None:
  """The `video_info` name of a CSV video: as written, or without its extension."""
  if name in video_info:
    return name
  stem = str(pathlib.PurePosixPath(name).with_suffix('')) if '.' in name else name
  return stem if stem in video_info else None


class _Row(collections.namedtuple('_Row', 'line video frame actor label box')):
  """One CSV row as read: its line number, fields and pixel box."""


def _rows(
  path: pathlib.Path,
  video_info: Mapping[str, Sequence[int]],
  coords: str,
  first_frame: int,
  report: read_report.ReadReport,
) -> list[_Row]:
  """The readable rows of known videos; the others get one line (one per missing video)."""
  reader = csv.reader(io.StringIO(_read_text(path), newline=''))
  columns = _header(next(reader, None), path)
  rows, missing = [], collections.Counter()
  first_missing_line = {}
  for fields in reader:
    line = reader.line_num
    if not any(f.strip() for f in fields):
      continue
    if len(fields) <= max(columns.values()):
      report.bad(
        'malformed_record', f'{path} line {line}: {len(fields)} fields, not {len(COLUMNS)}'
      )
      continue
    get = {c: fields[i].strip() for c, i in columns.items()}
    try:
      frame = int(get['frame'])
      box = np.array([float(get[k]) for k in ('x1', 'y1', 'x2', 'y2')], np.float64)
    except ValueError:
      report.bad(
        'malformed_record',
        f'{path} line {line}: video {get["video"]!r} frame {get["frame"]!r}: frame or box '
        'is not a number',
      )
      continue
    video = _video_name(get['video'], video_info)
    if video is None:
      missing[get['video']] += 1
      first_missing_line.setdefault(get['video'], (line, frame))
      continue
    if coords == 'normalized':
      width, height = (int(v) for v in video_info[video][:2])
      box = box * np.array([width, height, width, height], np.float64)
    rows.append(_Row(line, video, frame - first_frame, get['actor_id'], get['label'], box))
  for name, count in missing.items():
    line, frame = first_missing_line[name]
    report.bad(
      'video_missing',
      f'{path} line {line}: video {name!r} frame {frame}: not among the {len(video_info)} '
      f'videos given (its {count} rows skipped)',
    )
  return rows


def _without_second_boxes(
  rows: list[_Row], path: pathlib.Path, first_frame: int, report: read_report.ReadReport
) -> list[_Row]:
  """Rows without an actor's second box on a frame (the same box under another label is
  the same actor doing two actions, and kept)."""
  seen: dict[tuple[str, str, int], _Row] = {}
  labels_seen: set[tuple[str, str, int, str]] = set()
  kept = []
  for row in rows:
    key = (row.video, row.actor, row.frame)
    earlier = seen.setdefault(key, row)
    if earlier is not row and (
      not np.array_equal(earlier.box, row.box) or (*key, row.label) in labels_seen
    ):
      report.bad(
        'duplicate_actor_box',
        f'{path} line {row.line}: video {row.video!r} frame {row.frame + first_frame}: actor '
        f'{row.actor!r} already has a box on this frame (line {earlier.line})',
      )
      continue
    labels_seen.add((*key, row.label))
    kept.append(row)
  return kept


def read_csv(
  path: PathLike,
  video_info: Mapping[str, Sequence[int]],
  class_names: Sequence[str] | None = None,
  coords: str = 'pixels',
  first_frame: int = 0,
) -> description_lib.ReadAnnotations:
  """Reads a CSV of boxes, one row per actor, frame and label, into validated tubes.

  The header names the columns `video,frame,actor_id,label,x1,y1,x2,y2` (any order,
  others ignored). An actor's rows of one label form its track; frames it skips split
  the track into one tube per run of consecutive frames.

  Args:
    path: the CSV file (UTF-8).
    video_info: video name -> (width, height, frames) of every video of the dataset;
      the `video` column is a name of it, with or without a file extension.
    class_names: the classes; None: the labels found in the file, sorted. Rows of other
      labels are bad records (`unknown_label`).
    coords: 'pixels' (corners in pixels of the video's frames) or 'normalized'
      (corners as fractions of the frame's width and height, 0..1).
    first_frame: the number of a video's first frame in the `frame` column: 0 (default)
      or 1.

  Returns:
    ReadAnnotations: the class names, every video of `video_info` with its tubes (none
    for a video without rows), and the report of what was skipped or changed.

  Raises:
    FileNotFoundError: no file at `path`.
    DataFileError: the file is not UTF-8, lacks a column in its header, or gives pixel
      boxes that all lie within 1 pixel of the origin (normalized ones read as pixels).
  """
  if coords not in COORDS:
    raise ValueError(f'coords must be one of {COORDS}, got {coords!r}')
  if first_frame not in (0, 1):
    raise ValueError(f'first_frame must be 0 or 1, got {first_frame!r}')
  path = pathlib.Path(path)
  report = read_report.ReadReport()
  rows = _rows(path, video_info, coords, first_frame, report)
  if coords == 'pixels' and rows and max(float(np.max(np.abs(r.box))) for r in rows) <= 1.0:
    raise records_lib.DataFileError(
      f'{path}: every box lies within 1 pixel of the origin: its coordinates look '
      "normalized (0..1); read it with coords='normalized'"
    )
  rows = _without_second_boxes(rows, path, first_frame, report)
  if class_names is None:
    class_names = sorted({r.label for r in rows})
  index = {c: i for i, c in enumerate(class_names)}
  by_track: dict[tuple[str, str, str], list[_Row]] = collections.defaultdict(list)
  for row in rows:
    by_track[(row.video, row.actor, row.label)].append(row)
  tubes: dict[str, list[records_lib.AnnotatedTube]] = collections.defaultdict(list)
  for (video, actor, label), track in by_track.items():
    where = f'{path} line {{}}: video {video!r} frame {{}}'
    if label not in index:
      report.bad(
        'unknown_label',
        f'{where.format(track[0].line, track[0].frame + first_frame)}: actor {actor!r} has '
        f'label {label!r}, not one of the {len(class_names)} classes ({len(track)} rows skipped)',
      )
      continue
    frames = np.array([r.frame for r in track], np.int64)
    tubes[video] += tracks.tubes_from_track(
      frames,
      np.stack([r.box for r in track]),
      index[label],
      tracks.VideoInfo(*(int(v) for v in video_info[video])),
      report,
      lambda i, track=track, where=where: where.format(track[i].line, track[i].frame + first_frame),
    )
  videos = {
    name: records_lib.AnnotatedVideo(
      name, *(int(v) for v in info), tuple(sorted(tubes[name], key=lambda t: t.start))
    )
    for name, info in sorted(video_info.items())
  }
  return description_lib.ReadAnnotations(tuple(class_names), videos, report)
