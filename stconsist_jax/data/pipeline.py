"""The tf.data input pipeline: training clips with flipped copies, and evaluation streams.

Reads the `ucf101_stconsist` TFDS records (docs/DESIGN.md section 2) and yields host-side
numpy batches (section 3). Per-host sharding, seeded shuffling, a random T-frame window
per video, decoding of only the chosen JPEG frames, optional scale augmentation, box
targets (and their flipped copies), and deterministic padded evaluation streams. The
flipped clip is made by the train step on the accelerator (`data.host_flip` makes it here).

Config keys read (ml_collections `config`):
  data.name                 TFDS name; `name` alone means `name/split{split}_{frame_size}`,
                            `name/config` is used as given; 'synthetic' is an alias of
                            `ucf101_stconsist` (a dataset built from generated videos).
  data.data_dir             TFDS data dir ('' or None: the TFDS default).
  data.split                UCF-101 split number (1, 2 or 3) of the builder config.
  data.frame_size           side of the stored frames (the builder config's size).
  data.image_size           side of the clips fed to the model (resized if different).
  data.num_frames           T, frames per clip (16).
  data.frame_stride         step between clip frames (1).
  data.classes              'all': every video, one label per dataset class; 'ucf24':
                            only annotated videos, labels = their 24-way tube label.
                            (101 and 24 are accepted here as aliases; configs use names.)
  data.box_label_fraction   share of annotated videos whose boxes are kept, chosen by
                            a keyed hash of (video name, seed): nested in the fraction.
  data.labeled_per_batch    0: natural mix; k > 0: every host batch holds k clips of
                            box-kept videos (windows drawn where tube 0 is annotated)
                            and B - k clips of the other videos.
  data.scale_augment        (min, max) crop side / frame side; (1, 1) or False turns it
                            off, True means DEFAULT_SCALE_AUGMENT.
  data.shuffle_buffer       videos in the shuffle buffer.
  data.host_flip            also yield `clip_flip` (default False: the train step flips
                            on the device, which halves host work and host-to-device
                            traffic).
  eval.clips_per_video      K uniformly placed clips per test video.
  eval.frame_stride         the frame stream scores annotated frames f with
                            f % frame_stride == 0.
  eval.batch_size           global evaluation batch (split evenly over hosts).
  train.batch_size          global training batch (split evenly over hosts).
  seed                      the one seed; the training stream is a pure function of
                            (seed, step).

Resumption: `make_train_dataset(..., start_step=N)` yields exactly the batches an
uninterrupted run yields from step N on, skipping the first N batches' videos before
any frame is decoded. (Exact while no element was dropped as corrupt before step N;
each drop shifts the later stream by one clip and is counted and logged.)

Robustness: unreadable records and clips whose frames fail to decode are dropped;
`BatchIterator.num_skipped` counts the decode failures and each one is logged.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from typing import Any, Iterator, Protocol, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_parser

from stconsist_jax import fileio
from stconsist_jax.data import clips as clips_lib

AUTOTUNE = tf.data.AUTOTUNE
TFRECORD_BUFFER_BYTES = 256 * 1024  # TensorFlow's default, named so it is not logged
SKIPPED_KEY = "_skipped"
INDEX_KEY = "_index"
TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
_HASH_BUCKETS = 1 << 30
DEFAULT_SCALE_AUGMENT = (0.8, 1.0)
SYNTHETIC_ALIAS = "synthetic"
DEFAULT_NAME = "ucf101_stconsist"

TRAIN_KEYS = ("clip", "label", "box", "box_flip", "has_box", "tube_label")
HOST_FLIP_KEY = "clip_flip"  # only with data.host_flip; else the train step flips
EVAL_CLIP_KEYS = ("clip", "label", "box", "has_box", "video_id", "valid")
EVAL_FRAME_KEYS = ("clip", "label", "video_id", "frame", "gt_boxes", "gt_labels",
                   "original_size", "valid")
EVAL_VIDEO_KEYS = ("clip", "video_id", "frame", "valid")

# The raw per-video element every source yields (frames still JPEG-encoded).
RAW_SIGNATURE = {
    "frames": tf.TensorSpec([None], tf.string),
    "label": tf.TensorSpec([], tf.int32),
    "name": tf.TensorSpec([], tf.string),
    "num_frames": tf.TensorSpec([], tf.int32),
    "annotated": tf.TensorSpec([], tf.bool),
    "tube_labels": tf.TensorSpec([None], tf.int32),
    "tube_boxes": tf.TensorSpec([None, None, 4], tf.float32),
    "tube_present": tf.TensorSpec([None, None], tf.bool),
    "original_size": tf.TensorSpec([2], tf.int32),  # (height, width) of the source video
}
# Fields a test or tool may leave out of an in-memory record.
RAW_DEFAULTS = {"original_size": (240, 320)}


# ----------------------------------------------------------------------------- sources


class Source(Protocol):
  """Where videos come from: a split's size and a contiguous range of its raw records."""

  def num_examples(self, split: str) -> int:
    ...

  def read(self, split: str, start: int, end: int) -> tf.data.Dataset:
    """Records `[start, end)` of `split` in a fixed order, as `RAW_SIGNATURE` dicts."""
    ...


def normalize_raw(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Casts a record's features to `RAW_SIGNATURE` (TFDS gives int64 labels etc.)."""
  return {key: tf.cast(example[key], spec.dtype) for key, spec in RAW_SIGNATURE.items()}


class TfdsSource:
  """The `ucf101_stconsist` TFDS dataset, frames left as JPEG strings.

  `name` is `dataset/config`; a prepared `data_dir/dataset/config/<version>` folder is
  read directly (any frame size works), else the registered builder is asked for it.
  Records are parsed here rather than by `as_dataset`: TFDS decodes a `Sequence`
  element by element even under `SkipDecoding`, which costs ~1.6 ms per 100-frame
  video, more than decoding the 16 frames a clip needs.
  """

  def __init__(self, name: str, data_dir: str | None = None,
               builder: tfds.core.DatasetBuilder | None = None):
    self.builder = builder or _find_builder(name, data_dir)
    self._features = self.builder.info.features
    missing = set(RAW_SIGNATURE) - set(self._features.keys())
    if missing:
      raise ValueError(f"TFDS dataset {self.builder.info.full_name} lacks the features "
                       f"{sorted(missing)} that the pipeline reads (docs/DESIGN.md 2)")
    self._parser = example_parser.ExampleParser(self._features.get_serialized_info())

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples

  def read(self, split: str, start: int, end: int) -> tf.data.Dataset:
    if end <= start:
      return self.read(split, 0, 1).take(0)
    parts = []
    for file in self.builder.info.splits[f"{split}[{start}:{end}]"].file_instructions:
      path = file.filename  # TFDS may give the full path, a bucket URL included.
      if not (fileio.is_remote(path) or os.path.isabs(path)):
        path = os.path.join(self.builder.data_dir, path)
      part = tf.data.TFRecordDataset(path, buffer_size=TFRECORD_BUFFER_BYTES)
      part = part.skip(file.skip)
      parts.append(part.take(file.take) if file.take is not None and file.take >= 0
                   else part)
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
    return ds.map(self._parse, num_parallel_calls=AUTOTUNE, deterministic=True)

  def _parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    parsed = self._parser.parse_example(serialized)
    example = {"frames": parsed["frames"]}  # the JPEG strings, as stored
    for key in RAW_SIGNATURE:
      if key != "frames":
        example[key] = self._features[key].decode_example(parsed[key])
    return normalize_raw(example)


def _prepared_dir(config_dir: epath.Path) -> epath.Path | None:
  """The newest built version folder under a config folder, if any."""
  versions = [d for d in config_dir.glob("*") if (d / "dataset_info.json").exists()]
  if not versions:
    return None
  return max(versions, key=lambda d: tuple(int(x) for x in d.name.split(".") if x.isdigit()))


def _find_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  if data_dir:
    config_dir = fileio.as_path(data_dir).joinpath(*name.split("/"))
    found = _prepared_dir(config_dir)
    if found is None and "/" in name:
      # Builds with a class list other than UCF-101's are named `<config>_c<classes>`.
      variants = [d for d in sorted(config_dir.parent.glob(config_dir.name + "_c*"))
                  if _prepared_dir(d)]
      if len(variants) > 1:
        raise ValueError(f"several builds match {name!r} in {data_dir}: "
                         f"{[d.name for d in variants]}; name one in config.data.name")
      found = _prepared_dir(variants[0]) if variants else None
    if found is not None:
      return tfds.builder_from_directory(os.fspath(found))
  # Registers the builder class so that `tfds.builder` finds it by name.
  from stconsist_jax.data import tfds_builder  # noqa: F401  pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"TFDS dataset {name!r} not found (data_dir={data_dir!r}): {e}") from e
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {name!r} is not built in {builder.data_dir}; build it "
                     f"first (stconsist_jax.data.tfds_builder)")
  return builder


class InMemorySource:
  """Videos held as Python dicts (`frames`: list of JPEG bytes); for tests and tools."""

  def __init__(self, splits: dict[str, Sequence[dict[str, Any]]]):
    self.splits = {name: list(examples) for name, examples in splits.items()}

  def num_examples(self, split: str) -> int:
    return len(self.splits[split])

  def read(self, split: str, start: int, end: int) -> tf.data.Dataset:
    examples = self.splits[split][start:end]

    def generate():
      for example in examples:
        yield {key: np.asarray(example[key] if key in example else RAW_DEFAULTS[key],
                               spec.dtype.as_numpy_dtype)
               for key, spec in RAW_SIGNATURE.items()}

    return tf.data.Dataset.from_generator(generate, output_signature=RAW_SIGNATURE)


def tfds_name(data_config) -> str:
  name = DEFAULT_NAME if data_config.name == SYNTHETIC_ALIAS else data_config.name
  if "/" in name:
    return name
  return f"{name}/split{data_config.split}_{data_config.frame_size}"


def source_from_config(data_config) -> Source:
  return TfdsSource(tfds_name(data_config), data_config.get("data_dir") or None)


# ----------------------------------------------------------------------------- helpers


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """The contiguous share `[start, end)` of a split read by one host (sizes differ by <= 1)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def per_host_batch(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f"{what}={global_batch} must be divisible by the number of hosts "
                     f"({process_count})")
  return global_batch // process_count


def window_spec(data_config) -> clips_lib.WindowSpec:
  """The clip layout from `config.data`, validated."""
  scale = data_config.get("scale_augment", False)
  if isinstance(scale, bool):
    scale = DEFAULT_SCALE_AUGMENT if scale else (1.0, 1.0)
  scale = tuple(scale)
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"config.data.scale_augment must be (min, max) with "
                     f"0 < min <= max <= 1, got {scale}")
  if data_config.num_frames < 2 or data_config.frame_stride < 1:
    raise ValueError(f"config.data.num_frames must be >= 2 and frame_stride >= 1, got "
                     f"{data_config.num_frames} and {data_config.frame_stride}")
  return clips_lib.WindowSpec(
      num_frames=int(data_config.num_frames), frame_stride=int(data_config.frame_stride),
      frame_size=int(data_config.frame_size), image_size=int(data_config.image_size),
      scale_min=float(scale[0]), scale_max=float(scale[1]),
      host_flip=bool(data_config.get("host_flip", False)))


def derive_seed(*parts: int | str) -> int:
  """A stable 31-bit integer from any parts (independent of PYTHONHASHSEED)."""
  digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def box_label_kept(name: tf.Tensor, seed: int, fraction: float) -> tf.Tensor:
  """Whether a video's boxes are kept: keyed hash of its name below `fraction`.

  Depends only on (name, seed), so every host agrees, and the kept set for a smaller
  fraction is contained in the set for a larger one.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"config.data.box_label_fraction must be in [0, 1], got {fraction}")
  bucket = tf.strings.to_hash_bucket_strong(
      name, _HASH_BUCKETS, key=[derive_seed("box_label", seed), 0x5EED])
  return bucket < int(round(fraction * _HASH_BUCKETS))


def only_ucf24(classes: int | str) -> bool:
  """Whether `config.data.classes` asks for the 24 annotated classes (else all 101)."""
  if classes in (101, "all"):
    return False
  if classes in (24, "ucf24"):
    return True
  raise ValueError(f"config.data.classes must be 101 ('all') or 24 ('ucf24'), got "
                   f"{classes!r}")


def label_names(data_config, source: Source | None = None) -> list[str]:
  """Names of the labels the streams yield, in label order.

  Every class of the dataset (`classes='all'`), or the annotated classes in tube-label
  order (`classes='ucf24'`), as the TFDS build recorded them.
  """
  source = source or source_from_config(data_config)
  builder = getattr(source, "builder", None)
  if builder is None:
    raise ValueError(f"the data source {type(source).__name__} has no TFDS builder to "
                     "read class names from")
  if only_ucf24(data_config.classes):
    names = (builder.info.metadata or {}).get("annotated_class_names")
    if not names:
      raise ValueError(f"{builder.info.full_name} records no annotated class names "
                       "(built before they were recorded?); rebuild it")
    return list(names)
  return list(builder.info.features["label"].names)


def _filter_classes(ds: tf.data.Dataset, classes: int | str) -> tf.data.Dataset:
  """Keeps annotated videos only for 24 classes, relabelled with their 24-way label."""
  if not only_ucf24(classes):
    return ds

  def relabel(ex):
    return {**ex, "label": tf.cast(ex["tube_labels"][0], tf.int32)}

  return ds.filter(_is_ucf24).map(relabel)


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  # Parallelism across elements only: intra-op threads compete with the map workers.
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _count_gaps(ds: tf.data.Dataset, first_index: int) -> tf.data.Dataset:
  """Replaces `_index` by `_skipped`: how many indices were dropped right before it."""
  def step(last, ex):
    index = ex.pop(INDEX_KEY)
    ex[SKIPPED_KEY] = tf.cast(index - last - 1, tf.int32)
    return index, ex
  return ds.scan(tf.constant(first_index - 1, tf.int64), step)


def _clip_targets(clip, box, has_box, tube_label, spec):
  """Final per-clip dict: resize, flipped box, and the flipped clip if made on the host."""
  clip = clips_lib.resize_clip(clip, spec.image_size)
  clip = tf.ensure_shape(clip, [spec.num_frames, spec.image_size, spec.image_size, 3])
  box = tf.where(has_box, box, tf.zeros([4]))
  out = {
      "clip": clip,
      "box": box,
      "box_flip": tf.where(has_box, clips_lib.flip_xywh(box), tf.zeros([4])),
      "has_box": has_box,
      "tube_label": tf.where(has_box, tube_label, -1),
  }
  if spec.host_flip:
    out[HOST_FLIP_KEY] = clips_lib.flip_width(clip)
  return out


# ----------------------------------------------------------------------------- training


def train_example(index: tf.Tensor, ex: dict[str, tf.Tensor], *, spec: clips_lib.WindowSpec,
                  stream_seed: int, keep_fraction: float, box_seed: int,
                  prefer_boxes: bool) -> dict[str, tf.Tensor]:
  """One training sample from one raw video; all randomness from (stream_seed, index)."""
  seed = tf.stack([tf.constant(stream_seed, tf.int64), tf.cast(index, tf.int64)])
  window_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  video_frames = tf.shape(ex["frames"])[0]
  tf.debugging.assert_equal(video_frames, ex["num_frames"],
                            message="frames length differs from num_frames")
  kept = tf.logical_and(ex["annotated"], box_label_kept(ex["name"], box_seed,
                                                        keep_fraction))
  preferred = None
  if prefer_boxes:
    preferred = tf.cond(tf.shape(ex["tube_labels"])[0] > 0,
                        lambda: ex["tube_present"][0],
                        lambda: tf.zeros([video_frames], tf.bool))
  start = clips_lib.sample_start(window_seed, video_frames, spec, preferred)
  indices = clips_lib.window_indices(start, video_frames, spec)
  c0, c1 = clips_lib.central_positions(spec)
  box, has_box, tube_label = clips_lib.primary_box(
      ex["tube_boxes"], ex["tube_present"], ex["tube_labels"],
      tf.gather(indices, [c0, c1]))
  has_box = tf.logical_and(has_box, kept)
  clip = clips_lib.decode_frames(ex["frames"], indices, spec.frame_size)
  if spec.augments_scale:
    clip, box, has_box = clips_lib.scale_crop(clip, box, has_box, scale_seed, spec)
  out = _clip_targets(clip, box, has_box, tube_label, spec)
  out["label"] = ex["label"]
  out[INDEX_KEY] = tf.cast(index, tf.int64)
  return out


def _train_stream(raw: tf.data.Dataset, *, batch: int, start_step: int, shuffle_buffer: int,
                  shuffle_seed: int, **example_kwargs) -> tf.data.Dataset:
  first = start_step * batch
  ds = raw.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
  ds = ds.repeat().enumerate().skip(first)  # skip before any decoding
  ds = ds.map(functools.partial(train_example, **example_kwargs),
              num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  return _count_gaps(ds, first).batch(batch, drop_remainder=True)


def make_train_dataset(data_config, *, batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1, start_step: int = 0,
                       source: Source | None = None) -> tf.data.Dataset:
  """The infinite training stream of one host: batches of `batch_size` (per host) clips.

  Args:
    data_config: `config.data`.
    batch_size: clips per batch on this host (global batch / process_count).
    seed: the experiment seed; with `start_step` it fixes the stream completely.
    process_index: this host.
    process_count: number of hosts; host i reads the i-th contiguous share of the split.
    start_step: number of batches to skip (resumption); no skipped video is decoded.
    source: where to read from (default: the TFDS dataset named in the config).
  Returns:
    A dataset of dicts with the DESIGN.md training keys plus `_skipped` (int32 `(B,)`,
    decode failures before each clip; `BatchIterator` removes it).
  """
  spec = window_spec(data_config)
  source = source or source_from_config(data_config)
  start, end = host_range(source.num_examples(TRAIN_SPLIT), process_index, process_count)
  raw = source.read(TRAIN_SPLIT, start, end).ignore_errors(log_warning=True)
  raw = _filter_classes(raw, data_config.get("classes", 101))
  fraction = float(data_config.get("box_label_fraction", 1.0))
  labeled = int(data_config.get("labeled_per_batch", 0))
  if not 0 <= labeled <= batch_size:
    raise ValueError(f"config.data.labeled_per_batch must be in [0, {batch_size}] (the "
                     f"per-host batch), got {labeled}")
  if labeled and fraction <= 0:
    raise ValueError("config.data.labeled_per_batch > 0 needs box_label_fraction > 0")
  common = dict(spec=spec, keep_fraction=fraction, box_seed=seed, start_step=start_step,
                shuffle_buffer=int(data_config.get("shuffle_buffer", 256)))

  def stream(ds, name, size, prefer_boxes):
    return _train_stream(
        ds, batch=size, prefer_boxes=prefer_boxes,
        shuffle_seed=derive_seed("shuffle", seed, process_index, name),
        stream_seed=derive_seed("clips", seed, process_index, name), **common)

  if labeled == 0:
    ds = stream(raw, "all", batch_size, False)
  else:
    def is_kept(ex):
      return tf.logical_and(ex["annotated"], box_label_kept(ex["name"], seed, fraction))
    parts = [stream(raw.filter(is_kept), "labeled", labeled, True)]
    if labeled < batch_size:
      parts.append(stream(raw.filter(lambda ex: tf.logical_not(is_kept(ex))),
                          "unlabeled", batch_size - labeled, False))
    ds = tf.data.Dataset.zip(tuple(parts)).map(
        lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]})
  return _options(ds.prefetch(AUTOTUNE))


# ----------------------------------------------------------------------------- evaluation


def num_batches_for(counts: Sequence[int], batch_size: int) -> int:
  """Batches every host runs: enough for the host with the most examples."""
  return max(math.ceil(c / batch_size) for c in counts) if counts else 0


def eval_clip_counts(num_videos: int, clips_per_video: int, process_count: int) -> list[int]:
  return [clips_per_video * (e - s) for s, e in
          (host_range(num_videos, i, process_count) for i in range(process_count))]


def _pad_and_batch(ds: tf.data.Dataset, batch: int, num_batches: int) -> tf.data.Dataset:
  """Appends invalid all-zero rows so every host yields exactly `num_batches` batches."""
  padding = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec))
  ds = ds.concatenate(padding.map(lambda ex: {**ex, "valid": tf.constant(False)}).repeat())
  return _options(ds.take(batch * num_batches).batch(batch).prefetch(AUTOTUNE))


def eval_subset(num_videos: int, max_videos: int) -> np.ndarray:
  """Indices of the test videos evaluated: all, or `max_videos` evenly spaced ones.

  Evenly spaced over the split (sorted by class) so a small subset still spans the
  classes; deterministic, the same on every host and every run.
  """
  if max_videos <= 0 or max_videos >= num_videos:
    return np.arange(num_videos)
  return np.unique((np.arange(max_videos) * num_videos) // max_videos)


def host_videos(num_videos: int, max_videos: int, process_index: int,
                process_count: int) -> np.ndarray:
  """The evaluated test-video indices of one host (a contiguous share of the subset)."""
  subset = eval_subset(num_videos, max_videos)
  start, end = host_range(len(subset), process_index, process_count)
  return subset[start:end]


def _read_videos(source: Source, videos: np.ndarray) -> tf.data.Dataset:
  """(index, example) of the given sorted test-video indices."""
  if not len(videos):
    return source.read(TEST_SPLIT, 0, 1).enumerate(0).take(0)
  first, last = int(videos[0]), int(videos[-1]) + 1
  ds = source.read(TEST_SPLIT, first, last).enumerate(first)
  if last - first != len(videos):
    wanted = tf.constant(videos, tf.int64)
    ds = ds.filter(lambda i, ex: tf.reduce_any(tf.equal(i, wanted)))
  return ds


def _eval_setup(config, process_index, process_count, source):
  spec = window_spec(config.data)
  spec = spec._replace(scale_min=1.0, scale_max=1.0)
  source = source or source_from_config(config.data)
  batch = per_host_batch(int(config.eval.batch_size), process_count, "config.eval.batch_size")
  num_videos = source.num_examples(TEST_SPLIT)
  videos = host_videos(num_videos, int(config.eval.get("max_videos", 0)), process_index,
                       process_count)
  raw = _read_videos(source, videos).ignore_errors(log_warning=True)
  if only_ucf24(config.data.get("classes", 101)):
    raw = raw.filter(lambda i, ex: _is_ucf24(ex)).map(
        lambda i, ex: (i, {**ex, "label": tf.cast(ex["tube_labels"][0], tf.int32)}))
  return spec, source, batch, num_videos, raw


def _is_ucf24(ex: dict[str, tf.Tensor]) -> tf.Tensor:
  return tf.logical_and(ex["annotated"], tf.shape(ex["tube_labels"])[0] > 0)


def make_eval_clip_dataset(config, *, process_index: int = 0, process_count: int = 1,
                           source: Source | None = None, layout: EvalLayout | None = None
                           ) -> tuple[tf.data.Dataset, int]:
  """K uniformly placed clips per test video of this host, padded: `(dataset, num_batches)`.

  Every host gets the same `num_batches`; padding rows have `valid` false and all
  videos of the test split are covered exactly once over all hosts.
  """
  spec, source, batch, num_videos, raw = _eval_setup(config, process_index, process_count,
                                                     source)
  k = int(config.eval.clips_per_video)
  if k < 1:
    raise ValueError(f"config.eval.clips_per_video must be >= 1, got {k}")
  if only_ucf24(config.data.get("classes", 101)):  # which videos count needs a pass
    counts = (layout or eval_layout(config, process_count, source)).clip_counts
  else:
    counts = eval_clip_counts(len(eval_subset(num_videos, int(config.eval.get(
        "max_videos", 0)))), k, process_count)
  num_batches = num_batches_for(counts, batch)
  c0, c1 = clips_lib.central_positions(spec)

  def clips_of(video_id, ex):
    video_frames = tf.shape(ex["frames"])[0]
    starts = clips_lib.uniform_starts(video_frames, k, spec)
    return tf.data.Dataset.from_tensor_slices(starts).map(
        lambda s: (video_id, s, ex))

  def make(video_id, start, ex):
    video_frames = tf.shape(ex["frames"])[0]
    indices = clips_lib.window_indices(start, video_frames, spec)
    box, has_box, tube_label = clips_lib.primary_box(
        ex["tube_boxes"], ex["tube_present"], ex["tube_labels"],
        tf.gather(indices, [c0, c1]))
    clip = clips_lib.decode_frames(ex["frames"], indices, spec.frame_size)
    out = _clip_targets(clip, box, has_box, tube_label, spec)
    return {"clip": out["clip"], "label": ex["label"], "box": out["box"],
            "has_box": out["has_box"], "video_id": tf.cast(video_id, tf.int32),
            "valid": tf.constant(True)}

  ds = raw.flat_map(clips_of).map(make, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  return _pad_and_batch(ds, batch, num_batches), num_batches


def annotated_frames(tube_present: tf.Tensor, video_frames: tf.Tensor,
                     frame_stride: int) -> tf.Tensor:
  """Frames (int32) where any tube has a box, restricted to multiples of `frame_stride`."""
  any_box = tf.cond(tf.shape(tube_present)[0] > 0,
                    lambda: tf.reduce_any(tube_present, axis=0),
                    lambda: tf.zeros([video_frames], tf.bool))
  frames = tf.cast(tf.where(any_box)[:, 0], tf.int32)
  return tf.boolean_mask(frames, tf.equal(frames % frame_stride, 0))


@dataclasses.dataclass(frozen=True)
class EvalLayout:
  """Per-host sizes of the evaluation streams, from the test split's annotations."""
  clip_counts: tuple[int, ...]  # clips per host of the clip stream
  frame_counts: tuple[int, ...]  # clips per host of the frame stream
  max_boxes: int  # G: most tubes of any test video (at least 1)
  video_frame_counts: tuple[int, ...] = ()  # clips per host of the whole-video stream


def eval_layout(config, process_count: int, source: Source | None = None) -> EvalLayout:
  """One pass over the test split's annotations (no frame decoding) to size both streams.

  Every host can call it and gets the same answer, so all run the same batch counts.
  """
  source = source or source_from_config(config.data)
  stride = int(config.eval.frame_stride)
  if stride < 1:
    raise ValueError(f"config.eval.frame_stride must be >= 1, got {stride}")
  ucf24 = only_ucf24(config.data.get("classes", 101))

  def summary(i, ex):
    frames = annotated_frames(ex["tube_present"], tf.shape(ex["frames"])[0], stride)
    taken = _is_ucf24(ex) if ucf24 else tf.constant(True)
    return tf.stack([tf.cast(i, tf.int32), tf.cast(taken, tf.int32), tf.size(frames),
                     tf.shape(ex["tube_labels"])[0], tf.shape(ex["frames"])[0],
                     tf.cast(_is_ucf24(ex), tf.int32)])

  num_videos = source.num_examples(TEST_SPLIT)
  max_videos = int(config.eval.get("max_videos", 0))
  subset = eval_subset(num_videos, max_videos)
  ds = _read_videos(source, subset).map(summary, num_parallel_calls=AUTOTUNE)
  rows = np.array(list(ds.ignore_errors(log_warning=True).as_numpy_iterator()),
                  np.int64).reshape(-1, 6)
  if len(rows) != len(subset):
    logging.warning("Test split: %d of %d records are unreadable; evaluation skips them.",
                    len(subset) - len(rows), len(subset))
  # taken, annotated frames, tubes, length, has tubes; unreadable: 0
  table = np.zeros((num_videos, 5), np.int64)
  table[rows[:, 0]] = rows[:, 1:]
  per_host = [table[host_videos(num_videos, max_videos, i, process_count)]
              for i in range(process_count)]
  k = int(config.eval.clips_per_video)
  tube_stride = int(config.eval.get("tube_frame_stride", 1))
  return EvalLayout(
      clip_counts=tuple(k * int(t[:, 0].sum()) for t in per_host),
      frame_counts=tuple(int((t[:, 0] * t[:, 1]).sum()) for t in per_host),
      max_boxes=max(1, int(table[:, 2].max(initial=0))),
      video_frame_counts=tuple(
          int(sum(num_video_clips(int(n), tube_stride)
                  for n in t[(t[:, 0] > 0) & (t[:, 4] > 0), 3]))
          for t in per_host))


def make_eval_frame_dataset(config, *, process_index: int = 0, process_count: int = 1,
                            source: Source | None = None,
                            layout: EvalLayout | None = None
                            ) -> tuple[tf.data.Dataset, int]:
  """One clip centred on each annotated test frame (stride `eval.frame_stride`), padded.

  The clip of frame f holds frames f + (p - T // 2) * frame_stride, p = 0..T-1, clamped
  to the video. Returns `(dataset, num_batches)`, the same count on every host.
  """
  spec, source, batch, _, raw = _eval_setup(config, process_index, process_count, source)
  layout = layout or eval_layout(config, process_count, source)
  num_batches = num_batches_for(layout.frame_counts, batch)
  stride = int(config.eval.frame_stride)

  def clips_of(video_id, ex):
    frames = annotated_frames(ex["tube_present"], tf.shape(ex["frames"])[0], stride)
    return tf.data.Dataset.from_tensor_slices(frames).map(lambda f: (video_id, f, ex))

  def make(video_id, frame, ex):
    video_frames = tf.shape(ex["frames"])[0]
    indices = clips_lib.centred_indices(frame, video_frames, spec)
    clip = clips_lib.resize_clip(
        clips_lib.decode_frames(ex["frames"], indices, spec.frame_size), spec.image_size)
    gt_boxes, gt_labels = clips_lib.frame_ground_truth(
        ex["tube_boxes"], ex["tube_present"], ex["tube_labels"], frame, layout.max_boxes)
    return {"clip": tf.ensure_shape(clip, [spec.num_frames, spec.image_size,
                                           spec.image_size, 3]),
            "label": ex["label"], "video_id": tf.cast(video_id, tf.int32),
            "frame": frame, "gt_boxes": gt_boxes, "gt_labels": gt_labels,
            "original_size": ex["original_size"], "valid": tf.constant(True)}

  ds = raw.flat_map(clips_of).map(make, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  return _pad_and_batch(ds, batch, num_batches), num_batches


def num_video_clips(video_frames: int, stride: int) -> int:
  """Clips of the whole-video stream for one video: frames 0, k, 2k, ... and the last."""
  if video_frames <= 0:
    return 0
  return len(range(0, video_frames, stride)) + int((video_frames - 1) % stride != 0)


def video_clip_frames(video_frames: tf.Tensor, stride: int) -> tf.Tensor:
  """Frames (int32) 0, k, 2k, ... plus the last frame, so interpolation reaches the end."""
  frames = tf.range(0, video_frames, stride, dtype=tf.int32)
  last = tf.reshape(video_frames - 1, [1])
  return tf.cond(tf.equal((video_frames - 1) % stride, 0), lambda: frames,
                 lambda: tf.concat([frames, last], 0))


def make_eval_video_dataset(config, *, process_index: int = 0, process_count: int = 1,
                            source: Source | None = None,
                            layout: EvalLayout | None = None
                            ) -> tuple[tf.data.Dataset, int]:
  """Whole annotated test videos: a clip centred on every `eval.tube_frame_stride`-th frame.

  The detections of these clips, interpolated in between, are linked into action tubes
  (video-mAP). Only UCF101-24 videos (with tubes) take part, as in ACT's protocol; only
  the window's frames are decoded, never a whole video. Returns `(dataset,
  num_batches)`, the same count on every host.
  """
  spec, source, batch, _, raw = _eval_setup(config, process_index, process_count, source)
  layout = layout or eval_layout(config, process_count, source)
  num_batches = num_batches_for(layout.video_frame_counts, batch)
  stride = int(config.eval.get("tube_frame_stride", 1))

  def clips_of(video_id, ex):
    frames = video_clip_frames(tf.shape(ex["frames"])[0], stride)
    return tf.data.Dataset.from_tensor_slices(frames).map(lambda f: (video_id, f, ex))

  def make(video_id, frame, ex):
    indices = clips_lib.centred_indices(frame, tf.shape(ex["frames"])[0], spec)
    clip = clips_lib.resize_clip(
        clips_lib.decode_frames(ex["frames"], indices, spec.frame_size), spec.image_size)
    return {"clip": tf.ensure_shape(clip, [spec.num_frames, spec.image_size,
                                           spec.image_size, 3]),
            "video_id": tf.cast(video_id, tf.int32), "frame": frame,
            "valid": tf.constant(True)}

  raw = raw.filter(lambda i, ex: _is_ucf24(ex))
  ds = raw.flat_map(clips_of).map(make, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  return _pad_and_batch(ds, batch, num_batches), num_batches


@dataclasses.dataclass(frozen=True)
class VideoTruth:
  """A test video's ground truth for tube evaluation (boxes normalized corners)."""
  video_id: int
  name: str
  label: int  # the model's label space (ucf24: the first tube's label)
  num_frames: int
  original_size: tuple[int, int]  # (height, width)
  tube_labels: np.ndarray  # (n,) 0..23
  tube_present: np.ndarray  # (n, num_frames) bool
  tube_boxes: np.ndarray  # (n, num_frames, 4) float32


def video_ground_truth(config, source: Source | None = None) -> list[VideoTruth]:
  """Ground truth of the evaluated annotated test videos (every host gets the same list).

  The videos of `make_eval_video_dataset`; one pass, no frame decoded.
  """
  source = source or source_from_config(config.data)
  num_videos = source.num_examples(TEST_SPLIT)
  subset = eval_subset(num_videos, int(config.eval.get("max_videos", 0)))
  ucf24 = only_ucf24(config.data.get("classes", 101))
  keys = ("label", "name", "num_frames", "original_size", "tube_labels", "tube_present",
          "tube_boxes", "annotated")
  ds = _read_videos(source, subset).map(
      lambda i, ex: (i, tf.shape(ex["frames"])[0], {k: ex[k] for k in keys}),
      num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
  out = []
  for index, length, ex in ds.as_numpy_iterator():
    labels = np.asarray(ex["tube_labels"], np.int64)
    if not (ex["annotated"] and len(labels)):
      continue
    out.append(VideoTruth(
        video_id=int(index), name=ex["name"].decode(),
        label=int(labels[0]) if ucf24 else int(ex["label"]), num_frames=int(length),
        original_size=(int(ex["original_size"][0]), int(ex["original_size"][1])),
        tube_labels=labels, tube_present=np.asarray(ex["tube_present"], bool),
        tube_boxes=np.asarray(ex["tube_boxes"], np.float32)))
  return out


# ----------------------------------------------------------------------------- numpy side


class BatchIterator:
  """Numpy batches of a training dataset; counts and logs clips dropped as undecodable."""

  def __init__(self, ds: tf.data.Dataset):
    self._iterator = iter(tfds.as_numpy(ds))
    self.num_skipped = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    skipped = int(batch.pop(SKIPPED_KEY, np.zeros(1)).sum())
    if skipped:
      self.num_skipped += skipped
      logging.warning("Input pipeline dropped %d undecodable clip(s) (%d so far).",
                      skipped, self.num_skipped)
    return batch


def train_iterator(config, *, process_index: int = 0, process_count: int = 1,
                   start_step: int = 0, source: Source | None = None) -> BatchIterator:
  """`make_train_dataset` with the config's global batch and seed, as numpy batches."""
  batch = per_host_batch(int(config.train.batch_size), process_count,
                         "config.train.batch_size")
  return BatchIterator(make_train_dataset(
      config.data, batch_size=batch, seed=int(config.seed), process_index=process_index,
      process_count=process_count, start_step=start_step, source=source))
