"""Parameter trees compared by shape: the flat `path -> shape` view of a tree, the one
description of how two such views differ, and the error raised when they must not.
"""

from typing import Any
from collections.abc import Mapping, Sequence

import jax

from stconsist_jax.core import errors
import numpy as np

Shapes = Mapping[str, Sequence[int]]


class ParameterTreeMismatchError(errors.UserError, ValueError):
  """Parameters that do not fit the model they are meant for (keys or shapes differ)."""


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """`{'a/b/c': shape}` of every leaf of a nested mapping of arrays."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(v)) for path, v in flat}


def _listing(items: Sequence[str], limit: int) -> str:
  shown = ', '.join(items[:limit])
  return shown + (f' and {len(items) - limit} more' if len(items) > limit else '')


def _modules(keys: Sequence[str], sep: str) -> list[str]:
  """'a.b.weight', 'a.b.bias' -> ['a.b.*']: the modules the keys belong to, in order."""
  return list(dict.fromkeys(k.rpartition(sep)[0] + sep + '*' if sep in k else k for k in keys))


def tree_mismatch(
  expected: Shapes,
  found: Shapes,
  *,
  found_name: str = 'found',
  expected_name: str = 'expected',
  sep: str = '/',
  limit: int = 8,
) -> str:
  """How `found` differs from `expected` in one line; '' when keys and shapes agree.

  Missing and unexpected keys are counted and listed by module (`sep` splits a key's
  path), in the order of `expected` (of `found` for the unexpected ones); each
  mis-shaped key is named with both shapes, e.g.
  '80 missing (layer1.2.conv1.*, ...); 1 mis-shaped (bn1.bias: file (8,) vs model (16,))'.
  """
  missing = [k for k in expected if k not in found]
  unexpected = [k for k in found if k not in expected]
  misshaped = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]

  def describe(k):
    return f'{k}: {found_name} {tuple(found[k])} vs {expected_name} {tuple(expected[k])}'

  parts = []
  if missing:
    parts.append(f'{len(missing)} missing ({_listing(_modules(missing, sep), limit)})')
  if unexpected:
    parts.append(f'{len(unexpected)} unexpected ({_listing(_modules(unexpected, sep), limit)})')
  if misshaped:
    parts.append(
      f'{len(misshaped)} mis-shaped ({_listing([describe(k) for k in misshaped], limit)})'
    )
  return '; '.join(parts)
