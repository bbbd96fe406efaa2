"""Does flip consistency help when boxes are scarce? The demo setting, with and without it.

  python tools/semi_supervision.py [--box_label_fraction=0.25] [--seeds=0,1,2]
      [--config.train.num_steps=400]

Trains configs/demo.py on the demo's synthetic data with boxes kept for only a fraction
of the annotated videos, once with the consistency loss (con_cls + con_loc, ramped) and
once without it (both weights 0), for several seeds; evaluates each final checkpoint and
prints mean +- standard deviation of mean IoU, frame-mAP and video accuracy. The last
line is one JSON object; WORKDIR/summary.json holds every run. WORKDIR may be a bucket
URL (gs://...); the data cache is a local folder (shared with the demo).
"""

import json
import pathlib
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stconsist_jax import cli  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = cli.define_config_file(
  'config', str(REPO_ROOT / 'configs' / 'demo.py'), 'Training config.'
)
_WORKDIR = flags.DEFINE_string(
  'workdir', 'workdirs/semi_supervision', 'Runs and summary (a path or a bucket URL).'
)
_CACHE_DIR = flags.DEFINE_string(
  'cache_dir',
  'data_cache/demo',
  'Synthetic videos and the TFDS build (shared with the demo; local).',
)
_FRACTION = flags.DEFINE_float(
  'box_label_fraction', 0.25, 'Share of annotated videos whose boxes are kept.'
)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Training seeds.')

METRICS = ('mean_iou', 'frame_map', 'video_accuracy')
SETTINGS = (('consistency', True), ('no_consistency', False))


def run_config(base, seed: int, consistency: bool):
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
    config.data.box_label_fraction = _FRACTION.value
    if not consistency:
      config.loss.con_cls_weight = 0.0
      config.loss.con_loc_weight = 0.0
  return config


def mean_std(values) -> tuple[float, float] | None:
  """Mean and sample standard deviation of the defined values (None: no value)."""
  values = np.asarray([v for v in values if v is not None], np.float64)
  if not len(values):
    return None
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def fmt(value) -> str:
  return 'n/a' if value is None else f'{value:.3f}'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from stconsist_jax import logging_utils  # pylint: disable=g-import-not-at-top

  logging_utils.quiet_library_logs()
  with cli.user_errors(*cli.project_user_errors()):
    study(_CONFIG.value, _WORKDIR.value)


def study(base, root: str) -> None:
  """Checks the settings and every run's workdir first, then trains and evaluates."""
  from stconsist_jax import config_lib  # pylint: disable=g-import-not-at-top
  from stconsist_jax import evaluate  # pylint: disable=g-import-not-at-top
  from stconsist_jax import fileio  # pylint: disable=g-import-not-at-top
  from stconsist_jax import train  # pylint: disable=g-import-not-at-top
  from stconsist_jax import workdir_lock  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data import prepared  # pylint: disable=g-import-not-at-top

  root = fileio.as_path(root)
  if fileio.is_remote(_CACHE_DIR.value):
    raise config_lib.ConfigError(
      f'--cache_dir {_CACHE_DIR.value} is a bucket URL; the synthetic videos are rendered '
      'and read with OpenCV, which needs a local folder'
    )
  if not 0.0 <= _FRACTION.value <= 1.0:
    raise config_lib.ConfigError(f'--box_label_fraction must be in [0, 1], got {_FRACTION.value}')
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise config_lib.ConfigError(f'--seeds must be integers, got {_SEEDS.value}') from None
  plan = [(seed, name, consistency) for seed in seeds for name, consistency in SETTINGS]
  for seed, name, consistency in plan:
    config_lib.validate(run_config(base, seed, consistency))
    workdir_lock.check_not_locked(root / f'{name}_seed{seed}')
  prepared.use_synthetic(base, _CACHE_DIR.value)
  runs = []
  for seed, name, consistency in plan:
    workdir = root / f'{name}_seed{seed}'
    if workdir.exists():
      workdir.rmtree()
    config = run_config(base, seed, consistency)
    t0 = time.time()
    train.train_and_evaluate(config, str(workdir))
    report = evaluate.evaluate(config, str(workdir), 'latest')
    runs.append(
      {
        'setting': name,
        'seed': seed,
        'seconds': round(time.time() - t0, 1),
        **{k: report[k] for k in METRICS},
      }
    )
    print(
      f'[semi] {name} seed {seed}: ' + ' '.join(f'{k}={fmt(report[k])}' for k in METRICS),
      flush=True,
    )

  summary = {
    'box_label_fraction': _FRACTION.value,
    'seeds': len(_SEEDS.value),
    'num_steps': base.train.num_steps,
    'runs': runs,
  }
  print(
    f'\nbox_label_fraction={_FRACTION.value}, {len(_SEEDS.value)} seeds, '
    f'{base.train.num_steps} steps: mean +- std'
  )
  for name, _ in SETTINGS:
    stats = {k: mean_std([r[k] for r in runs if r['setting'] == name]) for k in METRICS}
    summary[name] = stats
    print(
      f'  {name:>15}: '
      + '  '.join(
        f'{k} n/a' if v is None else f'{k} {v[0]:.3f} +- {v[1]:.3f}' for k, v in stats.items()
      )
    )
  fileio.atomic_write(root / 'summary.json', json.dumps(summary, indent=1))
  print(
    json.dumps(
      {name: summary[name] for name, _ in SETTINGS}
      | {'box_label_fraction': _FRACTION.value, 'seeds': len(_SEEDS.value)}
    )
  )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
