""" "CVAT for video 1.1" XML: keyframes interpolated as CVAT does, `outside` spans, occluded
boxes, folders, each bad record's line, hostile XML refused, and a file CVAT itself exported."""

import pathlib
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import cvat_xml
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import safe_xml

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>{name}</name>
      <size>10</size>
      <mode>interpolation</mode>
      <start_frame>0</start_frame>
      <stop_frame>9</stop_frame>
      <labels>
        {labels}
      </labels>
      <original_size><width>200</width><height>100</height></original_size>
      <source>{name}_upload.mp4</source>
    </task>
    <dumped>2024-01-01</dumped>
  </meta>
"""


def _xml(tracks, name='walk_clip', labels=('walk', 'wave')):
  label_xml = ''.join(f'<label><name>{n}</name><type>rectangle</type></label>' for n in labels)
  return HEADER.format(name=name, labels=label_xml) + tracks + '</annotations>\n'


def _box(frame, x1, y1, x2, y2, outside=0, occluded=0, keyframe=1):
  return (
    f'<box frame="{frame}" outside="{outside}" occluded="{occluded}" keyframe="{keyframe}" '
    f'xtl="{x1}" ytl="{y1}" xbr="{x2}" ybr="{y2}" z_order="0"></box>\n'
  )


# Track 0 (walk): keyframes on 0 and 4 (occluded), outside on 6, back on 8 until the end.
# Track 1 (wave): a keyframe on 2, outside on 5 (its box still steers frames 3 and 4).
TRACKS = (
  '<track id="0" label="walk" source="manual">\n'
  + _box(0, 10, 20, 50, 60)
  + _box(4, 30, 20, 70, 80, occluded=1)
  + _box(6, 30, 20, 70, 80, outside=1)
  + _box(8, 100, 0, 150, 40)
  + '</track>\n<track id="1" label="wave" source="manual">\n'
  + _box(2, 0, 0, 20, 20)
  + _box(5, 60, 30, 80, 50, outside=1)
  + '</track>\n'
)

# By hand: linear between written boxes; frame 5 lies between the visible frame 4 and the
# outside frame 6, so it is visible; 7 is not; 9 repeats 8 (the video has frames 0-9).
WALK_0_TO_5 = [
  [10, 20, 50, 60],
  [15, 20, 55, 65],
  [20, 20, 60, 70],
  [25, 20, 65, 75],
  [30, 20, 70, 80],
  [30, 20, 70, 80],
]
WALK_8_TO_9 = [[100, 0, 150, 40], [100, 0, 150, 40]]
# Frames 3 and 4: 1/3 and 2/3 of the way from (0, 0, 20, 20) to (60, 30, 80, 50).
WAVE_2_TO_4 = [[0, 0, 20, 20], [20, 10, 40, 30], [40, 20, 60, 40]]


def _write(tmp_path, text, name='walk_clip.xml'):
  path = tmp_path / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding='utf-8')
  return path


def test_keyframes_outside_and_occluded_read_as_cvat_interpolates(tmp_path):
  class_names, video, report = cvat_xml.read_cvat_file(_write(tmp_path, _xml(TRACKS)))
  assert class_names == ('walk', 'wave')
  assert (video.name, video.width, video.height, video.num_frames) == ('walk_clip', 200, 100, 10)
  assert len(video.tubes) == 3
  expected = [(0, 0, 6, WALK_0_TO_5), (0, 8, 10, WALK_8_TO_9), (1, 2, 5, WAVE_2_TO_4)]
  for tube, (label, start, end, boxes) in zip(video.tubes, expected):
    assert (tube.label, tube.start, tube.end) == (label, start, end)
    np.testing.assert_allclose(tube.boxes, boxes, rtol=0, atol=1e-9)
  assert report.ok
  assert dict(report.notes) == {
    'boxes_interpolated': 6,  # walk 1, 2, 3, 5; wave 3, 4
    'boxes_propagated': 1,  # walk 9
    'occluded_boxes': 1,
    'tubes_split_at_gaps': 1,  # walk leaves on 6 and comes back on 8
  }


def test_every_frame_written_as_cvat_exports_reads_the_same(tmp_path):
  """CVAT's own exports write each frame (keyframe="0" on the interpolated ones)."""
  walk = [_box(f, *b, keyframe=int(f in (0, 4))) for f, b in enumerate(WALK_0_TO_5)]
  walk += [_box(6, 30, 20, 70, 80, outside=1)]
  walk += [_box(8 + i, *b, keyframe=int(i == 0)) for i, b in enumerate(WALK_8_TO_9)]
  text = _xml('<track id="0" label="walk">\n' + ''.join(walk) + '</track>\n')
  _, video, report = cvat_xml.read_cvat_file(_write(tmp_path, text))
  assert [(t.start, t.end) for t in video.tubes] == [(0, 6), (8, 10)]
  np.testing.assert_array_equal(video.tubes[0].boxes, WALK_0_TO_5)
  np.testing.assert_array_equal(video.tubes[1].boxes, WALK_8_TO_9)
  assert 'boxes_interpolated' not in report.notes and 'boxes_propagated' not in report.notes


def test_names_sizes_and_folders(tmp_path):
  _write(tmp_path, _xml(TRACKS), 'a/walk_clip.xml')
  # A second video, its labels listed in another order: 'wave' keeps index 1.
  other = '<track id="0" label="wave">\n' + _box(1, 0, 0, 10, 10, outside=0) + '</track>\n'
  _write(tmp_path, _xml(other, name='other', labels=('jump', 'wave')), 'b/annotations.xml')
  read = cvat_xml.read_cvat(tmp_path)
  assert read.class_names == ('walk', 'wave', 'jump')
  assert sorted(read.videos) == ['other', 'walk_clip']
  assert [t.label for t in read.videos['other'].tubes] == [1]
  # The video's name: the task's, the uploaded file's, or the XML file's (its folder's
  # for annotations.xml).
  by_source = cvat_xml.read_cvat(tmp_path, name_from='source')
  assert sorted(by_source.videos) == ['other_upload', 'walk_clip_upload']
  by_file = cvat_xml.read_cvat(tmp_path, name_from='file')
  assert sorted(by_file.videos) == ['b', 'walk_clip']
  # Probed sizes and lengths win over <meta>: a 6-frame video ends the walk track at 5.
  short = cvat_xml.read_cvat(tmp_path / 'a', video_info={'walk_clip': (200, 100, 6)})
  assert short.videos['walk_clip'].num_frames == 6
  assert dict(short.report.counts) == {'frame_past_video_end': 1}  # the box on frame 8
  assert [(t.start, t.end) for t in short.videos['walk_clip'].tubes] == [(0, 6), (2, 5)]


def test_bad_records_are_one_line_each(tmp_path):
  bad = (
    '<track id="0" label="walk">\n'
    + _box(0, 10, 10, 50, 50)
    + _box(1, 150, 10, 260, 50)  # 60 pixels past the 200-wide frame
    + _box(2, 10, 10, 50, 50)
    + _box(2, 12, 10, 52, 50)  # a second box on frame 2
    + _box(3, 10, 10, 10, 50)  # no width
    + _box(4, 0, 0, 200.4, 100)  # 0.4 pixel over: clipped
    + '<box frame="5" outside="0" occluded="0" keyframe="1" xtl="abc" ytl="1" xbr="2" '
    'ybr="3"></box>\n'
    + '<polygon frame="5" outside="0" occluded="0" keyframe="1" points="1,1;5,5;1,5"/>\n'
    + _box(5, 10, 10, 50, 50, outside=1)
    + _box(12, 10, 10, 50, 50)  # past frame 9
    + '</track>\n<track id="1" label="dance">\n'
    + _box(3, 10, 10, 50, 50)
    + '</track>\n<track id="2" label="wave">\n'
    + _box(0, 150, 10, 190, 50)
    + _box(2, 250, 10, 290, 50, outside=1)  # frame 1 between: (200, 10, 240, 50)
    + '</track>\n'
  )
  path = _write(tmp_path, _xml(bad))
  _, video, report = cvat_xml.read_cvat_file(path)
  where = f"{path}: video 'walk_clip' track"
  expected = [
    (f'{where} 0 frame 1: box [150, 10, 260, 50] is beyond the 200x100 frame', 'box_outside'),
    (f'{where} 0 frame 2: a second box of this track', 'duplicate_actor_box'),
    (f'{where} 0 frame 3: box [10, 10, 10, 50] has no area', 'empty_box'),
    (f'{where} 0 frame 5: a <box> with a frame or corner that is not a number', 'malformed'),
    (f'{where} 0 frame 5: a <polygon>; only <box> tracks are read', 'unsupported_shape'),
    (f'{where} 0 frame 12: past the end of the video (10 frames)', 'frame_past_video_end'),
    (f"{where} 1 frame 3: label 'dance' is not one of the 2 classes", 'unknown_label'),
    (f'{where} 2 frame 1 (interpolated between frames 0 and 2): box [200, 10, 240, 50]', 'box_'),
  ]
  for start, kind in expected:
    assert [line for line in report.lines if line.startswith(start) and kind in line], start
  assert dict(report.counts) == {
    'box_outside_frame': 2,
    'duplicate_actor_box': 1,
    'empty_box': 1,
    'malformed_record': 1,
    'unsupported_shape': 1,
    'frame_past_video_end': 1,
    'unknown_label': 1,
  }
  assert report.notes['boxes_clipped'] == 1
  # Kept: walk on frames 0, 2 (the first box), 4 (clipped), 1 and 3 being gaps; wave on 0.
  assert [(t.start, t.end) for t in video.tubes] == [(0, 1), (2, 3), (4, 5), (0, 1)]
  np.testing.assert_array_equal(video.tubes[2].boxes, [[0, 0, 200, 100]])
  # A split naming a video that no file annotates: one line, dropped from the split.
  read = description_lib.ReadAnnotations(('walk', 'wave'), {video.name: video}, report)
  description = description_lib.describe(
    'mine',
    read.class_names,
    read.videos,
    {'split1': (['walk_clip', 'lost'], [])},
    'video_files',
    report,
    'splits.json',
  )
  assert description.splits['split1'].train == ('walk_clip',)
  assert report.counts['video_missing'] == 1
  assert (
    "splits.json: split1 train: video 'lost': listed, but not among the videos"
    in (report.lines[-1])
  )


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotations [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotations><meta><task><name>&lol9;</name></task></meta></annotations>
"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotations><meta><task><name>&secret;</name></task></meta></annotations>
"""


@pytest.mark.parametrize('text', [BILLION_LAUGHS, EXTERNAL], ids=['expansion', 'external'])
def test_hostile_xml_is_refused_in_one_line(tmp_path, text):
  path = _write(tmp_path, text, 'evil.xml')
  start = time.perf_counter()
  with pytest.raises(safe_xml.UnsafeXmlError) as info:
    cvat_xml.read_cvat_file(path)
  assert time.perf_counter() - start < 1
  message = str(info.value)
  assert message.startswith(f'refusing to read {path}: it holds a document type declaration')
  assert '\n' not in message


def test_unusable_files_are_one_line(tmp_path):
  cases = {
    'broken.xml': (_xml(TRACKS)[:-20], 'is not well-formed XML'),
    'images.xml': (
      '<annotations><meta><task><name>x</name></task></meta><image id="0"/></annotations>',
      "is a 'CVAT for images' export",
    ),
    'nosize.xml': (
      '<annotations><meta><task><name>x</name></task></meta></annotations>',
      'gives no <original_size> or <size>',
    ),
  }
  for name, (text, message) in cases.items():
    with pytest.raises(records_lib.DataFileError, match=message) as info:
      cvat_xml.read_cvat_file(_write(tmp_path, text, name))
    assert '\n' not in str(info.value)
  _write(tmp_path, _xml(TRACKS), 'dir/one.xml')
  _write(tmp_path, _xml(TRACKS), 'dir/two.xml')
  with pytest.raises(records_lib.DataFileError, match="both annotate video 'walk_clip'"):
    cvat_xml.read_cvat(tmp_path / 'dir')
  with pytest.raises(records_lib.DataFileError, match='is 640x480: is it the video'):
    cvat_xml.read_cvat(tmp_path / 'dir' / 'one.xml', video_info={'walk_clip': (640, 480, 10)})


# A "CVAT for video 1.1" file exported by CVAT itself (app.cvat.ai), cut down to two of its
# tracks: see fixtures/README.md for its source and license.
REAL_EXPORT = (
  pathlib.Path(__file__).parent / 'fixtures' / 'cvat_for_video_1_1_volleyball_hitting.xml'
)
CORNERS = ('xtl', 'ytl', 'xbr', 'ybr')


def test_a_real_cvat_export_reads_as_cvat_describes_it():
  """CVAT's own export of tracks that leave the frame (outside="1") and come back.

  Source: https://github.com/jensennhu/volleyball-swing-mech (MIT license),
  data/raw/annotations/annotations.xml at commit 372719adb521b56fb62b9361e69d2a0619716d1e,
  tracks 13 and 15 kept whole and the other 84 <track> elements removed.

  As written: track 13 (swing) has keyframes on 3277 and 3296, outside on 3295 and 3309;
  track 15 (jump) has keyframes on 3997, 4017, 4037, 4049 and 4059, outside on 4048 and
  4066. CVAT writes every frame in between (keyframe="0"), its interpolation rounded to
  two decimals.
  """
  class_names, video, report = cvat_xml.read_cvat_file(REAL_EXPORT)
  assert class_names == ('approach', 'jump', 'swing', 'land')  # <meta>'s order
  assert (video.name, video.width, video.height, video.num_frames) == (
    'hitting-session',  # <task><name>
    1920,
    1080,
    31904,  # <stop_frame> 31903 + 1
  )
  # Each track splits where it is outside (3295, 4048) and ends on its last outside frame.
  spans = [(t.label, t.start, t.end) for t in video.tubes]
  assert spans == [(2, 3277, 3295), (2, 3296, 3309), (1, 3997, 4048), (1, 4049, 4066)]
  covered = {f for t in video.tubes for f in range(t.start, t.end)}
  assert {3294, 3296, 4047, 4049, 4065} <= covered
  assert not {3276, 3295, 3309, 3996, 4048, 4066} & covered
  swing_back, jump, jump_back = video.tubes[1:]
  np.testing.assert_array_equal(jump.boxes[0], [294.39, 378.47, 723.69, 825.52])  # key 3997
  # Frame 4027, halfway between the keyframes on 4017 and 4037, as CVAT wrote it:
  #   xtl 429.21 + (585.32 - 429.21) * 10 / 20 = 507.265  (written 507.27)
  #   ytl 362.51 + (341.22 - 362.51) * 10 / 20 = 351.865  (written 351.86)
  #   xbr 858.52 + (1014.63 - 858.52) * 10 / 20 = 936.575  (written 936.57)
  #   ybr 809.55 + (788.27 - 809.55) * 10 / 20 = 798.91  (written 798.91)
  np.testing.assert_array_equal(jump.boxes[4027 - 3997], [507.27, 351.86, 936.57, 798.91])
  np.testing.assert_allclose(
    jump.boxes[4027 - 3997], [507.265, 351.865, 936.575, 798.91], atol=0.01
  )
  # Frame 4043 is steered by the outside box on 4048: 585.32 + (634.11 - 585.32) * 6 / 11.
  assert abs(jump.boxes[4043 - 3997, 0] - 611.9327) < 0.01
  np.testing.assert_array_equal(jump_back.boxes[0], [638.54, 339.45, 1067.85, 786.49])  # 4049
  np.testing.assert_array_equal(jump_back.boxes[-1], [682.89, 272.54, 1112.20, 719.59])  # 4065
  np.testing.assert_array_equal(swing_back.boxes, [[711.28, 231.23, 1090.91, 747.46]] * 13)
  assert report.ok
  # CVAT wrote every frame, so nothing was left to interpolate or propagate.
  assert dict(report.notes) == {'tubes_split_at_gaps': 2}
  by_source = cvat_xml.read_cvat(REAL_EXPORT, name_from='source')  # hitting-session.mp4
  assert list(by_source.videos) == ['hitting-session']


def test_a_real_cvat_exports_keyframes_alone_interpolate_to_cvats_own_boxes(tmp_path):
  """The same file with its keyframe="0" boxes removed: the reader's interpolation of the
  11 keyframes gives the boxes CVAT wrote on the 92 frames in between, to CVAT's rounding
  (its two-decimal keyframes and two-decimal results: < 0.01)."""
  tree = ET.parse(REAL_EXPORT)
  written = {}  # (track id, frame) -> the box CVAT wrote
  for track in tree.getroot().findall('track'):
    for box in list(track):
      if box.get('outside') == '0':
        written[track.get('id'), int(box.get('frame'))] = [float(box.get(k)) for k in CORNERS]
      if box.get('keyframe') == '0':
        track.remove(box)
  path = tmp_path / 'keyframes_only.xml'
  tree.write(path, encoding='utf-8', xml_declaration=True)
  _, video, report = cvat_xml.read_cvat_file(path)
  spans = [(t.label, t.start, t.end) for t in video.tubes]
  assert spans == [(2, 3277, 3295), (2, 3296, 3309), (1, 3997, 4048), (1, 4049, 4066)]
  for tube, track_id in zip(video.tubes, ['13', '13', '15', '15']):
    cvat_boxes = [written[track_id, f] for f in range(tube.start, tube.end)]
    np.testing.assert_allclose(tube.boxes, cvat_boxes, rtol=0, atol=0.01)
  # Between keyframes: swing 3278-3294 (17) and 3297-3308 (12); jump 3998-4016 (19),
  # 4018-4036 (19), 4038-4047 (10), 4050-4058 (9) and 4060-4065 (6): 29 + 63.
  assert dict(report.notes) == {'boxes_interpolated': 92, 'tubes_split_at_gaps': 2}
