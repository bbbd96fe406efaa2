"""Annotation readers on the real UCF101-24 pyannot.pkl, the ACT format and split lists."""

import collections
import pickle

import numpy as np
import pytest

from stconsist_jax.data import records as records_lib
from stconsist_jax.data import safe_pickle
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import split_lists
from stconsist_jax.data.ucf101 import videos
from stconsist_jax.data.ucf101 import annotations as ann
from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib
from stconsist_jax.data.ucf101 import stats


@pytest.fixture(scope='module')
def raw(ucf24_dir):
  with open(ucf24_dir / 'pyannot.pkl', 'rb') as f:
    return pickle.load(f, encoding='latin1')


@pytest.fixture(scope='module')
def records(ucf24_dir):
  return ann.load_annotations(ucf24_dir / 'pyannot.pkl')


def test_real_counts_match_readme_facts(records, raw):
  assert len(records) == 3194
  assert sum(t.num_boxes for r in records.values() for t in r.tubes) == 573_862
  frames = sum(len({f for t in r.tubes for f in range(t.start, t.end)}) for r in records.values())
  assert frames == 478_863
  tubes_per_video = collections.Counter(len(r.tubes) for r in records.values())
  assert min(tubes_per_video) == 1 and max(tubes_per_video) == 10
  assert tubes_per_video[1] == 2479
  assert max(r.num_frames for r in records.values()) == 900
  dtypes = collections.Counter(np.asarray(v['numf']).dtype.name for v in raw.values())
  assert dtypes == {'uint8': 2864, 'uint16': 330}


def test_records_fields(records, raw):
  r = records['Skijet/v_Skijet_g10_c04']
  assert r.class_name == 'Skijet' and r.label == classes.UCF101_CLASSES.index('Skijet') == 81
  assert r.num_frames == int(raw[r.path]['numf']) == 164
  t = r.tubes[0]
  assert (t.label, t.start, t.end) == (17, 0, 164)
  assert t.boxes.dtype == np.float64
  np.testing.assert_array_equal(t.boxes[0], [177, 53, 177 + 48, 53 + 61])
  for rec in records.values():
    assert all(t.label == classes.UCF24_CLASSES.index(rec.class_name) for t in rec.tubes)


def test_no_wrapped_coordinates(records, raw):
  wide = 0
  for path, v in raw.items():
    for tube, t in zip(v['annotations'], records[path].tubes):
      b = [[int(c) for c in row] for row in tube['boxes']]  # Python ints: no wrap.
      expected = np.array([[x, y, x + w, y + h] for x, y, w, h in b], np.float64)
      np.testing.assert_array_equal(t.boxes, expected)
      wide += int(np.sum(expected[:, 2] > 255))
  # Boxes whose right edge passes 255 exist, and uint8 sums would have wrapped there.
  assert wide > 0
  all_boxes = np.concatenate([t.boxes for r in records.values() for t in r.tubes])
  assert np.all(all_boxes[:, 2] > all_boxes[:, 0]) and np.all(all_boxes[:, 3] > all_boxes[:, 1])
  assert all_boxes[:, 2].max() <= 320 and all_boxes[:, 3].max() <= 240


def _act_by_hand(raw):
  """An ACT/MOC UCF101v2-GT.pkl built straight from pyannot entries (1-based, corners)."""
  gttubes, nframes = {}, {}
  for path, v in raw.items():
    by_label = {}
    for tube in v['annotations']:
      rows = []
      for i, (x, y, w, h) in enumerate(np.asarray(tube['boxes'], np.int64)):
        rows.append([tube['sf'] + i + 1, x, y, x + w, y + h])
      by_label.setdefault(tube['label'], []).append(np.array(rows, np.float32))
    gttubes[path] = by_label
    nframes[path] = int(v['numf'])
  return {
    'labels': list(classes.UCF24_CLASSES),
    'train_videos': [[]],
    'test_videos': [[]],
    'nframes': nframes,
    'resolution': {p: (240, 320) for p in raw},
    'gttubes': gttubes,
  }


def test_act_format_gives_identical_records(records, raw, tmp_path):
  path = tmp_path / 'UCF101v2-GT.pkl'
  path.write_bytes(pickle.dumps(_act_by_hand(raw), protocol=2))
  act = ann.load_annotations(path)
  assert list(act) == list(records)
  assert act == records
  # The writer round-trips as well.
  ann.write_act(records.values(), tmp_path / 'w.pkl', classes.UCF24_CLASSES, [], [])
  assert ann.load_annotations(tmp_path / 'w.pkl') == records


def test_pyannot_writer_keeps_real_dtypes(records, raw, tmp_path):
  ann.write_pyannot(records.values(), tmp_path / 'p.pkl')
  with open(tmp_path / 'p.pkl', 'rb') as f:
    back = pickle.load(f, encoding='latin1')
  assert set(back) == set(raw)
  for path, v in raw.items():
    assert type(back[path]['numf']) is type(v['numf']) and back[path]['numf'] == v['numf']
    assert back[path]['label'] == v['label']
    for a, b in zip(back[path]['annotations'], v['annotations']):
      assert (a['label'], a['sf'], a['ef']) == (b['label'], b['sf'], b['ef'])
      assert a['boxes'].dtype == b['boxes'].dtype
      np.testing.assert_array_equal(a['boxes'], b['boxes'])


def test_validation_report_on_real_lists(records, ucf24_dir):
  train = split_lists.read_split_list(ucf24_dir / 'trainlist01.txt')
  test = split_lists.read_split_list(ucf24_dir / 'testlist01.txt')
  assert (len(train), len(test)) == (2290, 910)
  report = manual_dir_lib.validate(records, listed=train + test)
  assert report.counts == {'listed_without_annotations': 6}
  missing = sorted(set(train + test) - set(records))
  assert len(missing) == 6 and set(missing) <= set(train)
  assert set(report.examples['listed_without_annotations']) <= set(missing)


def test_validation_counts_injected_problems(records):
  r = records['Skijet/v_Skijet_g10_c04']
  boxes = r.tubes[0].boxes.copy()
  boxes[3] = [300, 10, 330, 50]  # right edge past 320
  boxes[4] = [10, 10, 10, 50]  # zero width
  bad = records_lib.VideoRecord(
    r.path,
    r.label,
    r.class_name,
    100,
    (records_lib.AnnotatedTube(r.tubes[0].label, 0, 164, boxes),),
  )
  report = manual_dir_lib.validate(
    {r.path: bad}, listed=[r.path, 'Skijet/v_Skijet_g99_c01'], video_dir='/nonexistent'
  )
  assert report.counts == {
    'box_outside_frame': 1,
    'empty_box': 1,
    'tube_past_video_end': 1,
    'listed_without_annotations': 1,
    'video_file_missing': 2,
  }
  assert '164 > 100' in report.examples['tube_past_video_end'][0]
  assert 'box_outside_frame: 1' in report.summary()


def test_split_list_formats(tmp_path):
  (tmp_path / 'classInd.txt').write_text('1 Alpha\n2 Beta\n')
  (tmp_path / 'trainlist01.txt').write_text('Beta/v_Beta_g08_c01.avi 2\r\n')
  (tmp_path / 'testlist01.txt').write_text('Alpha/v_Alpha_g01_c01.avi')
  assert split_lists.read_class_index(tmp_path / 'classInd.txt') == ('Alpha', 'Beta')
  assert split_lists.official_split(tmp_path, 1) == (
    ['Beta/v_Beta_g08_c01'],
    ['Alpha/v_Alpha_g01_c01'],
  )
  assert split_lists.read_labeled_split_list(tmp_path / 'trainlist01.txt') == [
    ('Beta/v_Beta_g08_c01', 1)
  ]
  assert videos.group_of('Beta/v_Beta_g08_c01') == 8
  (tmp_path / 'bad.txt').write_text('1 Alpha\n3 Beta\n')
  with pytest.raises(ValueError, match=r"bad.txt: line 2 should be '2 ClassName'"):
    split_lists.read_class_index(tmp_path / 'bad.txt')


def test_unknown_class_is_a_clear_error(tmp_path):
  data = {'Nope/v_Nope_g01_c01': {'label': 0, 'numf': np.uint8(5), 'annotations': []}}
  (tmp_path / 'p.pkl').write_bytes(pickle.dumps(data))
  with pytest.raises(ValueError, match="class 'Nope'"):
    ann.load_annotations(tmp_path / 'p.pkl')


def test_stats_totals_and_first_tube(records, raw):
  table = stats.class_stats(records.values())
  assert table['TOTAL']['videos'] == 3194
  assert table['TOTAL']['boxes'] == 573_862
  assert table['TOTAL']['annotated_frames'] == 478_863
  assert len(table) == 25
  first = sum(
    int(v['annotations'][0]['ef']) - int(v['annotations'][0]['sf'])
    for k, v in raw.items()
    if k.startswith('Biking/')
  )
  assert table['Biking']['first_tube_boxes'] == first
  assert table['Biking']['videos'] == sum(k.startswith('Biking/') for k in raw)


def test_stats_command_line_json(ucf24_dir):
  import json
  import subprocess
  import sys

  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'stconsist_jax.data.ucf101.stats',
      '--annotations',
      str(ucf24_dir / 'pyannot.pkl'),
      '--json',
    ],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  total = json.loads(out)['TOTAL']
  assert (total['videos'], total['boxes'], total['annotated_frames']) == (3194, 573_862, 478_863)


@pytest.mark.parametrize('content', [b'cbuiltins\nbytearray\n(I3\ntR.', b'\x80\x02}q\x00(X'])
def test_stats_command_line_bad_file_is_one_line(tmp_path, content):
  import subprocess
  import sys

  path = tmp_path / 'pyannot.pkl'
  path.write_bytes(content)  # refused, truncated
  result = subprocess.run(
    [sys.executable, '-m', 'stconsist_jax.data.ucf101.stats', f'--annotations={path}'],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: ') and str(path) in result.stderr
  assert result.stderr.count('\n') == 1, result.stderr


# --------------------------------------------------------------------------- safe loading


class _Exploit:
  """Pickles to a call of `func(*args)` on load: what a crafted annotation file does."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def _crafted_pyannot(payload):
  """A pyannot-shaped dict whose first tube carries `payload` as its boxes."""
  return {
    'Skijet/v_Skijet_g01_c01': {
      'label': 17,
      'numf': np.uint8(2),
      'annotations': [{'label': 17, 'sf': 0, 'ef': 2, 'boxes': payload}],
    }
  }


def _exploits(marker):
  import builtins
  import os
  import subprocess

  return {
    'os.system': _Exploit(os.system, f'touch {marker}'),
    'builtins.eval': _Exploit(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
    'subprocess.Popen': _Exploit(subprocess.Popen, ['touch', str(marker)]),
  }


@pytest.mark.parametrize('protocol', [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize('name', ['os.system', 'builtins.eval', 'subprocess.Popen'])
def test_crafted_pickle_is_refused_without_running_it(tmp_path, name, protocol):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'pyannot.pkl'
  path.write_bytes(pickle.dumps(_crafted_pyannot(_exploits(marker)[name]), protocol))
  # os.system pickles as posix.system (nt.system on Windows).
  module, func = name.rsplit('.', 1)
  shown = r'(os|posix|nt)' if module == 'os' else module
  pattern = (
    rf'^refusing to load .*pyannot\.pkl: it references {shown}\.{func}, '
    r'which annotation files never contain$'
  )
  with pytest.raises(safe_pickle.UnsafePickleError, match=pattern) as info:
    ann.load_annotations(path)
  assert '\n' not in str(info.value)
  with pytest.raises(safe_pickle.UnsafePickleError):
    safe_pickle.load_pickle(path)
  assert not marker.exists()


def test_restricted_loader_reads_the_real_pyannot(ucf24_dir, raw):
  safe = safe_pickle.load_pickle(ucf24_dir / 'pyannot.pkl')
  assert list(safe) == list(raw)
  key = 'Skijet/v_Skijet_g10_c04'
  assert type(safe[key]['numf']) is type(raw[key]['numf'])
  np.testing.assert_array_equal(
    safe[key]['annotations'][0]['boxes'], raw[key]['annotations'][0]['boxes']
  )


def test_act_pickle_of_any_protocol_loads(records, raw, tmp_path):
  data = _act_by_hand(raw)
  for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
    path = tmp_path / f'UCF101v2-GT.p{protocol}.pkl'
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert ann.load_annotations(path) == records, protocol


@pytest.mark.parametrize('content', [b'', b'GIF89a not a pickle at all', b'\x80\x02}q\x00(X'])
def test_junk_annotation_file_is_a_one_line_error_naming_it(tmp_path, content):
  path = tmp_path / 'pyannot.pkl'
  path.write_bytes(content)
  with pytest.raises(safe_pickle.AnnotationFileError, match='pyannot.pkl') as info:
    ann.load_annotations(path)
  message = str(info.value)
  assert str(path) in message and '\n' not in message
  assert 'expected' in message


def test_wrong_structure_and_missing_file_are_clear_errors(tmp_path):
  path = tmp_path / 'UCF101v2-GT.pkl'
  path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
  with pytest.raises(
    safe_pickle.AnnotationFileError, match=r'UCF101v2-GT\.pkl.*unknown annotation'
  ):
    ann.load_annotations(path)
  path.write_bytes(pickle.dumps({'gttubes': {'A/v_A_g01_c01': 5}, 'nframes': {}}))
  with pytest.raises(safe_pickle.AnnotationFileError, match=r'UCF101v2-GT\.pkl.*malformed'):
    ann.load_annotations(path)
  with pytest.raises(FileNotFoundError, match=r'nope\.pkl.*pyannot\.pkl or UCF101v2-GT'):
    ann.load_annotations(tmp_path / 'nope.pkl')


# A child process (numpy crashes on some of these files) loads one crafted file and
# prints the peak of the memory Python and numpy allocated meanwhile (MiB).
_PEAK_MEMORY_CHILD = """
import sys, tracemalloc
from stconsist_jax.data import safe_pickle
tracemalloc.start()
try:
  safe_pickle.load_pickle(sys.argv[1])
  print('loaded')
except safe_pickle.AnnotationFileError as e:
  print(e)
print(tracemalloc.get_traced_memory()[1] / 2**20)
"""


def _nested_lists(depth):
  """A protocol-2 pickle of `depth` lists, each inside the next (3 bytes a level)."""
  return b'\x80\x02' + b']' * depth + b'a' * (depth - 1) + b'.'


@pytest.mark.parametrize(
  'content, why',
  [
    # 36 bytes that ask for a 3 GB bytearray.
    (b'cbuiltins\nbytearray\n(I3000000000\ntR.', 'references builtins.bytearray'),
    # An object array of 10**9 slots with no data (numpy itself would crash on it).
    (
      pickle.dumps(np.zeros(2, object), protocol=2).replace(b'K\x02\x85', b'J\x00\xca\x9a;\x85'),
      'array of Python objects',
    ),
    (_nested_lists(100_000), 'nested over 16 deep'),
  ],
  ids=['bytearray', 'object_array', 'nested'],
)
def test_memory_bombs_are_refused_in_one_line_with_little_memory(tmp_path, content, why):
  import subprocess
  import sys

  path = tmp_path / 'pyannot.pkl'
  path.write_bytes(content)
  out = subprocess.run(
    [sys.executable, '-c', _PEAK_MEMORY_CHILD, str(path)],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.splitlines()
  assert len(out) == 2, out
  assert why in out[0] and str(path) in out[0]
  # The bytearray alone would be 2861 MiB.
  assert float(out[1]) < 20, out


def test_real_structures_are_within_the_caps(raw):
  def depth(value):
    if isinstance(value, dict):
      return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, (list, tuple)):
      return 1 + max(map(depth, value), default=0)
    return 1

  # dict -> video dict -> tube list -> tube dict -> boxes array; ACT's is as deep.
  assert depth(raw) == 5 <= safe_pickle.MAX_NESTING
  assert depth(_act_by_hand({k: raw[k] for k in sorted(raw)[:3]})) == 5


def test_oversized_annotation_file_is_refused(tmp_path, monkeypatch):
  path = tmp_path / 'pyannot.pkl'
  path.write_bytes(pickle.dumps({'a': b'x' * 2000}, protocol=2))
  monkeypatch.setattr(safe_pickle, 'MAX_PICKLE_BYTES', 1000)
  with pytest.raises(safe_pickle.AnnotationFileError, match=r'pyannot\.pkl is over') as info:
    safe_pickle.load_pickle(path)
  assert '\n' not in str(info.value)
