"""A user's own videos, synthetic: .mp4 files of mixed sizes and lengths with actors of a few
classes, and their annotations as CVAT's "CVAT for video 1.1" export and as the plain CSV.

The ground truth (`AnnotatedVideo`s, exact pixel boxes of the drawn actors) is returned;
the files are what `tools/build_dataset.py --format=cvat|csv` reads (docs/own_videos.md).
"""

from __future__ import annotations

import dataclasses
import pathlib
import xml.sax.saxutils
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.synthetic import synthetic_video as video_lib

FPS = 25
FOURCC = 'mp4v'


@dataclasses.dataclass(frozen=True)
class OwnVideo:
  """One video to draw: its name, frame size, length and actors `(class, start, end)`."""

  name: str
  width: int
  height: int
  num_frames: int
  actors: tuple[tuple[int, int, int], ...]


# Two frame sizes, three lengths, one video with two actors of different classes, one
# actor that leaves before the end.
DEFAULT_VIDEOS = (
  OwnVideo('garden_01', 96, 64, 14, ((0, 0, 14),)),
  OwnVideo('garden_02', 64, 80, 12, ((1, 0, 12),)),
  OwnVideo('yard_01', 96, 64, 16, ((1, 2, 16), (0, 0, 10))),
  OwnVideo('yard_02', 64, 80, 12, ((0, 0, 12),)),
)
DEFAULT_CLASSES = ('wave', 'jump')


def _actor(label: int, k: int, start: int, end: int) -> video_lib.Actor:
  """The actor of class `label` (its shape and motion); `k` varies its place and phase."""
  shape = video_lib.SHAPES[label % len(video_lib.SHAPES)]
  motion = video_lib.MOTIONS[label % len(video_lib.MOTIONS)]
  hue = (40 + 70 * label) % 180
  return video_lib.Actor(
    shape=shape,
    motion=motion,
    rgb=video_lib.hsv_to_rgb(hue, 220, 235),
    r=9.0,
    phase=0.3 * k,
    period=16.0,
    anchor=(0.3 + 0.4 * (k % 2), 0.35 + 0.3 * (k % 2)),
    angle=0.0,
    start=start,
    end=end,
  )


def render(video: OwnVideo, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
  """RGB frames (n, H, W, 3) and each actor's exact boxes (n, 4), NaN where absent."""
  actors = tuple(_actor(c, k, s, e) for k, (c, s, e) in enumerate(video.actors))
  plan = video_lib.VideoPlan(
    video.name,
    video.num_frames,
    actors,
    tuple((s, e) for _, s, e in video.actors),
    scroll=(1.0, 0.0),
    bg_seed=seed,
  )
  return video_lib.render(plan, (video.height, video.width))


def write_mp4(frames_rgb: np.ndarray, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  h, w = frames_rgb.shape[1:3]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), FPS, (w, h))
  if not writer.isOpened():
    raise RuntimeError(f'OpenCV cannot write {FOURCC} video {path} (no codec?)')
  for frame in frames_rgb:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()


def truth_of(video: OwnVideo, boxes: Sequence[np.ndarray]) -> records_lib.AnnotatedVideo:
  """The video with one tube per actor: its drawn boxes on its frames."""
  tubes = tuple(
    records_lib.AnnotatedTube(c, s, e, boxes[k][s:e]) for k, (c, s, e) in enumerate(video.actors)
  )
  return records_lib.AnnotatedVideo(video.name, video.width, video.height, video.num_frames, tubes)


def _box_xml(frame: int, box: Sequence[float], outside: int, keyframe: int) -> str:
  x1, y1, x2, y2 = (f'{float(v):.2f}' for v in box)
  return (
    f'      <box frame="{frame}" keyframe="{keyframe}" outside="{outside}" occluded="0" '
    f'xtl="{x1}" ytl="{y1}" xbr="{x2}" ybr="{y2}" z_order="0">\n      </box>\n'
  )


def cvat_xml(video: records_lib.AnnotatedVideo, class_names: Sequence[str]) -> str:
  """The video's tubes as CVAT writes a "CVAT for video 1.1" export of a task.

  Every frame of a track is written (CVAT's exports do), the first a keyframe, and a
  track that ends before the video does ends with an `outside` box.
  """
  esc = xml.sax.saxutils.escape
  labels = ''.join(
    f'        <label>\n          <name>{esc(c)}</name>\n          <type>rectangle</type>\n'
    '          <attributes>\n          </attributes>\n        </label>\n'
    for c in class_names
  )
  tracks = []
  for k, t in enumerate(video.tubes):
    rows = [_box_xml(t.start + i, b, 0, int(i == 0)) for i, b in enumerate(t.boxes)]
    if t.end < video.num_frames:
      rows.append(_box_xml(t.end, t.boxes[-1], 1, 1))
    label = esc(class_names[t.label])
    tracks.append(
      f'  <track id="{k}" label="{label}" source="manual">\n' + ''.join(rows) + '  </track>\n'
    )
  return (
    '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
    '  <meta>\n    <task>\n      <id>1</id>\n'
    f'      <name>{esc(video.name)}</name>\n      <size>{video.num_frames}</size>\n'
    '      <mode>interpolation</mode>\n      <overlap>5</overlap>\n'
    '      <start_frame>0</start_frame>\n'
    f'      <stop_frame>{video.num_frames - 1}</stop_frame>\n'
    f'      <labels>\n{labels}      </labels>\n'
    f'      <original_size>\n        <width>{video.width}</width>\n'
    f'        <height>{video.height}</height>\n      </original_size>\n'
    f'      <source>{esc(video.name)}.mp4</source>\n    </task>\n'
    '    <dumped>2024-01-01 00:00:00.000000+00:00</dumped>\n  </meta>\n'
    + ''.join(tracks)
    + '</annotations>\n'
  )


def csv_text(videos: Mapping[str, records_lib.AnnotatedVideo], class_names: Sequence[str]) -> str:
  """The tubes as the plain CSV: `video,frame,actor_id,label,x1,y1,x2,y2`, 0-based, pixels."""
  lines = ['video,frame,actor_id,label,x1,y1,x2,y2']
  for name, video in sorted(videos.items()):
    for k, t in enumerate(video.tubes):
      for i, b in enumerate(t.boxes):
        x1, y1, x2, y2 = (f'{float(v):.2f}' for v in b)
        lines.append(f'{name}.mp4,{t.start + i},{k},{class_names[t.label]},{x1},{y1},{x2},{y2}')
  return '\n'.join(lines) + '\n'


def generate(
  output_dir: str | pathlib.Path,
  videos: Sequence[OwnVideo] = DEFAULT_VIDEOS,
  class_names: Sequence[str] = DEFAULT_CLASSES,
  seed: int = 0,
) -> dict[str, records_lib.AnnotatedVideo]:
  """Writes `videos/<name>.mp4`, `cvat/<name>.xml` (one export per video) and `boxes.csv`.

  Returns the ground truth: each video's tubes as drawn (`AnnotatedVideo`s). Boxes are
  written with 2 decimals, so a reader gets them back to 0.005 pixels.
  """
  root = pathlib.Path(output_dir)
  truth = {}
  for i, video in enumerate(videos):
    frames, boxes = render(video, seed + i)
    write_mp4(frames, root / 'videos' / f'{video.name}.mp4')
    truth[video.name] = truth_of(video, boxes)
    xml_file = root / 'cvat' / f'{video.name}.xml'
    xml_file.parent.mkdir(parents=True, exist_ok=True)
    xml_file.write_text(cvat_xml(truth[video.name], class_names), encoding='utf-8')
  (root / 'boxes.csv').write_text(csv_text(truth, class_names), encoding='utf-8')
  return truth
