"""Export benchmark: each route's export time, first call, steady calls and its outputs
against JAX's, for the demo models and R3D-34 with each head, random weights.

One JSON line per setting and format. The weights are random, but by default BatchNorm's
statistics are those of a train-mode pass on random clips (as training sets them), so
activations have a trained model's scale rather than growing through 34 blocks.

  python benchmarks/exports.py --settings=r3d34,r3d34_tubelet --formats=stablehlo,onnx,savedmodel
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from typing import Any
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

import bench_models  # pylint: disable=g-import-not-at-top  (a sibling script)
from stconsist_jax.core import console
from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.export import exporter
from stconsist_jax.export import inference as inference_lib
from stconsist_jax.export import to_onnx
from stconsist_jax.export import to_savedmodel
from stconsist_jax.export import to_stablehlo
from stconsist_jax.prediction import export_metadata
from stconsist_jax.prediction import predict

_SETTINGS = flags.DEFINE_list('settings', list(bench_models.SETTINGS), bench_models.SETTINGS_HELP)
_FORMATS = flags.DEFINE_list('formats', list(exporter.FORMATS), 'Export formats to run.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 2, 'Clips per call (the export is dynamic).')
_CALLS = flags.DEFINE_integer('calls', 3, 'Steady calls timed after the first.')
_CONV_IMPL = flags.DEFINE_enum(
  'conv_impl', 'xla', ['xla', 'conv2d'], "The exports' convolutions, as tools/export.py's flag."
)
_CALIBRATE = flags.DEFINE_bool(
  'calibrate_batchnorm',
  True,
  "BatchNorm statistics from a train-mode pass on random clips; false: flax's initial "
  'statistics (mean 0, variance 1), under which activations grow with depth.',
)


def runtime_loader(fmt: str, path: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """Loads the export once with its own runtime; returns `clip -> outputs`."""
  if fmt == 'onnx':
    return to_onnx.load(path)
  if fmt == 'savedmodel':
    return to_savedmodel.load(path)
  call = jax.jit(to_stablehlo.load(path))
  return lambda clip: {k: np.asarray(v) for k, v in call(clip).items()}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def jax_runner(restored: predict.RestoredModel, conv_impl: str | None) -> Callable:
  """`clip -> outputs` of the model in JAX; conv_impl None: as configured ('auto': 2D
  convolutions on a CPU), else as an export lowers it."""
  model = restored.model
  if conv_impl is not None:
    model = inference_lib.with_conv_impl(model, conv_impl)
  variables = restore_lib.model_variables(restored.variables)
  fn = jax.jit(lambda c: inference_lib.output_dict(model.apply(variables, c, train=False)))
  return lambda clip: jax.tree.map(np.asarray, fn(clip))


def steady_clips_per_s(run: Callable, clip: np.ndarray) -> float:
  seconds = [timed(lambda: run(clip))[1] for _ in range(_CALLS.value)]
  return clip.shape[0] / float(np.median(seconds))


def run_format(
  restored: predict.RestoredModel, fmt: str, clip: np.ndarray, reference: dict
) -> dict[str, Any]:
  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, 'export')
    _, export_s = timed(
      lambda: exporter.export(
        restored, folder, exporter.Options(fmt, conv_impl=_CONV_IMPL.value, check=False)
      )
    )
    path = os.path.join(folder, export_metadata.MODEL_FILES[fmt])
    size = sum(
      os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(folder) for n in names
    )

    def first_call():
      run = runtime_loader(fmt, path)
      return run, run(clip)

    (run, found), first_s = timed(first_call)
    clips_per_s = steady_clips_per_s(run, clip)
  differences = {
    impl: exporter.output_differences(want, exporter.match_detections(want, found))
    for impl, want in reference.items()
  }
  return {
    'format': fmt,
    'conv_impl': _CONV_IMPL.value,
    'export_s': round(export_s, 2),
    'first_call_s': round(first_s, 2),
    'clips_per_s': round(clips_per_s, 2),
    'files_mb': round(size / 2**20, 1),
    'max_relative_difference': {
      impl: {k: float(f'{v:.2g}') for k, v in d.items()} for impl, d in differences.items()
    },
    'worst_vs_jax': float(f'{max(differences["auto"].values()):.2g}'),
  }


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(_FORMATS.value) - set(exporter.FORMATS))
  if unknown:
    raise app.UsageError(f'unknown formats {unknown}; known: {", ".join(exporter.FORMATS)}')
  for setting in _SETTINGS.value:
    try:
      restored = bench_models.random_model(setting, calibrate=_CALIBRATE.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    clip = bench_models.random_clips(restored.config, _BATCH_SIZE.value)
    # 'auto': what the model computes on this machine (2D convolutions on a CPU);
    # 'same_convs': the JAX model lowered with the export's convolutions (--conv_impl).
    run = jax_runner(restored, None)
    reference = {}
    reference['auto'], jax_s = timed(functools.partial(run, clip))
    jax_clips_per_s = steady_clips_per_s(run, clip)
    reference['same_convs'] = jax_runner(restored, _CONV_IMPL.value)(clip)
    for fmt in _FORMATS.value:
      record = {
        'setting': setting,
        'architecture': restored.model_info['architecture'],
        'clip': list(clip.shape),
        'calibrated_batchnorm': _CALIBRATE.value,
        'jax_first_call_s': round(jax_s, 2),
        'jax_clips_per_s': round(jax_clips_per_s, 2),
        'largest_output': {
          k: float(f'{np.abs(v).max():.3g}')
          for k, v in reference['auto'].items()
          if v.dtype != bool and v.size
        },
        **run_format(restored, fmt, clip, reference),
        'cpu': console.cpu_model(),
        'cpu_count': os.cpu_count(),
      }
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  app.run(main)
