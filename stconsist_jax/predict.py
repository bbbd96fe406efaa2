"""Action tubes on any video: per-frame boxes and class scores from sliding clips, linked.

Videos are read from local files (OpenCV decodes local files only); the workdir, the
converted weights, the class names file and the output folder may also be bucket URLs
(gs://...). Every output file is written whole: the annotated video is encoded into a
local temporary file and then copied to its place.

Usage, settings and the JSON schema of the output: docs/predict.md.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import cv2
from etils import epath
import jax
import ml_collections
import numpy as np
import tqdm

from stconsist_jax import config_lib
from stconsist_jax import distributed
from stconsist_jax import evaluate
from stconsist_jax import fileio
from stconsist_jax import logging_utils
from stconsist_jax import metrics
from stconsist_jax import tubes as tubes_lib
from stconsist_jax.data import video_decode

FORMAT = 'stconsist_jax.prediction/1'
VIDEO_EXTENSIONS = ('.avi', '.mp4', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg',
                    '.wmv', '.flv', '.3gp', '.ogv', '.ts', '.mts', '.m2ts')
DEFAULT_FPS = 25.0  # Written when a file does not state a usable frame rate.
FOURCC = 'mp4v'
DEFAULT_BATCH_SIZE = 8
# Clip settings used with --init_from alone (no workdir): those of configs/default.py.
DEFAULT_DATA = dict(num_frames=16, frame_stride=1, frame_size=128, image_size=128)
PLACEMENT = ('the clip of frame f holds frames f + (p - T//2) * s, p = 0..T-1, clamped '
             'to the video')
NUM_DIGITS = 5  # Decimals of scores in the JSON; boxes get 2 (pixels).
MAX_TUBES = 10  # Tubes kept per video (JSON and drawing), best first; 0: all.
DRAWN_TUBES = 3  # Tubes drawn on one frame at most (the best ones through it).
REMOTE_VIDEO = ('a bucket URL: OpenCV reads local files only; copy the video to a local '
                'disk first')


class VideoError(Exception):
  """A video that cannot be predicted (missing, empty, unreadable); one-line message."""


# ----------------------------------------------------------------------------------
# Frames and clips.


def prepare_frame(frame: np.ndarray, frame_size: int, image_size: int,
                  bgr: bool = False) -> np.ndarray:
  """A frame as the model saw it in training: squashed to frame_size, then image_size.

  The dataset build squashes each frame to `frame_size x frame_size` (area averaging
  when shrinking); the pipeline then resizes bilinearly to `image_size` when it differs.
  Returns uint8 RGB `(image_size, image_size, 3)`.
  """
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f'expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}')
  small = video_decode.resize_frame(frame, frame_size)
  if image_size != frame_size:
    small = cv2.resize(small, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
  return cv2.cvtColor(small, cv2.COLOR_BGR2RGB) if bgr else small


def clip_offsets(num_frames: int, frame_stride: int = 1) -> np.ndarray:
  """Offsets `(T,)` of a clip's frames from its centre frame (position T // 2)."""
  if num_frames < 1 or frame_stride < 1:
    raise ValueError(f'clip length and frame stride must be >= 1, got {num_frames} and '
                     f'{frame_stride}')
  return (np.arange(num_frames, dtype=np.int64) - num_frames // 2) * frame_stride


def clip_indices(centre: int, num_frames: int, frame_stride: int,
                 video_frames: int) -> np.ndarray:
  """Frames `(T,)` of the clip centred on `centre`, clamped to the video (as evaluation)."""
  return np.clip(centre + clip_offsets(num_frames, frame_stride), 0, video_frames - 1)


def centre_frames(video_frames: int, every: int = 1) -> np.ndarray:
  """The frames that get their own clip: 0, every, 2 * every, ... and the last frame."""
  if video_frames < 1:
    return np.zeros(0, np.int64)
  return np.unique(np.r_[np.arange(0, video_frames, every), video_frames - 1]).astype(
      np.int64)


def sliding_windows(frames: Iterable[np.ndarray], num_frames: int, frame_stride: int = 1,
                    every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
  """`(centre, clip)` for the centres of `centre_frames`, streaming over `frames`.

  Frames are copied into a ring buffer of `(T - 1) * frame_stride + 1` frames, all
  the frames one clip spans; a clip is yielded as soon as its last frame has been read,
  so memory stays bounded whatever the video's length. Clip frames are clamped to the
  video at both ends (the frame eval stream's placement). Each clip is a new array
  `(T, H, W, C)`.
  """
  if every < 1:
    raise ValueError(f'the frame stride between predicted frames must be >= 1, got {every}')
  offsets = clip_offsets(num_frames, frame_stride)
  lookahead = int(offsets[-1])
  span = int(offsets[-1] - offsets[0]) + 1
  ring = None
  count = 0
  centre = 0

  def clip_of(c: int, last: int) -> np.ndarray:
    return ring[np.clip(c + offsets, 0, last) % span]

  for frame in frames:
    frame = np.asarray(frame)
    if ring is None:
      ring = np.empty((span,) + frame.shape, frame.dtype)
    elif frame.shape != ring.shape[1:]:
      raise ValueError(f'frame {count} has shape {frame.shape}, the first had '
                       f'{ring.shape[1:]}')
    ring[count % span] = frame
    count += 1
    while centre + lookahead <= count - 1:
      yield centre, clip_of(centre, count - 1)
      centre += every
  if count == 0:
    return
  last = count - 1
  while centre <= last:
    yield centre, clip_of(centre, last)
    centre += every
  if last % every:
    yield last, clip_of(last, last)


def _batches(windows: Iterator[tuple[int, np.ndarray]], size: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`(centres (b,), clips (b, T, H, W, C))` with b <= size (only the last is short)."""
  centres, clips = [], []
  for centre, clip in windows:
    centres.append(centre)
    clips.append(clip)
    if len(clips) == size:
      yield np.asarray(centres, np.int64), np.stack(clips)
      centres, clips = [], []
  if clips:
    yield np.asarray(centres, np.int64), np.stack(clips)


# ----------------------------------------------------------------------------------
# The model on clips.


@dataclasses.dataclass
class Detections:
  """The model's outputs on the clips of one video."""
  frames: np.ndarray  # int64 (M,): centre frame of each clip, increasing
  logits: np.ndarray  # float32 (M, K)
  boxes: np.ndarray | None  # float32 (M, 4) (x_left, y_top, w, h) normalized; None:
  #   a classifier without a box head
  num_frames: int  # frames read from the video

  @property
  def probs(self) -> np.ndarray:
    return metrics.softmax(self.logits.astype(np.float64))


class FramePredictor:
  """Per-frame detections of a model on a frame stream: sliding clips, jitted batches.

  Batches of `batch_size` clips (rounded up to a multiple of the mesh's devices; the
  last batch padded) are sharded over the mesh's 'data' axis with the variables
  replicated (the evaluation's `make_predict_fn`). The next batch is decoded while the
  devices run the previous one. `with_boxes` defaults to whether the model has a box
  head; the mesh to all local devices.
  """

  def __init__(self, model: Any, variables: Mapping[str, Any], *, num_frames: int,
               frame_size: int, image_size: int, frame_stride: int = 1,
               batch_size: int = DEFAULT_BATCH_SIZE, with_boxes: bool | None = None,
               mesh: Any = None):
    for name, value in (('num_frames', num_frames), ('frame_size', frame_size),
                        ('image_size', image_size), ('frame_stride', frame_stride),
                        ('batch_size', batch_size)):
      if int(value) < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')
    self.mesh = distributed.make_mesh(jax.local_devices()) if mesh is None else mesh
    devices = int(self.mesh.devices.size)
    self.num_frames = int(num_frames)
    self.frame_stride = int(frame_stride)
    self.frame_size = int(frame_size)
    self.image_size = int(image_size)
    self.batch_size = -(-int(batch_size) // devices) * devices
    if with_boxes is None:  # A Detector with a box head; not a VideoClassifier.
      with_boxes = str(getattr(model, 'box_head', 'none')) != 'none'
    self.with_boxes = bool(with_boxes)
    self.variables = distributed.replicate(
        {k: variables[k] for k in ('params', 'batch_stats') if k in variables}, self.mesh)
    self._predict = evaluate.make_predict_fn(model, self.mesh)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model: Any,
                  variables: Mapping[str, Any], **kwargs: Any) -> 'FramePredictor':
    """Clip settings from `config.data` (num_frames, frame_stride, frame_size, image_size)."""
    d = config.data
    return cls(model, variables, num_frames=int(d.num_frames),
               frame_stride=int(d.get('frame_stride', 1)), frame_size=int(d.frame_size),
               image_size=int(d.image_size), **kwargs)

  @property
  def num_devices(self) -> int:
    return int(self.mesh.devices.size)

  def prepare(self, frame: np.ndarray, bgr: bool = False) -> np.ndarray:
    return prepare_frame(frame, self.frame_size, self.image_size, bgr)

  def warm_up(self) -> float:
    """Compiles the batch function on a zero batch; returns the seconds it took."""
    start = time.perf_counter()
    clip = np.zeros((1, self.num_frames, self.image_size, self.image_size, 3), np.uint8)
    jax.block_until_ready(self._run(clip))
    return time.perf_counter() - start

  def _run(self, clips: np.ndarray) -> Any:
    padded = np.zeros((self.batch_size,) + clips.shape[1:], np.uint8)
    padded[:len(clips)] = clips
    sharded = distributed.shard_batch({'clip': padded}, self.mesh)['clip']
    return self._predict(self.variables, sharded)

  def _fetch(self, centres: np.ndarray, out: Any) -> dict[str, np.ndarray]:
    host = jax.tree.map(np.asarray, jax.device_get(out))
    got = {'frames': centres, 'logits': host['logits'][:len(centres)].astype(np.float32)}
    if self.with_boxes and 'boxes' in host:
      got['boxes'] = host['boxes'][:len(centres)].astype(np.float32)
    return got

  def detect(self, frames: Iterable[np.ndarray], *, every: int = 1, bgr: bool = False,
             on_frame: Callable[[np.ndarray], None] | None = None) -> Detections:
    """Runs the model on a clip centred on every `every`-th frame (and the last one).

    Args:
      frames: the video's frames in order, uint8 `(H, W, 3)` of any size (RGB, or BGR
        with `bgr`, as OpenCV decodes them); consumed once, never held in full.
      every: predict every `every`-th frame (1: all frames).
      bgr: the frames are BGR.
      on_frame: called with each original frame as it is read (progress, size).

    Returns:
      Detections at the centre frames; `num_frames` counts the frames read.
    """
    count = [0]

    def prepared():
      for frame in frames:
        if on_frame is not None:
          on_frame(frame)
        count[0] += 1
        yield self.prepare(frame, bgr)

    windows = sliding_windows(prepared(), self.num_frames, self.frame_stride, every)
    chunks, pending = [], None
    for centres, clips in _batches(windows, self.batch_size):
      out = self._run(clips)  # dispatched asynchronously
      if pending is not None:
        chunks.append(self._fetch(*pending))
      pending = (centres, out)
    if pending is not None:
      chunks.append(self._fetch(*pending))
    if not chunks:
      return Detections(np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
                        None, count[0])
    boxes = (np.concatenate([c['boxes'] for c in chunks])
             if all('boxes' in c for c in chunks) else None)
    return Detections(np.concatenate([c['frames'] for c in chunks]),
                      np.concatenate([c['logits'] for c in chunks]), boxes, count[0])


def detect_frames(config: ml_collections.ConfigDict, model: Any,
                  variables: Mapping[str, Any], frames: Iterable[np.ndarray], *,
                  every: int = 1, bgr: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                  mesh: Any = None) -> 'FrameResults':
  """Dense per-frame boxes and class probabilities of `model` on a frame iterator.

  The one-call form of `FramePredictor(...).detect` + `densify`: clip settings from
  `config.data`; frames uint8 `(H, W, 3)` RGB (BGR with `bgr`) of any size. Builds a new
  jitted function per call: for many videos keep one FramePredictor.
  """
  predictor = FramePredictor.from_config(config, model, variables, batch_size=batch_size,
                                         mesh=mesh)
  return densify(predictor.detect(frames, every=every, bgr=bgr))


# ----------------------------------------------------------------------------------
# Dense frames and tubes.


@dataclasses.dataclass
class FrameResults:
  """One box and one class distribution per frame of a video."""
  boxes: np.ndarray | None  # float64 (F, 4) corners x1, y1, x2, y2 normalized; None:
  #   classification only
  probs: np.ndarray  # float64 (F, K) softmax probabilities
  predicted: np.ndarray  # bool (F,): the frame had its own clip (else interpolated)

  @property
  def num_frames(self) -> int:
    return len(self.probs)


def _fill(frames: np.ndarray, boxes: np.ndarray, probs: np.ndarray, num_frames: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """`tubes.fill_frames` on one box per frame: dense `(F, 4)` boxes, `(F, K)` probs."""
  out = tubes_lib.fill_frames(frames, boxes[:, None], probs[:, None], num_frames)
  dense_boxes, dense_probs = [np.asarray(a, np.float64) for a in out if np.ndim(a) == 3]
  return dense_boxes[:, 0], dense_probs[:, 0]


def densify(detections: Detections) -> FrameResults:
  """Every frame's box and probabilities, linear between the predicted frames."""
  n = detections.num_frames
  predicted = np.zeros(n, bool)
  predicted[detections.frames] = True
  if not len(detections.frames):
    k = detections.logits.shape[1]
    return FrameResults(None if detections.boxes is None else np.zeros((n, 4)),
                        np.zeros((n, k)), predicted)
  if detections.boxes is None:
    full = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (len(detections.frames), 1))
    _, probs = _fill(detections.frames, full, detections.probs, n)
    return FrameResults(None, probs, predicted)
  corners = metrics.xywh_to_corners(detections.boxes.astype(np.float64))
  boxes, probs = _fill(detections.frames, corners, detections.probs, n)
  return FrameResults(boxes, probs, predicted)


def linking_dict(linking: Any) -> dict[str, Any]:
  if dataclasses.is_dataclass(linking):
    return dataclasses.asdict(linking)
  return dict(vars(linking))


def link_tubes(results: FrameResults, linking: Any,
               size: tuple[int, int] = (1, 1)) -> list[Any]:
  """Action tubes of one video (`tubes.link_video`), boxes in pixels of `size` (h, w).

  Sorted by score, best first; empty for a classifier without boxes. Only classes whose
  probability reaches `linking.min_score` on some frame are linked: a tube's score is
  a mean of its frames' probabilities, so the others cannot give a tube.
  """
  if results.boxes is None or not results.num_frames:
    return []
  h, w = size
  boxes = results.boxes * np.array([w, h, w, h], np.float64)
  frames = np.arange(results.num_frames, dtype=np.int64)
  classes = np.nonzero(results.probs.max(0) >= float(linking.min_score))[0]
  if not len(classes):
    return []
  found = tubes_lib.link_video(frames, boxes[:, None], results.probs[:, None, classes],
                               linking)
  return [tubes_lib.Tube(int(classes[t.label]), t.frames, t.boxes, t.scores)
          for t in found]


# ----------------------------------------------------------------------------------
# Videos.


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
  if p.stat().st_size == 0:
    raise VideoError('empty file (0 bytes)')
  cap = cv2.VideoCapture(str(p))
  if not cap.isOpened():
    cap.release()
    raise VideoError('OpenCV cannot open it (not a video, damaged, or an unsupported '
                     'codec)')
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
  stated = math.isfinite(fps) and 0.0 < fps <= 1000.0
  reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
  reported = int(reported) if math.isfinite(reported) and reported > 0 else 0
  info = VideoInfo(str(path), fps if stated else DEFAULT_FPS, stated, reported,
                   int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                   int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))
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


def list_videos(path: str | os.PathLike, exclude: str | os.PathLike | None = None
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
    if (f.name.startswith('.') or not f.is_file()
        or f.suffix.lower() not in VIDEO_EXTENSIONS):
      continue
    if skip is not None and f.resolve().parent == skip:
      continue
    found.append(f)
  return found


def output_names(paths: Sequence[pathlib.Path]) -> list[str]:
  """One output name per video: its stem, or stem_ext where two stems collide."""
  stems = [p.stem for p in paths]
  names = [s if stems.count(s) == 1 else f'{s}_{p.suffix.lstrip(".").lower()}'
           for s, p in zip(stems, paths)]
  seen: dict[str, int] = {}
  unique = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    unique.append(name if seen[name] == 1 else f'{name}_{seen[name]}')
  return unique


# ----------------------------------------------------------------------------------
# The JSON record and its schema.

_NUMBER = {'type': 'number'}
_INT = {'type': 'integer', 'minimum': 0}
_BOX = {'type': 'array', 'items': _NUMBER, 'minItems': 4, 'maxItems': 4}
_CLASS_SCORE = {'type': 'object', 'required': ['label', 'class', 'score'],
                'additionalProperties': False,
                'properties': {'label': _INT, 'class': {'type': 'string'},
                               'score': _NUMBER}}

PREDICTION_SCHEMA: dict[str, Any] = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'title': 'stconsist_jax prediction of one video',
    'type': 'object',
    'required': ['format', 'video', 'num_frames', 'fps', 'size', 'classes', 'frames',
                 'tubes', 'tubes_found', 'top5', 'model', 'settings'],
    'additionalProperties': False,
    'properties': {
        'format': {'type': 'string', 'enum': [FORMAT]},
        'video': {'type': 'string'},
        'num_frames': {'type': 'integer', 'minimum': 1},
        'fps': {'type': 'number', 'minimum': 0},
        'size': {'type': 'array', 'items': {'type': 'integer', 'minimum': 1},
                 'minItems': 2, 'maxItems': 2},
        'classes': {'type': 'array', 'items': {'type': 'string'}, 'minItems': 1},
        'frames': {'type': 'array', 'items': {
            'type': 'object', 'required': ['frame', 'box', 'scores', 'predicted'],
            'additionalProperties': False,
            'properties': {
                'frame': _INT,
                'box': {'anyOf': [_BOX, {'type': 'null'}]},
                'scores': {'anyOf': [{'type': 'array', 'items': _NUMBER},
                                     {'type': 'array', 'items': _CLASS_SCORE}]},
                'predicted': {'type': 'boolean'},
            }}},
        'tubes': {'type': 'array', 'items': {
            'type': 'object',
            'required': ['id', 'label', 'class', 'start', 'end', 'score', 'frames',
                         'boxes'],
            'additionalProperties': False,
            'properties': {
                'id': _INT, 'label': _INT, 'class': {'type': 'string'},
                'start': _INT, 'end': _INT, 'score': _NUMBER,
                'frames': {'type': 'array', 'items': _INT, 'minItems': 1},
                'boxes': {'type': 'array', 'items': _BOX, 'minItems': 1},
            }}},
        'tubes_found': _INT,
        'top5': {'type': 'array', 'items': _CLASS_SCORE, 'minItems': 1, 'maxItems': 5},
        'model': {'type': 'object',
                  'required': ['source', 'path', 'step', 'architecture',
                               'classification_only', 'num_classes'],
                  'properties': {
                      'source': {'type': 'string', 'enum': ['workdir', 'init_from']},
                      'path': {'type': 'string'},
                      'step': {'anyOf': [_INT, {'type': 'string'}]},
                      'architecture': {'type': 'string'},
                      'classification_only': {'type': 'boolean'},
                      'num_classes': {'type': 'integer', 'minimum': 1},
                      'config_hash': {'type': ['string', 'null']},
                  }},
        'settings': {'type': 'object',
                     'required': ['clip_frames', 'clip_frame_stride', 'frame_size',
                                  'image_size', 'frame_stride', 'batch_size', 'devices',
                                  'frame_top_k', 'max_tubes', 'linking', 'placement'],
                     'properties': {
                         'clip_frames': {'type': 'integer', 'minimum': 1},
                         'clip_frame_stride': {'type': 'integer', 'minimum': 1},
                         'frame_size': {'type': 'integer', 'minimum': 1},
                         'image_size': {'type': 'integer', 'minimum': 1},
                         'frame_stride': {'type': 'integer', 'minimum': 1},
                         'batch_size': {'type': 'integer', 'minimum': 1},
                         'devices': {'type': 'integer', 'minimum': 1},
                         'frame_top_k': _INT,
                         'max_tubes': _INT,
                         'linking': {'type': 'object'},
                         'placement': {'type': 'string'},
                     }},
        'timing': {'type': 'object', 'properties': {
            'predict_s': _NUMBER, 'write_s': _NUMBER, 'frames_per_s': _NUMBER}},
    },
}

_TYPES = {'object': dict, 'array': list, 'string': str, 'boolean': bool,
          'null': type(None)}


def _type_ok(value: Any, name: str) -> bool:
  if name == 'integer':
    return isinstance(value, int) and not isinstance(value, bool)
  if name == 'number':
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: Mapping[str, Any], where: str = '$') -> list[str]:
  """Violations of the JSON-schema subset PREDICTION_SCHEMA uses (empty when valid)."""
  if 'anyOf' in schema:
    options = [schema_errors(value, s, where) for s in schema['anyOf']]
    return [] if any(not o for o in options) else min(options, key=len)
  types = schema.get('type')
  if types is not None:
    types = [types] if isinstance(types, str) else types
    if not any(_type_ok(value, t) for t in types):
      return [f'{where}: expected {" or ".join(types)}, got {type(value).__name__}']
  errors = []
  if 'enum' in schema and value not in schema['enum']:
    errors.append(f'{where}: {value!r} not one of {schema["enum"]}')
  if 'minimum' in schema and _type_ok(value, 'number') and value < schema['minimum']:
    errors.append(f'{where}: {value} < {schema["minimum"]}')
  if isinstance(value, dict):
    for key in schema.get('required', ()):
      if key not in value:
        errors.append(f'{where}: missing {key!r}')
    props = schema.get('properties', {})
    for key, item in value.items():
      if key in props:
        errors += schema_errors(item, props[key], f'{where}.{key}')
      elif schema.get('additionalProperties', True) is False:
        errors.append(f'{where}: unexpected key {key!r}')
  if isinstance(value, list):
    if len(value) < schema.get('minItems', 0):
      errors.append(f'{where}: {len(value)} items, fewer than {schema["minItems"]}')
    if len(value) > schema.get('maxItems', math.inf):
      errors.append(f'{where}: {len(value)} items, more than {schema["maxItems"]}')
    if 'items' in schema:
      for i, item in enumerate(value):
        errors += schema_errors(item, schema['items'], f'{where}[{i}]')
        if len(errors) > 20:
          break
  return errors


def _consistency_errors(record: Mapping[str, Any]) -> list[str]:
  """What the schema cannot say: counts, frame order, indices and lengths agree."""
  errors = []
  n, classes = record['num_frames'], record['classes']
  k = len(classes)
  if len(record['frames']) != n:
    errors.append(f'$.frames: {len(record["frames"])} entries for num_frames={n}')
  for i, frame in enumerate(record['frames']):
    if frame['frame'] != i:
      errors.append(f'$.frames[{i}].frame is {frame["frame"]}')
      break
    scores = frame['scores']
    if scores and isinstance(scores[0], dict):
      bad = [s for s in scores if s['label'] >= k or s['class'] != classes[s['label']]]
    else:
      bad = [] if len(scores) == k else [f'{len(scores)} scores for {k} classes']
    if bad:
      errors.append(f'$.frames[{i}].scores: {bad[0]}')
      break
  for i, tube in enumerate(record['tubes']):
    where = f'$.tubes[{i}]'
    if not 0 <= tube['start'] <= tube['end'] < n:
      errors.append(f'{where}: start {tube["start"]} / end {tube["end"]} outside the video')
    if len(tube['frames']) != len(tube['boxes']):
      errors.append(f'{where}: {len(tube["frames"])} frames but {len(tube["boxes"])} boxes')
    elif tube['frames'][0] != tube['start'] or tube['frames'][-1] != tube['end']:
      errors.append(f'{where}: frames do not run from start to end')
    if tube['label'] >= k or tube['class'] != classes[tube['label']]:
      errors.append(f'{where}: label {tube["label"]} / class {tube["class"]!r} mismatch')
  if [t['id'] for t in record['tubes']] != list(range(len(record['tubes']))):
    errors.append('$.tubes: ids are not 0, 1, 2, ...')
  for entry in record['top5']:
    if entry['label'] >= k or entry['class'] != classes[entry['label']]:
      errors.append(f'$.top5: label {entry["label"]} / class {entry["class"]!r} mismatch')
  if record['model']['num_classes'] != k:
    errors.append(f'$.model.num_classes={record["model"]["num_classes"]} but {k} classes')
  return errors


def validate_prediction(record: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first problems unless `record` follows the schema."""
  errors = schema_errors(record, PREDICTION_SCHEMA)
  if not errors:
    errors = _consistency_errors(record)
  if errors:
    raise ValueError('invalid prediction record: ' + '; '.join(errors[:5]))


def _round(values: np.ndarray, digits: int) -> list[float]:
  return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]


def _top(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[dict[str, Any]]:
  order = np.argsort(-probs, kind='stable')[:k]
  return [{'label': int(c), 'class': class_names[c],
           'score': round(float(probs[c]), NUM_DIGITS)} for c in order]


def frame_entries(results: FrameResults, size: tuple[int, int],
                  class_names: Sequence[str], top_k: int = 0) -> list[dict[str, Any]]:
  """The JSON `frames` list: pixel corner box, all scores or the top-k classes."""
  h, w = size
  scale = np.array([w, h, w, h], np.float64)
  entries = []
  for f in range(results.num_frames):
    box = None
    if results.boxes is not None:
      box = _round(results.boxes[f] * scale, 2)
    scores = (_top(results.probs[f], class_names, top_k) if top_k > 0
              else _round(results.probs[f], NUM_DIGITS))
    entries.append({'frame': f, 'box': box, 'scores': scores,
                    'predicted': bool(results.predicted[f])})
  return entries


def tube_entries(tubes: Sequence[Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
  """The JSON `tubes` list (ids in the order given: by score, best first)."""
  return [{'id': i, 'label': int(t.label), 'class': class_names[int(t.label)],
           'start': int(t.start), 'end': int(t.end),
           'score': round(float(t.score), NUM_DIGITS),
           'frames': [int(f) for f in t.frames],
           'boxes': [_round(b, 2) for b in np.asarray(t.boxes)]} for i, t in enumerate(tubes)]


# ----------------------------------------------------------------------------------
# Drawing.

_PALETTE = ((255, 99, 71), (60, 179, 113), (30, 144, 255), (255, 215, 0), (238, 130, 238),
            (0, 206, 209), (255, 140, 0), (154, 205, 50), (219, 112, 147), (123, 104, 238))


def tube_color(tube_id: int) -> tuple[int, int, int]:
  """BGR colour of a tube id (a fixed palette, cycled)."""
  r, g, b = _PALETTE[tube_id % len(_PALETTE)]
  return (b, g, r)


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int],
           scale: float, thickness: int) -> int:
  """Writes `text` on a filled box whose bottom-left is (x, y); returns the box height."""
  font = cv2.FONT_HERSHEY_SIMPLEX
  (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
  h, w = image.shape[:2]
  x = int(np.clip(x, 0, max(w - tw - 2, 0)))
  y = int(np.clip(y, th + base + 2, h - 1))
  cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 2, y), color, -1)
  cv2.putText(image, text, (x + 1, y - base), font, scale, (0, 0, 0), thickness,
              cv2.LINE_AA)
  return th + base + 2


def draw_frame(frame_bgr: np.ndarray, box: np.ndarray | None, probs: np.ndarray,
               frame_tubes: Sequence[tuple[int, str, float, np.ndarray]],
               class_names: Sequence[str]) -> np.ndarray:
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
  _label(image, f'{class_names[top]} {probs[top]:.2f}', 0, 0, (255, 255, 255), scale,
         thick)
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
    offset += _label(image, f'#{tube_id} {name} {score:.2f}', x1, y1 + offset,
                     tube_color(tube_id), scale, thick)
  return image


def write_video(video: str | os.PathLike, out_path: str | os.PathLike,
                results: FrameResults, tube_list: Sequence[Any], class_names: Sequence[str],
                fps: float, on_frame: Callable[[], None] | None = None) -> int:
  """Decodes `video` again and writes it with the predictions drawn, whole.

  OpenCV encodes into a local temporary file, which is then written to `out_path`
  (local or a bucket URL) in one piece. Returns the frames written; the original
  resolution and frame rate are kept.
  """
  out_path = fileio.as_path(out_path)
  by_frame: dict[int, list[tuple[int, str, float, np.ndarray]]] = {}
  for tube_id, tube in enumerate(tube_list):
    for f, b in zip(np.asarray(tube.frames), np.asarray(tube.boxes)):
      by_frame.setdefault(int(f), []).append(
          (tube_id, class_names[int(tube.label)], float(tube.score), b))
  cap, _ = open_video(video)
  frames = read_frames(cap)
  scratch = tempfile.TemporaryDirectory(prefix='stconsist_predict_')
  tmp = os.path.join(scratch.name, f'video{out_path.suffix}')
  writer = None
  written = 0
  try:
    for f, frame in enumerate(frames):
      if f >= results.num_frames:
        break
      if writer is None:
        h, w = frame.shape[:2]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*FOURCC), float(fps),
                                 (w, h))
        if not writer.isOpened():
          raise VideoError(f'OpenCV cannot write {FOURCC} video {out_path}')
      box = None
      if results.boxes is not None:
        box = results.boxes[f] * np.array([w, h, w, h], np.float64)
      writer.write(draw_frame(frame, box, results.probs[f], by_frame.get(f, ()),
                              class_names))
      written += 1
      if on_frame is not None:
        on_frame()
    if writer is None:
      raise VideoError('no frames decoded on the second pass')
    writer.release()
    writer = None
    fileio.atomic_write(out_path, pathlib.Path(tmp).read_bytes())
  finally:
    frames.close()
    if writer is not None:
      writer.release()
    scratch.cleanup()
  if written != results.num_frames:
    logging.warning('%s: %d frames decoded on the second pass, %d on the first; the '
                    'annotated video has %d', video, written, results.num_frames, written)
  return written


# ----------------------------------------------------------------------------------
# Models, class names and settings.


@dataclasses.dataclass
class Loaded:
  """A restored model ready to predict, with what the output records say about it."""
  predictor: FramePredictor
  config: ml_collections.ConfigDict
  class_names: list[str]
  linking: Any  # tubes.LinkingConfig
  model_info: dict[str, Any]

  @property
  def classification_only(self) -> bool:
    return not self.predictor.with_boxes


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]
                    ) -> ml_collections.ConfigDict:
  """Sets `a.b.c=value` entries (Python literals, else strings); missing groups are made."""
  for item in overrides:
    key, eq, text = item.partition('=')
    parts = key.strip().split('.')
    if not eq or not all(parts):
      raise ValueError(f'--override {item!r}: expected key.path=value')
    node = config
    for part in parts[:-1]:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f'--override {item!r}: {part!r} is not a config group')
    try:
      node[parts[-1]] = _parse_value(text)
    except (TypeError, ValueError) as e:
      raise ValueError(f'--override {item!r}: {e}') from None
  return config


def _data_settings(config: ml_collections.ConfigDict) -> None:
  for key in ('num_frames', 'frame_stride', 'frame_size', 'image_size'):
    value = config.data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'config key data.{key} must be a positive int, got {value!r}')


def generic_class_names(num_classes: int) -> list[str]:
  return [f'class_{i}' for i in range(num_classes)]


def class_names_for(config: ml_collections.ConfigDict | None, num_classes: int,
                    names_file: str | os.PathLike | None = None) -> list[str]:
  """Class names: a file (one per line), the config's dataset, else `class_<i>`.

  The dataset's names are read only when it is reachable (its TFDS build exists) and
  has `num_classes` labels; anything else falls back to generic names with a warning.
  """
  if names_file:
    names = [line.strip() for line in fileio.as_path(names_file).read_text().splitlines()
             if line.strip()]
    if len(names) != num_classes:
      raise ValueError(f'--class_names {names_file}: {len(names)} names for a model of '
                       f'{num_classes} classes')
    return names
  data = config.get('data', None) if config is not None else None
  if data is None or data.get('name', 'random') in ('random', ''):
    return generic_class_names(num_classes)
  try:
    from stconsist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    names = pipeline.label_names(data)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Class names: dataset %r not readable (%s); using class_<i>',
                    data.get('name'), ' '.join(str(e).split())[:200])
    return generic_class_names(num_classes)
  if len(names) != num_classes:
    logging.warning('Class names: the dataset has %d, the model %d classes; using '
                    'class_<i>', len(names), num_classes)
    return generic_class_names(num_classes)
  return [str(n) for n in names]


def load(workdir: str | os.PathLike | None = None, step: int | str = 'latest', *,
         init_from: str | os.PathLike | None = None, overrides: Sequence[str] = (),
         batch_size: int | None = None, names_file: str | os.PathLike | None = None,
         mesh: Any = None) -> Loaded:
  """Restores a trained detector of a workdir, or a converted classifier (`init_from`).

  With `init_from`, the classifier of that converted checkpoint predicts class scores
  only (no boxes, no tubes); clip settings come from the workdir's config if one is
  given, else DEFAULT_DATA. `overrides` ('key.path=value') change the config first.
  """
  if workdir is None and not init_from:
    raise ValueError('give --workdir (a training workdir) or --init_from (a directory '
                     'written by tools/convert_torch_weights.py)')
  config = config_lib.load(workdir) if workdir is not None else ml_collections.ConfigDict(
      {'data': dict(DEFAULT_DATA), 'model': {}, 'eval': {}})
  apply_overrides(config, overrides)
  _data_settings(config)
  if init_from:
    from stconsist_jax import models  # pylint: disable=g-import-not-at-top
    model, variables = models.load_pretrained(str(init_from))
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    if 'classifier' not in variables['params']:
      raise ValueError(f'converted checkpoint {init_from} has no classifier (converted '
                       'with --drop-classifier): it cannot score classes')
    num_classes = int(model.num_classes)
    arch = ml_collections.ConfigDict(dict(model.backbone_kwargs, num_classes=num_classes,
                                          box_head='none'))
    info = {'source': 'init_from', 'path': str(init_from), 'step': evaluate.INIT_FROM,
            'architecture': evaluate.describe_model(arch), 'classification_only': True,
            'num_classes': num_classes, 'config_hash': None}
    with_boxes = False
    names_config = config if workdir is not None and int(
        config.model.get('num_classes', -1)) == num_classes else None
  else:
    restored = evaluate.restore(config, workdir, step)
    model, variables = restored.model, restored.variables
    num_classes = int(config.model.num_classes)
    with_boxes = not restored.classification_only
    info = {'source': 'workdir', 'path': str(workdir), 'step': restored.step,
            'architecture': evaluate.describe_model(config.model),
            'classification_only': not with_boxes, 'num_classes': num_classes,
            'config_hash': evaluate.config_hash(config)}
    names_config = config
  if batch_size is None:
    batch_size = int((config.get('eval', None) or {}).get('batch_size', DEFAULT_BATCH_SIZE))
  predictor = FramePredictor.from_config(config, model, variables, batch_size=batch_size,
                                         with_boxes=with_boxes, mesh=mesh)
  names = class_names_for(names_config, num_classes, names_file)
  return Loaded(predictor, config, names, evaluate.linking_config(config), info)


def settings_of(loaded: Loaded, every: int, top_k: int, max_tubes: int
                ) -> dict[str, Any]:
  p = loaded.predictor
  return {'clip_frames': p.num_frames, 'clip_frame_stride': p.frame_stride,
          'frame_size': p.frame_size, 'image_size': p.image_size, 'frame_stride': every,
          'batch_size': p.batch_size, 'devices': p.num_devices, 'frame_top_k': top_k,
          'max_tubes': max_tubes,
          'linking': linking_dict(loaded.linking), 'placement': PLACEMENT,
          'interpolation': 'linear between predicted frames' if every > 1 else 'none'}


# ----------------------------------------------------------------------------------
# One video, many videos.


@dataclasses.dataclass
class VideoResult:
  """What predicting one video produced."""
  name: str
  record: dict[str, Any]
  json_path: epath.Path
  video_path: epath.Path | None
  results: FrameResults
  tubes: list[Any]


def predict_video(loaded: Loaded, video: str | os.PathLike, out_dir: str | os.PathLike, *,
                  name: str | None = None, every: int = 1, top_k: int = 5,
                  max_tubes: int = MAX_TUBES, write_annotated: bool = True,
                  progress: bool = True) -> VideoResult:
  """Predicts one video and writes OUT/<name>.json (and OUT/<name>.mp4).

  Args:
    loaded: the model (`load`).
    video: a local file OpenCV can read.
    out_dir: where the outputs go (created; local or a bucket URL).
    name: output file name without extension (default: the video's stem).
    every: predict every `every`-th frame and the last; interpolate in between.
    top_k: per frame, the k best classes in the JSON; 0: every class's score.
    max_tubes: keep the best `max_tubes` tubes (0: all) in the JSON and the drawing.
    write_annotated: also write the annotated video.
    progress: show a progress bar.

  Returns:
    The record (as written) and the arrays behind it.

  Raises:
    VideoError: (one line) the video cannot be read or holds no frame.
  """
  if every < 1:
    raise ValueError(f'--frame_stride must be >= 1, got {every}')
  if fileio.is_remote(video):
    raise VideoError(REMOTE_VIDEO)
  video = pathlib.Path(video)
  out_dir = fileio.as_path(out_dir)
  name = name or video.stem
  json_path = out_dir / f'{name}.json'
  mp4_path = out_dir / f'{name}.mp4'
  if write_annotated and _same_local_file(mp4_path, video):
    mp4_path = out_dir / f'{name}_pred.mp4'
  cap, info = open_video(video)
  shape = []
  bar = tqdm.tqdm(total=info.reported_frames or None, unit='frame', desc=name,
                  disable=not progress, leave=False, dynamic_ncols=True)

  def on_frame(frame):
    if not shape:
      shape.extend(frame.shape[:2])
    bar.update()

  start = time.perf_counter()
  try:
    detections = loaded.predictor.detect(read_frames(cap), every=every, bgr=True,
                                         on_frame=on_frame)
    if detections.num_frames == 0:
      raise VideoError('no decodable frames')
    results = densify(detections)
    size = (int(shape[0]), int(shape[1]))
    found = link_tubes(results, loaded.linking, size)
    tube_list = found[:max_tubes] if max_tubes > 0 else found
    predict_s = time.perf_counter() - start
    record = {
        'format': FORMAT, 'video': str(video), 'num_frames': results.num_frames,
        'fps': round(info.fps, 4), 'size': list(size),
        'classes': list(loaded.class_names),
        'frames': frame_entries(results, size, loaded.class_names, top_k),
        'tubes': tube_entries(tube_list, loaded.class_names),
        'tubes_found': len(found),
        'top5': _top(results.probs.mean(0), loaded.class_names, 5),
        'model': dict(loaded.model_info),
        'settings': settings_of(loaded, every, top_k, max_tubes),
    }
    write_s = 0.0
    written = None
    if write_annotated:
      bar.reset(total=results.num_frames)
      bar.set_description(f'{name} (writing)')
      t0 = time.perf_counter()
      write_video(video, mp4_path, results, tube_list, loaded.class_names, info.fps,
                  on_frame=bar.update)
      written = mp4_path
      write_s = time.perf_counter() - t0
    record['timing'] = {'predict_s': round(predict_s, 3), 'write_s': round(write_s, 3),
                        'frames_per_s': round(results.num_frames / max(predict_s, 1e-9), 2)}
    validate_prediction(record)
    fileio.atomic_write(json_path, _dumps(record))
  finally:
    bar.close()
  if info.reported_frames and info.reported_frames != results.num_frames:
    logging.info('%s: the header states %d frames, %d were decoded', video,
                 info.reported_frames, results.num_frames)
  return VideoResult(name, record, json_path, written, results, tube_list)


def _same_local_file(path: epath.Path, video: pathlib.Path) -> bool:
  """Whether an output `path` would overwrite the input `video`."""
  return not fileio.is_remote(path) and pathlib.Path(path).resolve() == video.resolve()


def _dumps(record: Mapping[str, Any]) -> str:
  """Compact JSON: the header keys, then one line per tube and per frame."""
  head = {k: v for k, v in record.items() if k not in ('frames', 'tubes')}
  lines = ['{']
  items = list(head.items())
  for key, value in items:
    lines.append(f'  {json.dumps(key)}: {json.dumps(value)},')
  for key in ('tubes', 'frames'):
    entries = record[key]
    lines.append(f'  {json.dumps(key)}: [' + ('' if entries else '],'))
    for i, entry in enumerate(entries):
      lines.append(f'    {json.dumps(entry)}' + (',' if i + 1 < len(entries) else ''))
    if entries:
      lines.append('  ],')
  lines[-1] = lines[-1].rstrip(',')
  lines.append('}')
  return '\n'.join(lines) + '\n'


def predict_all(loaded: Loaded, inputs: Sequence[pathlib.Path], out_dir: str | os.PathLike,
                *, every: int = 1, top_k: int = 5, max_tubes: int = MAX_TUBES,
                write_annotated: bool = True, progress: bool = True,
                report: Callable[[str], None] = print
                ) -> tuple[list[VideoResult], dict[str, str]]:
  """Predicts each video; one that fails is reported in one line and skipped.

  Returns the results and {video: reason} of the videos skipped.
  """
  done, failed = [], {}
  for path, name in zip(inputs, output_names(list(inputs))):
    try:
      result = predict_video(loaded, path, out_dir, name=name, every=every, top_k=top_k,
                             max_tubes=max_tubes, write_annotated=write_annotated,
                             progress=progress)
    except (VideoError, cv2.error, OSError) as e:
      reason = ' '.join(str(e).split()) or type(e).__name__
      failed[str(path)] = reason
      report(f'skipped {path}: {reason}')
      continue
    timing = result.record['timing']
    top = result.record['top5'][0]
    report(f'{path}: {result.record["num_frames"]} frames in {timing["predict_s"]:.2f} s '
           f'({timing["frames_per_s"]:.1f} frames/s; writing {timing["write_s"]:.2f} s), '
           f'{len(result.tubes)} tubes, top class {top["class"]} {top["score"]:.3f} '
           f'-> {result.json_path}')
    done.append(result)
  return done, failed


# ----------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints); '
                      'a path or a bucket URL.')
  flags.DEFINE_string('video', None, 'A local video file, or a folder of videos.')
  flags.DEFINE_string('output', None, 'Folder for <name>.json and <name>.mp4; a path or '
                      'a bucket URL.')
  flags.DEFINE_string('step', 'latest', "Checkpoint: 'latest', 'best' or a step number.")
  flags.DEFINE_string('init_from', None, 'A converted classifier '
                      '(tools/convert_torch_weights.py): class scores only, no boxes.')
  flags.DEFINE_integer('frame_stride', 1, 'Predict every k-th frame (and the last); '
                       'frames in between are interpolated.')
  flags.DEFINE_integer('batch_size', None, 'Clips per batch (default: the config\'s '
                       'eval.batch_size), rounded up to a multiple of the devices.')
  flags.DEFINE_integer('frame_top_k', 5, 'Per frame, the k best classes in the JSON '
                       '(0: every class\'s score).')
  flags.DEFINE_integer('max_tubes', MAX_TUBES, 'Keep the best k tubes per video in the '
                       'JSON and the drawing (0: all).')
  flags.DEFINE_multi_string('override', [], 'Config change key.path=value, e.g. '
                            'eval.tubes.iou_threshold=0.3 (repeatable).')
  flags.DEFINE_string('class_names', None, 'Text file of class names, one per line.')
  flags.DEFINE_bool('write_video', True, 'Write the annotated <name>.mp4.')
  flags.DEFINE_bool('progress', True, 'Progress bars.')
  flags.mark_flags_as_required(['video', 'output'])


def _user_errors() -> tuple[type[BaseException], ...]:
  from stconsist_jax import checkpointing  # pylint: disable=g-import-not-at-top
  extra = getattr(checkpointing, 'CheckpointReadError', None)
  return (ValueError, FileNotFoundError, NotADirectoryError) + ((extra,) if extra else ())


def run(argv_flags: Any = None) -> int:
  """The CLI's work; returns the exit code (0 when at least one video was predicted)."""
  f = argv_flags or FLAGS
  if fileio.is_remote(f.video):
    print(f'error: --video {f.video} is {REMOTE_VIDEO}', file=sys.stderr)
    return 2
  out_dir = fileio.as_path(f.output)
  videos = list_videos(f.video, exclude=out_dir)
  if not videos:
    print(f'no videos in {f.video} (extensions {", ".join(VIDEO_EXTENSIONS)})',
          file=sys.stderr)
    return 1
  if len(videos) == 1 and not videos[0].exists():
    print(f'skipped {videos[0]}: no such file', file=sys.stderr)
    return 1
  try:
    step = evaluate.resolve_step(ml_collections.ConfigDict({'eval': {}}), f.step)
    loaded = load(f.workdir, step, init_from=f.init_from, overrides=f.override,
                  batch_size=f.batch_size, names_file=f.class_names)
  except _user_errors() as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  p = loaded.predictor
  compile_s = p.warm_up()
  print(f'{loaded.model_info["architecture"]} ({loaded.model_info["source"]} step '
        f'{loaded.model_info["step"]}): clips of {p.num_frames} frames at '
        f'{p.image_size}px, batch {p.batch_size} on {p.num_devices} '
        f'{jax.devices()[0].platform} device(s), compiled in {compile_s:.1f} s; '
        f'{len(videos)} video(s)', flush=True)
  start = time.perf_counter()
  try:
    done, failed = predict_all(
        loaded, videos, out_dir, every=f.frame_stride, top_k=f.frame_top_k,
        max_tubes=f.max_tubes, write_annotated=f.write_video, progress=f.progress,
        report=lambda line: print(line, flush=True))
  except ValueError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  frames = sum(r.record['num_frames'] for r in done)
  predict_s = sum(r.record['timing']['predict_s'] for r in done)
  print(f'predicted {len(done)} of {len(videos)} video(s), {frames} frames, '
        f'{frames / max(predict_s, 1e-9):.1f} frames/s (decode + model + linking), '
        f'{time.perf_counter() - start:.1f} s in all; skipped {len(failed)}')
  return 0 if done else 1


class _RoutineCheckpointLogs:
  """absl handler filter: drops orbax's records below ERROR (routine on every restore)."""

  def filter(self, record: Any) -> bool:
    error = logging.converter.ABSL_TO_STANDARD[logging.ERROR]
    return record.levelno >= error or '/orbax/' not in record.pathname


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    logging_utils.quiet_library_logs()  # before anything imports TensorFlow
  logging.get_absl_handler().addFilter(_RoutineCheckpointLogs())
  sys.exit(run())


if __name__ == '__main__':
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')  # No FFmpeg chatter on bad files.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Class names may load TFDS.
  define_flags()
  app.run(main)
