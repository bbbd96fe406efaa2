"""Tests of the label protocols: nested kept sets, the same on every host, shipped lists.

The shipped 10% / 20% lists of UCF101-24 split 1 are regenerated here from the real
split list beside the project and must match the files byte for byte.
"""

import subprocess
import sys

import pytest
import tensorflow as tf

from stconsist_jax.data.pipeline import label_protocols

NAMES = [
  f'Class{c}/v_Class{c}_g{g:02d}_c{k:02d}'
  for c in range(5)
  for g in range(8, 26)
  for k in range(1, 5)
]


def test_kept_sets_are_nested_as_the_fraction_grows():
  previous = set()
  for fraction in (0.0, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0):
    kept = set(label_protocols.kept_names(NAMES, 3, fraction))
    assert previous <= kept
    previous = kept
  assert not label_protocols.kept_names(NAMES, 3, 0.0)
  assert label_protocols.kept_names(NAMES, 3, 1.0) == NAMES


def test_kept_share_is_close_to_the_fraction_and_depends_on_seed_and_purpose():
  for fraction in (0.1, 0.2, 0.5):
    share = len(label_protocols.kept_names(NAMES, 0, fraction)) / len(NAMES)
    # 360 names: a binomial share's standard deviation is at most 0.027.
    assert abs(share - fraction) < 0.08
  assert label_protocols.kept_names(NAMES, 0, 0.2) != label_protocols.kept_names(NAMES, 1, 0.2)
  assert label_protocols.kept_names(
    NAMES, 0, 0.2, label_protocols.VIDEO_LABEL
  ) != label_protocols.kept_names(NAMES, 0, 0.2, label_protocols.BOX_LABEL)


def test_in_graph_and_eager_selection_agree():
  ds = tf.data.Dataset.from_tensor_slices(NAMES).map(
    lambda name: label_protocols.kept(name, 7, 0.3, label_protocols.VIDEO_LABEL)
  )
  in_graph = [name for name, keep in zip(NAMES, ds.as_numpy_iterator()) if keep]
  assert in_graph == label_protocols.kept_names(NAMES, 7, 0.3)


def test_another_process_keeps_the_same_videos():
  """A host or a restart is a new process (another PYTHONHASHSEED): same set."""
  code = (
    'from stconsist_jax.data.pipeline import label_protocols as lp; import json, sys; '
    'names = json.load(sys.stdin); '
    'print(json.dumps(lp.kept_names(names, 11, 0.25)))'
  )
  import json  # pylint: disable=g-import-not-at-top

  out = subprocess.run(
    [sys.executable, '-c', code],
    input=json.dumps(NAMES),
    capture_output=True,
    text=True,
    check=True,
    env={'PYTHONHASHSEED': '123', 'TF_CPP_MIN_LOG_LEVEL': '3', 'PATH': '/usr/bin:/bin'},
  )
  assert json.loads(out.stdout.strip().splitlines()[-1]) == label_protocols.kept_names(
    NAMES, 11, 0.25
  )


def test_lowest_share_is_exact_and_nested():
  previous = []
  for fraction in (0.0, 0.1, 0.2, 0.5, 1.0):
    share = label_protocols.lowest_share(NAMES, 5, fraction)
    assert len(share) == round(fraction * len(NAMES))
    assert set(previous) <= set(share)
    assert share == [n for n in NAMES if n in set(share)]  # In the list's order.
    previous = share


def test_fraction_out_of_range_is_refused():
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    label_protocols.kept_names(NAMES, 0, 1.5)


@pytest.mark.parametrize('percent', [10, 20])
def test_shipped_lists_are_the_protocol_on_the_real_split(ucf24_dir, repo_root, percent):
  names = label_protocols.read_video_list(ucf24_dir / 'trainlist01.txt')
  assert len(names) == 2290
  shipped = repo_root / 'data' / 'label_lists' / f'ucf24_split1_labeled_{percent}.txt'
  expected = label_protocols.lowest_share(names, 0, percent / 100)
  assert len(expected) == round(2290 * percent / 100)
  assert label_protocols.read_video_list(shipped) == expected
  assert shipped.read_text() == ''.join(f'{n}\n' for n in expected)
  small = label_protocols.read_video_list(
    repo_root / 'data' / 'label_lists' / 'ucf24_split1_labeled_10.txt'
  )
  assert set(small) <= set(expected)
