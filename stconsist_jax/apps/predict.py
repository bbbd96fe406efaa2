"""The prediction command: action tubes on a video file or a folder of them, into each
video's JSON record and annotated copy, or online on a stream, a JSON line per frame
(usage and the JSON schemas: docs/predict.md).

  python -m stconsist_jax.apps.predict --workdir=W --video=PATH_OR_DIR --output=OUT
  python -m stconsist_jax.apps.predict --model=EXPORT_DIR --video=PATH_OR_DIR --output=OUT
  python -m stconsist_jax.apps.predict --model=EXPORT_DIR --stream=0 [--output=LINES.jsonl]

With --model (an ONNX export, tools/export.py) it needs onnxruntime, OpenCV and numpy, and
imports no JAX, Flax, orbax or TensorFlow: the checkpoint's modules load only for
--workdir and --init_from.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath

from stconsist_jax.core import allocator
from stconsist_jax.core import console
from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.prediction import predict
from stconsist_jax.prediction import stream
from stconsist_jax.prediction import video_files

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_string(
    'workdir', None, 'Training workdir (config.json + checkpoints); a path or a bucket URL.'
  )
  flags.DEFINE_string(
    'model',
    None,
    'An ONNX export (tools/export.py --format=onnx): its folder, model.onnx or metadata.json. '
    'Runs with onnxruntime instead of a checkpoint; no JAX needed.',
  )
  flags.DEFINE_string('video', None, 'A local video file, or a folder of videos.')
  flags.DEFINE_string(
    'stream',
    None,
    "Online mode: a camera index (0), a URL or file OpenCV opens, or '-' for raw RGB frames "
    'on stdin (--stream_size). A JSON line per frame, from the clip of the last T frames.',
  )
  flags.DEFINE_string(
    'output',
    None,
    'With --video: folder for <name>.json and <name>.mp4 (a path or a bucket URL). With '
    "--stream: the file of JSON lines (default '-': stdout).",
  )
  flags.DEFINE_string('stream_size', None, "--stream=-: the frames' HEIGHTxWIDTH, e.g. 240x320.")
  flags.DEFINE_string('stream_video', None, '--stream: also write the annotated frames here (MP4).')
  flags.DEFINE_float(
    'stream_fps', 0.0, "--stream: the annotated video's frame rate (0: the source's, else 25)."
  )
  flags.DEFINE_enum(
    'drop_frames',
    'auto',
    ['auto', 'yes', 'no'],
    '--stream: drop the frames the model has no time for (auto: for a camera or URL; a file '
    'or stdin has every frame predicted).',
  )
  flags.DEFINE_integer('stream_frames', 0, '--stream: stop after this many frames (0: the end).')
  flags.DEFINE_integer(
    'report_every', 100, '--stream: frames/s and latency on stderr every N frames (0: never).'
  )
  flags.DEFINE_string('step', 'latest', "Checkpoint: 'latest', 'best' or a step number.")
  flags.DEFINE_string(
    'init_from',
    None,
    'A converted classifier (tools/convert_torch_weights.py): class scores only, no boxes.',
  )
  flags.DEFINE_integer(
    'frame_stride',
    0,
    'Predict every k-th frame (and the last); frames in between are interpolated. A '
    "tubelet detector: a clip every k-th frame, boxing its K frames. 0: the model's default "
    "(1; a tubelet detector's eval.tube_frame_stride).",
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
    'max_tubes',
    predict.MAX_TUBES,
    'Keep the best k tubes per video in the JSON and the drawing (0: all).',
  )
  flags.DEFINE_multi_string(
    'override', [], 'Config change key.path=value, e.g. eval.tubes.iou_threshold=0.3 (repeatable).'
  )
  flags.DEFINE_string('class_names', None, 'Text file of class names, one per line.')
  flags.DEFINE_bool('write_video', True, 'Write the annotated <name>.mp4.')
  flags.DEFINE_bool('progress', True, 'Progress bars.')
  flags.DEFINE_bool('verbose', False, "OpenCV's and FFmpeg's own warnings (silenced by default).")


def load_model(f: Any, batch_size: int | None) -> predict.Loaded:
  """The model the flags name: an export (--model), or a checkpoint (--workdir,
  --init_from), whose modules (JAX, orbax, the configs) are imported only then."""
  if getattr(f, 'model', None):
    given = [
      name
      for name, value in (
        ('--workdir', f.workdir),
        ('--init_from', f.init_from),
        ('--override', f.override),
        ('--step', f.step != 'latest'),
      )
      if value
    ]
    if given:
      raise ValueError(
        f'--model runs an export with the settings of its metadata.json: {", ".join(given)} '
        'cannot be used with it'
      )
    from stconsist_jax.prediction import onnx_predictor  # pylint: disable=g-import-not-at-top

    return onnx_predictor.load_export(f.model, batch_size=batch_size, names_file=f.class_names)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from stconsist_jax.configs import default  # pylint: disable=g-import-not-at-top
  from stconsist_jax.evaluation import restore as restore_lib  # pylint: disable=g-import-not-at-top

  step = restore_lib.resolve_step(ml_collections.ConfigDict({'eval': {}}), f.step)
  return predict.load(
    f.workdir,
    step,
    init_from=f.init_from,
    settings=None if f.workdir else default.get_config(),
    overrides=f.override,
    batch_size=batch_size,
    names_file=f.class_names,
  )


def describe_model(loaded: predict.Loaded, compile_s: float) -> str:
  p = loaded.predictor
  info = loaded.model_info
  export = f', {info["export"]["format"]} export' if 'export' in info else ''
  return (
    f'{info["architecture"]} ({info["source"]} step {info["step"]}{export}): clips of '
    f'{p.num_frames} frames at {p.image_size}px, batch {p.batch_size} on '
    f'{p.device_description}, ready in {compile_s:.1f} s'
  )


def run(argv_flags: Any = None) -> int:
  """The CLI's work; returns the exit code (0 when at least one video was predicted)."""
  f = argv_flags or FLAGS
  streaming = getattr(f, 'stream', None) is not None
  if bool(f.video) == streaming:
    print('error: give --video (files) or --stream (online), one of them', file=sys.stderr)
    return 2
  if streaming:
    return run_stream(f)
  if not f.output:
    print('error: --output (a folder for the JSON records and videos) is required', file=sys.stderr)
    return 2
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
    loaded = load_model(f, f.batch_size)
  except errors.user_error_types() + (ValueError, NotADirectoryError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  compile_s = loaded.predictor.warm_up()
  print(f'{describe_model(loaded, compile_s)}; {len(videos)} video(s)', flush=True)
  start = time.perf_counter()
  done = failed = frames = 0
  predict_s = 0.0
  try:
    for _, result, _ in predict.predict_each(
      loaded,
      videos,
      out_dir,
      every=f.frame_stride or predict.default_stride(loaded),
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


def run_stream(f: Any) -> int:
  """`--stream`: a JSON line per frame on stdout or --output, reports on stderr."""
  if getattr(f, 'frame_stride', 0):
    print(
      'error: --frame_stride is for --video; --stream predicts every frame (a live source: '
      'the newest when the model is free)',
      file=sys.stderr,
    )
    return 2
  try:
    size = stream.parse_size(f.stream_size) if f.stream_size else None
    live = {'auto': None, 'yes': True, 'no': False}[f.drop_frames]
    source = stream.open_source(f.stream, size, live=live)
  except errors.user_error_types() as e:
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return 2
  try:
    # One clip per frame: a batch of one (a fixed-batch export pads to its own).
    loaded = load_model(f, f.batch_size or 1)
  except errors.user_error_types() + (ValueError, NotADirectoryError) as e:
    source.close()
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  compile_s = loaded.predictor.warm_up()
  mode = 'dropping frames when behind' if source.live else 'every frame'
  print(
    f'{describe_model(loaded, compile_s)}; streaming {source.name} ({mode})',
    file=sys.stderr,
    flush=True,
  )
  runner = stream.StreamPredictor(
    loaded, top_k=f.frame_top_k or 5, report_every=f.report_every, log=sys.stderr
  )
  to_stdout = f.output in (None, '', '-')
  try:
    out = sys.stdout if to_stdout else open(f.output, 'w', encoding='utf-8')
  except OSError as e:
    source.close()
    print(f'error: --output {f.output}: {e.strerror or e}', file=sys.stderr)
    return 2
  try:
    summary = runner.run(
      source,
      out,
      video_path=f.stream_video,
      video_fps=f.stream_fps or None,
      max_frames=f.stream_frames,
    )
  except errors.user_error_types() as e:
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return 2
  except BrokenPipeError:  # The reader of stdout went away: stop quietly.
    return 0
  finally:
    if not to_stdout:
      out.close()
  print(summary.describe(), file=sys.stderr, flush=True)
  return 0 if summary.frames_predicted else 1


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


def _exit_on_sigterm(signum: int, frame: Any) -> None:
  del frame
  sys.exit(128 + signum)  # Unwinds, so that partial outputs are removed.


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    console.quiet_library_logs()  # before anything imports TensorFlow
  # Orbax's warnings are routine on every restore.
  logging.get_absl_handler().addFilter(console.LibraryFilter(('/orbax/',), logging.ERROR))
  video_files.quiet_opencv(FLAGS.verbose)
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  sys.exit(run())


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Class names may load TFDS.
  # Before any frame is decoded: frame-sized buffers mapped and returned whole, so that
  # peak memory does not grow with a video's length (docs/predict.md, Memory).
  allocator.map_large_buffers()
  define_flags()
  app.run(main)
