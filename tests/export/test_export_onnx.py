"""The ONNX export (jax2onnx), run by onnxruntime: the JAX model's outputs for any batch size,
a signature that fits its metadata, and a metadata of another model refused."""

import numpy as np
import pytest

from stconsist_jax.export import exporter
from stconsist_jax.prediction import export_metadata
from tests.export import export_models

HEADS = export_models.HEADS

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (the deploy extra)')
pytest.importorskip('jax2onnx', reason='jax2onnx is not installed (the export extra)')


def session(path):
  options = ort.SessionOptions()
  options.log_severity_level = 3  # jax2onnx's shape annotations draw merge warnings.
  return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def signature(values):
  return [
    (v.name, export_metadata.ONNXRUNTIME_DTYPES.get(v.type, v.type), list(v.shape)) for v in values
  ]


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  return export_models.export_heads(tmp_path_factory, 'onnx')


@pytest.mark.parametrize('head', HEADS)
def test_outputs_equal_jax_at_other_batch_sizes(exports, head):
  r, out, meta = exports[head]
  s = session(out / 'model.onnx')
  names = [o['name'] for o in meta['outputs']]
  assert names == export_models.OUTPUT_NAMES[head]
  for batch in (3, 1):
    clip = export_models.clips(batch, seed=batch)
    found = dict(zip(names, s.run(names, {'clip': clip})))
    export_models.assert_equal_outputs(found, export_models.jax_outputs(r, clip))


@pytest.mark.parametrize('head', HEADS)
def test_session_signature_fits_the_metadata(exports, head):
  _, out, meta = exports[head]
  s = session(out / 'model.onnx')
  assert signature(s.get_inputs()) == [('clip', 'uint8', ['b', 8, 48, 48, 3])]
  export_metadata.check_signature(meta, signature(s.get_inputs()), signature(s.get_outputs()))
  assert export_metadata.check_model_file(meta, out) == str(out / 'model.onnx')
  assert meta['exported_with']['jax2onnx'] and meta['exported_with']['opset'] == 23


def test_metadata_of_another_model_is_refused(exports):
  _, spatial_dir, spatial_meta = exports['spatial']
  _, _, mlp_meta = exports['mlp']
  # The other head's metadata: the same signature, but not this file's bytes.
  with pytest.raises(export_metadata.MetadataError, match='does not match its metadata.json'):
    export_metadata.check_model_file(mlp_meta, spatial_dir)
  # A model of 3 classes: the session's logits are not its metadata's.
  s = session(spatial_dir / 'model.onnx')
  three = dict(spatial_meta, outputs=[dict(o) for o in spatial_meta['outputs']])
  three['outputs'][1]['shape'] = ['batch', 3]
  with pytest.raises(export_metadata.MetadataError) as e:
    export_metadata.check_signature(three, signature(s.get_inputs()), signature(s.get_outputs()))
  assert str(e.value) == (
    "the model output 'logits' is float32 ['b', 8], its metadata says float32 ['batch', 3]"
  )
  fixed = dict(spatial_meta, input=dict(spatial_meta['input'], shape=[2, 8, 48, 48, 3]))
  export_metadata.check_signature(fixed, signature(s.get_inputs()), signature(s.get_outputs()))


def test_presence_export_is_read_by_prediction(tmp_path):
  """A tubelet head with presence: prediction from its ONNX export fetches det_present,
  JAX's (the export's own check is the StableHLO test's; one onnxruntime run here)."""
  from stconsist_jax.prediction import onnx_predictor  # pylint: disable=g-import-not-at-top

  r = export_models.restored('tubelet', presence=True)
  exporter.export(r, tmp_path / 'presence', exporter.Options('onnx', check=False))
  loaded = onnx_predictor.load_export(tmp_path / 'presence', batch_size=2)
  assert 'det_present' in loaded.predictor.output_names
  clip = export_models.clips(2, seed=3)
  expected = export_models.jax_outputs(r, clip)
  found = export_models.in_expected_order(loaded.predictor.run_clips(clip), expected)
  assert found['det_present'].dtype == bool
  np.testing.assert_array_equal(found['det_present'], expected['det_present'])
