"""Tests of tools/convert_torch_weights.py, stconsist_jax.models.torch_mapping and pretrained.

Parity against the PyTorch replica in both checkpoint generations, refusals, merging.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stconsist_jax.models import detector
from stconsist_jax.models import load_pretrained
from stconsist_jax.models import merge_pretrained
from stconsist_jax.models import pretrained
from stconsist_jax.models import torch_mapping
from stconsist_jax.training import initial_weights

from benchmarks import torch_resnet3d

REPO = pathlib.Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools' / 'convert_torch_weights.py'

# Relative tolerance of the issue: max |logit difference| / max |logit|, float32.
PARITY_RTOL = 1e-4
# Same as the presets in detector.py, written out independently.
KINETICS_MEAN = np.array([0.4345, 0.4051, 0.3775])
KINETICS_STD = np.array([0.2768, 0.2713, 0.2737])
ACTIVITYNET_MEAN = np.array([114.7748, 107.7354, 99.4750])


def _tool():
  spec = importlib.util.spec_from_file_location('convert_torch_weights', TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TOOL_MODULE = _tool()


def torch_input(clip: np.ndarray, generation: str) -> torch.Tensor:
  """uint8 NTHWC -> float NCTHW normalized as that generation's weights expect."""
  x = clip.astype(np.float64)
  if generation == '2017':
    x = x - ACTIVITYNET_MEAN
  else:
    x = (x / 255.0 - KINETICS_MEAN) / KINETICS_STD
  return torch.from_numpy(x.astype(np.float32)).permute(0, 4, 1, 2, 3).contiguous()


def random_clips(n: int, t: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, 256, (n, t, size, size, 3)).astype(np.uint8)


def assert_parity(torch_model, out_dir, generation, clip):
  model, variables = load_pretrained(str(out_dir))
  ours = np.asarray(jax.jit(lambda v, c: model.apply(v, c, train=False))(variables, clip))
  with torch.no_grad():
    ref = torch_model(torch_input(clip, generation)).numpy()
  assert ours.shape == ref.shape
  rel = np.abs(ours - ref).max() / np.abs(ref).max()
  assert rel < PARITY_RTOL, f'relative logit difference {rel:.2e}'


def make_checkpoint(tmp_path, depth, shortcut, widen, classes, generation, seed=0, conv1_t_size=7):
  model = torch_resnet3d.randomize(
    torch_resnet3d.make_torch_resnet(depth, shortcut, widen, classes, conv1_t_size=conv1_t_size),
    seed,
  )
  path = tmp_path / f'r{depth}_{shortcut}_{generation}.pth'
  torch_resnet3d.save_checkpoint(model, path, generation, arch=f'resnet-{depth}')
  return model, path


def leftovers(directory) -> list[str]:
  return sorted(
    p
    for p in os.listdir(directory)
    if not p.endswith('.pth') and not p.endswith('.txt') and not p.endswith('.pkl')
  )


# ------------------------------------------------------------------------ parity


def assert_metadata(out_dir, source, generation, shortcut, num_classes):
  with open(out_dir / 'metadata.json') as f:
    metadata = json.load(f)
  assert metadata['generation'] == generation
  assert metadata['normalization'] == ('activitynet_0_255' if generation == '2017' else 'kinetics')
  assert metadata['architecture']['shortcut_type'] == shortcut
  assert metadata['num_classes'] == num_classes
  assert metadata['source_sha256'] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_r34_full_width_parity(tmp_path):
  """The weights the configs start from (2020 release, R3D-34, 700 classes) at full width,
  through the real command line. The 2017 release differs in key names, shortcut A and
  normalization, all checked at small widths below; the width itself is the same code."""
  model, path = make_checkpoint(tmp_path, 34, 'B', 1.0, 700, '2020')
  out = tmp_path / 'out'
  proc = subprocess.run(
    [sys.executable, str(TOOL), '--input', str(path), '--output', str(out)],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert 'depth 34' in proc.stdout and 'shortcut B' in proc.stdout
  assert_parity(model, out, '2020', random_clips(1, 16, 64))
  assert_metadata(out, path, '2020', 'B', 700)
  assert leftovers(tmp_path) == ['out']


@pytest.mark.parametrize(
  'depth,shortcut,widen,generation,t_size',
  [
    (10, 'A', 0.25, '2017', 7),
    (10, 'B', 0.125, '2020', 3),
    (18, 'B', 0.25, '2020', 7),
    (50, 'A', 0.125, '2017', 7),
    (50, 'B', 0.125, '2020', 7),
  ],
)
def test_small_width_parity(tmp_path, capsys, depth, shortcut, widen, generation, t_size):
  model, path = make_checkpoint(
    tmp_path, depth, shortcut, widen, 11, generation, seed=depth, conv1_t_size=t_size
  )
  assert TOOL_MODULE.run(['--input', str(path), '--output', str(tmp_path / 'out')]) == 0
  found = capsys.readouterr().out
  assert f'depth {depth}' in found and f'shortcut {shortcut}' in found
  assert f'widen_factor {widen:g}' in found and f'conv1_t_size {t_size}' in found
  assert_parity(model, tmp_path / 'out', generation, random_clips(2, 16, 48, seed=depth))
  assert_metadata(tmp_path / 'out', path, generation, shortcut, 11)


def test_doubled_prefix_raw_state_dict_and_override(tmp_path):
  model = torch_resnet3d.randomize(torch_resnet3d.make_torch_resnet(10, 'B', 0.125, 5))
  raw = {f'module.module.{k}': v for k, v in model.state_dict().items()}
  torch.save(raw, tmp_path / 'raw.pth')
  out = tmp_path / 'out'
  assert (
    TOOL_MODULE.run(
      [
        '--input',
        str(tmp_path / 'raw.pth'),
        '--output',
        str(out),
        '--normalization',
        'activitynet_0_255',
      ]
    )
    == 0
  )
  net, variables = load_pretrained(str(out))
  assert net.normalization == 'activitynet_0_255'
  assert_parity(model, out, '2017', random_clips(1, 16, 32))


def test_drop_classifier(tmp_path):
  _, path = make_checkpoint(tmp_path, 10, 'B', 0.125, 9, '2020')
  out = tmp_path / 'out'
  assert TOOL_MODULE.run(['--input', str(path), '--output', str(out), '--drop-classifier']) == 0
  _, variables = load_pretrained(str(out))
  assert set(variables['params']) == {'backbone'}
  assert set(variables['batch_stats']) == {'backbone'}


# ----------------------------------------------------------------- refusals


def run_cli_inprocess(capsys, *args):
  rc = TOOL_MODULE.run(list(args))
  return rc, capsys.readouterr().err


def assert_refused(rc, err, tmp_path, *phrases):
  assert rc != 0
  assert err.startswith('error: cannot convert')
  assert err.count('\n') == 1, f'expected one paragraph, got: {err!r}'
  for phrase in phrases:
    assert phrase in err, f'{phrase!r} not in {err!r}'
  assert leftovers(tmp_path) == []


def test_truncated_file_subprocess(tmp_path):
  _, path = make_checkpoint(tmp_path, 10, 'B', 0.125, 5, '2020')
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  proc = subprocess.run(
    [sys.executable, str(TOOL), '--input', str(path), '--output', str(tmp_path / 'out')],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  assert_refused(proc.returncode, proc.stderr, tmp_path, 'truncated')
  assert 'Traceback' not in proc.stderr


def test_not_a_checkpoint(tmp_path, capsys):
  text = tmp_path / 'notes.txt'
  text.write_text('this is not a checkpoint\n' * 20)
  rc, err = run_cli_inprocess(capsys, '--input', str(text), '--output', str(tmp_path / 'o'))
  assert_refused(rc, err, tmp_path, 'not a readable PyTorch checkpoint')

  other = tmp_path / 'other.pkl'
  torch.save({'epoch': 3, 'weights': [1, 2, 3]}, other)
  rc, err = run_cli_inprocess(capsys, '--input', str(other), '--output', str(tmp_path / 'o'))
  assert_refused(rc, err, tmp_path, 'without tensors')

  bert_like = tmp_path / 'bert.pkl'
  torch.save({'embeddings.weight': torch.zeros(3, 4)}, bert_like)
  rc, err = run_cli_inprocess(capsys, '--input', str(bert_like), '--output', str(tmp_path / 'o'))
  assert_refused(rc, err, tmp_path, "no 'conv1.weight'")

  rc, err = run_cli_inprocess(
    capsys, '--input', str(tmp_path / 'missing.pth'), '--output', str(tmp_path / 'o')
  )
  assert_refused(rc, err, tmp_path, 'does not exist')


def test_other_depth(tmp_path, capsys):
  _, path = make_checkpoint(tmp_path, 18, 'B', 0.125, 5, '2020')
  rc, err = run_cli_inprocess(
    capsys, '--input', str(path), '--output', str(tmp_path / 'o'), '--depth', '34'
  )
  assert_refused(rc, err, tmp_path, 'does not fit a depth-34', '80 missing', 'layer1.2.conv1.*')

  # A depth-18 state_dict with one block removed is no member of the family.
  state = torch.load(path, weights_only=True)['state_dict']
  state = {k: v for k, v in state.items() if not k.startswith('layer3.1.')}
  torch.save({'state_dict': state}, tmp_path / 'broken.pth')
  rc, err = run_cli_inprocess(
    capsys, '--input', str(tmp_path / 'broken.pth'), '--output', str(tmp_path / 'o')
  )
  assert_refused(rc, err, tmp_path, '[2, 2, 1, 2]', 'no depth')


def test_forced_shortcut_mismatch(tmp_path, capsys):
  _, path = make_checkpoint(tmp_path, 10, 'A', 0.125, 5, '2017')
  rc, err = run_cli_inprocess(
    capsys, '--input', str(path), '--output', str(tmp_path / 'o'), '--shortcut', 'B'
  )
  assert_refused(rc, err, tmp_path, '--shortcut B', 'uses shortcut A')


def test_misshaped_tensor(tmp_path, capsys):
  model, _ = make_checkpoint(tmp_path, 10, 'B', 0.125, 5, '2020')
  state = model.state_dict()
  state['layer2.0.bn1.running_var'] = torch.ones(7)
  state['extra.weight'] = torch.ones(2)
  torch.save({'state_dict': state}, tmp_path / 'bad.pth')
  rc, err = run_cli_inprocess(
    capsys, '--input', str(tmp_path / 'bad.pth'), '--output', str(tmp_path / 'o')
  )
  assert_refused(
    rc,
    err,
    tmp_path,
    'mis-shaped',
    'layer2.0.bn1.running_var: file (7,) vs model (16,)',
    'unexpected (extra.*)',
  )


def test_existing_output_untouched(tmp_path, capsys):
  _, path = make_checkpoint(tmp_path, 10, 'B', 0.125, 5, '2020')
  (tmp_path / 'o').mkdir()
  (tmp_path / 'o' / 'keep').write_text('x')
  assert TOOL_MODULE.run(['--input', str(path), '--output', str(tmp_path / 'o')]) == 1
  assert 'already exists' in capsys.readouterr().err
  assert os.listdir(tmp_path / 'o') == ['keep']


def _fail_metadata_write(exception):
  def write(directory, metadata):
    del directory, metadata
    raise exception

  return write


def test_interrupted_conversion_is_refused_then_replaced(tmp_path, capsys, caplog, monkeypatch):
  _, path = make_checkpoint(tmp_path, 10, 'B', 0.125, 5, '2020')
  out = tmp_path / 'o'
  # An error while writing removes what was written.
  monkeypatch.setattr(pretrained, '_write_metadata', _fail_metadata_write(OSError('full')))
  with pytest.raises(OSError, match='full'):
    TOOL_MODULE.convert(str(path), str(out))
  assert not out.exists()
  # A crash (here an interrupt) between variables/ and metadata.json leaves them behind.
  monkeypatch.setattr(pretrained, '_write_metadata', _fail_metadata_write(KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    TOOL_MODULE.convert(str(path), str(out))
  assert sorted(os.listdir(out)) == ['variables']
  with pytest.raises(ValueError, match='unfinished conversion.*convert_torch_weights'):
    pretrained.read_metadata(str(out))
  with pytest.raises(ValueError, match='unfinished conversion'):
    initial_weights.load_init_variables(str(out))
  monkeypatch.undo()

  assert TOOL_MODULE.run(['--input', str(path), '--output', str(out)]) == 0
  assert 'Replacing the unfinished conversion' in caplog.text
  assert sorted(os.listdir(out)) == ['metadata.json', 'variables']
  assert set(initial_weights.load_init_variables(str(out))) == {'params', 'batch_stats'}
  capsys.readouterr()
  rc, err = run_cli_inprocess(capsys, '--input', str(path), '--output', str(out))
  assert rc == 1 and 'already holds a converted checkpoint' in err


def test_convert_from_and_to_a_bucket_then_load(gcs_bucket, tmp_path, capsys, monkeypatch):
  from stconsist_jax.core import fileio  # pylint: disable=g-import-not-at-top

  model, path = make_checkpoint(tmp_path, 10, 'B', 0.125, 5, '2020')
  source = f'{gcs_bucket}/downloads/{path.name}'
  fileio.as_path(source).write_bytes(path.read_bytes())
  out = f'{gcs_bucket}/weights/r10'
  assert TOOL_MODULE.run(['--input', source, '--output', out]) == 0
  assert sorted(p.name for p in fileio.as_path(out).iterdir()) == ['metadata.json', 'variables']
  metadata = pretrained.read_metadata(out)
  assert metadata['source_file'] == path.name
  assert metadata['source_sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert_parity(model, out, '2020', random_clips(1, 16, 32))
  _, loaded = load_pretrained(out)
  init = initial_weights.load_init_variables(out)
  np.testing.assert_array_equal(
    init['params']['backbone']['conv1']['kernel'], loaded['params']['backbone']['conv1']['kernel']
  )
  capsys.readouterr()
  rc, err = run_cli_inprocess(capsys, '--input', str(path), '--output', out)
  assert rc == 1 and 'already holds a converted checkpoint' in err
  assert leftovers(tmp_path) == []

  # An interrupted conversion to a bucket is refused by readers, then replaced.
  unfinished = f'{gcs_bucket}/weights/unfinished'
  monkeypatch.setattr(pretrained, '_write_metadata', _fail_metadata_write(KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    TOOL_MODULE.convert(str(path), unfinished)
  monkeypatch.undo()
  with pytest.raises(ValueError, match='unfinished conversion'):
    initial_weights.load_init_variables(unfinished)
  assert TOOL_MODULE.run(['--input', str(path), '--output', unfinished]) == 0
  assert pretrained.is_finished(unfinished)


def test_missing_bucket_input_is_one_paragraph(gcs_bucket, tmp_path, capsys):
  rc, err = run_cli_inprocess(
    capsys, '--input', f'{gcs_bucket}/none.pth', '--output', f'{gcs_bucket}/o'
  )
  assert_refused(rc, err, tmp_path, 'does not exist')


# ------------------------------------------------------- keys, load and merge


def test_key_mapping_examples():
  assert torch_mapping.torch_key_to_flax('layer2.0.downsample.1.running_mean') == (
    'batch_stats',
    ('backbone', 'layer2_0', 'downsample_bn', 'mean'),
  )
  assert torch_mapping.torch_key_to_flax('layer4.2.conv3.weight') == (
    'params',
    ('backbone', 'layer4_2', 'conv3', 'kernel'),
  )
  assert torch_mapping.torch_key_to_flax('bn1.weight') == ('params', ('backbone', 'bn1', 'scale'))
  assert torch_mapping.torch_key_to_flax('fc.weight') == ('params', ('classifier', 'kernel'))
  clean, had_prefix, had_nbt = torch_mapping.clean_state_dict(
    {'module.module.conv1.weight': 1, 'module.bn1.num_batches_tracked': 2}
  )
  assert clean == {'conv1.weight': 1} and had_prefix and had_nbt
  with pytest.raises(KeyError):
    torch_mapping.torch_key_to_flax('layer1.0.attention.weight')


def test_load_pretrained_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_pretrained(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='not a converted checkpoint'):
    load_pretrained(str(tmp_path / 'empty'))


def _detector_variables(num_classes, widen):
  model = detector.Detector(
    num_classes=num_classes,
    backbone_kwargs=dict(depth=10, shortcut_type='B', widen_factor=widen),
    box_head='mlp',
    box_hidden=(16,),
  )
  return torch_resnet3d.random_flax_variables(
    model, jnp.zeros((1, 8, 32, 32, 3), jnp.uint8), train=False, seed=1
  )


def test_merge_pretrained(tmp_path):
  model, path = make_checkpoint(tmp_path, 10, 'B', 0.125, 7, '2020')
  assert TOOL_MODULE.run(['--input', str(path), '--output', str(tmp_path / 'o')]) == 0
  _, pre = load_pretrained(str(tmp_path / 'o'))
  torch_state = model.state_dict()

  target = _detector_variables(101, 0.125)
  merged, report = merge_pretrained(target, pre)
  assert not report.classifier_copied and 'kept the fresh classifier' in str(report)
  np.testing.assert_array_equal(
    merged['params']['classifier']['kernel'], target['params']['classifier']['kernel']
  )
  np.testing.assert_array_equal(
    merged['params']['box_head']['out']['kernel'], target['params']['box_head']['out']['kernel']
  )
  # Backbone values come from the torch tensors (transposed), stats included.
  np.testing.assert_allclose(
    merged['params']['backbone']['layer2_0']['conv1']['kernel'],
    torch_state['layer2.0.conv1.weight'].numpy().transpose(2, 3, 4, 1, 0),
  )
  np.testing.assert_allclose(
    merged['batch_stats']['backbone']['layer3_0']['bn2']['var'],
    torch_state['layer3.0.bn2.running_var'].numpy(),
  )
  n_torch_backbone = sum(
    1 for k in torch_state if not k.startswith('fc.') and 'num_batches' not in k
  )
  assert report.backbone_tensors == n_torch_backbone

  merged7, report7 = merge_pretrained(_detector_variables(7, 0.125), pre)
  assert report7.classifier_copied
  np.testing.assert_allclose(
    merged7['params']['classifier']['kernel'], torch_state['fc.weight'].numpy().T
  )

  with pytest.raises(ValueError, match=r'backbone/bn1/(bias|scale).*\(8,\).*\(16,\)'):
    merge_pretrained(_detector_variables(7, 0.25), pre)


def test_pretrained_module_has_no_torch():
  code = (
    'import sys; import stconsist_jax.models as m; '
    "assert 'torch' not in sys.modules, 'torch imported'"
  )
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)
