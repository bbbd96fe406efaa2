"""The prediction command: action tubes on a video file or a folder of them, into each
video's JSON record and annotated copy (usage and the JSON schema: docs/predict.md).

  python -m stconsist_jax.apps.predict --workdir=W --video=PATH_OR_DIR --output=OUT
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
import jax
import ml_collections

from stconsist_jax.configs import default
from stconsist_jax.core import console
from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.prediction import predict
from stconsist_jax.prediction import video_files

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
    loaded = predict.load(
      f.workdir,
      step,
      init_from=f.init_from,
      settings=None if f.workdir else default.get_config(),
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
  define_flags()
  app.run(main)
