"""TFDS builder of any dataset description (JHMDB-21, a user's CVAT or CSV videos): its videos'
frames (files or folders) and tubes stored as the same per-video records as UCF-101's.

The dataset is `<data_dir>/<description.name>/split{N}_{frame_size}/1.0.0`, read by the
streams, evaluation and reports exactly as a UCF-101 build: the record's `original_size`
is each video's own frame size, its `label` the class of most of its boxes, the metadata
holds the class names (`annotated_class_names`), the dataset's name and the split.
"""

from __future__ import annotations

import functools
import os
import re
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report as read_report_lib
from stconsist_jax.data.datasets import split_choice
from stconsist_jax.data.ucf101 import build_report
from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib
from stconsist_jax.data.ucf101 import stored_tubes
from stconsist_jax.data.ucf101 import tfds_builder
from stconsist_jax.data.ucf101 import video_decode

BUILD_VERSION = '1.0.0'
# A dataset's name is its folder in the data dir and `config.data.name`.
NAME_PATTERN = re.compile(r'^[a-z][a-z0-9_]*$')


class FrameInput(NamedTuple):
  """Where one video's frames are: a video file, or a folder of numbered frames."""

  path: str
  kind: str = video_decode.VIDEO_FILE  # video_decode.VIDEO_FILE or FRAME_FOLDER


def check_name(name: str) -> str:
  """`name` if it can name a TFDS dataset folder, else a one-line DataFileError."""
  if not NAME_PATTERN.match(name):
    raise records_lib.DataFileError(
      f'dataset name {name!r} must be lower-case letters, digits and _ (starting with a '
      "letter): it names the dataset's folder and config.data.name"
    )
  if name == tfds_builder.NAME:
    raise records_lib.DataFileError(f'dataset name {name!r} is the UCF-101 builder; choose another')
  return name


def config_name(split: int, frame_size: int, jpeg_quality: int) -> str:
  name = f'split{split}_{frame_size}'
  if jpeg_quality != tfds_builder.DEFAULT_JPEG_QUALITY:
    name += f'_q{jpeg_quality}'
  return name


class DescribedConfig(tfds.core.BuilderConfig):
  """Which split of the description (`split{N}`), and the stored frame size."""

  def __init__(
    self,
    *,
    split: int = 1,
    frame_size: int = 128,
    jpeg_quality: int = tfds_builder.DEFAULT_JPEG_QUALITY,
  ):
    if split < 1:
      raise ValueError(f'split must be >= 1, got {split}')
    if not 8 <= frame_size <= 1024:
      raise ValueError(f'frame_size must be in [8, 1024], got {frame_size}')
    super().__init__(
      name=config_name(split, frame_size, jpeg_quality),
      description=(
        f'split {split}, frames {frame_size}x{frame_size} JPEG (quality {jpeg_quality}).'
      ),
    )
    self.split = split
    self.frame_size = frame_size
    self.jpeg_quality = jpeg_quality


class DescribedDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `DatasetDescription`'s videos with their actor tubes, one example per video.

  Made per dataset by `builder_class(name)` (TFDS names a dataset by its class).
  """

  VERSION = tfds.core.Version(BUILD_VERSION)
  RELEASE_NOTES = {BUILD_VERSION: 'Initial release.'}

  def _log_download_bytes(self) -> None:
    logging.info('Building %s into %s ...', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info('Built %s in %s', self.name, self.data_dir)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    return epath.Path(__file__)

  def __init__(
    self,
    *,
    description: description_lib.DatasetDescription,
    inputs: Mapping[str, FrameInput],
    source: Mapping[str, Any],
    read_report: read_report_lib.ReadReport | None = None,
    unreadable: Mapping[str, str] | None = None,
    num_workers: int | None = None,
    **kwargs,
  ):
    self._description = description
    self._unreadable = dict(unreadable or {})
    self._inputs = dict(inputs)
    self._source = dict(source)
    self._read_report = read_report or read_report_lib.ReadReport()
    self._num_workers = tfds_builder.default_workers() if num_workers is None else num_workers
    self._report = build_report.BuildReport()
    super().__init__(**kwargs)

  @property
  def split_name(self) -> str:
    return f'split{self.builder_config.split}'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds_builder.record_features(
        self.builder_config.frame_size, self._description.class_names
      ),
      supervised_keys=None,
      # Filled while building: `annotated_class_names` (the tube labels' classes, here
      # every class), `dataset`, `split`, `frame_source`, `source`.
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    d = self._description
    split = split_of(d, self.builder_config.split)
    self._report.source = self._source
    self._report.problems = self._read_report.to_dict()
    for name, why in sorted(self._unreadable.items()):  # Found unreadable before the build.
      self._report.skip('probe', name, why, 'video_unreadable')
    used = {t.label for v in d.videos.values() for t in v.tubes}
    self._report.absent_annotated_classes = [
      c for i, c in enumerate(d.class_names) if i not in used
    ]
    self.info.metadata.update(
      annotated_class_names=list(d.class_names),
      dataset=d.name,
      split=self.split_name,
      frame_source=d.frame_source,
      source=self._source,
    )
    return {
      'train': self._generate_examples(split.train, 'train'),
      'test': self._generate_examples(split.test, 'test'),
    }

  def _tasks(self, names: Sequence[str], split: str) -> list[video_decode.DecodeTask]:
    """Decode tasks of the videos that can be written; the others skipped, counted."""
    cfg = self.builder_config
    tasks = []
    for name in names:
      video = self._description.videos[name]
      found = self._inputs.get(name)
      if not video.tubes:
        self._report.skip(split, name, 'no tubes: no class to learn', 'video_without_tubes')
      elif found is None or not os.path.exists(found.path):
        what = 'frames folder' if self._description.frame_source == 'jpeg_folders' else 'video'
        where = found.path if found is not None else f'no {what} named {name!r}'
        self._report.skip(split, name, f'{what} missing: {where}', 'video_missing')
      else:
        tasks.append(
          video_decode.DecodeTask(name, found.path, cfg.frame_size, cfg.jpeg_quality, found.kind)
        )
    return tasks

  def _why_skipped(
    self, decoded: video_decode.DecodedVideo, video: records_lib.AnnotatedVideo
  ) -> tuple[str, str] | None:
    """(reason, kind) of a decoded video that is not written, or None."""
    if decoded.error:
      return decoded.error, 'video_unreadable'
    if (decoded.width, decoded.height) != (video.width, video.height):
      return (
        f'decoded {decoded.width}x{decoded.height} frames, annotated on '
        f'{video.width}x{video.height}: not the annotated video',
        'frame_size_mismatch',
      )
    reason = tfds_builder.check_length(
      decoded.num_frames, video.num_frames, self._report, 'annotated frames'
    )
    return None if reason is None else (reason, 'video_truncated')

  def _generate_examples(self, names: Sequence[str], split: str):
    tasks = self._tasks(names, split)
    start, written = time.time(), 0
    full_name = f'{self.name}/{self.builder_config.name}'
    bar = tqdm.tqdm(
      total=len(tasks), unit='video', desc=f'{full_name} {split}', mininterval=2.0, disable=None
    )
    for decoded in video_decode.decode_all(tasks, self._num_workers):
      bar.update(1)
      video = self._description.videos[decoded.path]
      skipped = self._why_skipped(decoded, video)
      if skipped is not None:
        self._report.skip(split, decoded.path, *skipped)
        continue
      tubes = stored_tubes.tube_arrays(video, decoded.num_frames, decoded.height, decoded.width)
      tfds_builder.note_stored_tubes(tubes, self._report)
      written += 1
      yield decoded.path, record_of(decoded, video, tubes)
    bar.close()
    self._report.videos[split] = written
    tfds_builder.log_split_done(full_name, split, self._report, start)

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs) -> None:
    """TFDS's build (into an incomplete dir, renamed when done) + the build report.

    Raises:
      SourceMismatchError: the dataset exists, built from other annotation files, split
        lists, options or video folder, and `download_config` does not overwrite it.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    existed = self.data_path.exists()
    if existed and not download_config.download_mode.overwrite_dataset:
      why = manual_dir_lib.source_mismatch((self.info.metadata or {}).get('source'), self._source)
      if why is not None:
        raise tfds_builder.SourceMismatchError(
          f'{self.data_dir} already holds {self.name}/{self.builder_config.name} but {why}; '
          'pass --overwrite (build(..., overwrite=True)) to rebuild it, or choose another '
          '--data_dir'
        )
    self._report = build_report.BuildReport()
    super().download_and_prepare(
      download_dir=download_dir, download_config=download_config, **kwargs
    )
    if existed and not self._report.videos:
      return
    tfds_builder.write_report(self.data_dir, self._report)

  @property
  def report(self) -> dict[str, Any]:
    return self._report.to_dict()


def split_of(d: description_lib.DatasetDescription, split: int) -> description_lib.Split:
  """The description's split `split{split}`; a one-line DataFileError if it has none."""
  found = d.splits.get(f'split{split}')
  if found is None:
    raise records_lib.DataFileError(
      f'dataset {d.name!r} has no split{split}: its splits are {", ".join(d.splits) or "none"}'
    )
  return found


def record_of(
  decoded: video_decode.DecodedVideo,
  video: records_lib.AnnotatedVideo,
  tubes: stored_tubes.TubeArrays,
) -> dict[str, Any]:
  """One stored example: frames, the video's class (`split_choice.video_class`), tubes."""
  return {
    'frames': decoded.frames,
    'label': split_choice.video_class(video),
    'name': video.name,
    'num_frames': decoded.num_frames,
    'original_size': np.array([decoded.height, decoded.width], np.int32),
    'annotated': bool(len(tubes.labels)),
    'tube_labels': tubes.labels,
    'tube_boxes': tubes.boxes,
    'tube_present': tubes.present,
  }


@functools.cache
def builder_class(name: str) -> type[DescribedDataset]:
  """The builder class of dataset `name` (not registered with TFDS: read by folder)."""
  check_name(name)
  return types.new_class(
    f'Described_{name}',
    (DescribedDataset,),
    {'skip_registration': True},
    lambda ns: ns.update(name=name, __module__=__name__),
  )


def builder(
  description: description_lib.DatasetDescription,
  inputs: Mapping[str, FrameInput],
  data_dir: str | os.PathLike,
  *,
  split: int = 1,
  frame_size: int = 128,
  jpeg_quality: int = tfds_builder.DEFAULT_JPEG_QUALITY,
  source: Mapping[str, Any] | None = None,
  read_report: read_report_lib.ReadReport | None = None,
  unreadable: Mapping[str, str] | None = None,
  num_workers: int | None = None,
) -> DescribedDataset:
  """The builder of one split of a description at one frame size, into `data_dir`."""
  cls = builder_class(description.name)
  return cls(
    description=description,
    inputs=inputs,
    source=source or {},
    read_report=read_report,
    unreadable=unreadable,
    num_workers=num_workers,
    config=DescribedConfig(split=split, frame_size=frame_size, jpeg_quality=jpeg_quality),
    data_dir=os.fspath(data_dir),
  )
