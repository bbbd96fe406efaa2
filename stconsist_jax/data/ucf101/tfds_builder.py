"""TFDS builder `ucf101_stconsist`: a user's UCF-101 folder -> sharded per-video records.

Frames are decoded with OpenCV in fresh worker processes, squashed to size x size and
stored as JPEG; boxes of every tube, clipped to the frame, come with a presence mask
(docs/DESIGN.md, 2). A build records its source and refuses to pass off another's.
The manual dir's layout and checks are `manual_dir`'s; the command line is
`python tools/build_dataset.py --manual_dir DIR --split 1 --frame_size 128`.

Over 400 lines as one job: the builder class, its configs, the report it writes and the
safe rebuild around it change together.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import time
from typing import Any, NamedTuple
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
from stconsist_jax.data.ucf101 import video_decode

NAME = 'ucf101_stconsist'
FRAME_SIZES = (128, 64, 32)
REPORT_FILE = 'build_report.json'
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


@dataclasses.dataclass
class BuildReport:
  """What a build skipped and why, and how fast it went."""

  skipped: dict[str, list[dict[str, str]]] = dataclasses.field(
    default_factory=lambda: collections.defaultdict(list)
  )
  videos: dict[str, int] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  problems: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
  absent_annotated_classes: list[str] = dataclasses.field(default_factory=list)
  source: dict[str, Any] = dataclasses.field(default_factory=dict)

  def skip(self, split: str, path: str, reason: str) -> None:
    logging.warning('skipping %s (%s): %s', path, split, reason)
    self.skipped[split].append({'video': path, 'reason': reason})

  def to_dict(self) -> dict[str, Any]:
    return {
      'videos_written': dict(self.videos),
      'videos_skipped': {k: len(v) for k, v in self.skipped.items()},
      'skipped': dict(self.skipped),
      'seconds': dict(self.seconds),
      'videos_per_second': {
        k: self.videos[k] / max(self.seconds[k], 1e-9) for k in self.videos if k in self.seconds
      },
      'annotation_problems': self.problems,
      # Counts of what the build changed or dropped: `truncated_videos_skipped`,
      # `videos_short_of_expected_frames` (kept), `boxes_clipped_to_frame`,
      # `empty_boxes_dropped`, `boxes_beyond_decoded_frames`.
      'notes': dict(self.notes),
      # Annotated classes of the label space without any tube in this folder.
      'annotated_classes_without_tubes': list(self.absent_annotated_classes),
      'source': dict(self.source),
    }


def _default_workers() -> int:
  return max(1, min(os.cpu_count() or 1, 16))


class TubeArrays(NamedTuple):
  """A video's tubes as stored, and how many boxes storing them changed or dropped."""

  labels: np.ndarray  # int32 (k,)
  boxes: np.ndarray  # float32 (k, n, 4): normalized corners, zeros where absent
  present: np.ndarray  # bool (k, n)
  beyond_video: int  # boxes on frames the video does not have
  clipped: int  # boxes partly outside the frame, clipped to it
  empty: int  # boxes empty once clipped (zero width or height, or off the frame)


def clip_boxes(
  boxes: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(corner boxes clipped to the frame, which changed, which are empty after it)."""
  clipped = np.clip(boxes, 0, np.array([width, height, width, height], np.float64))
  changed = np.any(clipped != boxes, axis=-1)
  empty = (clipped[..., 2] <= clipped[..., 0]) | (clipped[..., 3] <= clipped[..., 1])
  return clipped, changed, empty


def tube_arrays(
  record: records_lib.VideoRecord | None, num_frames: int, height: int, width: int
) -> TubeArrays:
  """Tubes -> stored arrays: boxes clipped to the frame, empty ones not present."""
  tubes = record.tubes if record is not None else ()
  labels = np.array([t.label for t in tubes], np.int32)
  boxes = np.zeros((len(tubes), num_frames, 4), np.float32)
  present = np.zeros((len(tubes), num_frames), bool)
  scale = np.array([width, height, width, height], np.float64)
  beyond = clipped_count = empty_count = 0
  for k, t in enumerate(tubes):
    lo, hi = max(t.start, 0), min(t.end, num_frames)
    beyond += t.num_boxes - max(hi - lo, 0)
    if hi <= lo:
      continue
    clipped, changed, empty = clip_boxes(t.boxes[lo - t.start : hi - t.start], height, width)
    clipped_count += int(np.sum(changed & ~empty))
    empty_count += int(np.sum(empty))
    keep = ~empty
    boxes[k, lo:hi][keep] = clipped[keep] / scale
    present[k, lo:hi] = keep
  return TubeArrays(labels, boxes, present, beyond, clipped_count, empty_count)


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
    self._num_workers = _default_workers() if num_workers is None else num_workers
    self._report = BuildReport()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.frame_size
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'frames': tfds.features.Sequence(
            tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg')
          ),
          'label': tfds.features.ClassLabel(names=self.builder_config.class_names),
          'name': tfds.features.Text(),
          'num_frames': np.int32,
          'original_size': tfds.features.Tensor(shape=(2,), dtype=np.int32),
          'annotated': np.bool_,
          'tube_labels': tfds.features.Tensor(shape=(None,), dtype=np.int32),
          'tube_boxes': tfds.features.Tensor(
            shape=(None, None, 4), dtype=np.float32, encoding='zlib'
          ),
          'tube_present': tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding='zlib'),
        }
      ),
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
    if video.num_frames >= expected:
      return None
    if video.num_frames < MIN_FRAME_FRACTION * expected:
      self._report.notes['truncated_videos_skipped'] += 1
      of_what = 'annotated frames' if record is not None else 'frames in its header'
      return f'truncated: decoded {video.num_frames} of {expected} {of_what}'
    self._report.notes['videos_short_of_expected_frames'] += 1
    return None

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
        self._report.skip(split, p, f'video file missing: {p}.avi')
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
        self._report.skip(split, video.path, reason)
        continue
      tubes = tube_arrays(record, video.num_frames, video.height, video.width)
      for note, count in (
        ('boxes_beyond_decoded_frames', tubes.beyond_video),
        ('boxes_clipped_to_frame', tubes.clipped),
        ('empty_boxes_dropped', tubes.empty),
      ):
        if count:
          self._report.notes[note] += count
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
    seconds = time.time() - start
    self._report.videos[split] = written
    self._report.seconds[split] = seconds
    logging.info(
      '%s %s: %d videos in %.1f s (%.2f videos/s), %d skipped',
      cfg.name,
      split,
      written,
      seconds,
      written / max(seconds, 1e-9),
      len(self._report.skipped.get(split, [])),
    )

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
    self._report = BuildReport()
    super().download_and_prepare(
      download_dir=download_dir, download_config=download_config, **kwargs
    )
    if existed and not self._report.videos:
      return
    report = self._report.to_dict()
    path = fileio.as_path(self.data_dir) / REPORT_FILE
    fileio.atomic_write(path, json.dumps(report, indent=1))
    logging.info(
      'build report %s: written %s, skipped %s, videos/s %s',
      path,
      report['videos_written'],
      report['videos_skipped'],
      {k: round(v, 2) for k, v in report['videos_per_second'].items()},
    )

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


def _replaced_path(data_path: epath.Path) -> epath.Path:
  return data_path.parent / f'.{data_path.name}.replaced'


def _recover_replaced(data_path: epath.Path) -> bool:
  """Finishes a rebuild that was interrupted; True if it restored the old build."""
  aside = _replaced_path(data_path)
  if not aside.exists():
    return False
  if data_path.exists():  # The new build was complete: drop the old one.
    aside.rmtree()
    return False
  logging.warning('restoring %s, set aside by an interrupted rebuild', data_path)
  fileio.move_tree(aside, data_path)
  return True


def remove_incomplete(data_path: epath.Path) -> list[epath.Path]:
  """Removes what killed builds of `data_path` left: TFDS's `incomplete.*` folders.

  TFDS builds into `incomplete.<random>_<version>` beside the version folder and renames
  it when done; a killed build leaves it for good. One log line names those removed.
  Two builds of the same target at once are not supported (each would remove the
  other's folder).
  """
  parent = data_path.parent
  stale = sorted(parent.glob(f'incomplete.*_{data_path.name}')) if parent.exists() else []
  for path in stale:
    path.rmtree()
  if stale:
    logging.warning(
      'removed %d incomplete folder(s) of earlier interrupted builds of %s: %s',
      len(stale),
      data_path,
      ', '.join(p.name for p in stale),
    )
  return stale


def build(
  manual_dir: str | os.PathLike,
  data_dir: str | os.PathLike,
  split: int = 1,
  frame_size: int = 128,
  num_workers: int | None = None,
  jpeg_quality: int = DEFAULT_JPEG_QUALITY,
  overwrite: bool = False,
) -> Ucf101Stconsist:
  """Builds (split, frame_size) from `manual_dir` into `data_dir`; returns the builder.

  An existing build of the same source is reused. One of another source is refused
  (SourceMismatchError) unless `overwrite`, which rebuilds it; the old build stays in
  place until the new one is complete. What killed builds of this target left behind
  is removed first (`remove_incomplete`).

  Raises:
    manual_dir_lib.ManualDirError, SourceMismatchError, records.DataFileError:
      `errors.UserError`, each with a one-line message.
  """
  annotation_file = manual_dir_lib.check_manual_dir(manual_dir, split)
  cfg = make_config(split, frame_size, manual_dir=manual_dir, jpeg_quality=jpeg_quality)
  # Unusable inputs fail here, before anything is written.
  manual_dir_lib.load_records(annotation_file, cfg.class_names)
  split_lists.official_split(pathlib.Path(manual_dir) / 'ucfTrainTestlist', split)
  b = builder(cfg, data_dir, num_workers)
  if _recover_replaced(b.data_path):
    b = builder(cfg, data_dir, num_workers)
  remove_incomplete(b.data_path)
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  # TFDS's own bars (splits, shuffling) repeat what the builder's bar and log lines say.
  tfds.display_progress_bar(False)
  if not (overwrite and b.data_path.exists()):
    b.download_and_prepare(download_config=download_config)
    return b
  aside = _replaced_path(b.data_path)
  fileio.move_tree(b.data_path, aside)
  try:
    b = builder(cfg, data_dir, num_workers)
    b.download_and_prepare(download_config=download_config)
  except BaseException:
    if b.data_path.exists():  # Complete but its report failed: keep the old build.
      b.data_path.rmtree()
    fileio.move_tree(aside, b.data_path)
    raise
  aside.rmtree()
  return b


def read_report(builder_or_dir: Ucf101Stconsist | str | os.PathLike) -> dict[str, Any]:
  d = builder_or_dir.data_dir if isinstance(builder_or_dir, Ucf101Stconsist) else builder_or_dir
  return json.loads((fileio.as_path(d) / REPORT_FILE).read_text())
