"""The model, losses, metrics and train step load without TensorFlow, OpenCV or torch.

Accelerator machines may have JAX alone; only the data layer needs TensorFlow/OpenCV.
"""

import subprocess
import sys

TF_FREE = (
  'stconsist_jax.models',
  'stconsist_jax.losses',
  'stconsist_jax.metrics',
  'stconsist_jax.boxes',
  'stconsist_jax.train_step',
  'stconsist_jax.train',
  'stconsist_jax.data.random_source',
  'stconsist_jax.checkpointing',
  'stconsist_jax.distributed',
  'stconsist_jax.evaluate',
  'stconsist_jax.visualize',
  'stconsist_jax.config_lib',
)


def test_core_modules_import_without_tensorflow_opencv_or_torch(repo_root):
  code = (
    'import importlib, sys\n'
    f'for m in {TF_FREE!r}: importlib.import_module(m)\n'
    "print(sorted(m for m in ('tensorflow', 'cv2', 'torch') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=repo_root, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'
