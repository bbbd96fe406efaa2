"""Builds the `ucf101_stconsist` TFDS dataset from a UCF-101 folder (or a synthetic one).

  python tools/build_dataset.py --manual_dir DIR --data_dir OUT [--split 1]
      [--frame_size 128] [--num_workers N] [--jpeg_quality 90] [--overwrite]

DIR holds UCF-101/, ucfTrainTestlist/ and pyannot.pkl (or UCF101v2-GT.pkl). The
dataset goes to OUT/ucf101_stconsist/<config>/1.0.0 with build_report.json beside it.
An existing build of the same DIR is reused; one of another source is refused unless
--overwrite. A problem with the inputs is one line on stderr and exit status 2.
"""

import sys
from typing import TextIO
from collections.abc import Sequence

from absl import app
from absl import flags

from stconsist_jax.core import errors


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_string('manual_dir', None, 'The downloaded UCF-101 folder.')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir to write to.')
  flags.DEFINE_enum('split', '1', ['1', '2', '3'], 'Official split.')
  flags.DEFINE_integer('frame_size', 128, 'Stored frame size (square).')
  flags.DEFINE_integer(
    'num_workers', None, 'Decoding processes (default: CPU count, max 16; 0: in-process).'
  )
  flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality of stored frames.')
  flags.DEFINE_bool(
    'overwrite',
    False,
    'Rebuild a dataset already in --data_dir even if it was built from '
    'another source (the old one stays until the new one is complete).',
  )
  flags.mark_flags_as_required(['manual_dir', 'data_dir'])


def run(
  manual_dir: str,
  data_dir: str,
  split: int = 1,
  frame_size: int = 128,
  num_workers: int | None = None,
  jpeg_quality: int = 90,
  overwrite: bool = False,
  out: TextIO | None = None,
  err: TextIO | None = None,
) -> int:
  """Builds the dataset and prints a summary; returns the exit status.

  Problems with the inputs (`errors.UserError`) are one line on `err` (with
  the download instructions for a wrong manual dir) and `errors.EXIT_USER_ERROR`.
  """
  out, err = out or sys.stdout, err or sys.stderr
  # Imported here so the decoding worker processes, which re-import this script,
  # start without TensorFlow.
  from stconsist_jax.data.ucf101 import manual_dir as manual_dir_lib  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.ucf101 import dataset_build  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.ucf101 import tfds_builder  # pylint: disable=g-import-not-at-top

  try:
    builder = dataset_build.build(
      manual_dir, data_dir, split, frame_size, num_workers, jpeg_quality, overwrite=overwrite
    )
  except errors.UserError as e:
    print(f'error: {e}', file=err)
    if isinstance(e, manual_dir_lib.ManualDirError):
      print(e.instructions, file=err, end='')
    return errors.EXIT_USER_ERROR
  report = tfds_builder.read_report(builder)
  print(f'dataset: {builder.data_dir}', file=out)
  print(f'written: {report["videos_written"]}  skipped: {report["videos_skipped"]}', file=out)
  print(
    'videos/s: ' + ', '.join(f'{k} {v:.2f}' for k, v in report['videos_per_second'].items()),
    file=out,
  )
  if report.get('notes'):
    print('notes: ' + ', '.join(f'{k} {v}' for k, v in sorted(report['notes'].items())), file=out)
  absent = report.get('annotated_classes_without_tubes')
  if absent:
    print(f'annotated classes without tubes here: {len(absent)} ({", ".join(absent)})', file=out)
  return 0


def main(argv: Sequence[str]) -> int:
  del argv
  return run(
    FLAGS.manual_dir,
    FLAGS.data_dir,
    int(FLAGS.split),
    FLAGS.frame_size,
    FLAGS.num_workers,
    FLAGS.jpeg_quality,
    FLAGS.overwrite,
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
