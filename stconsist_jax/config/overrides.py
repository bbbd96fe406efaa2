"""Config changes given as text: `key.path=value` entries (Python literals, else strings), as
`predict --override` takes them; groups that do not exist yet are made.
"""

from __future__ import annotations

import ast
from typing import Any
from collections.abc import Sequence

import ml_collections


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
  """Sets `a.b.c=value` entries (Python literals, else strings); missing groups are made."""
  for item in overrides:
    key, eq, text = item.partition('=')
    parts = key.strip().split('.')
    if not eq or not all(parts):
      raise ValueError(f'--override {item!r}: expected key.path=value')
    node = config
    for part in parts[:-1]:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f'--override {item!r}: {part!r} is not a config group')
    try:
      node[parts[-1]] = _parse_value(text)
    except (TypeError, ValueError) as e:
      raise ValueError(f'--override {item!r}: {e}') from None
  return config
