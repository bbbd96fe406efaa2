"""The model's jitted forward pass on a device mesh (batch on 'data', variables replicated)
and the gather of its outputs to every host: shared by evaluation and prediction.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

from stconsist_jax.training import distributed

PredictFn = Callable[[Any, jax.Array], dict[str, jax.Array]]

# A tubelet detector's dense maps (models/tubelet_head.py): its decoded detections are
# what evaluation and prediction read, so the maps never leave the device.
DENSE_PREFIX = 'tubelet_'


def make_predict_fn(model: Any, mesh: Any) -> PredictFn:
  """Jitted `(variables, clip) -> {'logits', 'boxes'?, 'det_*'?}`: batch on 'data', variables replicated."""

  def predict(variables, clip):
    out = model.apply(variables, clip, train=False)
    if not isinstance(out, dict):
      return {'logits': out}
    return {k: v for k, v in out.items() if not k.startswith(DENSE_PREFIX)}

  return jax.jit(
    predict,
    in_shardings=(distributed.replicated(mesh), distributed.batch_sharding(mesh)),
    out_shardings=distributed.batch_sharding(mesh),
  )


def gather(tree: Any) -> dict[str, np.ndarray]:
  """Global batch-sharded arrays -> full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)
