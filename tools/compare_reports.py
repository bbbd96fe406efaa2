"""Prints several runs' evaluation reports side by side, in the study's table 3 layout.

Columns: run, model, freeze_backbone, accuracy (video top-1), mean IoU, frame-mAP, plus the
clip accuracy and checkpoint step. Each argument is a report.json, an eval/<step>/
directory, or a training workdir (its newest eval/<step>/report.json is used), local or
a bucket URL (gs://...). Only finished report directories count: those with the commit
file that evaluation writes last; an interrupted evaluation's directory is skipped
(named directly, it is refused). A JSON file that is not an evaluation report (e.g. a
prediction file) or a path without one is refused in one line. Reports measured on
another dataset or split, under another frame-AP rule or on other frames are still
listed, after one warning line per difference on stderr.

  python tools/compare_reports.py workdirs/model1 gs://bucket/model2 [--format=markdown]
"""

import json
import math
import os
import re
import sys
from typing import Any
from collections.abc import Sequence

from absl import app
from absl import flags
from etils import epath


from stconsist_jax.core import errors
from stconsist_jax.core import fileio

FLAGS = flags.FLAGS
flags.DEFINE_enum('format', 'text', ['text', 'markdown', 'csv'], 'Output table format.')

COLUMNS = (
  ('run', 'run'),
  ('model', 'model'),
  ('freeze_backbone', 'freeze_backbone'),
  ('accuracy', 'video_accuracy'),
  ('mean IoU', 'mean_iou'),
  ('frame-mAP', 'frame_map'),
  ('clip acc', 'clip_accuracy'),
  ('step', 'checkpoint_step'),
)


def _step_order(path: epath.Path):
  return (0, int(path.name), '') if path.name.isdigit() else (1, 0, path.name)


def _finished_reports(eval_dir: epath.Path) -> list[epath.Path]:
  """The eval/<step> directories holding a report.json and their commit file, in order."""
  found = [
    p for p in eval_dir.iterdir() if fileio.is_committed(p) and (p / 'report.json').is_file()
  ]
  return sorted(found, key=_step_order)


def _unfinished(directory: epath.Path) -> FileNotFoundError:
  return FileNotFoundError(
    f'{directory} holds no finished report (no {fileio.COMMIT_FILENAME} file: its '
    'evaluation was interrupted, or predates commit files); run the evaluation again'
  )


def find_report(path: fileio.PathLike) -> epath.Path:
  """A report.json file from a file, an eval/<step> dir or a workdir (local or URL)."""
  path = fileio.as_path(path)
  if path.is_file():
    return path
  if (path / 'report.json').is_file():
    if not fileio.is_committed(path):
      raise _unfinished(path)
    return path / 'report.json'
  eval_dir = path / 'eval'
  if eval_dir.is_dir():
    finished = _finished_reports(eval_dir)
    if finished:
      return finished[-1] / 'report.json'
    if any((p / 'report.json').is_file() for p in eval_dir.iterdir()):
      raise _unfinished(eval_dir)
  raise FileNotFoundError(
    f'no report.json found at {path} (expected a report.json, an '
    'eval/<step>/ directory or a workdir with eval/<step>/report.json)'
  )


class NotAReportError(ValueError):
  """A file that is not an evaluation's report.json (one line)."""


# Fields every report.json that evaluation writes has (a prediction file has neither).
REPORT_KEYS = ('checkpoint_step', 'video_accuracy')


def load_report(path: fileio.PathLike) -> dict[str, Any]:
  """The report at `path` (see `find_report`), with its `run` name.

  Raises:
    FileNotFoundError: no (finished) report there.
    NotAReportError: the file is not JSON, or not an evaluation report.
  """
  report_path = find_report(path)
  try:
    report = json.loads(report_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise NotAReportError(f'{report_path}: not valid JSON ({e})') from None
  missing = [k for k in REPORT_KEYS if not isinstance(report, dict) or k not in report]
  if missing:
    raise NotAReportError(
      f'{report_path} is not an evaluation report (it has no {" or ".join(missing)}); '
      'expected the report.json that evaluation writes'
    )
  report.setdefault('run', report.get('run_name') or _run_name(report_path))
  return report


def _run_name(report_path: epath.Path) -> str:
  # .../<workdir>/eval/<step>/report.json -> <workdir>
  if not fileio.is_remote(report_path):
    report_path = fileio.as_path(os.path.abspath(report_path))
  parts = report_path.parts
  if len(parts) >= 4 and parts[-3] == 'eval':
    return parts[-4]
  return report_path.parent.name


# `protocol.data` of a report: '<dataset> split <n>, frames stored at <size>px'.
_DATA = re.compile(r'(?P<dataset>\S+) split (?P<split>\S+),')


def measured_how(report: dict[str, Any]) -> dict[str, Any]:
  """What makes two reports' numbers comparable; None where a report does not say."""
  protocol = report.get('protocol') or {}
  data = _DATA.match(str(protocol.get('data', '')))
  return {
    'dataset': data and data['dataset'],
    'split': data and data['split'],
    'frame-AP rule': report.get('frame_map_protocol'),
    'frames scored': protocol.get('frames_scored', report.get('frame_map_frames')),
  }


def differences(reports: Sequence[dict[str, Any]]) -> list[str]:
  """One warning line per `measured_how` field on which the reports disagree."""
  how = [measured_how(r) for r in reports]
  lines = []
  for field in how[0] if how else ():
    said = [(r['run'], h[field]) for r, h in zip(reports, how) if h[field] is not None]
    if len({value for _, value in said}) > 1:
      lines.append(
        f'warning: these reports differ in {field} '
        f'({"; ".join(f"{run}: {value}" for run, value in said)}): '
        'their numbers are not comparable'
      )
  return lines


def format_value(key: str, value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  if key in ('video_accuracy', 'clip_accuracy', 'frame_map'):
    return f'{100 * value:.1f}%'
  if key == 'mean_iou':
    return f'{value:.3f}'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  return str(value)


def table_rows(reports: Sequence[dict[str, Any]]) -> list[list[str]]:
  return [[format_value(key, r.get(key)) for _, key in COLUMNS] for r in reports]


def render(reports: Sequence[dict[str, Any]], fmt: str = 'text') -> str:
  header = [title for title, _ in COLUMNS]
  rows = table_rows(reports)
  if fmt == 'csv':
    return '\n'.join(','.join(r) for r in [header] + rows)
  if fmt == 'markdown':
    lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(lines)
  widths = [max(len(x) for x in col) for col in zip(header, *rows)]

  def fmt_row(r):
    return '  '.join(x.ljust(w) for x, w in zip(r, widths)).rstrip()

  return '\n'.join(
    [fmt_row(header), fmt_row(['-' * w for w in widths])] + [fmt_row(r) for r in rows]
  )


def main(argv: Sequence[str], out: Any | None = None) -> None:
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more report.json files, eval/<step>/ dirs or workdirs')
  with errors.user_errors(FileNotFoundError, NotAReportError):
    reports = [load_report(p) for p in paths]
  for line in differences(reports):
    print(line, file=sys.stderr)
  print(render(reports, FLAGS.format), file=out or sys.stdout)


if __name__ == '__main__':
  app.run(main)
