"""The one restore path for evaluation and prediction: a training workdir at a step
('latest', 'best' or a number), or converted weights (`init_from`), checked against the
config's model before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stconsist_jax import models
from stconsist_jax.config import schema
from stconsist_jax.core import fileio
from stconsist_jax.evaluation import description
from stconsist_jax.models import param_trees
from stconsist_jax.training import checkpointing

INIT_FROM = 'init_from'  # `step` value: evaluate config.init_from (classification only).


@dataclasses.dataclass
class Restored:
  """What evaluation runs: a model, its variables and where they came from."""

  model: Any
  variables: dict[str, Any]  # host arrays, or arrays already replicated on the mesh
  step: int | str  # checkpoint step, or INIT_FROM
  source_config: ml_collections.ConfigDict | None  # the config that trained it
  classification_only: bool


def resolve_step(config: ml_collections.ConfigDict, step: int | str | None) -> int | str:
  """`step`, or `config.eval.checkpoint_step` when None, validated."""
  return schema.checkpoint_step(config.eval.checkpoint_step if step is None else step)


def model_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The collections a forward pass reads: params and (where present) batch_stats."""
  return {k: variables[k] for k in ('params', 'batch_stats') if k in variables}


def check_architecture(
  model: Any,
  variables: Mapping[str, Any],
  sample_shape: tuple[int, ...],
  expected_desc: str,
  found_desc: str,
  where: str,
) -> None:
  """Raises ParameterTreeMismatchError unless `variables` has `model`'s exact shapes."""
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(sample_shape, jnp.uint8), train=False)
  )
  mismatch = param_trees.tree_mismatch(
    param_trees.flat_shapes(model_variables(abstract)),
    param_trees.flat_shapes(model_variables(variables)),
    found_name='checkpoint',
    expected_name='model',
  )
  if mismatch:
    raise param_trees.ParameterTreeMismatchError(
      f'{where} holds another architecture: expected {expected_desc}, found '
      f'{found_desc} ({mismatch})'
    )


def _sample_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  d = config.data
  return (1, int(d.num_frames), int(d.image_size), int(d.image_size), 3)


def load_converted(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """A converted classifier (`tools/convert_torch_weights.py`): its model and host variables.

  Raises ParameterTreeMismatchError when it was converted without its classifier.
  """
  model, variables = models.load_pretrained(str(path))
  if 'classifier' not in variables['params']:
    raise param_trees.ParameterTreeMismatchError(
      f'converted checkpoint {path} has no classifier (converted with --drop-classifier): '
      'it cannot score classes'
    )
  return model, jax.tree.map(np.asarray, jax.device_get(variables))


def restore(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, step: int | str | None = None
) -> Restored:
  """Restores the model that `config.model` describes from a workdir (or init_from)."""
  step = resolve_step(config, step)
  if step == INIT_FROM:
    path = config.init_from
    if not path:
      raise schema.ConfigError(
        f'eval.checkpoint_step={INIT_FROM!r} needs config.init_from (a '
        'directory written by tools/convert_torch_weights.py)'
      )
    model, variables = load_converted(path)
    expected = int(config.model.num_classes)
    if model.num_classes != expected:
      raise param_trees.ParameterTreeMismatchError(
        f'converted checkpoint {path} holds another classifier: expected '
        f'{expected} classes (config.model.num_classes), found {model.num_classes}'
      )
    return Restored(model, variables, INIT_FROM, None, classification_only=True)
  source_config, variables, restored_step = checkpointing.restore_for_eval(workdir, step)
  model = models.build_model(config.model)
  check_architecture(
    model,
    variables,
    _sample_shape(config),
    description.describe_model(config.model),
    description.describe_model(source_config.model),
    where=f'checkpoint {fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR} step '
    f'{restored_step}',
  )
  return Restored(
    model,
    variables,
    restored_step,
    source_config,
    classification_only=config.model.box_head == 'none',
  )


def from_training_state(
  config: ml_collections.ConfigDict, variables: Mapping[str, Any], step: int
) -> Restored:
  """The training state's variables (evaluation during training) as a `Restored`."""
  return Restored(
    models.build_model(config.model),
    dict(variables),
    int(step),
    config,
    classification_only=config.model.box_head == 'none',
  )
