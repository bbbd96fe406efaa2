"""The TF SavedModel export (jax2tf), loaded with tf.saved_model.load: the JAX model's outputs
for any batch size, through the serving signature and the `serve` method."""

import pytest

from tests.export import export_models

HEADS = export_models.HEADS

tf = pytest.importorskip('tensorflow', reason='TensorFlow is not installed')


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  return export_models.export_heads(tmp_path_factory, 'savedmodel')


@pytest.mark.parametrize('head', HEADS)
def test_outputs_equal_jax_at_other_batch_sizes(exports, head):
  r, out, meta = exports[head]
  loaded = tf.saved_model.load(str(out / 'saved_model'))
  serving = loaded.signatures['serving_default']
  assert serving.structured_input_signature[1]['clip'].shape.as_list() == [None, 8, 48, 48, 3]
  # Batch 3: no batch size the export saw (TF compiles each new shape, seconds apiece).
  clip = export_models.clips(3)
  expected = export_models.jax_outputs(r, clip)
  found = {k: v.numpy() for k, v in serving(clip=tf.constant(clip)).items()}
  export_models.assert_equal_outputs(found, expected)
  found = {k: v.numpy() for k, v in loaded.serve(tf.constant(clip)).items()}
  export_models.assert_equal_outputs(found, expected)
  # The weights are variables of the SavedModel, not constants of its graph.
  assert len(loaded.weights['params']['classifier']) == 2
  assert meta['exported_with']['tensorflow'] == tf.__version__
