"""Does flip consistency help when labels are scarce? A paired multi-seed study with plots.

  python tools/semi_supervision.py [--fractions=0.1,0.2,0.5,1.0]
      [--arms=no_consistency,flip,flip_teacher] [--seeds=0,1,2,3,4] [--num_steps=500]
      [--image_size=32] [--videos_per_class=15] [--out=DIR] [--config.train.batch_size=16]
  python tools/semi_supervision.py --curve_steps=150,300,600,1000 [--out=DIR]

E2E-SSL's protocol on the demo's multi-actor benchmark (configs/demo.py, sized by the
flags): a share of the training videos (`data.labeled_video_fraction`, a keyed hash of
name and seed, nested) keeps class and boxes, the rest keep nothing. For every labelled
fraction x arm x seed it trains and evaluates one run. Arms: no_consistency (every
consistency weight 0); flip (the flip-consistency terms: CSD on the dense outputs for the
tubelet head of configs/demo.py); flip_teacher (the same against a mean teacher,
`loss.teacher_ema`); flip_boxes (only the box consistency of every output frame). Runs
are paired: one seed gives every arm the same data, labelled subset and initialization,
so arms are compared seed by seed.

OUT/runs/<arm>_f<fraction>_s<seed>.json holds each finished run with its loss terms and
consistency shares over training; a rerun reads those back instead of training again (an
interrupted run resumes from its checkpoints). OUT/summary.json holds every run, each
arm's mean and 95% t-interval of mean IoU, frame-mAP and video-mAP@0.5 and @0.75 per
fraction, each consistency arm's paired difference to no consistency with its interval,
and the consistency terms' share of the loss for each arm's lowest seed. OUT/study.png
plots metric against labelled fraction (one line per arm, interval bands), OUT/
loss_shares.png the consistency share over training. --curve_steps instead trains the
fully labelled no-consistency arm for each length (OUT/learning_curve.json and .png), to
choose --num_steps near its plateau. WORKDIR (the runs' checkpoints) and OUT may be
bucket URLs (gs://...); the data cache and the compilation cache are local folders.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

from stconsist_jax.config import schema
from stconsist_jax.metrics import tubelets
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
  flags.DEFINE_list('arms', list(ARMS[:3]), f'Arms, of {list(ARMS)}.')
  flags.DEFINE_list('seeds', [str(s) for s in DEFAULT_SEEDS], 'Seeds (one pairing each).')
  flags.DEFINE_integer('num_steps', 500, 'Training steps per run.')
  flags.DEFINE_integer('image_size', 32, 'Stored frame size and clip size of the synthetic data.')
  flags.DEFINE_integer('videos_per_class', 15, 'Synthetic videos per class (the data size).')
  flags.DEFINE_float('teacher_ema', 0.99, 'EMA decay of the flip_teacher arm.')
  flags.DEFINE_integer(
    'labeled_per_batch', 0, 'Clips of labelled videos in each batch (0 = the natural mix).'
  )
  flags.DEFINE_list(
    'curve_steps',
    [],
    'Instead of the study: the learning curve of the fully labelled no-consistency arm, '
    'one run per length (its cosine schedule ends there), for the first seed.',
  )
  flags.DEFINE_string(
    'compilation_cache',
    'data_cache/jax_compilation',
    "JAX's persistent compilation cache (a local folder; '' = off): runs of one arm "
    'compile the same step.',
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


def run_one(config, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming its checkpoints) and evaluates the last step.

  Returns METRICS and 'loss_log' (`loss_log` of the run's metrics.jsonl).
  """
  from stconsist_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import summaries  # pylint: disable=g-import-not-at-top
  from stconsist_jax.training import train  # pylint: disable=g-import-not-at-top

  train.train_and_evaluate(config, workdir)
  report = runner.evaluate(config, workdir, 'latest')
  metrics = {k: (None if report.get(k) is None else float(report[k])) for k in METRICS}
  records = [{'step': step, **r} for step, r in summaries.read_metrics(workdir).items()]
  return {**metrics, 'loss_log': loss_log(records)}


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
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  out, workdir = fileio.as_path(out), fileio.as_path(workdir)
  runs = []
  for arm, fraction, seed in plan:
    name = run_name(arm, fraction, seed)
    path = out / 'runs' / f'{name}.json'
    if path.exists():
      run = json.loads(path.read_text())
      if comparable_settings(run.get('settings')) != comparable_settings(settings):
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
    if metrics.get('loss_log') is not None:
      run['loss_log'] = metrics['loss_log']
    fileio.atomic_write(path, json.dumps(run, indent=1))
    print(f'[semi] {name} ({run["seconds"]} s): ' + format_metrics(run), flush=True)
    runs.append(run)
  return runs


def format_metrics(run: Mapping[str, Any]) -> str:
  return ' '.join(f'{m}={"n/a" if run.get(m) is None else format(run[m], ".3f")}' for m in METRICS)


LOSS_LOG_KEYS = (
  'loss',
  'cls',
  'tubelet_cls',
  'tubelet_box',
  'tubelet_giou',
  'tubelet_presence',
  'loc',
  *schema.CONSISTENCY_TERMS,
  'con_weight',
  *(f'share_{t}' for t in schema.CONSISTENCY_TERMS),
)
LOSS_LOG_POINTS = 20


def _loss_weighted_share(steps, by_step, term: str) -> float | None:
  """sum(share * loss) / sum(loss) over `steps`: the term's weighted sum over the loss's
  (a step that does not log the term adds 0; None when none does).

  Not the mean of the per-step shares: a batch without a labelled clip has only the
  consistency terms in its (small) loss, a share near 1 that would dominate that mean.
  """
  key = f'share_{term}'
  logged = [s for s in steps if len(_defined([by_step[s].get('loss')])) == 1]
  if not any(_defined([by_step[s].get(key)]) for s in logged):
    return None
  total = sum(float(by_step[s]['loss']) for s in logged)
  weighted = sum(sum(_defined([by_step[s].get(key)])) * float(by_step[s]['loss']) for s in logged)
  return weighted / total if total > 0 else None


def loss_log(records: Sequence[Mapping[str, Any]], points: int = LOSS_LOG_POINTS) -> dict:
  """A run's loss terms and consistency shares over training, from its metrics records.

  The steps are cut into `points` equal windows; each window gives its last step, the
  mean of every logged key of LOSS_LOG_KEYS and, for the shares (share_<t> = weight * t /
  loss per step), the loss-weighted share `_loss_weighted_share` (4 significant digits).
  'mean_share' is each consistency term's loss-weighted share over the whole run, with
  their sum as 'total'.
  """
  by_step = {int(r['step']): r for r in records}
  steps = sorted(by_step)
  keys = [k for k in LOSS_LOG_KEYS if any(k in r for r in by_step.values())]
  log: dict[str, Any] = {'step': [], **{k: [] for k in keys}}
  if not steps:
    return {**log, 'mean_share': {}}
  windows = [
    steps[i * len(steps) // points : (i + 1) * len(steps) // points] for i in range(points)
  ]
  for window in (w for w in windows if w):
    log['step'].append(window[-1])
    for k in keys:
      if k.startswith('share_'):
        value = _loss_weighted_share(window, by_step, k[len('share_') :])
      else:
        values = _defined([by_step[s].get(k) for s in window])
        value = sum(values) / len(values) if values else None
      log[k].append(None if value is None else float(f'{value:.4g}'))
  mean_share = {}
  for t in schema.CONSISTENCY_TERMS:
    share = _loss_weighted_share(steps, by_step, t)
    if share is not None:
      mean_share[t] = share
  mean_share['total'] = sum(mean_share.values())
  return {**log, 'mean_share': mean_share}


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
      cells = '  '.join(f'{m} {_fmt_interval(stats.get(m))}' for m in METRICS)
      lines.append(f'  {arm:>15} f={f:<4} {cells}')
  if summary['paired']:
    lines.append(f'paired difference to {BASELINE} (same seed), mean [95% t-interval]')
  for arm, fractions in summary['paired'].items():
    for f, stats in fractions.items():
      cells = '  '.join(f'{m} {_fmt_interval(stats.get(m), True)}' for m in METRICS)
      lines.append(f'  {arm:>15} f={f:<4} {cells}')
  return lines


def _pct(fraction: str) -> str:
  return f'{100 * float(fraction):g}%'


def markdown_tables(summary: Mapping[str, Any]) -> str:
  """The README's tables: each arm's means and intervals, the paired differences to the
  baseline, and the consistency shares of the loss (when the runs logged them)."""
  names = ' | '.join(METRICS)
  fractions = sorted({f for fs in summary['arms'].values() for f in fs}, key=float)
  lines = [f'| labelled | arm | n | {names} |', '| --- ' * (3 + len(METRICS)) + '|']
  for f in fractions:
    for arm, by_fraction in summary['arms'].items():
      if f in by_fraction:
        stats = by_fraction[f]
        n = max((s['n'] for s in stats.values() if s), default=0)
        cells = ' | '.join(_fmt_interval(stats.get(m)) for m in METRICS)
        lines.append(f'| {_pct(f)} | {arm} | {n} | {cells} |')
  if summary['paired']:
    lines += ['', f'| labelled | arm - {BASELINE} (paired) | {names} |']
    lines.append('| --- ' * (2 + len(METRICS)) + '|')
  for f in fractions:
    for arm, by_fraction in summary['paired'].items():
      if f in by_fraction:
        cells = ' | '.join(_fmt_interval(by_fraction[f].get(m), True) for m in METRICS)
        lines.append(f'| {_pct(f)} | {arm} | {cells} |')
  shares = summary.get('loss_shares') or {}
  if shares:
    terms = [t for t in schema.CONSISTENCY_TERMS
             if any(t in c['mean_share'] for fs in shares.values() for c in fs.values())]  # fmt: skip
    lines += [
      '',
      '| arm | labelled | seed | '
      + ' | '.join(terms)
      + ' | all | last: consistency / classification |',
    ]
    lines.append('| --- ' * (5 + len(terms)) + '|')
    for arm, by_fraction in shares.items():
      for f in sorted(by_fraction, key=float):
        cell = by_fraction[f]
        share = ' | '.join(f'{cell["mean_share"].get(t, 0.0):.3g}' for t in terms)
        ratio = 'n/a' if cell['final_ratio'] is None else f'{cell["final_ratio"]:.3g}'
        lines.append(f'| {arm} | {_pct(f)} | {cell["seed"]} | {share} | '
                     f'{cell["mean_share"]["total"]:.3g} | {ratio} |')  # fmt: skip
  return '\n'.join(lines) + '\n'


def _figure(panels: int):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
  return fig, axes[0]


def _save(fig, path: Any, title: str = '') -> None:
  import io  # pylint: disable=g-import-not-at-top

  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  plt.close(fig)
  fileio.atomic_write(path, buffer.getvalue())


def plot(summary: Mapping[str, Any], path: Any, title: str = '') -> None:
  """One panel per metric: mean against labelled fraction, one line per arm, 95% bands."""
  fig, axes = _figure(len(METRICS))
  for ax, metric in zip(axes, METRICS):
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
  axes[0].legend(fontsize=8)
  _save(fig, path, title)


def plot_curve(points: Sequence[Mapping[str, Any]], path: Any, title: str = '') -> None:
  """Each metric against the run length (one run per length)."""
  fig, axes = _figure(1)
  for metric in METRICS:
    xy = [(p['num_steps'], p[metric]) for p in points if p.get(metric) is not None]
    axes[0].plot([x for x, _ in xy], [y for _, y in xy], marker='o', label=metric)
  axes[0].set_xlabel('training steps (cosine schedule to the end)')
  axes[0].set_ylim(0, 1)
  axes[0].grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  _save(fig, path, title)


def loss_shares_table(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """{arm: {fraction: {'seed', 'mean_share': {term: share, 'total'}, 'final_ratio'}}} of
  each arm's lowest seed with a loss log.

  final_ratio: the weighted consistency terms over the classification loss
  (tubelet_cls, else cls) summed over the last logged window, the original study's
  ~1/1000 (exact: the window's shares are loss-weighted).
  """
  table: dict[str, dict[str, Any]] = {}
  for run in sorted(runs, key=lambda r: int(r['seed'])):
    log = run.get('loss_log')
    if not log or not log.get('step'):
      continue
    cell = table.setdefault(run['arm'], {})
    f = fraction_key(run['fraction'])
    if f in cell:
      continue
    cls_key = 'tubelet_cls' if 'tubelet_cls' in log else 'cls'
    shares = [log.get(f'share_{t}', [None])[-1] for t in schema.CONSISTENCY_TERMS]
    weighted = sum(_defined(shares)) * (log['loss'][-1] or 0.0)
    cls = log.get(cls_key, [None])[-1]
    cell[f] = {
      'seed': int(run['seed']),
      'mean_share': log['mean_share'],
      'final_ratio': weighted / cls if cls else None,
      'classification_term': cls_key,
    }
  return table


def loss_share_lines(table: Mapping[str, Any]) -> list[str]:
  lines = ['consistency share of the loss (weighted terms / loss, summed over training); '
           'last window: weighted consistency / classification loss']  # fmt: skip
  for arm, fractions in table.items():
    for f, cell in fractions.items():
      shares = ' '.join(f'{t}={v:.3g}' for t, v in cell['mean_share'].items())
      ratio = 'n/a' if cell['final_ratio'] is None else f'{cell["final_ratio"]:.3g}'
      lines.append(f'  {arm:>15} f={f:<4} seed {cell["seed"]}: {shares}  ratio {ratio}')
  return lines


def plot_loss_shares(runs: Sequence[Mapping[str, Any]], path: Any, seed: int) -> None:
  """The summed consistency share of the loss over training, one panel per fraction,
  one line per arm, for `seed`."""
  logged = [r for r in runs if int(r['seed']) == seed and r.get('loss_log')]
  fractions = sorted({float(r['fraction']) for r in logged})
  if not fractions:
    return
  fig, axes = _figure(len(fractions))
  for ax, fraction in zip(axes, fractions):
    for run in (r for r in logged if float(r['fraction']) == fraction):
      log = run['loss_log']
      total = [
        sum(_defined([log.get(f'share_{t}', [None] * len(log['step']))[i]
                      for t in schema.CONSISTENCY_TERMS]))
        for i in range(len(log['step']))
      ]  # fmt: skip
      ax.plot(log['step'], total, label=run['arm'])
    ax.set_title(f'labelled share {fraction:g}', fontsize=9)
    ax.set_xlabel('step')
    ax.set_ylabel('consistency share of the loss')
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  _save(fig, path, f'seed {seed}: weighted consistency terms / total loss')


# ------------------------------------------------------------------------------- main


def parse_plan(fractions, arms, seeds) -> tuple[list[float], list[str], list[int]]:

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
    if FLAGS.curve_steps:
      learning_curve(FLAGS.config)
    else:
      study(FLAGS.config)


def study_settings(base, num_steps: int) -> dict[str, Any]:
  """What makes two studies' runs comparable; a run made with other settings is not reused."""
  return {
    'num_steps': int(num_steps),
    'image_size': FLAGS.image_size,
    'videos_per_class': FLAGS.videos_per_class,
    'teacher_ema': FLAGS.teacher_ema,
    'labeled_per_batch': FLAGS.labeled_per_batch,
    'batch_size': int(base.train.batch_size),
    'synthetic': base.synthetic.to_dict(),
    'tubelet_linking': {k: base.eval.tubelets[k] for k in ACT_LINKING},
    'tubelet_finer_stage': bool(base.model.get('tubelet_finer_stage', False)),
  }


# The linking options a run made before they existed was evaluated with: their defaults, ACT's.
ACT_LINKING = {
  k: getattr(tubelets.TubeletLinkingConfig(), k) for k in ('frame_weighting', 'overlap_weight')
}


def comparable_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
  """`settings`, those written before a key existed with what their runs used: ACT's
  linking, a head without the finer stage."""
  return {'tubelet_linking': dict(ACT_LINKING), 'tubelet_finer_stage': False, **(settings or {})}


def _set_up_local_caches() -> str:
  """Checks that --cache_dir and --compilation_cache are local, turns on JAX's persistent
  compilation cache there, and returns the data cache folder."""
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  for name in ('cache_dir', 'compilation_cache'):
    if fileio.is_remote(getattr(FLAGS, name)):
      raise schema.ConfigError(
        f'--{name} {getattr(FLAGS, name)} is a bucket URL; it must be a local folder (the '
        'synthetic videos are rendered and read with OpenCV, JAX caches compiled steps locally)'
      )
  if FLAGS.compilation_cache:
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  return FLAGS.cache_dir


def _checked_plan(plan, configs, workdir) -> None:
  """Every run's config is valid and its workdir free, before anything trains."""
  from stconsist_jax.training import workdir_lock  # pylint: disable=g-import-not-at-top

  for arm, fraction, seed in plan:
    schema.validate(configs(arm, fraction, seed))
    workdir_lock.check_not_locked(workdir / run_name(arm, fraction, seed))


def study(base) -> dict[str, Any]:
  """Checks the plan and every run's config first, then runs, summarizes and plots."""
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.synthetic import prepared  # pylint: disable=g-import-not-at-top

  cache_dir = _set_up_local_caches()
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

  _checked_plan(plan, configs, workdir)
  prepared.use_synthetic(base, cache_dir)
  settings = study_settings(base, FLAGS.num_steps)
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
    'loss_shares': loss_shares_table(runs),
  }
  fileio.atomic_write(out / 'summary.json', json.dumps(summary, indent=1))
  title = f'synthetic benchmark, {FLAGS.num_steps} steps, {len(seeds)} seeds (95% t-intervals)'
  plot(summary, out / 'study.png', title)
  plot_loss_shares(runs, out / 'loss_shares.png', min(seeds))
  fileio.atomic_write(out / 'tables.md', markdown_tables(summary))
  print('\n'.join(report_lines(summary)))
  print('\n'.join(loss_share_lines(summary['loss_shares'])))
  print(f'wrote summary.json, tables.md, study.png and loss_shares.png in {out}')
  return summary


def parse_steps(values: Sequence[str]) -> list[int]:
  try:
    steps = sorted({int(v) for v in values})
  except ValueError:
    raise schema.ConfigError(f'--curve_steps must be integers, got {list(values)}') from None
  if not steps or steps[0] < 1:
    raise schema.ConfigError(f'--curve_steps must be positive step counts, got {list(values)}')
  return steps


def learning_curve(base) -> dict[str, Any]:
  """The fully labelled no-consistency arm trained for each of --curve_steps steps.

  One run per length, so each ends its own cosine schedule as a study run of that length
  would. Writes OUT/learning_curve.json and OUT/learning_curve.png; the runs live in
  OUT/learning_curve/<steps>/runs/ and are read back on a rerun.
  """
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.synthetic import prepared  # pylint: disable=g-import-not-at-top

  cache_dir = _set_up_local_caches()
  steps = parse_steps(FLAGS.curve_steps)
  seed = parse_plan(FLAGS.fractions, FLAGS.arms, FLAGS.seeds)[2][0]
  workdir = fileio.as_path(FLAGS.workdir) / 'learning_curve'
  out = fileio.as_path(FLAGS.out or FLAGS.workdir)
  plan = [(BASELINE, 1.0, seed)]
  sized = {
    n: sized_config(base, n, FLAGS.image_size, FLAGS.videos_per_class, FLAGS.labeled_per_batch)
    for n in steps
  }
  configs = {n: functools.partial(run_config, config) for n, config in sized.items()}
  for n in steps:
    _checked_plan(plan, configs[n], workdir / str(n))
  points = []
  for n, config in sized.items():
    prepared.use_synthetic(config, cache_dir)
    (run,) = run_study(
      plan,
      configs[n],
      run_one,
      out / 'learning_curve' / str(n),
      workdir / str(n),
      study_settings(config, n),
    )
    points.append({'num_steps': n, 'seconds': run['seconds'], **{m: run[m] for m in METRICS}})
  curve = {'arm': BASELINE, 'fraction': 1.0, 'seed': seed, 'points': points}
  fileio.atomic_write(out / 'learning_curve.json', json.dumps(curve, indent=1))
  plot_curve(points, out / 'learning_curve.png', f'{BASELINE}, all videos labelled, seed {seed}')
  for p in points:
    print(f'{p["num_steps"]:>6} steps ({p["seconds"]} s): {format_metrics(p)}')
  print(f'wrote {out / "learning_curve.json"} and {out / "learning_curve.png"}')
  return curve


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
