"""ACT ground-truth pickles (UCF101v2-GT / JHMDB-GT / MultiSports structure) read into a
dataset description: fields, 1-based frames, (h, w) resolutions, each bad record's line."""

import os
import pickle

import numpy as np
import pytest

from stconsist_jax.data import records as records_lib
from stconsist_jax.data import safe_pickle
from stconsist_jax.data.datasets import act_pickle


def _rows(first_frame, boxes):
  """ACT tube rows `frame x1 y1 x2 y2`, frames 1-based from `first_frame`."""
  boxes = np.asarray(boxes, np.float32)
  frames = np.arange(first_frame, first_frame + len(boxes), dtype=np.float32)[:, None]
  return np.concatenate([frames, boxes], axis=1)


RUN_BOXES = [[10, 20, 50, 80], [12, 20, 52, 80], [14, 21, 54, 81], [16, 22, 56, 82]]
JUMP_BOXES = [[100, 50, 300, 400], [110, 60, 310, 410], [120, 70, 320, 420]]


def _act_dict():
  """Two classes, three videos of three sizes, two splits, as ACT's files hold them."""
  return {
    'labels': ['run', 'jump'],
    'nframes': {'run/v1': np.uint16(10), 'jump/v2': 8, 'run/v3': 5},
    'resolution': {'run/v1': (240, 320), 'jump/v2': (480, 640), 'run/v3': (100, 200)},
    'gttubes': {
      'run/v1': {0: [_rows(2, RUN_BOXES)]},
      'jump/v2': {1: [_rows(6, JUMP_BOXES), _rows(1, [[1, 2, 3, 4]])]},
      'run/v3': {},
    },
    'train_videos': [['run/v1', 'jump/v2'], ['run/v1']],
    'test_videos': [['run/v3'], ['jump/v2', 'run/v3']],
  }


def _write(tmp_path, data, name='JHMDB-GT.pkl'):
  path = tmp_path / name
  path.write_bytes(pickle.dumps(data, protocol=2))
  return path


def test_reads_fields_frames_and_resolutions(tmp_path):
  description, report = act_pickle.read_act_pickle(_write(tmp_path, _act_dict()))
  assert description.name == 'JHMDB'
  assert description.class_names == ('run', 'jump')
  assert description.frame_source == 'jpeg_folders'
  assert set(description.splits) == {'split1', 'split2'}
  assert description.splits['split1'].train == ('run/v1', 'jump/v2')
  assert description.splits['split1'].test == ('run/v3',)
  assert description.splits['split2'].train == ('run/v1',)
  assert description.splits['split2'].test == ('jump/v2', 'run/v3')
  # resolution is (h, w) in the file, (w, h) here.
  assert description.resolution('jump/v2') == (640, 480)
  assert description.resolution('run/v3') == (200, 100)
  v1 = description.videos['run/v1']
  assert (v1.width, v1.height, v1.num_frames) == (320, 240, 10)
  # Frames 2..5 (1-based) are indices 1..4, end exclusive.
  assert v1.tubes == (records_lib.AnnotatedTube(0, 1, 5, np.array(RUN_BOXES, np.float64)),)
  # In the file's order.
  assert description.videos['jump/v2'].tubes == (
    records_lib.AnnotatedTube(1, 5, 8, np.array(JUMP_BOXES, np.float64)),
    records_lib.AnnotatedTube(1, 0, 1, np.array([[1, 2, 3, 4]], np.float64)),
  )
  assert description.videos['run/v3'].tubes == ()
  # run/v3 is listed twice (both test lists) without tubes: one line.
  assert dict(report.counts) == {'video_without_annotations': 1}
  assert "video 'run/v3': listed, without tubes" in report.lines[0]
  assert dict(report.notes) == {}


def test_each_bad_record_is_one_line_naming_file_video_and_frame(tmp_path):
  data = _act_dict()
  v1 = _rows(1, [[10, 10, 50, 50]] * 7)
  v1[4, 1:] = [300, 10, 330, 50]  # frame 5: 10 pixels past the 320-wide frame
  v1[2, 1:] = [0, 0, 320.5, 240]  # frame 3: half a pixel over: clipped
  v1[5, 1:] = [10, 10, 10, 50]  # frame 6: no width
  v2 = _rows(0, [[1, 1, 5, 5]] * 3)  # frame 0 does not exist (1-based)
  v3 = _rows(9, [[1, 1, 5, 5]] * 3)  # frames 9, 10, 11 of 10
  dup = np.concatenate([_rows(1, [[1, 1, 5, 5]] * 2), _rows(2, [[2, 2, 6, 6]])])
  data['gttubes']['run/v1'] = {0: [v1, v2, v3, dup], 5: [_rows(1, [[1, 1, 5, 5]])]}
  data['gttubes']['ghost/v9'] = {0: [_rows(1, [[1, 1, 5, 5]])]}
  data['train_videos'][0].append('run/v404')
  path = _write(tmp_path, data, 'UCF101v2-GT.pkl')
  description, report = act_pickle.read_act_pickle(path)
  assert description.name == 'UCF101v2'
  assert dict(report.counts) == {
    'box_outside_frame': 1,
    'empty_box': 1,
    'frame_before_video_start': 1,
    'frame_past_video_end': 1,
    'duplicate_actor_box': 1,
    'unknown_label': 1,
    'video_missing': 2,
    'video_without_annotations': 1,
  }
  assert dict(report.notes) == {'boxes_clipped': 1, 'tubes_split_at_gaps': 1}
  expected = [
    (f"{path}: video 'run/v1' frame 5: box [300, 10, 330, 50]", 'box_outside_frame'),
    (f"{path}: video 'run/v1' frame 6: box [10, 10, 10, 50] has no area", 'empty_box'),
    (f"{path}: video 'run/v1' frame 0:", 'frame_before_video_start'),
    (f"{path}: video 'run/v1' frame 11: past the end of the video (10 frames)", 'frame_past'),
    (f"{path}: video 'run/v1' frame 2: a second box", 'duplicate_actor_box'),
    (f"{path}: video 'run/v1' frame 1: label 5 of a tube of 1 boxes", 'unknown_label'),
    (f"{path}: video 'ghost/v9': has tubes but no 'nframes' entry", 'video_missing'),
    (f"{path}: split1 train: video 'run/v404': listed, but not", 'video_missing'),
  ]
  for start, kind in expected:
    assert [line for line in report.lines if line.startswith(start) and kind in line], start
  assert len(report.lines) == sum(report.counts.values())
  assert all('\n' not in line for line in report.lines)
  # Kept (0-based): frames 0-3 (2 clipped), 6 after the gap; 0-1; 8-9; the first of each frame.
  tubes = description.videos['run/v1'].tubes
  assert [(t.start, t.end) for t in tubes] == [(0, 4), (6, 7), (0, 2), (8, 10), (0, 2)]
  np.testing.assert_array_equal(tubes[0].boxes[2], [0, 0, 320, 240])
  assert description.splits['split1'].train == ('run/v1', 'jump/v2')
  assert 'ghost/v9' not in description.videos


@pytest.mark.parametrize(
  'change, message',
  [
    (lambda d: d.pop('resolution'), "no 'resolution'"),
    (lambda d: d.update(labels='run'), "'labels' is not a list of distinct class names"),
    (lambda d: d.update(test_videos=[[]]), "'train_videos' lists 2 splits and 'test_videos' 1"),
    (lambda d: d.update(nframes=[1, 2]), "'nframes' is not a dict keyed by video name"),
  ],
)
def test_wrong_structure_is_one_line(tmp_path, change, message):
  data = _act_dict()
  change(data)
  path = _write(tmp_path, data)
  with pytest.raises(records_lib.DataFileError, match=message) as info:
    act_pickle.read_act_pickle(path)
  assert str(path) in str(info.value) and '\n' not in str(info.value)


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / 'ran'
  data = _act_dict()
  data['gttubes']['run/v1'] = {0: [_Exploit(marker)]}
  path = _write(tmp_path, data)
  with pytest.raises(safe_pickle.UnsafePickleError, match=r'refusing to load .*system') as info:
    act_pickle.read_act_pickle(path)
  assert '\n' not in str(info.value)
  assert not marker.exists()
