"""UCF-101 / UCF101-24 annotation files and split lists -> typed per-video records.

Reads `pyannot.pkl` (corrected UCF101-24), the ACT/MOC `UCF101v2-GT.pkl`, `classInd.txt`
and the official train/test lists, and writes them all (for synthetic datasets); the
checks of a whole download are in `download`. Over 400 lines as one job: the two pickle
formats in both directions, the restricted unpickler and the two class lists.

All pickle arrays are cast to float64/int64 before any arithmetic: the real files store
boxes and frame counts as uint8/uint16, where `x + w` silently wraps around. Pickles come
from third-party links, so they are loaded by an unpickler that imports nothing and knows
only bounded stand-ins of numpy's array helpers (`load_pickle`); a file referencing
anything else, too large or too deeply nested is refused.
Problems with a user's files raise `DataFileError` (a ValueError) in one line naming it.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import io
import os
import pathlib
import pickle
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.core import fileio

PathLike = str | os.PathLike

# The 101 classes of UCF-101 in `classInd.txt` order (1-based there, 0-based here).
UCF101_CLASSES: tuple[str, ...] = (
  'ApplyEyeMakeup',
  'ApplyLipstick',
  'Archery',
  'BabyCrawling',
  'BalanceBeam',
  'BandMarching',
  'BaseballPitch',
  'Basketball',
  'BasketballDunk',
  'BenchPress',
  'Biking',
  'Billiards',
  'BlowDryHair',
  'BlowingCandles',
  'BodyWeightSquats',
  'Bowling',
  'BoxingPunchingBag',
  'BoxingSpeedBag',
  'BreastStroke',
  'BrushingTeeth',
  'CleanAndJerk',
  'CliffDiving',
  'CricketBowling',
  'CricketShot',
  'CuttingInKitchen',
  'Diving',
  'Drumming',
  'Fencing',
  'FieldHockeyPenalty',
  'FloorGymnastics',
  'FrisbeeCatch',
  'FrontCrawl',
  'GolfSwing',
  'Haircut',
  'Hammering',
  'HammerThrow',
  'HandstandPushups',
  'HandstandWalking',
  'HeadMassage',
  'HighJump',
  'HorseRace',
  'HorseRiding',
  'HulaHoop',
  'IceDancing',
  'JavelinThrow',
  'JugglingBalls',
  'JumpingJack',
  'JumpRope',
  'Kayaking',
  'Knitting',
  'LongJump',
  'Lunges',
  'MilitaryParade',
  'Mixing',
  'MoppingFloor',
  'Nunchucks',
  'ParallelBars',
  'PizzaTossing',
  'PlayingCello',
  'PlayingDaf',
  'PlayingDhol',
  'PlayingFlute',
  'PlayingGuitar',
  'PlayingPiano',
  'PlayingSitar',
  'PlayingTabla',
  'PlayingViolin',
  'PoleVault',
  'PommelHorse',
  'PullUps',
  'Punch',
  'PushUps',
  'Rafting',
  'RockClimbingIndoor',
  'RopeClimbing',
  'Rowing',
  'SalsaSpin',
  'ShavingBeard',
  'Shotput',
  'SkateBoarding',
  'Skiing',
  'Skijet',
  'SkyDiving',
  'SoccerJuggling',
  'SoccerPenalty',
  'StillRings',
  'SumoWrestling',
  'Surfing',
  'Swing',
  'TableTennisShot',
  'TaiChi',
  'TennisSwing',
  'ThrowDiscus',
  'TrampolineJumping',
  'Typing',
  'UnevenBars',
  'VolleyballSpiking',
  'WalkingWithDog',
  'WallPushups',
  'WritingOnBoard',
  'YoYo',
)

# The 24 annotated classes of UCF101-24, in their label order (0..23).
UCF24_CLASSES: tuple[str, ...] = (
  'Basketball',
  'BasketballDunk',
  'Biking',
  'CliffDiving',
  'CricketBowling',
  'Diving',
  'Fencing',
  'FloorGymnastics',
  'GolfSwing',
  'HorseRiding',
  'IceDancing',
  'LongJump',
  'PoleVault',
  'RopeClimbing',
  'SalsaSpin',
  'SkateBoarding',
  'Skiing',
  'Skijet',
  'SoccerJuggling',
  'Surfing',
  'TennisSwing',
  'TrampolineJumping',
  'VolleyballSpiking',
  'WalkingWithDog',
)

UCF101_FRAME_SIZE = (240, 320)  # (height, width) of every UCF-101 video.


@dataclasses.dataclass(frozen=True)
class Tube:
  """One actor's track: `boxes[i]` is the corner box on frame `start + i`."""

  label: int
  start: int
  end: int
  boxes: np.ndarray  # float64 (end - start, 4): x1, y1, x2, y2 in original pixels.

  def __post_init__(self):
    boxes = np.asarray(self.boxes, dtype=np.float64)
    if boxes.shape != (self.end - self.start, 4):
      raise ValueError(
        f'tube [{self.start}, {self.end}) needs boxes of shape '
        f'({self.end - self.start}, 4), got {boxes.shape}'
      )
    boxes.setflags(write=False)
    object.__setattr__(self, 'boxes', boxes)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Tube):
      return NotImplemented
    return (self.label, self.start, self.end) == (
      other.label,
      other.start,
      other.end,
    ) and np.array_equal(self.boxes, other.boxes)

  __hash__ = None  # type: ignore[assignment]

  @property
  def num_boxes(self) -> int:
    return self.end - self.start


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video: where it is, its class, its length and its actor tubes."""

  path: str  # `Class/v_Class_gGG_cCC`, no extension.
  label: int  # 0-based index into the 101 (or classInd.txt) classes.
  class_name: str
  num_frames: int
  tubes: tuple[Tube, ...] = ()


def class_of(path: str) -> str:
  """`Class/v_Class_gGG_cCC[.avi]` -> `Class`."""
  head, sep, _ = path.partition('/')
  if not sep:
    raise ValueError(f"video path {path!r} is not of the form 'Class/v_Class_gGG_cCC'")
  return head


def strip_extension(path: str) -> str:
  return path[:-4] if path.endswith('.avi') else path


def group_of(path: str) -> int:
  """`.../v_Class_g07_c03` -> 7 (the UCF-101 group: same actor and scene)."""
  stem = strip_extension(path).rsplit('/', 1)[-1]
  parts = stem.split('_')
  if len(parts) < 4 or not parts[-2].startswith('g'):
    raise ValueError(f"video name {stem!r} is not of the form 'v_Class_gGG_cCC'")
  return int(parts[-2][1:])


# --------------------------------------------------------------------------- lists


class DataFileError(errors.UserError, ValueError):
  """A user's list or annotation file that cannot be used; the message is one line."""


def _read_lines(path: PathLike) -> list[str]:
  try:
    text = pathlib.Path(path).read_text(encoding='utf-8', errors='strict')
  except UnicodeDecodeError as e:
    raise DataFileError(f'{path} is not a UTF-8 text list ({e.reason} at byte {e.start})') from None
  return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_index(path: PathLike) -> tuple[str, ...]:
  """Reads `classInd.txt` (`1 ApplyEyeMakeup` ...) into 0-based class names."""
  names = []
  for n, line in enumerate(_read_lines(path), start=1):
    parts = line.split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != n:
      raise ValueError(f"{path}: line {n} should be '{n} ClassName', found {line!r}")
    names.append(parts[1])
  if not names:
    raise ValueError(f'{path}: no classes listed')
  return tuple(names)


def read_split_list(path: PathLike) -> list[str]:
  """Reads a split list into video paths without extension.

  Accepts the three formats in use: `trainlist0N.txt` (`Class/v_X.avi label`),
  `testlist0N.txt` (`Class/v_X.avi`) and the UCF101-24 lists (`Class/v_X`).
  """
  paths = []
  for n, line in enumerate(_read_lines(path), start=1):
    parts = line.split()
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
      raise DataFileError(f"{path}: line {n} should be 'Class/v_X.avi [label]', found {line!r}")
    try:
      class_of(parts[0])
    except ValueError as e:
      raise DataFileError(f'{path}: line {n}: {e}') from None
    paths.append(strip_extension(parts[0].replace('\\', '/')))
  return paths


def read_labeled_split_list(path: PathLike) -> list[tuple[str, int]]:
  """Reads `trainlist0N.txt` into (path, 0-based label) pairs."""
  pairs = []
  for n, line in enumerate(_read_lines(path), start=1):
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit():
      raise DataFileError(f"{path}: line {n} should be 'Class/v_X.avi label', found {line!r}")
    pairs.append((strip_extension(parts[0]), int(parts[1]) - 1))
  return pairs


def official_split(list_dir: PathLike, split: int) -> tuple[list[str], list[str]]:
  """(train paths, test paths) of split 1, 2 or 3 from `ucfTrainTestlist/`."""
  if split not in (1, 2, 3):
    raise ValueError(f'split must be 1, 2 or 3, got {split}')
  list_dir = pathlib.Path(list_dir)
  return (
    read_split_list(list_dir / f'trainlist0{split}.txt'),
    read_split_list(list_dir / f'testlist0{split}.txt'),
  )


def write_class_index(class_names: Sequence[str], path: PathLike) -> None:
  fileio.atomic_write(path, ''.join(f'{i} {c}\n' for i, c in enumerate(class_names, start=1)))


def write_split_lists(
  list_dir: PathLike,
  split: int,
  train: Sequence[str],
  test: Sequence[str],
  class_names: Sequence[str],
) -> None:
  """Writes `trainlist0N.txt` / `testlist0N.txt` in the official format."""
  index = {c: i for i, c in enumerate(class_names)}
  list_dir = pathlib.Path(list_dir)
  fileio.atomic_write(
    list_dir / f'trainlist0{split}.txt',
    ''.join(f'{p}.avi {index[class_of(p)] + 1}\n' for p in train),
  )
  fileio.atomic_write(list_dir / f'testlist0{split}.txt', ''.join(f'{p}.avi\n' for p in test))


# --------------------------------------------------------------------------- pickles


class AnnotationFileError(DataFileError):
  """An annotation pickle that cannot be read or holds something other than annotations."""


class UnsafePickleError(AnnotationFileError):
  """An annotation pickle that references code annotation files never contain."""


# Size caps of what a pickle may hold. The real files are far below them: pyannot.pkl
# is 3,541,073 bytes and nests 5 deep (docs/data.md). Arrays need no cap of their own:
# each must be exactly as large as the bytes the file holds for it.
MAX_PICKLE_BYTES = 64 * 2**20
MAX_NESTING = 16

_PICKLE_PROBLEM = 'holds something annotation files never do'


def _refuse(what: str) -> None:
  raise pickle.UnpicklingError(f'{_PICKLE_PROBLEM}: {what}')


class _CheckedArray(np.ndarray):
  """An ndarray being unpickled: its state is checked before numpy builds it.

  numpy trusts a pickled array's shape (an object array with a short list crashes
  the interpreter); here the data must be plain values of exactly the stated size.
  `_plain_values` turns these back into plain ndarrays.
  """

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      _refuse('an array state that numpy never writes')
    shape, dtype, _, data = state[-4:]
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
      _refuse('an array of Python objects')
    if not isinstance(data, (bytes, str)):  # str: a Python 2 pickle read as latin1
      _refuse('an array without its data')
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
      _refuse(f'an array of shape {shape!r}')
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data):
      _refuse(f'an array of shape {shape} and {len(data)} bytes of data')
    super().__setstate__(state)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _CheckedArray:
  """numpy's `_reconstruct` for the empty array a pickle starts each array from."""
  del typecode
  if subtype is not _CheckedArray or shape != (0,):
    _refuse(f'an array started as {getattr(subtype, "__name__", subtype)}{shape!r}')
  return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
  if not isinstance(spec, str):
    _refuse(f'a dtype of {type(spec).__name__}')
  return np.dtype(spec, align, copy)


def _scalar(dtype: Any, data: Any) -> Any:
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, str)):
    _refuse('a numpy scalar of Python objects')
  if len(data) != dtype.itemsize:
    _refuse(f'a {dtype} scalar of {len(data)} bytes')
  return np.frombuffer(data.encode('latin1') if isinstance(data, str) else data, dtype)[0]


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
  """numpy's `_frombuffer` (protocol 5): a view of bytes already in the file."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    _refuse('an array of Python objects')
  if not isinstance(data, (bytes, bytearray)):
    _refuse('an array without its data')
  return np.frombuffer(data, dtype).reshape(shape, order=order)


def _encode(text: Any, encoding: str) -> bytes:
  """`_codecs.encode` as Python 3 pickles bytes for protocol 2: latin1 only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    _refuse(f'bytes encoded as {encoding!r}')
  return text.encode('latin1')


# Every global the two real formats reference (numpy arrays, dtypes and scalars, as
# pickled by numpy 1.x and 2.x, any protocol; bytes as Python 3 pickles them for
# protocol 2), each replaced by a bounded equivalent. Nothing is imported.
_SAFE_GLOBALS = {
  **{
    (numpy_core, name): value
    for numpy_core in ('numpy.core.multiarray', 'numpy._core.multiarray')
    for name, value in (('_reconstruct', _reconstruct), ('scalar', _scalar))
  },
  **{(core, '_frombuffer'): _frombuffer for core in ('numpy.core.numeric', 'numpy._core.numeric')},
  ('numpy', 'ndarray'): _CheckedArray,
  ('numpy', 'dtype'): _dtype,
  ('_codecs', 'encode'): _encode,
}

_EXPECTED_FILE = 'expected pyannot.pkl or UCF101v2-GT.pkl as downloaded'


class _RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that knows only `_SAFE_GLOBALS`: loading never runs foreign code."""

  def __init__(self, file, source: PathLike):
    super().__init__(file, encoding='latin1')  # Python 2 pickles.
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    # Python 2 names (`__builtin__.set`) -> Python 3 ones, as pickle maps them.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if (module, name) not in _SAFE_GLOBALS:
      raise UnsafePickleError(
        f'refusing to load {self._source}: it references {module}.{name}, which '
        'annotation files never contain'
      )
    return _SAFE_GLOBALS[(module, name)]


def _plain_values(value: Any, depth: int, done: dict[int, Any]) -> Any:
  """`value` with plain ndarrays for `_CheckedArray`s; refuses nesting past MAX_NESTING.

  Shared objects are converted once (`done`, by id); a cycle is nesting without end.
  """
  if depth > MAX_NESTING:
    _refuse(f'containers nested over {MAX_NESTING} deep')
  if isinstance(value, _CheckedArray):
    return value.view(np.ndarray)
  if not isinstance(value, (dict, list, tuple, set, frozenset)):
    return value
  if id(value) not in done:
    if isinstance(value, dict):
      items = {k: _plain_values(v, depth + 1, done) for k, v in value.items()}
    else:
      items = type(value)(_plain_values(v, depth + 1, done) for v in value)
    done[id(value)] = items
  return done[id(value)]


def _one_line(text: object) -> str:
  return ' '.join(str(text).split())


def _read_capped(path: PathLike) -> bytes:
  try:
    f = open(path, 'rb')
  except FileNotFoundError:
    raise FileNotFoundError(f'annotation file {path} not found: {_EXPECTED_FILE}') from None
  with f:
    # Its size, not the cap, bounds the read: read(n) reserves n bytes at once.
    size = os.fstat(f.fileno()).st_size
    data = f.read(min(size, MAX_PICKLE_BYTES) + 1)
  if len(data) > MAX_PICKLE_BYTES:
    raise AnnotationFileError(
      f'{path} is over {MAX_PICKLE_BYTES // 2**20} MiB, far more than any annotation '
      f'file; {_EXPECTED_FILE}'
    )
  return data


def load_pickle(path: PathLike) -> Any:
  """Loads an annotation pickle, admitting only numpy arrays and builtin values.

  At most MAX_PICKLE_BYTES and MAX_NESTING deep; numpy arrays, dtypes and scalars are
  built by bounded stand-ins (`_SAFE_GLOBALS`), each no larger than its bytes in the file.

  Raises:
    FileNotFoundError: no file at `path`.
    UnsafePickleError: the pickle references any other global (e.g. `os.system`).
    AnnotationFileError: the file is not a complete pickle, is too large, too deeply
      nested, or holds arrays of objects or of another size than their data.
  """
  data = _read_capped(path)
  try:
    return _plain_values(_RestrictedUnpickler(io.BytesIO(data), path).load(), 0, {})
  except AnnotationFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Junk or truncated files fail in many ways (EOFError, UnpicklingError,
    # ValueError, ...); none of them names the file.
    raise AnnotationFileError(
      f'{path} is not a readable annotation pickle ({type(e).__name__}: '
      f'{_one_line(e)}); {_EXPECTED_FILE}'
    ) from None


def _class_label(path: str, index: Mapping[str, int], source: PathLike) -> int:
  name = class_of(path)
  if name not in index:
    raise AnnotationFileError(
      f'{source}: video {path!r} is of class {name!r}, which is not among '
      f'the {len(index)} known classes'
    )
  return index[name]


def detect_format(data: Any, source: PathLike = 'annotation file') -> str:
  """'pyannot' or 'act' for a loaded annotation pickle."""
  if isinstance(data, dict) and 'gttubes' in data and 'nframes' in data:
    return 'act'
  if isinstance(data, dict) and all(
    isinstance(v, dict) and 'annotations' in v for v in data.values()
  ):
    return 'pyannot'
  raise AnnotationFileError(
    f"{source}: unknown annotation format: expected pyannot.pkl (video -> {{'label', "
    "'numf', 'annotations'}) or UCF101v2-GT.pkl (keys 'gttubes', 'nframes')"
  )


def records_from_pyannot(
  data: Mapping[str, Any],
  class_names: Sequence[str] = UCF101_CLASSES,
  source: PathLike = 'pyannot.pkl',
) -> dict[str, VideoRecord]:
  """pyannot dict -> {path: VideoRecord}, sorted by path."""
  index = {c: i for i, c in enumerate(class_names)}
  records = {}
  for path in sorted(data):
    entry = data[path]
    try:
      num_frames = int(np.int64(entry['numf']))
      tubes = []
      for t in entry['annotations']:
        start, end = int(np.int64(t['sf'])), int(np.int64(t['ef']))
        xywh = np.asarray(t['boxes']).astype(np.float64).reshape(-1, 4)
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        tubes.append(Tube(int(t['label']), start, end, corners))
    except (KeyError, TypeError, ValueError) as e:
      raise AnnotationFileError(
        f'{source}: malformed entry for video {path!r}: {_one_line(e)}'
      ) from None
    records[path] = VideoRecord(
      path, _class_label(path, index, source), class_of(path), num_frames, tuple(tubes)
    )
  return records


def records_from_act(
  data: Mapping[str, Any],
  class_names: Sequence[str] = UCF101_CLASSES,
  source: PathLike = 'UCF101v2-GT.pkl',
) -> dict[str, VideoRecord]:
  """ACT/MOC dict (1-based frames, `frame x1 y1 x2 y2` rows) -> {path: VideoRecord}."""
  index = {c: i for i, c in enumerate(class_names)}
  records = {}
  for path in sorted(data['gttubes']):
    tubes = []
    for label in sorted(data['gttubes'][path]):
      for arr in data['gttubes'][path][label]:
        arr = np.asarray(arr).astype(np.float64).reshape(-1, 5)
        frames = arr[:, 0].astype(np.int64) - 1
        if len(frames) == 0 or np.any(np.diff(frames) != 1):
          raise AnnotationFileError(
            f'{source}: tube of video {path!r} (label {label}) does not cover consecutive frames'
          )
        tubes.append(Tube(int(label), int(frames[0]), int(frames[-1]) + 1, arr[:, 1:]))
    if path not in data['nframes']:
      raise AnnotationFileError(f"{source}: video {path!r} has tubes but no 'nframes' entry")
    records[path] = VideoRecord(
      path,
      _class_label(path, index, source),
      class_of(path),
      int(np.int64(data['nframes'][path])),
      tuple(tubes),
    )
  return records


def load_annotations(
  path: PathLike, class_names: Sequence[str] = UCF101_CLASSES
) -> dict[str, VideoRecord]:
  """Reads `pyannot.pkl` or `UCF101v2-GT.pkl` (detected) into {path: VideoRecord}.

  Raises:
    FileNotFoundError: no file at `path`.
    AnnotationFileError: the file is unreadable, unsafe (`UnsafePickleError`) or not
      in either format; the message is one line naming the file.
  """
  data = load_pickle(path)
  convert = records_from_act if detect_format(data, path) == 'act' else records_from_pyannot
  try:
    return convert(data, class_names, source=path)
  except AnnotationFileError:
    raise
  except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
    raise AnnotationFileError(
      f'{path}: malformed annotations ({type(e).__name__}: {_one_line(e)}); {_EXPECTED_FILE}'
    ) from None


def _uint_dtype(max_value: float) -> type:
  return np.uint8 if max_value < 256 else np.uint16


def to_pyannot(records: Iterable[VideoRecord]) -> dict[str, dict[str, Any]]:
  """Records with tubes -> the pyannot dict, with the real file's dtypes.

  Boxes must be whole pixels (they are stored as uint8/uint16 `[x, y, w, h]`).
  """
  out = {}
  for r in records:
    if not r.tubes:
      continue
    annotations = []
    for t in r.tubes:
      xywh = np.concatenate([t.boxes[:, :2], t.boxes[:, 2:] - t.boxes[:, :2]], axis=1)
      if np.any(xywh != np.round(xywh)) or np.any(xywh < 0):
        raise ValueError(f'video {r.path!r}: pyannot boxes must be non-negative whole pixels')
      annotations.append(
        {
          'label': int(t.label),
          'sf': int(t.start),
          'ef': int(t.end),
          'boxes': xywh.astype(_uint_dtype(xywh.max(initial=0))),
        }
      )
    numf = _uint_dtype(r.num_frames)(r.num_frames)
    out[r.path] = {'label': int(r.tubes[0].label), 'numf': numf, 'annotations': annotations}
  return out


def write_pyannot(records: Iterable[VideoRecord], path: PathLike) -> None:
  """Writes `pyannot.pkl` (protocol 2, as the Python 2 original) atomically."""
  fileio.atomic_write(path, pickle.dumps(to_pyannot(records), protocol=2))


def to_act(
  records: Iterable[VideoRecord],
  labels: Sequence[str],
  train_videos: Sequence[str],
  test_videos: Sequence[str],
  frame_size: tuple[int, int] = UCF101_FRAME_SIZE,
) -> dict[str, Any]:
  """Records -> the ACT/MOC `UCF101v2-GT.pkl` dict (split 1 only, like the original)."""
  records = list(records)
  gttubes = {}
  for r in records:
    by_label = collections.defaultdict(list)
    for t in r.tubes:
      frames = np.arange(t.start, t.end, dtype=np.float64)[:, None] + 1
      by_label[int(t.label)].append(np.concatenate([frames, t.boxes], axis=1))
    gttubes[r.path] = dict(by_label)
  return {
    'labels': list(labels),
    'train_videos': [list(train_videos)],
    'test_videos': [list(test_videos)],
    'nframes': {r.path: int(r.num_frames) for r in records},
    'resolution': {r.path: tuple(frame_size) for r in records},
    'gttubes': gttubes,
  }


def write_act(
  records: Iterable[VideoRecord],
  path: PathLike,
  labels: Sequence[str],
  train_videos: Sequence[str],
  test_videos: Sequence[str],
  frame_size: tuple[int, int] = UCF101_FRAME_SIZE,
) -> None:
  data = to_act(records, labels, train_videos, test_videos, frame_size)
  fileio.atomic_write(path, pickle.dumps(data, protocol=2))
