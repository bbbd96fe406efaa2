"""One actor's boxes as a reader finds them -> validated tubes: bad boxes reported and
skipped, small overshoots clipped, and one tube per run of consecutive frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import read_report

# Boxes may pass the frame's edge by this much (rounding of annotation tools) and are then
# clipped to it; beyond it a box is a bad record.
TOLERANCE_PIXELS = 1.0


class VideoInfo(NamedTuple):
  """What a reader must know of a video to validate its boxes."""

  width: int
  height: int
  num_frames: int


def box_text(box: np.ndarray) -> str:
  return '[' + ', '.join(f'{float(c):g}' for c in box) + ']'


def tubes_from_track(
  frames: np.ndarray,
  boxes: np.ndarray,
  label: int,
  video: VideoInfo,
  report: read_report.ReadReport,
  locate: Callable[[int], str],
) -> list[records_lib.AnnotatedTube]:
  """An actor's boxes -> its tubes, each bad box reported in one line and skipped.

  Args:
    frames: (n,) 0-based frame index of each box, in the order the file gives them.
    boxes: (n, 4) corner boxes `x1 y1 x2 y2` in pixels.
    label: the tubes' label.
    video: the video's frame size and length.
    report: receives one line per bad box and the counts of clipped boxes and of gaps.
    locate: `locate(i)` names box i for its line: `file: video 'v' frame 7`, the frame
      numbered as in the file (called for bad boxes only).

  Returns:
    One tube per run of consecutive frames of kept boxes, in frame order.
  """
  frames = np.asarray(frames, np.int64).reshape(-1)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  keep = np.ones(len(frames), bool)

  def drop(mask: np.ndarray, kind: str, what: Callable[[int], str]) -> None:
    for i in np.flatnonzero(mask & keep):
      report.bad(kind, f'{locate(i)}: {what(i)}')
    keep[mask] = False

  w, h, n = video
  first = np.zeros(len(frames), bool)
  first[np.unique(frames, return_index=True)[1]] = True
  drop(~first, 'duplicate_actor_box', lambda i: 'a second box of this actor on this frame')
  drop(frames < 0, 'frame_before_video_start', lambda i: 'a box before the first frame')
  drop(frames >= n, 'frame_past_video_end', lambda i: f'past the end of the video ({n} frames)')
  drop(
    ~np.all(np.isfinite(boxes), axis=1),
    'malformed_record',
    lambda i: f'box {box_text(boxes[i])} is not finite',
  )
  with np.errstate(invalid='ignore'):
    tol = TOLERANCE_PIXELS
    beyond = (
      (boxes[:, 0] < -tol)
      | (boxes[:, 1] < -tol)
      | (boxes[:, 2] > w + tol)
      | (boxes[:, 3] > h + tol)
    )
  drop(
    beyond,
    'box_outside_frame',
    lambda i: f'box {box_text(boxes[i])} is beyond the {w}x{h} frame by over {tol:g} pixel',
  )
  clipped = np.clip(boxes, 0, np.array([w, h, w, h], np.float64))
  changed = keep & np.any(clipped != boxes, axis=1)
  with np.errstate(invalid='ignore'):
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
  drop(empty, 'empty_box', lambda i: f'box {box_text(boxes[i])} has no area (x2 <= x1 or y2 <= y1)')
  report.note('boxes_clipped', int(np.sum(changed & keep)))

  kept = np.flatnonzero(keep)
  kept = kept[np.argsort(frames[kept], kind='stable')]
  runs = np.split(kept, np.flatnonzero(np.diff(frames[kept]) != 1) + 1) if len(kept) else []
  report.note('tubes_split_at_gaps', max(len(runs) - 1, 0))
  return [
    records_lib.AnnotatedTube(
      int(label), int(frames[run[0]]), int(frames[run[-1]]) + 1, clipped[run]
    )
    for run in runs
  ]
