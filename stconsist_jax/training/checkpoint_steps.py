"""The steps of a checkpoint directory: those orbax finished writing, and whether each holds
all its items' metadata and array data (a step another run half wrote does not).
"""

from __future__ import annotations

import os

from etils import epath
import orbax.checkpoint as ocp

from stconsist_jax.core import fileio

ITEMS = ('variables', 'train')  # The items of every step.


class IncompleteCheckpointError(RuntimeError):
  """A step orbax lists as finished lacks the metadata or array data of an item."""


def committed_steps(directory: str | os.PathLike) -> list[int]:
  """Sorted steps orbax finished writing under `directory` (local or bucket)."""
  paths = fileio.bounded(
    lambda: list(ocp.utils.checkpoint_steps_paths(directory)), directory, 'listing'
  )
  return sorted(int(p.name) for p in paths if p.name.isdigit())


def _has_array_data(item_dir: epath.Path) -> bool:
  """Whether an OCDBT item holds its arrays: in each `ocdbt.process_*/d/` its saving
  processes wrote, or in `d/` for a layout without them."""
  process_dirs = list(item_dir.glob('ocdbt.process_*'))
  if not process_dirs:
    return any(item_dir.glob('d/*'))
  return all(any(p.glob('d/*')) for p in process_dirs)


def missing_parts(step_dir: str | os.PathLike) -> list[str]:
  """What a finished step directory lacks of a whole checkpoint ([] when complete).

  Each item ('variables', 'train') needs its `_METADATA` and at least one array data
  file (orbax's OCDBT format keeps them in `d/` folders; no recursive listing, which a
  bucket makes expensive).
  """
  step_dir = fileio.as_path(step_dir)
  missing = []
  for item in ITEMS:
    if not (step_dir / item / '_METADATA').exists():
      missing.append(f'{item}/_METADATA')
    elif not _has_array_data(step_dir / item):
      missing.append(f'{item}/ array data')
  return missing


def check_complete(step_dir: str | os.PathLike) -> None:
  """Raises IncompleteCheckpointError naming what `step_dir` lacks."""
  missing = missing_parts(step_dir)
  if missing:
    raise IncompleteCheckpointError(f'{step_dir} lacks {", ".join(missing)}')
