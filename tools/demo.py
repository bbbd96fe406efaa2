"""The main job, end to end on a CPU: synthetic UCF-101 -> TFDS -> train -> evaluate.

  python tools/demo.py [--workdir=workdirs/demo] [--config.train.num_steps=300]

Generates a synthetic dataset in the real UCF-101 layout (cached under --cache_dir),
builds it with the TFDS builder (cached), trains configs/demo.py from scratch with flip
consistency and part of the boxes withheld, restores the final checkpoint, evaluates it
and prints the numbers; report.json, report.md and PNGs land in WORKDIR/eval/<step>/.
"""

import json
import os
import pathlib
import shutil
import sys
import time

from absl import app
from absl import flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stconsist_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = cli.define_config_file('config', str(REPO_ROOT / 'configs' / 'demo.py'),
                                 'Training config.')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/demo', 'Checkpoints, logs, reports.')
_CACHE_DIR = flags.DEFINE_string('cache_dir', 'data_cache/demo',
                                 'Synthetic videos and the TFDS build (reused).')
_RESUME = flags.DEFINE_bool('resume', False,
                            'Continue the run in --workdir instead of starting afresh.')

SUMMARY = (('video_accuracy', 'video accuracy'), ('clip_accuracy', 'clip accuracy'),
           ('mean_iou', 'mean IoU'), ('frame_map', 'frame-mAP@0.5'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from stconsist_jax import logging_utils  # pylint: disable=g-import-not-at-top
  logging_utils.quiet_library_logs()
  with cli.user_errors(*cli.project_user_errors()):
    run(_CONFIG.value, pathlib.Path(_WORKDIR.value), pathlib.Path(_CACHE_DIR.value),
        resume=_RESUME.value)


def run(config, workdir: pathlib.Path, cache: pathlib.Path, resume: bool) -> None:
  """Checks everything a user can get wrong first, then data, training, evaluation."""
  from stconsist_jax import config_lib  # pylint: disable=g-import-not-at-top
  from stconsist_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  workdir_lock.check_local_path(workdir)
  config_lib.validate(config)
  workdir_lock.check_not_locked(workdir)

  from stconsist_jax.data import prepared  # pylint: disable=g-import-not-at-top
  prepared.use_synthetic(config, cache)

  from stconsist_jax import evaluate  # pylint: disable=g-import-not-at-top
  from stconsist_jax import train  # pylint: disable=g-import-not-at-top
  if workdir.exists() and not resume:
    shutil.rmtree(workdir)
  t0 = time.time()
  print(f'[demo] training {config.train.num_steps} steps into {workdir} ...', flush=True)
  train.train_and_evaluate(config, str(workdir), allow_config_change=resume)
  train_s = time.time() - t0
  print(f'[demo] trained in {train_s:.0f} s; evaluating the restored checkpoint ...',
        flush=True)
  report = evaluate.evaluate(config, str(workdir), 'latest')

  total_s = time.time() - t_start
  step = report.get('checkpoint_step')
  print(f'\n[demo] results on the synthetic test split (checkpoint step {step}):')
  for key, label in SUMMARY:
    value = report.get(key)
    print(f'  {label:>15}: ' + ('n/a' if value is None else f'{value:.3f}'))
  print(f'  report: {workdir / "eval" / str(step) / "report.md"}')
  print(f'[demo] total {total_s:.0f} s (training {train_s:.0f} s) on '
        f'{os.cpu_count()} CPU cores', flush=True)
  print(json.dumps({k: report.get(k) for k, _ in SUMMARY} |
                   {'train_seconds': round(train_s, 1), 'total_seconds': round(total_s, 1)}))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
