"""The main job, end to end on a CPU: synthetic UCF-101 -> TFDS -> train -> evaluate.

  python tools/demo.py [--workdir=workdirs/demo] [--config.train.num_steps=300]

Generates a synthetic dataset in the real UCF-101 layout (cached under --cache_dir),
builds it with the TFDS builder (cached), trains configs/demo.py from scratch with flip
consistency and part of the boxes withheld, restores the final checkpoint, evaluates it
and prints the numbers; report.json, report.md and PNGs land in WORKDIR/eval/<step>/.
WORKDIR may be a bucket URL (gs://...); the cache is a local folder (the synthetic
videos are rendered and read with OpenCV).
"""

import contextlib
import json
import os
import pathlib
import tempfile
import time
from collections.abc import Iterator

from absl import app
from absl import flags
from etils import epath

from stconsist_jax.core import errors

from stconsist_jax.apps import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_CONFIG = cli.define_config_file(
  'config', str(REPO_ROOT / 'configs' / 'demo.py'), 'Training config.'
)
_WORKDIR = flags.DEFINE_string(
  'workdir', 'workdirs/demo', 'Checkpoints, logs, reports (a path or a bucket URL).'
)
_CACHE_DIR = flags.DEFINE_string(
  'cache_dir', 'data_cache/demo', 'Synthetic videos and the TFDS build (reused; local).'
)
_VERBOSE = flags.DEFINE_bool(
  'verbose',
  False,
  'Show every library log line (hidden: INFO of orbax, TFDS, '
  "JAX's backend probe and TensorFlow's C++ notices).",
)
_RESUME = flags.DEFINE_bool(
  'resume', False, 'Continue the run in --workdir instead of starting afresh.'
)

SUMMARY = (
  ('video_accuracy', 'video accuracy'),
  ('clip_accuracy', 'clip accuracy'),
  ('mean_iou', 'mean IoU'),
  ('frame_map', 'frame-mAP@0.5'),
  ('video_map@0.2', 'video-mAP@0.2'),
  ('video_map@0.5', 'video-mAP@0.5'),
  ('video_map@0.75', 'video-mAP@0.75'),
  ('video_map@0.5:0.95', 'video-mAP@.5:.95'),
)
PREDICT_DIR = 'predict'


def first_annotated_test_video(manual_dir: pathlib.Path) -> pathlib.Path:
  """A test video of the synthetic set that has boxes (its first in list order)."""
  from stconsist_jax.data.ucf101 import split_lists  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.ucf101 import annotations as ann  # pylint: disable=g-import-not-at-top

  lists = manual_dir / 'ucfTrainTestlist'
  records = ann.load_annotations(
    manual_dir / 'pyannot.pkl', split_lists.read_class_index(lists / 'classInd.txt')
  )
  for path in split_lists.read_split_list(lists / 'testlist01.txt'):
    record = records.get(path)
    if record is not None and record.tubes:
      return manual_dir / 'UCF-101' / f'{path}.avi'
  raise FileNotFoundError(f'no annotated test video in {manual_dir}')


def check_local_cache(cache: str) -> pathlib.Path:
  """The cache folder; a bucket URL is refused (OpenCV renders and reads the videos)."""
  from stconsist_jax.config import schema
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  if fileio.is_remote(cache):
    raise schema.ConfigError(
      f'--cache_dir {cache} is a bucket URL; the synthetic videos are rendered and read '
      'with OpenCV, which needs a local folder'
    )
  return pathlib.Path(cache)


def predict_one(workdir: epath.Path, video: pathlib.Path) -> dict:
  """Runs the prediction command's code on one video; its JSON and a frame strip."""
  from stconsist_jax.prediction import predict  # pylint: disable=g-import-not-at-top

  out_dir = workdir / PREDICT_DIR
  loaded = predict.load(str(workdir), 'latest')
  result = predict.predict_video(
    loaded, video, out_dir, every=predict.default_stride(loaded), progress=False
  )
  strip = frame_strip(result.video_path, 4)
  if strip is not None:
    from stconsist_jax.evaluation import pictures  # pylint: disable=g-import-not-at-top

    pictures.save_png(strip, out_dir / f'{result.name}_strip.png')
  return result.record


@contextlib.contextmanager
def local_file(path: epath.Path) -> Iterator[str]:
  """`path` itself, or for a bucket URL a local temporary copy (removed afterwards)."""
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  if not fileio.is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory(prefix='stconsist_demo_') as tmp:
    local = os.path.join(tmp, fileio.base_name(path))
    fileio.as_path(path).copy(local)
    yield local


def frame_strip(mp4: epath.Path | None, count: int):
  """`count` evenly spaced frames of a video (local or a URL) side by side (RGB), or None."""
  if mp4 is None:
    return None
  with local_file(mp4) as local:
    return _frame_strip(local, count)


def _frame_strip(mp4: str, count: int):
  import cv2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  cap = cv2.VideoCapture(mp4)
  frames = []
  ok, frame = cap.read()
  while ok:
    frames.append(frame)
    ok, frame = cap.read()
  cap.release()
  if not frames:
    return None
  picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
  return np.concatenate([frames[i][:, :, ::-1] for i in picks], axis=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from stconsist_jax.core import console  # pylint: disable=g-import-not-at-top

  console.quiet_library_logs(_VERBOSE.value)
  with errors.user_errors():
    run(_CONFIG.value, _WORKDIR.value, _CACHE_DIR.value, resume=_RESUME.value)


def run(config, workdir: str | os.PathLike, cache: str | os.PathLike, resume: bool) -> None:
  """Checks everything a user can get wrong first, then data, training, evaluation."""
  from stconsist_jax.config import schema
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top
  from stconsist_jax.core import console  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import workdir_lock  # pylint: disable=g-import-not-at-top

  t_start = time.time()
  workdir = fileio.as_path(workdir)
  cache = check_local_cache(os.fspath(cache))
  schema.validate(config)
  workdir_lock.check_not_locked(workdir)

  from stconsist_jax.data.synthetic import prepared  # pylint: disable=g-import-not-at-top

  prepared.use_synthetic(config, cache)
  from stconsist_jax.training import train  # pylint: disable=g-import-not-at-top
  from stconsist_jax.evaluation import runner  # pylint: disable=g-import-not-at-top

  if workdir.exists() and not resume:
    workdir.rmtree()
  t0 = time.time()
  print(f'[demo] training {config.train.num_steps} steps into {workdir} ...', flush=True)
  try:
    train.train_and_evaluate(config, str(workdir), allow_config_change=resume)
  except errors.NoSpaceError as e:  # Without --resume the demo would start afresh.
    raise errors.NoSpaceError(f'{e} (here: add --resume)') from None
  train_s = time.time() - t0
  clips_per_s = config.train.num_steps * config.train.batch_size / max(train_s, 1e-9)
  print(
    f'[demo] trained in {train_s:.0f} s ({clips_per_s:.1f} clips/s including '
    f'compilation); evaluating the restored checkpoint ...',
    flush=True,
  )
  report = runner.evaluate(config, str(workdir), 'latest')
  video = first_annotated_test_video(prepared.videos_dir(cache))
  print(f"[demo] predicting {video.name} with the prediction command's code ...", flush=True)
  prediction = predict_one(workdir, video)

  total_s = time.time() - t_start
  step = report.get('checkpoint_step')
  print(f'\n[demo] results on the synthetic test split (checkpoint step {step}):')
  for key, label in SUMMARY:
    value = report.get(key)
    print(f'  {label:>15}: ' + ('n/a' if value is None else f'{value:.3f}'))
  print(f'  report: {workdir / "eval" / str(step) / "report.md"}')
  tubes = prediction['tubes']
  print(
    f'  prediction: {workdir / PREDICT_DIR} ({prediction["num_frames"]} frames at '
    f'{prediction["timing"]["frames_per_s"]:.0f} frames/s, {len(tubes)} tube(s); top: '
    + (f'{tubes[0]["class"]} {tubes[0]["score"]:.2f}' if tubes else 'none')
    + ')'
  )
  print(
    f'[demo] total {total_s:.0f} s (training {train_s:.0f} s, {clips_per_s:.1f} '
    f'clips/s) on {os.cpu_count()} CPU cores: {console.cpu_model()}',
    flush=True,
  )
  print(
    json.dumps(
      {k: report.get(k) for k, _ in SUMMARY}
      | {
        'train_seconds': round(train_s, 1),
        'total_seconds': round(total_s, 1),
        'clips_per_s': round(clips_per_s, 1),
        'cpu': console.cpu_model(),
        'cpu_count': os.cpu_count(),
        'seed': config.seed,
      }
    )
  )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
