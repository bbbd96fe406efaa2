"""The TF SavedModel route: `jax2tf` wraps the inference function (lowered to StableHLO)
in a tf.function whose weights are tf.Variables; `tf.saved_model.load` runs it.

The one module of the package that imports TensorFlow, inside `export`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from stconsist_jax.export import inference as inference_lib
from stconsist_jax.prediction import export_metadata

DEFAULT_PLATFORMS = ('cpu', 'cuda')
SIGNATURE = 'serving_default'


def _polymorphic_shape(inference: inference_lib.Inference) -> str | None:
  if not inference.dynamic_batch:
    return None
  return '(b, ' + ', '.join(str(d) for d in inference.clip_spec.shape[1:]) + ')'


def export(
  inference: inference_lib.Inference,
  directory: str | os.PathLike,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict[str, object]:
  """Saves the SavedModel in `directory` (new); returns what the metadata records of it.

  Signature 'serving_default': `clip` uint8 in, the outputs by name; also the method
  `serve(clip)` of the loaded object.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  converted = jax2tf.convert(
    inference.apply,
    polymorphic_shapes=[None, _polymorphic_shape(inference)],
    with_gradient=False,
    native_serialization_platforms=tuple(platforms),
  )
  module = tf.Module()
  # Variables rather than constants: the weights live in variables/, not in the graph.
  module.weights = tf.nest.map_structure(
    lambda a: tf.Variable(a, trainable=False), inference.variables
  )
  shape = [None if inference.dynamic_batch else inference.clip_spec.shape[0]]
  shape += list(inference.clip_spec.shape[1:])

  @tf.function(
    autograph=False,
    input_signature=[tf.TensorSpec(shape, tf.uint8, name=export_metadata.INPUT_NAME)],
  )
  def serve(clip):
    return converted(module.weights, clip)

  module.serve = serve
  tf.saved_model.save(
    module, os.fspath(directory), signatures={SIGNATURE: serve.get_concrete_function()}
  )
  return {
    'tensorflow': tf.__version__,
    'jax2tf_platforms': list(platforms),
    'signature': SIGNATURE,
  }


def load(directory: str | os.PathLike) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  """A saved model's serving signature, loaded by TensorFlow: `call(clip) -> outputs`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  serving = tf.saved_model.load(os.fspath(directory)).signatures[SIGNATURE]
  return lambda clip: {
    k: v.numpy() for k, v in serving(**{export_metadata.INPUT_NAME: tf.constant(clip)}).items()
  }


def run(directory: str | os.PathLike, clip: np.ndarray) -> dict[str, np.ndarray]:
  """The outputs of a saved model for `clip`, through its serving signature."""
  return load(directory)(clip)
