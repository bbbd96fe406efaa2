"""Random training batches (`data.name = 'random'`): smoke tests and benchmarks without data.

Pure numpy functions of (config.seed, step) in the docs/DESIGN.md section 3 format; no
TensorFlow, so training on random data runs where JAX alone is installed.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator, Mapping

import jax
import ml_collections
import numpy as np

from stconsist_jax.core import boxes


def random_batch(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
  """The global random batch of `step`.

  Uniform pixels, random labels (every clip keeps its label), about half the clips with a
  random box.
  """
  d, n = config.data, config.train.batch_size
  rng = np.random.default_rng([config.seed, step])
  clip = rng.integers(0, 256, (n, d.num_frames, d.image_size, d.image_size, 3), np.uint8)
  xy = rng.uniform(0.0, 0.5, (n, 2))
  wh = rng.uniform(0.1, 0.5, (n, 2))
  has_box = rng.random(n) < 0.5
  box = np.where(has_box[:, None], np.concatenate([xy, wh], 1), 0.0).astype(np.float32)
  box_flip = np.where(has_box[:, None], boxes.flip_xywh(box), 0.0)
  batch = {
    'clip': clip,
    'label': rng.integers(0, config.model.num_classes, n).astype(np.int32),
    'has_label': np.ones(n, bool),
    'box': box,
    'box_flip': box_flip.astype(np.float32),
    'has_box': has_box,
    'tube_label': np.where(has_box, rng.integers(0, 24, n), -1).astype(np.int32),
  }
  max_actors = int(d.get('max_actors', 0))
  if max_actors:
    num_labels = int(config.model.get('num_box_classes', 24))
    batch.update(random_actors(rng, n, d.num_frames, max_actors, num_labels))
  return batch


def random_actors(
  rng: np.random.Generator, n: int, num_frames: int, max_actors: int, num_labels: int
) -> dict[str, np.ndarray]:
  """The actor keys (train_stream.ACTOR_KEYS): about half the clips dense-labelled, each
  with 1..A actors of one label in [0, num_labels) present on random frames."""
  dense = rng.random(n) < 0.5
  count = rng.integers(1, max_actors + 1, n)
  actor = np.arange(max_actors)[None, :] < count[:, None]  # (n, A)
  present = dense[:, None, None] & actor[:, None, :] & (rng.random((n, num_frames, 1)) < 0.8)
  xy = rng.uniform(0.0, 0.5, (n, num_frames, max_actors, 2))
  wh = rng.uniform(0.1, 0.5, (n, num_frames, max_actors, 2))
  actor_boxes = np.where(present[..., None], np.concatenate([xy, wh], -1), 0.0)
  flipped = np.where(present[..., None], boxes.flip_xywh(actor_boxes), 0.0)
  labels = np.repeat(rng.integers(0, num_labels, (n, 1)), max_actors, 1)
  return {
    'actor_boxes': actor_boxes.astype(np.float32),
    'actor_boxes_flip': flipped.astype(np.float32),
    'actor_present': present,
    'actor_labels': np.where(dense[:, None] & actor, labels, -1).astype(np.int32),
    'dense_labeled': dense,
  }


def host_rows(batch: Mapping[str, Any], process_index: int, process_count: int) -> dict[str, Any]:
  """This process's contiguous share of a global host batch."""
  n = len(next(iter(batch.values())))
  per = n // process_count
  return {k: v[process_index * per : (process_index + 1) * per] for k, v in batch.items()}


def batch_iterator(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict[str, Any]]:
  """This process's rows of `random_batch` for start_step, start_step + 1, ..."""
  step = start_step
  while True:
    yield host_rows(random_batch(config, step), jax.process_index(), jax.process_count())
    step += 1
