"""Class names for a model's outputs: a file the user gives, the dataset of its config when
that is reachable and has as many labels, else `class_<i>`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from absl import logging

from stconsist_jax.core import fileio

if TYPE_CHECKING:
  import ml_collections


def generic_class_names(num_classes: int) -> list[str]:
  return [f'class_{i}' for i in range(num_classes)]


def class_names_for(
  config: ml_collections.ConfigDict | None,
  num_classes: int,
  names_file: str | os.PathLike | None = None,
) -> list[str]:
  """Class names: a file (one per line), the config's dataset, else `class_<i>`.

  The dataset's names are read only when it is reachable (its TFDS build exists) and
  has `num_classes` labels; anything else falls back to generic names with a warning.
  """
  if names_file:
    names = [
      line.strip() for line in fileio.as_path(names_file).read_text().splitlines() if line.strip()
    ]
    if len(names) != num_classes:
      raise ValueError(
        f'--class_names {names_file}: {len(names)} names for a model of {num_classes} classes'
      )
    return names
  data = config.get('data', None) if config is not None else None
  if data is None or data.get('name', 'random') in ('random', ''):
    return generic_class_names(num_classes)
  try:
    from stconsist_jax.data.pipeline import sources  # pylint: disable=g-import-not-at-top

    names = sources.label_names(data)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning(
      'Class names: dataset %r not readable (%s); using class_<i>',
      data.get('name'),
      ' '.join(str(e).split())[:200],
    )
    return generic_class_names(num_classes)
  if len(names) != num_classes:
    logging.warning(
      'Class names: the dataset has %d, the model %d classes; using class_<i>',
      len(names),
      num_classes,
    )
    return generic_class_names(num_classes)
  return [str(n) for n in names]


def box_class_names_for(config: ml_collections.ConfigDict, num_box_classes: int) -> list[str]:
  """Names of a tubelet detector's box classes: the dataset's annotated classes when its
  build is reachable and has `num_box_classes` of them, else `box_class_<i>`."""
  data = config.get('data', None)
  names = None
  if data is not None and data.get('name', 'random') not in ('random', ''):
    try:
      from stconsist_jax.data.pipeline import sources  # pylint: disable=g-import-not-at-top

      builder = getattr(sources.source_from_config(data), 'builder', None)
      if builder is not None:
        names = (builder.info.metadata or {}).get('annotated_class_names')
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Box class names: dataset %r not readable (%s)', data.get('name'), e)
  if names is None or len(names) != num_box_classes:
    if names is not None:
      logging.warning(
        'Box class names: the dataset has %d, the model %d; using box_class_<i>',
        len(names),
        num_box_classes,
      )
    return [f'box_class_{i}' for i in range(num_box_classes)]
  return [str(n) for n in names]
