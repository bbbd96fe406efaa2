"""Action tubes on any video: load a trained detector (or a converted classifier), predict
videos into their JSON record and annotated copy, and the command line that does it.

The model on frames is `frame_predictor`, video files and drawing are `video_files`,
the JSON record is `prediction_record`. Videos are read from local files (OpenCV
decodes local files only); the workdir, the converted weights, the class names file and
the output folder may also be bucket URLs (gs://...). Output files are streamed to a
partial file that becomes the output whole when finished, so memory does not grow with
a video's length. Usage, settings and the JSON schema of the output: docs/predict.md. It
runs a little over 400 lines because loading, the per-video driver and the CLI share one
set of flags and errors; splitting them would pass those around without making either
clearer.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import signal
import sys
import time
from typing import Any
from collections.abc import Callable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import cv2
from etils import epath
import jax
import ml_collections
import numpy as np
import tqdm

from stconsist_jax.core import errors

from stconsist_jax.config import config_file
from stconsist_jax.evaluation import description
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.core import fileio
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.core import console
from stconsist_jax.prediction import prediction_record
from stconsist_jax.metrics import tubes as tubes_lib
from stconsist_jax.prediction import video_files

# Clip settings used with --init_from alone (no workdir): those of configs/default.py.
DEFAULT_DATA = dict(num_frames=16, frame_stride=1, frame_size=128, image_size=128)
MAX_TUBES = 10  # Tubes kept per video (JSON and drawing), best first; 0: all.


# ----------------------------------------------------------------------------------
# Models, class names and settings.


@dataclasses.dataclass
class Loaded:
  """A restored model ready to predict, with what the output records say about it."""

  predictor: frame_predictor.FramePredictor
  config: ml_collections.ConfigDict
  class_names: list[str]
  linking: Any  # tubes.LinkingConfig
  model_info: dict[str, Any]

  @property
  def classification_only(self) -> bool:
    return not self.predictor.with_boxes


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
  """Sets `a.b.c=value` entries (Python literals, else strings); missing groups are made."""
  for item in overrides:
    key, eq, text = item.partition('=')
    parts = key.strip().split('.')
    if not eq or not all(parts):
      raise ValueError(f'--override {item!r}: expected key.path=value')
    node = config
    for part in parts[:-1]:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f'--override {item!r}: {part!r} is not a config group')
    try:
      node[parts[-1]] = _parse_value(text)
    except (TypeError, ValueError) as e:
      raise ValueError(f'--override {item!r}: {e}') from None
  return config


def _data_settings(config: ml_collections.ConfigDict) -> None:
  for key in ('num_frames', 'frame_stride', 'frame_size', 'image_size'):
    value = config.data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'config key data.{key} must be a positive int, got {value!r}')


def generic_class_names(num_classes: int) -> list[str]:
  return [f'class_{i}' for i in range(num_classes)]


def class_names_for(
  config: ml_collections.ConfigDict | None,
  num_classes: int,
  names_file: str | os.PathLike | None = None,
) -> list[str]:
  """Class names: a file (one per line), the config's dataset, else `class_<i>`.

  The dataset's names are read only when it is reachable (its TFDS build exists) and
  has `num_classes` labels; anything else falls back to generic names with a warning.
  """
  if names_file:
    names = [
      line.strip() for line in fileio.as_path(names_file).read_text().splitlines() if line.strip()
    ]
    if len(names) != num_classes:
      raise ValueError(
        f'--class_names {names_file}: {len(names)} names for a model of {num_classes} classes'
      )
    return names
  data = config.get('data', None) if config is not None else None
  if data is None or data.get('name', 'random') in ('random', ''):
    return generic_class_names(num_classes)
  try:
    from stconsist_jax.data.pipeline import sources  # pylint: disable=g-import-not-at-top

    names = sources.label_names(data)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning(
      'Class names: dataset %r not readable (%s); using class_<i>',
      data.get('name'),
      ' '.join(str(e).split())[:200],
    )
    return generic_class_names(num_classes)
  if len(names) != num_classes:
    logging.warning(
      'Class names: the dataset has %d, the model %d classes; using class_<i>',
      len(names),
      num_classes,
    )
    return generic_class_names(num_classes)
  return [str(n) for n in names]


def load(
  workdir: str | os.PathLike | None = None,
  step: int | str = 'latest',
  *,
  init_from: str | os.PathLike | None = None,
  overrides: Sequence[str] = (),
  batch_size: int | None = None,
  names_file: str | os.PathLike | None = None,
  mesh: Any = None,
) -> Loaded:
  """Restores a trained detector of a workdir, or a converted classifier (`init_from`).

  With `init_from`, the classifier of that converted checkpoint predicts class scores
  only (no boxes, no tubes); clip settings come from the workdir's config if one is
  given, else DEFAULT_DATA. `overrides` ('key.path=value') change the config first.
  """
  if workdir is None and not init_from:
    raise ValueError(
      'give --workdir (a training workdir) or --init_from (a directory '
      'written by tools/convert_torch_weights.py)'
    )
  config = (
    config_file.load(workdir)
    if workdir is not None
    else ml_collections.ConfigDict({'data': dict(DEFAULT_DATA), 'model': {}, 'eval': {}})
  )
  apply_overrides(config, overrides)
  _data_settings(config)
  if init_from:
    from stconsist_jax import models  # pylint: disable=g-import-not-at-top

    model, variables = models.load_pretrained(str(init_from))
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    if 'classifier' not in variables['params']:
      raise ValueError(
        f'converted checkpoint {init_from} has no classifier (converted '
        'with --drop-classifier): it cannot score classes'
      )
    num_classes = int(model.num_classes)
    arch = ml_collections.ConfigDict(
      dict(model.backbone_kwargs, num_classes=num_classes, box_head='none')
    )
    info = {
      'source': 'init_from',
      'path': str(init_from),
      'step': restore_lib.INIT_FROM,
      'architecture': description.describe_model(arch),
      'classification_only': True,
      'num_classes': num_classes,
      'config_hash': None,
    }
    with_boxes = False
    names_config = (
      config
      if workdir is not None and int(config.model.get('num_classes', -1)) == num_classes
      else None
    )
  else:
    restored = restore_lib.restore(config, workdir, step)
    model, variables = restored.model, restored.variables
    num_classes = int(config.model.num_classes)
    with_boxes = not restored.classification_only
    info = {
      'source': 'workdir',
      'path': str(workdir),
      'step': restored.step,
      'architecture': description.describe_model(config.model),
      'classification_only': not with_boxes,
      'num_classes': num_classes,
      'config_hash': description.config_hash(config),
    }
    names_config = config
  if batch_size is None:
    batch_size = int(
      (config.get('eval', None) or {}).get('batch_size', frame_predictor.DEFAULT_BATCH_SIZE)
    )
  predictor = frame_predictor.FramePredictor.from_config(
    config, model, variables, batch_size=batch_size, with_boxes=with_boxes, mesh=mesh
  )
  names = class_names_for(names_config, num_classes, names_file)
  return Loaded(predictor, config, names, tubes_lib.linking_config(config), info)


# ----------------------------------------------------------------------------------
# One video, many videos.


@dataclasses.dataclass
class VideoResult:
  """What predicting one video produced."""

  name: str
  record: dict[str, Any]
  json_path: epath.Path
  video_path: epath.Path | None
  results: frame_predictor.FrameResults
  tubes: list[Any]


def predict_video(
  loaded: Loaded,
  video: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  name: str | None = None,
  every: int = 1,
  top_k: int = 5,
  max_tubes: int = MAX_TUBES,
  write_annotated: bool = True,
  progress: bool = True,
) -> VideoResult:
  """Predicts one video and writes OUT/<name>.json (and OUT/<name>.mp4).

  Args:
    loaded: the model (`load`).
    video: a local file OpenCV can read.
    out_dir: where the outputs go (created; local or a bucket URL).
    name: output file name without extension (default: the video's stem).
    every: predict every `every`-th frame and the last; interpolate in between.
    top_k: per frame, the k best classes in the JSON; 0: every class's score.
    max_tubes: keep the best `max_tubes` tubes (0: all) in the JSON and the drawing.
    write_annotated: also write the annotated video.
    progress: show a progress bar.

  Returns:
    The record (as written) and the arrays behind it.

  Raises:
    video_files.VideoError: (one line) the video cannot be read or holds no frame.
  """
  if every < 1:
    raise ValueError(f'--frame_stride must be >= 1, got {every}')
  if fileio.is_remote(video):
    raise video_files.VideoError(video_files.REMOTE_VIDEO)
  video = pathlib.Path(video)
  out_dir = fileio.as_path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)  # Fails before any decoding.
  video_files.remove_stale_partials(out_dir)
  name = name or video.stem
  json_path = out_dir / f'{name}.json'
  mp4_path = out_dir / f'{name}.mp4'
  if write_annotated and video_files.same_local_file(mp4_path, video):
    mp4_path = out_dir / f'{name}_pred.mp4'
  cap, info = video_files.open_video(video)
  shape = []
  bar = tqdm.tqdm(
    total=info.reported_frames or None,
    unit='frame',
    desc=name,
    disable=not progress,
    leave=False,
    dynamic_ncols=True,
  )

  def on_frame(frame):
    if not shape:
      shape.extend(frame.shape[:2])
    bar.update()

  start = time.perf_counter()
  try:
    detections = loaded.predictor.detect(
      video_files.read_frames(cap), every=every, bgr=True, on_frame=on_frame
    )
    if detections.num_frames == 0:
      raise video_files.VideoError('no decodable frames')
    results = frame_predictor.densify(detections)
    size = (int(shape[0]), int(shape[1]))
    found = frame_predictor.link_tubes(results, loaded.linking, size)
    tube_list = found[:max_tubes] if max_tubes > 0 else found
    predict_s = time.perf_counter() - start
    record = prediction_record.make_record(
      str(video),
      results,
      size,
      info.fps,
      loaded.class_names,
      found,
      tube_list,
      loaded.model_info,
      prediction_record.settings(loaded.predictor, loaded.linking, every, top_k, max_tubes),
      top_k,
    )
    write_s = 0.0
    written = None
    if write_annotated:
      bar.reset(total=results.num_frames)
      bar.set_description(f'{name} (writing)')
      t0 = time.perf_counter()
      video_files.write_video(
        video, mp4_path, results, tube_list, loaded.class_names, info.fps, on_frame=bar.update
      )
      written = mp4_path
      write_s = time.perf_counter() - t0
    record['timing'] = {
      'predict_s': round(predict_s, 3),
      'write_s': round(write_s, 3),
      'frames_per_s': round(results.num_frames / max(predict_s, 1e-9), 2),
    }
    prediction_record.validate_prediction(record)
    write_record(json_path, record)
  finally:
    bar.close()
  if info.reported_frames and info.reported_frames != results.num_frames:
    logging.info(
      '%s: the header states %d frames, %d were decoded',
      video,
      info.reported_frames,
      results.num_frames,
    )
  return VideoResult(name, record, json_path, written, results, tube_list)


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Writes the JSON record entry by entry to a partial file that becomes `path`."""
  with video_files.staged_output(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
    prediction_record.write(record, f)


def predict_each(
  loaded: Loaded,
  inputs: Sequence[pathlib.Path],
  out_dir: str | os.PathLike,
  *,
  report: Callable[[str], None] = print,
  **options: Any,
) -> Iterator[tuple[pathlib.Path, VideoResult | None, str | None]]:
  """`(video, result, None)` or `(video, None, reason)` for each video in turn.

  A video that fails is reported in one line and skipped; `options` go to
  `predict_video`. Nothing is kept from one video to the next.
  """
  for path, name in zip(inputs, video_files.output_names(list(inputs))):
    try:
      result = predict_video(loaded, path, out_dir, name=name, **options)
    except (video_files.VideoError, cv2.error, OSError) as e:
      reason = ' '.join(str(e).split()) or type(e).__name__
      report(f'skipped {path}: {reason}')
      yield path, None, reason
      continue
    timing = result.record['timing']
    top = result.record['top5'][0]
    report(
      f'{path}: {result.record["num_frames"]} frames in {timing["predict_s"]:.2f} s '
      f'({timing["frames_per_s"]:.1f} frames/s; writing {timing["write_s"]:.2f} s), '
      f'{len(result.tubes)} tubes, top class {top["class"]} {top["score"]:.3f} '
      f'-> {result.json_path}'
    )
    yield path, result, None


def predict_all(
  loaded: Loaded,
  inputs: Sequence[pathlib.Path],
  out_dir: str | os.PathLike,
  *,
  every: int = 1,
  top_k: int = 5,
  max_tubes: int = MAX_TUBES,
  write_annotated: bool = True,
  progress: bool = True,
  report: Callable[[str], None] = print,
) -> tuple[list[VideoResult], dict[str, str]]:
  """Predicts each video (`predict_each`) and keeps every result.

  Returns the results and {video: reason} of the videos skipped.
  """
  done, failed = [], {}
  for path, result, reason in predict_each(
    loaded,
    inputs,
    out_dir,
    report=report,
    every=every,
    top_k=top_k,
    max_tubes=max_tubes,
    write_annotated=write_annotated,
    progress=progress,
  ):
    if result is None:
      failed[str(path)] = reason
    else:
      done.append(result)
  return done, failed


# ----------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_string(
    'workdir', None, 'Training workdir (config.json + checkpoints); a path or a bucket URL.'
  )
  flags.DEFINE_string('video', None, 'A local video file, or a folder of videos.')
  flags.DEFINE_string(
    'output', None, 'Folder for <name>.json and <name>.mp4; a path or a bucket URL.'
  )
  flags.DEFINE_string('step', 'latest', "Checkpoint: 'latest', 'best' or a step number.")
  flags.DEFINE_string(
    'init_from',
    None,
    'A converted classifier (tools/convert_torch_weights.py): class scores only, no boxes.',
  )
  flags.DEFINE_integer(
    'frame_stride',
    1,
    'Predict every k-th frame (and the last); frames in between are interpolated.',
  )
  flags.DEFINE_integer(
    'batch_size',
    None,
    "Clips per batch (default: the config's "
    'eval.batch_size), rounded up to a multiple of the devices.',
  )
  flags.DEFINE_integer(
    'frame_top_k', 5, "Per frame, the k best classes in the JSON (0: every class's score)."
  )
  flags.DEFINE_integer(
    'max_tubes', MAX_TUBES, 'Keep the best k tubes per video in the JSON and the drawing (0: all).'
  )
  flags.DEFINE_multi_string(
    'override', [], 'Config change key.path=value, e.g. eval.tubes.iou_threshold=0.3 (repeatable).'
  )
  flags.DEFINE_string('class_names', None, 'Text file of class names, one per line.')
  flags.DEFINE_bool('write_video', True, 'Write the annotated <name>.mp4.')
  flags.DEFINE_bool('progress', True, 'Progress bars.')
  flags.DEFINE_bool('verbose', False, "OpenCV's and FFmpeg's own warnings (silenced by default).")
  flags.mark_flags_as_required(['video', 'output'])


def run(argv_flags: Any = None) -> int:
  """The CLI's work; returns the exit code (0 when at least one video was predicted)."""
  f = argv_flags or FLAGS
  if fileio.is_remote(f.video):
    print(f'error: --video {f.video} is {video_files.REMOTE_VIDEO}', file=sys.stderr)
    return 2
  out_dir = fileio.as_path(f.output)
  videos = video_files.list_videos(f.video, exclude=out_dir)
  if not videos:
    print(
      f'no videos in {f.video} (extensions {", ".join(video_files.VIDEO_EXTENSIONS)})',
      file=sys.stderr,
    )
    return 1
  if len(videos) == 1 and not videos[0].exists():
    print(f'skipped {videos[0]}: no such file', file=sys.stderr)
    return 1
  problem = output_problem(out_dir)
  if problem:
    print(f'error: --output {f.output}: {problem}', file=sys.stderr)
    return 2
  try:
    step = restore_lib.resolve_step(ml_collections.ConfigDict({'eval': {}}), f.step)
    loaded = load(
      f.workdir,
      step,
      init_from=f.init_from,
      overrides=f.override,
      batch_size=f.batch_size,
      names_file=f.class_names,
    )
  except errors.user_error_types() + (ValueError, NotADirectoryError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  p = loaded.predictor
  compile_s = p.warm_up()
  print(
    f'{loaded.model_info["architecture"]} ({loaded.model_info["source"]} step '
    f'{loaded.model_info["step"]}): clips of {p.num_frames} frames at '
    f'{p.image_size}px, batch {p.batch_size} on {p.num_devices} '
    f'{jax.devices()[0].platform} device(s), compiled in {compile_s:.1f} s; '
    f'{len(videos)} video(s)',
    flush=True,
  )
  start = time.perf_counter()
  done = failed = frames = 0
  predict_s = 0.0
  try:
    for _, result, _ in predict_each(
      loaded,
      videos,
      out_dir,
      every=f.frame_stride,
      top_k=f.frame_top_k,
      max_tubes=f.max_tubes,
      write_annotated=f.write_video,
      progress=f.progress,
      report=lambda line: print(line, flush=True),
    ):
      if result is None:
        failed += 1
        continue
      done += 1
      frames += result.record['num_frames']
      predict_s += result.record['timing']['predict_s']
  except ValueError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  print(
    f'predicted {done} of {len(videos)} video(s), {frames} frames, '
    f'{frames / max(predict_s, 1e-9):.1f} frames/s (decode + model + linking), '
    f'{time.perf_counter() - start:.1f} s in all; skipped {failed}'
  )
  return 0 if done else 1


def output_problem(out_dir: epath.Path) -> str | None:
  """Why the output folder cannot be used (one line), else None; creates it.

  Checked before the model is loaded or any video decoded.
  """
  if out_dir.exists() and not out_dir.is_dir():
    return 'a file is there, not a folder'
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    return e.strerror or ' '.join(str(e).split())
  if not fileio.is_remote(out_dir) and not os.access(out_dir, os.W_OK | os.X_OK):
    return 'permission denied'
  return None


def quiet_opencv(verbose: bool) -> None:
  """Silences OpenCV's and FFmpeg's own warnings (errors stay) unless `verbose`."""
  if verbose:
    return
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')  # Read when FFmpeg first opens.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
  del frame
  sys.exit(128 + signum)  # Unwinds, so that partial outputs are removed.


class _RoutineCheckpointLogs:
  """absl handler filter: drops orbax's records below ERROR (routine on every restore)."""

  def filter(self, record: Any) -> bool:
    error = logging.converter.ABSL_TO_STANDARD[logging.ERROR]
    return record.levelno >= error or '/orbax/' not in record.pathname


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    console.quiet_library_logs()  # before anything imports TensorFlow
  logging.get_absl_handler().addFilter(_RoutineCheckpointLogs())
  quiet_opencv(FLAGS.verbose)
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  sys.exit(run())


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Class names may load TFDS.
  define_flags()
  app.run(main)
