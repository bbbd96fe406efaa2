"""A user's video folder as a build sees it: the videos (files or folders of numbered frames)
under it by name, and each one's frame size and length, probed with OpenCV.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import NamedTuple

import cv2

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import video_decode

# The extensions of video files a folder is searched for (any OpenCV reads).
VIDEO_EXTENSIONS = (
  '.avi',
  '.mp4',
  '.mov',
  '.mkv',
  '.webm',
  '.m4v',
  '.mpg',
  '.mpeg',
  '.wmv',
  '.flv',
  '.3gp',
)


class Probe(NamedTuple):
  """A video's frame size and length; `error` says why they are not known."""

  width: int = 0
  height: int = 0
  num_frames: int = 0
  error: str | None = None


def find_video_files(root: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Video name (path below `root`, no extension, `/`-separated) -> file, searched recursively.

  Raises:
    DataFileError: `root` is no folder, holds no video file, or two files give one name
      (`a.mp4` and `a.avi`).
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise records_lib.DataFileError(f'video folder {root} not found')
  found: dict[str, pathlib.Path] = {}
  for path in sorted(root.rglob('*')):
    if path.suffix.lower() not in VIDEO_EXTENSIONS or not path.is_file():
      continue
    name = path.relative_to(root).with_suffix('').as_posix()
    if name in found:
      raise records_lib.DataFileError(
        f'{found[name]} and {path} are both video {name!r}: keep one of them'
      )
    found[name] = path
  if not found:
    raise records_lib.DataFileError(f'no video files ({", ".join(VIDEO_EXTENSIONS)}) under {root}')
  return found


def by_file_stem(files: Mapping[str, pathlib.Path]) -> dict[str, pathlib.Path]:
  """The same videos named by their file name alone (`clips/a.mp4` -> `a`).

  Raises:
    DataFileError: two files in different folders share a name.
  """
  out: dict[str, pathlib.Path] = {}
  for path in files.values():
    if path.stem in out:
      raise records_lib.DataFileError(
        f'{out[path.stem]} and {path} share the name {path.stem!r}, which names a CVAT task '
        'video: rename one, or name the videos by task (--cvat_names=task)'
      )
    out[path.stem] = path
  return out


def _count_frames(cap: cv2.VideoCapture) -> int:
  count = 0
  while cap.grab():
    count += 1
  return count


def probe_video_file(path: str | os.PathLike) -> Probe:
  """Frame size and length of a video file (its header's frame count, else counted)."""
  cap = cv2.VideoCapture(os.fspath(path))
  try:
    if not cap.isOpened():
      return Probe(error=f'OpenCV cannot open {path}')
    ok, frame = cap.read()
    if not ok:
      return Probe(error=f'no decodable frames in {path}')
    height, width = frame.shape[:2]
    header = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    num_frames = int(header) if header and header > 0 else 1 + _count_frames(cap)
    return Probe(width, height, num_frames)
  except cv2.error as e:
    return Probe(error=f'OpenCV cannot read {path} ({e})')
  finally:
    cap.release()


def probe_frame_folder(path: str | os.PathLike) -> Probe:
  """Frame size (of its first frame) and frame count of a folder of numbered frames."""
  files = video_decode.numbered_frames(os.fspath(path))
  if isinstance(files, str):
    return Probe(error=files)
  first = cv2.imread(files[0], cv2.IMREAD_COLOR)
  if first is None:
    return Probe(error=f'OpenCV cannot read frame 1 ({files[0]})')
  return Probe(first.shape[1], first.shape[0], len(files))


def probe(path: str | os.PathLike, kind: str = video_decode.VIDEO_FILE) -> Probe:
  if kind == video_decode.FRAME_FOLDER:
    return probe_frame_folder(path)
  return probe_video_file(path)
