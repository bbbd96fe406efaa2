"""The class-name tables against independent references: UCF101-24's own `classes.txt` and
UCF-101's `classInd.txt` (its count and first and last entries, written out here).
"""

import fnmatch
import pathlib

import pytest

from stconsist_jax.data.ucf101 import classes


def test_ucf24_classes_are_the_real_classes_txt(ucf24_dir):
  listed = (ucf24_dir / 'classes.txt').read_text().split()
  assert classes.UCF24_CLASSES == tuple(listed)


def test_ucf101_classes_are_class_ind_in_order():
  # ucfTrainTestlist/classInd.txt of UCF-101: '1 ApplyEyeMakeup', '2 ApplyLipstick',
  # '3 Archery', ..., '99 WallPushups', '100 WritingOnBoard', '101 YoYo'.
  names = classes.UCF101_CLASSES
  assert isinstance(names, tuple) and len(names) == len(set(names)) == 101
  assert names[:3] == ('ApplyEyeMakeup', 'ApplyLipstick', 'Archery')
  assert names[-3:] == ('WallPushups', 'WritingOnBoard', 'YoYo')
  assert set(classes.UCF24_CLASSES) <= set(names)


def test_class_files_are_installed_with_the_package(repo_root):
  tomllib = pytest.importorskip('tomllib')
  config = tomllib.loads((repo_root / 'pyproject.toml').read_text())
  patterns = config['tool']['setuptools']['package-data']['stconsist_jax.data.ucf101']
  folder = pathlib.Path(classes.__file__).parent
  for name in ('ucf101_classes.txt', 'ucf101_24_classes.txt'):
    assert (folder / name).is_file()
    assert any(fnmatch.fnmatch(name, p) for p in patterns), name
