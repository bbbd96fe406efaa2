"""Full-scale rehearsal of the real-data path: check your setup before you rent accelerators.

  python tools/rehearse.py --annotations=pyannot.pkl --workdir=rehearsal \
      [--frame_size=128] [--config=configs/model2.py] [--train_steps=20] [--batch_size=2] \
      [--eval_videos=4] [--eval_frame_stride=8] [--max_videos=0] [--num_workers=N]
  python tools/rehearse.py --dataset=jhmdb --annotations=JHMDB-GT.pkl --workdir=rehearsal_jhmdb

Makes a synthetic twin of UCF-101 split 1 from real annotations (every annotated video
at 320x240 with its real length, rendered in parallel processes; with --dataset=jhmdb a
twin of JHMDB-21, frames folders and JHMDB-GT.pkl, trained with configs/jhmdb_r3d34.py),
builds it with the TFDS builder at the chosen size, trains the named config for a few
steps from scratch,
evaluates on a bounded subset, and prints each stage's wall time, disk use and peak
memory, with the projected time of a full evaluation. Every stage is the command a user
runs on the real data, started as a subprocess; a failing stage stops the rehearsal
with its output. Stages whose output exists are reused (delete WORKDIR to redo them).
WORKDIR and the annotations are local: the twin is rendered with OpenCV and the
rehearsal measures this machine's disk use. Only a finished evaluation report (its
commit file written) is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app
from absl import flags

from stconsist_jax.core import errors

from stconsist_jax.apps import cli
from stconsist_jax.core import fileio

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def define_flags() -> None:
  """The command line's flags (defined only when run, so importing defines none)."""
  flags.DEFINE_enum('dataset', 'ucf101', ['ucf101', 'jhmdb'], 'Which dataset to rehearse.')
  flags.DEFINE_string(
    'annotations',
    None,
    'A real UCF101-24 pyannot.pkl or UCF101v2-GT.pkl (--dataset=jhmdb: JHMDB-GT.pkl).',
  )
  flags.DEFINE_string(
    'workdir', 'workdirs/rehearsal', 'Holds the twin, its TFDS build, the run and rehearsal.json.'
  )
  flags.DEFINE_integer('frame_size', 128, 'Stored frame size of the build.')
  flags.DEFINE_string(
    'config', None, 'Config file to train (default: configs/model2.py; JHMDB: jhmdb_r3d34.py).'
  )
  flags.DEFINE_integer('train_steps', 20, 'Training steps.')
  flags.DEFINE_integer('batch_size', 2, 'Global training batch.')
  flags.DEFINE_integer('eval_videos', 4, 'eval.max_videos of the bounded eval.')
  flags.DEFINE_integer(
    'eval_frame_stride',
    8,
    'eval.frame_stride and eval.tube_frame_stride '
    'of the bounded eval (the projection is for stride 1).',
  )
  flags.DEFINE_integer('max_videos', 0, 'Videos of the twin (0: every annotated video).')
  flags.DEFINE_integer('num_workers', None, 'Processes for rendering and building (default: CPUs).')


FLAGS = flags.FLAGS


@dataclasses.dataclass
class StageResult:
  name: str
  command: list[str]
  seconds: float
  peak_rss_mb: float  # the largest process of the stage (workers included)
  disk_mb: float  # size of the stage's output directory
  reused: bool = False


def disk_mb(path: pathlib.Path) -> float:
  if not path.exists():
    return 0.0
  return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 2**20


def run_stage(
  name: str, command: Sequence[str], output: pathlib.Path, log: pathlib.Path
) -> StageResult:
  """Runs `command` with its output in `log`; its time and its largest process's RSS."""
  print(f'[rehearse] {name}: {" ".join(command)}', flush=True)
  t0 = time.time()
  with open(log, 'w') as out:
    proc = subprocess.Popen(
      list(command),
      cwd=REPO_ROOT,
      stdout=out,
      stderr=subprocess.STDOUT,
      env=dict(os.environ, PYTHONUNBUFFERED='1'),
    )
    _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.time() - t0
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    tail = ''.join(log.read_text().splitlines(keepends=True)[-25:])
    errors.fail(
      f'[rehearse] stage {name} failed (exit {code}) after {seconds:.0f} s; the end '
      f'of {log}:\n{tail}'
    )
  # ru_maxrss is in KiB on Linux: the largest of the process and its waited-for children.
  return StageResult(name, list(command), seconds, usage.ru_maxrss / 1024, disk_mb(output))


def _tubelet_clips(lengths: Sequence[int], tubelet: tuple[int, int] | None) -> dict[str, int]:
  """{'tubelet_clips': clips of K frames every s frames over videos of `lengths`} for
  `tubelet` = (K, s); {} without a tubelet head."""
  if tubelet is None:
    return {}
  from stconsist_jax.core import clip_geometry  # pylint: disable=g-import-not-at-top

  k, stride = tubelet
  return {'tubelet_clips': sum(clip_geometry.num_tubelet_clips(n, k, stride) for n in lengths)}


def full_eval_passes(
  manual_dir: pathlib.Path, clips_per_video: int, tubelet: tuple[int, int] | None = None
) -> dict[str, int]:
  """Clips, annotated frames and whole-video clips a full evaluation of split 1 runs
  (and, for `tubelet` = (K, s), the tubelet head's clips every s frames)."""
  from stconsist_jax.data.ucf101 import split_lists  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.ucf101 import videos  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.ucf101 import annotations as ann  # pylint: disable=g-import-not-at-top

  records = ann.load_annotations(
    next(p for p in (manual_dir / 'pyannot.pkl', manual_dir / 'UCF101v2-GT.pkl') if p.exists())
  )
  test = [
    videos.strip_extension(p)
    for p in split_lists.read_split_list(manual_dir / 'ucfTrainTestlist' / 'testlist01.txt')
  ]
  frames = video_frames = 0
  lengths = []
  for path in test:
    record = records.get(path)
    if record is None or not record.tubes:
      continue
    annotated = set()
    for tube in record.tubes:
      annotated.update(range(tube.start, tube.end))
    frames += len(annotated)
    video_frames += record.num_frames
    lengths.append(record.num_frames)
  return {
    'videos': len(test),
    'clips': clips_per_video * len(test),
    'frames': frames,
    'video_clips': video_frames,
    **_tubelet_clips(lengths, tubelet),
  }


def jhmdb_full_eval_passes(
  twin: pathlib.Path, clips_per_video: int, tubelet: tuple[int, int] | None = None
) -> dict[str, int]:
  """As `full_eval_passes`, for split 1 of a JHMDB twin (every frame is annotated)."""
  from stconsist_jax.data.datasets import jhmdb  # pylint: disable=g-import-not-at-top

  description, _ = jhmdb.read_jhmdb(twin / jhmdb.GT_FILE)
  test = description.splits['split1'].test
  lengths = [description.videos[v].num_frames for v in test]
  return {
    'videos': len(test),
    'clips': clips_per_video * len(test),
    'frames': sum(lengths),
    'video_clips': sum(lengths),
    **_tubelet_clips(lengths, tubelet),
  }


def project_full_eval(report: dict, full: dict[str, int]) -> float | None:
  """Seconds of a full evaluation, scaled from the bounded one's per-clip times."""
  timing = report.get('timing') or {}
  counts = report.get('counts') or {}
  clips, frames = counts.get('num_clips'), counts.get('num_frames_scored')
  if not clips or 'clips_seconds' not in timing:
    return None
  total = timing['clips_seconds'] / clips * full['clips']
  if frames and 'frames_seconds' in timing:
    total += timing['frames_seconds'] / frames * full['frames']
  video_clips = counts.get('num_video_clips_scored')
  if video_clips and 'videos_seconds' in timing:
    total += timing['videos_seconds'] / video_clips * full['video_clips']
  if video_clips and 'tubelets_seconds' in timing and 'tubelet_clips' in full:
    total += timing['tubelets_seconds'] / video_clips * full['tubelet_clips']
  return total


def tubelet_setting(report: dict) -> tuple[int, int] | None:
  """(K, s) of a tubelet head's evaluation report, else None."""
  tubes = report.get('tubes') or {}
  if 'tubelets_seconds' not in (report.get('timing') or {}) or 'tubelet_frames' not in tubes:
    return None
  return int(tubes['tubelet_frames']), int(tubes['clip_every'])


def _fmt_seconds(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}'


def table(stages: Sequence[StageResult]) -> str:
  lines = ['| stage | wall time | peak RSS (largest process) | disk |', '| --- | --- | --- | --- |']
  for s in stages:
    note = ' (reused)' if s.reused else ''
    lines.append(
      f'| {s.name}{note} | {_fmt_seconds(s.seconds)} | {s.peak_rss_mb:,.0f} MB | '
      f'{s.disk_mb:,.0f} MB |'
    )
  return '\n'.join(lines)


def local_path(flag: str, value: str) -> pathlib.Path:
  """The absolute local path a flag names; a bucket URL is refused in one line."""
  if fileio.is_remote(value):
    errors.fail(
      f'error: --{flag} {value} is a bucket URL; the rehearsal renders videos with '
      'OpenCV and measures local disk use: give a local path'
    )
  return pathlib.Path(os.path.abspath(value))


def latest_finished_report(eval_dir: pathlib.Path) -> pathlib.Path:
  """report.json of the newest eval/<step>/ whose commit file was written."""
  reports = sorted(
    (p for p in eval_dir.glob('*/report.json') if fileio.is_committed(p.parent)),
    key=lambda p: p.stat().st_mtime,
  )
  if not reports:
    errors.fail(f'[rehearse] no finished evaluation report in {eval_dir}')
  return reports[-1]


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  is_jhmdb = FLAGS.dataset == 'jhmdb'
  if not FLAGS.annotations:
    errors.fail(
      'error: --annotations is required (a real '
      + ('JHMDB-GT.pkl)' if is_jhmdb else 'pyannot.pkl or UCF101v2-GT.pkl)')
    )
  annotations = local_path('annotations', FLAGS.annotations)
  if not annotations.is_file():
    errors.fail(f'error: --annotations {annotations} is not a file')
  root = local_path('workdir', FLAGS.workdir)
  root.mkdir(parents=True, exist_ok=True)
  twin = root / ('jhmdb_twin' if is_jhmdb else 'ucf101_twin')
  data_dir, run = root / 'tfds', root / 'run'
  size = FLAGS.frame_size
  py = sys.executable
  workers = [] if FLAGS.num_workers is None else [f'--num_workers={FLAGS.num_workers}']
  stages: list[StageResult] = []
  dataset = [f'--dataset={FLAGS.dataset}'] if is_jhmdb else []
  config = FLAGS.config or ('configs/jhmdb_r3d34.py' if is_jhmdb else 'configs/model2.py')

  generate = [
    py,
    'tools/generate_synthetic.py',
    *dataset,
    f'--output={twin}',
    f'--from_annotations={annotations}',
    f'--max_videos={FLAGS.max_videos}',
    *workers,
  ]
  build = [
    py,
    'tools/build_dataset.py',
    *dataset,
    f'--manual_dir={twin}',
    f'--data_dir={data_dir}',
    f'--frame_size={size}',
    *workers,
  ]
  overrides = [
    f'--config.data.data_dir={data_dir}',
    f'--config.data.frame_size={size}',
    f'--config.data.image_size={size}',
    '--config.init_from=',
    f'--config.train.batch_size={FLAGS.batch_size}',
    f'--config.eval.batch_size={FLAGS.batch_size}',
    f'--config.train.num_steps={FLAGS.train_steps}',
    f'--config.train.checkpoint_every={FLAGS.train_steps}',
    f'--config.train.log_every={max(1, FLAGS.train_steps // 4)}',
    f'--config.optimizer.warmup_steps={max(1, FLAGS.train_steps // 10)}',
    f'--config.loss.rampup_steps={FLAGS.train_steps}',
    f'--config.eval.max_videos={FLAGS.eval_videos}',
    f'--config.eval.frame_stride={FLAGS.eval_frame_stride}',
    f'--config.eval.tube_frame_stride={FLAGS.eval_frame_stride}',
  ]
  train = [py, 'launch.py', f'--config={config}', f'--workdir={run}', *overrides]
  evaluate = [*train, '--mode=eval']

  plan = [
    (
      'generate twin',
      generate,
      twin,
      (twin / ('JHMDB-GT.pkl' if is_jhmdb else 'pyannot.pkl')).exists(),
    ),
    (
      'TFDS build',
      build,
      data_dir,
      (data_dir / ('jhmdb' if is_jhmdb else 'ucf101_stconsist')).exists(),
    ),
    ('train', train, run, False),
    ('bounded eval', evaluate, run / 'eval', False),
  ]
  for name, command, output, done in plan:
    if done:
      print(f'[rehearse] {name}: reusing {output}', flush=True)
      stages.append(StageResult(name, list(command), 0.0, 0.0, disk_mb(output), reused=True))
      continue
    log = root / f'{name.replace(" ", "_")}.log'
    stages.append(run_stage(name, command, output, log))
    print(
      f'[rehearse] {name}: {_fmt_seconds(stages[-1].seconds)}, peak RSS '
      f'{stages[-1].peak_rss_mb:,.0f} MB, {stages[-1].disk_mb:,.0f} MB on disk',
      flush=True,
    )

  report_path = latest_finished_report(run / 'eval')
  report = json.loads(report_path.read_text())
  clips_per_video = int(report['protocol'].get('clips_per_video', 10))
  tubelet = tubelet_setting(report)
  full = (jhmdb_full_eval_passes if is_jhmdb else full_eval_passes)(twin, clips_per_video, tubelet)
  projected = project_full_eval(report, full)
  print('\n' + table(stages))
  print(
    f'\nbounded eval: {report["counts"].get("num_videos")} of {full["videos"]} test '
    f'videos, {report["counts"].get("num_clips")} clips, '
    f'{report["counts"].get("num_frames_scored")} annotated frames, '
    f'{report["counts"].get("num_video_clips_scored")} whole-video clips (strides '
    f'{FLAGS.eval_frame_stride})'
  )
  if projected is not None:
    print(
      f'projected full evaluation ({full["clips"]:,} clips + {full["frames"]:,} '
      f'annotated frames + {full["video_clips"]:,} whole-video clips, strides 1'
      + (
        f' + {full["tubelet_clips"]:,} tubelet clips, K {tubelet[0]} every {tubelet[1]} frames'
        if tubelet
        else ''
      )
      + f') on this machine: {_fmt_seconds(projected)}'
    )
  summary = {
    'stages': [dataclasses.asdict(s) for s in stages],
    'full_eval': full,
    'projected_full_eval_seconds': projected,
    'cpu_count': os.cpu_count(),
    'report': str(report_path),
  }
  fileio.atomic_write(root / 'rehearsal.json', json.dumps(summary, indent=1) + '\n')
  print(
    json.dumps(
      {
        'projected_full_eval_seconds': projected,
        'stage_seconds': {s.name: round(s.seconds, 1) for s in stages},
      }
    )
  )


if __name__ == '__main__':
  define_flags()
  # --config here is a file name passed on to launch.py, not a config flag of its own.
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, config_flags=()))
