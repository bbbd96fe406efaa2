"""Building a TFDS dataset (UCF-101, or any dataset description) into a data dir safely: inputs
checked before anything is written, a build reused, or refused or replaced only once complete.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from stconsist_jax.core import fileio
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report as read_report_lib
from stconsist_jax.data.ucf101 import described_builder
from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib
from stconsist_jax.data.ucf101 import split_lists
from stconsist_jax.data.ucf101 import tfds_builder


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
  jpeg_quality: int = tfds_builder.DEFAULT_JPEG_QUALITY,
  overwrite: bool = False,
) -> tfds_builder.Ucf101Stconsist:
  """Builds (split, frame_size) from `manual_dir` into `data_dir`; returns the builder.

  An existing build of the same source is reused. One of another source is refused
  (`tfds_builder.SourceMismatchError`) unless `overwrite`, which rebuilds it; the old
  build stays in place until the new one is complete. What killed builds of this target
  left behind is removed first (`remove_incomplete`).

  Raises:
    manual_dir_lib.ManualDirError, tfds_builder.SourceMismatchError, records.DataFileError:
      `errors.UserError`, each with a one-line message.
  """
  annotation_file = manual_dir_lib.check_manual_dir(manual_dir, split)
  cfg = tfds_builder.make_config(
    split, frame_size, manual_dir=manual_dir, jpeg_quality=jpeg_quality
  )
  # Unusable inputs fail here, before anything is written.
  manual_dir_lib.load_records(annotation_file, cfg.class_names)
  split_lists.official_split(pathlib.Path(manual_dir) / 'ucfTrainTestlist', split)
  return _prepare(
    lambda: tfds_builder.builder(cfg, data_dir, num_workers),
    tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
    overwrite,
  )


def _prepare(
  make: Callable[[], tfds.core.DatasetBuilder],
  download_config: tfds.download.DownloadConfig,
  overwrite: bool,
) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) what `make()`'s builder names; `overwrite` replaces it atomically."""
  b = make()
  if _recover_replaced(b.data_path):
    b = make()
  remove_incomplete(b.data_path)
  # TFDS's own bars (splits, shuffling) repeat what the builder's bar and log lines say.
  tfds.display_progress_bar(False)
  if not (overwrite and b.data_path.exists()):
    b.download_and_prepare(download_config=download_config)
    return b
  aside = _replaced_path(b.data_path)
  fileio.move_tree(b.data_path, aside)
  try:
    b = make()
    b.download_and_prepare(download_config=download_config)
  except BaseException:
    if b.data_path.exists():  # Complete but its report failed: keep the old build.
      b.data_path.rmtree()
    fileio.move_tree(aside, b.data_path)
    raise
  aside.rmtree()
  return b


def build_described(
  description: description_lib.DatasetDescription,
  inputs: Mapping[str, described_builder.FrameInput],
  data_dir: str | os.PathLike,
  *,
  split: int = 1,
  frame_size: int = 128,
  num_workers: int | None = None,
  jpeg_quality: int = tfds_builder.DEFAULT_JPEG_QUALITY,
  overwrite: bool = False,
  source: Mapping[str, Any] | None = None,
  read_report: read_report_lib.ReadReport | None = None,
  unreadable: Mapping[str, str] | None = None,
) -> described_builder.DescribedDataset:
  """Builds split `split` of any description into `data_dir/<name>/<config>`, as `build`.

  `inputs` maps each video's name to its file or frames folder; `source` (see
  `manual_dir.files_source`) is what the build records it was made from, so that a
  later build of other files is refused unless `overwrite`. `read_report` (the
  readers' bad records) goes into the build report as `annotation_problems`;
  `unreadable` (name -> why) videos found unreadable before, as skipped ones.

  Raises:
    records.DataFileError: the description has no such split (before anything is written);
    tfds_builder.SourceMismatchError: as `build`.
  """
  described_builder.split_of(description, split)
  return _prepare(
    lambda: described_builder.builder(
      description,
      inputs,
      data_dir,
      split=split,
      frame_size=frame_size,
      jpeg_quality=jpeg_quality,
      source=source,
      read_report=read_report,
      unreadable=unreadable,
      num_workers=num_workers,
    ),
    tfds.download.DownloadConfig(),
    overwrite,
  )
