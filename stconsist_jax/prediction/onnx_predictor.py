"""Prediction from an ONNX export (tools/export.py) with onnxruntime, OpenCV and numpy only:
its metadata.json read and checked, the model run as a `ClipPredictor`, a `predict.Loaded`.

No JAX, Flax, orbax or TensorFlow here or in what it imports (tests/prediction/
test_deploy.py runs it with those imports refused); onnxruntime is loaded by `load_export`.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.metrics import tubelets as tubelets_lib
from stconsist_jax.metrics import tubes as tubes_lib
from stconsist_jax.prediction import class_names as class_names_lib
from stconsist_jax.prediction import export_metadata
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import predict

PROVIDERS = ('CPUExecutionProvider',)


class ExportError(errors.UserError):
  """An export that prediction cannot run (another format, unknown settings)."""


class OnnxPredictor(frame_predictor.ClipPredictor):
  """An onnxruntime session as a `ClipPredictor`.

  A batch runs on a worker thread (onnxruntime releases the GIL), so the next batch is
  decoded meanwhile, as the JAX predictor's asynchronous dispatch does. A fixed-batch
  export gets its batch padded to that size; a dynamic one takes any batch.
  """

  runtime = 'onnxruntime'

  def __init__(self, session: Any, meta: Mapping[str, Any], batch_size: int | None = None):
    clip, input_shape = meta['clip'], meta['input']['shape']
    self.fixed_batch = input_shape[0] if isinstance(input_shape[0], int) else None
    if self.fixed_batch is not None:
      batch_size = self.fixed_batch  # The only batch the model takes.
    tubelet = meta['tubelet']
    super().__init__(
      num_frames=clip['num_frames'],
      frame_size=clip['frame_size'],
      image_size=clip['image_size'],
      frame_stride=clip['frame_stride'],
      batch_size=batch_size or frame_predictor.DEFAULT_BATCH_SIZE,
      with_boxes=not meta['model']['classification_only'],
      tubelet_frames=tubelet['frames'] if tubelet else 0,
    )
    self.session = session
    available = {o.name for o in session.get_outputs()}
    # The dense maps of a tubelet head stay inside: only what prediction reads is fetched.
    wanted = ('logits', 'boxes', *export_metadata.TUBELET_OUTPUTS, export_metadata.PRESENCE_OUTPUT)
    self.output_names = [name for name in wanted if name in available]
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='onnxruntime')

  @property
  def device_description(self) -> str:
    return f'onnxruntime {", ".join(self.session.get_providers())}'

  def _run(self, clips: np.ndarray) -> concurrent.futures.Future:
    if self.fixed_batch is not None and len(clips) != self.fixed_batch:
      padded = np.zeros((self.fixed_batch,) + clips.shape[1:], np.uint8)
      padded[: len(clips)] = clips
      clips = padded
    feed = {export_metadata.INPUT_NAME: np.ascontiguousarray(clips, np.uint8)}
    return self._pool.submit(self.session.run, self.output_names, feed)

  def _outputs(self, out: concurrent.futures.Future) -> dict[str, np.ndarray]:
    return dict(zip(self.output_names, out.result()))


def model_path(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
  """`(the ONNX file, its checked metadata)` of an export folder, its model.onnx or its
  metadata.json; ExportError or MetadataError (one line) when it is not a usable one."""
  meta = export_metadata.read(path)
  if meta['format'] != 'onnx':
    raise ExportError(
      f'{path}: a {meta["format"]} export; predict --model runs ONNX exports '
      '(tools/export.py --format=onnx)'
    )
  directory = os.path.dirname(export_metadata.metadata_path(path))
  return export_metadata.check_model_file(meta, directory), meta


def session_signature(values: Sequence[Any]) -> list[tuple[str, str, list[Any]]]:
  """onnxruntime's inputs or outputs as `(name, dtype, shape)` for `check_signature`."""
  return [
    (v.name, export_metadata.ONNXRUNTIME_DTYPES.get(v.type, v.type), list(v.shape)) for v in values
  ]


def linking_of(meta: Mapping[str, Any]) -> Any:
  """The tube linking settings the export carries: a tubelet detector's
  `TubeletLinkingConfig`, else `tubes.LinkingConfig`."""
  kind = tubelets_lib.TubeletLinkingConfig if meta['tubelet'] else tubes_lib.LinkingConfig
  try:
    return kind(**meta['linking'])
  except TypeError as e:
    raise export_metadata.MetadataError(
      f'metadata: linking does not fit {kind.__name__} ({errors.describe(e, 120)})'
    ) from None


def model_info(meta: Mapping[str, Any], path: str) -> dict[str, Any]:
  """The record's `model`: the exported checkpoint's, and the export's own (`export`)."""
  source, model = meta['source'], meta['model']
  return {
    'source': source['kind'],
    'path': source['path'],
    'step': source['step'],
    'architecture': model['architecture'],
    'classification_only': model['classification_only'],
    'num_classes': model['num_classes'],
    'config_hash': source['config_hash'],
    'export': {'format': meta['format'], 'path': path, 'sha256': meta['model_sha256']},
  }


def load_export(
  path: str | os.PathLike,
  *,
  batch_size: int | None = None,
  names_file: str | os.PathLike | None = None,
  threads: int = 0,
) -> predict.Loaded:
  """An ONNX export ready to predict: metadata read and checked, the model file's digest
  and the session's signature compared with it.

  Args:
    path: the export folder, its model.onnx or its metadata.json.
    batch_size: clips per run (default 8; a fixed-batch export: its own).
    names_file: class names, one per line, instead of the metadata's.
    threads: onnxruntime's intra-op threads (0: its default, one per core).
  """
  import onnxruntime  # pylint: disable=g-import-not-at-top

  onnx_path, meta = model_path(path)
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # jax2onnx's shape annotations draw merge warnings.
  if threads:
    options.intra_op_num_threads = int(threads)
  session = onnxruntime.InferenceSession(onnx_path, options, providers=list(PROVIDERS))
  export_metadata.check_signature(
    meta, session_signature(session.get_inputs()), session_signature(session.get_outputs())
  )
  predictor = OnnxPredictor(session, meta, batch_size)
  names = list(meta['class_names'])
  if names_file:
    names = class_names_lib.class_names_for(None, len(names), names_file)
  tubelet = meta['tubelet']
  return predict.Loaded(
    predictor,
    None,
    names,
    linking_of(meta),
    model_info(meta, onnx_path),
    list(tubelet['box_class_names']) if tubelet else None,
    frame_nms_threshold=float(tubelet['frame_nms']) if tubelet else 0.3,
    tube_frame_stride=int(tubelet['frame_stride']) if tubelet else 1,
  )
