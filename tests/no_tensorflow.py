"""Subprocesses on a machine without TensorFlow: a random-data training run then writes no
TensorBoard summaries and skips TensorFlow's import, seconds of every launch.py run."""

import os
import pathlib

SITECUSTOMIZE = "import sys\nsys.modules['tensorflow'] = None  # import raises ImportError\n"
# What a run logs when it cannot import TensorFlow (summaries.tensorboard_writer).
NO_TENSORBOARD = 'No TensorBoard summaries'


def env(base: dict[str, str], folder: pathlib.Path) -> dict[str, str]:
  """`base` with `folder` first on PYTHONPATH, holding a sitecustomize.py that makes
  `import tensorflow` fail in every Python process started with it."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  path = [os.fspath(folder), base.get('PYTHONPATH', '')]
  return dict(base, PYTHONPATH=os.pathsep.join(p for p in path if p))
