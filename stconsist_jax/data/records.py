"""The typed records any dataset's annotations are read into (a video, its size and its actor
tubes), and DataFileError, the one-line error of a user's data file that cannot be used.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stconsist_jax.core import errors


class DataFileError(errors.UserError, ValueError):
  """A user's list or annotation file that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class AnnotatedTube:
  """One actor's annotated track: `boxes[i]` is the corner box on frame `start + i`."""

  label: int
  start: int
  end: int
  boxes: np.ndarray  # float64 (end - start, 4): x1, y1, x2, y2 in original pixels.

  def __post_init__(self):
    boxes = np.asarray(self.boxes, dtype=np.float64)
    if boxes.shape != (self.end - self.start, 4):
      raise ValueError(
        f'tube [{self.start}, {self.end}) needs boxes of shape '
        f'({self.end - self.start}, 4), got {boxes.shape}'
      )
    boxes.setflags(write=False)
    object.__setattr__(self, 'boxes', boxes)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, AnnotatedTube):
      return NotImplemented
    return (self.label, self.start, self.end) == (
      other.label,
      other.start,
      other.end,
    ) and np.array_equal(self.boxes, other.boxes)

  __hash__ = None  # type: ignore[assignment]

  @property
  def num_boxes(self) -> int:
    return self.end - self.start


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video: where it is, its class, its length and its actor tubes."""

  path: str  # `Class/v_Class_gGG_cCC`, no extension.
  label: int  # 0-based index into the 101 (or classInd.txt) classes.
  class_name: str
  num_frames: int
  tubes: tuple[AnnotatedTube, ...] = ()


@dataclasses.dataclass(frozen=True)
class AnnotatedVideo:
  """One video of any dataset: its name, frame size, length and actor tubes.

  `name` is the video's path relative to the dataset's video folder, without extension
  (`Class/v_Class_g01_c01`, `brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0`, `clip7`).
  Tube boxes are in pixels of this video's `width` x `height` frames.
  """

  name: str
  width: int
  height: int
  num_frames: int
  tubes: tuple[AnnotatedTube, ...] = ()

  @property
  def num_boxes(self) -> int:
    return sum(t.num_boxes for t in self.tubes)
