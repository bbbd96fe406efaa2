"""Which training videos keep their labels: keyed hashes of (seed, video name), nested.

A video keeps a label when the hash of its name, keyed by the purpose and the seed,
falls below `fraction` (`kept`, inside tf.data): every host and every restart agrees,
and the set kept at a smaller fraction is contained in the set at a larger one. For a
fixed list, `lowest_share` takes exactly the fraction's count of lowest hashes (the
shipped label lists), equally nested.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import tensorflow as tf

from stconsist_jax.core import fileio

HASH_BUCKETS = 1 << 30
# Purposes: keeping a video's boxes (`data.box_label_fraction`) and keeping a video's
# class and boxes (`data.labeled_video_fraction`, the protocol of E2E-SSL).
BOX_LABEL = 'box_label'
VIDEO_LABEL = 'video_label'
_KEY_SALT = 0x5EED


def derive_seed(*parts: int | str) -> int:
  """A stable 31-bit integer from any parts (independent of PYTHONHASHSEED)."""
  digest = hashlib.sha256('/'.join(str(p) for p in parts).encode()).digest()
  return int.from_bytes(digest[:4], 'little') & 0x7FFFFFFF


def check_fraction(fraction: float, what: str) -> float:
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'{what} must be in [0, 1], got {fraction}')
  return float(fraction)


def kept(names: tf.Tensor, seed: int, fraction: float, purpose: str) -> tf.Tensor:
  """Whether each video name keeps the labels of `purpose` (a bool tensor like `names`)."""
  check_fraction(fraction, purpose)
  bucket = tf.strings.to_hash_bucket_strong(
    names, HASH_BUCKETS, key=[derive_seed(purpose, seed), _KEY_SALT]
  )
  return bucket < int(round(fraction * HASH_BUCKETS))


def kept_names(
  names: Sequence[str], seed: int, fraction: float, purpose: str = VIDEO_LABEL
) -> list[str]:
  """The names of `names` that keep their labels, in their given order."""
  if not names:
    return []
  mask = kept(tf.constant(list(names)), seed, fraction, purpose).numpy()
  return [name for name, keep in zip(names, mask) if keep]


def lowest_share(
  names: Sequence[str], seed: int, fraction: float, purpose: str = VIDEO_LABEL
) -> list[str]:
  """Exactly round(fraction * len(names)) names: those of lowest keyed hash, in order.

  For a fixed list (a published split) this gives the exact share while staying nested
  (a larger fraction adds names, never swaps them) and the same on every machine.
  """
  check_fraction(fraction, purpose)
  if not names:
    return []
  buckets = tf.strings.to_hash_bucket_strong(
    tf.constant(list(names)), HASH_BUCKETS, key=[derive_seed(purpose, seed), _KEY_SALT]
  ).numpy()
  ranked = sorted(range(len(names)), key=lambda i: (int(buckets[i]), names[i]))
  chosen = set(ranked[: int(round(fraction * len(names)))])
  return [name for i, name in enumerate(names) if i in chosen]


def read_video_list(path: str | os.PathLike) -> list[str]:
  """Video names of a UCF-101 split list ('Class/v_Class_gXX_cYY[.avi][ label]')."""
  names = []
  for line in fileio.as_path(path).read_text().splitlines():
    if line.strip():
      name = line.split()[0]
      names.append(name[:-4] if name.endswith('.avi') else name)
  return names


def write_video_list(path: str | os.PathLike, names: Iterable[str]) -> None:
  fileio.atomic_write(path, ''.join(f'{name}\n' for name in names))
