"""The JSON record of one predicted video: building it from the dense frame results and
tubes, and writing it as compact text, one line per entry.

A record's `frames` and `tubes` are `Entries`, built one at a time when read (a tube's
`frames` and `boxes` too, from its arrays), so that a long video's record is written to
its file entry by entry (`write`) and never held whole. Its schema and checks are
`record_schema`; field meanings: docs/predict.md.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, TextIO
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.core import clip_geometry
from stconsist_jax.prediction import frame_predictor

# Version 2 adds `box_classes` and every frame's `actors` (a tubelet detector's several
# boxes a frame; a one-box head's one box); tubes' labels index `box_classes`.
FORMAT = 'stconsist_jax.prediction/2'
ACTOR_TUBE_IOU = 0.5  # An actor belongs to the tube of its class whose box it overlaps most.
NUM_DIGITS = 5  # Decimals of scores in the JSON; boxes get 2 (pixels).
CHUNK = 64  # Values of a lazy list (a tube's frames or boxes) written at once.


class Entries(Sequence):
  """A read-only list of `count` JSON values, each built by `make(i)` when it is read.

  Equal to any sequence of the same values (a list, as the JSON reads back)."""

  def __init__(self, count: int, make: Callable[[int], Any]):
    self._count = int(count)
    self._make = make

  def __len__(self) -> int:
    return self._count

  def __eq__(self, other: Any) -> bool:
    if not isinstance(other, Sequence) or isinstance(other, str):
      return NotImplemented
    return len(self) == len(other) and all(a == b for a, b in zip(self, other))

  __hash__ = None

  def __getitem__(self, index: Any) -> Any:
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._count))]
    i = index + self._count if index < 0 else index
    if not 0 <= i < self._count:
      raise IndexError(f'entry {index} of {self._count}')
    return self._make(i)


def _round(values: np.ndarray, digits: int) -> list[float]:
  return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]


def top_classes(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
  order = np.argsort(-probs, kind='stable')[:k]
  return [
    {'label': int(c), 'class': class_names[c], 'score': round(float(probs[c]), NUM_DIGITS)}
    for c in order
  ]


def frame_actors(
  results: frame_predictor.FrameResults, f: int, scale: np.ndarray
) -> list[tuple[np.ndarray, int, float]]:
  """`(pixel box, box-class label, score)` of frame f's actors, best first: a tubelet
  detector's actors, or a one-box head's box with the frame's top class."""
  if results.actors is None:
    if results.boxes is None:
      return []
    top = int(np.argmax(results.probs[f]))
    return [(results.boxes[f] * scale, top, float(results.probs[f][top]))]
  boxes, scores, valid = results.actors
  out = []
  for m in np.nonzero(valid[f])[0]:
    label = int(np.argmax(scores[f, m]))
    out.append((boxes[f, m] * scale, label, float(scores[f, m, label])))
  return out


def actor_tube_ids(
  actors: Sequence[tuple[np.ndarray, int, float]], through: Sequence[tuple[int, int, np.ndarray]]
) -> list[int | None]:
  """The tube of each actor: in actor order, the not yet taken tube of its class through
  the frame whose box overlaps it most, at IoU >= ACTOR_TUBE_IOU (None: no tube)."""
  taken, ids = set(), []
  for box, label, _ in actors:
    best, best_iou = None, ACTOR_TUBE_IOU
    for tube_id, tube_label, tube_box in through:
      if tube_id in taken or tube_label != label:
        continue
      iou = float(boxes_lib.iou_corners(box[None], tube_box[None], plus_one=False)[0])
      if iou >= best_iou:
        best, best_iou = tube_id, iou
    if best is not None:
      taken.add(best)
    ids.append(best)
  return ids


def tubes_through(tubes: Sequence[Any], f: int) -> list[tuple[int, int, np.ndarray]]:
  """`(tube id, label, pixel box)` of the tubes with a box on frame f."""
  found = []
  for tube_id, tube in enumerate(tubes):
    i = int(np.searchsorted(tube.frames, f))
    if i < len(tube.frames) and tube.frames[i] == f:
      found.append((tube_id, int(tube.label), np.asarray(tube.boxes[i], np.float64)))
  return found


def frame_entries(
  results: frame_predictor.FrameResults,
  size: tuple[int, int],
  class_names: Sequence[str],
  top_k: int = 0,
  tubes: Sequence[Any] = (),
  box_class_names: Sequence[str] | None = None,
) -> Entries:
  """The JSON `frames` list: pixel corner box (null: none), all scores or the top-k
  classes, and the frame's actors with their box class and tube id."""
  h, w = size
  scale = np.array([w, h, w, h], np.float64)
  box_names = class_names if box_class_names is None else box_class_names

  def entry(f: int) -> dict[str, Any]:
    box = None
    if results.boxes is not None and np.all(np.isfinite(results.boxes[f])):
      box = _round(results.boxes[f] * scale, 2)
    scores = (
      top_classes(results.probs[f], class_names, top_k)
      if top_k > 0
      else _round(results.probs[f], NUM_DIGITS)
    )
    actors = frame_actors(results, f, scale)
    ids = actor_tube_ids(actors, tubes_through(tubes, f))
    return {
      'frame': f,
      'box': box,
      'scores': scores,
      'predicted': bool(results.predicted[f]),
      'actors': [
        {
          'box': _round(b, 2),
          'label': label,
          'class': box_names[label],
          'score': round(score, NUM_DIGITS),
          'tube': tube_id,
        }
        for (b, label, score), tube_id in zip(actors, ids)
      ],
    }

  return Entries(results.num_frames, entry)


def tube_entries(tubes: Sequence[Any], class_names: Sequence[str]) -> Entries:
  """The JSON `tubes` list (ids in the order given: by score, best first).

  A tube's `frames` and `boxes` are `Entries` too, read from its arrays a frame at a
  time: a whole-video tube is not held as Python numbers (about 230 bytes a frame)."""

  def entry(i: int) -> dict[str, Any]:
    t = tubes[i]
    frames, boxes = np.asarray(t.frames), np.asarray(t.boxes)
    return {
      'id': i,
      'label': int(t.label),
      'class': class_names[int(t.label)],
      'start': int(t.start),
      'end': int(t.end),
      'score': round(float(t.score), NUM_DIGITS),
      'frames': Entries(len(frames), lambda j: int(frames[j])),
      'boxes': Entries(len(boxes), lambda j: _round(boxes[j], 2)),
    }

  return Entries(len(tubes), entry)


def linking_dict(linking: Any) -> dict[str, Any]:
  """The record's `settings.linking`: the fields of a LinkingConfig (or any object)."""
  if dataclasses.is_dataclass(linking):
    return dataclasses.asdict(linking)
  return dict(vars(linking))


def write(record: Mapping[str, Any], out: TextIO) -> None:
  """Writes compact JSON: the header keys, then one line per tube and per frame.

  Entry by entry, so a record of `Entries` is never held whole. The first lines are
  `{`, `"format"` and `"video"` (`recorded_video` reads them).
  """
  out.write('{\n')
  for key, value in record.items():
    if key not in ('frames', 'tubes'):
      out.write(f'  {json.dumps(key)}: {json.dumps(value)},\n')
  _write_list(out, 'tubes', record['tubes'], ',')
  _write_list(out, 'frames', record['frames'], '')
  out.write('}\n')


def _write_list(out: TextIO, key: str, entries: Sequence[Any], end: str) -> None:
  if not len(entries):
    out.write(f'  {json.dumps(key)}: []{end}\n')
    return
  out.write(f'  {json.dumps(key)}: [\n')
  last = len(entries) - 1
  for i, entry in enumerate(entries):
    _write_json(out, entry, '    ', ',\n' if i < last else '\n')
  out.write(f'  ]{end}\n')


def _write_json(out: TextIO, value: Any, prefix: str = '', suffix: str = '') -> None:
  """Writes `prefix`, `json.dumps(value)`'s text and `suffix`: in one piece, unless the
  value is or holds `Entries` (a tube's frames and boxes), written CHUNK values at a time."""
  if isinstance(value, Entries):
    out.write(prefix + '[')
    for start in range(0, len(value), CHUNK):
      chunk = ', '.join(json.dumps(item) for item in value[start : start + CHUNK])
      out.write(', ' + chunk if start else chunk)
    out.write(']' + suffix)
  elif isinstance(value, dict) and any(isinstance(v, Entries) for v in value.values()):
    out.write(prefix + '{')
    for i, (key, item) in enumerate(value.items()):
      _write_json(out, item, f'{", " if i else ""}{json.dumps(key)}: ')
    out.write('}' + suffix)
  else:
    out.write(prefix + json.dumps(value) + suffix)


def dumps(record: Mapping[str, Any]) -> str:
  """`write`'s text as one string (for small records)."""
  text = io.StringIO()
  write(record, text)
  return text.getvalue()


def recorded_video(path: str | os.PathLike) -> str | None:
  """The `video` of a prediction record file, from its first lines; None if it is none."""
  try:
    with open(path, encoding='utf-8') as f:
      lines = [f.readline(1 << 16) for _ in range(3)]
  except (OSError, UnicodeDecodeError):
    return None
  if lines[0].strip() != '{':
    return None
  fields = {}
  for line in lines[1:]:
    try:
      fields.update(json.loads('{' + line.strip().rstrip(',') + '}'))
    except ValueError:
      return None
  video = fields.get('video')
  return video if fields.get('format') == FORMAT and isinstance(video, str) else None


def settings(
  predictor: frame_predictor.FramePredictor, linking: Any, every: int, top_k: int, max_tubes: int
) -> dict[str, Any]:
  """The record's `settings`: clips, batching, the JSON options and the linking."""
  p = predictor
  return {
    'clip_frames': p.num_frames,
    'clip_frame_stride': p.frame_stride,
    'frame_size': p.frame_size,
    'image_size': p.image_size,
    'frame_stride': every,
    'batch_size': p.batch_size,
    'devices': p.num_devices,
    'frame_top_k': top_k,
    'max_tubes': max_tubes,
    'linking': linking_dict(linking),
    'placement': clip_geometry.TUBELET_PLACEMENT if p.tubelet_frames else clip_geometry.PLACEMENT,
    'interpolation': (
      'linear between predicted frames' if every > 1 and not p.tubelet_frames else 'none'
    ),
    'tubelet_frames': p.tubelet_frames,
  }


def make_record(
  video: str,
  results: frame_predictor.FrameResults,
  size: tuple[int, int],
  fps: float,
  class_names: Sequence[str],
  found: Sequence[Any],
  kept: Sequence[Any],
  model_info: Mapping[str, Any],
  settings: Mapping[str, Any],
  top_k: int,
  box_class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
  """The record of one video (without `timing`): frames, the `kept` tubes of the `found`
  ones, the video's top 5 classes, the model and the settings. `box_class_names`: the
  classes of a tubelet detector's boxes and tubes (default: `class_names`)."""
  box_names = list(class_names if box_class_names is None else box_class_names)
  return {
    'format': FORMAT,
    'video': video,
    'num_frames': results.num_frames,
    'fps': round(fps, 4),
    'size': list(size),
    'classes': list(class_names),
    'box_classes': box_names,
    'frames': frame_entries(results, size, class_names, top_k, kept, box_names),
    'tubes': tube_entries(kept, box_names),
    'tubes_found': len(found),
    'top5': top_classes(results.probs.mean(0), class_names, 5),
    'model': dict(model_info),
    'settings': dict(settings),
  }
