"""The ONNX route: jax2onnx converts the inference function, weights as initializers, into
one .onnx file for onnxruntime; outputs in name order, the batch a symbolic 'b'.

The one module of the package that imports jax2onnx and onnx (and onnxruntime, to check an
export), inside its functions.
"""

from __future__ import annotations

import contextlib
from importlib import metadata as package_metadata
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np

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


# jax2onnx 0.17.1's optimizer pass that cancels pairs of inverse Transposes drops the
# Transpose back to channels-last after a BatchNormalization in the second block of a stage
# whose first block has a projection shortcut (R3D-18/34: stage 2 on): the residual Add
# then mixes NCDHW and NDHWC tensors, which onnxruntime refuses to load, or computes
# garbage where the dimensions happen to agree. Without the pass the graph keeps more
# Transposes (onnxruntime's own optimizer removes the redundant ones) and is right.
BROKEN_PASSES = ('remove_redundant_transpose_pairs',)


@contextlib.contextmanager
def _without_broken_passes() -> Iterator[None]:
  from jax2onnx.converter import ir_optimizations  # pylint: disable=g-import-not-at-top

  passes = getattr(ir_optimizations, '_OPTIMIZER_PASSES', None)
  if passes is None:  # Another jax2onnx: the tests and the export's own check will tell.
    yield
    return
  ir_optimizations._OPTIMIZER_PASSES = tuple(p for p in passes if p.name not in BROKEN_PASSES)
  try:
    yield
  finally:
    ir_optimizations._OPTIMIZER_PASSES = passes


def export(
  inference: inference_lib.Inference, path: str | os.PathLike, opset: int = OPSET
) -> dict[str, object]:
  """Writes the ONNX model to `path`; returns what the metadata records of it."""
  with _quiet_plugin_discovery():
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top

    closed = inference.closed()
    names = inference.output_names

    def outputs_in_order(clip):
      outputs = closed(clip)  # Once: jax2onnx does not merge repeated subgraphs.
      return tuple(outputs[name] for name in names)

    with _without_broken_passes():
      proto = jax2onnx.to_onnx(
        outputs_in_order,
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
    'disabled_passes': list(BROKEN_PASSES),
  }


def load(path: str | os.PathLike) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """An exported file in an onnxruntime session on the CPU: `call(clip) -> outputs`."""
  import onnxruntime  # pylint: disable=g-import-not-at-top

  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # jax2onnx's shape annotations draw merge warnings.
  session = onnxruntime.InferenceSession(
    os.fspath(path), options, providers=['CPUExecutionProvider']
  )
  names = [o.name for o in session.get_outputs()]
  return lambda clip: dict(zip(names, session.run(names, {export_metadata.INPUT_NAME: clip})))


def run(path: str | os.PathLike, clip: np.ndarray) -> dict[str, np.ndarray]:
  """The outputs of an exported file for `clip`, computed by onnxruntime on the CPU."""
  return load(path)(clip)
