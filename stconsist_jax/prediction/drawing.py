"""Drawing predictions on a frame: the tubes' colours, the labels on filled boxes, and
`draw_frame` (detection, tubes and top class); `tubes_at` finds the tubes through a frame.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import cv2
import numpy as np

DRAWN_TUBES = 3  # Tubes drawn on one frame at most (the best ones through it).

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
  boxes: Sequence[np.ndarray],
  probs: np.ndarray,
  frame_tubes: Sequence[tuple[int, str, float, np.ndarray]],
  class_names: Sequence[str],
) -> np.ndarray:
  """A copy of the frame with its detection, its tubes and the top class drawn.

  Args:
    frame_bgr: uint8 `(H, W, 3)`.
    boxes: the frame's detections (its actors), pixel corners, drawn thin (none:
      classification only).
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
  for box in boxes:
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
