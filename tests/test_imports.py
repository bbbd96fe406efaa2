"""The layers below the data pipeline load without TensorFlow, OpenCV or torch, as imported.

Accelerator machines may have JAX alone; the deploy path has neither JAX nor TensorFlow.
The static rules are in test_layering.py; this checks what importing really loads.
"""

import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'stconsist_jax'
# Every module of these layers, and the evaluation and TF-free data modules.
TF_FREE_LAYERS = ('core', 'config', 'configs', 'models', 'metrics', 'training')
TF_FREE_MODULES = (
  'stconsist_jax.data.pipeline.random_source',
  'stconsist_jax.evaluation.restore',
  'stconsist_jax.evaluation.forward',
  'stconsist_jax.evaluation.report',
  'stconsist_jax.evaluation.evaluator',
  'stconsist_jax.evaluation.evaluators.clips',
  'stconsist_jax.evaluation.evaluators.frames',
  'stconsist_jax.evaluation.evaluators.tubes',
)


def tf_free_modules() -> list[str]:
  names = []
  for layer in TF_FREE_LAYERS:
    for path in sorted((PACKAGE / layer).rglob('*.py')):
      parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
      names.append('.'.join(p for p in parts if p != '__init__'))
  return names + list(TF_FREE_MODULES)


def test_the_prediction_path_imports_no_tensorflow(repo_root):
  code = (
    "import sys\nfrom stconsist_jax.prediction import predict\nprint('tensorflow' in sys.modules)"
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=repo_root, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == 'False'


def test_lower_layers_import_without_tensorflow_opencv_or_torch(repo_root):
  modules = tf_free_modules()
  assert 'stconsist_jax.training.train_step' in modules and len(modules) > 30
  code = (
    'import importlib, sys\n'
    f'for m in {modules!r}: importlib.import_module(m)\n'
    "print(sorted(m for m in ('tensorflow', 'cv2', 'torch') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=repo_root, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'


def test_export_loads_its_converters_only_when_exporting(repo_root):
  code = (
    'import sys\n'
    'from stconsist_jax.export import exporter\n'
    "print(sorted(m for m in ('tensorflow', 'jax2onnx', 'onnx') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=repo_root, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'


def test_export_metadata_reader_needs_the_standard_library_alone(repo_root):
  heavy = ('jax', 'flax', 'orbax', 'tensorflow', 'numpy', 'etils', 'cv2', 'ml_collections')
  code = (
    'import sys\n'
    'from stconsist_jax.prediction import export_metadata\n'
    f'print(sorted(m for m in {heavy!r} if m in sys.modules))'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=repo_root, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'
