"""TFDS builder `ucf101_stconsist` and its configs: a user's UCF-101 folder -> sharded per-video
records of JPEG frames and clipped tubes with presence masks (docs/DESIGN.md, 2).
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any
from collections.abc import Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import split_lists
from stconsist_jax.data.ucf101 import videos
from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib
from stconsist_jax.data.ucf101 import build_report
from stconsist_jax.data.ucf101 import stored_tubes
from stconsist_jax.data.ucf101 import video_decode

NAME = 'ucf101_stconsist'
FRAME_SIZES = (128, 64, 32)
DEFAULT_JPEG_QUALITY = 90
# A video decoding to fewer than this fraction of its expected frame count (annotated,
# else announced by its header) is truncated and skipped.
MIN_FRAME_FRACTION = 0.9


class SourceMismatchError(errors.UserError, FileExistsError):
  """The data dir already holds this config built from another source (one line)."""


class Ucf101StconsistConfig(tfds.core.BuilderConfig):
  """Which official split, and the stored frame size."""

  def __init__(
    self,
    *,
    split: int = 1,
    frame_size: int = 128,
    class_names: Sequence[str] = classes.UCF101_CLASSES,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    name: str | None = None,
    **kwargs,
  ):
    if split not in (1, 2, 3):
      raise ValueError(f'split must be 1, 2 or 3, got {split}')
    if not 8 <= frame_size <= 1024:
      raise ValueError(f'frame_size must be in [8, 1024], got {frame_size}')
    if name is None:
      name = f'split{split}_{frame_size}'
      if tuple(class_names) != classes.UCF101_CLASSES:
        name += f'_c{len(class_names)}'
      if jpeg_quality != DEFAULT_JPEG_QUALITY:
        name += f'_q{jpeg_quality}'
    super().__init__(
      name=name,
      description=(
        f'UCF-101 split {split}, frames {frame_size}x{frame_size} JPEG '
        f'(quality {jpeg_quality}), {len(class_names)} classes.'
      ),
      **kwargs,
    )
    self.split = split
    self.frame_size = frame_size
    self.class_names = tuple(class_names)
    self.jpeg_quality = jpeg_quality


def registered_config(split: int, frame_size: int) -> Ucf101StconsistConfig | None:
  """The registered `split{split}_{frame_size}` config, or None."""
  name = f'split{split}_{frame_size}'
  return next((c for c in Ucf101Stconsist.BUILDER_CONFIGS if c.name == name), None)


def make_config(
  split: int = 1,
  frame_size: int = 128,
  class_names: Sequence[str] | None = None,
  manual_dir: str | os.PathLike | None = None,
  jpeg_quality: int = DEFAULT_JPEG_QUALITY,
  **kwargs,
) -> Ucf101StconsistConfig:
  """The config of (split, frame size); classes from `manual_dir`'s classInd.txt.

  The registered config itself when it fits (the 101 UCF-101 classes, a registered
  size, default JPEG quality): TFDS refuses a custom config under a registered name.
  """
  if class_names is None and manual_dir is not None:
    class_names = split_lists.read_class_index(
      pathlib.Path(manual_dir) / 'ucfTrainTestlist' / 'classInd.txt'
    )
  class_names = tuple(class_names or classes.UCF101_CLASSES)
  registered = registered_config(split, frame_size)
  if (
    registered is not None
    and class_names == registered.class_names
    and jpeg_quality == registered.jpeg_quality
    and not kwargs
  ):
    return registered
  return Ucf101StconsistConfig(
    split=split, frame_size=frame_size, class_names=class_names, jpeg_quality=jpeg_quality, **kwargs
  )


def default_workers() -> int:
  """Decoding processes of a build by default: the CPU count, at most 16."""
  return max(1, min(os.cpu_count() or 1, 16))


def record_features(frame_size: int, class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """The features of one stored video (one example), whatever the dataset (DESIGN.md 2)."""
  size = frame_size
  return tfds.features.FeaturesDict(
    {
      'frames': tfds.features.Sequence(
        tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg')
      ),
      'label': tfds.features.ClassLabel(names=list(class_names)),
      'name': tfds.features.Text(),
      'num_frames': np.int32,
      'original_size': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'annotated': np.bool_,
      'tube_labels': tfds.features.Tensor(shape=(None,), dtype=np.int32),
      'tube_boxes': tfds.features.Tensor(shape=(None, None, 4), dtype=np.float32, encoding='zlib'),
      'tube_present': tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding='zlib'),
    }
  )


def check_length(
  decoded: int, expected: int, report: build_report.BuildReport, of_what: str
) -> str | None:
  """Why a video that decoded to `decoded` of `expected` frames is skipped, or None.

  Under MIN_FRAME_FRACTION of them it is truncated; short of them it is kept (counted).
  """
  if decoded >= expected:
    return None
  if decoded < MIN_FRAME_FRACTION * expected:
    report.notes['truncated_videos_skipped'] += 1
    return f'truncated: decoded {decoded} of {expected} {of_what}'
  report.notes['videos_short_of_expected_frames'] += 1
  return None


def note_stored_tubes(tubes: stored_tubes.TubeArrays, report: build_report.BuildReport) -> None:
  """Counts the boxes that storing a video's tubes changed or dropped."""
  for note, count in (
    ('boxes_beyond_decoded_frames', tubes.beyond_video),
    ('boxes_clipped_to_frame', tubes.clipped),
    ('empty_boxes_dropped', tubes.empty),
  ):
    if count:
      report.notes[note] += count


def log_split_done(name: str, split: str, report: build_report.BuildReport, start: float) -> None:
  """Records a split's written count and time in the report, and logs its speed."""
  seconds = time.time() - start
  written = report.videos.get(split, 0)
  report.seconds[split] = seconds
  logging.info(
    '%s %s: %d videos in %.1f s (%.2f videos/s), %d skipped',
    name,
    split,
    written,
    seconds,
    written / max(seconds, 1e-9),
    len(report.skipped.get(split, [])),
  )


def write_report(data_dir: Any, report: build_report.BuildReport) -> None:
  """Writes `build_report.json` into the built version folder and logs its summary."""
  out = report.to_dict()
  path = fileio.as_path(data_dir) / build_report.REPORT_FILE
  fileio.atomic_write(path, json.dumps(out, indent=1))
  logging.info(
    'build report %s: written %s, skipped %s, videos/s %s',
    path,
    out['videos_written'],
    out['videos_skipped'],
    {k: round(v, 2) for k, v in out['videos_per_second'].items()},
  )


class Ucf101Stconsist(tfds.core.GeneratorBasedBuilder):
  """UCF-101 videos with UCF101-24 actor tubes, one example per video."""

  # TFDS prints these two notices to stdout in bold whatever the log level; here they
  # are log lines like the rest of the build's progress.
  def _log_download_bytes(self) -> None:
    logging.info('Building %s into %s ...', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info('Built %s in %s', self.name, self.data_dir)

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_dir_lib.INSTRUCTIONS
  BUILDER_CONFIGS = [
    Ucf101StconsistConfig(split=s, frame_size=f) for f in FRAME_SIZES for s in (1, 2, 3)
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'split1_128'

  # TFDS derives this from the package via `importlib_resources`, a module that
  # tensorflow-datasets 4.9 imports without declaring it; this file is the answer anyway.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pylint: disable=no-self-argument
    return epath.Path(__file__)

  def __init__(self, *, num_workers: int | None = None, **kwargs):
    self._num_workers = default_workers() if num_workers is None else num_workers
    self._report = build_report.BuildReport()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=record_features(self.builder_config.frame_size, self.builder_config.class_names),
      supervised_keys=None,
      # Filled while building: `annotated_class_names`, the class of each 24-way
      # tube label in label order (UCF101-24's own order for the real data).
      metadata=tfds.core.MetadataDict(),
      homepage='https://www.crcv.ucf.edu/data/UCF101.php',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    list_dir = manual_dir / 'ucfTrainTestlist'
    split = self.builder_config.split
    try:
      annotation_file = manual_dir_lib.check_manual_dir(manual_dir, split)
    except manual_dir_lib.ManualDirError as e:
      raise manual_dir_lib.ManualDirError(f'{e}\n{manual_dir_lib.INSTRUCTIONS}') from None
    class_names = split_lists.read_class_index(list_dir / 'classInd.txt')
    if class_names != self.builder_config.class_names:
      raise records_lib.DataFileError(
        f'{list_dir / "classInd.txt"} lists {len(class_names)} classes that differ from '
        f'the {len(self.builder_config.class_names)} of config '
        f'{self.builder_config.name!r}; build with make_config(manual_dir=...)'
      )
    records, label_names = manual_dir_lib.load_records(annotation_file, class_names)
    used = {r.class_name for r in records.values() if r.tubes}
    self._report.absent_annotated_classes = [c for c in label_names if c not in used]
    if self._report.absent_annotated_classes:
      logging.info(
        'annotated classes without tubes in %s: %s',
        annotation_file,
        ', '.join(self._report.absent_annotated_classes),
      )
    self._report.source = manual_dir_lib.source_of(manual_dir, split)
    self.info.metadata['annotated_class_names'] = label_names
    self.info.metadata['source'] = self._report.source
    train, test = split_lists.official_split(list_dir, split)
    problems = manual_dir_lib.validate(
      records, listed=train + test, video_dir=manual_dir / 'UCF-101'
    )
    self._report.problems = problems.to_dict()
    if not problems.ok:
      logging.warning('annotation problems:\n%s', problems.summary())
    return {
      'train': self._generate_examples(manual_dir, train, records, 'train'),
      'test': self._generate_examples(manual_dir, test, records, 'test'),
    }

  def _check_decoded(
    self, video: video_decode.DecodedVideo, record: records_lib.VideoRecord | None
  ) -> str | None:
    """Why a decoded video is skipped (None: it is kept), counting short ones.

    A video should decode to its annotated frame count or, without annotations, the
    count its header announces: under 90% of it, it is truncated and skipped (with
    or without boxes alike); between 90% and 100%, kept with the frames it has.
    """
    if video.error:
      return video.error
    expected = record.num_frames if record is not None else video.header_frames
    of_what = 'annotated frames' if record is not None else 'frames in its header'
    return check_length(video.num_frames, expected, self._report, of_what)

  def _generate_examples(
    self,
    manual_dir: pathlib.Path,
    paths: Sequence[str],
    records: Mapping[str, records_lib.VideoRecord],
    split: str,
  ):
    cfg = self.builder_config
    index = {c: i for i, c in enumerate(cfg.class_names)}
    annotated_classes = {r.class_name for r in records.values() if r.tubes}
    tasks = []
    for p in paths:
      file = manual_dir / 'UCF-101' / f'{p}.avi'
      if videos.class_of(p) not in index:
        self._report.skip(split, p, f'class {videos.class_of(p)!r} not in classInd.txt')
      elif not file.is_file():
        self._report.skip(split, p, f'video file missing: {p}.avi', 'video_missing')
      else:
        tasks.append(video_decode.DecodeTask(p, str(file), cfg.frame_size, cfg.jpeg_quality))
    start, written = time.time(), 0
    bar = tqdm.tqdm(
      total=len(tasks), unit='video', desc=f'{cfg.name} {split}', mininterval=2.0, disable=None
    )  # None: shown on a terminal only
    for video in video_decode.decode_all(tasks, self._num_workers):
      bar.update(1)
      record = records.get(video.path)
      reason = self._check_decoded(video, record)
      if reason is not None:
        kind = 'video_unreadable' if video.error else 'video_truncated'
        self._report.skip(split, video.path, reason, kind)
        continue
      tubes = stored_tubes.tube_arrays(record, video.num_frames, video.height, video.width)
      note_stored_tubes(tubes, self._report)
      written += 1
      yield (
        video.path,
        {
          'frames': video.frames,
          'label': index[videos.class_of(video.path)],
          'name': video.path,
          'num_frames': video.num_frames,
          'original_size': np.array([video.height, video.width], np.int32),
          'annotated': bool(
            videos.class_of(video.path) in annotated_classes and len(tubes.labels) > 0
          ),
          'tube_labels': tubes.labels,
          'tube_boxes': tubes.boxes,
          'tube_present': tubes.present,
        },
      )
    bar.close()
    self._report.videos[split] = written
    log_split_done(cfg.name, split, self._report, start)

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs) -> None:
    """TFDS's build (into an incomplete dir, renamed when done) + the build report.

    Raises:
      SourceMismatchError: the dataset exists, built from another manual dir or other
        annotation / list files than `download_config.manual_dir` holds.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    existed = self.data_path.exists()
    if (
      existed and download_config.manual_dir and not download_config.download_mode.overwrite_dataset
    ):
      self._check_source(download_config.manual_dir)
    self._report = build_report.BuildReport()
    super().download_and_prepare(
      download_dir=download_dir, download_config=download_config, **kwargs
    )
    if existed and not self._report.videos:
      return
    write_report(self.data_dir, self._report)

  def _check_source(self, manual_dir: str | os.PathLike) -> None:
    """Raises SourceMismatchError unless the existing build was made from `manual_dir`."""
    recorded = (self.info.metadata or {}).get('source')
    why = manual_dir_lib.source_mismatch(
      recorded, manual_dir_lib.source_of(manual_dir, self.builder_config.split)
    )
    if why is not None:
      raise SourceMismatchError(
        f'{self.data_dir} already holds {self.builder_config.name} but {why}, so it is '
        f'not a build of {pathlib.Path(manual_dir).absolute()}; pass --overwrite '
        '(build(..., overwrite=True)) to rebuild it, or choose another --data_dir'
      )

  @property
  def report(self) -> dict[str, Any]:
    return self._report.to_dict()


def builder(
  config: str | Ucf101StconsistConfig = 'split1_128',
  data_dir: str | os.PathLike | None = None,
  num_workers: int | None = None,
) -> Ucf101Stconsist:
  return Ucf101Stconsist(config=config, data_dir=data_dir, num_workers=num_workers)


def read_report(builder_or_dir: tfds.core.DatasetBuilder | str | os.PathLike) -> dict[str, Any]:
  """The `build_report.json` of a build (its builder, or its version folder)."""
  d = getattr(builder_or_dir, 'data_dir', builder_or_dir)
  return json.loads((fileio.as_path(d) / build_report.REPORT_FILE).read_text())
