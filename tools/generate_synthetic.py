"""Writes a synthetic dataset in the UCF-101 or JHMDB layout, a twin of a real annotation
file, or a folder of your-own-style videos with CVAT and CSV annotations.

  python tools/generate_synthetic.py --output DIR [--seed 0] [--num_classes 6]
      [--annotated_classes 4] [--videos_per_class 4] [--min_frames 24] [--max_frames 60]
      [--multi_actor_prob 0.6 --max_actors 3]
  python tools/generate_synthetic.py --output DIR \
      --from_annotations pyannot.pkl --max_videos 20 [--num_workers N]
  python tools/generate_synthetic.py --dataset=jhmdb --output DIR [--videos_per_class 3]
      [--min_frames 12] [--max_frames 20] [--from_annotations JHMDB-GT.pkl --max_videos 20]
  python tools/generate_synthetic.py --dataset=own_videos --output DIR

The folder is what tools/build_dataset.py reads (UCF-101: --manual_dir=DIR; JHMDB:
--dataset=jhmdb --manual_dir=DIR; own videos: --annotations=DIR/cvat --format=cvat
--videos=DIR/videos, or DIR/boxes.csv with --format=csv). A problem with the inputs is one
line on stderr and exit status 2.
"""

import shutil
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from stconsist_jax.core import errors

from stconsist_jax.data import records as records_lib
from stconsist_jax.data.synthetic import generator as synthetic
from stconsist_jax.data.synthetic import jhmdb_twin
from stconsist_jax.data.synthetic import own_videos

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_enum(
    'dataset', 'ucf101', ['ucf101', 'jhmdb', 'own_videos'], 'Layout of the folder written.'
  )
  flags.DEFINE_string('output', None, 'Folder to write (must not exist or be empty).')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  flags.DEFINE_integer('num_classes', 6, 'Classes (shape x motion).')
  flags.DEFINE_integer('annotated_classes', 4, 'Classes with boxes.')
  flags.DEFINE_integer('videos_per_class', 4, 'Videos per class.')
  flags.DEFINE_integer('min_frames', 24, 'Shortest video.')
  flags.DEFINE_integer('max_frames', 60, 'Longest video.')
  flags.DEFINE_integer('clips_per_group', 1, 'Clips per group (gGG).')
  flags.DEFINE_float(
    'multi_actor_prob', 0.0, 'Share of videos with 2..max_actors actors, each with its tube.'
  )
  flags.DEFINE_integer('max_actors', 1, 'Most actors of a multi-actor video (1..3).')
  flags.DEFINE_string(
    'from_annotations',
    None,
    'Render videos following this real pyannot.pkl or UCF101v2-GT.pkl (--dataset=jhmdb: '
    'JHMDB-GT.pkl) instead.',
  )
  flags.DEFINE_integer('max_videos', 20, 'With --from_annotations (0: all videos).')
  flags.DEFINE_integer(
    'num_workers',
    None,
    'With --from_annotations: rendering processes (default: CPU count; 0: in this process).',
  )
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output folder.')
  flags.mark_flag_as_required('output')


def _generate() -> synthetic.SyntheticDataset:
  if FLAGS.from_annotations:
    return synthetic.generate_from_annotations(
      FLAGS.output,
      FLAGS.from_annotations,
      FLAGS.max_videos,
      FLAGS.seed,
      FLAGS.overwrite,
      FLAGS.num_workers,
    )
  spec = synthetic.SyntheticSpec(
    seed=FLAGS.seed,
    num_classes=FLAGS.num_classes,
    annotated_classes=FLAGS.annotated_classes,
    videos_per_class=FLAGS.videos_per_class,
    min_frames=FLAGS.min_frames,
    max_frames=FLAGS.max_frames,
    clips_per_group=FLAGS.clips_per_group,
    multi_actor_prob=FLAGS.multi_actor_prob,
    max_actors=FLAGS.max_actors,
  )
  return synthetic.generate(FLAGS.output, spec, FLAGS.overwrite)


def _generate_other() -> str:
  """Writes a JHMDB twin or own videos; returns what was written, in one line."""
  import pathlib  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(FLAGS.output)
  if out.exists() and any(out.iterdir()):
    if not FLAGS.overwrite:
      raise FileExistsError(f'{out} is not empty (pass --overwrite to replace it)')
    shutil.rmtree(out)
  if FLAGS.dataset == 'own_videos':
    truth = own_videos.generate(out, seed=FLAGS.seed)
    sizes = sorted({(v.width, v.height) for v in truth.values()})
    return (
      f'wrote {len(truth)} videos ({", ".join(f"{w}x{h}" for w, h in sizes)}) with CVAT and '
      f'CSV annotations to {out}'
    )
  if FLAGS.from_annotations:
    twin = jhmdb_twin.generate_from_annotations(
      out, FLAGS.from_annotations, FLAGS.max_videos, FLAGS.num_workers
    )
  else:
    spec = jhmdb_twin.JhmdbTwinSpec(
      seed=FLAGS.seed,
      videos_per_class=FLAGS.videos_per_class,
      min_frames=FLAGS.min_frames,
      max_frames=FLAGS.max_frames,
    )
    twin = jhmdb_twin.generate(out, spec)
  return f'wrote {len(twin.videos)} JHMDB-layout videos of 21 classes, 3 splits, to {twin.root}'


def main(argv: Sequence[str]) -> int:
  """Writes the folder; a problem with the inputs is one line on stderr, status 2."""
  del argv
  if FLAGS.dataset != 'ucf101':
    try:
      print(_generate_other())
    except (OSError, records_lib.DataFileError, ValueError) as e:  # Inputs, not bugs.
      print(f'error: {errors.one_line(e)}', file=sys.stderr)
      return errors.EXIT_USER_ERROR
    return 0
  try:
    ds = _generate()
  except (OSError, records_lib.DataFileError, synthetic.SpecError) as e:  # Inputs, not bugs.
    print(f'error: {e}', file=sys.stderr)
    return errors.EXIT_USER_ERROR
  annotated = sum(bool(r.tubes) for r in ds.records.values())
  print(
    f'wrote {len(ds.records)} videos ({annotated} annotated) of '
    f'{len(ds.class_names)} classes to {ds.root}'
  )
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
