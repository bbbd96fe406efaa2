"""UCF101-24 as a dataset description: its pyannot.pkl or UCF101v2-GT.pkl tubes on 320x240
videos, its 24 classes and its one split, validated as every reader's boxes are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report
from stconsist_jax.data.datasets import tracks
from stconsist_jax.data.ucf101 import annotations as ann
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import videos as ucf_videos

PathLike = str | os.PathLike

NAME = 'ucf101_24'


def description_from_records(
  records: Mapping[str, records_lib.VideoRecord],
  train: Sequence[str],
  test: Sequence[str],
  source: str = 'pyannot.pkl',
) -> tuple[description_lib.DatasetDescription, read_report.ReadReport]:
  """UCF101-24's description of its VideoRecords and split-1 lists (`Class/v_X`)."""
  height, width = ucf_videos.UCF101_FRAME_SIZE
  report = read_report.ReadReport()
  videos = {}
  for path, record in records.items():
    info = tracks.VideoInfo(width, height, record.num_frames)
    tubes = []
    for k, t in enumerate(record.tubes):
      frames = range(t.start, t.end)
      tubes += tracks.tubes_from_track(
        list(frames),
        t.boxes,
        t.label,
        info,
        report,
        lambda i, k=k, frames=frames, path=path: (
          f'{source}: video {path!r} tube {k} frame {frames[i]}'
        ),
      )
    videos[path] = records_lib.AnnotatedVideo(path, *info, tuple(tubes))
  description = description_lib.describe(
    NAME, classes.UCF24_CLASSES, videos, {'split1': (train, test)}, 'video_files', report, source
  )
  return description, report


def read_ucf101_24(
  annotation_file: PathLike, train: Sequence[str], test: Sequence[str]
) -> tuple[description_lib.DatasetDescription, read_report.ReadReport]:
  """UCF101-24's description from `pyannot.pkl` or `UCF101v2-GT.pkl` and split-1 lists.

  Listed videos without annotations (6 of split 1's training videos in the corrected
  annotations) are `video_missing`: their length is not known without their file.
  """
  records = ann.load_annotations(annotation_file)
  return description_from_records(records, train, test, os.fspath(annotation_file))
