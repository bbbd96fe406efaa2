"""The TFDS builder and its command line on synthetic UCF-101 folders: read-back, skips,
splits, atomicity, registered configs, subsets, sources, box clipping, one-line errors.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from stconsist_jax.core import errors

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import split_lists
from stconsist_jax.data.ucf101 import annotations as ann
from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib
from stconsist_jax.data.synthetic import generator as synthetic
from stconsist_jax.data.synthetic import synthetic_video
from stconsist_jax.data.ucf101 import dataset_build
from stconsist_jax.data.ucf101 import stored_tubes
from stconsist_jax.data.ucf101 import tfds_builder
from stconsist_jax.data.ucf101 import video_decode
from tests.data_fixtures import rendered_video


def _read_all(builder, split):
  return {
    ex['name'].decode(): ex
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  }


def test_configs():
  names = [c.name for c in tfds_builder.Ucf101Stconsist.BUILDER_CONFIGS]
  assert names[0] == 'split1_128' and tfds_builder.Ucf101Stconsist.name == 'ucf101_stconsist'
  assert {'split2_64', 'split3_32'} <= set(names)
  cfg = tfds_builder.make_config(2, 48)
  assert (cfg.name, cfg.split, cfg.frame_size, len(cfg.class_names)) == ('split2_48', 2, 48, 101)
  with pytest.raises(ValueError, match='split must be'):
    tfds_builder.make_config(4, 64)


def test_read_back_equals_generator(synthetic_tfds):
  truth = synthetic_tfds.truth
  size = synthetic_tfds.frame_size
  b = synthetic_tfds.builder
  assert b.info.features['label'].names == list(truth.class_names)
  for split, paths in zip(('train', 'test'), truth.splits[1]):
    got = _read_all(b, split)
    assert sorted(got) == sorted(paths)
  got = _read_all(b, 'train')
  checked_frames = 0
  for name, ex in got.items():
    rec = truth.records[name]
    n = rec.num_frames
    assert ex['num_frames'] == n and ex['frames'].shape == (n, size, size, 3)
    assert ex['label'] == truth.class_names.index(rec.class_name) == rec.label
    assert tuple(ex['original_size']) == (240, 320)
    assert bool(ex['annotated']) == bool(rec.tubes)
    assert ex['tube_boxes'].shape == (len(rec.tubes), n, 4)
    np.testing.assert_array_equal(ex['tube_labels'], [t.label for t in rec.tubes])
    for k, t in enumerate(rec.tubes):
      present = np.zeros(n, bool)
      present[t.start : t.end] = True
      np.testing.assert_array_equal(ex['tube_present'][k], present)
      assert np.all(ex['tube_boxes'][k][~present] == 0)
      # Normalized corners: within a pixel of the drawn box at the stored size.
      in_pixels = ex['tube_boxes'][k, t.start : t.end] * size
      drawn = t.boxes * [size / 320, size / 240, size / 320, size / 240]
      assert np.abs(in_pixels - drawn).max() < 1e-3
    if checked_frames < 3:
      rendered, _ = rendered_video(truth.spec, name)
      small = np.stack(
        [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in rendered]
      )
      err = np.abs(ex['frames'].astype(np.float64) - small).mean()
      assert err < 12.0, (name, err)
      checked_frames += 1
  assert checked_frames == 3


def test_actor_inside_its_stored_box(synthetic_tfds):
  """Independent of the box arithmetic: the actor's colour sits inside the stored box."""
  truth, size = synthetic_tfds.truth, synthetic_tfds.frame_size
  located = 0
  for name, ex in list(_read_all(synthetic_tfds.builder, 'test').items()):
    rec = truth.records[name]
    if len(rec.tubes) != 1:
      continue
    t = rec.tubes[0]
    f = (t.start + t.end) // 2
    rendered, _ = rendered_video(truth.spec, name)
    small = cv2.resize(rendered[f], (size, size), interpolation=cv2.INTER_AREA)
    diff = np.abs(ex['frames'][f].astype(int) - small.astype(int)).mean()
    assert diff < 15
    x1, y1, x2, y2 = ex['tube_boxes'][0, f] * size
    stored = ex['frames'][f].astype(int)
    actor_rgb = np.array(
      rendered[f][
        int(t.boxes[f - t.start][1] + t.boxes[f - t.start][3]) // 2,
        int(t.boxes[f - t.start][0] + t.boxes[f - t.start][2]) // 2,
      ]
    )
    close = np.abs(stored - actor_rgb).sum(-1) < 60
    ys, xs = np.nonzero(close)
    if len(xs) < 4:
      continue  # hollow shapes (rings) have background at their centre
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    assert x1 - 1 <= cx <= x2 + 1 and y1 - 1 <= cy <= y2 + 1
    located += 1
  assert located >= 2


def test_corrupt_truncated_and_missing_videos_are_skipped(tmp_path):
  spec = synthetic.SyntheticSpec(
    seed=3,
    num_classes=2,
    annotated_classes=1,
    videos_per_class=3,
    min_frames=24,
    max_frames=30,
    second_actor_prob=0.0,
  )
  truth = synthetic.generate(tmp_path / 'src', spec)
  train, test = truth.splits[1]
  videos = tmp_path / 'src' / 'UCF-101'
  corrupt, missing = train[0], train[1]
  truncated = next(
    p for p in train + test if truth.records[p].tubes and p not in (corrupt, missing)
  )
  (videos / f'{corrupt}.avi').write_bytes(b'RIFF\x00\x00\x00\x00AVI garbage' * 10)
  (videos / f'{missing}.avi').unlink()
  frames, _ = rendered_video(spec, truncated)
  synthetic_video.write_video(frames[:5], videos / f'{truncated}.avi')

  b = dataset_build.build(tmp_path / 'src', tmp_path / 'out', split=1, frame_size=16, num_workers=2)
  report = tfds_builder.read_report(b)
  skipped = {s['video']: s['reason'] for v in report['skipped'].values() for s in v}
  assert set(skipped) == {corrupt, missing, truncated}
  assert 'missing' in skipped[missing]
  assert 'truncated: decoded 5 of' in skipped[truncated]
  assert report['notes']['truncated_videos_skipped'] == 1
  assert report['annotation_problems']['counts']['video_file_missing'] == 1
  written = set(_read_all(b, 'train')) | set(_read_all(b, 'test'))
  assert written == set(truth.records) - set(skipped)
  assert sum(report['videos_written'].values()) == len(written)
  assert all(v > 0 for v in report['videos_per_second'].values())
  # Written through TFDS's incomplete dir, renamed when done: nothing left behind.
  leftovers = [
    p.name for p in (tmp_path / 'out' / 'ucf101_stconsist').rglob('*') if 'incomplete' in p.name
  ]
  assert leftovers == []


def test_failed_build_leaves_no_dataset(synthetic_root, tmp_path, monkeypatch):
  calls = []

  def failing(task):
    calls.append(task.path)
    if len(calls) == 3:
      raise RuntimeError('disk full')
    return video_decode.decode_video(task)

  monkeypatch.setattr(video_decode, 'decode_video', failing)
  with pytest.raises(RuntimeError, match='disk full'):
    dataset_build.build(synthetic_root.root, tmp_path / 'out', frame_size=16, num_workers=0)
  b = tfds_builder.builder(
    tfds_builder.make_config(1, 16, manual_dir=synthetic_root.root), tmp_path / 'out'
  )
  assert not b.data_path.exists()


def test_split_lists_honoured(synthetic_root, tmp_path):
  """A hand-edited test list decides the test split, including another split number."""
  src = tmp_path / 'src'
  shutil.copytree(synthetic_root.root, src)
  lists = src / 'ucfTrainTestlist'
  train, test = split_lists.official_split(lists, 2)
  keep_test = test[:3]
  (lists / 'testlist02.txt').write_text(''.join(f'{p}.avi\n' for p in keep_test))
  b = dataset_build.build(src, tmp_path / 'out', split=2, frame_size=16, num_workers=0)
  assert sorted(_read_all(b, 'test')) == sorted(keep_test)
  assert sorted(_read_all(b, 'train')) == sorted(train)


def test_class_list_mismatch_is_a_clear_error(synthetic_root, tmp_path):
  b = tfds_builder.builder('split1_32', tmp_path / 'out')
  with pytest.raises(ValueError, match='classInd.txt lists 6 classes'):
    b.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(synthetic_root.root))
    )


def test_annotated_class_names_recorded_in_metadata(synthetic_tfds):
  # The 24-way tube labels name classes only through this list, so a reader of the
  # built dataset (evaluation's frame-mAP) can map them back without the pickle.
  reread = tfds.builder_from_directory(str(synthetic_tfds.builder_dir))
  assert list(reread.info.metadata['annotated_class_names']) == list(
    synthetic_tfds.truth.annotated_class_names
  )


def test_annotated_class_names_of_real_annotations_follow_ucf24_order(ucf24_dir):
  records = ann.load_annotations(ucf24_dir / 'pyannot.pkl')
  expected = (ucf24_dir / 'classes.txt').read_text().split()
  assert manual_dir_lib.annotated_class_names(records) == expected


def test_tube_label_shared_by_two_classes_is_a_clear_error():
  boxes = np.zeros((2, 4))
  records = {
    'A/v_A_g01_c01': records_lib.VideoRecord(
      'A/v_A_g01_c01', 0, 'A', 2, (records_lib.AnnotatedTube(0, 0, 2, boxes),)
    ),
    'B/v_B_g01_c01': records_lib.VideoRecord(
      'B/v_B_g01_c01', 1, 'B', 2, (records_lib.AnnotatedTube(0, 0, 2, boxes),)
    ),
  }
  with pytest.raises(ValueError, match="tube label 0 is used by classes 'A' and 'B'"):
    manual_dir_lib.annotated_class_names(records)


# --------------------------------------------------------------------------- regressions


@pytest.fixture(scope='module')
def tool(repo_root):
  """tools/build_dataset.py as a module (its flags are defined only when run)."""
  spec = importlib.util.spec_from_file_location(
    'build_dataset_tool', repo_root / 'tools' / 'build_dataset.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run_tool(tool, capsys, manual_dir, data_dir, **kwargs):
  capsys.readouterr()  # Drop what earlier builds printed.
  rc = tool.run(str(manual_dir), str(data_dir), **{'frame_size': 16, 'num_workers': 0, **kwargs})
  out, err = capsys.readouterr()
  return rc, out, err


def test_a_full_disk_is_one_line_and_leaves_nothing_half_built(
  synthetic_root, tmp_path, tool, capsys, monkeypatch
):
  calls = []

  def fills_the_disk(task):
    calls.append(task.path)
    if len(calls) == 3:  # As TensorFlow's writer words it (measured on a full disk).
      raise RuntimeError(
        'ResourceExhaustedError: Failed to finalize writing of split "train": '
        f'{tmp_path}/out/x.tfrecord; No space left on device'
      )
    return video_decode.decode_video(task)

  monkeypatch.setattr(video_decode, 'decode_video', fills_the_disk)
  rc, out, err = _run_tool(tool, capsys, synthetic_root.root, tmp_path / 'out')
  assert rc == errors.EXIT_NO_SPACE == 74
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: no space left on the disk of {tmp_path}')
  assert 'No space left on device' in lines[0] and 'free space and rerun' in lines[0]
  assert not [p for p in (tmp_path / 'out').rglob('*') if p.name.startswith('incomplete')]
  b = tfds_builder.builder(
    tfds_builder.make_config(1, 16, manual_dir=synthetic_root.root), tmp_path / 'out'
  )
  assert not b.data_path.exists()


def test_registered_config_is_used_for_the_101_classes():
  registered = tfds_builder.registered_config(1, 32)
  assert tfds_builder.make_config(1, 32) is registered
  assert tfds_builder.make_config(1, 32, class_names=classes.UCF101_CLASSES) is registered
  assert tfds_builder.make_config(3, 128) is tfds_builder.registered_config(3, 128)
  # Anything else is a custom config under a name of its own.
  assert tfds_builder.make_config(1, 32, jpeg_quality=80).name == 'split1_32_q80'
  assert tfds_builder.make_config(1, 32, class_names=('A', 'B')).name == 'split1_32_c2'
  assert tfds_builder.registered_config(1, 48) is None


def test_101_class_folder_builds_at_a_registered_size(tiny_ucf101, tmp_path, tool, capsys):
  # Used to fail: "Cannot name a custom BuilderConfig the same as an available one".
  rc, out, err = _run_tool(tool, capsys, tiny_ucf101.root, tmp_path / 'out', frame_size=32)
  assert rc == 0, err
  b = tfds_builder.builder('split1_32', tmp_path / 'out')
  assert b.builder_config is tfds_builder.registered_config(1, 32)
  assert str(b.data_dir) in out
  assert b.info.features['label'].names == list(classes.UCF101_CLASSES)
  assert list(b.info.metadata['annotated_class_names']) == list(classes.UCF24_CLASSES)
  test = _read_all(b, 'test')
  assert len(test) == 101 and len(_read_all(b, 'train')) == 101
  for name, ex in test.items():
    rec = tiny_ucf101.records[name]
    assert ex['label'] == rec.label and ex['frames'].shape == (3, 32, 32, 3)
    assert bool(ex['annotated']) == bool(rec.tubes)
    if rec.tubes:
      np.testing.assert_allclose(
        ex['tube_boxes'][0] * [32, 24, 32, 24], rec.tubes[0].boxes, atol=1e-4
      )


def test_from_annotations_subset_builds(ucf24_dir, tmp_path, tool, capsys):
  # Used to fail: "tube labels [...] are used by no video".
  ds = synthetic.generate_from_annotations(
    tmp_path / 'src', ucf24_dir / 'pyannot.pkl', max_videos=3, num_workers=0
  )
  rc, out, err = _run_tool(tool, capsys, tmp_path / 'src', tmp_path / 'out', frame_size=32)
  assert rc == 0, err
  b = tfds_builder.builder('split1_32', tmp_path / 'out')
  assert list(b.info.metadata['annotated_class_names']) == list(classes.UCF24_CLASSES)
  used = {r.class_name for r in ds.records.values()}
  absent = [c for c in classes.UCF24_CLASSES if c not in used]
  assert tfds_builder.read_report(b)['annotated_classes_without_tubes'] == absent
  assert f'annotated classes without tubes here: {len(absent)}' in out
  got = {**_read_all(b, 'train'), **_read_all(b, 'test')}
  assert set(got) == set(ds.records)
  for name, ex in got.items():
    assert [classes.UCF24_CLASSES[i] for i in ex['tube_labels']] == [
      ds.records[name].class_name
    ] * len(ds.records[name].tubes)


def test_annotated_class_names_of_a_subset_keep_the_ucf24_label_space(ucf24_dir):
  records = ann.load_annotations(ucf24_dir / 'pyannot.pkl')
  subset = {p: r for p, r in records.items() if r.class_name in ('Skijet', 'Biking')}
  assert manual_dir_lib.annotated_class_names(subset) == list(classes.UCF24_CLASSES)
  # Labels of other names must still leave no hole.
  boxes = np.zeros((1, 4))
  odd = {
    'A/v_A_g01_c01': records_lib.VideoRecord(
      'A/v_A_g01_c01', 0, 'A', 1, (records_lib.AnnotatedTube(1, 0, 1, boxes),)
    )
  }
  with pytest.raises(ValueError, match=r'tube labels \[0\] are used by no video'):
    manual_dir_lib.annotated_class_names(odd)
  assert manual_dir_lib.annotated_class_names({}) == []


def test_tool_reports_a_wrong_manual_dir_in_one_line(tmp_path, tool, capsys):
  rc, out, err = _run_tool(tool, capsys, tmp_path / 'nope', tmp_path / 'out')
  assert rc == errors.EXIT_USER_ERROR and out == ''
  first, rest = err.split('\n', 1)
  assert first.startswith(f'error: manual dir {tmp_path / "nope"} not found')
  assert 'pyannot.pkl' in first and 'ucfTrainTestlist' in first
  assert 'Download UCF-101' in rest and 'Traceback' not in err
  assert not (tmp_path / 'out').exists()


def _copy_folder(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_tool_reports_missing_and_junk_annotations_in_one_line(
  synthetic_root, tmp_path, tool, capsys
):
  src = _copy_folder(synthetic_root.root, tmp_path / 'src')
  (src / 'pyannot.pkl').unlink()
  rc, out, err = _run_tool(tool, capsys, src, tmp_path / 'out')
  assert rc == errors.EXIT_USER_ERROR
  assert err.startswith(
    f'error: no annotation pickle in {src}: expected one of pyannot.pkl, UCF101v2-GT.pkl\n'
  )
  assert 'Download UCF-101' in err
  (src / 'pyannot.pkl').write_bytes(b'<html>404 Not Found</html>')
  rc, out, err = _run_tool(tool, capsys, src, tmp_path / 'out')
  assert rc == errors.EXIT_USER_ERROR and err.count('\n') == 1
  assert err.startswith(f'error: {src / "pyannot.pkl"} is not a readable annotation pickle (')
  shutil.copy(synthetic_root.root / 'pyannot.pkl', src / 'pyannot.pkl')
  (src / 'ucfTrainTestlist' / 'trainlist01.txt').write_text('a b c\n')
  rc, out, err = _run_tool(tool, capsys, src, tmp_path / 'out')
  assert rc == errors.EXIT_USER_ERROR and err.count('\n') == 1
  assert 'trainlist01.txt: line 1 should be' in err
  assert not (tmp_path / 'out').exists()


def test_tool_errors_carry_no_traceback_when_run(tmp_path, repo_root):
  result = subprocess.run(
    [
      sys.executable,
      'tools/build_dataset.py',
      f'--manual_dir={tmp_path / "nope"}',
      f'--data_dir={tmp_path / "out"}',
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == errors.EXIT_USER_ERROR
  assert 'Traceback' not in result.stderr
  assert f'error: manual dir {tmp_path / "nope"} not found' in result.stderr
  assert 'Download UCF-101' in result.stderr


def _small_folder(path, seed=5):
  spec = synthetic.SyntheticSpec(
    seed=seed, num_classes=2, annotated_classes=1, videos_per_class=3, min_frames=6, max_frames=8
  )
  return synthetic.generate(path, spec)


def test_rebuild_from_another_source_is_refused_unless_overwrite(tmp_path, tool, capsys):
  first = _small_folder(tmp_path / 'a')
  out_dir = tmp_path / 'out'
  b = dataset_build.build(first.root, out_dir, frame_size=16, num_workers=0)
  source = b.info.metadata['source']
  assert source['manual_dir'] == str(first.root.absolute())
  assert tfds_builder.read_report(b)['source'] == source
  before = sorted(_read_all(b, 'train'))
  # The same source again: reused, no error.
  assert (
    sorted(
      _read_all(dataset_build.build(first.root, out_dir, frame_size=16, num_workers=0), 'train')
    )
    == before
  )
  # Another folder (other videos and pyannot.pkl): refused, the old build untouched.
  other = _small_folder(tmp_path / 'b', seed=6)
  with pytest.raises(
    tfds_builder.SourceMismatchError,
    match=r'built from .*/a and its pyannot.pkl.* differ.*--overwrite',
  ):
    dataset_build.build(other.root, out_dir, frame_size=16, num_workers=0)
  rc, _, err = _run_tool(tool, capsys, other.root, out_dir)
  assert rc == errors.EXIT_USER_ERROR
  assert err.count('\n') == 1 and '--overwrite' in err
  # The same files under another path are another source too (the videos may differ).
  copy = _copy_folder(first.root, tmp_path / 'copy')
  with pytest.raises(tfds_builder.SourceMismatchError, match=r'built from .*/a, so'):
    dataset_build.build(copy, out_dir, frame_size=16, num_workers=0)
  b = tfds_builder.builder(tfds_builder.make_config(1, 16, manual_dir=first.root), out_dir)
  assert sorted(_read_all(b, 'train')) == before
  # --overwrite rebuilds from the new source.
  rc, _, err = _run_tool(tool, capsys, other.root, out_dir, overwrite=True)
  assert rc == 0, err
  b = tfds_builder.builder(tfds_builder.make_config(1, 16, manual_dir=other.root), out_dir)
  assert b.info.metadata['source']['manual_dir'] == str(other.root.absolute())
  assert sorted(_read_all(b, 'train')) == sorted(other.splits[1][0])
  assert [p.name for p in b.data_path.parent.iterdir()] == ['1.0.0']


def test_failed_overwrite_keeps_the_old_build(tmp_path, monkeypatch):
  first = _small_folder(tmp_path / 'a')
  out_dir = tmp_path / 'out'
  b = dataset_build.build(first.root, out_dir, frame_size=16, num_workers=0)
  before = sorted(_read_all(b, 'test'))

  def failing(task):
    raise RuntimeError('disk full')

  monkeypatch.setattr(video_decode, 'decode_video', failing)
  with pytest.raises(RuntimeError, match='disk full'):
    dataset_build.build(first.root, out_dir, frame_size=16, num_workers=0, overwrite=True)
  monkeypatch.undo()
  b = tfds_builder.builder(b.builder_config, out_dir)
  assert sorted(_read_all(b, 'test')) == before
  assert [p.name for p in b.data_path.parent.iterdir()] == ['1.0.0']


def test_tube_arrays_clip_boxes_and_drop_empty_ones():
  boxes = np.array(
    [
      [10, 10, 20, 20],  # inside: kept as is
      [-5, 10, 20, 20],  # left of the frame: clipped
      [300, 200, 330, 250],  # past the right and bottom: clipped
      [10, 10, 10, 20],  # zero width: dropped
      [330, 10, 340, 20],  # wholly outside: empty once clipped
      [10, 10, 20, 20],
    ],
    np.float64,
  )
  record = records_lib.VideoRecord(
    'A/v_A_g01_c01', 0, 'A', 8, (records_lib.AnnotatedTube(3, 1, 7, boxes),)
  )
  t = stored_tubes.tube_arrays(record, 8, 240, 320)
  assert (t.beyond_video, t.clipped, t.empty) == (0, 2, 2)
  np.testing.assert_array_equal(t.present[0], [0, 1, 1, 1, 0, 0, 1, 0])
  scale = [320, 240, 320, 240]
  np.testing.assert_allclose(t.boxes[0, 2] * scale, [0, 10, 20, 20], atol=1e-4)
  np.testing.assert_allclose(t.boxes[0, 3] * scale, [300, 200, 320, 240], atol=1e-4)
  assert np.all(t.boxes[0, [0, 4, 5, 7]] == 0)
  assert np.all((t.boxes >= 0) & (t.boxes <= 1))
  # A tube past the decoded frames still counts its dropped boxes.
  assert stored_tubes.tube_arrays(record, 4, 240, 320).beyond_video == 3


def _truncate(path, fraction):
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * fraction)])


def test_truncated_unannotated_video_and_bad_boxes_are_reported(tmp_path):
  spec = synthetic.SyntheticSpec(
    seed=4,
    num_classes=2,
    annotated_classes=1,
    videos_per_class=3,
    min_frames=20,
    max_frames=24,
    second_actor_prob=0.0,
  )
  truth = synthetic.generate(tmp_path / 'src', spec)
  unannotated = sorted(p for p, r in truth.records.items() if not r.tubes)
  annotated = sorted(p for p, r in truth.records.items() if r.tubes)
  # Its header still announces every frame; the bytes of most of them are gone.
  truncated = unannotated[0]
  _truncate(tmp_path / 'src' / 'UCF-101' / f'{truncated}.avi', 0.4)
  # Boxes partly or wholly outside the frame, or empty: an ACT file can hold them all.
  records = dict(truth.records)
  bad = records[annotated[0]]
  tube = bad.tubes[0]
  boxes = tube.boxes.copy()
  boxes[0] = [-8, 10, 40, 60]
  boxes[1] = [300, 200, 400, 260]
  boxes[2] = [50, 50, 50, 90]
  records[bad.path] = records_lib.VideoRecord(
    bad.path,
    bad.label,
    bad.class_name,
    bad.num_frames,
    (records_lib.AnnotatedTube(tube.label, tube.start, tube.end, boxes),),
  )
  (tmp_path / 'src' / 'pyannot.pkl').unlink()
  train, test = truth.splits[1]
  ann.write_act(
    [r for r in records.values() if r.tubes],
    tmp_path / 'src' / 'UCF101v2-GT.pkl',
    truth.annotated_class_names,
    train,
    test,
  )

  b = dataset_build.build(tmp_path / 'src', tmp_path / 'out', frame_size=16, num_workers=0)
  report = tfds_builder.read_report(b)
  skipped = {s['video']: s['reason'] for v in report['skipped'].values() for s in v}
  assert list(skipped) == [truncated]
  assert re.fullmatch(r'truncated: decoded \d+ of \d+ frames in its header', skipped[truncated])
  assert report['notes']['truncated_videos_skipped'] == 1
  assert report['notes']['boxes_clipped_to_frame'] == 2
  assert report['notes']['empty_boxes_dropped'] == 1
  ex = {**_read_all(b, 'train'), **_read_all(b, 'test')}[bad.path]
  s = tube.start
  np.testing.assert_array_equal(ex['tube_present'][0, s : s + 3], [True, True, False])
  np.testing.assert_allclose(
    ex['tube_boxes'][0, s] * [320, 240, 320, 240], [0, 10, 40, 60], atol=1e-3
  )
  np.testing.assert_allclose(
    ex['tube_boxes'][0, s + 1] * [320, 240, 320, 240], [300, 200, 320, 240], atol=1e-3
  )
  assert np.all(ex['tube_boxes'][0, s + 2] == 0)


# A build's decoding stage in a child process: two workers decode a tiny video, then
# the child prints its workers' and multiprocessing's resource tracker's pids and waits.
_DECODING_CHILD = """
import json, multiprocessing, sys, time
from multiprocessing import resource_tracker
from stconsist_jax.data.ucf101 import video_decode
tasks = [video_decode.DecodeTask(f'v{i}', sys.argv[1], 8) for i in range(4)]
videos = video_decode.decode_all(tasks, num_workers=2)
assert next(videos).error is None
pids = [p.pid for p in multiprocessing.active_children()]
print(json.dumps(pids + [resource_tracker._resource_tracker._pid]), flush=True)
time.sleep(600)
"""


def _alive(pid):
  """Whether `pid` runs (a zombie, dead but not yet reaped by init, does not)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False
  except OSError:  # no /proc: ask the OS
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True


def test_killed_build_leaves_no_decoding_process_alive(tmp_path):
  video = tmp_path / 'v.avi'
  synthetic_video.write_video(np.zeros((3, 16, 16, 3), np.uint8), video)
  child = subprocess.Popen(
    [sys.executable, '-c', _DECODING_CHILD, str(video)], stdout=subprocess.PIPE, text=True
  )
  try:
    pids = json.loads(child.stdout.readline())
  finally:
    child.kill()
    child.wait()
  assert len(pids) == 3 and all(pids)
  deadline = time.monotonic() + 10  # they go within a second; a slow machine gets more
  while any(map(_alive, pids)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert [p for p in pids if _alive(p)] == []


def test_build_removes_what_killed_builds_left(tmp_path, monkeypatch, caplog):
  _small_folder(tmp_path / 'src')
  cfg = tfds_builder.make_config(1, 8, manual_dir=tmp_path / 'src')
  data_path = tfds_builder.builder(cfg, tmp_path / 'out').data_path
  # What TFDS leaves of two killed builds, and a folder of another version that stays.
  stale = [data_path.parent / f'incomplete.{x * 8}_{data_path.name}' for x in 'ab']
  other = data_path.parent / 'incomplete.cccccccc_2.0.0'
  for folder in stale + [other]:
    (folder / 'train').mkdir(parents=True)
  # The build itself (TFDS's part) is not needed: what it finds when it starts is.
  found = []
  monkeypatch.setattr(
    tfds_builder.Ucf101Stconsist,
    'download_and_prepare',
    lambda self, **kwargs: found.extend(sorted(p.name for p in data_path.parent.iterdir())),
  )
  dataset_build.build(tmp_path / 'src', tmp_path / 'out', frame_size=8, num_workers=0)
  assert found == [other.name]
  lines = [r.getMessage() for r in caplog.records if 'incomplete folder' in r.getMessage()]
  assert len(lines) == 1 and all(p.name in lines[0] for p in stale), lines
