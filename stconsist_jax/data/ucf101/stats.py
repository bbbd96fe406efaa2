"""Per-class statistics of a UCF101-24 annotation file (pyannot.pkl or UCF101v2-GT.pkl).

  python -m stconsist_jax.data.ucf101.stats --annotations pyannot.pkl [--json]

Columns: videos, tubes, boxes over all tubes, boxes of the first tube of each video
(what the original study counted), annotated frames (distinct (video, frame) pairs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from absl import app
from absl import flags

from stconsist_jax.core import errors
from stconsist_jax.data import records as records_lib
from stconsist_jax.data.ucf101 import annotations as ann

COLUMNS = ('videos', 'tubes', 'boxes', 'first_tube_boxes', 'annotated_frames')


def class_stats(records: Iterable[records_lib.VideoRecord]) -> dict[str, dict[str, int]]:
  """{class name: {column: count}}, sorted by class name, plus a 'TOTAL' row."""
  table: dict[str, dict[str, int]] = {}
  for r in records:
    row = table.setdefault(r.class_name, dict.fromkeys(COLUMNS, 0))
    frames = set()
    for t in r.tubes:
      frames.update(range(t.start, t.end))
    row['videos'] += 1
    row['tubes'] += len(r.tubes)
    row['boxes'] += sum(t.num_boxes for t in r.tubes)
    row['first_tube_boxes'] += r.tubes[0].num_boxes if r.tubes else 0
    row['annotated_frames'] += len(frames)
  out = {c: table[c] for c in sorted(table)}
  out['TOTAL'] = {k: sum(row[k] for row in table.values()) for k in COLUMNS}
  return out


def format_table(stats: dict[str, dict[str, int]]) -> str:
  width = max(len(c) for c in stats)
  header = f'{"class":<{width}}  ' + '  '.join(f'{c:>16}' for c in COLUMNS)
  lines = [header, '-' * len(header)]
  for name, row in stats.items():
    if name == 'TOTAL':
      lines.append('-' * len(header))
    lines.append(f'{name:<{width}}  ' + '  '.join(f'{row[c]:>16,d}' for c in COLUMNS))
  return '\n'.join(lines)


_ANNOTATIONS = flags.DEFINE_string(
  'annotations', None, 'pyannot.pkl or UCF101v2-GT.pkl to summarize.'
)
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')


def main(argv: Sequence[str]) -> None:
  del argv
  # A missing, refused or broken file is one line and exit status 2, as in the tools.
  with errors.user_errors(FileNotFoundError, records_lib.DataFileError):
    records = ann.load_annotations(_ANNOTATIONS.value)
  stats = class_stats(records.values())
  print(json.dumps(stats, indent=1) if _JSON.value else format_table(stats))


if __name__ == '__main__':
  flags.mark_flag_as_required('annotations')
  app.run(main)
