"""JHMDB-21 as a dataset description: ACT's `JHMDB-GT.pkl` (21 classes, 3 splits, 320x240,
every frame annotated) over the `Frames/<class>/<video>/00001.png` folders, checked as published.
"""

from __future__ import annotations

import os
import pathlib

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import act_pickle
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report

PathLike = str | os.PathLike

NAME = 'jhmdb'
GT_FILE = 'JHMDB-GT.pkl'
FRAMES_DIR = 'Frames'
# The 21 classes in label order, the order of `labels` in ACT's JHMDB-GT.pkl (the class
# folders of the JHMDB release, alphabetical). Source: wei-tim/YOWO data/jhmdb21.names
# (the JHMDB-21 label list of YOWO, which reads the same ground truth).
CLASSES = (
  'brush_hair',
  'catch',
  'clap',
  'climb_stairs',
  'golf',
  'jump',
  'kick_ball',
  'pick',
  'pour',
  'pullup',
  'push',
  'run',
  'shoot_ball',
  'shoot_bow',
  'shoot_gun',
  'sit',
  'stand',
  'swing_baseball',
  'throw',
  'walk',
  'wave',
)
# JHMDB's 3 published train/test splits (MOC-Detector src/opts.py: '3 splits for JHMDB';
# `train_videos[i]`, `test_videos[i]` of the pickle, each split covering every video).
NUM_SPLITS = 3
# (width, height) of every JHMDB video (the pickle's `resolution` gives (240, 320)).
FRAME_SIZE = (320, 240)

LAYOUT = f'{GT_FILE} and {FRAMES_DIR}/<class>/<video>/00001.png (ACT / MOC download)'


def find_files(manual_dir: PathLike) -> tuple[pathlib.Path, pathlib.Path]:
  """(JHMDB-GT.pkl, Frames/) of a JHMDB download; a one-line DataFileError if absent."""
  root = pathlib.Path(manual_dir)
  gt, frames = root / GT_FILE, root / FRAMES_DIR
  for needed in (gt, frames):
    if not needed.exists():
      raise records_lib.DataFileError(f'{needed} not found: the JHMDB folder should hold {LAYOUT}')
  return gt, frames


def check_published(d: description_lib.DatasetDescription, source: str) -> None:
  """Raises a one-line DataFileError unless `d` has JHMDB-21's classes and 3 splits."""
  if d.class_names != CLASSES:
    raise records_lib.DataFileError(
      f'{source}: its {len(d.class_names)} labels {list(d.class_names)[:3]}... are not '
      f"JHMDB-21's {len(CLASSES)} classes in their published order; read it as an ACT "
      'pickle of its own dataset (--format=act) instead'
    )
  if len(d.splits) != NUM_SPLITS:
    raise records_lib.DataFileError(
      f'{source}: it lists {len(d.splits)} splits, JHMDB-21 has {NUM_SPLITS}; read it as an '
      'ACT pickle of its own dataset (--format=act) instead'
    )


def read_jhmdb(
  gt_file: PathLike, frame_source: str = 'jpeg_folders'
) -> tuple[description_lib.DatasetDescription, read_report.ReadReport]:
  """JHMDB-21's description from ACT's `JHMDB-GT.pkl`, checked as published.

  Raises:
    AnnotationFileError, DataFileError: the file is unreadable, not ACT's structure, or
      not JHMDB-21's classes and splits (one line).
  """
  description, report = act_pickle.read_act_pickle(gt_file, NAME, frame_source)
  check_published(description, os.fspath(gt_file))
  return description, report
