"""The dataset description: its invariants, and UCF101-24 as one instance read from the real
pyannot.pkl and split-1 lists (counts from ../shared/data/ucf101_24/README.md)."""

import dataclasses

import numpy as np
import pytest

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report
from stconsist_jax.data.datasets import ucf101_24
from stconsist_jax.data.ucf101 import split_lists


def _video(name, width=64, height=48, num_frames=8, tubes=()):
  return records_lib.AnnotatedVideo(name, width, height, num_frames, tuple(tubes))


def _tube(label=0, start=0, end=2):
  return records_lib.AnnotatedTube(
    label, start, end, np.tile([[1.0, 2.0, 10.0, 20.0]], (end - start, 1))
  )


def test_videos_of_many_sizes_in_one_description():
  videos = {
    'b': _video('b', 1280, 720, 30, [_tube(1, 3, 5)]),
    'a': _video('a', 320, 240, 8, [_tube()]),
  }
  d = description_lib.DatasetDescription(
    'mine', ['walk', 'run'], {'split1': description_lib.Split(['a'], ['b'])}, 'video_files', videos
  )
  assert list(d.videos) == ['a', 'b']  # sorted by name
  assert d.resolution('b') == (1280, 720) and d.resolution('a') == (320, 240)
  assert (d.num_classes, d.num_boxes) == (2, 4)
  assert d.splits['split1'] == description_lib.Split(('a',), ('b',))
  with pytest.raises(dataclasses.FrozenInstanceError):
    d.name = 'other'
  with pytest.raises(TypeError):
    d.videos['c'] = _video('c')  # read-only mapping


@pytest.mark.parametrize(
  'change, message',
  [
    (dict(frame_source='gifs'), "frame source 'gifs' is not one of video_files, jpeg_folders"),
    (dict(class_names=['walk', 'walk']), 'class names must be distinct'),
    (dict(splits={'s': (['a', 'zz'], [])}), "split 's' names 1 unknown videos, e.g. 'zz'"),
    (dict(videos={'a': _video('a', tubes=[_tube(label=2)])}), 'a tube of label 2 of 1 classes'),
    (dict(videos={'a': _video('a', tubes=[_tube(end=9)])}), r'a tube on frames \[0, 9\) of 8'),
    (dict(videos={'a': _video('a', width=0)}), "video 'a' is 0x48, 8 frames"),
  ],
)
def test_inconsistent_descriptions_are_refused(change, message):
  kwargs = dict(
    name='mine',
    class_names=['walk'],
    splits={'s': description_lib.Split(['a'], [])},
    frame_source='video_files',
    videos={'a': _video('a')},
  )
  kwargs.update(change)
  if 'splits' in change:
    kwargs['splits'] = {k: description_lib.Split(*v) for k, v in change['splits'].items()}
  with pytest.raises(ValueError, match=message):
    description_lib.DatasetDescription(**kwargs)


def test_report_counts_every_record_and_keeps_a_bounded_number_of_lines():
  report = read_report.ReadReport()
  for i in range(read_report.MAX_LINES + 5):
    report.bad('empty_box', f'f.csv line {i}: no area')
  other = read_report.ReadReport()
  other.bad('unknown_label', 'g.xml: a label')
  other.note('boxes_clipped', 3)
  report.merge(other)
  assert dict(report.counts) == {'empty_box': read_report.MAX_LINES + 5, 'unknown_label': 1}
  assert len(report.lines) == read_report.MAX_LINES and report.lines_left_out == 6
  assert report.summary() == (
    f'{read_report.MAX_LINES + 6} bad records (empty_box {read_report.MAX_LINES + 5}, '
    'unknown_label 1); notes: boxes_clipped 3'
  )
  assert report.to_dict()['bad_records'] == dict(report.counts)
  with pytest.raises(ValueError, match="unknown kind of bad record 'typo'"):
    report.bad('typo', 'x')


def test_ucf101_24_from_the_real_pyannot_is_one_description(ucf24_dir):
  train = split_lists.read_split_list(ucf24_dir / 'trainlist01.txt')
  test = split_lists.read_split_list(ucf24_dir / 'testlist01.txt')
  d, report = ucf101_24.read_ucf101_24(ucf24_dir / 'pyannot.pkl', train, test)
  # README facts: 3194 videos, 573,862 boxes on 478,863 (video, frame) pairs, 1-10 tubes
  # a video, up to 900 frames, 320x240; 2290 + 910 listed, 6 training videos not annotated.
  assert (d.name, d.frame_source, d.class_names[0], d.num_classes) == (
    'ucf101_24',
    'video_files',
    'Basketball',
    24,
  )
  assert len(d.videos) == 3194 and d.num_boxes == 573_862
  frames = sum(len({f for t in v.tubes for f in range(t.start, t.end)}) for v in d.videos.values())
  assert frames == 478_863
  assert {len(v.tubes) for v in d.videos.values()} == set(range(1, 11))
  assert max(v.num_frames for v in d.videos.values()) == 900
  assert {d.resolution(v) for v in d.videos} == {(320, 240)}
  assert dict(report.counts) == {'video_missing': 6} and not report.notes
  assert len(d.splits['split1'].train) == 2290 - 6 and len(d.splits['split1'].test) == 910
  assert set(d.splits['split1'].train) | set(d.splits['split1'].test) == set(d.videos)
  v = d.videos['Skijet/v_Skijet_g10_c04']
  assert (v.num_frames, v.tubes[0].label, v.tubes[0].start, v.tubes[0].end) == (164, 17, 0, 164)
  np.testing.assert_array_equal(v.tubes[0].boxes[0], [177, 53, 177 + 48, 53 + 61])
