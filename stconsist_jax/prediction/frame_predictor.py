"""A model on a stream of frames: a clip centred on every (k-th) frame, run in batches,
densified to one box and class distribution per frame, linked.

The library half of prediction (`predict` adds loading, output files and the CLI):
frames of any size are squashed as the dataset build did, clips are clamped to the
video like the frame eval stream, and memory stays bounded whatever the video's length.
`ClipPredictor` holds what does not depend on the runtime (clip settings, windows,
batches); `FramePredictor` runs the JAX model on the mesh, `onnx_predictor.OnnxPredictor`
an ONNX export. This module imports no JAX: `FramePredictor` loads it when built.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, TYPE_CHECKING
from collections.abc import Callable, Iterable, Iterator, Mapping

import cv2
import numpy as np

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.core import clip_geometry
from stconsist_jax.metrics import classification
from stconsist_jax.metrics import interpolation
from stconsist_jax.metrics import tubelets as tubelets_lib
from stconsist_jax.metrics import tubes as tubes_lib
from stconsist_jax.data.ucf101 import video_decode

if TYPE_CHECKING:
  import ml_collections

DEFAULT_BATCH_SIZE = 8
TUBELET_KEYS = ('det_boxes', 'det_scores', 'det_valid')  # models/tubelet_decode.py
PRESENCE_KEY = 'det_present'  # a tubelet head with presence: (N, top_n, K) bool
# A (box, class) scoring 0.01 or less is no actor of that class (ACT's detector-side cut).
ACTOR_MIN_SCORE = 0.01


def prepare_frame(
  frame: np.ndarray, frame_size: int, image_size: int, bgr: bool = False
) -> np.ndarray:
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


def centre_frames(video_frames: int, every: int = 1) -> np.ndarray:
  """The frames that get their own clip: 0, every, 2 * every, ... and the last frame."""
  if video_frames < 1:
    return np.zeros(0, np.int64)
  return np.unique(np.r_[np.arange(0, video_frames, every), video_frames - 1]).astype(np.int64)


def _ring_windows(
  frames: Iterable[np.ndarray],
  offsets: np.ndarray,
  every: int,
  video_starts: Callable[[int], np.ndarray],
) -> Iterator[tuple[int, np.ndarray]]:
  """`(o, clip)`, the clip holding frames o + offsets clamped to the video, streaming.

  Frames are copied into a ring buffer of `offsets[-1] - offsets[0] + 1` frames, all the
  frames one clip spans. o = 0, every, 2 * every, ... is yielded as soon as the clip's last
  frame has been read; when the stream ends (F frames), the rest of `video_starts(F)` (the
  starts of a whole video, increasing) follows. Each clip is a new array `(T, H, W, C)`.
  """
  lookahead = int(offsets[-1])
  span = int(offsets[-1] - offsets[0]) + 1
  ring = None
  count = 0
  start = 0

  def clip_of(o: int, last: int) -> np.ndarray:
    return ring[np.clip(o + offsets, 0, last) % span]

  for frame in frames:
    frame = np.asarray(frame)
    if ring is None:
      ring = np.empty((span,) + frame.shape, frame.dtype)
    elif frame.shape != ring.shape[1:]:
      raise ValueError(f'frame {count} has shape {frame.shape}, the first had {ring.shape[1:]}')
    ring[count % span] = frame
    count += 1
    while start + lookahead <= count - 1:
      yield start, clip_of(start, count - 1)
      start += every
  if count == 0:
    return
  yielded = start - every  # the last start yielded while streaming (-every: none)
  for o in video_starts(count):
    if o > yielded:
      yield int(o), clip_of(int(o), count - 1)


def sliding_windows(
  frames: Iterable[np.ndarray], num_frames: int, frame_stride: int = 1, every: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
  """`(centre, clip)` for the centres of `centre_frames`, streaming over `frames`.

  A ring buffer holds the `(T - 1) * frame_stride + 1` frames one clip spans, so memory
  stays bounded whatever the video's length. Clip frames are clamped to the video at both
  ends (the frame eval stream's placement). Each clip is a new array `(T, H, W, C)`.
  """
  if every < 1:
    raise ValueError(f'the frame stride between predicted frames must be >= 1, got {every}')
  offsets = clip_geometry.centred_offsets(num_frames, frame_stride)
  yield from _ring_windows(frames, offsets, every, lambda count: centre_frames(count, every))


def tubelet_windows(
  frames: Iterable[np.ndarray], num_frames: int, k: int, every: int
) -> Iterator[tuple[int, np.ndarray]]:
  """`(first output frame o, clip)` of a tubelet detector's clips, streaming over `frames`.

  `clip_geometry.TUBELET_PLACEMENT`: o = 0, every, 2 * every, ... and the last start F - K
  (F is known only at the end of the stream); the clip holds frames o + tubelet_offsets,
  clamped to the video, from a ring buffer of T frames, so memory stays bounded.
  """
  if not 1 <= every <= k:
    raise ValueError(f'the tubelet stride must be in 1..K={k} frames, got {every}')
  offsets = clip_geometry.tubelet_offsets(num_frames, k)
  yield from _ring_windows(
    frames,
    offsets,
    every,
    lambda count: clip_geometry.tubelet_output_starts(count, k, every),
  )


def _batches(
  windows: Iterator[tuple[int, np.ndarray]], size: int
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


@dataclasses.dataclass
class Tubelets:
  """A tubelet detector's decoded detections on the clips of one video."""

  output_frames: np.ndarray  # int64 (M, K): the video frame of each output frame
  boxes: np.ndarray  # float32 (M, N, K, 4) corners x1, y1, x2, y2 normalized
  scores: np.ndarray  # float32 (M, N, C) box-class probabilities
  valid: np.ndarray  # bool (M, N)
  present: np.ndarray | None = None  # bool (M, N, K); None: a head without presence


@dataclasses.dataclass
class Detections:
  """The model's outputs on the clips of one video."""

  frames: np.ndarray  # int64 (M,): centre frame of each clip, increasing
  logits: np.ndarray  # float32 (M, K)
  boxes: np.ndarray | None  # float32 (M, 4) (x_left, y_top, w, h) normalized; None:
  #   a classifier without a box head
  num_frames: int  # frames read from the video
  # A tubelet detector's decoded clips (`frames` are then each clip's first output frame).
  tubelets: Tubelets | None = None

  @property
  def probs(self) -> np.ndarray:
    return classification.softmax(self.logits.astype(np.float64))


class ClipPredictor:
  """Per-frame detections of a model on a frame stream: sliding clips in batches.

  The runtime-independent half: clip settings, frame preparation, the clip windows and
  batches, and the outputs gathered into `Detections`. A subclass runs a batch: `_run`
  starts it (it may return before the result is ready: the next batch is decoded
  meanwhile) and `_outputs` waits for it and returns its host arrays by name.
  """

  runtime = 'none'  # What runs the model, for the records and the command line.

  def __init__(
    self,
    *,
    num_frames: int,
    frame_size: int,
    image_size: int,
    frame_stride: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_boxes: bool = True,
    tubelet_frames: int = 0,
  ):
    for name, value in (
      ('num_frames', num_frames),
      ('frame_size', frame_size),
      ('image_size', image_size),
      ('frame_stride', frame_stride),
      ('batch_size', batch_size),
    ):
      if int(value) < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')
    self.num_frames = int(num_frames)
    self.frame_stride = int(frame_stride)
    self.frame_size = int(frame_size)
    self.image_size = int(image_size)
    self.batch_size = int(batch_size)
    self.with_boxes = bool(with_boxes)
    self.tubelet_frames = int(tubelet_frames)  # K of a tubelet detector; 0: one box per clip
    if self.tubelet_frames and frame_stride != 1:
      raise ValueError('a tubelet detector needs clips of consecutive frames (frame_stride 1)')

  @property
  def num_devices(self) -> int:
    return 1

  @property
  def device_description(self) -> str:
    """Where the model runs, for the command line (e.g. '1 cpu device(s)')."""
    return self.runtime

  def prepare(self, frame: np.ndarray, bgr: bool = False) -> np.ndarray:
    return prepare_frame(frame, self.frame_size, self.image_size, bgr)

  def _run(self, clips: np.ndarray) -> Any:
    raise NotImplementedError

  def _outputs(self, out: Any) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def run_clips(self, clips: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs by name for uint8 clips `(b, T, S, S, 3)`, b <= batch_size, on
    the host (rows past b, a batch's padding, dropped)."""
    return {k: v[: len(clips)] for k, v in self._outputs(self._run(clips)).items()}

  def warm_up(self) -> float:
    """Runs a zero clip once (compiles, loads); returns the seconds it took."""
    start = time.perf_counter()
    self.run_clips(np.zeros((1, self.num_frames, self.image_size, self.image_size, 3), np.uint8))
    return time.perf_counter() - start

  def _fetch(self, centres: np.ndarray, out: Any) -> dict[str, np.ndarray]:
    host = self._outputs(out)
    n = len(centres)
    got = {'frames': centres, 'logits': host['logits'][:n].astype(np.float32)}
    if self.with_boxes and 'boxes' in host:
      got['boxes'] = host['boxes'][:n].astype(np.float32)
    if self.tubelet_frames:
      got.update({k: host[k][:n] for k in TUBELET_KEYS + (PRESENCE_KEY,) if k in host})
    return got

  def detect(
    self,
    frames: Iterable[np.ndarray],
    *,
    every: int = 1,
    bgr: bool = False,
    on_frame: Callable[[np.ndarray], None] | None = None,
  ) -> Detections:
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

    if self.tubelet_frames:
      windows = tubelet_windows(prepared(), self.num_frames, self.tubelet_frames, every)
    else:
      windows = sliding_windows(prepared(), self.num_frames, self.frame_stride, every)
    chunks, pending = [], None
    for centres, clips in _batches(windows, self.batch_size):
      out = self._run(clips)  # may run while the next batch is decoded
      if pending is not None:
        chunks.append(self._fetch(*pending))
      pending = (centres, out)
    if pending is not None:
      chunks.append(self._fetch(*pending))
    if not chunks:
      return Detections(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), None, count[0])
    boxes = (
      np.concatenate([c['boxes'] for c in chunks]) if all('boxes' in c for c in chunks) else None
    )
    starts = np.concatenate([c['frames'] for c in chunks])
    tubelets = None
    if self.tubelet_frames:
      k = self.tubelet_frames
      present = None
      if all(PRESENCE_KEY in c for c in chunks):
        present = np.concatenate([c[PRESENCE_KEY] for c in chunks]).astype(bool)
      tubelets = Tubelets(
        np.minimum(starts[:, None] + np.arange(k), count[0] - 1),
        *(np.concatenate([c[key] for c in chunks]) for key in TUBELET_KEYS),
        present=present,
      )
    return Detections(
      starts, np.concatenate([c['logits'] for c in chunks]), boxes, count[0], tubelets
    )


class FramePredictor(ClipPredictor):
  """A JAX model as a `ClipPredictor`: jitted batches on a device mesh.

  Batches of `batch_size` clips (rounded up to a multiple of the mesh's devices; the
  last batch padded) are sharded over the mesh's 'data' axis with the variables
  replicated (the evaluation's `make_predict_fn`). The next batch is decoded while the
  devices run the previous one. `with_boxes` defaults to whether the model has a box
  head; the mesh to all local devices.
  """

  runtime = 'jax'

  def __init__(
    self,
    model: Any,
    variables: Mapping[str, Any],
    *,
    num_frames: int,
    frame_size: int,
    image_size: int,
    frame_stride: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_boxes: bool | None = None,
    tubelet_frames: int = 0,
    mesh: Any = None,
  ):
    # JAX only here: the module serves prediction from an export without it.
    import jax  # pylint: disable=g-import-not-at-top
    from stconsist_jax.evaluation import forward  # pylint: disable=g-import-not-at-top
    from stconsist_jax.training import distributed  # pylint: disable=g-import-not-at-top

    if with_boxes is None:  # A Detector with a box head; not a VideoClassifier.
      with_boxes = str(getattr(model, 'box_head', 'none')) != 'none'
    super().__init__(
      num_frames=num_frames,
      frame_size=frame_size,
      image_size=image_size,
      frame_stride=frame_stride,
      batch_size=batch_size,
      with_boxes=with_boxes,
      tubelet_frames=tubelet_frames,
    )
    self.mesh = distributed.make_mesh(jax.local_devices()) if mesh is None else mesh
    devices = int(self.mesh.devices.size)
    self.batch_size = -(-self.batch_size // devices) * devices
    self.variables = distributed.replicate(
      {k: variables[k] for k in ('params', 'batch_stats') if k in variables}, self.mesh
    )
    self._predict = forward.make_predict_fn(model, self.mesh)

  @classmethod
  def from_config(
    cls, config: ml_collections.ConfigDict, model: Any, variables: Mapping[str, Any], **kwargs: Any
  ) -> FramePredictor:
    """Clip settings from `config.data` (num_frames, frame_stride, frame_size, image_size)."""
    from stconsist_jax.config import schema  # pylint: disable=g-import-not-at-top

    d = config.data
    return cls(
      model,
      variables,
      num_frames=int(d.num_frames),
      frame_stride=int(d.get('frame_stride', 1)),
      frame_size=int(d.frame_size),
      image_size=int(d.image_size),
      tubelet_frames=schema.tubelet_frames(config),
      **kwargs,
    )

  @property
  def num_devices(self) -> int:
    return int(self.mesh.devices.size)

  @property
  def device_description(self) -> str:
    return f'{self.num_devices} {self.mesh.devices.flat[0].platform} device(s)'

  def _run(self, clips: np.ndarray) -> Any:
    from stconsist_jax.training import distributed  # pylint: disable=g-import-not-at-top

    padded = np.zeros((self.batch_size,) + clips.shape[1:], np.uint8)
    padded[: len(clips)] = clips
    sharded = distributed.shard_batch({'clip': padded}, self.mesh)['clip']
    return self._predict(self.variables, sharded)  # dispatched asynchronously

  def _outputs(self, out: Any) -> dict[str, np.ndarray]:
    import jax  # pylint: disable=g-import-not-at-top

    return jax.tree.map(np.asarray, jax.device_get(out))


def detect_frames(
  config: ml_collections.ConfigDict,
  model: Any,
  variables: Mapping[str, Any],
  frames: Iterable[np.ndarray],
  *,
  every: int = 1,
  bgr: bool = False,
  batch_size: int = DEFAULT_BATCH_SIZE,
  mesh: Any = None,
) -> FrameResults:
  """Dense per-frame boxes and class probabilities of `model` on a frame iterator.

  The one-call form of `FramePredictor(...).detect` + `densify`: clip settings from
  `config.data`; frames uint8 `(H, W, 3)` RGB (BGR with `bgr`) of any size. Builds a new
  jitted function per call: for many videos keep one FramePredictor.
  """
  predictor = FramePredictor.from_config(config, model, variables, batch_size=batch_size, mesh=mesh)
  return densify(predictor.detect(frames, every=every, bgr=bgr))


@dataclasses.dataclass
class FrameResults:
  """One box and one class distribution per frame of a video."""

  boxes: np.ndarray | None  # float64 (F, 4) corners x1, y1, x2, y2 normalized; None:
  #   classification only
  probs: np.ndarray  # float64 (F, K) softmax probabilities
  predicted: np.ndarray  # bool (F,): the frame had its own clip (else interpolated)
  # A tubelet detector's actors of each frame, best first: boxes float32 (F, M, 4)
  # normalized corners, box-class scores float32 (F, M, C) (0 for a class whose
  # per-frame NMS suppressed the box), valid bool (F, M). None: one box per frame.
  actors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

  @property
  def num_frames(self) -> int:
    return len(self.probs)


def densify(detections: Detections) -> FrameResults:
  """Every frame's box and probabilities, linear between the predicted frames."""
  n = detections.num_frames
  predicted = np.zeros(n, bool)
  predicted[detections.frames] = True
  if not len(detections.frames):
    k = detections.logits.shape[1]
    return FrameResults(
      None if detections.boxes is None else np.zeros((n, 4)), np.zeros((n, k)), predicted
    )
  if detections.boxes is None:
    full = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (len(detections.frames), 1))
    _, probs = interpolation.fill_one_box(detections.frames, full, detections.probs, n)
    return FrameResults(None, probs, predicted)
  corners = boxes_lib.xywh_to_corners(detections.boxes.astype(np.float64))
  boxes, probs = interpolation.fill_one_box(detections.frames, corners, detections.probs, n)
  return FrameResults(boxes, probs, predicted)


def link_tubes(results: FrameResults, linking: Any, size: tuple[int, int] = (1, 1)) -> list[Any]:
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
  found = tubes_lib.link_video(frames, boxes[:, None], results.probs[:, None, classes], linking)
  return [tubes_lib.Tube(int(classes[t.label]), t.frames, t.boxes, t.scores) for t in found]


def _per_frame(
  dets: tubelets_lib.FrameDetections, num_frames: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`FrameDetections` rows (pixels, ordered by frame) -> padded per-frame actors, best
  first, normalized; filled `tubelets_lib.FRAME_BLOCK` frames at a time."""
  if np.any(np.diff(dets.frames) < 0):
    raise ValueError('frame detections must be ordered by frame')
  counts = np.bincount(dets.frames, minlength=num_frames)
  first = np.concatenate([[0], np.cumsum(counts)])  # frame f's rows: first[f]:first[f + 1]
  m = max(int(counts.max(initial=0)), 1)
  boxes = np.zeros((num_frames, m, 4), np.float32)
  per_class = np.zeros((num_frames, m, dets.scores.shape[1]), np.float32)
  valid = np.zeros((num_frames, m), bool)
  h, w = size
  scale = np.array([w, h, w, h], np.float64)
  for lo in range(0, num_frames, tubelets_lib.FRAME_BLOCK):
    hi = min(lo + tubelets_lib.FRAME_BLOCK, num_frames)
    rows = slice(first[lo], first[hi])
    scores = np.where(dets.valid[rows], dets.scores[rows], 0.0)
    best = scores.max(axis=1) if scores.size else np.zeros(0)
    order = np.lexsort((-best, dets.frames[rows]))
    frames = dets.frames[rows][order]
    slot = np.arange(len(frames)) - np.repeat(first[lo:hi] - first[lo], counts[lo:hi])
    boxes[frames, slot] = dets.boxes[rows][order] / scale
    per_class[frames, slot] = scores[order]
    valid[frames, slot] = True
  return boxes, per_class, valid


def tubelet_results(
  detections: Detections,
  size: tuple[int, int],
  linking: tubelets_lib.TubeletLinkingConfig,
  frame_nms_threshold: float = 0.3,
) -> tuple[FrameResults, list[Any]]:
  """A tubelet detector's frames and tubes: every actor of every frame (the tubelet boxes
  covering it after ACT's per-class NMS) and ACT's tubes, boxes in pixels of `size`.

  A frame's `probs` are the clip classifier's, interpolated between the clips' centre
  output frames; its `boxes` row is its best actor's box (NaN: no actor).
  """
  t = detections.tubelets
  n = detections.num_frames
  h, w = size
  scale = np.array([w, h, w, h], np.float64)
  pixel_boxes = t.boxes.astype(np.float64)
  pixel_boxes *= scale  # in place: one copy of the boxes
  found = tubelets_lib.link_tubelets(
    t.output_frames, pixel_boxes, t.scores, linking, valid=t.valid, present=t.present
  )
  per_frame = tubelets_lib.frame_detections(
    t.output_frames,
    pixel_boxes,
    t.scores,
    valid=t.valid,
    present=t.present,
    nms_threshold=frame_nms_threshold,
    min_score=ACTOR_MIN_SCORE,
    plus_one=linking.plus_one,
  )
  del pixel_boxes  # a video's tubelets, no longer needed: not held with what follows
  actors = _per_frame(per_frame, n, size)
  del per_frame
  centres = t.output_frames[:, t.output_frames.shape[1] // 2]
  centres, first = np.unique(centres, return_index=True)
  probs = interpolation.fill_scores(centres, detections.probs[first], n)
  boxes = np.where(actors[2][:, :1, None], actors[0][:, :1], np.nan)[:, 0].astype(np.float64)
  predicted = np.zeros(n, bool)
  predicted[np.unique(t.output_frames)] = True
  return FrameResults(boxes, probs, predicted, actors), found
