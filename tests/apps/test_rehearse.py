"""tools/rehearse.py: the full-evaluation counts from real annotations and the projection.

The counts are checked against a count written here from the raw pickle.
"""

import importlib.util
import pickle
import sys

import pytest


@pytest.fixture(scope='module')
def rehearse(repo_root):
  spec = importlib.util.spec_from_file_location('rehearse', repo_root / 'tools' / 'rehearse.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules['rehearse'] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_full_eval_counts_of_split_1(rehearse, ucf24_dir, tmp_path):
  manual = tmp_path / 'manual'
  (manual / 'ucfTrainTestlist').mkdir(parents=True)
  (manual / 'pyannot.pkl').symlink_to(ucf24_dir / 'pyannot.pkl')
  (manual / 'ucfTrainTestlist' / 'testlist01.txt').symlink_to(ucf24_dir / 'testlist01.txt')
  with open(ucf24_dir / 'pyannot.pkl', 'rb') as f:
    raw = pickle.load(f, encoding='latin1')  # the project's own data, trusted here
  test = [
    s.split()[0].rsplit('.', 1)[0]
    for s in (ucf24_dir / 'testlist01.txt').read_text().splitlines()
    if s.strip()
  ]
  frames = video_frames = 0
  for name in test:
    if name not in raw or not raw[name]['annotations']:
      continue
    marked = set()
    for tube in raw[name]['annotations']:
      marked.update(range(int(tube['sf']), int(tube['ef'])))
    frames += len(marked)
    video_frames += int(raw[name]['numf'])
  got = rehearse.full_eval_passes(manual, clips_per_video=10)
  assert got == {
    'videos': len(test),
    'clips': 10 * len(test),
    'frames': frames,
    'video_clips': video_frames,
  }
  assert (got['videos'], got['frames']) == (910, 138527)
  # A tubelet head (K 16 every 8 frames): starts 0, 8, ... <= n - 16, plus n - 16 itself.
  lengths = [int(raw[n]['numf']) for n in test if n in raw and raw[n]['annotations']]
  starts = [set(range(0, max(n - 16, 0) + 1, 8)) | {max(n - 16, 0)} for n in lengths]
  tubelet = rehearse.full_eval_passes(manual, clips_per_video=10, tubelet=(16, 8))
  assert tubelet == dict(got, tubelet_clips=sum(len(s) for s in starts))


def test_projection_scales_each_pass_by_its_clip_count(rehearse):
  report = {
    'timing': {'clips_seconds': 4.0, 'frames_seconds': 10.0, 'videos_seconds': 2.0},
    'counts': {'num_clips': 40, 'num_frames_scored': 100, 'num_video_clips_scored': 50},
  }
  full = {'clips': 400, 'frames': 1000, 'video_clips': 5000}
  assert rehearse.project_full_eval(report, full) == pytest.approx(40 + 100 + 200)
  assert rehearse.project_full_eval({'timing': {}, 'counts': {}}, full) is None
  tubelets = {
    'timing': {'clips_seconds': 4.0, 'tubelets_seconds': 5.0},
    'counts': {'num_clips': 40, 'num_video_clips_scored': 50},
    'tubes': {'tubelet_frames': 16, 'clip_every': 8},
  }
  assert rehearse.tubelet_setting(tubelets) == (16, 8) and rehearse.tubelet_setting(report) is None
  full['tubelet_clips'] = 700
  assert rehearse.project_full_eval(tubelets, full) == pytest.approx(40 + 70)
