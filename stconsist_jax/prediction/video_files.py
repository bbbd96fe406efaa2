"""Video files for prediction: opening and reading them with OpenCV, listing a folder of
videos and naming their outputs, and writing the annotated copy with tubes drawn.

Videos are read from local files (OpenCV decodes local files only). Outputs are written
through `staged_output`: a local one is written in place under a partial name and
renamed, one for a bucket URL (gs://...) is copied up in chunks from a local scratch
file; a killed process's partial files are removed by the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any
from collections.abc import Callable, Iterator, Sequence

from absl import logging
import cv2
from etils import epath
import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.prediction import frame_predictor
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
FOURCC = 'mp4v'
DRAWN_TUBES = 3  # Tubes drawn on one frame at most (the best ones through it).
REMOTE_VIDEO = 'a bucket URL: OpenCV reads local files only; copy the video to a local disk first'
SCRATCH_PREFIX = 'stconsist_predict_'  # Local scratch folders: <prefix><pid>_<random>.
COPY_CHUNK = 8 << 20  # Bytes per read when a finished output is copied to a bucket.
_SCRATCH_NAME = re.compile(re.escape(SCRATCH_PREFIX) + r'(\d+)_')
_PARTIAL_NAME = re.compile(r'\..+\.(\d+)\.partial(\.[^./]+)?$')


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


def read_frames(cap: Any) -> Iterator[np.ndarray]:
  """The BGR frames of an open capture, one at a time; releases it at the end."""
  try:
    while True:
      ok, frame = cap.read()
      if not ok or frame is None:
        return
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


@contextlib.contextmanager
def staged_output(path: str | os.PathLike) -> Iterator[str]:
  """A local file name to write; on success its content becomes `path` whole.

  For a local `path`: a hidden partial file beside it, named with this process's id,
  renamed over it (keeping an existing file's mode). For a bucket URL: a file in a
  local scratch folder named with this process's id, copied up in chunks. The partial
  file is removed whatever the body raises; one a killed process left behind is
  removed by the next `remove_stale_partials`. The name keeps `path`'s extension
  (OpenCV picks the container from it).
  """
  path = fileio.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if fileio.is_remote(path):
    scratch = tempfile.mkdtemp(prefix=f'{SCRATCH_PREFIX}{os.getpid()}_')
    try:
      local = os.path.join(scratch, f'output{path.suffix}')
      yield local
      _copy_up(local, path)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
    return
  target = os.fspath(path)
  folder, name = os.path.split(target)
  local = os.path.join(folder, f'.{name}.{os.getpid()}.partial{path.suffix}')
  try:
    yield local
    if os.path.exists(target):
      shutil.copymode(target, local)
    os.replace(local, target)
  finally:
    if os.path.lexists(local):
      os.unlink(local)


def _copy_up(local: str, path: epath.Path) -> None:
  """Copies a local file to a bucket URL a chunk at a time (the object appears at close)."""
  with open(local, 'rb') as src, path.open('wb') as dst:
    shutil.copyfileobj(src, dst, COPY_CHUNK)


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def remove_stale_partials(out_dir: str | os.PathLike) -> list[str]:
  """Removes what killed predictions left: partial outputs in a local `out_dir` and
  scratch folders in the temp folder whose process is gone. Returns the paths removed."""
  places = [(tempfile.gettempdir(), _SCRATCH_NAME)]
  if not fileio.is_remote(out_dir) and os.path.isdir(out_dir):
    places.append((os.fspath(out_dir), _PARTIAL_NAME))
  removed = []
  for folder, pattern in places:
    for entry in os.scandir(folder):
      match = pattern.match(entry.name)
      if match is not None and not _process_alive(int(match.group(1))) and _remove(entry):
        removed.append(entry.path)
  return removed


def _remove(entry: os.DirEntry) -> bool:
  """Removes a file or a folder tree; False when it cannot be (another user's)."""
  try:
    if entry.is_dir(follow_symlinks=False):
      shutil.rmtree(entry.path)
    else:
      os.unlink(entry.path)
  except FileNotFoundError:
    return False
  except OSError as e:
    logging.warning('cannot remove the stale partial output %s: %s', entry.path, e)
    return False
  return True


_PALETTE = (
  (255, 99, 71),
  (60, 179, 113),
  (30, 144, 255),
  (255, 215, 0),
  (238, 130, 238),
  (0, 206, 209),
  (255, 140, 0),
  (154, 205, 50),
  (219, 112, 147),
  (123, 104, 238),
)


def tube_color(tube_id: int) -> tuple[int, int, int]:
  """BGR colour of a tube id (a fixed palette, cycled)."""
  r, g, b = _PALETTE[tube_id % len(_PALETTE)]
  return (b, g, r)


def _label(
  image: np.ndarray,
  text: str,
  x: int,
  y: int,
  color: tuple[int, int, int],
  scale: float,
  thickness: int,
) -> int:
  """Writes `text` on a filled box whose bottom-left is (x, y); returns the box height."""
  font = cv2.FONT_HERSHEY_SIMPLEX
  (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
  h, w = image.shape[:2]
  x = int(np.clip(x, 0, max(w - tw - 2, 0)))
  y = int(np.clip(y, th + base + 2, h - 1))
  cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 2, y), color, -1)
  cv2.putText(image, text, (x + 1, y - base), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
  return th + base + 2


def draw_frame(
  frame_bgr: np.ndarray,
  box: np.ndarray | None,
  probs: np.ndarray,
  frame_tubes: Sequence[tuple[int, str, float, np.ndarray]],
  class_names: Sequence[str],
) -> np.ndarray:
  """A copy of the frame with its detection, its tubes and the top class drawn.

  Args:
    frame_bgr: uint8 `(H, W, 3)`.
    box: the frame's detection, pixel corners (None: classification only), drawn thin.
    probs: `(K,)` the frame's class probabilities; the top class is written top-left.
    frame_tubes: `(tube id, class name, tube score, pixel corner box)` of the tubes
      through this frame, best first; the first DRAWN_TUBES are drawn in the tube's
      colour with '#id class score' (labels stacked downwards).
    class_names: label -> name.
  """
  image = np.ascontiguousarray(frame_bgr).copy()
  h = image.shape[0]
  scale = max(0.35, h / 720.0)
  thick = max(1, int(round(h / 360.0)))
  top = int(np.argmax(probs))
  _label(image, f'{class_names[top]} {probs[top]:.2f}', 0, 0, (255, 255, 255), scale, thick)
  if box is not None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(image, (x1, y1), (x2, y2), (255, 255, 255), thick)
  shown = list(frame_tubes)[:DRAWN_TUBES]
  for tube_id, _, _, tube_box in reversed(shown):  # The best tube's outline on top.
    x1, y1, x2, y2 = (int(round(v)) for v in tube_box)
    cv2.rectangle(image, (x1, y1), (x2, y2), tube_color(tube_id), 2 * thick)
  offset = 0
  for tube_id, name, score, tube_box in shown:
    x1, y1 = int(round(tube_box[0])), int(round(tube_box[1]))
    offset += _label(
      image, f'#{tube_id} {name} {score:.2f}', x1, y1 + offset, tube_color(tube_id), scale, thick
    )
  return image


def write_video(
  video: str | os.PathLike,
  out_path: str | os.PathLike,
  results: frame_predictor.FrameResults,
  tube_list: Sequence[Any],
  class_names: Sequence[str],
  fps: float,
  on_frame: Callable[[], None] | None = None,
) -> int:
  """Decodes `video` again and writes it with the predictions drawn, a frame at a time.

  OpenCV encodes into `staged_output(out_path)`'s file (beside a local `out_path`,
  copied up in chunks to a bucket URL): only one frame is held. Returns the frames
  written; the original resolution and frame rate are kept.
  """
  cap, _ = open_video(video)
  frames = read_frames(cap)
  try:
    with staged_output(out_path) as tmp:
      written = _draw_into(tmp, frames, results, tube_list, class_names, fps, on_frame)
  finally:
    frames.close()
  if written != results.num_frames:
    logging.warning(
      '%s: %d frames decoded on the second pass, %d on the first; the annotated video has %d',
      video,
      written,
      results.num_frames,
      written,
    )
  return written


def _draw_into(
  tmp: str,
  frames: Iterator[np.ndarray],
  results: frame_predictor.FrameResults,
  tube_list: Sequence[Any],
  class_names: Sequence[str],
  fps: float,
  on_frame: Callable[[], None] | None,
) -> int:
  """Encodes the frames with their predictions drawn into the local file `tmp`."""
  writer = None
  written = 0
  try:
    for f, frame in enumerate(frames):
      if f >= results.num_frames:
        break
      if writer is None:
        h, w = frame.shape[:2]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*FOURCC), float(fps), (w, h))
        if not writer.isOpened():
          raise VideoError(f'OpenCV cannot write {FOURCC} video')
      box = None
      if results.boxes is not None:
        box = results.boxes[f] * np.array([w, h, w, h], np.float64)
      through = tubes_at(tube_list, f, class_names)
      writer.write(draw_frame(frame, box, results.probs[f], through, class_names))
      written += 1
      if on_frame is not None:
        on_frame()
    if writer is None:
      raise VideoError('no frames decoded on the second pass')
  finally:
    if writer is not None:
      writer.release()
  return written


def tubes_at(
  tube_list: Sequence[Any], frame: int, class_names: Sequence[str]
) -> list[tuple[int, str, float, np.ndarray]]:
  """`(tube id, class name, score, box)` of the tubes through `frame`, in the given order."""
  found = []
  for tube_id, tube in enumerate(tube_list):
    frames = np.asarray(tube.frames)
    i = int(np.searchsorted(frames, frame))
    if i < len(frames) and frames[i] == frame:
      box = np.asarray(tube.boxes)[i]
      found.append((tube_id, class_names[int(tube.label)], float(tube.score), box))
  return found


def quiet_opencv(verbose: bool) -> None:
  """Silences OpenCV's and FFmpeg's own warnings (errors stay) unless `verbose`."""
  if verbose:
    return
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')  # Read when FFmpeg first opens.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
