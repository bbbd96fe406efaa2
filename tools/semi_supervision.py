"""Does flip consistency help when labels are scarce? A paired multi-seed study with a plot.

  python tools/semi_supervision.py [--fractions=0.1,0.2,0.5,1.0]
      [--arms=no_consistency,flip,flip_teacher] [--seeds=0,1,2,3,4] [--num_steps=300]
      [--image_size=32] [--videos_per_class=15] [--out=DIR] [--config.train.batch_size=16]

E2E-SSL's protocol on the demo's multi-actor benchmark (configs/demo.py, sized by the
flags): a share of the training videos (`data.labeled_video_fraction`, a keyed hash of
name and seed, nested) keeps class and boxes, the rest keep nothing. For every labelled
fraction x arm (no consistency: every consistency weight 0; flip: the flip-consistency
terms, CSD on the dense outputs for the tubelet head of configs/demo.py; flip_teacher: the
same with a mean teacher, `loss.teacher_ema`; flip_boxes: only the box consistency of every
output frame) x seed it trains
and evaluates one run. Runs are paired: one seed gives every arm the same data, labelled
subset and initialization, so arms are compared seed by seed.

OUT/runs/<arm>_f<fraction>_s<seed>.json holds each finished run; a rerun reads those back
instead of training again (an interrupted run resumes from its checkpoints). OUT/
summary.json holds every run, each arm's mean and 95% t-interval of mean IoU, frame-mAP
and video-mAP@0.5 per fraction, and each consistency arm's paired difference to no
consistency with its interval; OUT/study.png plots metric against labelled fraction, one
line per arm with its interval band. WORKDIR (the runs' checkpoints) and OUT may be
bucket URLs (gs://...); the data cache is a local folder.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

from stconsist_jax.core import errors

from stconsist_jax.apps import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS

METRICS = ('mean_iou', 'frame_map', 'video_map@0.5', 'video_map@0.75')
BASELINE = 'no_consistency'
ARMS = (BASELINE, 'flip', 'flip_teacher', 'flip_boxes')
DEFAULT_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
CONFIDENCE = 0.95
# Student's t quantile t_{0.975}(df) for df = 1..30 (two-sided 95%).
_T975 = (
  12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
  2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
  2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054

RunFn = Callable[[Any, str], Mapping[str, float]]


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  cli.define_config_file('config', str(REPO_ROOT / 'configs' / 'demo.py'), 'Base config.')
  flags.DEFINE_string('workdir', 'workdirs/semi_supervision', 'Runs (a path or a bucket URL).')
  flags.DEFINE_string('out', '', "Results: runs/*.json, summary.json, study.png ('' = workdir).")
  flags.DEFINE_string(
    'cache_dir', 'data_cache/semi_supervision', 'Synthetic videos and their TFDS build (local).'
  )
  flags.DEFINE_list('fractions', [str(f) for f in DEFAULT_FRACTIONS], 'Labelled video shares.')
  flags.DEFINE_list('arms', list(ARMS), f'Arms, of {list(ARMS)}.')
  flags.DEFINE_list('seeds', [str(s) for s in DEFAULT_SEEDS], 'Seeds (one pairing each).')
  flags.DEFINE_integer('num_steps', 300, 'Training steps per run.')
  flags.DEFINE_integer('image_size', 32, 'Stored frame size and clip size of the synthetic data.')
  flags.DEFINE_integer('videos_per_class', 15, 'Synthetic videos per class (the data size).')
  flags.DEFINE_float('teacher_ema', 0.99, 'EMA decay of the flip_teacher arm.')
  flags.DEFINE_integer(
    'labeled_per_batch', 0, 'Clips of labelled videos in each batch (0 = the natural mix).'
  )


# ------------------------------------------------------------------------- statistics


def t_quantile_975(df: int) -> float:
  """The 0.975 quantile of Student's t with `df` degrees of freedom (table, then series)."""
  if df < 1:
    raise ValueError(f'degrees of freedom must be >= 1, got {df}')
  if df <= len(_T975):
    return _T975[df - 1]
  z = _Z975  # Cornish-Fisher expansion in 1/df: below 1e-4 off for df > 30.
  return (
    z
    + (z**3 + z) / (4 * df)
    + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
  )


def _defined(values: Sequence[float | None]) -> list[float]:
  return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_interval(values: Sequence[float | None]) -> dict[str, Any] | None:
  """Mean and 95% t-interval of the finite values (None: no value).

  Returns {'n', 'mean', 'sd', 'half_width', 'low', 'high'}; with one value the interval
  is undefined (None).
  """
  xs = _defined(values)
  n = len(xs)
  if not n:
    return None
  mean = sum(xs) / n
  if n == 1:
    return {'n': 1, 'mean': mean, 'sd': None, 'half_width': None, 'low': None, 'high': None}
  sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
  half = t_quantile_975(n - 1) * sd / math.sqrt(n)
  return {
    'n': n,
    'mean': mean,
    'sd': sd,
    'half_width': half,
    'low': mean - half,
    'high': mean + half,
  }


def paired_differences(
  arm: Mapping[int, float | None], baseline: Mapping[int, float | None]
) -> dict[str, Any] | None:
  """`mean_interval` of arm - baseline over the seeds where both are defined."""
  diffs = [
    arm[s] - baseline[s]
    for s in sorted(set(arm) & set(baseline))
    if _defined([arm[s]]) and _defined([baseline[s]])
  ]
  return mean_interval(diffs)


def fraction_key(fraction: float) -> str:
  return f'{float(fraction):g}'


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Per arm and fraction: metric intervals; per consistency arm: paired differences.

  Each run is {'arm', 'fraction', 'seed', <metric>: value}. Returns {'arms': {arm:
  {fraction: {metric: mean_interval}}}, 'paired': {arm: {fraction: {metric:
  paired_differences vs BASELINE}}}}, fractions as `fraction_key` strings.
  """
  table: dict[str, dict[str, dict[int, Mapping[str, Any]]]] = {}
  for run in runs:
    table.setdefault(run['arm'], {}).setdefault(fraction_key(run['fraction']), {})[
      int(run['seed'])
    ] = run
  arms = {
    arm: {
      f: {m: mean_interval([r.get(m) for r in by_seed.values()]) for m in METRICS}
      for f, by_seed in sorted(fractions.items(), key=lambda kv: float(kv[0]))
    }
    for arm, fractions in table.items()
  }
  paired: dict[str, Any] = {}
  for arm, fractions in table.items():
    if arm == BASELINE or BASELINE not in table:
      continue
    paired[arm] = {}
    for f, by_seed in sorted(fractions.items(), key=lambda kv: float(kv[0])):
      base = table[BASELINE].get(f, {})
      paired[arm][f] = {
        m: paired_differences(
          {s: r.get(m) for s, r in by_seed.items()}, {s: r.get(m) for s, r in base.items()}
        )
        for m in METRICS
      }
  return {'arms': arms, 'paired': paired}


# ------------------------------------------------------------------------------- runs


def run_config(base, arm: str, fraction: float, seed: int, teacher_ema: float = 0.99):
  """The config of one run: `base` with the seed, the labelled share and the arm."""
  if arm not in ARMS:
    raise ValueError(f'unknown arm {arm!r}; expected one of {list(ARMS)}')
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.seed = int(seed)
    config.data.labeled_video_fraction = float(fraction)
    config.data.labeled_videos = ''
    config.data.box_label_fraction = 1.0  # A labelled video keeps its boxes (E2E-SSL).
    config.loss.teacher_ema = float(teacher_ema) if arm == 'flip_teacher' else 0.0
    if arm == BASELINE:
      config.loss.con_cls_weight = 0.0
      config.loss.con_loc_weight = 0.0
      config.loss.con_dense_cls_weight = 0.0
      config.loss.con_dense_box_weight = 0.0
    if arm == 'flip_boxes':  # the tubelet head's box consistency on every output frame only
      config.loss.con_cls_weight = 0.0
      config.loss.con_dense_cls_weight = 0.0
  return config


def run_one(config, workdir: str) -> dict[str, float | None]:
  """Trains `config` in `workdir` (resuming its checkpoints) and evaluates the last step."""
  from stconsist_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import train  # pylint: disable=g-import-not-at-top

  train.train_and_evaluate(config, workdir)
  report = runner.evaluate(config, workdir, 'latest')
  return {k: (None if report.get(k) is None else float(report[k])) for k in METRICS}


def run_name(arm: str, fraction: float, seed: int) -> str:
  return f'{arm}_f{fraction_key(fraction)}_s{int(seed)}'


def run_study(
  plan: Sequence[tuple[str, float, int]],
  configs: Callable[[str, float, int], Any],
  run_fn: RunFn,
  out: Any,
  workdir: Any,
  settings: Mapping[str, Any],
) -> list[dict[str, Any]]:
  """Every run of `plan` ((arm, fraction, seed)), reading back those already finished.

  A finished run is OUT/runs/<name>.json; it is reused only when its `settings` equal
  these (else a ConfigError: another study's results are in OUT).
  """
  from stconsist_jax.config import schema
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  out, workdir = fileio.as_path(out), fileio.as_path(workdir)
  runs = []
  for arm, fraction, seed in plan:
    name = run_name(arm, fraction, seed)
    path = out / 'runs' / f'{name}.json'
    if path.exists():
      run = json.loads(path.read_text())
      if run.get('settings') != dict(settings):
        raise schema.ConfigError(
          f'{path} was made with other settings ({run.get("settings")}, now '
          f'{dict(settings)}): pass another --out and --workdir, or delete it'
        )
      print(f'[semi] {name}: finished before, read back', flush=True)
      runs.append(run)
      continue
    t0 = time.time()
    metrics = run_fn(configs(arm, fraction, seed), str(workdir / name))
    run = {
      'arm': arm,
      'fraction': float(fraction),
      'seed': int(seed),
      'seconds': round(time.time() - t0, 1),
      'settings': dict(settings),
      **{m: metrics.get(m) for m in METRICS},
    }
    fileio.atomic_write(path, json.dumps(run, indent=1))
    print(f'[semi] {name} ({run["seconds"]} s): ' + format_metrics(run), flush=True)
    runs.append(run)
  return runs


def format_metrics(run: Mapping[str, Any]) -> str:
  return ' '.join(f'{m}={"n/a" if run.get(m) is None else format(run[m], ".3f")}' for m in METRICS)


def _fmt_interval(stats: Mapping[str, Any] | None, signed: bool = False) -> str:
  if stats is None:
    return 'n/a'
  sign = '+' if signed else ''
  if stats['half_width'] is None:
    return f'{stats["mean"]:{sign}.3f} (n=1)'
  return f'{stats["mean"]:{sign}.3f} [{stats["low"]:{sign}.3f}, {stats["high"]:{sign}.3f}]'


def report_lines(summary: Mapping[str, Any]) -> list[str]:
  lines = ['mean [95% t-interval] over seeds']
  for arm, fractions in summary['arms'].items():
    for f, stats in fractions.items():
      cells = '  '.join(f'{m} {_fmt_interval(stats[m])}' for m in METRICS)
      lines.append(f'  {arm:>15} f={f:<4} {cells}')
  if summary['paired']:
    lines.append(f'paired difference to {BASELINE} (same seed), mean [95% t-interval]')
  for arm, fractions in summary['paired'].items():
    for f, stats in fractions.items():
      cells = '  '.join(f'{m} {_fmt_interval(stats[m], True)}' for m in METRICS)
      lines.append(f'  {arm:>15} f={f:<4} {cells}')
  return lines


def plot(summary: Mapping[str, Any], path: Any, title: str = '') -> None:
  """One panel per metric: mean against labelled fraction, one line per arm, 95% bands."""
  import io  # pylint: disable=g-import-not-at-top

  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
  for ax, metric in zip(axes[0], METRICS):
    for arm, fractions in summary['arms'].items():
      points = [(float(f), s[metric]) for f, s in fractions.items() if s[metric] is not None]
      if not points:
        continue
      xs = [x for x, _ in points]
      means = [s['mean'] for _, s in points]
      (line,) = ax.plot(xs, means, marker='o', label=arm)
      banded = [(x, s) for x, s in points if s['half_width'] is not None]
      if banded:
        ax.fill_between(
          [x for x, _ in banded],
          [s['low'] for _, s in banded],
          [s['high'] for _, s in banded],
          color=line.get_color(),
          alpha=0.2,
          linewidth=0,
        )
    ax.set_xscale('log')
    ticks = sorted({float(f) for fractions in summary['arms'].values() for f in fractions})
    ax.set_xticks(ticks, [f'{t:g}' for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel('labelled share of training videos')
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
  axes[0][0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  plt.close(fig)
  fileio.atomic_write(path, buffer.getvalue())


# ------------------------------------------------------------------------------- main


def parse_plan(fractions, arms, seeds) -> tuple[list[float], list[str], list[int]]:
  from stconsist_jax.config import schema

  try:
    fractions = [float(f) for f in fractions]
    seeds = [int(s) for s in seeds]
  except ValueError:
    raise schema.ConfigError(
      f'--fractions must be numbers and --seeds integers, got {fractions} and {seeds}'
    ) from None
  bad = [f for f in fractions if not 0.0 < f <= 1.0]
  if bad:
    raise schema.ConfigError(f'--fractions must be in (0, 1], got {bad}')
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise schema.ConfigError(f'--arms: unknown {unknown}; expected some of {list(ARMS)}')
  return fractions, list(arms), seeds


def sized_config(base, num_steps: int, image_size: int, videos_per_class: int, per_batch: int):
  """`base` at the study's size: steps, frame/clip size, synthetic data size, batch mix."""
  config = base.copy_and_resolve_references()
  with config.unlocked():
    config.train.num_steps = int(num_steps)
    config.train.checkpoint_every = int(num_steps)
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, int(num_steps))
    config.data.frame_size = config.data.image_size = int(image_size)
    config.synthetic.videos_per_class = int(videos_per_class)
    config.data.labeled_per_batch = int(per_batch)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from stconsist_jax.core import console  # pylint: disable=g-import-not-at-top

  console.quiet_library_logs()
  with errors.user_errors():
    study(FLAGS.config)


def study(base) -> dict[str, Any]:
  """Checks the plan and every run's config first, then runs, summarizes and plots."""
  from stconsist_jax.config import schema
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import workdir_lock  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.synthetic import prepared  # pylint: disable=g-import-not-at-top

  if fileio.is_remote(FLAGS.cache_dir):
    raise schema.ConfigError(
      f'--cache_dir {FLAGS.cache_dir} is a bucket URL; the synthetic videos are rendered '
      'and read with OpenCV, which needs a local folder'
    )
  fractions, arms, seeds = parse_plan(FLAGS.fractions, FLAGS.arms, FLAGS.seeds)
  base = sized_config(
    base, FLAGS.num_steps, FLAGS.image_size, FLAGS.videos_per_class, FLAGS.labeled_per_batch
  )
  workdir = fileio.as_path(FLAGS.workdir)
  out = fileio.as_path(FLAGS.out or FLAGS.workdir)
  # Seed by seed: an interrupted study leaves whole pairings behind (resumable anyway).
  plan = [(arm, f, seed) for seed in seeds for f in fractions for arm in arms]

  def configs(arm, fraction, seed):
    return run_config(base, arm, fraction, seed, FLAGS.teacher_ema)

  for arm, fraction, seed in plan:
    schema.validate(configs(arm, fraction, seed))
    workdir_lock.check_not_locked(workdir / run_name(arm, fraction, seed))
  prepared.use_synthetic(base, FLAGS.cache_dir)
  settings = {
    'num_steps': FLAGS.num_steps,
    'image_size': FLAGS.image_size,
    'videos_per_class': FLAGS.videos_per_class,
    'teacher_ema': FLAGS.teacher_ema,
    'labeled_per_batch': FLAGS.labeled_per_batch,
    'batch_size': int(base.train.batch_size),
    'synthetic': base.synthetic.to_dict(),
  }
  runs = run_study(plan, configs, run_one, out, workdir, settings)
  summary = {
    'protocol': (
      'labelled share of training videos (data.labeled_video_fraction) keeps class and '
      'boxes, the rest keep nothing; paired: one seed = same data, labelled subset and '
      f'initialization in every arm; intervals: {CONFIDENCE:.0%} Student t over seeds'
    ),
    'settings': settings,
    'fractions': fractions,
    'arms_run': arms,
    'seeds': seeds,
    'runs': runs,
    **summarize(runs),
  }
  fileio.atomic_write(out / 'summary.json', json.dumps(summary, indent=1))
  title = f'synthetic benchmark, {FLAGS.num_steps} steps, {len(seeds)} seeds (95% t-intervals)'
  plot(summary, out / 'study.png', title)
  print('\n'.join(report_lines(summary)))
  print(f'wrote {out / "summary.json"} and {out / "study.png"}')
  return summary


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
