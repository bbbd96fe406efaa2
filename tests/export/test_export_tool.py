"""tools/export.py on a training workdir (a checkpoint at step 3), and the export of a
converted classifier: restored as prediction restores them, exported with their metadata."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import torch_resnet3d
from stconsist_jax import models
from stconsist_jax.config import config_file
from stconsist_jax.configs import default
from stconsist_jax.export import exporter
from stconsist_jax.export import to_stablehlo
from stconsist_jax.models import pretrained
from stconsist_jax.prediction import export_metadata
from stconsist_jax.prediction import predict
from stconsist_jax.training import checkpointing
from stconsist_jax.training import distributed
from stconsist_jax.training import train_step
from tests import xla_env
from tests.export import export_models


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  config = export_models.tiny_config('spatial')
  path = tmp_path_factory.mktemp('run') / 'tiny'
  state = train_step.create_train_state(
    config, models.build_model(config.model), distributed.make_mesh()
  )
  config_file.save(config, path)
  ckpt = checkpointing.Checkpointer(path, keep=2, async_save=False)
  ckpt.save(3, state)
  ckpt.wait()
  ckpt.close()
  return path


def _tool(repo_root, *args):
  return subprocess.run(
    [sys.executable, str(repo_root / 'tools' / 'export.py'), *args],
    cwd=repo_root,
    env=xla_env.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_tool_exports_a_workdir_checkpoint(repo_root, workdir, tmp_path):
  names = tmp_path / 'names.txt'
  names.write_text(''.join(f'class {i}\n' for i in range(8)))
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'metadata.json').write_text('{}')  # An earlier export: replaced.
  result = _tool(
    repo_root,
    f'--workdir={workdir}',
    '--step=3',
    '--format=stablehlo',
    f'--output={tmp_path / "out"}',
    f'--class_names={names}',
    '--platforms=cpu',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'as stablehlo: uint8 clip batchx8x48x48x3' in result.stdout
  meta = export_metadata.read(tmp_path / 'out')
  assert meta['source']['step'] == 3 and meta['source']['path'] == str(workdir)
  assert meta['source']['config_hash'] and meta['exported_with']['platforms'] == ['cpu']
  assert meta['class_names'] == [f'class {i}' for i in range(8)]
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
    'metadata.json',
    'model.stablehlo',
  ]
  assert [p.name for p in tmp_path.iterdir() if 'partial' in p.name] == []
  # The restored checkpoint, applied by JAX, is what the file computes.
  restored = predict.restore_model(workdir, 3)
  clip = export_models.clips(2)
  call = to_stablehlo.load(tmp_path / 'out' / 'model.stablehlo')
  export_models.assert_equal_outputs(call(clip), export_models.jax_outputs(restored, clip))


def test_tool_user_errors_are_one_line(repo_root, workdir, tmp_path):
  (tmp_path / 'file').write_text('x')
  result = _tool(
    repo_root, f'--workdir={workdir}', '--format=onnx', f'--output={tmp_path / "file"}'
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    f'error: --output {tmp_path / "file"}: a file is there, not a folder'
  ]


def test_converted_classifier_exports_its_class_scores(tmp_path):
  arch = dict(depth=10, shortcut_type='A', widen_factor=0.125, conv1_t_size=3, no_max_pool=True)
  model = models.VideoClassifier(num_classes=3, backbone_kwargs=arch)
  clip = np.zeros((1, 4, 32, 32, 3), np.uint8)
  variables = torch_resnet3d.random_flax_variables(model, clip, train=False)
  pretrained.save_converted(
    str(tmp_path / 'weights'),
    dict(variables),
    {'architecture': arch, 'normalization': 'kinetics', 'num_classes': 3},
  )
  restored = predict.restore_model(
    init_from=tmp_path / 'weights',
    settings=default.get_config(),
    overrides=['data.num_frames=4', 'data.frame_size=32', 'data.image_size=32'],
  )
  meta = exporter.export(restored, tmp_path / 'out', exporter.Options('stablehlo', check=False))
  assert meta['source']['kind'] == 'init_from' and meta['source']['step'] == 'init_from'
  assert meta['model']['box_head'] == 'none' and meta['model']['classification_only']
  assert meta['outputs'] == [
    {
      'name': 'logits',
      'dtype': 'float32',
      'shape': ['batch', 3],
      'layout': export_metadata.OUTPUT_LAYOUTS['logits'],
    }
  ]
  clip = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), np.uint8)
  logits = to_stablehlo.load(tmp_path / 'out' / 'model.stablehlo')(clip)['logits']
  expected = np.asarray(jax.jit(lambda v, c: model.apply(v, c, train=False))(variables, clip))
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  assert json.loads((tmp_path / 'out' / 'metadata.json').read_text()) == meta
