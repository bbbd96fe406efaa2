"""From annotation files and a folder of videos to a TFDS build: any ACT pickle, CVAT export or
CSV (sizes probed with OpenCV), or JHMDB-21, read, split, located and built as one description.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import act_pickle
from stconsist_jax.data.datasets import csv_tracks
from stconsist_jax.data.datasets import cvat_xml
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import jhmdb
from stconsist_jax.data.datasets import read_report as read_report_lib
from stconsist_jax.data.datasets import split_choice
from stconsist_jax.data.ucf101 import dataset_build
from stconsist_jax.data.ucf101 import described_builder
from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib
from stconsist_jax.data.ucf101 import tfds_builder
from stconsist_jax.data.ucf101 import video_decode
from stconsist_jax.data.ucf101 import video_probe

PathLike = str | os.PathLike
FORMATS = ('act', 'cvat', 'csv')
FRAME_SOURCES = ('auto', *description_lib.FRAME_SOURCES)
CVAT_NAMES = cvat_xml.NAME_SOURCES


@dataclasses.dataclass(frozen=True)
class BuildInputs:
  """A dataset ready to build: its description, where each video's frames are, what
  reading it skipped, and what the build records it was made from."""

  description: description_lib.DatasetDescription
  inputs: Mapping[str, described_builder.FrameInput]
  report: read_report_lib.ReadReport
  source: Mapping[str, Any]
  # Videos of the folder that OpenCV cannot read and that are not in the description:
  # name -> why (the build counts them as skipped).
  unreadable: Mapping[str, str] = dataclasses.field(default_factory=dict)


def default_name(annotations: PathLike) -> str:
  """A dataset name from an annotation file or folder: `My-Clips.xml` -> `my_clips`."""
  path = pathlib.Path(annotations)
  stem = act_pickle.default_name(path) if path.suffix == '.pkl' else path.stem
  name = re.sub(r'[^a-z0-9_]+', '_', stem.lower()).strip('_')
  return name if name and name[0].isalpha() else f'd_{name}'


def _frame_folders(root: pathlib.Path, names: list[str]) -> dict[str, described_builder.FrameInput]:
  kind = video_decode.FRAME_FOLDER
  return {n: described_builder.FrameInput(os.fspath(root / n), kind) for n in names}


def _video_files(files: Mapping[str, pathlib.Path]) -> dict[str, described_builder.FrameInput]:
  return {n: described_builder.FrameInput(os.fspath(p)) for n, p in files.items()}


def frame_folders_under(root: PathLike) -> list[str]:
  """Names (paths below `root`) of the folders that hold numbered frame files."""
  root = pathlib.Path(root)
  found = set()
  for ext in video_decode.FRAME_EXTENSIONS:
    for f in root.rglob(f'*{ext}'):
      if f.stem.isdigit():
        found.add(f.parent.relative_to(root).as_posix())
  return sorted(found - {'.'})


def _act_inputs(
  description: description_lib.DatasetDescription, videos: pathlib.Path
) -> dict[str, described_builder.FrameInput]:
  names = list(description.videos)
  if description.frame_source == 'jpeg_folders':
    return _frame_folders(videos, names)
  return _video_files(video_probe.find_video_files(videos))


def _auto_frame_source(frame_source: str, videos: pathlib.Path, first: str | None) -> str:
  """`frame_source`, or for 'auto' what `videos` holds: a folder per video or video files."""
  if frame_source != 'auto':
    return frame_source
  if first is not None:
    return 'jpeg_folders' if (videos / first).is_dir() else 'video_files'
  has_files = any(
    p.suffix.lower() in video_probe.VIDEO_EXTENSIONS for p in videos.rglob('*') if p.is_file()
  )
  return 'video_files' if has_files else 'jpeg_folders'


def _probed_inputs(
  videos: pathlib.Path, frame_source: str, by_stem: bool
) -> tuple[
  dict[str, described_builder.FrameInput], dict[str, tuple[int, int, int]], dict[str, str]
]:
  """(inputs, video_info name -> (width, height, frames), unreadable name -> why)."""
  if frame_source == 'jpeg_folders':
    inputs = _frame_folders(videos, frame_folders_under(videos))
    if not inputs:
      raise records_lib.DataFileError(f'no folders of numbered frames under {videos}')
  else:
    files = video_probe.find_video_files(videos)
    inputs = _video_files(video_probe.by_file_stem(files) if by_stem else files)
  info, unreadable = {}, {}
  for name, found in inputs.items():
    probe = video_probe.probe(found.path, found.kind)
    if probe.error:
      unreadable[name] = f'cannot be probed: {probe.error}'
    else:
      info[name] = (probe.width, probe.height, probe.num_frames)
  return inputs, info, unreadable


def read_inputs(
  fmt: str,
  annotations: PathLike,
  videos: PathLike,
  *,
  name: str | None = None,
  coords: str = 'pixels',
  first_frame: int = 0,
  train_list: PathLike | None = None,
  test_list: PathLike | None = None,
  test_fraction: float = split_choice.DEFAULT_TEST_FRACTION,
  split_seed: int = split_choice.DEFAULT_SEED,
  cvat_names: str = 'source',
  frame_source: str = 'auto',
) -> BuildInputs:
  """A user's annotations (`fmt`: 'act', 'cvat' or 'csv') and video folder, ready to build.

  ACT pickles bring their splits. CVAT and CSV datasets get split `split1` from the
  list files (`split_choice.from_lists`) or, without them, `test_fraction` of each
  class's videos held out with `split_seed` (`split_choice.by_fraction`). Their videos'
  frame sizes and lengths are probed with OpenCV; a video that cannot be probed is
  reported (`video_missing`) and its annotations skipped.

  Raises:
    DataFileError (and the readers' one-line errors): unusable inputs.
  """
  if fmt not in FORMATS:
    raise records_lib.DataFileError(f'annotation format {fmt!r} is not one of {", ".join(FORMATS)}')
  if frame_source not in FRAME_SOURCES:
    raise records_lib.DataFileError(
      f'frame source {frame_source!r} is not one of {", ".join(FRAME_SOURCES)}'
    )
  name = described_builder.check_name(name or default_name(annotations))
  videos = pathlib.Path(videos)
  if not videos.is_dir():
    raise records_lib.DataFileError(f'video folder {videos} not found')
  files = {'annotations': annotations}
  options: dict[str, Any] = {'format': fmt, 'name': name}
  unreadable: dict[str, str] = {}
  if fmt == 'act':
    description, report = act_pickle.read_act_pickle(annotations, name)
    chosen = _auto_frame_source(frame_source, videos, next(iter(description.videos), None))
    description = dataclasses.replace(description, frame_source=chosen)
    inputs = _act_inputs(description, videos)
  else:
    chosen = _auto_frame_source(frame_source, videos, None)
    inputs, info, unreadable = _probed_inputs(
      videos, chosen, by_stem=fmt == 'cvat' and cvat_names == 'source'
    )
    if fmt == 'cvat':
      read = cvat_xml.read_cvat(annotations, video_info=info, name_from=cvat_names)
      options['cvat_names'] = cvat_names
    else:
      read = csv_tracks.read_csv(annotations, info, coords=coords, first_frame=first_frame)
      options.update(coords=coords, first_frame=first_frame)
    report = read.report
    if train_list is not None or test_list is not None:
      train, test = split_choice.from_lists(read.videos, train_list, test_list)
      files.update({k: v for k, v in (('train_list', train_list), ('test_list', test_list)) if v})
    else:
      train, test = split_choice.by_fraction(
        split_choice.video_classes(read.videos), test_fraction, split_seed
      )
    options.update(split_choice.describe_choice(train_list, test_list, test_fraction, split_seed))
    description = description_lib.describe(
      name,
      read.class_names,
      read.videos,
      {'split1': (train, test)},
      chosen,
      report,
      os.fspath(annotations),
    )
  options['frame_source'] = chosen
  source = manual_dir_lib.files_source(videos, files, options)
  unreadable = {n: why for n, why in unreadable.items() if n not in description.videos}
  return BuildInputs(description, inputs, report, source, unreadable)


def jhmdb_inputs(manual_dir: PathLike) -> BuildInputs:
  """JHMDB-21 from its download (`JHMDB-GT.pkl`, `Frames/`), ready to build."""
  gt, frames = jhmdb.find_files(manual_dir)
  description, report = jhmdb.read_jhmdb(gt)
  inputs = _frame_folders(frames, list(description.videos))
  source = manual_dir_lib.files_source(frames, {'annotations': gt}, {'dataset': jhmdb.NAME})
  return BuildInputs(description, inputs, report, source)


def build(
  ready: BuildInputs,
  data_dir: PathLike,
  *,
  split: int = 1,
  frame_size: int = 128,
  num_workers: int | None = None,
  jpeg_quality: int = tfds_builder.DEFAULT_JPEG_QUALITY,
  overwrite: bool = False,
) -> described_builder.DescribedDataset:
  """Builds split `split` of `ready` into `data_dir` (`dataset_build.build_described`)."""
  return dataset_build.build_described(
    ready.description,
    ready.inputs,
    data_dir,
    split=split,
    frame_size=frame_size,
    num_workers=num_workers,
    jpeg_quality=jpeg_quality,
    overwrite=overwrite,
    source=ready.source,
    read_report=ready.report,
    unreadable=ready.unreadable,
  )
