"""Where the streams' videos come from: TFDS records or in-memory dicts, one share per host.

Also which videos and labels `data.classes` selects, and the names of those labels.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Protocol
from collections.abc import Callable, Sequence

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_parser

from stconsist_jax.core import fileio
from stconsist_jax.data import records as records_lib

AUTOTUNE = tf.data.AUTOTUNE
TFRECORD_BUFFER_BYTES = 256 * 1024  # TensorFlow's default, named so it is not logged
TRAIN_SPLIT = 'train'
TEST_SPLIT = 'test'
SYNTHETIC_ALIAS = 'synthetic'
DEFAULT_NAME = 'ucf101_stconsist'

# The raw per-video element every source yields (frames still JPEG-encoded).
RAW_SIGNATURE = {
  'frames': tf.TensorSpec([None], tf.string),
  'label': tf.TensorSpec([], tf.int32),
  'name': tf.TensorSpec([], tf.string),
  'num_frames': tf.TensorSpec([], tf.int32),
  'annotated': tf.TensorSpec([], tf.bool),
  'tube_labels': tf.TensorSpec([None], tf.int32),
  'tube_boxes': tf.TensorSpec([None, None, 4], tf.float32),
  'tube_present': tf.TensorSpec([None, None], tf.bool),
  'original_size': tf.TensorSpec([2], tf.int32),  # (height, width) of the source video
}
# Fields a test or tool may leave out of an in-memory record.
RAW_DEFAULTS = {'original_size': (240, 320)}


class Source(Protocol):
  """Where videos come from: a split's size and a contiguous range of its raw records."""

  def num_examples(self, split: str) -> int: ...

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

  def __init__(
    self, name: str, data_dir: str | None = None, builder: tfds.core.DatasetBuilder | None = None
  ):
    self.builder = builder or _find_builder(name, data_dir)
    self._features = self.builder.info.features
    missing = set(RAW_SIGNATURE) - set(self._features.keys())
    if missing:
      raise records_lib.DataFileError(
        f'TFDS dataset {self.builder.info.full_name} lacks the features '
        f'{sorted(missing)} that the pipeline reads (docs/DESIGN.md 2)'
      )
    self._parser = example_parser.ExampleParser(self._features.get_serialized_info())

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples

  def read(self, split: str, start: int, end: int) -> tf.data.Dataset:
    if end <= start:
      return self.read(split, 0, 1).take(0)
    parts = []
    for file in self.builder.info.splits[f'{split}[{start}:{end}]'].file_instructions:
      path = file.filename  # TFDS may give the full path, a bucket URL included.
      if not (fileio.is_remote(path) or os.path.isabs(path)):
        path = os.path.join(self.builder.data_dir, path)
      part = tf.data.TFRecordDataset(path, buffer_size=TFRECORD_BUFFER_BYTES)
      part = part.skip(file.skip)
      parts.append(part.take(file.take) if file.take is not None and file.take >= 0 else part)
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
    return ds.map(graph_fn(self._parse), num_parallel_calls=AUTOTUNE, deterministic=True)

  def _parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    parsed = self._parser.parse_example(serialized)
    example = {'frames': parsed['frames']}  # the JPEG strings, as stored
    for key in RAW_SIGNATURE:
      if key != 'frames':
        example[key] = self._features[key].decode_example(parsed[key])
    return normalize_raw(example)


def _prepared_dir(config_dir: epath.Path) -> epath.Path | None:
  """The newest built version folder under a config folder, if any."""
  versions = [d for d in config_dir.glob('*') if (d / 'dataset_info.json').exists()]
  if not versions:
    return None
  return max(versions, key=lambda d: tuple(int(x) for x in d.name.split('.') if x.isdigit()))


def _find_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  if data_dir:
    config_dir = fileio.as_path(data_dir).joinpath(*name.split('/'))
    found = _prepared_dir(config_dir)
    if found is None and '/' in name:
      # Builds with a class list other than UCF-101's are named `<config>_c<classes>`.
      variants = [
        d for d in sorted(config_dir.parent.glob(config_dir.name + '_c*')) if _prepared_dir(d)
      ]
      if len(variants) > 1:
        raise records_lib.DataFileError(
          f'several builds match {name!r} in {data_dir}: '
          f'{[d.name for d in variants]}; name one in config.data.name'
        )
      found = _prepared_dir(variants[0]) if variants else None
    if found is not None:
      return tfds.builder_from_directory(os.fspath(found))
  # Registers the builder class so that `tfds.builder` finds it by name.
  from stconsist_jax.data.ucf101 import tfds_builder  # noqa: F401  pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as e:  # DatasetNotFoundError (a ValueError), or an unknown config
    raise FileNotFoundError(f'TFDS dataset {name!r} not found (data_dir={data_dir!r}): {e}') from e
  if not builder.is_prepared():
    raise FileNotFoundError(
      f'TFDS dataset {name!r} is not built in {builder.data_dir}; '
      f'build it first (tools/build_dataset.py)'
    )
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
        yield {
          key: np.asarray(
            example[key] if key in example else RAW_DEFAULTS[key], spec.dtype.as_numpy_dtype
          )
          for key, spec in RAW_SIGNATURE.items()
        }

    return tf.data.Dataset.from_generator(generate, output_signature=RAW_SIGNATURE)


def tfds_name(data_config) -> str:
  """`data.name` as TFDS knows it: `name/split{split}_{frame_size}` unless it has a `/`."""
  name = DEFAULT_NAME if data_config.name == SYNTHETIC_ALIAS else data_config.name
  if '/' in name:
    return name
  return f'{name}/split{data_config.split}_{data_config.frame_size}'


def source_from_config(data_config) -> Source:
  return TfdsSource(tfds_name(data_config), data_config.data_dir or None)


def host_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """The contiguous share `[start, end)` of a split read by one host (sizes differ by <= 1)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, {process_count}), got {process_index}')
  return (
    num_examples * process_index // process_count,
    num_examples * (process_index + 1) // process_count,
  )


def per_host_batch(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(
      f'{what}={global_batch} must be divisible by the number of hosts ({process_count})'
    )
  return global_batch // process_count


def graph_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` for a tf.data transformation, traced as written: no AutoGraph conversion.

  The streams' functions write their control flow with TF ops (`tf.cond`, `tf.where`), so
  AutoGraph has nothing to convert. Converting them anyway took about a tenth of the test
  suite's CPU time (a sampling profile), and seconds at the start of every stream.
  """
  return tf.autograph.experimental.do_not_convert(fn)


def with_stream_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """The options every stream runs under: deterministic, one thread per op, no autotuning.

  Without autotuning, `AUTOTUNE` parallelism is the host's core count. With it, deleting
  an iterator waits for its autotuning thread, which can be in a sleep of up to 60 s
  (tf.data 2.21): at the end of training the thread woke at the deletion and slept again
  for 17 s ("Waiting for 17017 ms" in tf.data's log), the cores idle. The input benchmark
  is as fast without it (docs/pipeline.md).
  """
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  options.experimental_optimization.map_parallelization = True
  # Parallelism across elements only: intra-op threads compete with the map workers.
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


# ----------------------------------------------------------------------------- classes


def is_ucf24(ex: dict[str, tf.Tensor]) -> tf.Tensor:
  """Whether a video belongs to the annotated (UCF101-24) videos: annotated, with tubes."""
  return tf.logical_and(ex['annotated'], tf.shape(ex['tube_labels'])[0] > 0)


def select_classes(ds: tf.data.Dataset, classes: str) -> tf.data.Dataset:
  """The videos `data.classes` keeps, labelled in its label space.

  'all': every video with its dataset label; 'ucf24': the annotated videos, labelled
  with tube 0's 24-way label. Elements are example dicts or `(index, example)` pairs.
  """
  if classes == 'all':
    return ds

  def relabel(*element):
    *index, ex = element
    ex = {**ex, 'label': tf.cast(ex['tube_labels'][0], tf.int32)}
    return (*index, ex) if index else ex

  return ds.filter(graph_fn(lambda *element: is_ucf24(element[-1]))).map(graph_fn(relabel))


def label_names(data_config, source: Source | None = None) -> list[str]:
  """Names of the labels the streams yield, in label order.

  Every class of the dataset (`classes='all'`), or the annotated classes in tube-label
  order (`classes='ucf24'`), as the TFDS build recorded them.
  """
  source = source or source_from_config(data_config)
  builder = getattr(source, 'builder', None)
  if builder is None:
    raise ValueError(
      f'the data source {type(source).__name__} has no TFDS builder to read class names from'
    )
  if data_config.classes == 'ucf24':
    names = (builder.info.metadata or {}).get('annotated_class_names')
    if not names:
      raise records_lib.DataFileError(
        f'{builder.info.full_name} records no annotated class names '
        '(built before they were recorded?); rebuild it'
      )
    return list(names)
  return list(builder.info.features['label'].names)
