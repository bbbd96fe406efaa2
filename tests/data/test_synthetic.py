"""The synthetic dataset: UCF-101 layout, real pickle format, exact drawn boxes."""

import os
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from stconsist_jax.core import errors

from stconsist_jax.data.ucf101 import classes
from stconsist_jax.data.ucf101 import split_lists
from stconsist_jax.data.ucf101 import videos
from stconsist_jax.data.ucf101 import annotations as ann
from stconsist_jax.data.synthetic import generator as synthetic
from stconsist_jax.data.synthetic import synthetic_video
from tests.data_fixtures import rendered_video


def _decode(path):
  cap = cv2.VideoCapture(str(path))
  fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
  fps = cap.get(cv2.CAP_PROP_FPS)
  frames = []
  while True:
    ok, f = cap.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
  return np.stack(frames), fourcc, fps


def test_layout_and_lists(synthetic_root):
  root = synthetic_root.root
  spec = synthetic_root.spec
  names = split_lists.read_class_index(root / 'ucfTrainTestlist' / 'classInd.txt')
  assert names == synthetic_root.class_names == tuple(sorted(names, key=str.lower))
  assert len(names) == spec.num_classes
  assert len(synthetic_root.records) == spec.num_classes * spec.videos_per_class
  for path in synthetic_root.records:
    assert (root / 'UCF-101' / f'{path}.avi').is_file()
    cls, stem = path.split('/')
    assert stem.startswith(f'v_{cls}_g') and '_c' in stem
  for split in (1, 2, 3):
    train, test = split_lists.official_split(root / 'ucfTrainTestlist', split)
    assert (train, test) == synthetic_root.splits[split]
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(synthetic_root.records)
    # Group-based like the real lists: no group is in both train and test.
    test_groups = {videos.group_of(p) for p in test}
    assert test_groups and not test_groups & {videos.group_of(p) for p in train}
    for path, label in split_lists.read_labeled_split_list(
      root / 'ucfTrainTestlist' / f'trainlist0{split}.txt'
    ):
      assert names[label] == videos.class_of(path)
  raw_test = (root / 'ucfTrainTestlist' / 'testlist01.txt').read_text().splitlines()
  assert all(line.endswith('.avi') and ' ' not in line for line in raw_test)


def test_pickle_has_real_format_and_dtypes(synthetic_root):
  with open(synthetic_root.root / 'pyannot.pkl', 'rb') as f:
    raw = pickle.load(f, encoding='latin1')
  annotated = set(synthetic_root.annotated_class_names)
  assert len(annotated) == synthetic_root.spec.annotated_classes
  assert {videos.class_of(k) for k in raw} == annotated  # unannotated classes: no entries
  for key, v in raw.items():
    assert set(v) == {'label', 'numf', 'annotations'}
    assert type(v['numf']) in (np.uint8, np.uint16)
    assert isinstance(v['label'], int)
    assert v['label'] == sorted(annotated, key=str.lower).index(videos.class_of(key))
    for t in v['annotations']:
      assert set(t) == {'label', 'sf', 'ef', 'boxes'}
      assert t['boxes'].dtype in (np.uint8, np.uint16) and t['boxes'].shape == (
        t['ef'] - t['sf'],
        4,
      )
      assert 0 <= t['sf'] < t['ef'] <= int(v['numf'])
  tubes = [t for v in raw.values() for t in v['annotations']]
  assert any(len(v['annotations']) >= 2 for v in raw.values())
  assert any(t['ef'] - t['sf'] < int(v['numf']) for v in raw.values() for t in v['annotations'])
  # The records the reader makes from the file equal the generator's ground truth.
  loaded = ann.load_annotations(synthetic_root.root / 'pyannot.pkl', synthetic_root.class_names)
  assert loaded == {p: r for p, r in synthetic_root.records.items() if r.tubes}
  assert len(tubes) == sum(len(r.tubes) for r in synthetic_root.records.values())


def test_videos_are_xvid_and_close_to_rendered(synthetic_root):
  path = sorted(synthetic_root.records)[0]
  frames, fourcc, fps = _decode(synthetic_root.root / 'UCF-101' / f'{path}.avi')
  # The AVI stream header names the codec (OpenCV itself reports FFmpeg's own tag).
  head = (synthetic_root.root / 'UCF-101' / f'{path}.avi').read_bytes()[:4096]
  assert head[:4] == b'RIFF' and head[8:12] == b'AVI '
  strh = head.index(b'strh')
  assert head[strh + 8 : strh + 12] == b'vids' and head[strh + 12 : strh + 16] == b'XVID'
  assert fourcc != 0
  assert fps == pytest.approx(25)
  rendered, _ = rendered_video(synthetic_root.spec, path)
  assert frames.shape == rendered.shape == (synthetic_root.records[path].num_frames, 240, 320, 3)
  err = np.abs(frames.astype(np.float64) - rendered.astype(np.float64)).mean()
  assert err < 8.0


def _single_actor_boxes_from_pixels(frames, rgb):
  """Independent box: extent of the pixels painted exactly in the actor's colour."""
  boxes = []
  for f in frames:
    ys, xs = np.nonzero(np.all(f == np.array(rgb, np.uint8), axis=-1))
    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
  return np.array(boxes, np.float64)


def test_boxes_follow_the_drawn_actor(synthetic_root):
  spec = synthetic_root.spec
  checked = 0
  for path, record in synthetic_root.records.items():
    if len(record.tubes) != 1:
      continue
    styles = synthetic.class_styles(spec.num_classes)
    ci = [s.name for s in styles].index(record.class_name)
    vi = videos.group_of(path) - 1
    plan = synthetic.plan_video(spec, ci, vi, True)
    if len(plan.actors) != 1:
      continue
    frames, _ = synthetic_video.render(plan)
    t = record.tubes[0]
    expected = _single_actor_boxes_from_pixels(frames[t.start : t.end], plan.actors[0].rgb)
    np.testing.assert_array_equal(t.boxes, expected)
    w = (t.boxes[:, 2] - t.boxes[:, 0]) / 320
    h = (t.boxes[:, 3] - t.boxes[:, 1]) / 240
    assert np.all(w * h > 0.02) and np.all(np.maximum(w, h) > 0.15)
    # The actor moves (or pulses): the box is not constant.
    assert np.ptp(t.boxes, axis=0).max() > 5
    checked += 1
  assert checked >= 3


def test_deterministic_from_seed(synthetic_root, tmp_path):
  spec = synthetic_root.spec
  again = synthetic.generate(tmp_path / 'a', spec)
  assert again.records == synthetic_root.records
  assert (tmp_path / 'a' / 'pyannot.pkl').read_bytes() == (
    synthetic_root.root / 'pyannot.pkl'
  ).read_bytes()
  path = sorted(synthetic_root.records)[0]
  first, _ = rendered_video(spec, path)
  other_seed = synthetic.SyntheticSpec(**{**spec.__dict__, 'seed': spec.seed + 1})
  assert not np.array_equal(first[:5], rendered_video(other_seed, path)[0][:5])
  with pytest.raises(FileExistsError):
    synthetic.generate(tmp_path / 'a', spec)


def test_classes_differ_in_shape_and_motion():
  styles = synthetic.class_styles(6)
  assert len({s.shape for s in styles}) == 6 and len({s.motion for s in styles}) == 6
  assert len({s.name for s in synthetic.class_styles(36)}) == 36
  with pytest.raises(ValueError, match='num_classes'):
    synthetic.SyntheticSpec(num_classes=37).check()


@pytest.fixture(scope='module')
def from_annotations(ucf24_dir, tmp_path_factory):
  """Two videos following the real pyannot.pkl, rendered by 2 spawned workers."""
  root = tmp_path_factory.mktemp('from_annotations') / 'r'
  return synthetic.generate_from_annotations(
    root, ucf24_dir / 'pyannot.pkl', max_videos=2, num_workers=2
  )


def test_from_real_annotations(ucf24_dir, from_annotations):
  ds, root = from_annotations, from_annotations.root
  with open(ucf24_dir / 'pyannot.pkl', 'rb') as f:
    real = pickle.load(f, encoding='latin1')
  with open(root / 'pyannot.pkl', 'rb') as f:
    sub = pickle.load(f, encoding='latin1')
  assert len(sub) == 2 and set(sub) == set(ds.records)
  for key, v in sub.items():
    assert type(v['numf']) is type(real[key]['numf'])
    np.testing.assert_array_equal(
      v['annotations'][0]['boxes'], real[key]['annotations'][0]['boxes']
    )
    frames, _, _ = _decode(root / 'UCF-101' / f'{key}.avi')
    assert len(frames) == int(real[key]['numf'])
  assert split_lists.read_class_index(root / 'ucfTrainTestlist' / 'classInd.txt') == (
    classes.UCF101_CLASSES
  )
  # UCF-101's own rule: split 1 tests on groups 1-7.
  train, test = ds.splits[1]
  assert all(videos.group_of(p) <= 7 for p in test)
  assert all(videos.group_of(p) > 7 for p in train)


def _tree(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_from_annotations_workers_write_what_one_process_writes(
  ucf24_dir, tmp_path, from_annotations
):
  single = synthetic.generate_from_annotations(
    tmp_path / 'one', ucf24_dir / 'pyannot.pkl', max_videos=2, num_workers=0
  )
  assert single.records == from_annotations.records
  parallel, alone = _tree(from_annotations.root), _tree(tmp_path / 'one')
  assert len(parallel) == 2 + 7 + 1 and parallel == alone


def test_from_annotations_videos_are_the_rendered_plans(from_annotations):
  # The generator draws through `render`, the one renderer of this module.
  path = sorted(from_annotations.records)[0]  # The first video draws the first seed.
  record = from_annotations.records[path]
  plan = synthetic_video.annotation_plan(record, int(np.random.default_rng(0).integers(2**31)))
  rendered, boxes = synthetic_video.render(plan)
  decoded, _, _ = _decode(from_annotations.root / 'UCF-101' / f'{path}.avi')
  assert decoded.shape == rendered.shape == (record.num_frames, 240, 320, 3)
  assert np.abs(decoded.astype(float) - rendered).mean() < 8.0
  t = record.tubes[0]
  np.testing.assert_array_equal(boxes[0][t.start : t.end], t.boxes)


def test_failed_generation_keeps_the_old_output(ucf24_dir, tmp_path, monkeypatch, from_annotations):
  out = tmp_path / 'out'
  shutil.copytree(from_annotations.root, out)
  before = _tree(out)
  calls = []

  def failing(task):
    calls.append(task)
    raise RuntimeError('disk full')

  monkeypatch.setattr(synthetic, '_write_planned_video', failing)
  with pytest.raises(RuntimeError, match='disk full'):
    synthetic.generate_from_annotations(
      out, ucf24_dir / 'pyannot.pkl', max_videos=2, overwrite=True, num_workers=0
    )
  assert calls and _tree(out) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


@pytest.mark.parametrize('problem', ['missing', 'junk', 'crafted'])
def test_cli_reports_a_bad_annotation_file_in_one_line(tmp_path, repo_root, problem):
  path = tmp_path / 'pyannot.pkl'
  marker = tmp_path / 'pwned'
  if problem == 'junk':
    path.write_bytes(b'<html>Moved Permanently</html>')
  elif problem == 'crafted':
    path.write_bytes(pickle.dumps(_Exploit(os.system, f'touch {marker}'), protocol=2))
  result = subprocess.run(
    [
      sys.executable,
      'tools/generate_synthetic.py',
      f'--output={tmp_path / "o"}',
      f'--from_annotations={path}',
      '--max_videos=1',
      '--num_workers=0',
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == errors.EXIT_USER_ERROR
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
  assert str(path) in result.stderr and 'Traceback' not in result.stderr
  expected = {
    'missing': 'not found',
    'junk': 'not a readable annotation pickle',
    'crafted': 'refusing to load',
  }[problem]
  assert expected in result.stderr
  assert not (tmp_path / 'o').exists() and not marker.exists()


def test_from_act_annotations_keeps_the_act_format(from_annotations, tmp_path):
  records = from_annotations.records
  act = tmp_path / 'UCF101v2-GT.pkl'
  ann.write_act(records.values(), act, classes.UCF24_CLASSES, [], [])
  ds = synthetic.generate_from_annotations(tmp_path / 'o', act, num_workers=0)
  assert ds.records == records
  assert not (tmp_path / 'o' / 'pyannot.pkl').exists()
  assert ann.load_annotations(tmp_path / 'o' / 'UCF101v2-GT.pkl') == records
  # The same geometry draws the same videos, whichever format it came in.
  assert _tree(tmp_path / 'o' / 'UCF-101') == _tree(from_annotations.root / 'UCF-101')


class _Exploit:
  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def test_cli_writes_the_layout_and_import_defines_no_flags(tmp_path, repo_root):
  from absl import flags

  assert 'output' not in flags.FLAGS  # importing the module left the names free
  out = tmp_path / 'cli'
  result = subprocess.run(
    [
      sys.executable,
      'tools/generate_synthetic.py',
      f'--output={out}',
      '--num_classes=2',
      '--annotated_classes=1',
      '--videos_per_class=2',
      '--min_frames=8',
      '--max_frames=10',
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'wrote 4 videos (2 annotated) of 2 classes' in result.stdout
  assert len(list((out / 'UCF-101').glob('*/*.avi'))) == 4
  assert (out / 'pyannot.pkl').exists() and (out / 'ucfTrainTestlist' / 'classInd.txt').exists()
