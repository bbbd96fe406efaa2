"""Builds a TFDS dataset: UCF-101, JHMDB-21, or your own annotated videos.

  UCF-101 (UCF-101/, ucfTrainTestlist/, pyannot.pkl or UCF101v2-GT.pkl in DIR):
  python tools/build_dataset.py --manual_dir DIR --data_dir OUT [--split 1]
      [--frame_size 128] [--num_workers N] [--jpeg_quality 90] [--overwrite]

  JHMDB-21 (JHMDB-GT.pkl and Frames/<class>/<video>/00001.png in DIR), split 1, 2 or 3:
  python tools/build_dataset.py --dataset=jhmdb --manual_dir DIR --data_dir OUT [--split 1]

  Your own videos (docs/own_videos.md): CVAT "CVAT for video 1.1" exports (a file or a
  folder of them), a CSV `video,frame,actor_id,label,x1,y1,x2,y2`, or an ACT pickle:
  python tools/build_dataset.py --annotations=FILE_OR_DIR --format=cvat|csv|act \
      --videos=DIR --name=NAME --data_dir OUT [--train_list=F] [--test_list=F]
      [--test_fraction=0.2] [--split_seed=0] [--coords=pixels|normalized] [--first_frame=0]

The dataset goes to OUT/<name>/split<N>_<frame_size>/1.0.0 (UCF-101: OUT/ucf101_stconsist/)
with build_report.json beside it: what was written and skipped (missing or corrupt videos
counted by kind) and the annotation readers' bad records. An existing build of the same
inputs is reused; one of other inputs is refused unless --overwrite. A problem with the
inputs is one line on stderr and exit status 2.
"""

import sys
from typing import Any, TextIO
from collections.abc import Sequence

from absl import app
from absl import flags

from stconsist_jax.core import errors


FLAGS = flags.FLAGS
DATASETS = ('ucf101', 'jhmdb')


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_enum('dataset', 'ucf101', DATASETS, 'Built-in dataset read from --manual_dir.')
  flags.DEFINE_string('manual_dir', None, 'The downloaded UCF-101 or JHMDB folder.')
  flags.DEFINE_string('data_dir', None, 'TFDS data dir to write to.')
  flags.DEFINE_enum('split', '1', ['1', '2', '3'], 'Official split (yours: 1).')
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
  # Your own videos.
  flags.DEFINE_string('annotations', None, 'Annotation file or folder (CVAT: one XML per video).')
  flags.DEFINE_enum('format', None, ['act', 'cvat', 'csv'], 'Format of --annotations.')
  flags.DEFINE_string('videos', None, 'Folder of the videos (files, or folders of frames).')
  flags.DEFINE_string('name', None, 'Dataset name (default: from --annotations).')
  flags.DEFINE_enum('coords', 'pixels', ['pixels', 'normalized'], 'CSV box coordinates.')
  flags.DEFINE_enum('first_frame', '0', ['0', '1'], "Number of a video's first frame in the CSV.")
  flags.DEFINE_string('train_list', None, 'CVAT/CSV: file of training video names.')
  flags.DEFINE_string('test_list', None, 'CVAT/CSV: file of test video names.')
  flags.DEFINE_float(
    'test_fraction', 0.2, 'CVAT/CSV without lists: share of each class held out for test.'
  )
  flags.DEFINE_integer('split_seed', 0, 'CVAT/CSV without lists: seed of the held-out choice.')
  flags.DEFINE_enum(
    'cvat_names',
    'source',
    ['source', 'task', 'file'],
    "CVAT: a video's name is its uploaded file's name (source), the task's, or the XML's.",
  )
  flags.DEFINE_enum(
    'frame_source',
    'auto',
    ['auto', 'video_files', 'jpeg_folders'],
    '--videos holds video files or one folder of numbered frames per video (auto: detect).',
  )
  flags.mark_flags_as_required(['data_dir'])


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
  """Builds UCF-101 and prints a summary; returns the exit status.

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
  except Exception as e:  # pylint: disable=broad-except
    return _no_space(e, data_dir, err)
  _print_summary(tfds_builder.read_report(builder), builder, out)
  return 0


def _no_space(e: Exception, data_dir: str, err: TextIO) -> int:
  """A full disk as one line and `errors.EXIT_NO_SPACE`; any other error is raised."""
  if not errors.is_out_of_space(e):
    raise e
  # TFDS removes its incomplete.* folder on the way out: nothing half-built is left.
  print(
    f'error: no space left on the disk of {data_dir} ({errors.describe(e)}); the partial '
    'build was removed: free space and rerun the same command',
    file=err,
  )
  return errors.EXIT_NO_SPACE


def _print_summary(report: dict[str, Any], builder: Any, out: TextIO) -> None:
  print(f'dataset: {builder.data_dir}', file=out)
  print(f'written: {report["videos_written"]}  skipped: {report["videos_skipped"]}', file=out)
  if report.get('videos_skipped_by_kind'):
    kinds = report['videos_skipped_by_kind']
    print('skipped by kind: ' + ', '.join(f'{k} {v}' for k, v in kinds.items()), file=out)
  print(
    'videos/s: ' + ', '.join(f'{k} {v:.2f}' for k, v in report['videos_per_second'].items()),
    file=out,
  )
  if report.get('notes'):
    print('notes: ' + ', '.join(f'{k} {v}' for k, v in sorted(report['notes'].items())), file=out)
  absent = report.get('annotated_classes_without_tubes')
  if absent:
    print(f'annotated classes without tubes here: {len(absent)} ({", ".join(absent)})', file=out)


def run_described(
  data_dir: str,
  *,
  dataset: str = 'own',
  manual_dir: str | None = None,
  annotations: str | None = None,
  fmt: str | None = None,
  videos: str | None = None,
  split: int = 1,
  frame_size: int = 128,
  num_workers: int | None = None,
  jpeg_quality: int = 90,
  overwrite: bool = False,
  out: TextIO | None = None,
  err: TextIO | None = None,
  **read_options: Any,
) -> int:
  """Builds JHMDB-21 (`dataset='jhmdb'`, from `manual_dir`) or your own annotated videos
  (`annotations` of format `fmt` over `videos`; `read_options` as
  `annotated_build.read_inputs`), prints a summary and the training command; returns the
  exit status (`errors.EXIT_USER_ERROR` and one line on `err` for unusable inputs)."""
  out, err = out or sys.stdout, err or sys.stderr
  from stconsist_jax.data.ucf101 import annotated_build  # pylint: disable=g-import-not-at-top
  from stconsist_jax.data.ucf101 import tfds_builder  # pylint: disable=g-import-not-at-top

  try:
    if dataset == 'jhmdb':
      if not manual_dir:
        raise errors.UserError('--dataset=jhmdb needs --manual_dir (JHMDB-GT.pkl and Frames/)')
      ready = annotated_build.jhmdb_inputs(manual_dir)
    else:
      missing = [
        f for f, v in (('annotations', annotations), ('format', fmt), ('videos', videos)) if not v
      ]
      if missing:
        raise errors.UserError(
          f'your own videos need --{", --".join(missing)} (docs/own_videos.md)'
        )
      ready = annotated_build.read_inputs(fmt, annotations, videos, **read_options)
    builder = annotated_build.build(
      ready,
      data_dir,
      split=split,
      frame_size=frame_size,
      num_workers=num_workers,
      jpeg_quality=jpeg_quality,
      overwrite=overwrite,
    )
  except errors.user_error_types() as e:
    print(f'error: {errors.one_line(e)}', file=err)
    return errors.EXIT_USER_ERROR
  except Exception as e:  # pylint: disable=broad-except
    return _no_space(e, data_dir, err)
  report = tfds_builder.read_report(builder)
  _print_summary(report, builder, out)
  print(f'annotations: {ready.report.summary()} (build_report.json: annotation_problems)', file=out)
  d = ready.description
  print(
    f'{len(d.class_names)} classes; train with: python launch.py '
    f'--config=configs/{"jhmdb_r3d34" if dataset == "jhmdb" else "own_videos"}.py '
    f'--workdir=workdirs/{d.name} --config.data.name={d.name} --config.data.data_dir={data_dir} '
    f'--config.data.split={split} --config.data.frame_size={frame_size} '
    f'--config.model.num_classes={len(d.class_names)}',
    file=out,
  )
  return 0


def main(argv: Sequence[str]) -> int:
  del argv
  if FLAGS.annotations or FLAGS.format or FLAGS.videos or FLAGS.dataset == 'jhmdb':
    return run_described(
      FLAGS.data_dir,
      dataset=FLAGS.dataset if FLAGS.dataset == 'jhmdb' else 'own',
      manual_dir=FLAGS.manual_dir,
      annotations=FLAGS.annotations,
      fmt=FLAGS.format,
      videos=FLAGS.videos,
      split=int(FLAGS.split),
      frame_size=FLAGS.frame_size,
      num_workers=FLAGS.num_workers,
      jpeg_quality=FLAGS.jpeg_quality,
      overwrite=FLAGS.overwrite,
      name=FLAGS.name,
      coords=FLAGS.coords,
      first_frame=int(FLAGS.first_frame),
      train_list=FLAGS.train_list,
      test_list=FLAGS.test_list,
      test_fraction=FLAGS.test_fraction,
      split_seed=FLAGS.split_seed,
      cvat_names=FLAGS.cvat_names,
      frame_source=FLAGS.frame_source,
    )
  if not FLAGS.manual_dir:
    print(
      'error: give --manual_dir (UCF-101 or, with --dataset=jhmdb, JHMDB) or '
      '--annotations, --format and --videos (your own videos)',
      file=sys.stderr,
    )
    return errors.EXIT_USER_ERROR
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
