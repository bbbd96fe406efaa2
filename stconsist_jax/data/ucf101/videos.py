"""What UCF-101 fixes for every video: its path `Class/v_Class_gGG_cCC` (class, group and
extension of a path) and its frame size.
"""

from __future__ import annotations

UCF101_FRAME_SIZE = (240, 320)  # (height, width) of every UCF-101 video.


def class_of(path: str) -> str:
  """`Class/v_Class_gGG_cCC[.avi]` -> `Class`."""
  head, sep, _ = path.partition('/')
  if not sep:
    raise ValueError(f"video path {path!r} is not of the form 'Class/v_Class_gGG_cCC'")
  return head


def strip_extension(path: str) -> str:
  return path[:-4] if path.endswith('.avi') else path


def group_of(path: str) -> int:
  """`.../v_Class_g07_c03` -> 7 (the UCF-101 group: same actor and scene)."""
  stem = strip_extension(path).rsplit('/', 1)[-1]
  parts = stem.split('_')
  if len(parts) < 4 or not parts[-2].startswith('g'):
    raise ValueError(f"video name {stem!r} is not of the form 'v_Class_gGG_cCC'")
  return int(parts[-2][1:])
