"""Online prediction (`predict --stream`): frames from a camera, a URL, a file or raw RGB on
stdin, each predicted from the clip of the last T frames, tubes linked as frames arrive.

A frame's detections come from the clip that ends at it (causal), unlike a whole video's
clips, which are centred on their frame; a tubelet detector reports its clip's last
output frame, `lag` frames behind the newest when K < T. One JSON line per frame; a live
source (camera, URL) drops the frames the model has no time for, the others are all
predicted. Works with any `ClipPredictor` (a checkpoint's or an ONNX export's).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import threading
import time
from typing import Any, TextIO
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.core import errors
from stconsist_jax.metrics import classification
from stconsist_jax.metrics import online_tubes
from stconsist_jax.metrics import tubelets as tubelets_lib
from stconsist_jax.metrics import tubes as tubes_lib
from stconsist_jax.prediction import annotated_video
from stconsist_jax.prediction import drawing
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import prediction_record

STDIN = '-'
DEFAULT_FPS = 25.0  # Of an annotated video when the source does not say.
CAUSAL_PLACEMENT = (
  "online: the frame's detections come from the clip that ends at the newest frame t, "
  'frames t - (T-1-p)*s for p = 0..T-1 clamped at 0; a one-box head boxes t, a tubelet '
  "head the clip's last output frame t - (T - p0 - K)"
)


class StreamError(errors.UserError):
  """A stream source that cannot be opened or read."""


# ----------------------------------------------------------------------------------
# Sources.


def parse_size(text: str) -> tuple[int, int]:
  """'240x320' -> (240, 320): height x width of raw frames."""
  parts = str(text).lower().split('x')
  if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise StreamError(f'--stream_size must be HEIGHTxWIDTH (e.g. 240x320), got {text!r}')
  return int(parts[0]), int(parts[1])


@dataclasses.dataclass
class Source:
  """Frames of a stream, uint8 `(H, W, 3)`."""

  frames: Iterator[np.ndarray]
  name: str
  bgr: bool  # OpenCV's frames; raw stdin frames are RGB
  live: bool  # frames arrive at the source's pace (camera, URL): drop what cannot be kept up with
  fps: float | None  # as the source states it
  close: Callable[[], None] = lambda: None


def raw_frames(stream: Any, size: tuple[int, int]) -> Iterator[np.ndarray]:
  """Raw RGB frames of `size` (h, w) read from a binary stream until it ends."""
  h, w = size
  frame_bytes = h * w * 3
  while True:
    data = stream.read(frame_bytes)
    while data and len(data) < frame_bytes:  # A pipe gives what it has so far.
      more = stream.read(frame_bytes - len(data))
      if not more:
        break
      data += more
    if not data:
      return
    if len(data) < frame_bytes:
      raise StreamError(
        f'stdin ended inside a frame ({len(data)} of {frame_bytes} bytes of a {h}x{w} RGB '
        'frame): is --stream_size right?'
      )
    yield np.frombuffer(data, np.uint8).reshape(h, w, 3)


def is_live(spec: str) -> bool:
  """A camera index or a URL (not file://): frames come at their own pace."""
  spec = str(spec)
  return spec.isdigit() or ('://' in spec and not spec.startswith('file://'))


def _capture_frames(cap: Any) -> Iterator[np.ndarray]:
  while True:
    ok, frame = cap.read()
    if not ok or frame is None:
      return
    yield frame


def open_source(
  spec: str, size: tuple[int, int] | None = None, stdin: Any = None, live: bool | None = None
) -> Source:
  """The frames of `spec`: '-' (raw RGB frames of `size` on stdin), a camera index, or a
  file or URL OpenCV opens. `live` (default: camera or URL) drops frames when behind."""
  spec = str(spec)
  if spec == STDIN:
    if size is None:
      raise StreamError('--stream=- reads raw RGB frames from stdin: give --stream_size=HxW')
    stream = stdin if stdin is not None else sys.stdin.buffer
    return Source(raw_frames(stream, size), 'stdin', False, bool(live), None)
  if size is not None:
    raise StreamError('--stream_size is for raw frames on stdin (--stream=-) only')
  if not spec.isdigit() and not is_live(spec) and not os.path.exists(spec):
    raise StreamError(f'--stream {spec}: no such file, camera index or URL')
  cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
  if not cap.isOpened():
    cap.release()
    raise StreamError(f'--stream {spec}: OpenCV cannot open it')
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
  return Source(
    _capture_frames(cap),
    spec,
    True,
    is_live(spec) if live is None else bool(live),
    fps if math.isfinite(fps) and fps > 0 else None,
    cap.release,
  )


# ----------------------------------------------------------------------------------
# Clips of the last T frames.


def report_position(predictor: frame_predictor.ClipPredictor) -> int:
  """The clip position whose detections a frame gets: the last (one box per clip; its box
  is the model's for the clip, placed at the newest frame) or a tubelet detector's last
  output frame p0 + K - 1."""
  t, k = predictor.num_frames, predictor.tubelet_frames
  return (t - k) // 2 + k - 1 if k else t - 1


def lag(predictor: frame_predictor.ClipPredictor) -> int:
  """Frames between the newest frame and the frame its clip reports."""
  return (predictor.num_frames - 1 - report_position(predictor)) * predictor.frame_stride


class FrameRing:
  """The last `span` frames (prepared) by frame index, and the clip of a frame from them."""

  def __init__(self, num_frames: int, frame_stride: int, position: int, keep: int = 0):
    self.offsets = (np.arange(num_frames, dtype=np.int64) - position) * frame_stride
    self.span = int(self.offsets[-1] - self.offsets[0]) + 1 + keep
    self.ring: np.ndarray | None = None
    self.newest = -1

  def push(self, index: int, frame: np.ndarray) -> None:
    if self.ring is None:
      self.ring = np.empty((self.span,) + frame.shape, frame.dtype)
    elif frame.shape != self.ring.shape[1:]:
      raise StreamError(
        f'frame {index} has shape {frame.shape}, the first had {self.ring.shape[1:]}'
      )
    self.ring[index % self.span] = frame
    self.newest = index

  def clip(self, frame: int) -> np.ndarray:
    """`(T, ...)` frames `frame + offsets`, clamped to [0, newest] (a new array)."""
    return self.ring[np.clip(frame + self.offsets, 0, self.newest) % self.span]


# ----------------------------------------------------------------------------------
# Detections of one frame, linked.


@dataclasses.dataclass
class FrameDetections:
  """One frame's actors: pixel corner boxes `(N, 4)`, class scores `(N, C)` (0 where a
  tubelet's box was suppressed for the class), and the clip classifier's probabilities."""

  boxes: np.ndarray
  scores: np.ndarray
  probs: np.ndarray


def frame_detections(
  out: dict[str, np.ndarray],
  tubelet_frames: int,
  size: tuple[int, int],
  frame_nms: float,
  plus_one: bool,
) -> FrameDetections:
  """The actors of the reported frame in one clip's outputs (batch of one)."""
  h, w = size
  scale = np.array([w, h, w, h], np.float64)
  probs = classification.softmax(np.asarray(out['logits'][0], np.float64))
  if tubelet_frames:
    # The last output frame of each tubelet, through the per-frame, per-class NMS of a
    # whole video's frames (`tubelets.frame_detections` on one clip of one frame).
    boxes = np.asarray(out['det_boxes'][:1, :, -1:], np.float64) * scale
    rows = tubelets_lib.frame_detections(
      np.zeros((1, 1), np.int64),
      boxes,
      np.asarray(out['det_scores'][:1], np.float64),
      valid=np.asarray(out['det_valid'][:1], bool),
      present=(np.asarray(out['det_present'][:1, :, -1:], bool) if 'det_present' in out else None),
      nms_threshold=frame_nms,
      min_score=frame_predictor.ACTOR_MIN_SCORE,
      plus_one=plus_one,
    )
    return FrameDetections(rows.boxes, np.where(rows.valid, rows.scores, 0.0), probs)
  if 'boxes' not in out:  # A classifier: no actors.
    return FrameDetections(np.zeros((0, 4)), np.zeros((0, len(probs))), probs)
  corners = boxes_lib.xywh_to_corners(np.asarray(out['boxes'][:1], np.float64)) * scale
  return FrameDetections(corners, probs[None], probs)


def online_linking(linking: Any, tubelet_frames: int) -> tubes_lib.LinkingConfig:
  """The per-frame linking settings of a model: its own (one box per clip), or its
  tubelet linking's thresholds, a tube ending after `max_gap` frames without a match
  (None: K, ACT's)."""
  if isinstance(linking, tubes_lib.LinkingConfig):
    return linking
  return tubes_lib.LinkingConfig(
    iou_threshold=linking.iou_threshold,
    max_gap=int(linking.max_gap or tubelet_frames or 1),
    min_length=linking.min_length,
    min_score=linking.min_score,
    nms_threshold=linking.nms_threshold,
    top_k=linking.top_k,
    plus_one=linking.plus_one,
  )


def frame_line(
  f: int,
  dets: FrameDetections,
  step: online_tubes.Step | None,
  class_names: list[str],
  box_class_names: list[str],
  top_k: int,
  dropped: int,
  latency_ms: float,
) -> dict[str, Any]:
  """The JSON line of frame f."""
  actors = []
  for n in range(len(dets.boxes)):
    label = int(np.argmax(dets.scores[n]))
    tube = int(step.tube_ids[n, label]) if step is not None else -1
    actors.append(
      {
        'box': [round(float(v), 2) for v in dets.boxes[n]],
        'label': label,
        'class': box_class_names[label],
        'score': round(float(dets.scores[n, label]), prediction_record.NUM_DIGITS),
        'tube': tube if tube >= 0 else None,
      }
    )
  return {
    'frame': int(f),
    'actors': actors,
    'top': prediction_record.top_classes(dets.probs, class_names, top_k),
    'ended': [ended_entry(t, box_class_names) for t in (step.ended if step else [])],
    'dropped': int(dropped),
    'latency_ms': round(latency_ms, 2),
  }


def ended_entry(tube: online_tubes.EndedTube, box_class_names: list[str]) -> dict[str, Any]:
  return {
    'id': tube.id,
    'label': tube.label,
    'class': box_class_names[tube.label],
    'start': tube.start,
    'end': tube.end,
    'score': round(tube.score, prediction_record.NUM_DIGITS),
  }


# ----------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Summary:
  """What a stream run did."""

  frames_read: int = 0
  frames_predicted: int = 0
  dropped: int = 0
  seconds: float = 0.0
  latencies_ms: list[float] = dataclasses.field(default_factory=list)
  ended: list[online_tubes.EndedTube] = dataclasses.field(default_factory=list)

  @property
  def frames_per_s(self) -> float:
    return self.frames_predicted / max(self.seconds, 1e-9)

  def describe(self) -> str:
    lat = np.asarray(self.latencies_ms or [0.0])
    return (
      f'stream: {self.frames_read} frames read, {self.frames_predicted} predicted, '
      f'{self.dropped} dropped, {self.frames_per_s:.1f} frames/s, latency {lat.mean():.1f} ms '
      f'mean, {np.percentile(lat, 95):.1f} ms p95; {len(self.ended)} tubes'
    )


class _Window:
  """Frames, latencies and drops since the last report on stderr."""

  def __init__(self):
    self.start = time.perf_counter()
    self.latencies: list[float] = []
    self.dropped = 0

  def report(self, last: int, dropped_total: int) -> str:
    lat = np.asarray(self.latencies)
    fps = len(lat) / max(time.perf_counter() - self.start, 1e-9)
    return (
      f'stream: frame {last}: {fps:.1f} frames/s, latency {lat.mean():.1f} ms mean, '
      f'{lat.max():.1f} ms max over the last {len(lat)} frames; dropped {self.dropped} '
      f'({dropped_total} in all)'
    )


class _Originals:
  """The last few original frames by index (for drawing a frame `lag` behind the newest)."""

  def __init__(self, keep: int):
    self.frames: collections.deque = collections.deque(maxlen=max(keep, 1))

  def add(self, index: int, frame: np.ndarray | None) -> None:
    self.frames.append((index, frame))

  def get(self, index: int) -> np.ndarray | None:
    return next((frame for i, frame in self.frames if i == index), None)


class StreamPredictor:
  """Runs a loaded model on a stream: `run(source, out)` writes a JSON line per frame.

  `loaded` is a `predict.Loaded` (checkpoint or export). A frame's line: its actors (pixel
  corner boxes, box class, score, tube id), the clip classifier's top classes, the tubes
  that ended at it (`ended`), the frames dropped just before it and its latency (from the
  arrival of the newest frame its clip holds to its line). Every `report_every` frames a
  line on `log`: frames/s, latency, drops.
  """

  def __init__(
    self,
    loaded: Any,
    *,
    top_k: int = 5,
    report_every: int = 100,
    log: TextIO | None = None,
  ):
    self.loaded = loaded
    self.predictor = loaded.predictor
    self.top_k = top_k
    self.report_every = int(report_every)
    self.log = log
    self.lag = lag(self.predictor)
    self.class_names = list(loaded.class_names)
    self.box_class_names = list(loaded.box_class_names or loaded.class_names)
    self.linking = online_linking(loaded.linking, self.predictor.tubelet_frames)

  def _ring(self) -> FrameRing:
    p = self.predictor
    return FrameRing(p.num_frames, p.frame_stride, report_position(p))

  def run(
    self,
    source: Source,
    out: TextIO,
    *,
    video_path: str | None = None,
    video_fps: float | None = None,
    max_frames: int = 0,
  ) -> Summary:
    """Predicts the frames of `source` (a live one: the newest whenever the model is free;
    any other: every frame) and writes their JSON lines to `out`, the annotated video to
    `video_path` if given; at the end, a last line `{"end": true, "ended": [...]}` with
    the tubes still live then that pass the filters. Stops after `max_frames` (0: the
    source's end)."""
    self._out = out
    self._summary = Summary()
    self._window = _Window()
    self._linker = (
      online_tubes.OnlineLinker(self.linking, len(self.box_class_names))
      if self.predictor.with_boxes
      else None
    )
    self._writer = (
      _VideoWriter(video_path, video_fps or source.fps or DEFAULT_FPS, source.bgr)
      if video_path
      else None
    )
    start = time.perf_counter()
    try:
      if source.live:
        self._run_live(source, max_frames)
      else:
        self._run_in_order(source, max_frames)
      if self._linker is not None:
        final = self._linker.finish()
        self._summary.ended += final
        ended = [ended_entry(t, self.box_class_names) for t in final]
        out.write(json.dumps({'end': True, 'ended': ended}) + '\n')
        out.flush()
    finally:
      source.close()
      if self._writer is not None:
        self._writer.close()
    self._summary.seconds = time.perf_counter() - start
    return self._summary

  def _emit(
    self, f: int, clip: np.ndarray, original: np.ndarray | None, arrived: float, dropped: int
  ) -> None:
    """Predicts frame f from its clip and writes its line (and video frame)."""
    p = self.predictor
    out = p.run_clips(clip[None])
    dets = frame_detections(
      out,
      p.tubelet_frames,
      self._size,
      self.loaded.frame_nms_threshold,
      self.linking.plus_one,
    )
    step = None
    if self._linker is not None:
      step = self._linker.update(f, dets.boxes, dets.scores)
    latency = (time.perf_counter() - arrived) * 1e3
    line = frame_line(
      f, dets, step, self.class_names, self.box_class_names, self.top_k, dropped, latency
    )
    self._out.write(json.dumps(line) + '\n')
    self._out.flush()
    if self._writer is not None and original is not None:
      self._writer.write(original, line, dets.probs, self.class_names)
    s = self._summary
    s.frames_predicted += 1
    s.dropped += dropped
    s.latencies_ms.append(latency)
    if step is not None:
      s.ended += step.ended
    w = self._window
    w.latencies.append(latency)
    w.dropped += dropped
    if self.log is not None and self.report_every and len(w.latencies) >= self.report_every:
      self.log.write(w.report(f, s.dropped) + '\n')
      self.log.flush()
      self._window = _Window()

  def _run_in_order(self, source: Source, max_frames: int) -> None:
    """Every frame, in order: frame i - lag as frame i arrives, the last `lag` at the end."""
    ring, originals = self._ring(), _Originals(self.lag + 1)
    count = 0
    for i, frame in enumerate(source.frames):
      if max_frames and i >= max_frames:
        break
      arrived = time.perf_counter()
      if i == 0:
        self._size = frame.shape[:2]
      ring.push(i, self.predictor.prepare(frame, source.bgr))
      originals.add(i, frame if self._writer is not None else None)
      count = i + 1
      f = i - self.lag
      if f >= 0:
        self._emit(f, ring.clip(f), originals.get(f), arrived, 0)
    self._summary.frames_read = count
    for f in range(max(count - self.lag, 0), count):
      self._emit(f, ring.clip(f), originals.get(f), time.perf_counter(), 0)

  def _run_live(self, source: Source, max_frames: int) -> None:
    """A reader thread takes every frame as it comes; each time the model is free it
    predicts the newest frame's report, dropping the frames in between."""
    shared = _Shared(self._ring(), self.lag + 1, self._writer is not None)
    reader = threading.Thread(
      target=shared.read,
      args=(source, self.predictor.prepare, max_frames),
      name='stream-reader',
      daemon=True,
    )
    reader.start()
    last = -1
    try:
      while True:
        with shared.cond:
          while shared.error is None and not shared.done and shared.count - 1 - self.lag <= last:
            shared.cond.wait()
          if shared.error is not None:
            raise shared.error
          newest = shared.count - 1
          f = newest - self.lag
          if f <= last:  # done, and nothing new before the last `lag` frames
            break
          self._size = shared.size
          clip, original, arrived = shared.ring.clip(f), shared.originals.get(f), shared.arrived
        self._emit(f, clip, original, arrived, f - last - 1)
        last = f
    finally:
      with shared.cond:
        shared.stop = True
      reader.join(timeout=5)
    self._summary.frames_read = shared.count
    for f in range(last + 1, shared.count):  # The last `lag` frames, clamped at the end.
      self._emit(f, shared.ring.clip(f), shared.originals.get(f), time.perf_counter(), 0)


class _Shared:
  """A live source's frames as its reader thread adds them (under `cond`)."""

  def __init__(self, ring: FrameRing, keep: int, keep_originals: bool):
    self.ring = ring
    self.originals = _Originals(keep)
    self.keep_originals = keep_originals
    self.count = 0
    self.size: tuple[int, int] = (0, 0)
    self.arrived = 0.0  # when the newest frame was read
    self.done = False
    self.stop = False
    self.error: BaseException | None = None
    self.cond = threading.Condition()

  def read(self, source: Source, prepare: Callable[..., np.ndarray], max_frames: int) -> None:
    try:
      for i, frame in enumerate(source.frames):
        if self.stop or (max_frames and i >= max_frames):
          break
        arrived = time.perf_counter()
        prepared = prepare(frame, source.bgr)
        original = np.array(frame) if self.keep_originals else None
        with self.cond:
          if i == 0:
            self.size = frame.shape[:2]
          self.ring.push(i, prepared)
          self.originals.add(i, original)
          self.count, self.arrived = i + 1, arrived
          self.cond.notify_all()
    except BaseException as e:  # pylint: disable=broad-except  # Raised by the main thread.
      with self.cond:
        self.error = e
    finally:
      with self.cond:
        self.done = True
        self.cond.notify_all()


class _VideoWriter:
  """The annotated stream: each predicted frame with its actors and tube ids drawn."""

  def __init__(self, path: str, fps: float, bgr: bool):
    self.path, self.fps, self.bgr = path, float(fps), bgr
    self.writer = None

  def write(
    self, frame: np.ndarray, line: dict[str, Any], probs: np.ndarray, class_names: list[str]
  ) -> None:
    image = frame if self.bgr else cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR)
    if self.writer is None:
      h, w = image.shape[:2]
      self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*'mp4v'), self.fps, (w, h))
      if not self.writer.isOpened():
        raise StreamError(f'--stream_video {self.path}: OpenCV cannot write mp4v video there')
    # As the whole video's drawing: actors and tubes below DRAW_MIN_SCORE are left out.
    actors = line['actors']
    shown = [a for a in actors if a['score'] >= annotated_video.DRAW_MIN_SCORE or len(actors) == 1]
    tubes = [
      (a['tube'], a['class'], a['score'], np.asarray(a['box']))
      for a in shown
      if a['tube'] is not None
    ]
    boxes = [np.asarray(a['box']) for a in shown]
    self.writer.write(drawing.draw_frame(image, boxes, probs, tubes, class_names))

  def close(self) -> None:
    if self.writer is not None:
      self.writer.release()
