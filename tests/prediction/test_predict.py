"""Tests of stconsist_jax.prediction.predict: streaming clip windows, a restored tiny detector on video
files of two containers, sizes and frame rates, the output schema, and the command line.
"""

import errno
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tracemalloc
import types

import cv2
import numpy as np
import pytest

from stconsist_jax.configs import demo_one_box as demo
from stconsist_jax.core import clip_geometry
from stconsist_jax.training import checkpointing
from stconsist_jax.config import config_file
from stconsist_jax.training import distributed
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.prediction import annotated_video
from stconsist_jax.prediction import drawing
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import output_files
from stconsist_jax import models
from stconsist_jax.apps import predict as predict_app
from stconsist_jax.config import overrides
from stconsist_jax.configs import default
from stconsist_jax.prediction import predict
from stconsist_jax.prediction import prediction_record
from stconsist_jax.prediction import record_schema
from stconsist_jax.training import train_step
from stconsist_jax.metrics import tubelets as tubelets_lib
from stconsist_jax.metrics import tubes
from stconsist_jax.prediction import video_files
from stconsist_jax.data.synthetic import synthetic_video
from stconsist_jax.models import pretrained
from benchmarks import torch_resnet3d
from tests import xla_env

NUM_CLASSES = 5
VIDEOS = {'a.avi': ('XVID', 25, (240, 320), 37), 'b.mp4': ('mp4v', 12, (144, 176), 23)}


def _tiny_config():
  config = demo.get_config()
  config.data.name = 'random'
  config.data.frame_size = 40  # Squashed to 40, then resized to 32: both steps run.
  config.data.image_size = 32
  config.data.num_frames = 8
  config.model.widen_factor = 0.125
  config.model.num_classes = NUM_CLASSES
  config.eval.batch_size = 8
  config.eval.tubes.iou_threshold = 0.5  # ACT's default (the demo links at 0.3)
  return config


def _moving_square(num_frames, size, seed=0):
  """RGB frames: a bright square drifting over noise."""
  h, w = size
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 80, (num_frames, h, w, 3), dtype=np.uint8)
  side = min(h, w) // 3
  for f in range(num_frames):
    x = int((w - side) * f / max(num_frames - 1, 1))
    frames[f, h // 3 : h // 3 + side, x : x + side] = (230, 200, 40)
  return frames


def _write(path, frames, fourcc, fps):
  h, w = frames.shape[1:3]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
  assert writer.isOpened(), fourcc
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()


def _count_frames(path):
  cap = cv2.VideoCapture(str(path))
  n = 0
  while cap.read()[0]:
    n += 1
  cap.release()
  return n


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('videos')
  for name, (fourcc, fps, size, n) in VIDEOS.items():
    frames = _moving_square(n, size)
    if fourcc == 'XVID':
      synthetic_video.write_video(frames, folder / name, fps=fps)  # as the dataset's videos
    else:
      _write(folder / name, frames, fourcc, fps)
  (folder / 'broken.avi').write_bytes(np.random.default_rng(1).bytes(4000))
  (folder / 'empty.mp4').write_bytes(b'')
  (folder / 'notes.txt').write_text('not a video\n')
  return folder


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = _tiny_config()
  path = tmp_path_factory.mktemp('run') / 'tiny'
  model = models.build_model(config.model)
  state = train_step.create_train_state(config, model, distributed.make_mesh())
  config_file.save(config, path)
  ckpt = checkpointing.Checkpointer(path, keep=2, async_save=False)
  ckpt.save(3, state)
  ckpt.wait()
  ckpt.close()
  return path


@pytest.fixture(scope='module')
def loaded(workdir):
  return predict.load(workdir, 'latest', batch_size=8)


@pytest.fixture(scope='module')
def directory_run(loaded, videos, tmp_path_factory):
  out = tmp_path_factory.mktemp('out')
  lines = []
  inputs = video_files.list_videos(videos, exclude=out)
  done, failed = predict.predict_all(loaded, inputs, out, progress=False, report=lines.append)
  return out, inputs, done, failed, lines


# ------------------------------------------------------------------- windows


@pytest.mark.parametrize(
  'num_frames,stride,every,video_frames',
  [(8, 1, 1, 30), (8, 2, 3, 30), (7, 1, 4, 5), (16, 1, 1, 1), (4, 3, 2, 11)],
)
def test_windows_follow_the_eval_placement(num_frames, stride, every, video_frames):
  frames = (np.full((2, 3, 1), i, np.int32) for i in range(video_frames))
  got = list(frame_predictor.sliding_windows(frames, num_frames, stride, every))
  centres = [c for c, _ in got]
  assert centres == list(frame_predictor.centre_frames(video_frames, every))
  assert centres[-1] == video_frames - 1
  for centre, clip in got:
    # Frame f's clip: f + (p - T//2) * stride, p = 0..T-1, clamped to the video.
    expected = np.clip(
      centre + (np.arange(num_frames) - num_frames // 2) * stride, 0, video_frames - 1
    )
    np.testing.assert_array_equal(clip[:, 0, 0, 0], expected)


@pytest.mark.parametrize(
  'num_frames,stride,centre,video_frames,expected',
  [
    (8, 1, 0, 30, [0, 0, 0, 0, 0, 1, 2, 3]),
    (8, 2, 3, 30, [0, 0, 0, 1, 3, 5, 7, 9]),
    (7, 1, 4, 5, [1, 2, 3, 4, 4, 4, 4]),
    (16, 1, 0, 1, [0] * 16),
    (4, 3, 5, 11, [0, 2, 5, 8]),
    (4, 3, 10, 11, [4, 7, 10, 10]),
  ],
)
def test_clip_frames_are_the_offsets_clamped_to_the_video(
  num_frames, stride, centre, video_frames, expected
):
  offsets = clip_geometry.centred_offsets(num_frames, stride)
  np.testing.assert_array_equal(np.clip(centre + offsets, 0, video_frames - 1), expected)
  frames = (np.full((1, 1, 1), i, np.int32) for i in range(video_frames))
  clips = dict(frame_predictor.sliding_windows(frames, num_frames, stride))
  np.testing.assert_array_equal(clips[centre][:, 0, 0, 0], expected)


def test_windows_stream_with_bounded_memory():
  """A long video is read lazily and only a few frames are ever held."""
  num_frames, stride, total = 16, 2, 3000
  frame_bytes = 48 * 48 * 3
  consumed = [0]

  def frames():
    for i in range(total):
      consumed[0] += 1
      yield np.full((48, 48, 3), i % 251, np.uint8)

  lookahead = (num_frames - 1 - num_frames // 2) * stride
  tracemalloc.start()
  try:
    count = 0
    for centre, clip in frame_predictor.sliding_windows(frames(), num_frames, stride):
      # Never reads further than the clip's last frame.
      assert consumed[0] <= min(centre + lookahead + 1, total)
      assert clip.shape == (num_frames, 48, 48, 3)
      count += 1
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert count == total
  span = (num_frames - 1) * stride + 1
  # The ring buffer, one clip and a frame: a bounded number of frames, not the video.
  assert peak < (span + 2 * num_frames + 8) * frame_bytes < total * frame_bytes / 20


def test_prepare_frame_resizes_like_training():
  frame = np.zeros((90, 160, 3), np.uint8)
  frame[..., 0] = 200  # blue in BGR
  out = frame_predictor.prepare_frame(frame, 40, 32, bgr=True)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  assert (out[..., 2] == 200).all() and (out[..., :2] == 0).all()  # now RGB
  with pytest.raises(ValueError, match='uint8'):
    frame_predictor.prepare_frame(np.zeros((4, 4), np.float32), 8, 8)


# ----------------------------------------------------------- restored model


def test_directory_predicts_good_videos_and_skips_bad_ones(directory_run, videos):
  out, inputs, done, failed, lines = directory_run
  assert sorted(p.name for p in inputs) == ['a.avi', 'b.mp4', 'broken.avi', 'empty.mp4']
  assert sorted(r.name for r in done) == ['a', 'b']
  assert sorted(pathlib.Path(p).name for p in failed) == ['broken.avi', 'empty.mp4']
  assert 'empty file' in failed[str(videos / 'empty.mp4')]
  skipped = [line for line in lines if line.startswith('skipped')]
  assert len(skipped) == 2 and all('\n' not in line for line in skipped)
  assert sorted(p.name for p in out.iterdir()) == ['a.json', 'a.mp4', 'b.json', 'b.mp4']
  for name, (_, fps, (h, w), n) in VIDEOS.items():
    stem = name.split('.')[0]
    record = json.loads((out / f'{stem}.json').read_text())
    record_schema.validate_prediction(record)
    assert record['num_frames'] == _count_frames(videos / name) == n
    assert len(record['frames']) == n
    assert record['size'] == [h, w] and record['fps'] == pytest.approx(fps)
    assert record['classes'] == [f'class_{i}' for i in range(NUM_CLASSES)]
    assert record['model']['step'] == 3 and record['model']['source'] == 'workdir'
    boxes = np.array([f['box'] for f in record['frames']])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all()
    assert all(len(f['scores']) == 5 for f in record['frames'])  # top-5 by default
    # The annotated video: same frames, resolution and frame rate.
    cap = cv2.VideoCapture(str(out / f'{stem}.mp4'))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(fps, rel=1e-3)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (
      w,
      h,
    )
    cap.release()
    assert _count_frames(out / f'{stem}.mp4') == n
  record_a = next(r for r in done if r.name == 'a').record
  assert record_a['tubes'], 'a 37-frame video with one box per frame links into tubes'
  tube = record_a['tubes'][0]
  assert tube['end'] - tube['start'] + 1 >= 15  # LinkingConfig.min_length


def test_frame_stride_reuses_the_dense_clips(loaded, videos):
  cap, _ = video_files.open_video(videos / 'b.mp4')
  dense = loaded.predictor.detect(video_files.read_frames(cap), bgr=True)
  cap, _ = video_files.open_video(videos / 'b.mp4')
  sparse = loaded.predictor.detect(video_files.read_frames(cap), every=5, bgr=True)
  assert dense.num_frames == sparse.num_frames == 23
  np.testing.assert_array_equal(sparse.frames, [0, 5, 10, 15, 20, 22])
  np.testing.assert_allclose(sparse.logits, dense.logits[sparse.frames], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sparse.boxes, dense.boxes[sparse.frames], rtol=1e-5, atol=1e-6)
  filled = frame_predictor.densify(sparse)
  assert filled.boxes.shape == (23, 4) and filled.probs.shape == (23, NUM_CLASSES)
  assert filled.predicted.sum() == 6 and filled.predicted[[0, 5, 22]].all()
  np.testing.assert_allclose(filled.probs.sum(1), 1.0, rtol=1e-6)
  lo = np.minimum(filled.boxes[5], filled.boxes[10])
  hi = np.maximum(filled.boxes[5], filled.boxes[10])
  assert (filled.boxes[7] >= lo - 1e-9).all() and (filled.boxes[7] <= hi + 1e-9).all()


def test_detect_frames_takes_any_rgb_frame_iterator(loaded, workdir, videos):
  """The reusable entry point: (config, model, variables, RGB frames) -> every frame."""
  restored = restore_lib.restore(loaded.config, workdir, 'latest')
  cap, _ = video_files.open_video(videos / 'b.mp4')
  rgb = (cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in video_files.read_frames(cap))
  got = frame_predictor.detect_frames(
    loaded.config, restored.model, restored.variables, rgb, every=2, batch_size=8
  )
  cap, _ = video_files.open_video(videos / 'b.mp4')
  expected = frame_predictor.densify(
    loaded.predictor.detect(video_files.read_frames(cap), every=2, bgr=True)
  )
  assert got.num_frames == 23 and got.predicted.sum() == 12
  np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-6)
  np.testing.assert_allclose(got.probs, expected.probs, atol=1e-6)
  empty = frame_predictor.detect_frames(loaded.config, restored.model, restored.variables, [])
  assert empty.num_frames == 0


def test_validate_prediction_names_the_problem(directory_run):
  record = json.loads((directory_run[0] / 'b.json').read_text())
  record_schema.validate_prediction(record)
  broken = dict(record, frames=record['frames'][:-1])
  with pytest.raises(ValueError, match='num_frames'):
    record_schema.validate_prediction(broken)
  broken = dict(record, fps='25')
  with pytest.raises(ValueError, match=r'\$\.fps'):
    record_schema.validate_prediction(broken)
  broken = dict(
    record,
    tubes=[
      {
        'id': 0,
        'label': 1,
        'class': 'class_1',
        'start': 3,
        'end': 99,
        'score': 0.5,
        'frames': [3],
        'boxes': [[0] * 4],
      }
    ],
  )
  with pytest.raises(ValueError, match='outside the video'):
    record_schema.validate_prediction(broken)
  del record['top5']
  with pytest.raises(ValueError, match="missing 'top5'"):
    record_schema.validate_prediction(record)


def test_linking_settings_come_from_config_eval_tubes():
  config = _tiny_config()
  defaults = tubes.linking_config(config)
  assert prediction_record.linking_dict(defaults) == prediction_record.linking_dict(
    tubes.LinkingConfig()
  )
  overrides.apply_overrides(config, ['eval.tubes.min_length=3', 'eval.tubes.iou_threshold=0.2'])
  linking = tubes.linking_config(config)
  assert linking.min_length == 3 and linking.iou_threshold == pytest.approx(0.2)
  with pytest.raises(ValueError, match='key.path=value'):
    overrides.apply_overrides(config, ['eval.tubes'])


def test_converted_classifier_gives_scores_without_boxes(videos, tmp_path):
  arch = dict(
    depth=10,
    shortcut_type='A',
    widen_factor=0.125,
    conv1_t_size=3,
    conv1_t_stride=1,
    no_max_pool=True,
  )
  model = models.VideoClassifier(num_classes=3, backbone_kwargs=arch)
  # Values from numpy, as a conversion brings them: no initializer is compiled.
  variables = torch_resnet3d.random_flax_variables(
    model, np.zeros((1, 4, 32, 32, 3), np.uint8), train=False
  )
  pretrained.save_converted(
    str(tmp_path / 'weights'),
    dict(variables),
    {'architecture': arch, 'normalization': 'kinetics', 'num_classes': 3},
  )
  loaded = predict.load(
    init_from=tmp_path / 'weights',
    settings=default.get_config(),
    batch_size=8,
    overrides=['data.num_frames=4', 'data.frame_size=32', 'data.image_size=32'],
  )
  assert loaded.classification_only
  result = predict.predict_video(loaded, videos / 'b.mp4', tmp_path / 'out', progress=False)
  record = json.loads(result.json_path.read_text())
  record_schema.validate_prediction(record)
  assert record['model']['source'] == 'init_from' and record['tubes'] == []
  assert all(f['box'] is None for f in record['frames'])
  assert record['num_frames'] == 23 and len(record['top5']) == 3
  assert _count_frames(tmp_path / 'out' / 'b.mp4') == 23


# ------------------------------------------------------------ output files


def test_record_is_written_entry_by_entry_in_the_compact_layout():
  built = []

  def frame(i):
    built.append(i)
    return {'frame': i, 'box': None}

  record = {
    'format': prediction_record.FORMAT,
    'video': 'clips/v.mp4',
    'num_frames': 3,
    'top5': [],
    'tubes': prediction_record.Entries(1, lambda i: {'id': i, 'frames': [0, 1]}),
    'frames': prediction_record.Entries(3, frame),
  }
  expected = (
    '{\n'
    '  "format": "stconsist_jax.prediction/2",\n'
    '  "video": "clips/v.mp4",\n'
    '  "num_frames": 3,\n'
    '  "top5": [],\n'
    '  "tubes": [\n'
    '    {"id": 0, "frames": [0, 1]}\n'
    '  ],\n'
    '  "frames": [\n'
    '    {"frame": 0, "box": null},\n'
    '    {"frame": 1, "box": null},\n'
    '    {"frame": 2, "box": null}\n'
    '  ]\n'
    '}\n'
  )
  writes = []

  class Out:
    def write(self, text):
      writes.append((len(built), text))

  prediction_record.write(record, Out())
  assert ''.join(text for _, text in writes) == expected
  # Each frame is built just before its own line is written, never all of them first.
  frame_lines = [(n, text) for n, text in writes if text.startswith('    {"frame"')]
  assert [n for n, _ in frame_lines] == [1, 2, 3]
  assert prediction_record.dumps(dict(record, tubes=[])) == expected.replace(
    '[\n    {"id": 0, "frames": [0, 1]}\n  ],', '[],'
  )
  assert record['frames'][-1] == {'frame': 2, 'box': None} and len(record['frames'][1:]) == 2


def test_a_tubes_frames_and_boxes_are_read_and_written_lazily_as_plain_json():
  """A tube's `frames` and `boxes` are built from its arrays when read; written in
  chunks they give json.dumps's text of the same lists."""
  n = 2 * prediction_record.CHUNK + 5  # three chunks
  frames = np.arange(n) * 2
  boxes = np.stack([frames + 0.123, frames + 1.0, frames + 2.555, frames + 3.0], axis=1)
  tube = tubes.Tube(1, frames, boxes, np.full(n, 0.25))
  entries = prediction_record.tube_entries([tube], ['a', 'b'])
  plain = {
    'id': 0,
    'label': 1,
    'class': 'b',
    'start': 0,
    'end': 2 * (n - 1),
    'score': 0.25,
    'frames': [2 * i for i in range(n)],
    'boxes': [
      [round(2 * i + 0.123, 2), 2 * i + 1.0, round(2 * i + 2.555, 2), 2 * i + 3.0] for i in range(n)
    ],
  }
  assert entries[0] == plain and entries[0]['boxes'][-1] == plain['boxes'][-1]
  record = {'format': prediction_record.FORMAT, 'tubes': entries, 'frames': []}
  expected = (
    f'{{\n  "format": "{prediction_record.FORMAT}",\n  "tubes": [\n    {json.dumps(plain)}\n  ],\n'
    '  "frames": []\n}\n'
  )
  assert prediction_record.dumps(record) == expected


def _uniform_results(num_frames):
  return frame_predictor.FrameResults(
    None, np.full((num_frames, NUM_CLASSES), 1 / NUM_CLASSES), np.ones(num_frames, bool)
  )


def test_annotated_video_is_streamed_beside_its_destination(videos, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  seen = []

  def on_frame():
    if not seen:
      seen.extend(sorted(p.name for p in out.iterdir()))

  written = annotated_video.write_video(
    videos / 'b.mp4', out / 'b.mp4', _uniform_results(23), [], ['c'] * NUM_CLASSES, 12, on_frame
  )
  assert written == 23 and _count_frames(out / 'b.mp4') == 23
  assert seen == [f'.b.mp4.{os.getpid()}.partial.mp4']  # encoded in place, then renamed
  assert sorted(p.name for p in out.iterdir()) == ['b.mp4']

  count = [0]

  def fail_at_frame_5():
    count[0] += 1
    if count[0] == 5:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    annotated_video.write_video(
      videos / 'a.avi',
      out / 'a.mp4',
      _uniform_results(37),
      [],
      ['c'] * NUM_CLASSES,
      25,
      fail_at_frame_5,
    )
  assert sorted(p.name for p in out.iterdir()) == ['b.mp4']  # no partial file left


def test_annotated_video_cut_short_by_a_full_disk_is_an_error_not_an_output(
  videos, tmp_path, monkeypatch
):
  """OpenCV's writer reports no failed write: on a full disk it leaves a file without its
  index (as measured on a full file system). Such a file never becomes the output."""
  out = tmp_path / 'out'
  draw_into = annotated_video._draw_into

  def draw_on_a_disk_that_fills(tmp, *args):
    written = draw_into(tmp, *args)
    with open(tmp, 'r+b') as f:  # What the disk kept: the first half, no index at the end.
      f.truncate(os.path.getsize(tmp) // 2)
    return written

  monkeypatch.setattr(annotated_video, '_draw_into', draw_on_a_disk_that_fills)
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(annotated_video.shutil, 'disk_usage', lambda path: usage._replace(free=4096))
  args = (videos / 'b.mp4', out / 'b.mp4', _uniform_results(23), [], ['c'] * NUM_CLASSES, 12)
  with pytest.raises(OSError) as e:
    annotated_video.write_video(*args)
  assert e.value.errno == errno.ENOSPC
  assert 'the annotated video holds 0 of its 23 frames' in str(e.value)
  assert list(out.iterdir()) == []
  monkeypatch.setattr(annotated_video.shutil, 'disk_usage', lambda path: usage)
  with pytest.raises(video_files.VideoError, match='OpenCV could not write it whole'):
    annotated_video.write_video(*args)  # Cut short with room left: not the disk.


def test_a_record_that_cannot_be_written_takes_its_annotated_video_with_it(
  loaded, videos, tmp_path, monkeypatch
):
  def full_disk(path, record):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(predict, 'write_record', full_disk)
  with pytest.raises(OSError, match='No space left'):
    predict.predict_video(loaded, videos / 'b.mp4', tmp_path / 'out', progress=False)
  assert list((tmp_path / 'out').iterdir()) == []


def test_tubes_through_a_frame_are_found_without_a_table():
  first = tubes.Tube(1, [0, 1, 2], np.arange(12.0).reshape(3, 4), [0.9, 0.8, 0.7])
  second = tubes.Tube(0, [2, 4], [[1, 1, 5, 5], [2, 2, 6, 6]], [0.5, 0.5])
  names = ['run', 'jump']
  found = drawing.tubes_at([first, second], 2, names)
  assert [(i, name) for i, name, _, _ in found] == [(0, 'jump'), (1, 'run')]
  np.testing.assert_array_equal(found[0][3], [8, 9, 10, 11])
  np.testing.assert_array_equal(found[1][3], [1, 1, 5, 5])
  assert found[0][2] == pytest.approx(0.8) and found[1][2] == pytest.approx(0.5)
  assert drawing.tubes_at([first, second], 3, names) == []  # the second's gap
  assert [t[0] for t in drawing.tubes_at([first, second], 4, names)] == [1]


def test_partial_outputs_of_dead_processes_are_removed(tmp_path, monkeypatch):
  dead = subprocess.Popen(['true'])
  dead.wait()
  live = os.getpid()
  scratch = tmp_path / 'tmp'
  out = tmp_path / 'out'
  for folder in (scratch, out):
    folder.mkdir()
  monkeypatch.setattr(output_files.tempfile, 'tempdir', str(scratch))
  for name in (f'stconsist_predict_{dead.pid}_x1', f'stconsist_predict_{live}_x2', 'other_1_x'):
    (scratch / name).mkdir()
    (scratch / name / 'output.mp4').write_bytes(b'partial')
  for name in (
    f'.v.mp4.{dead.pid}.partial.mp4',
    f'.v.json.{dead.pid}.partial.json',
    f'.v.json.{live}.partial.json',
    'v.mp4',
    '.hidden',
  ):
    (out / name).write_bytes(b'x')
  removed = output_files.remove_stale_partials(out)
  assert sorted(pathlib.Path(p).name for p in removed) == [
    f'.v.json.{dead.pid}.partial.json',
    f'.v.mp4.{dead.pid}.partial.mp4',
    f'stconsist_predict_{dead.pid}_x1',
  ]
  assert sorted(p.name for p in scratch.iterdir()) == ['other_1_x', f'stconsist_predict_{live}_x2']
  assert sorted(p.name for p in out.iterdir()) == [
    '.hidden',
    f'.v.json.{live}.partial.json',
    'v.mp4',
  ]


def test_output_that_is_a_file_is_refused_before_decoding(loaded, videos, tmp_path, monkeypatch):
  taken = tmp_path / 'taken'
  taken.write_text('a file\n')
  opened = []
  monkeypatch.setattr(video_files, 'open_video', lambda *a: opened.append(a) or 1 / 0)
  with pytest.raises(FileExistsError):
    predict.predict_video(loaded, videos / 'b.mp4', taken, progress=False)
  assert opened == []
  # The command line: no model loaded (the arguments name none), nothing decoded.
  args = types.SimpleNamespace(video=str(videos / 'b.mp4'), output=str(taken))
  assert predict_app.run(args) == 2 and opened == []


def test_output_that_is_a_file_is_one_error_line(videos, tmp_path, capsys):
  taken = tmp_path / 'taken'
  taken.write_text('a file\n')
  args = types.SimpleNamespace(video=str(videos / 'b.mp4'), output=str(taken))
  assert predict_app.run(args) == 2
  err = capsys.readouterr().err
  assert err == f'error: --output {taken}: a file is there, not a folder\n'
  assert taken.read_text() == 'a file\n'


def test_output_folder_may_be_the_video_folder(loaded, videos, tmp_path):
  folder = tmp_path / 'clips'
  folder.mkdir()
  for name in ('a.avi', 'b.mp4'):
    shutil.copy(videos / name, folder / name)
  inputs = video_files.list_videos(folder, exclude=folder)
  assert [p.name for p in inputs] == ['a.avi', 'b.mp4']
  done, failed = predict.predict_all(loaded, inputs, folder, every=8, progress=False, report=print)
  assert len(done) == 2 and not failed
  # b.mp4's annotated copy cannot overwrite it; a.avi's is a.mp4.
  assert sorted(p.name for p in folder.iterdir()) == [
    'a.avi',
    'a.json',
    'a.mp4',
    'b.json',
    'b.mp4',
    'b_pred.mp4',
  ]
  # A second run reads the same two videos, not the annotated copies.
  assert video_files.list_videos(folder, exclude=folder) == inputs


def test_unreadable_video_is_permission_denied(loaded, videos, tmp_path, monkeypatch):
  video = tmp_path / 'locked.mp4'
  shutil.copy(videos / 'b.mp4', video)
  video.chmod(0)
  if os.geteuid() == 0:
    # Root may read a mode 000 file; answer as the kernel does for its non-root owner.
    real_access = os.access

    def owner_access(path, mode, **kwargs):
      if pathlib.Path(path) == video:
        bits = stat.S_IMODE(os.stat(path).st_mode)
        return not (mode & os.R_OK and not bits & stat.S_IRUSR)
      return real_access(path, mode, **kwargs)

    monkeypatch.setattr(video_files.os, 'access', owner_access)
  lines = []
  done, failed = predict.predict_all(
    loaded, [video], tmp_path / 'out', progress=False, report=lines.append
  )
  assert done == [] and failed == {str(video): 'permission denied'}
  assert lines == [f'skipped {video}: permission denied']


def test_opencv_warnings_are_silenced_unless_verbose(monkeypatch):
  logs = cv2.utils.logging
  before = logs.getLogLevel()
  monkeypatch.delenv('OPENCV_FFMPEG_LOGLEVEL', raising=False)
  try:
    logs.setLogLevel(logs.LOG_LEVEL_WARNING)
    video_files.quiet_opencv(verbose=True)
    assert logs.getLogLevel() == logs.LOG_LEVEL_WARNING
    assert 'OPENCV_FFMPEG_LOGLEVEL' not in os.environ
    video_files.quiet_opencv(verbose=False)
    assert logs.getLogLevel() == logs.LOG_LEVEL_ERROR
    assert os.environ['OPENCV_FFMPEG_LOGLEVEL'] == '-8'
  finally:
    logs.setLogLevel(before)


# ------------------------------------------------------------------ command line


def _cli(repo_root, *args):
  env = xla_env.subprocess_env(1)
  return subprocess.run(
    [sys.executable, '-m', 'stconsist_jax.apps.predict', *args],
    cwd=repo_root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_predicts_a_folder_and_reports_bad_files(repo_root, workdir, videos, tmp_path):
  out = tmp_path / 'cli'
  proc = _cli(
    repo_root,
    f'--workdir={workdir}',
    f'--video={videos}',
    f'--output={out}',
    '--frame_stride=2',
    '--frame_top_k=0',
    '--progress=false',
    '--override=eval.tubes.min_length=5',
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'frames/s' in proc.stdout and 'predicted 2 of 4 video(s)' in proc.stdout
  skipped = [line for line in proc.stdout.splitlines() if line.startswith('skipped ')]
  assert len(skipped) == 2 and 'Traceback' not in proc.stderr
  record = json.loads((out / 'a.json').read_text())
  record_schema.validate_prediction(record)
  assert record['settings']['frame_stride'] == 2 and record['settings']['devices'] == 1
  assert record['settings']['linking']['min_length'] == 5
  assert all(len(f['scores']) == NUM_CLASSES for f in record['frames'])
  assert [f['predicted'] for f in record['frames']].count(True) == 19  # 0, 2, .., 36


def test_cli_user_errors_are_one_line(repo_root, workdir, tmp_path):
  proc = _cli(
    repo_root,
    f'--workdir={workdir}',
    f'--video={tmp_path / "nope.avi"}',
    f'--output={tmp_path / "o"}',
  )
  assert proc.returncode == 1 and 'no such file' in proc.stderr
  assert 'Traceback' not in proc.stderr
  video = tmp_path / 'v.mp4'
  _write(video, _moving_square(3, (32, 32)), 'mp4v', 10)
  proc = _cli(
    repo_root, f'--workdir={tmp_path / "missing"}', f'--video={video}', f'--output={tmp_path / "o"}'
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ')


def test_outputs_go_to_a_bucket(loaded, videos, gcs_bucket, tmp_path, monkeypatch):
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  out = f'{gcs_bucket}/predictions'
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  monkeypatch.setattr(output_files.tempfile, 'tempdir', str(scratch))
  monkeypatch.setattr(output_files, 'COPY_CHUNK', 4096)  # Many chunks per file.
  result = predict.predict_video(loaded, videos / 'b.mp4', out, progress=False)
  assert list(scratch.iterdir()) == []  # The local scratch files are gone.
  assert str(result.json_path) == f'{out}/b.json'
  assert sorted(p.name for p in fileio.as_path(out).iterdir()) == ['b.json', 'b.mp4']
  record = json.loads(fileio.as_path(f'{out}/b.json').read_text())
  record_schema.validate_prediction(record)
  local = tmp_path / 'b.mp4'
  local.write_bytes(fileio.as_path(f'{out}/b.mp4').read_bytes())
  assert _count_frames(local) == record['num_frames'] == 23


def test_bucket_video_is_refused_in_one_line(tmp_path, capsys):
  with pytest.raises(video_files.VideoError, match='bucket URL'):
    video_files.open_video('gs://bucket/v.mp4')
  args = types.SimpleNamespace(video='gs://bucket/v.mp4', output=str(tmp_path / 'o'))
  assert predict_app.run(args) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: --video gs://bucket/v.mp4 is a bucket URL')
  assert err.count('\n') == 1 and not (tmp_path / 'o').exists()


def test_benchmark_prints_frames_per_second_without_tensorflow(repo_root):
  env = xla_env.subprocess_env(1)
  proc = subprocess.run(
    [
      sys.executable,
      str(repo_root / 'benchmarks' / 'predict.py'),
      '--settings=demo',
      '--frames=12',
      '--nowrite_video',
    ],
    cwd=repo_root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record['frames_per_s'] > 0 and record['num_frames'] == 12
  assert record['clip_frames'] == 8 and record['image_size'] == 48
  assert record['device'] and record['tensorflow_imported'] is False


@pytest.mark.parametrize('count, k, every', [(21, 8, 4), (20, 8, 4), (5, 8, 4), (30, 6, 6)])
def test_tubelet_windows_stream_the_documented_clips(count, k, every):
  num_frames = 8 if k == 8 else 10
  frames = [np.full((2, 2, 1), i, np.uint8) for i in range(count)]
  got = list(frame_predictor.tubelet_windows(iter(frames), num_frames, k, every))
  starts = [o for o, _ in got]
  assert starts == clip_geometry.tubelet_output_starts(count, k, every).tolist()
  p0 = (num_frames - k) // 2
  for o, clip in got:
    expected = np.clip(np.arange(num_frames) + o - p0, 0, count - 1)
    np.testing.assert_array_equal(clip[:, 0, 0, 0], expected)


class _FixedTubelets(frame_predictor.ClipPredictor):
  """The same outputs for every clip (K = 2): tubelet A at a fixed box, shown on the
  clip's first output frame only; tubelet B far from it, on both."""

  def _run(self, clips):
    return len(clips)

  def _outputs(self, b):
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]], np.float32)
    return {
      'logits': np.zeros((b, 3), np.float32),
      'det_boxes': np.tile(boxes[None, :, None], (b, 1, 2, 1)),
      'det_scores': np.tile(np.array([[[0.9], [0.8]]], np.float32), (b, 1, 1)),
      'det_valid': np.ones((b, 2), bool),
      'det_present': np.tile(np.array([[[True, False], [True, True]]]), (b, 1, 1)),
    }


def test_tubelet_presence_reaches_the_actors_and_tubes():
  predictor = _FixedTubelets(num_frames=2, frame_size=8, image_size=8, tubelet_frames=2)
  frames = [np.zeros((8, 8, 3), np.uint8)] * 4
  detections = predictor.detect(frames, every=2)  # clips on frames 0-1 and 2-3
  assert detections.tubelets.present.shape == (2, 2, 2)
  linking = tubelets_lib.TubeletLinkingConfig(min_length=1)
  results, found = frame_predictor.tubelet_results(detections, (100, 100), linking)
  # A is on frames 0 and 2 only, B on all four.
  assert results.actors[2].sum(axis=1).tolist() == [2, 1, 2, 1]
  assert [t.frames.tolist() for t in found] == [[0, 2], [0, 1, 2, 3]]
  # Online, a clip reports its last output frame: A is absent there.
  from stconsist_jax.prediction import stream  # pylint: disable=g-import-not-at-top

  dets = stream.frame_detections(predictor._outputs(1), 2, (100, 100), 0.3, True)
  np.testing.assert_allclose(dets.boxes, [[60, 60, 90, 90]])


def test_a_tubelet_detector_predicts_every_actor_of_every_frame(videos, tmp_path, monkeypatch):
  """The demo's tubelet detector (random weights) on a 37-frame video: a clip every 4
  frames, each frame an output frame, actors and tubes valid under the record schema."""
  # Random weights start at a foreground probability of 0.01 a cell, below the actor cut.
  monkeypatch.setattr(frame_predictor, 'ACTOR_MIN_SCORE', 0.0)
  from stconsist_jax.configs import demo as tubelet_demo  # pylint: disable=g-import-not-at-top

  config = tubelet_demo.get_config()
  config.data.name = 'random'
  config.model.widen_factor = 0.125
  config.model.tubelet_flip_test = False  # The flip test has its own tests; half the cost.
  config.eval.tubelets.min_length = 2  # random weights give short tubes
  model = models.build_model(config.model)
  path = tmp_path / 'tubelet'
  state = train_step.create_train_state(config, model, distributed.make_mesh())
  config_file.save(config, path)
  ckpt = checkpointing.Checkpointer(path, keep=1, async_save=False)
  ckpt.save(1, state)
  ckpt.wait()
  ckpt.close()
  tubelet_loaded = predict.load(path, 'latest', batch_size=8)
  assert tubelet_loaded.tubelets and predict.default_stride(tubelet_loaded) == 4
  result = predict.predict_video(
    tubelet_loaded, videos / 'a.avi', tmp_path / 'out', every=4, progress=False
  )
  record = json.loads(result.json_path.read_text())
  record_schema.validate_prediction(record)
  n = record['num_frames']
  assert record['format'] == 'stconsist_jax.prediction/2'
  assert record['timing']['clips'] == clip_geometry.num_tubelet_clips(n, 8, 4) == 9
  assert record['box_classes'] == [f'box_class_{i}' for i in range(6)]
  assert all(f['predicted'] for f in record['frames'])  # every frame is an output frame
  counts = [len(f['actors']) for f in record['frames']]
  assert max(counts) > 1  # several actors a frame (random weights box many places)
  h, w = record['size']
  for frame in record['frames']:
    for actor in frame['actors']:
      x1, y1, x2, y2 = actor['box']
      assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
  ids = {a['tube'] for f in record['frames'] for a in f['actors']} - {None}
  assert ids <= set(range(len(record['tubes'])))
  assert record['settings']['tubelet_frames'] == 8
  assert _count_frames(result.video_path) == n


# ------------------------------------------------------------------- memory


class _OneBoxStub(frame_predictor.ClipPredictor):
  """A one-box head without a network: the same box in every clip; class 0's logit rises
  with the clip's brightness, class 1's is 0, so each class links into one tube through
  the whole video."""

  def _run(self, clips):
    return clips.mean(axis=(1, 2, 3, 4))

  def _outputs(self, brightness):
    logits = np.zeros((len(brightness), 2), np.float32)
    logits[:, 0] = brightness / 50
    box = np.float32([0.2, 0.2, 0.3, 0.3])  # x, y, w, h
    return {'logits': logits, 'boxes': np.tile(box, (len(brightness), 1))}


class _TubeletStub(frame_predictor.ClipPredictor):
  """A tubelet head without a network: two tubelets side by side in every clip (K = T =
  8), one box class: two actors on every frame and two tubes through the whole video."""

  def _run(self, clips):
    return len(clips)

  def _outputs(self, b):
    boxes = np.float32([[0.1, 0.1, 0.3, 0.5], [0.6, 0.1, 0.8, 0.5]])
    return {
      'logits': np.zeros((b, 3), np.float32),
      'det_boxes': np.tile(boxes[None, :, None], (b, 1, 8, 1)),
      'det_scores': np.full((b, 2, 1), 0.5, np.float32),
      'det_valid': np.ones((b, 2), bool),
    }


def _stub_loaded(kind):
  names = ['a', 'b'] if kind == 'one_box' else ['a', 'b', 'c']
  info = {
    'source': 'workdir',
    'path': 'stub',
    'step': 0,
    'architecture': 'stub',
    'classification_only': False,
    'num_classes': len(names),
    'config_hash': None,
  }
  if kind == 'one_box':
    stub = _OneBoxStub(num_frames=8, frame_size=8, image_size=8)
    return predict.Loaded(stub, None, names, tubes.LinkingConfig(), info)
  stub = _TubeletStub(num_frames=8, frame_size=8, image_size=8, tubelet_frames=8)
  linking = tubelets_lib.TubeletLinkingConfig()
  return predict.Loaded(stub, None, names, linking, info, ['actor'], tube_frame_stride=4)


def _traced_peak(loaded, video, out):
  """predict_video's peak of Python allocations (numpy's arrays included), in bytes."""
  tracemalloc.start()
  try:
    result = predict.predict_video(
      loaded, video, out, every=predict.default_stride(loaded), progress=False
    )
    return tracemalloc.get_traced_memory()[1], result
  finally:
    tracemalloc.stop()


@pytest.mark.parametrize('kind,budget', [('one_box', 300), ('tubelets', 800)])
def test_peak_memory_does_not_grow_with_the_video(kind, budget, tmp_path):
  """Predicting 256 frames instead of 64 (JSON and MP4) raises the peak by less than
  `budget` bytes a frame: the compact arrays a video needs (its dense results, two
  whole-video tubes at 48 bytes a frame each, a tubelet detector's boxes and actors) and
  the building of one tube at a time, no Python objects per frame.

  Before, the peak grew by about 750 (one box) and 1,030 (tubelets) bytes a frame: each
  tube's JSON entry held as Python lists, every (tubelet, frame) row of the video at
  once for the per-frame NMS, and every tube's member list during the linking.
  """
  loaded = _stub_loaded(kind)
  short, long = 64, 256  # past the 64-frame blocks that bound the per-frame work
  for n in (short, long):
    _write(tmp_path / f'{n}.mp4', _moving_square(n, (16, 16)), 'mp4v', 25)
  _traced_peak(loaded, tmp_path / f'{short}.mp4', tmp_path / 'warm')  # first-call caches
  peak_short, _ = _traced_peak(loaded, tmp_path / f'{short}.mp4', tmp_path / 'out')
  peak_long, result = _traced_peak(loaded, tmp_path / f'{long}.mp4', tmp_path / 'out')
  record = json.loads(result.json_path.read_text())
  assert [(t['start'], t['end']) for t in record['tubes']] == [(0, long - 1)] * 2
  assert _count_frames(result.video_path) == long
  per_frame = (peak_long - peak_short) / (long - short)
  assert per_frame < budget, f'{peak_short} B for {short} frames, {peak_long} B for {long}'
