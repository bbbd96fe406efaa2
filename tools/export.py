"""Exports a trained detector (or a converted classifier) for runtimes without this project:
ONNX (onnxruntime), TF SavedModel (tf.saved_model.load) or StableHLO (jax.export).

  python tools/export.py --workdir=W [--step=latest|best|N] --format=onnx --output=OUT
  python tools/export.py --init_from=CONVERTED [--override=data.num_frames=16] \
      --format=stablehlo --output=OUT

OUT is a folder: the model (model.onnx, saved_model/ or model.stablehlo) and metadata.json
(class names, clip settings, normalization, head, outputs, version, step). The exported
function takes uint8 clips (batch, T, S, S, 3) and returns the model's outputs; the
batch is any size unless --batch_size fixes it. A problem with the inputs is one line on
stderr and exit status 2. docs/deploy.md has the formats, versions and limits.
"""

import os
import sys
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from stconsist_jax.configs import default
from stconsist_jax.core import console
from stconsist_jax.core import errors
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.export import exporter
from stconsist_jax.prediction import predict

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program so importers keep the names."""
  flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints).')
  flags.DEFINE_string('step', 'latest', "Checkpoint: 'latest', 'best' or a step number.")
  flags.DEFINE_string(
    'init_from',
    None,
    'A converted classifier (tools/convert_torch_weights.py) instead: class scores only; '
    "clip settings from --workdir's config if given, else configs/default.py's.",
  )
  flags.DEFINE_enum('format', None, list(exporter.FORMATS), 'What to export to.')
  flags.DEFINE_string('output', None, 'Folder to write (an earlier export there is replaced).')
  flags.DEFINE_multi_string(
    'override', [], 'Config change key.path=value, e.g. data.num_frames=16 (repeatable).'
  )
  flags.DEFINE_string('class_names', None, 'Text file of class names, one per line.')
  flags.DEFINE_integer('batch_size', 0, 'Fixed batch size; 0: any batch size at run time.')
  flags.DEFINE_enum(
    'conv_impl',
    'xla',
    ['xla', 'conv2d'],
    "The backbone's convolutions: 3D ('xla') or sums of 2D convolutions (the same numbers).",
  )
  flags.DEFINE_string(
    'platforms', 'cpu,cuda', 'StableHLO and SavedModel: the platforms the model is lowered for.'
  )
  flags.DEFINE_integer('opset', exporter.Options.opset, 'ONNX: the opset version.')
  flags.DEFINE_bool(
    'check',
    True,
    'Run the export once by its runtime (onnxruntime, TensorFlow, jaxlib) on random clips '
    'and refuse it unless it computes what JAX computes.',
  )
  flags.mark_flags_as_required(['format', 'output'])


def run() -> int:
  """The CLI's work; returns the exit code."""
  f = FLAGS
  try:
    problem = exporter.output_problem(f.output)
    if problem:
      raise exporter.ExportError(f'--output {f.output}: {problem}')
    if f.batch_size < 0:
      raise exporter.ExportError(f'--batch_size must be >= 0 (0: any), got {f.batch_size}')
    options = exporter.Options(
      format=f.format,
      batch_size=f.batch_size,
      conv_impl=f.conv_impl,
      platforms=exporter.parse_platforms(f.platforms),
      opset=f.opset,
      check=f.check,
    )
    step = restore_lib.resolve_step(ml_collections.ConfigDict({'eval': {}}), f.step)
    restored = predict.restore_model(
      f.workdir,
      step,
      init_from=f.init_from,
      overrides=f.override,
      names_file=f.class_names,
      settings=None if f.workdir else default.get_config(),
    )
  except errors.user_error_types() + (ValueError, NotADirectoryError) as e:
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return errors.EXIT_USER_ERROR
  try:
    meta = exporter.export(restored, f.output, options)
  except errors.user_error_types() as e:  # A conversion that fails is a bug: traceback.
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return errors.EXIT_USER_ERROR
  except exporter.ExportMismatchError as e:  # A converter's bug, reported without a model.
    print(f'error: {errors.one_line(e)}', file=sys.stderr)
    return 1
  print(exporter.describe(meta, f.output))
  return 0


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    console.quiet_library_logs()  # before anything imports TensorFlow
  logging.get_absl_handler().addFilter(console.LibraryFilter(('/orbax/',), logging.ERROR))
  sys.exit(run())


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  define_flags()
  app.run(main)
