"""The ONNX route: jax2onnx converts the inference function, weights as initializers, into
one .onnx file for onnxruntime; outputs in name order, the batch a symbolic 'b'.

The one module of the package that imports jax2onnx and onnx, inside `export`.
"""

from __future__ import annotations

import contextlib
from importlib import metadata as package_metadata
import logging
import os
from collections.abc import Iterator

from stconsist_jax.core import fileio
from stconsist_jax.export import inference as inference_lib
from stconsist_jax.prediction import export_metadata

OPSET = 23  # jax2onnx's default; onnxruntime 1.2x runs it.


@contextlib.contextmanager
def _quiet_plugin_discovery() -> Iterator[None]:
  """jax2onnx logs a traceback for each optional plugin whose library (equinox, dm_pix) is
  absent, and onnx_ir a warning per untyped constant; none concerns this model."""
  loggers = [logging.getLogger(name) for name in ('jax2onnx', 'onnx_ir')]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def export(
  inference: inference_lib.Inference, path: str | os.PathLike, opset: int = OPSET
) -> dict[str, object]:
  """Writes the ONNX model to `path`; returns what the metadata records of it."""
  with _quiet_plugin_discovery():
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top

    closed = inference.closed()
    names = inference.output_names
    proto = jax2onnx.to_onnx(
      lambda clip: tuple(closed(clip)[name] for name in names),
      [inference.clip_spec],
      model_name='stconsist_jax',
      opset=opset,
      input_names=[export_metadata.INPUT_NAME],
      output_names=list(names),
    )
  fileio.atomic_write(path, proto.SerializeToString())
  return {
    'jax2onnx': package_metadata.version('jax2onnx'),
    'onnx': onnx.__version__,
    'opset': int(opset),
  }
