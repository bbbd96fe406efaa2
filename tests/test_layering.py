"""The house rules, read from the source: imports point down the layers, and TensorFlow and
OpenCV stay in the layers allowed to use them (docs/DESIGN.md, section 0).

Every `import` statement counts, also those inside functions: a lazy import is still an arrow.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'stconsist_jax'

# Lowest first; a module may import from its own layer or any layer before it. The configs
# are experiments built from the library (as big_vision's), so they sit near the top.
LAYERS = (
  'core',
  'config',
  'data',
  'models',
  'metrics',
  'training',
  'evaluation',
  'prediction',
  'export',
  'configs',
  'apps',
)
# Third-party roots that bring TensorFlow (clu's writers import it), OpenCV, or the ONNX
# converter (jax2onnx, onnx).
TENSORFLOW = ('tensorflow', 'tensorflow_datasets', 'clu')
OPENCV = ('cv2',)
ONNX_CONVERTER = ('jax2onnx', 'onnx', 'onnx_ir')
# Packages (dotted, below stconsist_jax) allowed to import each; the rest of the house may not.
# The export layer's SavedModel route is the one module outside data/ and the summaries
# with TensorFlow (jax2tf's SavedModel), loaded inside its export function; the ONNX route
# alone has the converter.
ALLOWED = {
  TENSORFLOW: (
    'data.ucf101',
    'data.synthetic',
    'data.pipeline',
    'training.summaries',
    'export.to_savedmodel',
  ),
  OPENCV: ('data.ucf101', 'data.synthetic', 'prediction'),
  ONNX_CONVERTER: ('export.to_onnx',),
}
# Modules of an allowed package that must stay free of them all the same.
EXCEPTIONS = {'data.pipeline.random_source'}


def module_name(path: pathlib.Path) -> str:
  """`data/pipeline/sources.py` -> 'data.pipeline.sources' (relative to the package)."""
  parts = path.relative_to(PACKAGE).with_suffix('').parts
  return '.'.join(p for p in parts if p != '__init__')


def imported_names(source: str, module: str) -> list[str]:
  """The absolute module names a source imports (relative imports resolved against `module`)."""
  names = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = ['stconsist_jax', *module.split('.')][: -node.level]
        base = '.'.join([*anchor, base] if base else anchor)
      names += [f'{base}.{alias.name}' for alias in node.names]
    elif _is_import_module_call(node):
      names.append(node.args[0].value)
  return names


def _is_import_module_call(node: ast.AST) -> bool:
  """`importlib.import_module('name')`: an import all the same."""
  return (
    isinstance(node, ast.Call)
    and isinstance(node.func, ast.Attribute)
    and node.func.attr == 'import_module'
    and bool(node.args)
    and isinstance(node.args[0], ast.Constant)
    and isinstance(node.args[0].value, str)
  )


def layer_of(module: str) -> int | None:
  """Index in LAYERS of a package module ('training.train' -> 6); None at the top level."""
  first = module.split('.')[0]
  return LAYERS.index(first) if first in LAYERS else None


def upward_imports(module: str, source: str) -> list[str]:
  own = layer_of(module)
  found = []
  for name in imported_names(source, module):
    if not name.startswith('stconsist_jax.'):
      continue
    target = layer_of(name[len('stconsist_jax.') :])
    if target is not None and own is not None and target > own:
      found.append(f'{module} -> {name} ({LAYERS[own]} imports {LAYERS[target]})')
  return sorted(set(found))


def forbidden_imports(module: str, source: str) -> list[str]:
  found = []
  for roots, allowed in ALLOWED.items():
    inside = any(module == a or module.startswith(a + '.') for a in allowed)
    if inside and module not in EXCEPTIONS:
      continue
    for name in imported_names(source, module):
      if name.split('.')[0] in roots:
        found.append(f'{module} imports {name}')
  return sorted(set(found))


def package_modules() -> dict[str, str]:
  return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob('*.py'))}


def test_every_module_sits_in_a_layer():
  stray = [m for m in package_modules() if m and layer_of(m) is None]
  assert not stray, f'modules outside the layer packages: {stray}'


def test_imports_point_down_the_layers():
  found = [f for m, s in package_modules().items() for f in upward_imports(m, s)]
  assert not found, 'imports from a higher layer:\n' + '\n'.join(found)


def test_tensorflow_and_opencv_stay_in_their_layers():
  found = [f for m, s in package_modules().items() for f in forbidden_imports(m, s)]
  assert not found, 'TensorFlow/OpenCV outside their layers:\n' + '\n'.join(found)


@pytest.mark.parametrize(
  'module, source, expected',
  [
    # A deliberately wrong arrow, also when it hides inside a function.
    ('metrics.tubes', 'def f():\n  from stconsist_jax.training import train\n', 1),
    ('core.boxes', 'import stconsist_jax.models.detector\n', 1),
    ('evaluation.report', 'from ..training import checkpointing\n', 0),
    ('core.fileio', 'from . import boxes\n', 0),
    ('training.train', 'from stconsist_jax.data.pipeline import sources\n', 0),
  ],
)
def test_the_layering_check_bites(module, source, expected):
  assert len(upward_imports(module, source)) == expected


@pytest.mark.parametrize(
  'module, source, expected',
  [
    ('models.detector', 'import cv2\n', 1),
    ('metrics.frame_ap', 'def f():\n  import tensorflow as tf\n', 1),
    ('training.train', 'from clu import metric_writers\n', 1),
    ('data.pipeline.random_source', 'import tensorflow\n', 1),
    ('data.pipeline.clips', 'import tensorflow as tf\n', 0),
    ('prediction.video_files', 'import cv2\n', 0),
    ('metrics.tubes', 'import cv2\n', 1),
    ('training.train', "importlib.import_module('clu.metric_writers')\n", 1),
    ('export.to_savedmodel', 'def f():\n  import tensorflow as tf\n', 0),
    ('export.exporter', 'import tensorflow as tf\n', 1),
    ('export.to_onnx', 'def f():\n  import jax2onnx\n', 0),
    ('export.to_stablehlo', 'import onnx\n', 1),
    ('prediction.export_metadata', 'import jax2onnx\n', 1),
  ],
)
def test_the_heavy_import_check_bites(module, source, expected):
  assert len(forbidden_imports(module, source)) == expected
