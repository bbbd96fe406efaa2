"""Video decoding for dataset builds: one video file, or one folder of numbered frames,
-> resized JPEG-encoded RGB frames.

Decoded in fresh worker processes that import only OpenCV and numpy, so they start fast
and carry no TensorFlow state; they end with the build, even when it is killed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import cv2
import numpy as np


# Where a task's frames are: one video file, or a folder of numbered image files.
VIDEO_FILE = 'video_file'
FRAME_FOLDER = 'frame_folder'
# Frame files of a folder: `00001.jpg`, `1.png`, ... numbered from 1 (ACT, MOC layouts).
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True)
class DecodeTask:
  path: str  # the video name `Class/v_...` (no extension)
  file: str  # the video file to read, or the folder of frames
  frame_size: int
  jpeg_quality: int = 90
  kind: str = VIDEO_FILE  # VIDEO_FILE or FRAME_FOLDER


@dataclasses.dataclass
class DecodedVideo:
  path: str
  frames: list[bytes]  # JPEG bytes of RGB frames, frame_size x frame_size
  height: int = 0  # original frame size
  width: int = 0
  error: str | None = None
  header_frames: int = 0  # frame count the file's header announces (0: unknown)

  @property
  def num_frames(self) -> int:
    return len(self.frames)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
  """Squashes a frame to size x size (area averaging when shrinking)."""
  h, w = frame.shape[:2]
  interp = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_LINEAR
  return cv2.resize(frame, (size, size), interpolation=interp)


def _header_frames(cap: cv2.VideoCapture) -> int:
  count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
  return int(count) if math.isfinite(count) and count > 0 else 0


def decode_video(task: DecodeTask) -> DecodedVideo:
  """Decodes every frame; never raises (a problem is returned in `error`).

  A damaged file may decode to fewer frames than `header_frames`; the caller decides.
  """
  try:
    cap = cv2.VideoCapture(task.file)
    if not cap.isOpened():
      return DecodedVideo(task.path, [], error=f'OpenCV cannot open {task.file}')
    header_frames = _header_frames(cap)
    frames, height, width = [], 0, 0
    params = [cv2.IMWRITE_JPEG_QUALITY, int(task.jpeg_quality)]
    while True:
      ok, bgr = cap.read()
      if not ok:
        break
      height, width = bgr.shape[:2]
      ok, jpeg = cv2.imencode('.jpg', resize_frame(bgr, task.frame_size), params)
      if not ok:
        return DecodedVideo(task.path, [], error=f'JPEG encoding failed in {task.file}')
      frames.append(jpeg.tobytes())
    cap.release()
    if not frames:
      return DecodedVideo(task.path, [], error=f'no decodable frames in {task.file}')
    return DecodedVideo(task.path, frames, height, width, header_frames=header_frames)
  except Exception as e:  # pylint: disable=broad-except
    # A worker must report, not crash, so the build can skip this video.
    return DecodedVideo(task.path, [], error=f'{type(e).__name__}: {e} ({task.file})')


def numbered_frames(folder: str) -> list[str] | str:
  """The frame files of a folder in frame order, or why they cannot be one video.

  Files are `<number>.<jpg|jpeg|png>` (any zero padding), numbered 1..n without a gap;
  other files are ignored.
  """
  try:
    names = os.listdir(folder)
  except OSError as e:
    return f'cannot list the frames folder {folder} ({e.strerror})'
  numbered = {}
  for name in names:
    stem, ext = os.path.splitext(name)
    if ext.lower() in FRAME_EXTENSIONS and stem.isdigit():
      if int(stem) in numbered:
        return f'frame {int(stem)} is in {folder} twice ({numbered[int(stem)]}, {name})'
      numbered[int(stem)] = name
  if not numbered:
    return f'no numbered frame files ({"/".join(FRAME_EXTENSIONS)}) in {folder}'
  missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
  if missing:
    return f'frames folder {folder} lacks frame {missing[0]} of 1..{max(numbered)}'
  return [os.path.join(folder, numbered[i]) for i in range(1, len(numbered) + 1)]


def decode_frame_folder(task: DecodeTask) -> DecodedVideo:
  """Reads every frame of a folder (`numbered_frames`); never raises, like `decode_video`.

  An unreadable frame or a frame of another size than the first is an error: the folder
  is not one video.
  """
  try:
    files = numbered_frames(task.file)
    if isinstance(files, str):
      return DecodedVideo(task.path, [], error=files)
    frames, height, width = [], 0, 0
    params = [cv2.IMWRITE_JPEG_QUALITY, int(task.jpeg_quality)]
    for i, file in enumerate(files):
      bgr = cv2.imread(file, cv2.IMREAD_COLOR)
      if bgr is None:
        return DecodedVideo(task.path, [], error=f'OpenCV cannot read frame {i + 1} ({file})')
      if frames and bgr.shape[:2] != (height, width):
        return DecodedVideo(
          task.path,
          [],
          error=f'frame {i + 1} is {bgr.shape[1]}x{bgr.shape[0]}, frame 1 {width}x{height} ({file})',
        )
      height, width = bgr.shape[:2]
      ok, jpeg = cv2.imencode('.jpg', resize_frame(bgr, task.frame_size), params)
      if not ok:
        return DecodedVideo(task.path, [], error=f'JPEG encoding failed in {file}')
      frames.append(jpeg.tobytes())
    return DecodedVideo(task.path, frames, height, width, header_frames=len(files))
  except Exception as e:  # pylint: disable=broad-except
    return DecodedVideo(task.path, [], error=f'{type(e).__name__}: {e} ({task.file})')


def decode_task(task: DecodeTask) -> DecodedVideo:
  """`decode_video` or `decode_frame_folder`, as the task's `kind` says."""
  return decode_frame_folder(task) if task.kind == FRAME_FOLDER else decode_video(task)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
  while os.getppid() == parent_pid:
    time.sleep(PARENT_POLL_SECONDS)
  os._exit(1)  # pylint: disable=protected-access


def die_with_parent(parent_pid: int) -> None:
  """Makes this (worker) process end when `parent_pid`, its parent, does.

  A killed parent runs no cleanup, and its orphaned workers would decode on for good.
  On Linux the kernel sends SIGKILL at once (PR_SET_PDEATHSIG); everywhere, a daemon
  thread also exits the process within PARENT_POLL_SECONDS of being orphaned.
  """
  if sys.platform.startswith('linux'):
    try:
      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
      pass  # The thread below still ends it.
  threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
  if os.getppid() != parent_pid:  # The parent died before the kernel was told.
    os._exit(1)  # pylint: disable=protected-access


def decode_all(tasks: Sequence[DecodeTask], num_workers: int) -> Iterator[DecodedVideo]:
  """`decode_task` of every task, in order: in a fresh spawn pool (0: in this process).

  At most 4 tasks per worker are in flight, so memory stays bounded on long lists. The
  workers end with this process (`die_with_parent`); the pool is shut down however the
  iteration ends (finished, an error, or the generator closed), queued tasks cancelled.
  """
  if num_workers <= 0:
    yield from map(decode_task, tasks)
    return
  ctx = multiprocessing.get_context('spawn')  # no inherited TensorFlow state
  pool = concurrent.futures.ProcessPoolExecutor(
    num_workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
  )
  try:
    pending = collections.deque()
    it = iter(tasks)
    for task in it:
      pending.append(pool.submit(decode_task, task))
      if len(pending) >= 4 * num_workers:
        break
    while pending:
      result = pending.popleft().result()
      task = next(it, None)
      if task is not None:
        pending.append(pool.submit(decode_task, task))
      yield result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
