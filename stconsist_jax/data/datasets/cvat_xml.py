"""CVAT's "CVAT for video 1.1" XML: one task (a video) per file, its tracks' boxes read as
CVAT reads them (linear between written frames, `outside` ends a span), and validated.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence

import numpy as np

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.datasets import description as description_lib
from stconsist_jax.data.datasets import read_report
from stconsist_jax.data.datasets import safe_xml
from stconsist_jax.data.datasets import tracks

PathLike = str | os.PathLike

EXPECTED = "expected a task or job exported as 'CVAT for video 1.1'"
NAME_SOURCES = ('task', 'source', 'file')
_SHAPES = ('polygon', 'polyline', 'points', 'cuboid', 'ellipse', 'mask', 'skeleton')


@dataclasses.dataclass(frozen=True)
class _Box:
  """One <box> of a track as written."""

  frame: int
  outside: bool
  occluded: bool
  corners: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class _Meta:
  """What a file's <meta> says of its video."""

  task_name: str | None
  source_name: str | None
  width: int | None
  height: int | None
  num_frames: int | None  # stop_frame + 1, or size
  labels: tuple[str, ...]


def _text(element: ET.Element | None, path: str) -> str | None:
  found = element.find(path) if element is not None else None
  return found.text.strip() if found is not None and found.text and found.text.strip() else None


def _int(element: ET.Element | None, path: str, source: str) -> int | None:
  text = _text(element, path)
  if text is None:
    return None
  try:
    return int(text)
  except ValueError:
    raise records_lib.DataFileError(f'{source}: <{path}> is {text!r}, not a whole number') from None


def _meta(root: ET.Element, source: str) -> _Meta:
  meta = root.find('meta')
  tasks = [] if meta is None else meta.findall('task') + meta.findall('job')
  if meta is not None and meta.find('project') is not None:
    tasks = meta.findall('project/tasks/task')
    if len(tasks) != 1:
      raise records_lib.DataFileError(
        f'{source} is a project export of {len(tasks)} tasks; export each task (one video) '
        "as 'CVAT for video 1.1' and read the folder of their files"
      )
  task = tasks[0] if tasks else None
  stop = _int(task, 'stop_frame', source)
  size = _int(task, 'size', source)
  labels = []
  for label in [] if meta is None else meta.iter('label'):
    name = _text(label, 'name')
    if name is not None and _text(label, 'parent') is None and name not in labels:
      labels.append(name)  # Skeleton points are labels with a <parent>: not classes.
  source_name = _text(task, 'source')
  return _Meta(
    task_name=_text(task, 'name'),
    source_name=pathlib.PurePath(source_name).stem if source_name else None,
    width=_int(meta, './/original_size/width', source),
    height=_int(meta, './/original_size/height', source),
    num_frames=stop + 1 if stop is not None else size,
    labels=tuple(labels),
  )


def _video_name(meta: _Meta, path: pathlib.Path, name_from: str) -> str:
  if name_from == 'source':
    if meta.source_name is None:
      raise records_lib.DataFileError(
        f"{path}: no <source> (the video's file name) in <meta>; read it with "
        "name_from='task' or 'file'"
      )
    return meta.source_name
  if name_from == 'task' and meta.task_name is not None:
    return meta.task_name
  # CVAT's zip holds `annotations.xml`: the folder it was unpacked to names the video.
  return path.parent.name if path.stem == 'annotations' else path.stem


def _video_info(
  meta: _Meta, name: str, video_info: Mapping[str, Sequence[int]] | None, source: str
) -> tracks.VideoInfo:
  given = (video_info or {}).get(name)
  if given is not None:
    width, height, num_frames = (int(v) for v in given)
    if (meta.width, meta.height) not in ((None, None), (width, height)):
      raise records_lib.DataFileError(
        f'{source}: annotated on {meta.width}x{meta.height} frames, but video {name!r} is '
        f'{width}x{height}: is it the video that was annotated?'
      )
    return tracks.VideoInfo(width, height, num_frames)
  if meta.width is None or meta.height is None or not meta.num_frames:
    raise records_lib.DataFileError(
      f'{source}: <meta> gives no <original_size> or <size> of video {name!r}, and no '
      f'video_info does; {EXPECTED}'
    )
  return tracks.VideoInfo(meta.width, meta.height, meta.num_frames)


def _flag(value: str | None) -> bool | None:
  return {None: False, '0': False, '1': True, 'false': False, 'true': True}.get(
    value.lower() if value else value
  )


def _read_box(element: ET.Element) -> _Box | str:
  """A written <box>, or why it cannot be read."""
  a = element.attrib
  try:
    frame = int(a['frame'])
    corners = tuple(float(a[k]) for k in ('xtl', 'ytl', 'xbr', 'ybr'))
  except KeyError as e:
    return f'a <box> without its {e.args[0]!r} attribute'
  except ValueError:
    return f'a <box> with a frame or corner that is not a number: {dict(a)}'
  outside, occluded = _flag(a.get('outside')), _flag(a.get('occluded'))
  if outside is None or occluded is None:
    return f'a <box> with outside={a.get("outside")!r} occluded={a.get("occluded")!r}, not 0/1'
  return _Box(frame, outside, occluded, corners)  # type: ignore[arg-type]


def _written_boxes(
  track: ET.Element,
  where: str,
  num_frames: int,
  report: read_report.ReadReport,
) -> list[_Box]:
  """A track's readable boxes, one per frame, in frame order.

  Visible boxes past the video's end are bad records; outside ones are kept (CVAT ends a
  track on the last frame with an outside box on the frame after it).
  """
  boxes: dict[int, _Box] = {}
  for element in track:
    if element.tag in _SHAPES:
      report.bad(
        'unsupported_shape',
        f'{where} frame {element.get("frame")}: a <{element.tag}>; only <box> tracks are read',
      )
      continue
    if element.tag != 'box':
      continue
    box = _read_box(element)
    if isinstance(box, str):
      report.bad('malformed_record', f'{where} frame {element.get("frame")}: {box}')
    elif box.frame in boxes:
      report.bad('duplicate_actor_box', f'{where} frame {box.frame}: a second box of this track')
    elif box.frame < 0:
      report.bad('frame_before_video_start', f'{where} frame {box.frame}: a negative frame')
    elif box.frame >= num_frames and not box.outside:
      report.bad(
        'frame_past_video_end',
        f'{where} frame {box.frame}: past the end of the video ({num_frames} frames)',
      )
    else:
      boxes[box.frame] = box
  return [boxes[f] for f in sorted(boxes)]


def _visible_boxes(
  written: Sequence[_Box], last_frame: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int | None] | None], dict[str, int]]:
  """A track's box on each frame it is visible on, as CVAT interpolates them.

  Between two written boxes, the frames in between get the linear interpolation of the
  two, unless the first is `outside` (the object is gone until the next box). After the
  last written box, unless it is outside, its box stays to `last_frame`. Outside boxes
  themselves are not visible. (CVAT's TrackManager.get_interpolated_shapes; CVAT's own
  exports write every frame, so interpolation fills only files written with keyframes.)

  Returns:
    (frames (n,), boxes (n, 4), where each box comes from: None (written), (a, b)
    (interpolated between the boxes of frames a and b) or (a, None) (propagated from
    frame a), counts of interpolated and propagated boxes).
  """
  frames, boxes, origin = [], [], []
  counts = {'boxes_interpolated': 0, 'boxes_propagated': 0}
  for box, after in zip(written, [*written[1:], None]):
    if box.outside or box.frame > last_frame:
      continue
    frames.append(box.frame)
    boxes.append(box.corners)
    origin.append(None)
    b0 = np.asarray(box.corners)
    if after is not None:
      b1, stop, how = np.asarray(after.corners), after.frame, 'boxes_interpolated'
    else:
      b1, stop, how = b0, last_frame + 1, 'boxes_propagated'
    for f in range(box.frame + 1, min(stop, last_frame + 1)):
      frames.append(f)
      boxes.append(b0 + (b1 - b0) * (f - box.frame) / (stop - box.frame))
      origin.append((box.frame, None if after is None else after.frame))
      counts[how] += 1
  return np.array(frames, np.int64), np.array(boxes, np.float64).reshape(-1, 4), origin, counts


def _origin_text(origin: tuple[int, int | None] | None) -> str:
  if origin is None:
    return ''
  if origin[1] is None:
    return f' (propagated from frame {origin[0]})'
  return f' (interpolated between frames {origin[0]} and {origin[1]})'


def read_cvat_file(
  path: PathLike,
  class_names: Sequence[str] | None = None,
  video_info: Mapping[str, Sequence[int]] | None = None,
  name_from: str = 'task',
) -> tuple[tuple[str, ...], records_lib.AnnotatedVideo, read_report.ReadReport]:
  """Reads one "CVAT for video 1.1" file (one task or job: one video).

  Args:
    path: the XML file.
    class_names: the dataset's classes; None: the labels the file's <meta> lists, in
      its order. Tracks of other labels are bad records (`unknown_label`).
    video_info: video name -> (width, height, frames), e.g. probed from the video files;
      by default the file's <original_size> and <stop_frame> + 1 (or <size>).
    name_from: the video's name: the task's <name> ('task'; the file's name for a job),
      the uploaded video's <source> file name without extension ('source'), or the XML
      file's name without extension ('file'; the folder's name for `annotations.xml`).

  Returns:
    (class names, the video with its tubes, the report of what was skipped or changed).

  Raises:
    FileNotFoundError: no file at `path`.
    UnsafeXmlError: the file declares a DOCTYPE or entities.
    DataFileError: the file is not a "CVAT for video" export or gives no frame size.
  """
  if name_from not in NAME_SOURCES:
    raise ValueError(f'name_from must be one of {NAME_SOURCES}, got {name_from!r}')
  path = pathlib.Path(path)
  source = os.fspath(path)
  root = safe_xml.read(path, EXPECTED)
  if root.tag != 'annotations':
    raise records_lib.DataFileError(f'{source}: the root element is <{root.tag}>; {EXPECTED}')
  if root.find('image') is not None:
    raise records_lib.DataFileError(
      f"{source} is a 'CVAT for images' export (it has <image> elements); {EXPECTED}"
    )
  meta = _meta(root, source)
  name = _video_name(meta, path, name_from)
  info = _video_info(meta, name, video_info, source)
  if class_names is None:  # A file written by hand may list no labels in <meta>.
    class_names = meta.labels or tuple(dict.fromkeys(t.get('label') for t in root.findall('track')))
  class_names = tuple(class_names)
  index = {c: i for i, c in enumerate(class_names)}
  report = read_report.ReadReport()
  tubes = []
  for track in root.findall('track'):
    where = f'{source}: video {name!r} track {track.get("id")}'
    written = _written_boxes(track, where, info.num_frames, report)
    label = track.get('label')
    if label not in index:
      if written:
        report.bad(
          'unknown_label',
          f'{where} frame {written[0].frame}: label {label!r} is not one of the '
          f'{len(class_names)} classes (its {len(written)} boxes skipped)',
        )
      continue
    report.note('occluded_boxes', sum(b.occluded and not b.outside for b in written))
    frames, boxes, origin, counts = _visible_boxes(written, info.num_frames - 1)
    for kind, n in counts.items():
      report.note(kind, n)
    tubes += tracks.tubes_from_track(
      frames,
      boxes,
      index[label],
      info,
      report,
      lambda i, frames=frames, origin=origin, where=where: (
        f'{where} frame {frames[i]}{_origin_text(origin[i])}'
      ),
    )
  video = records_lib.AnnotatedVideo(name, *info, tuple(tubes))
  return class_names, video, report


def xml_files(path: PathLike) -> list[pathlib.Path]:
  """`path` itself, or the .xml files under the folder `path` (recursively, sorted)."""
  path = pathlib.Path(path)
  if path.is_dir():
    found = sorted(p for p in path.rglob('*.xml') if p.is_file())
    if not found:
      raise FileNotFoundError(f'no .xml files under {path}: {EXPECTED}, one file per video')
    return found
  if not path.exists():
    raise FileNotFoundError(f'annotation file {path} not found: {EXPECTED}')
  return [path]


def _relabeled(
  video: records_lib.AnnotatedVideo, file_classes: Sequence[str], class_names: Sequence[str]
) -> records_lib.AnnotatedVideo:
  """A video's tubes with labels of `class_names` for labels of its file's `file_classes`."""
  tubes = tuple(
    dataclasses.replace(t, label=class_names.index(file_classes[t.label])) for t in video.tubes
  )
  return dataclasses.replace(video, tubes=tubes)


def read_cvat(
  path: PathLike,
  class_names: Sequence[str] | None = None,
  video_info: Mapping[str, Sequence[int]] | None = None,
  name_from: str = 'task',
) -> description_lib.ReadAnnotations:
  """Reads a "CVAT for video 1.1" file, or a folder of them (one per video).

  Class names, when not given, are the labels the files list, in order of first
  appearance over the files in name order. Arguments as `read_cvat_file`.

  Raises:
    DataFileError: as `read_cvat_file`, or two files annotate the same video.
  """
  files = xml_files(path)
  read = [read_cvat_file(f, class_names, video_info, name_from) for f in files]
  if class_names is None:
    class_names = []
    for file_classes, _, _ in read:
      class_names += [c for c in file_classes if c not in class_names]
    read = [(fc, _relabeled(video, fc, class_names), r) for fc, video, r in read]
  report = read_report.ReadReport()
  videos: dict[str, records_lib.AnnotatedVideo] = {}
  first_file: dict[str, pathlib.Path] = {}
  for f, (_, video, file_report) in zip(files, read):
    if video.name in videos:
      raise records_lib.DataFileError(
        f'{first_file[video.name]} and {f} both annotate video {video.name!r}: export the '
        "whole task, or name the videos apart (name_from='file' or 'source')"
      )
    videos[video.name], first_file[video.name] = video, f
    report.merge(file_report)
  return description_lib.ReadAnnotations(tuple(class_names), videos, report)
