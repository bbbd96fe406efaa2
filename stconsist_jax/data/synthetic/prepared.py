"""A synthetic UCF-101-layout dataset, generated and built with TFDS once, then reused.

Used by the demo and the semi-supervision study: `prepare_synthetic(cache, spec, size)`
returns a TFDS data_dir; a cache made from another spec or frame size is rebuilt.
"""

import dataclasses
import json
import pathlib
import shutil
import time

from absl import logging

from stconsist_jax.core import fileio
from stconsist_jax.data.synthetic import generator as synthetic
from stconsist_jax.data.ucf101 import dataset_build


def _stamp(path: pathlib.Path) -> str | None:
  return path.read_text() if path.exists() else None


def videos_dir(cache: str | pathlib.Path) -> pathlib.Path:
  """Where the synthetic UCF-101 folder of a cache lives."""
  return pathlib.Path(cache) / 'ucf101'


def ensure_videos(cache: pathlib.Path, spec: synthetic.SyntheticSpec) -> pathlib.Path:
  """The synthetic UCF-101 folder of `spec` under `cache`, generated unless present."""
  root = videos_dir(cache)
  stamp = root / 'spec.json'
  wanted = json.dumps(dataclasses.asdict(spec), sort_keys=True)
  if _stamp(stamp) == wanted:
    logging.info('Reusing synthetic videos in %s', root)
    return root
  t0 = time.time()
  print(f'generating synthetic UCF-101-layout videos in {root} ...', flush=True)
  synthetic.generate(root, spec, overwrite=True)
  fileio.atomic_write(stamp, wanted)
  print(f'videos written in {time.time() - t0:.1f} s', flush=True)
  return root


def ensure_tfds(
  cache: pathlib.Path, manual_dir: pathlib.Path, frame_size: int, split: int = 1
) -> pathlib.Path:
  """The TFDS data dir holding a build of `manual_dir`, built unless already there."""
  data_dir = cache / 'tfds'
  stamp = data_dir / f'built_split{split}_{frame_size}.json'
  wanted = _stamp(manual_dir / 'spec.json')
  if wanted is not None and _stamp(stamp) == wanted:
    logging.info('Reusing TFDS build in %s', data_dir)
    return data_dir
  if data_dir.exists():
    shutil.rmtree(data_dir)
  t0 = time.time()
  print(
    f'building the TFDS dataset (frames {frame_size}x{frame_size}) in {data_dir} ...', flush=True
  )
  dataset_build.build(manual_dir, data_dir, split=split, frame_size=frame_size)
  fileio.atomic_write(stamp, wanted or '')
  print(f'TFDS build done in {time.time() - t0:.1f} s', flush=True)
  return data_dir


def spec_from_config(config) -> synthetic.SyntheticSpec:
  """The SyntheticSpec of a config's `synthetic` group (configs/demo.py)."""
  return synthetic.SyntheticSpec(clips_per_group=1, **config.synthetic.to_dict())


def prepare_synthetic(
  cache: str | pathlib.Path, spec: synthetic.SyntheticSpec, frame_size: int, split: int = 1
) -> pathlib.Path:
  """Videos + TFDS build for `spec` under `cache`; returns the TFDS data_dir."""
  cache = pathlib.Path(cache)
  return ensure_tfds(cache, ensure_videos(cache, spec), frame_size, split)


def use_synthetic(config, cache: str | pathlib.Path) -> None:
  """Prepares the data of `config.synthetic` and points config.data/model at it."""
  data_dir = prepare_synthetic(
    cache, spec_from_config(config), config.data.frame_size, config.data.split
  )
  with config.unlocked():
    config.data.data_dir = str(fileio.absolute(data_dir))
    config.model.num_classes = config.synthetic.num_classes
