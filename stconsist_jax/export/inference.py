"""The function an export holds: uint8 clips (batch, T, S, S, 3) in, the model's output dict
(train=False) out, every floating output float32; and its input and output specs.

The weights are an argument (`apply(variables, clip)`): the routes decide whether they
become constants (StableHLO, ONNX) or variables (SavedModel).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable, Mapping

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from stconsist_jax.evaluation import restore as restore_lib
from stconsist_jax.prediction import export_metadata

EXPORT_CONV_IMPLS = ('xla', 'conv2d')  # 'auto' would pick by the exporting machine.


@dataclasses.dataclass(frozen=True)
class OutputSpec:
  name: str
  dtype: str  # a numpy dtype name: 'float32', 'bool', ...
  shape: tuple[int | str, ...]  # export_metadata.BATCH first where the batch is dynamic


@dataclasses.dataclass
class Inference:
  """A model ready to export: its pure function, weights and specs."""

  apply: Callable[[Any, jax.Array], dict[str, jax.Array]]
  variables: dict[str, Any]  # host numpy arrays
  clip_spec: jax.ShapeDtypeStruct  # uint8 (batch, T, S, S, 3); batch symbolic when dynamic
  outputs: tuple[OutputSpec, ...]  # sorted by name, the order of the exported outputs

  @property
  def output_names(self) -> tuple[str, ...]:
    return tuple(o.name for o in self.outputs)

  @property
  def dynamic_batch(self) -> bool:
    return not isinstance(self.clip_spec.shape[0], int)

  def closed(self) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """`clip -> outputs` with the weights as constants."""
    variables = self.variables
    return lambda clip: self.apply(variables, clip)


def with_conv_impl(model: Any, conv_impl: str) -> Any:
  """The model with its backbone lowered by `conv_impl` (the same numbers either way)."""
  if conv_impl not in EXPORT_CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {EXPORT_CONV_IMPLS}, got {conv_impl!r}')
  return model.clone(backbone_kwargs={**model.backbone_kwargs, 'conv_impl': conv_impl})


def output_dict(outputs: Any) -> dict[str, jax.Array]:
  """A Detector's dict as is, a classifier's logits as {'logits'}; floats as float32."""
  if not isinstance(outputs, Mapping):
    outputs = {'logits': outputs}
  return {
    k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v
    for k, v in outputs.items()
  }


def clip_spec(num_frames: int, image_size: int, batch_size: int = 0) -> jax.ShapeDtypeStruct:
  """uint8 clips; `batch_size` 0: a symbolic batch 'b' (any size at run time)."""
  if batch_size < 0:
    raise ValueError(f'the batch size must be >= 0 (0: dynamic), got {batch_size}')
  batch = jax_export.symbolic_shape('b')[0] if batch_size == 0 else batch_size
  return jax.ShapeDtypeStruct((batch, num_frames, image_size, image_size, 3), jnp.uint8)


def make_inference(
  model: Any, variables: Mapping[str, Any], spec: jax.ShapeDtypeStruct, conv_impl: str = 'xla'
) -> Inference:
  """The inference function of `model` (a Detector or a VideoClassifier) on `spec` clips."""
  model = with_conv_impl(model, conv_impl)

  def apply(variables: Any, clip: jax.Array) -> dict[str, jax.Array]:
    return output_dict(model.apply(variables, clip, train=False))

  host = jax.tree.map(np.asarray, jax.device_get(restore_lib.model_variables(variables)))
  shapes = jax.eval_shape(apply, host, spec)
  outputs = tuple(
    OutputSpec(name, np.dtype(s.dtype).name, tuple(_dim(d) for d in s.shape))
    for name, s in sorted(shapes.items())
  )
  return Inference(apply, host, spec, outputs)


def _dim(d: Any) -> int | str:
  if isinstance(d, (int, np.integer)):
    return int(d)
  if str(d) != 'b':
    raise ValueError(f'an output dimension {d} depends on the batch other than as the batch')
  return export_metadata.BATCH
