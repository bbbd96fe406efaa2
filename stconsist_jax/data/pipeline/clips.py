"""Pure TensorFlow functions on one video: window choice, frame decoding, boxes, crops.

Everything here is a function of tensors and explicit stateless seeds, so the same
inputs always give the same clip; `train_stream.py` and `eval_streams.py` compose these
into tf.data streams.
Boxes come in two layouts: corners `(x1, y1, x2, y2)` as stored in the TFDS records and
`(x, y, w, h)` as the model predicts; both normalized by the frame width/height.
"""

from typing import NamedTuple

import tensorflow as tf

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.core import clip_geometry

# A box whose visible part after a crop is below this share of its area loses its mask.
MIN_BOX_VISIBLE = 0.5
HOST_FLIP_KEY = 'clip_flip'  # only with data.host_flip; else the train step flips


class WindowSpec(NamedTuple):
  """How clips are cut and sized (all from `config.data`)."""

  num_frames: int  # T, frames per clip
  frame_stride: int  # step between consecutive clip frames
  frame_size: int  # S, side of the stored (square) frames
  image_size: int  # side of the clips the model sees
  scale_min: float = 1.0  # scale augmentation: crop side / frame side in [min, max]
  scale_max: float = 1.0
  host_flip: bool = False  # also yield `clip_flip` (else the device flips)

  @property
  def span(self) -> int:
    """Frames of the video covered by one window (first to last, inclusive)."""
    return (self.num_frames - 1) * self.frame_stride + 1

  @property
  def augments_scale(self) -> bool:
    return self.scale_min < 1.0 or self.scale_max < 1.0


def window_indices(start: tf.Tensor, video_frames: tf.Tensor, spec: WindowSpec) -> tf.Tensor:
  """Frame indices `(T,)` of the window at `start`; wraps around (loop-pads) short videos."""
  positions = tf.range(spec.num_frames, dtype=tf.int32) * spec.frame_stride
  return tf.math.floormod(
    tf.cast(start, tf.int32) + positions, tf.maximum(tf.cast(video_frames, tf.int32), 1)
  )


def centred_indices(frame: tf.Tensor, video_frames: tf.Tensor, spec: WindowSpec) -> tf.Tensor:
  """Indices `(T,)` of the window whose position `T // 2` is `frame`, clamped to the video
  (`core.clip_geometry`'s placement, as prediction's)."""
  positions = tf.constant(
    clip_geometry.centred_offsets(spec.num_frames, spec.frame_stride), tf.int32
  )
  return tf.clip_by_value(
    tf.cast(frame, tf.int32) + positions, 0, tf.cast(video_frames, tf.int32) - 1
  )


def central_positions(spec: WindowSpec) -> tuple[int, int]:
  """The two central window positions whose boxes form the box target (7 and 8 for T=16)."""
  return spec.num_frames // 2 - 1, spec.num_frames // 2


def num_starts(video_frames: tf.Tensor, spec: WindowSpec) -> tf.Tensor:
  """Number of window starts that stay inside the video (1 for videos shorter than a window)."""
  return tf.maximum(tf.cast(video_frames, tf.int32) - spec.span + 1, 1)


def sample_start(
  seed: tf.Tensor, video_frames: tf.Tensor, spec: WindowSpec, preferred: tf.Tensor | None = None
) -> tf.Tensor:
  """A random window start, uniform over the allowed starts.

  Args:
    seed: stateless seed, int `(2,)`.
    video_frames: frames of the video.
    spec: the window layout.
    preferred: optional bool `(video_frames,)`; when given, the start is drawn among
      the starts whose central frames include a `True` frame (if there are any).
  Returns:
    int32 scalar start.
  """
  count = num_starts(video_frames, spec)
  starts = tf.range(count, dtype=tf.int32)
  if preferred is not None:
    c0, c1 = central_positions(spec)
    hits = tf.logical_or(
      tf.gather(preferred, window_frame(starts, c0, video_frames, spec)),
      tf.gather(preferred, window_frame(starts, c1, video_frames, spec)),
    )
    chosen = tf.boolean_mask(starts, hits)
    starts = tf.cond(tf.size(chosen) > 0, lambda: chosen, lambda: starts)
  pick = tf.random.stateless_uniform([], seed, 0, tf.size(starts), dtype=tf.int32)
  return starts[pick]


def window_frame(
  start: tf.Tensor, position: int, video_frames: tf.Tensor, spec: WindowSpec
) -> tf.Tensor:
  """The video frame at window `position` for window(s) starting at `start`."""
  return tf.math.floormod(
    start + position * spec.frame_stride, tf.maximum(tf.cast(video_frames, tf.int32), 1)
  )


def uniform_starts(video_frames: tf.Tensor, count: int, spec: WindowSpec) -> tf.Tensor:
  """`count` window starts spread evenly from the first to the last possible start."""
  last = tf.cast(num_starts(video_frames, spec) - 1, tf.float64)
  if count == 1:
    return tf.cast(tf.round(last / 2), tf.int32)[None]
  steps = tf.range(count, dtype=tf.float64) / (count - 1)
  return tf.cast(tf.round(steps * last), tf.int32)


def decode_frames(encoded: tf.Tensor, indices: tf.Tensor, frame_size: int) -> tf.Tensor:
  """Decodes only the chosen JPEG frames: uint8 `(T, S, S, 3)`; a bad frame raises."""
  chosen = tf.gather(encoded, indices)
  frames = tf.map_fn(
    lambda data: tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), [frame_size, frame_size, 3]),
    chosen,
    fn_output_signature=tf.TensorSpec([frame_size, frame_size, 3], tf.uint8),
  )
  return frames


def primary_box(
  tube_boxes: tf.Tensor, tube_present: tf.Tensor, tube_labels: tf.Tensor, frames: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Tube 0's box averaged over the given frames where it is present.

  Args:
    tube_boxes: float `(num_tubes, video_frames, 4)` normalized corners.
    tube_present: bool `(num_tubes, video_frames)`.
    tube_labels: int `(num_tubes,)`.
    frames: int `(k,)` frame indices (the window's two central frames).
  Returns:
    `(box_xywh float32 (4,), has_box bool, tube_label int32)`; zeros, False and -1
    when the video has no tube or tube 0 has no box on any of the frames.
  """

  def with_tube():
    present = tf.cast(tf.gather(tube_present[0], frames), tf.float32)
    boxes = tf.gather(tf.cast(tube_boxes[0], tf.float32), frames)
    count = tf.reduce_sum(present)
    mean = tf.reduce_sum(boxes * present[:, None], axis=0) / tf.maximum(count, 1.0)
    has = count > 0
    return (
      tf.where(has, boxes_lib.corners_to_xywh(mean, xp=tf.experimental.numpy), tf.zeros([4])),
      has,
      tf.where(has, tf.cast(tube_labels[0], tf.int32), -1),
    )

  def without_tube():
    return tf.zeros([4]), tf.constant(False), tf.constant(-1, tf.int32)

  return tf.cond(tf.shape(tube_labels)[0] > 0, with_tube, without_tube)


class WindowActors(NamedTuple):
  """The first A tubes of a video on the T frames of a window (actor a = tube a)."""

  boxes: tf.Tensor  # float32 (T, A, 4) normalized xywh, zeros where absent
  present: tf.Tensor  # bool (T, A)
  labels: tf.Tensor  # int32 (A,) tube labels, -1 past the video's tubes
  crowded: tf.Tensor  # bool: a tube past the first A has a box on a window frame


def window_actors(
  tube_boxes: tf.Tensor,
  tube_present: tf.Tensor,
  tube_labels: tf.Tensor,
  indices: tf.Tensor,
  max_actors: int,
) -> WindowActors:
  """Every actor's box on every frame of a window, as the records give them.

  Args:
    tube_boxes: float `(num_tubes, video_frames, 4)` normalized corners.
    tube_present: bool `(num_tubes, video_frames)`.
    tube_labels: int `(num_tubes,)`.
    indices: int `(T,)` the window's frame indices (loop-padded ones included).
    max_actors: A, actors kept (tubes in record order).
  """
  num_frames = indices.shape[0]

  def with_tubes():
    boxes = tf.gather(tf.cast(tube_boxes[:max_actors], tf.float32), indices, axis=1)
    present = tf.gather(tube_present[:max_actors], indices, axis=1)
    pad = max_actors - tf.shape(present)[0]
    boxes = tf.transpose(tf.pad(boxes, [[0, pad], [0, 0], [0, 0]]), [1, 0, 2])
    present = tf.transpose(tf.pad(present, [[0, pad], [0, 0]]), [1, 0])
    labels = tf.pad(tf.cast(tube_labels[:max_actors], tf.int32), [[0, pad]], constant_values=-1)
    crowded = tf.reduce_any(tf.gather(tube_present[max_actors:], indices, axis=1))
    xywh = boxes_lib.corners_to_xywh(boxes, xp=tf.experimental.numpy)
    return tf.where(present[..., None], xywh, tf.zeros_like(xywh)), present, labels, crowded

  def without_tubes():
    return (
      tf.zeros([num_frames, max_actors, 4]),
      tf.zeros([num_frames, max_actors], tf.bool),
      tf.fill([max_actors], -1),
      tf.constant(False),
    )

  boxes, present, labels, crowded = tf.cond(tf.shape(tube_labels)[0] > 0, with_tubes, without_tubes)
  return WindowActors(
    tf.ensure_shape(boxes, [num_frames, max_actors, 4]),
    tf.ensure_shape(present, [num_frames, max_actors]),
    tf.ensure_shape(labels, [max_actors]),
    crowded,
  )


def actor_targets(
  boxes: tf.Tensor, present: tf.Tensor, labels: tf.Tensor, dense_labeled: tf.Tensor
) -> dict[str, tf.Tensor]:
  """The dense-head keys of one clip (the tubelet contract's training batch keys).

  Boxes and labels are kept only where the clip's dense targets are known
  (`dense_labeled`): elsewhere no actor is present and every label is -1.
  """
  present = tf.logical_and(present, dense_labeled)
  boxes = tf.where(present[..., None], boxes, tf.zeros_like(boxes))
  flipped = boxes_lib.flip_xywh(boxes, xp=tf.experimental.numpy)
  return {
    'actor_boxes': boxes,
    'actor_boxes_flip': tf.where(present[..., None], flipped, tf.zeros_like(flipped)),
    'actor_present': present,
    'actor_labels': tf.where(dense_labeled, labels, -tf.ones_like(labels)),
    'dense_labeled': dense_labeled,
  }


def frame_ground_truth(
  tube_boxes: tf.Tensor,
  tube_present: tf.Tensor,
  tube_labels: tf.Tensor,
  frame: tf.Tensor,
  max_boxes: int,
) -> tuple[tf.Tensor, tf.Tensor]:
  """All boxes of one frame: corners float32 `(G, 4)` and labels int32 `(G,)`, -1 padded."""
  num_tubes = tf.shape(tube_labels)[0]
  present = tf.cond(num_tubes > 0, lambda: tube_present[:, frame], lambda: tf.zeros([0], tf.bool))
  boxes = tf.cond(
    num_tubes > 0,
    lambda: tf.cast(tube_boxes[:, frame], tf.float32),
    lambda: tf.zeros([0, 4], tf.float32),
  )
  boxes = tf.boolean_mask(boxes, present)[:max_boxes]
  labels = tf.boolean_mask(tf.cast(tube_labels, tf.int32), present)[:max_boxes]
  pad = max_boxes - tf.shape(labels)[0]
  boxes = tf.pad(boxes, [[0, pad], [0, 0]])
  labels = tf.pad(labels, [[0, pad]], constant_values=-1)
  return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes])


def flip_width(clip: tf.Tensor) -> tf.Tensor:
  """`clip[:, :, ::-1, :]` for `(T, H, W, C)` with static shape.

  Reversing each row's W*C bytes and then the channels is ~1.5x faster than a direct
  reverse of axis 2 (TensorFlow's reverse is slow on a 3-byte innermost block).
  """
  shape = clip.shape.as_list()
  rows = tf.reverse(tf.reshape(clip, [-1, shape[2] * shape[3]]), axis=[1])
  return tf.reverse(tf.reshape(rows, shape), axis=[3])


def to_uint8(images: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)


def resize_clip(clip: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear resize of uint8 `(T, h, w, 3)` frames to `size x size` (no-op when equal)."""
  if clip.shape[1] == size and clip.shape[2] == size:
    return clip
  return to_uint8(tf.image.resize(clip, [size, size], method='bilinear'))


class CropWindow(NamedTuple):
  """A square crop of the stored frames: side and top-left corner, in pixels (int32)."""

  side: tf.Tensor
  x: tf.Tensor
  y: tf.Tensor


def crop_window(seed: tf.Tensor, spec: WindowSpec) -> CropWindow:
  """A random square crop of side `scale * S`, scale uniform in the spec's range."""
  size = spec.frame_size
  scale_seed, x_seed, y_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  scale = (
    tf.random.stateless_uniform([], scale_seed, spec.scale_min, spec.scale_max, dtype=tf.float32)
    if spec.scale_max > spec.scale_min
    else tf.constant(spec.scale_min, tf.float32)
  )
  side = tf.clip_by_value(tf.cast(tf.round(scale * size), tf.int32), 1, size)
  x = tf.random.stateless_uniform([], x_seed, 0, size - side + 1, dtype=tf.int32)
  y = tf.random.stateless_uniform([], y_seed, 0, size - side + 1, dtype=tf.int32)
  return CropWindow(side, x, y)


def crop_boxes(
  boxes: tf.Tensor, present: tf.Tensor, window: CropWindow, spec: WindowSpec
) -> tuple[tf.Tensor, tf.Tensor]:
  """Normalized xywh boxes `(..., 4)` mapped into the crop and clipped to it.

  A box with less than `MIN_BOX_VISIBLE` of its area inside the crop (or none) loses
  its mask; boxes without a mask become zeros. Returns `(boxes, present)`.
  """
  factor = tf.cast(spec.frame_size, tf.float32) / tf.cast(window.side, tf.float32)
  offset = tf.stack([tf.cast(window.x, tf.float32), tf.cast(window.y, tf.float32)])
  offset = offset / spec.frame_size
  x1y1 = (boxes[..., :2] - offset) * factor
  wh = boxes[..., 2:] * factor
  lo = tf.clip_by_value(x1y1, 0.0, 1.0)
  hi = tf.clip_by_value(x1y1 + wh, 0.0, 1.0)
  area = tf.reduce_prod(wh, axis=-1)
  visible = tf.reduce_prod(hi - lo, axis=-1)
  keep = tf.logical_and(present, visible >= MIN_BOX_VISIBLE * area)
  keep = tf.logical_and(keep, area > 0)
  cropped = tf.where(keep[..., None], tf.concat([lo, hi - lo], axis=-1), tf.zeros_like(boxes))
  return cropped, keep


def crop_clip(clip: tf.Tensor, window: CropWindow, spec: WindowSpec) -> tf.Tensor:
  """The crop of every frame, resized to the model's `image_size`."""
  crop = clip[:, window.y : window.y + window.side, window.x : window.x + window.side, :]
  return to_uint8(tf.image.resize(crop, [spec.image_size, spec.image_size], method='bilinear'))


def window_spec(data_config) -> WindowSpec:
  """The clip layout of a validated `config.data`."""
  scale_min, scale_max = data_config.scale_augment
  return WindowSpec(
    num_frames=data_config.num_frames,
    frame_stride=data_config.frame_stride,
    frame_size=data_config.frame_size,
    image_size=data_config.image_size,
    scale_min=float(scale_min),
    scale_max=float(scale_max),
    host_flip=data_config.host_flip,
  )


def clip_targets(
  clip: tf.Tensor, box: tf.Tensor, has_box: tf.Tensor, tube_label: tf.Tensor, spec: WindowSpec
) -> dict[str, tf.Tensor]:
  """Final per-clip dict: resize, flipped box, and the flipped clip if made on the host."""
  clip = resize_clip(clip, spec.image_size)
  clip = tf.ensure_shape(clip, [spec.num_frames, spec.image_size, spec.image_size, 3])
  box = tf.where(has_box, box, tf.zeros([4]))
  out = {
    'clip': clip,
    'box': box,
    'box_flip': tf.where(
      has_box, boxes_lib.flip_xywh(box, xp=tf.experimental.numpy), tf.zeros([4])
    ),
    'has_box': has_box,
    'tube_label': tf.where(has_box, tube_label, -1),
  }
  if spec.host_flip:
    out[HOST_FLIP_KEY] = flip_width(clip)
  return out
