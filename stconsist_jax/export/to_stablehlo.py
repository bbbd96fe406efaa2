"""The StableHLO route: `jax.export` serializes the inference function, weights included, to
one file that `jax.export.deserialize(...).call(clip)` runs wherever jaxlib does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
from jax import export as jax_export
import numpy as np

from stconsist_jax.core import fileio
from stconsist_jax.export import inference as inference_lib

DEFAULT_PLATFORMS = ('cpu', 'cuda')


def export(
  inference: inference_lib.Inference,
  path: str | os.PathLike,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict[str, object]:
  """Writes the serialized module to `path`; returns what the metadata records of it."""
  exported = jax_export.export(jax.jit(inference.closed()), platforms=tuple(platforms))(
    inference.clip_spec
  )
  fileio.atomic_write(path, bytes(exported.serialize()))
  return {
    'jax': jax.__version__,
    'platforms': list(exported.platforms),
    'calling_convention_version': int(exported.calling_convention_version),
  }


def load(path: str | os.PathLike) -> Callable[..., dict[str, jax.Array]]:
  """The exported function of a file `export` wrote: `call(clip) -> outputs`."""
  return jax_export.deserialize(bytearray(fileio.as_path(path).read_bytes())).call


def run(path: str | os.PathLike, clip: np.ndarray) -> dict[str, np.ndarray]:
  """The outputs of an exported file for `clip`."""
  return {k: np.asarray(v) for k, v in load(path)(clip).items()}
