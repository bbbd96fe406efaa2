"""TFDS builder `ucf101_stconsist`: a user's UCF-101 folder -> sharded per-video records.

Frames are decoded with OpenCV in fresh worker processes, squashed to size x size and
stored as JPEG; boxes of every tube come with a presence mask (docs/DESIGN.md, 2).

Manual dir layout: `UCF-101/<Class>/*.avi`, `ucfTrainTestlist/` (classInd.txt,
trainlist0N.txt, testlist0N.txt) and `pyannot.pkl` or `UCF101v2-GT.pkl`.

  tfds build stconsist_jax/data/ucf101_stconsist --manual_dir DIR --config split1_128
  python tools/build_dataset.py --manual_dir DIR --split 1 --frame_size 128
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import time
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from stconsist_jax import fileio
from stconsist_jax.data import annotations as ann
from stconsist_jax.data import video_decode

NAME = "ucf101_stconsist"
FRAME_SIZES = (128, 64, 32)
ANNOTATION_FILES = ("pyannot.pkl", "UCF101v2-GT.pkl")
REPORT_FILE = "build_report.json"
# A video decoding to fewer than this fraction of its annotated frame count is truncated.
MIN_FRAME_FRACTION = 0.9

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download UCF-101 (https://www.crcv.ucf.edu/data/UCF101.php): the videos `UCF101.rar`
and the split lists `UCF101TrainTestSplits-RecognitionTask.zip`, and a UCF101-24
annotation pickle: `pyannot.pkl` (github.com/gurkirt/corrected-UCF101-Annots) or
`UCF101v2-GT.pkl` (ACT / MOC detectors). Arrange them in the manual dir as:

  <manual_dir>/UCF-101/<Class>/v_<Class>_gGG_cCC.avi
  <manual_dir>/ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt
  <manual_dir>/pyannot.pkl   (or UCF101v2-GT.pkl)
"""


class Ucf101StconsistConfig(tfds.core.BuilderConfig):
  """Which official split, and the stored frame size."""

  def __init__(self, *, split: int = 1, frame_size: int = 128,
               class_names: Sequence[str] = ann.UCF101_CLASSES,
               jpeg_quality: int = 90, name: str | None = None, **kwargs):
    if split not in (1, 2, 3):
      raise ValueError(f"split must be 1, 2 or 3, got {split}")
    if not 8 <= frame_size <= 1024:
      raise ValueError(f"frame_size must be in [8, 1024], got {frame_size}")
    if name is None:
      name = f"split{split}_{frame_size}"
      if tuple(class_names) != ann.UCF101_CLASSES:
        name += f"_c{len(class_names)}"
    super().__init__(
        name=name,
        description=(f"UCF-101 split {split}, frames {frame_size}x{frame_size} JPEG "
                     f"(quality {jpeg_quality}), {len(class_names)} classes."),
        **kwargs)
    self.split = split
    self.frame_size = frame_size
    self.class_names = tuple(class_names)
    self.jpeg_quality = jpeg_quality


def make_config(split: int = 1, frame_size: int = 128,
                class_names: Sequence[str] | None = None,
                manual_dir: str | os.PathLike | None = None,
                **kwargs) -> Ucf101StconsistConfig:
  """A config for any (split, frame size); classes from `manual_dir`'s classInd.txt."""
  if class_names is None and manual_dir is not None:
    class_names = ann.read_class_index(
        pathlib.Path(manual_dir) / "ucfTrainTestlist" / "classInd.txt")
  return Ucf101StconsistConfig(split=split, frame_size=frame_size,
                               class_names=class_names or ann.UCF101_CLASSES, **kwargs)


@dataclasses.dataclass
class BuildReport:
  """What a build skipped and why, and how fast it went."""
  skipped: dict[str, list[dict[str, str]]] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(list))
  videos: dict[str, int] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  problems: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: dict[str, int] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(int))

  def skip(self, split: str, path: str, reason: str) -> None:
    logging.warning("skipping %s (%s): %s", path, split, reason)
    self.skipped[split].append({"video": path, "reason": reason})

  def to_dict(self) -> dict[str, Any]:
    return {
        "videos_written": dict(self.videos),
        "videos_skipped": {k: len(v) for k, v in self.skipped.items()},
        "skipped": dict(self.skipped),
        "seconds": dict(self.seconds),
        "videos_per_second": {k: self.videos[k] / max(self.seconds[k], 1e-9)
                              for k in self.videos if k in self.seconds},
        "annotation_problems": self.problems,
        "notes": dict(self.notes),
    }


def _default_workers() -> int:
  return max(1, min(os.cpu_count() or 1, 16))


def _parallel_map(fn, tasks: Sequence[Any], num_workers: int) -> Iterator[Any]:
  """Ordered results of fn(task), from a fresh spawn pool with bounded look-ahead."""
  if num_workers <= 0:
    yield from map(fn, tasks)
    return
  ctx = multiprocessing.get_context("spawn")  # no inherited TensorFlow state
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
    pending = collections.deque()
    it = iter(tasks)
    for task in it:
      pending.append(pool.submit(fn, task))
      if len(pending) >= 4 * num_workers:
        break
    while pending:
      result = pending.popleft().result()
      task = next(it, None)
      if task is not None:
        pending.append(pool.submit(fn, task))
      yield result


def tube_arrays(record: ann.VideoRecord | None, num_frames: int, height: int,
                width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """(labels (k,), boxes (k, n, 4) normalized corners, present (k, n), dropped boxes)."""
  tubes = record.tubes if record is not None else ()
  labels = np.array([t.label for t in tubes], np.int32)
  boxes = np.zeros((len(tubes), num_frames, 4), np.float32)
  present = np.zeros((len(tubes), num_frames), bool)
  scale = np.array([width, height, width, height], np.float64)
  dropped = 0
  for k, t in enumerate(tubes):
    lo, hi = max(t.start, 0), min(t.end, num_frames)
    dropped += t.num_boxes - max(hi - lo, 0)
    if hi > lo:
      boxes[k, lo:hi] = t.boxes[lo - t.start:hi - t.start] / scale
      present[k, lo:hi] = True
  return labels, boxes, present, dropped


def annotated_class_names(records: Mapping[str, ann.VideoRecord]) -> list[str]:
  """The class name of each tube label 0..L-1, from the videos that carry the label.

  Raises:
    ValueError: a tube label is used by videos of two classes, or a label in 0..L-1
      is used by no video (the list would have a hole).
  """
  names: dict[int, str] = {}
  for record in records.values():
    for tube in record.tubes:
      known = names.setdefault(tube.label, record.class_name)
      if known != record.class_name:
        raise ValueError(f"tube label {tube.label} is used by classes {known!r} and "
                         f"{record.class_name!r} ({record.path}); expected one class per "
                         "label")
  missing = [i for i in range(len(names)) if i not in names]
  if missing:
    raise ValueError(f"tube labels {missing} are used by no video, though labels up to "
                     f"{max(names)} are; expected labels 0..{len(names) - 1}")
  return [names[i] for i in range(len(names))]


def find_annotation_file(manual_dir: pathlib.Path) -> pathlib.Path:
  for name in ANNOTATION_FILES:
    if (manual_dir / name).is_file():
      return manual_dir / name
  raise FileNotFoundError(
      f"no annotation pickle in {manual_dir}: expected one of {', '.join(ANNOTATION_FILES)}")


class Ucf101Stconsist(tfds.core.GeneratorBasedBuilder):
  """UCF-101 videos with UCF101-24 actor tubes, one example per video."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [Ucf101StconsistConfig(split=s, frame_size=f)
                     for f in FRAME_SIZES for s in (1, 2, 3)]
  DEFAULT_BUILDER_CONFIG_NAME = "split1_128"

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
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Sequence(
                tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg")),
            "label": tfds.features.ClassLabel(names=self.builder_config.class_names),
            "name": tfds.features.Text(),
            "num_frames": np.int32,
            "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "annotated": np.bool_,
            "tube_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "tube_boxes": tfds.features.Tensor(shape=(None, None, 4), dtype=np.float32,
                                                encoding="zlib"),
            "tube_present": tfds.features.Tensor(shape=(None, None), dtype=np.bool_,
                                                  encoding="zlib"),
        }),
        supervised_keys=None,
        # Filled while building: `annotated_class_names`, the class of each 24-way
        # tube label in label order (UCF101-24's own order for the real data).
        metadata=tfds.core.MetadataDict(),
        homepage="https://www.crcv.ucf.edu/data/UCF101.php",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    list_dir = manual_dir / "ucfTrainTestlist"
    for needed in (manual_dir / "UCF-101", list_dir / "classInd.txt"):
      if not needed.exists():
        raise FileNotFoundError(f"{needed} not found.\n{_MANUAL_DOWNLOAD_INSTRUCTIONS}")
    class_names = ann.read_class_index(list_dir / "classInd.txt")
    if class_names != self.builder_config.class_names:
      raise ValueError(
          f"{list_dir / 'classInd.txt'} lists {len(class_names)} classes that differ from "
          f"the {len(self.builder_config.class_names)} of config "
          f"{self.builder_config.name!r}; build with make_config(manual_dir=...)")
    records = ann.load_annotations(find_annotation_file(manual_dir), class_names)
    self.info.metadata["annotated_class_names"] = annotated_class_names(records)
    train, test = ann.official_split(list_dir, self.builder_config.split)
    problems = ann.validate(records, listed=train + test, video_dir=manual_dir / "UCF-101")
    self._report.problems = problems.to_dict()
    if not problems.ok:
      logging.warning("annotation problems:\n%s", problems.summary())
    return {
        "train": self._generate_examples(manual_dir, train, records, "train"),
        "test": self._generate_examples(manual_dir, test, records, "test"),
    }

  def _generate_examples(self, manual_dir: pathlib.Path, paths: Sequence[str],
                         records: Mapping[str, ann.VideoRecord], split: str):
    cfg = self.builder_config
    index = {c: i for i, c in enumerate(cfg.class_names)}
    annotated_classes = {r.class_name for r in records.values() if r.tubes}
    tasks = []
    for p in paths:
      file = manual_dir / "UCF-101" / f"{p}.avi"
      if ann.class_of(p) not in index:
        self._report.skip(split, p, f"class {ann.class_of(p)!r} not in classInd.txt")
      elif not file.is_file():
        self._report.skip(split, p, f"video file missing: {p}.avi")
      else:
        tasks.append(video_decode.DecodeTask(p, str(file), cfg.frame_size,
                                             cfg.jpeg_quality))
    start, written = time.time(), 0
    bar = tqdm.tqdm(total=len(tasks), unit="video", desc=f"{cfg.name} {split}",
                    mininterval=2.0)
    for video in _parallel_map(video_decode.decode_video, tasks, self._num_workers):
      bar.update(1)
      record = records.get(video.path)
      if video.error:
        self._report.skip(split, video.path, video.error)
        continue
      if record is not None and video.num_frames < MIN_FRAME_FRACTION * record.num_frames:
        self._report.skip(split, video.path,
                          f"truncated: decoded {video.num_frames} of "
                          f"{record.num_frames} annotated frames")
        continue
      labels, boxes, present, dropped = tube_arrays(record, video.num_frames,
                                                    video.height, video.width)
      if dropped:
        self._report.notes["boxes_beyond_decoded_frames"] += dropped
      written += 1
      yield video.path, {
          "frames": video.frames,
          "label": index[ann.class_of(video.path)],
          "name": video.path,
          "num_frames": video.num_frames,
          "original_size": np.array([video.height, video.width], np.int32),
          "annotated": bool(ann.class_of(video.path) in annotated_classes
                            and len(labels) > 0),
          "tube_labels": labels,
          "tube_boxes": boxes,
          "tube_present": present,
      }
    bar.close()
    seconds = time.time() - start
    self._report.videos[split] = written
    self._report.seconds[split] = seconds
    logging.info("%s %s: %d videos in %.1f s (%.2f videos/s), %d skipped", cfg.name,
                 split, written, seconds, written / max(seconds, 1e-9),
                 len(self._report.skipped.get(split, [])))

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           **kwargs) -> None:
    """TFDS's build (into an incomplete dir, renamed when done) + the build report."""
    download_config = download_config or tfds.download.DownloadConfig()
    existed = self.data_path.exists()
    self._report = BuildReport()
    super().download_and_prepare(download_dir=download_dir,
                                 download_config=download_config, **kwargs)
    if existed and not self._report.videos:
      return
    report = self._report.to_dict()
    path = pathlib.Path(self.data_dir) / REPORT_FILE
    fileio.atomic_write(path, json.dumps(report, indent=1))
    logging.info("build report %s: written %s, skipped %s, videos/s %s", path,
                 report["videos_written"], report["videos_skipped"],
                 {k: round(v, 2) for k, v in report["videos_per_second"].items()})

  @property
  def report(self) -> dict[str, Any]:
    return self._report.to_dict()


def builder(config: str | Ucf101StconsistConfig = "split1_128",
            data_dir: str | os.PathLike | None = None,
            num_workers: int | None = None) -> Ucf101Stconsist:
  return Ucf101Stconsist(config=config, data_dir=data_dir, num_workers=num_workers)


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, split: int = 1,
          frame_size: int = 128, num_workers: int | None = None,
          jpeg_quality: int = 90) -> Ucf101Stconsist:
  """Builds (split, frame_size) from `manual_dir` into `data_dir`; returns the builder."""
  cfg = make_config(split, frame_size, manual_dir=manual_dir, jpeg_quality=jpeg_quality)
  b = builder(cfg, data_dir, num_workers)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir)))
  return b


def read_report(builder_or_dir: Ucf101Stconsist | str | os.PathLike) -> dict[str, Any]:
  d = (builder_or_dir.data_dir if isinstance(builder_or_dir, Ucf101Stconsist)
       else builder_or_dir)
  return json.loads((pathlib.Path(d) / REPORT_FILE).read_text())
