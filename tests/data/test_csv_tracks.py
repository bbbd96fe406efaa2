"""Plain CSV annotations: pixel and normalized corners, 0- and 1-based frames, actors with
several labels, gaps, and each bad record's line."""

import numpy as np
import pytest

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import csv_tracks
from stconsist_jax.data.datasets import description as description_lib

VIDEO_INFO = {'clipA': (200, 100, 5), 'clipB': (640, 480, 3), 'clipC': (320, 240, 4)}

GOOD = """video,frame,actor_id,label,x1,y1,x2,y2
clipA.mp4,0,p1,walk,10,10,50,50
clipA.mp4,1,p1,walk,12,10,52,50
clipA.mp4,1,p1,wave,12,10,52,50
clipA,3,p1,walk,14,10,54,50
clipB,2,p2,run,100,200,300,400
clipA,0,p2,run,0,0,20,30
"""


def _write(tmp_path, text, name='boxes.csv'):
  path = tmp_path / name
  path.write_text(text, encoding='utf-8')
  return path


def _tubes(read, video):
  return [(t.label, t.start, t.end, t.boxes.tolist()) for t in read.videos[video].tubes]


def test_reads_pixel_boxes_into_tubes(tmp_path):
  read = csv_tracks.read_csv(_write(tmp_path, GOOD), VIDEO_INFO)
  assert read.class_names == ('run', 'walk', 'wave')  # sorted, when not given
  assert sorted(read.videos) == ['clipA', 'clipB', 'clipC']
  a = read.videos['clipA']
  assert (a.width, a.height, a.num_frames) == (200, 100, 5)
  # p1 walks on frames 0, 1 and 3 (two tubes: frame 2 is a gap) and waves on frame 1.
  assert _tubes(read, 'clipA') == [
    (1, 0, 2, [[10, 10, 50, 50], [12, 10, 52, 50]]),
    (0, 0, 1, [[0, 0, 20, 30]]),
    (2, 1, 2, [[12, 10, 52, 50]]),
    (1, 3, 4, [[14, 10, 54, 50]]),
  ]
  assert _tubes(read, 'clipB') == [(0, 2, 3, [[100, 200, 300, 400]])]
  assert read.videos['clipC'].tubes == ()
  assert read.report.ok
  assert dict(read.report.notes) == {'tubes_split_at_gaps': 1}


def test_normalized_coordinates_and_one_based_frames(tmp_path):
  text = (
    'label,video,frame,actor_id,x1,y1,x2,y2,score\n'  # any column order; extra ignored
    'walk,clipA,1,7,0.1,0.2,0.5,0.6,0.9\n'
    'walk,clipA,2,7,0.2,0.2,0.6,0.6,0.9\n'
    'walk,clipB,3,1,0.5,0.5,1.0,1.0,0.9\n'
  )
  read = csv_tracks.read_csv(
    _write(tmp_path, text), VIDEO_INFO, ['walk'], coords='normalized', first_frame=1
  )
  # x * 200, y * 100 on clipA; frames 1, 2 (1-based) are 0, 1.
  assert _tubes(read, 'clipA') == [(0, 0, 2, [[20, 20, 100, 60], [40, 20, 120, 60]])]
  assert _tubes(read, 'clipB') == [(0, 2, 3, [[320, 240, 640, 480]])]
  assert read.report.ok


def test_bad_records_are_one_line_each(tmp_path):
  text = (
    'video,frame,actor_id,label,x1,y1,x2,y2\n'
    'clipA,0,p1,walk,10,10,50,50\n'  # line 2
    'clipA,2,p3,walk,150,10,260,50\n'  # line 3: 60 pixels past the 200-wide frame
    'clipA,5,p1,walk,10,10,50,50\n'  # line 4: clipA has frames 0-4
    'clipA,1,p4,dance,10,10,50,50\n'  # line 5: no such class
    'clipA,0,p1,walk,11,10,50,50\n'  # line 6: p1's second box on frame 0
    'clipZ,0,p1,walk,10,10,50,50\n'  # line 7: no such video
    'clipZ,1,p1,walk,10,10,50,50\n'  # line 8
    'clipA,x,p1,walk,10,10,50,50\n'  # line 9: frame is not a number
    'clipA,3,p1,walk,30,10,20,50\n'  # line 10: x2 < x1
    'clipA,4,p1,walk,0,0,200.5,100\n'  # line 11: half a pixel over: clipped
    'clipA,4\n'  # line 12: too few fields
  )
  path = _write(tmp_path, text)
  read = csv_tracks.read_csv(path, VIDEO_INFO, ['walk', 'run'])
  report = read.report
  expected = [
    (f"{path} line 3: video 'clipA' frame 2: box [150, 10, 260, 50] is beyond", 'box_outside'),
    (f"{path} line 4: video 'clipA' frame 5: past the end of the video (5 frames)", 'past'),
    (f"{path} line 5: video 'clipA' frame 1: actor 'p4' has label 'dance'", 'unknown_label'),
    (f"{path} line 6: video 'clipA' frame 0: actor 'p1' already has a box", 'duplicate'),
    (f"{path} line 7: video 'clipZ' frame 0: not among the 3 videos given (its 2 rows", 'video'),
    (f"{path} line 9: video 'clipA' frame 'x': frame or box is not a number", 'malformed'),
    (f"{path} line 10: video 'clipA' frame 3: box [30, 10, 20, 50] has no area", 'empty_box'),
    (f'{path} line 12: 2 fields, not 8', 'malformed_record'),
  ]
  for start, kind in expected:
    assert [line for line in report.lines if line.startswith(start) and kind in line], start
  assert dict(report.counts) == {
    'box_outside_frame': 1,
    'frame_past_video_end': 1,
    'unknown_label': 1,
    'duplicate_actor_box': 1,
    'video_missing': 1,
    'malformed_record': 2,
    'empty_box': 1,
  }
  assert len(report.lines) == 8 and all('\n' not in line for line in report.lines)
  assert dict(report.notes) == {'boxes_clipped': 1, 'tubes_split_at_gaps': 1}
  assert _tubes(read, 'clipA') == [
    (0, 0, 1, [[10, 10, 50, 50]]),
    (0, 4, 5, [[0, 0, 200, 100]]),
  ]
  # clipC has no rows: a split that lists it says so in one line, and keeps it.
  description = description_lib.describe(
    'mine',
    read.class_names,
    read.videos,
    {'split1': (['clipA'], ['clipC'])},
    'video_files',
    report,
    'lists',
  )
  assert description.splits['split1'].test == ('clipC',)
  assert report.lines[-1].startswith("lists: split1 test: video 'clipC': listed, without tubes")


def test_unusable_files_are_one_line(tmp_path):
  cases = {
    'header.csv': ('video,frame,label,x1,y1,x2,y2\nclipA,0,walk,1,1,5,5\n', 'lacks actor_id'),
    'latin1.csv': (GOOD.replace('walk', 'w\xe4lk'), 'is not UTF-8 text'),
    'normalized.csv': (
      'video,frame,actor_id,label,x1,y1,x2,y2\nclipA,0,1,walk,0.1,0.1,0.5,0.5\n',
      "coordinates look normalized \\(0..1\\); read it with coords='normalized'",
    ),
  }
  for name, (text, message) in cases.items():
    path = tmp_path / name
    path.write_bytes(text.encode('latin1'))
    with pytest.raises(records_lib.DataFileError, match=message) as info:
      csv_tracks.read_csv(path, VIDEO_INFO)
    assert str(path) in str(info.value) and '\n' not in str(info.value)
  with pytest.raises(FileNotFoundError, match='expected a CSV file with the header'):
    csv_tracks.read_csv(tmp_path / 'absent.csv', VIDEO_INFO)


def test_tubes_written_as_rows_read_back_equal(tmp_path):
  """Tubes written as CSV rows in the test (one row per box) read back equal."""
  rng = np.random.default_rng(0)
  tubes = []
  for label, start, length in ((0, 0, 3), (1, 1, 2), (0, 2, 3)):
    xy = rng.integers(0, 320, (length, 2)) / 4  # quarter pixels: exact in binary and text
    tubes.append((label, start, np.concatenate([xy, xy + 20], axis=1)))
  rows = ['video,frame,actor_id,label,x1,y1,x2,y2']
  for actor, (label, start, boxes) in enumerate(tubes):
    for i, box in enumerate(boxes):
      rows.append(f'clipA,{start + i},{actor},{"ab"[label]},' + ','.join(f'{c:g}' for c in box))
  read = csv_tracks.read_csv(_write(tmp_path, '\n'.join(rows) + '\n'), VIDEO_INFO, ['a', 'b'])
  assert read.report.ok
  assert read.videos['clipA'].tubes == tuple(
    records_lib.AnnotatedTube(label, start, start + len(boxes), boxes)
    for label, start, boxes in tubes
  )
