"""Where a run's weights start (`config.init_from`): converted Kinetics weights
(tools/convert_torch_weights.py) or the workdir of another run.
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath

from stconsist_jax import models
from stconsist_jax.core import fileio
from stconsist_jax.training import checkpointing


def load_init_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Variables to start from: a converted checkpoint dir or another run's workdir."""
  path = check_init_from(path)
  if checkpointing.is_training_workdir(path):
    _, variables, _ = checkpointing.restore_for_eval(path, 'latest')
    return variables
  _, variables = models.load_pretrained(os.fspath(path))
  return variables


def check_init_from(path: str | os.PathLike) -> epath.Path:
  """`path` if it exists; else a FileNotFoundError saying how to get the weights."""
  path = fileio.as_path(path)
  if not path.exists():
    raise FileNotFoundError(
      f'init_from: {path} does not exist. It should be a directory written by '
      f'tools/convert_torch_weights.py (see docs/converting.md for the Kinetics weights) '
      f'or the workdir of a finished run (configs/finetune_cls.py); pass '
      f"--config.init_from='' to train from scratch instead"
    )
  return path
