"""Exports a restored detector in one format: the model and its metadata.json in a local
folder that appears whole (built under a partial name beside it, then renamed).

The model is restored as prediction restores it (`prediction.predict.restore_model`); the
routes are `to_onnx`, `to_savedmodel` and `to_stablehlo`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from typing import Any
from collections.abc import Sequence

import jax
import numpy as np

import stconsist_jax
from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.export import inference as inference_lib
from stconsist_jax.export import to_onnx
from stconsist_jax.export import to_savedmodel
from stconsist_jax.export import to_stablehlo
from stconsist_jax.evaluation.evaluators import tubelets as tubelets_eval
from stconsist_jax.metrics import tubes as tubes_lib
from stconsist_jax.models import detector
from stconsist_jax.prediction import class_names
from stconsist_jax.prediction import export_metadata
from stconsist_jax.prediction import output_files
from stconsist_jax.prediction import predict

FORMATS = tuple(export_metadata.MODEL_FILES)  # onnx, savedmodel, stablehlo


# The check of a new export against JAX, relative to each output's largest magnitude: a
# wrong graph (a lost transpose, a misread padding) is off by the order of the values;
# float32 rounding of another runtime's convolutions stays below 1e-5 on trained weights.
CHECK_TOLERANCE = 1e-3
# format -> (the package that runs it, its `run(path, clip)`).
RUNTIMES = {
  'onnx': ('onnxruntime', to_onnx.run),
  'savedmodel': ('tensorflow', to_savedmodel.run),
  'stablehlo': ('jax', to_stablehlo.run),
}


class ExportError(errors.UserError):
  """The output folder cannot take an export."""


class ExportMismatchError(RuntimeError):
  """The exported model, run by its runtime, does not compute the model's outputs."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How to export: the format and its settings."""

  format: str
  batch_size: int = 0  # 0: any batch size at run time
  conv_impl: str = 'xla'  # 3D convolutions; 'conv2d' gives the same numbers by 2D convs
  platforms: tuple[str, ...] = to_stablehlo.DEFAULT_PLATFORMS  # StableHLO and SavedModel
  opset: int = to_onnx.OPSET  # ONNX
  check: bool = True  # run the export by its runtime once and compare with JAX


def output_problem(output: str | os.PathLike) -> str | None:
  """Why `output` cannot receive an export (one line), else None.

  An earlier export there (a folder with metadata.json) is replaced; an empty folder is
  used; anything else is left alone.
  """
  if fileio.is_remote(output):
    return 'a bucket URL: export to a local folder, then copy it'
  output = os.fspath(output)
  if os.path.lexists(output) and not os.path.isdir(output):
    return 'a file is there, not a folder'
  if os.path.isdir(output) and os.listdir(output):
    if not os.path.exists(os.path.join(output, export_metadata.FILENAME)):
      return 'a folder that is not an export (no metadata.json) and not empty'
  parent = os.path.dirname(os.path.abspath(output))
  if os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
    return f'permission denied in {parent}'
  return None


def model_metadata(
  restored: predict.RestoredModel,
  inference: inference_lib.Inference,
  options: Options,
  exported_with: dict[str, Any],
  model_sha256: str,
  checked: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """The metadata.json of an export (schema: `prediction.export_metadata`, docs/deploy.md)."""
  config, model, info = restored.config, restored.model, restored.model_info
  data = config.data
  head = 'none' if info['source'] == 'init_from' else str(config.model.box_head)
  scale, mean, std = detector.NORMALIZATION_PRESETS[model.normalization]
  size = int(data.image_size)
  return {
    'format_version': export_metadata.FORMAT_VERSION,
    'format': options.format,
    'model_file': export_metadata.MODEL_FILES[options.format],
    'model_sha256': model_sha256,
    'project': {'name': 'stconsist_jax', 'version': stconsist_jax.__version__},
    'exported_with': exported_with,
    'source': {
      'kind': info['source'],
      'path': info['path'],
      'step': info['step'],
      'config_hash': info['config_hash'],
    },
    'model': {
      'architecture': info['architecture'],
      'box_head': head,
      'num_classes': int(info['num_classes']),
      'classification_only': bool(info['classification_only']),
      'conv_impl': options.conv_impl,
      'dtype': np.dtype(model.dtype).name,
    },
    'clip': {
      'num_frames': int(data.num_frames),
      'frame_stride': int(data.get('frame_stride', 1)),
      'frame_size': int(data.frame_size),
      'image_size': size,
      'color': 'RGB',
      'resize': 'squash to frame_size x frame_size (area), then bilinear to image_size',
    },
    'normalization': {
      'preset': model.normalization,
      'scale': float(scale),
      'mean': [float(m) for m in mean],
      'std': [float(s) for s in std],
      'in_model': True,
    },
    'input': {
      'name': export_metadata.INPUT_NAME,
      'dtype': 'uint8',
      'shape': [export_metadata.BATCH if inference.dynamic_batch else options.batch_size]
      + [int(data.num_frames), size, size, 3],
      'layout': 'NTHWC',
    },
    'outputs': [
      {
        'name': o.name,
        'dtype': o.dtype,
        'shape': list(o.shape),
        'layout': export_metadata.OUTPUT_LAYOUTS.get(o.name, ''),
      }
      for o in inference.outputs
    ],
    'class_names': list(restored.class_names),
    'linking': dataclasses.asdict(
      tubelets_eval.linking_config(config)
      if head == 'tubelet'
      else tubes_lib.linking_config(config)
    ),
    'tubelet': tubelet_settings(config) if head == 'tubelet' else None,
    'checked': checked,
  }


def tubelet_settings(config: Any) -> dict[str, Any]:
  """The tubelet head's decoding settings (config.model.tubelet_*; K = 0 means all T; the
  presence threshold only for a head with presence), and what prediction reads of the
  config besides: the clip stride over a video (eval.tube_frame_stride), the per-frame
  NMS of the actors (eval.tubelets) and the names of the box classes."""
  m = config.model
  frames = int(m.get('tubelet_frames', 0)) or int(config.data.num_frames)
  settings = {
    'frames': frames,
    'stride': int(m.get('tubelet_stride', 8)),
    'top_n': int(m.get('tubelet_top_n', 10)),
    'nms': float(m.get('tubelet_nms', 0.5)),
    'frame_stride': int(config.eval.get('tube_frame_stride', frames)),
    'frame_nms': tubelets_eval.frame_nms_threshold(config),
    'box_class_names': class_names.box_class_names_for(config, int(m.num_box_classes)),
  }
  if m.get('tubelet_presence', False):
    settings['presence_threshold'] = float(m.get('tubelet_presence_threshold', 0.5))
  return settings


def output_differences(
  expected: dict[str, np.ndarray], found: dict[str, np.ndarray]
) -> dict[str, float]:
  """name -> max |found - expected| / max |expected| (booleans: the share that differ)."""
  differences = {}
  for name, want in expected.items():
    want, got = np.asarray(want), np.asarray(found[name])
    if want.dtype == bool:
      differences[name] = float(np.mean(want != got)) if want.size else 0.0
      continue
    scale = max(float(np.abs(want).max()) if want.size else 0.0, np.finfo(np.float32).tiny)
    differences[name] = float(np.abs(got.astype(np.float64) - want).max() / scale)
  return differences


def match_detections(
  expected: dict[str, np.ndarray], found: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
  """`found` with its decoded detections (det_boxes, det_scores, det_valid and, with
  presence, det_present) reordered, clip by clip, to the expected rows they match (the
  nearest box, greedily in expected order).

  Decoded detections come in score order, and a saturated softmax gives scores that are
  equal to float32 precision (probabilities near 1 are 6e-8 apart): there the order is
  the runtime's rounding, not the model's. The rows themselves are still compared.
  """
  if not all(k in expected and k in found for k in export_metadata.TUBELET_OUTPUTS):
    return found
  rows = export_metadata.TUBELET_OUTPUTS + tuple(
    k for k in (export_metadata.PRESENCE_OUTPUT,) if k in expected and k in found
  )
  boxes_e, boxes_f = np.asarray(expected['det_boxes']), np.asarray(found['det_boxes'])
  valid_e, valid_f = np.asarray(expected['det_valid']), np.asarray(found['det_valid'])
  matched = {k: np.array(found[k]) for k in rows}
  for b in range(valid_e.shape[0]):
    free = [int(j) for j in np.nonzero(valid_f[b])[0]]
    order = []
    for i in np.nonzero(valid_e[b])[0]:
      if not free:
        break
      distance = [np.abs(boxes_f[b, j] - boxes_e[b, i]).max() for j in free]
      order.append((int(i), free.pop(int(np.argmin(distance)))))
    used = {j for _, j in order}
    rest = [j for j in range(valid_f.shape[1]) if j not in used]
    targets = [i for i in range(valid_e.shape[1]) if i not in {i for i, _ in order}]
    for i, j in order + list(zip(targets, rest)):
      for k in rows:
        matched[k][b, i] = np.asarray(found[k])[b, j]
  return dict(found, **matched)


def check_export(
  inference: inference_lib.Inference, fmt: str, model_path: str
) -> dict[str, Any] | None:
  """Runs the export by its runtime on a random clip batch and compares with JAX.

  Returns what the metadata records of the check, None when the runtime is not
  installed. Raises ExportMismatchError when an output differs beyond CHECK_TOLERANCE.
  """
  package, run = RUNTIMES[fmt]
  if importlib.util.find_spec(package) is None:
    return None
  shape = inference.clip_spec.shape
  batch = 2 if inference.dynamic_batch else int(shape[0])
  clip = np.random.default_rng(0).integers(0, 256, (batch, *shape[1:]), dtype=np.uint8)
  expected = jax.tree.map(np.asarray, jax.jit(inference.closed())(clip))
  try:
    found = run(model_path, clip)
  except Exception as e:  # pylint: disable=broad-except  # Whatever it is, not a model.
    raise ExportMismatchError(
      f'the {fmt} export cannot be run by {package} ({errors.describe(e, 200)}); nothing '
      'was written'
    ) from e
  if sorted(found) != sorted(expected):
    raise ExportMismatchError(
      f'the {fmt} export has the outputs {sorted(found)}, the model {sorted(expected)}'
    )
  differences = output_differences(expected, match_detections(expected, found))
  worst = max(differences, key=differences.get)
  if not differences[worst] <= CHECK_TOLERANCE:
    raise ExportMismatchError(
      f'the {fmt} export, run by {package}, does not compute the model: output {worst!r} '
      f'differs by {differences[worst]:.2g} of its largest value (tolerance '
      f'{CHECK_TOLERANCE:g}); nothing was written'
    )
  return {
    'runtime': package,
    'batch': batch,
    'tolerance': CHECK_TOLERANCE,
    'max_relative_difference': {k: float(f'{v:.3g}') for k, v in differences.items()},
  }


def _write_model(inference: inference_lib.Inference, path: str, options: Options) -> dict:
  if options.format == 'onnx':
    return to_onnx.export(inference, path, opset=options.opset)
  if options.format == 'savedmodel':
    return to_savedmodel.export(inference, path, platforms=options.platforms)
  return to_stablehlo.export(inference, path, platforms=options.platforms)


def export(
  restored: predict.RestoredModel, output: str | os.PathLike, options: Options
) -> dict[str, Any]:
  """Exports `restored` into the folder `output`; returns the metadata written.

  The folder is built as `.<name>.<pid>.partial` beside `output` and renamed to it when
  complete (an earlier export there is replaced; a killed run's partial folder is
  removed by the next export).
  """
  if options.format not in FORMATS:
    raise ValueError(f'format must be one of {FORMATS}, got {options.format!r}')
  problem = output_problem(output)
  if problem:
    raise ExportError(f'--output {output}: {problem}')
  output = os.path.abspath(os.fspath(output))
  parent, name = os.path.split(output)
  os.makedirs(parent, exist_ok=True)
  output_files.remove_stale_partials(parent)
  data = restored.config.data
  spec = inference_lib.clip_spec(int(data.num_frames), int(data.image_size), options.batch_size)
  inference = inference_lib.make_inference(
    restored.model, restored.variables, spec, options.conv_impl
  )
  staging = os.path.join(parent, f'.{name}.{os.getpid()}.partial')
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  try:
    model_path = os.path.join(staging, export_metadata.MODEL_FILES[options.format])
    exported_with = _write_model(inference, model_path, options)
    checked = check_export(inference, options.format, model_path) if options.check else None
    meta = model_metadata(
      restored,
      inference,
      options,
      exported_with,
      export_metadata.model_digest(model_path),
      checked,
    )
    fileio.atomic_write(
      os.path.join(staging, export_metadata.FILENAME), export_metadata.dumps(meta)
    )
    _replace_folder(staging, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return meta


def _replace_folder(new: str, target: str) -> None:
  """Renames the folder `new` to `target`, an existing `target` moved aside first."""
  if not os.path.lexists(target):
    os.replace(new, target)
    return
  parent, name = os.path.split(target)
  old = os.path.join(parent, f'.{name}.old.{os.getpid()}.partial')
  shutil.rmtree(old, ignore_errors=True)
  os.replace(target, old)
  os.replace(new, target)
  shutil.rmtree(old, ignore_errors=True)


def describe(meta: dict[str, Any], output: str | os.PathLike) -> str:
  """One line on an export for the command line."""
  shape = 'x'.join(str(d) for d in meta['input']['shape'])
  outputs = ', '.join(f'{o["name"]} {o["shape"]}' for o in meta['outputs'])
  checked = meta['checked']
  check = (
    f'checked by {checked["runtime"]} at batch {checked["batch"]}, largest relative '
    f'difference {max(checked["max_relative_difference"].values()):.1g}'
    if checked
    else f'not checked ({RUNTIMES[meta["format"]][0]} is not installed, or --nocheck)'
  )
  return (
    f'exported {meta["model"]["architecture"]} ({meta["source"]["kind"]} step '
    f'{meta["source"]["step"]}) as {meta["format"]}: uint8 clip {shape} -> {outputs}; '
    f'{check}; {os.path.join(os.fspath(output), meta["model_file"])}'
  )


def parse_platforms(text: str | Sequence[str]) -> tuple[str, ...]:
  """'cpu,cuda' -> ('cpu', 'cuda'); each one of jax.export's platform names."""
  names = [p.strip() for p in (text.split(',') if isinstance(text, str) else text) if p.strip()]
  valid = ('cpu', 'cuda', 'rocm', 'tpu')
  bad = [p for p in names if p not in valid]
  if not names or bad:
    raise ExportError(f'--platforms must name some of {valid}, got {text!r}')
  return tuple(names)
