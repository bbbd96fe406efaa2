"""Writes the labeled-video lists of the video-fraction protocol for a UCF-101 split list.

  python tools/make_label_lists.py --split_list=../shared/data/ucf101_24/trainlist01.txt \
      --fractions=0.1,0.2 --seed=0 --out_dir=data/label_lists --prefix=ucf24_split1

Each output `<prefix>_labeled_<percent>.txt` holds, one per line, round(fraction * N)
training videos of the N in the list: those of lowest hash keyed by `--seed`
(`label_protocols.lowest_share`). The lists are nested, every machine computes the same
ones, and `--config.data.labeled_videos=<file>` trains with one of them.
"""

import sys
from collections.abc import Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('split_list', None, 'A UCF-101 train split list (trainlist01.txt).')
  flags.DEFINE_list('fractions', ['0.1', '0.2'], 'Labeled fractions, each in (0, 1].')
  flags.DEFINE_integer('seed', 0, 'data.label_seed of the lists.')
  flags.DEFINE_string('out_dir', 'data/label_lists', 'Where the lists go.')
  flags.DEFINE_string('prefix', 'ucf24_split1', 'File name prefix.')
  flags.mark_flags_as_required(['split_list'])


def list_name(prefix: str, fraction: float) -> str:
  return f'{prefix}_labeled_{round(100 * fraction):02d}.txt'


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from stconsist_jax.data.pipeline import label_protocols  # pylint: disable=g-import-not-at-top

  names = label_protocols.read_video_list(FLAGS.split_list)
  for fraction in sorted(float(f) for f in FLAGS.fractions):
    kept = label_protocols.lowest_share(names, FLAGS.seed, fraction)
    path = f'{FLAGS.out_dir}/{list_name(FLAGS.prefix, fraction)}'
    label_protocols.write_video_list(path, kept)
    classes = {name.split('/')[0] for name in kept}
    print(
      f'{path}: {len(kept)} of {len(names)} videos ({len(kept) / len(names):.1%}), '
      f'{len(classes)} classes',
      file=sys.stdout,
    )


if __name__ == '__main__':
  define_flags()
  app.run(main)
