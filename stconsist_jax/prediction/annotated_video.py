"""The annotated copy of a video: decoded again, each frame drawn with its predictions and
encoded to an MP4, one frame held at a time, through a partial file.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any
from collections.abc import Callable, Iterator, Sequence

from absl import logging
import cv2
import numpy as np

from stconsist_jax.prediction import drawing
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import output_files
from stconsist_jax.prediction import prediction_record
from stconsist_jax.prediction import video_files

FOURCC = 'mp4v'
# Actors and tubes scoring below this are left out of the drawing (not of the JSON): a
# tubelet detector keeps every class's candidates, most of them near zero.
DRAW_MIN_SCORE = 0.2
# Less free space than this beside an annotated video cut short: the disk filled.
FULL_DISK_BYTES = 1 << 20


def write_video(
  video: str | os.PathLike,
  out_path: str | os.PathLike,
  results: frame_predictor.FrameResults,
  tube_list: Sequence[Any],
  class_names: Sequence[str],
  fps: float,
  on_frame: Callable[[], None] | None = None,
  box_class_names: Sequence[str] | None = None,
) -> int:
  """Decodes `video` again and writes it with the predictions drawn, a frame at a time.

  OpenCV encodes into `output_files.staged_output(out_path)`'s file (beside a local `out_path`,
  copied up in chunks to a bucket URL): only one frame is held. Returns the frames
  written; the original resolution and frame rate are kept.
  """
  cap, _ = video_files.open_video(video)
  frames = video_files.read_frames(cap, reuse=True)  # draw_frame copies
  try:
    with output_files.staged_output(out_path) as tmp:
      written = _draw_into(
        tmp, frames, results, tube_list, class_names, fps, on_frame, box_class_names
      )
      _check_complete(tmp, written)
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


def _check_complete(path: str, written: int) -> None:
  """Raises unless the encoded file at `path` holds its `written` frames: OpenCV's writer
  reports no failed write, and a full disk leaves a file without its index."""
  cap = cv2.VideoCapture(path)
  try:
    readable = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if cap.isOpened() else 0
  finally:
    cap.release()
  if readable == written:
    return
  cut = f'the annotated video holds {readable} of its {written} frames'
  if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < FULL_DISK_BYTES:
    raise OSError(errno.ENOSPC, f'No space left on device: {cut}')
  raise video_files.VideoError(f'OpenCV could not write it whole: {cut}')


def _draw_into(
  tmp: str,
  frames: Iterator[np.ndarray],
  results: frame_predictor.FrameResults,
  tube_list: Sequence[Any],
  class_names: Sequence[str],
  fps: float,
  on_frame: Callable[[], None] | None,
  box_class_names: Sequence[str] | None = None,
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
          raise video_files.VideoError(f'OpenCV cannot write {FOURCC} video')
      scale = np.array([w, h, w, h], np.float64)
      actors = prediction_record.frame_actors(results, f, scale)
      boxes = [box for box, _, score in actors if score >= DRAW_MIN_SCORE or len(actors) == 1]
      through = drawing.tubes_at(tube_list, f, box_class_names or class_names)
      through = [t for t in through if t[2] >= DRAW_MIN_SCORE]
      writer.write(drawing.draw_frame(frame, boxes, results.probs[f], through, class_names))
      written += 1
      if on_frame is not None:
        on_frame()
    if writer is None:
      raise video_files.VideoError('no frames decoded on the second pass')
  finally:
    if writer is not None:
      writer.release()
  return written
