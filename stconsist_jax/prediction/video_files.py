"""Video files for prediction: opening and reading them with OpenCV, listing a folder of
videos and naming their outputs.

Videos are read from local files (OpenCV decodes local files only). The outputs are
written by `annotated_video` (the drawn MP4) through `output_files` (partial files).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any
from collections.abc import Iterator, Sequence

import cv2
from etils import epath
import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.prediction import prediction_record

VIDEO_EXTENSIONS = (
  '.avi',
  '.mp4',
  '.mkv',
  '.mov',
  '.webm',
  '.m4v',
  '.mpg',
  '.mpeg',
  '.wmv',
  '.flv',
  '.3gp',
  '.ogv',
  '.ts',
  '.mts',
  '.m2ts',
)
DEFAULT_FPS = 25.0  # Written when a file does not state a usable frame rate.
REMOTE_VIDEO = 'a bucket URL: OpenCV reads local files only; copy the video to a local disk first'


class VideoError(errors.UserError):
  """A video that cannot be predicted (missing, empty, unreadable); one-line message."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What a video file says about itself (the frame count may be wrong or zero)."""

  path: str
  fps: float  # DEFAULT_FPS when the file states none
  fps_stated: bool
  reported_frames: int
  width: int
  height: int


def open_video(path: str | os.PathLike) -> tuple[Any, VideoInfo]:
  """(cv2.VideoCapture, VideoInfo); VideoError with one clear line if it cannot be read."""
  if fileio.is_remote(path):
    raise VideoError(REMOTE_VIDEO)
  p = pathlib.Path(path)
  if not p.exists():
    raise VideoError('no such file')
  if not p.is_file():
    raise VideoError('not a file')
  if not os.access(p, os.R_OK):
    raise VideoError('permission denied')
  if p.stat().st_size == 0:
    raise VideoError('empty file (0 bytes)')
  cap = cv2.VideoCapture(str(p))
  if not cap.isOpened():
    cap.release()
    raise VideoError('OpenCV cannot open it (not a video, damaged, or an unsupported codec)')
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
  stated = math.isfinite(fps) and 0.0 < fps <= 1000.0
  reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
  reported = int(reported) if math.isfinite(reported) and reported > 0 else 0
  info = VideoInfo(
    str(path),
    fps if stated else DEFAULT_FPS,
    stated,
    reported,
    int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
    int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
  )
  return cap, info


def read_frames(cap: Any, reuse: bool = False) -> Iterator[np.ndarray]:
  """The BGR frames of an open capture, one at a time; releases it at the end.

  With `reuse`, each frame is decoded into the previous frame's array (same size):
  a frame is valid only until the next one is read. Prediction reads this way, so that
  a long large-frame video does not allocate (and leave the allocator to keep) one
  frame-sized buffer per frame.
  """
  buffer = None
  try:
    while True:
      ok, frame = cap.read(buffer) if reuse else cap.read()
      if not ok or frame is None:
        return
      if reuse:
        buffer = frame
      if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
      elif frame.shape[-1] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
      yield frame
  finally:
    cap.release()


def list_videos(
  path: str | os.PathLike, exclude: str | os.PathLike | None = None
) -> list[pathlib.Path]:
  """`path` itself, or the video files directly inside a folder (sorted, by extension).

  Files under `exclude` (the output folder, local or a bucket URL) are left out.
  """
  p = pathlib.Path(path)
  if not p.is_dir():
    return [p]
  skip = None
  if exclude is not None and not fileio.is_remote(exclude):
    skip = pathlib.Path(exclude).resolve()
  found = []
  for f in sorted(p.iterdir()):
    if f.name.startswith('.') or not f.is_file() or f.suffix.lower() not in VIDEO_EXTENSIONS:
      continue
    if skip is not None and f.resolve().parent == skip and is_annotated_copy(f):
      continue
    found.append(f)
  return found


def is_annotated_copy(path: pathlib.Path) -> bool:
  """Whether `path` is the annotated copy a prediction wrote beside its record.

  That is `<name>.mp4` (or `<name>_pred.mp4`) next to a `<name>.json` prediction record
  of another video.
  """
  if path.suffix.lower() != '.mp4':
    return False
  names = [path.stem] + ([path.stem[: -len('_pred')]] if path.stem.endswith('_pred') else [])
  for name in names:
    source = prediction_record.recorded_video(path.with_name(f'{name}.json'))
    if source is not None and not _same_video(pathlib.Path(source), path):
      return True
  return False


def _same_video(recorded: pathlib.Path, path: pathlib.Path) -> bool:
  """Whether a record's `video` (as given, maybe relative to another folder) is `path`."""
  if recorded.exists():
    return recorded.resolve() == path.resolve()
  return recorded.name == path.name


def output_names(paths: Sequence[pathlib.Path]) -> list[str]:
  """One output name per video: its stem, or stem_ext where two stems collide."""
  stems = [p.stem for p in paths]
  names = [
    s if stems.count(s) == 1 else f'{s}_{p.suffix.lstrip(".").lower()}'
    for s, p in zip(stems, paths)
  ]
  seen: dict[str, int] = {}
  unique = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    unique.append(name if seen[name] == 1 else f'{name}_{seen[name]}')
  return unique


def same_local_file(path: epath.Path, video: pathlib.Path) -> bool:
  """Whether an output `path` would overwrite the input `video`."""
  return not fileio.is_remote(path) and pathlib.Path(path).resolve() == video.resolve()


def quiet_opencv(verbose: bool) -> None:
  """Silences OpenCV's and FFmpeg's own warnings (errors stay) unless `verbose`."""
  if verbose:
    return
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')  # Read when FFmpeg first opens.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
