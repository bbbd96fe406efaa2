"""The user's UCF-101 download (the manual dir) as a build reads it: layout, records, problems,
and the fingerprint of its annotation and list files that a build records as its source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.data import records as records_lib
from stconsist_jax.data import safe_pickle
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import videos
from stconsist_jax.data.ucf101 import annotations as ann

ANNOTATION_FILES = ('pyannot.pkl', 'UCF101v2-GT.pkl')
_LAYOUT = (
  'UCF-101/<Class>/*.avi, ucfTrainTestlist/ (classInd.txt, trainlist0N.txt, '
  'testlist0N.txt) and pyannot.pkl or UCF101v2-GT.pkl'
)

INSTRUCTIONS = """\
Download UCF-101 (https://www.crcv.ucf.edu/data/UCF101.php): the videos `UCF101.rar`
and the split lists `UCF101TrainTestSplits-RecognitionTask.zip`, and a UCF101-24
annotation pickle: `pyannot.pkl` (github.com/gurkirt/corrected-UCF101-Annots) or
`UCF101v2-GT.pkl` (ACT / MOC detectors). Arrange them in the manual dir as:

  <manual_dir>/UCF-101/<Class>/v_<Class>_gGG_cCC.avi
  <manual_dir>/ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt
  <manual_dir>/pyannot.pkl   (or UCF101v2-GT.pkl)
"""


class ManualDirError(errors.UserError, FileNotFoundError):
  """The manual dir, or a file the build needs in it, is missing (one-line message)."""

  instructions = INSTRUCTIONS


def find_annotation_file(manual_dir: pathlib.Path) -> pathlib.Path:
  for name in ANNOTATION_FILES:
    if (manual_dir / name).is_file():
      return manual_dir / name
  raise ManualDirError(
    f'no annotation pickle in {manual_dir}: expected one of {", ".join(ANNOTATION_FILES)}'
  )


def check_manual_dir(manual_dir: str | os.PathLike, split: int = 1) -> pathlib.Path:
  """The annotation file of a manual dir that has every part the build reads.

  Raises:
    ManualDirError: naming the first missing part (its `instructions` say how to
      download and arrange UCF-101).
  """
  if fileio.is_remote(manual_dir):
    raise ManualDirError(
      f'manual dir {os.fspath(manual_dir)} is a bucket URL: the source '
      'videos are decoded with OpenCV, which reads local files; copy '
      'the UCF-101 folder to a local disk (the built dataset, '
      '--data_dir, may be a bucket)'
    )
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise ManualDirError(
      f'manual dir {manual_dir} not found: expected the downloaded UCF-101 folder with {_LAYOUT}'
    )
  list_dir = manual_dir / 'ucfTrainTestlist'
  for needed in (
    manual_dir / 'UCF-101',
    list_dir / 'classInd.txt',
    list_dir / f'trainlist0{split}.txt',
    list_dir / f'testlist0{split}.txt',
  ):
    if not needed.exists():
      raise ManualDirError(f'{needed} not found: the manual dir {manual_dir} should hold {_LAYOUT}')
  return find_annotation_file(manual_dir)


def load_records(
  annotation_file: pathlib.Path, class_names: Sequence[str]
) -> tuple[dict[str, records_lib.VideoRecord], list[str]]:
  """(records, annotated class names) of an annotation file; DataFileError if unusable."""
  records = ann.load_annotations(annotation_file, class_names)
  try:
    return records, annotated_class_names(records)
  except ValueError as e:
    raise safe_pickle.AnnotationFileError(f'{annotation_file}: {e}') from None


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def source_of(manual_dir: str | os.PathLike, split: int = 1) -> dict[str, Any]:
  """What a build of `manual_dir` is made from: its absolute path and a fingerprint.

  The fingerprint hashes the annotation pickle, classInd.txt and the split's lists.
  """
  manual_dir = pathlib.Path(manual_dir).absolute()
  list_dir = manual_dir / 'ucfTrainTestlist'
  files = [
    check_manual_dir(manual_dir, split),
    list_dir / 'classInd.txt',
    list_dir / f'trainlist0{split}.txt',
    list_dir / f'testlist0{split}.txt',
  ]
  hashes = {str(f.relative_to(manual_dir)): _sha256(f) for f in files}
  fingerprint = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
  return {'manual_dir': str(manual_dir), 'fingerprint': fingerprint, 'files': hashes}


def files_source(
  root: str | os.PathLike, files: Mapping[str, str | os.PathLike], options: Mapping[str, Any]
) -> dict[str, Any]:
  """What a build of any dataset is made from: its video folder, files and options.

  `files` names the annotation and split-list files (`{'annotations': path, ...}`);
  `options` the choices that change what is built (format, split seed, ...). The
  fingerprint hashes both, so `source_mismatch` sees a changed file or choice.
  """
  hashes = {}
  for label, path in sorted(files.items()):
    path = pathlib.Path(path)
    if path.is_dir():  # A folder of CVAT files: each of them.
      for f in sorted(p for p in path.rglob('*') if p.is_file()):
        hashes[f'{label}/{f.relative_to(path).as_posix()}'] = _sha256(f)
    else:
      hashes[label] = _sha256(path)
  fingerprint = hashlib.sha256(
    json.dumps({'files': hashes, 'options': dict(options)}, sort_keys=True).encode()
  ).hexdigest()
  return {
    'manual_dir': str(pathlib.Path(root).absolute()),
    'fingerprint': fingerprint,
    'files': hashes,
    'options': dict(options),
  }


def source_mismatch(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str | None:
  """Why a build recorded as made from `recorded` is not one of `current`, or None."""
  if not recorded:
    return 'it records no source (built before sources were recorded)'
  reasons = []
  if recorded.get('manual_dir') != current['manual_dir']:
    reasons.append(f'it was built from {recorded.get("manual_dir")}')
  if recorded.get('fingerprint') != current['fingerprint']:
    changed = sorted(
      name
      for name, digest in current['files'].items()
      if (recorded.get('files') or {}).get(name) != digest
    )
    reasons.append(f'its {", ".join(changed) or "files"} differ')
  return ' and '.join(reasons) or None


def annotated_class_names(
  records: Mapping[str, records_lib.VideoRecord], known: Sequence[str] = classes.UCF24_CLASSES
) -> list[str]:
  """The class name of each tube label 0..L-1.

  `known` (UCF101-24's list) when every used label names its class there: a subset of
  the videos keeps the full label space, absent classes and all. Otherwise the names
  come from the videos that carry each label, which must then use every label 0..L-1.

  Raises:
    ValueError: a tube label is used by videos of two classes, or (labels not of
      `known`) a label in 0..L-1 is used by no video (the list would have a hole).
  """
  names: dict[int, str] = {}
  for record in records.values():
    for tube in record.tubes:
      named = names.setdefault(tube.label, record.class_name)
      if named != record.class_name:
        raise ValueError(
          f'tube label {tube.label} is used by classes {named!r} and '
          f'{record.class_name!r} ({record.path}); expected one class per '
          'label'
        )
  if names and all(
    0 <= label < len(known) and known[label] == name for label, name in names.items()
  ):
    return list(known)
  top = max(names, default=-1)
  missing = [i for i in range(top + 1) if i not in names]
  if missing:
    raise ValueError(
      f'tube labels {missing} are used by no video, though labels up to '
      f'{top} are, and the labels do not follow the {len(known)} known '
      f'annotated classes; expected every label 0..{top} in use'
    )
  return [names[i] for i in range(top + 1)]


# --------------------------------------------------------------------------- validation

MAX_EXAMPLES = 5


@dataclasses.dataclass
class ValidationReport:
  """Problems found in the data, by kind: a count and a few examples of each."""

  counts: dict[str, int] = dataclasses.field(default_factory=dict)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def add(self, kind: str, example: str) -> None:
    self.counts[kind] = self.counts.get(kind, 0) + 1
    shown = self.examples.setdefault(kind, [])
    if len(shown) < MAX_EXAMPLES:
      shown.append(example)

  @property
  def ok(self) -> bool:
    return not self.counts

  def summary(self) -> str:
    if self.ok:
      return 'no problems found'
    lines = []
    for kind in sorted(self.counts):
      lines.append(f'{kind}: {self.counts[kind]} (e.g. {"; ".join(self.examples[kind])})')
    return '\n'.join(lines)

  def to_dict(self) -> dict[str, Any]:
    return {'counts': dict(self.counts), 'examples': dict(self.examples)}


def validate(
  records: Mapping[str, records_lib.VideoRecord],
  *,
  listed: Iterable[str] = (),
  video_dir: str | os.PathLike | None = None,
  frame_size: (tuple[int, int] | Mapping[str, tuple[int, int]]) = videos.UCF101_FRAME_SIZE,
) -> ValidationReport:
  """Checks records (and optionally split lists and video files); never raises per item.

  Kinds: `box_outside_frame` and `empty_box` (per box), `tube_past_video_end`,
  `tube_before_video_start` (per tube), `listed_without_annotations` (a listed video of
  an annotated class with no record), `annotated_not_listed` (when `listed` is given),
  `video_file_missing` (when `video_dir` is given; records and listed videos).
  """
  report = ValidationReport()
  listed = [videos.strip_extension(p) for p in listed]
  for path, r in records.items():
    h, w = frame_size[path] if isinstance(frame_size, Mapping) else frame_size
    for k, t in enumerate(r.tubes):
      if t.start < 0:
        report.add('tube_before_video_start', f'{path} tube {k} starts at {t.start}')
      if t.end > r.num_frames:
        report.add(
          'tube_past_video_end', f'{path} tube {k} ends at {t.end} > {r.num_frames} frames'
        )
      b = t.boxes
      outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
      empty = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
      for i in np.flatnonzero(outside):
        report.add(
          'box_outside_frame', f'{path} tube {k} frame {t.start + i}: {b[i].tolist()} vs {w}x{h}'
        )
      for i in np.flatnonzero(empty):
        report.add('empty_box', f'{path} tube {k} frame {t.start + i}: {b[i].tolist()}')
  if listed:
    annotated_classes = {r.class_name for r in records.values() if r.tubes}
    listed_set = set(listed)
    for p in listed:
      if p not in records and videos.class_of(p) in annotated_classes:
        report.add('listed_without_annotations', p)
    for p in records:
      if p not in listed_set:
        report.add('annotated_not_listed', p)
  if video_dir is not None:
    video_dir = pathlib.Path(video_dir)
    for p in sorted(set(records) | set(listed)):
      if not (video_dir / f'{p}.avi').is_file():
        report.add('video_file_missing', f'{p}.avi')
  return report
