"""An export's metadata.json: written beside the model with what prediction needs, read back
the same, and refused in one line when corrupt, too large or not its model's."""

import json
import os

import pytest

import stconsist_jax
from stconsist_jax.configs import demo
from stconsist_jax.export import exporter
from stconsist_jax.prediction import export_metadata
from tests.export import export_models

MetadataError = export_metadata.MetadataError


@pytest.fixture(scope='module')
def export_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('meta') / 'export'
  exporter.export(
    export_models.restored('spatial'), out, exporter.Options('stablehlo', check=False)
  )
  return out


@pytest.fixture
def meta(export_dir):
  return export_metadata.read(export_dir)


def test_metadata_holds_what_prediction_needs(export_dir, meta):
  assert meta['format'] == 'stablehlo' and meta['model_file'] == 'model.stablehlo'
  assert meta['project'] == {'name': 'stconsist_jax', 'version': stconsist_jax.__version__}
  assert meta['source'] == {
    'kind': 'workdir',
    'path': '/runs/tiny',
    'step': 7,
    'config_hash': 'abcdef012345',
  }
  assert meta['model']['box_head'] == 'spatial' and meta['model']['num_classes'] == 8
  assert meta['class_names'] == [f'action {i}' for i in range(8)]
  assert {k: meta['clip'][k] for k in export_metadata.CLIP_FIELDS} == {
    'num_frames': 8,
    'frame_stride': 1,
    'frame_size': 48,
    'image_size': 48,
  }
  # The 'kinetics' preset, typed from the 2020 release's mean and std.
  assert meta['normalization']['preset'] == 'kinetics'
  assert meta['normalization']['scale'] == pytest.approx(1 / 255)
  assert meta['normalization']['mean'] == [0.4345, 0.4051, 0.3775]
  assert meta['normalization']['std'] == [0.2768, 0.2713, 0.2737]
  assert meta['input'] == {
    'name': 'clip',
    'dtype': 'uint8',
    'shape': ['batch', 8, 48, 48, 3],
    'layout': 'NTHWC',
  }
  assert [(o['name'], o['dtype'], o['shape']) for o in meta['outputs']] == [
    ('boxes', 'float32', ['batch', 4]),
    ('logits', 'float32', ['batch', 8]),
  ]
  assert all(o['layout'] for o in meta['outputs'])
  # The demo's linking (IoU 0.3), so that predict from the export links as from the workdir.
  assert meta['linking']['iou_threshold'] == 0.3 and meta['tubelet'] is None
  # The same dict from the folder, the model file and the metadata file.
  for path in (export_dir / 'model.stablehlo', export_dir / 'metadata.json'):
    assert export_metadata.read(path) == meta
  assert export_metadata.check_model_file(meta, export_dir).endswith('model.stablehlo')


def _refused(text, tmp_path):
  path = tmp_path / 'metadata.json'
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  with pytest.raises(MetadataError) as e:
    export_metadata.read(tmp_path)
  message = str(e.value)
  assert '\n' not in message and message.startswith(str(path))
  return message


def _edited(meta, key, value):
  meta = json.loads(json.dumps(meta))
  *parents, last = key.split('.')
  target = meta
  for part in parents:
    target = target[part]
  if value is _DELETE:
    del target[last]
  else:
    target[last] = value
  return json.dumps(meta)


_DELETE = object()


@pytest.mark.parametrize(
  'key, value, expected',
  [
    ('format_version', 2, 'format_version 2 is not 1'),
    ('format', 'tflite', "format 'tflite' is not one of"),
    ('model_file', '../../etc/passwd', "model_file '../../etc/passwd' is not 'model.stablehlo'"),
    ('model_sha256', 'abc', 'not a SHA-256 hex digest'),
    ('clip.num_frames', '8', "clip.num_frames must be int, found '8'"),
    ('clip.num_frames', 16, "input.shape ['batch', 8, 48, 48, 3] does not fit the clip"),
    ('clip.frame_size', True, 'clip.frame_size must be int, found true'),
    ('class_names', ['a', 'b'], 'class_names must be 8 strings (model.num_classes), found 2'),
    ('input.dtype', 'float32', 'input.dtype must be uint8'),
    ('model.box_head', 'yolo', "model.box_head 'yolo' is not one of"),
    ('model.box_head', 'tubelet', 'tubelet.frames is missing'),
    ('normalization.mean', [0.5, 0.5], 'normalization.mean must be 3 numbers'),
    ('outputs', [], 'outputs lack logits of shape (batch, 8)'),
    ('linking', _DELETE, 'linking is missing'),
  ],
)
def test_corrupt_metadata_is_refused_in_one_line(meta, tmp_path, key, value, expected):
  assert expected in _refused(_edited(meta, key, value), tmp_path)


def test_what_is_not_metadata_is_refused(meta, tmp_path):
  assert 'not valid JSON' in _refused('{"format_version": 1,', tmp_path)
  assert 'not valid JSON' in _refused(b'\xff\xfe{}', tmp_path)
  assert 'expected a JSON object, found list' in _refused('[1, 2]', tmp_path)
  nan = json.dumps(meta).replace('0.4345', 'NaN')
  assert 'NaN is not JSON' in _refused(nan, tmp_path)
  big = json.dumps(dict(meta, padding='x' * export_metadata.MAX_BYTES))
  assert f'larger than {export_metadata.MAX_BYTES} bytes' in _refused(big, tmp_path)
  with pytest.raises(MetadataError, match='cannot read the export metadata'):
    export_metadata.read(tmp_path / 'elsewhere')


def test_tubelet_settings_are_the_configs():
  config = demo.get_config()
  config.data.name = 'random'  # no dataset to read box class names from
  config.model.tubelet_frames = 0  # 0: every clip frame
  config.model.tubelet_top_n = 5
  config.eval.tubelets.frame_nms_threshold = 0.4
  assert exporter.tubelet_settings(config) == {
    'frames': 8,
    'stride': 4,
    'top_n': 5,
    'nms': 0.5,
    'frame_stride': 4,  # eval.tube_frame_stride
    'frame_nms': 0.4,
    'box_class_names': [f'box_class_{i}' for i in range(6)],  # 'random' data: no names
    'presence_threshold': 0.5,  # the demo's head has per-frame presence
  }


def test_a_changed_model_file_is_refused(export_dir, meta, tmp_path):
  copy = tmp_path / 'copy'
  copy.mkdir()
  data = (export_dir / 'model.stablehlo').read_bytes()
  (copy / 'model.stablehlo').write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
  with pytest.raises(MetadataError, match='does not match its metadata.json'):
    export_metadata.check_model_file(meta, copy)
  os.remove(copy / 'model.stablehlo')
  with pytest.raises(MetadataError, match='missing'):
    export_metadata.check_model_file(meta, copy)


def test_output_folder_rules(export_dir, tmp_path):
  (tmp_path / 'file').write_text('x')
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'a.txt').write_text('x')
  (tmp_path / 'empty').mkdir()
  assert exporter.output_problem(tmp_path / 'file') == 'a file is there, not a folder'
  assert 'not an export' in exporter.output_problem(tmp_path / 'notes')
  assert exporter.output_problem(tmp_path / 'empty') is None
  assert exporter.output_problem(export_dir) is None  # An earlier export is replaced.
  assert 'bucket' in exporter.output_problem('gs://bucket/export')
  with pytest.raises(exporter.ExportError, match='not an export'):
    exporter.export(
      export_models.restored('spatial'), tmp_path / 'notes', exporter.Options('onnx', check=False)
    )
  assert sorted(os.listdir(tmp_path / 'notes')) == ['a.txt']
